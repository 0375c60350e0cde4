//! Byte relay between pairs of connected TCP sockets (a container's connection and its
//! upstream), served by the datapath workers: each worker's epoll set also holds relayed
//! sockets, and the worker calls [`RelayPool::service`] for their events.
//!
//! Data moves with `splice` through a pipe per direction, so it never enters user space. End of
//! stream on one side becomes a half-close (`shutdown(SHUT_WR)`) on the other; a reset on one
//! side becomes a reset on the other, so each end sees what the far end did.
//!
//! Passing the first FIN on makes the relay's socket on the other leg the one that closed
//! first there, so the host would keep a TIME_WAIT for it (60 s) besides the one the endpoint
//! that really closed first keeps: tens of thousands of them under short connections, each in
//! the way of a container that reuses its port. Once a pair is finished the relay ends that
//! TIME_WAIT (`kernel::sockdiag`), so that, as through a kernel NAT, only the side that closed
//! first holds one. A pair costs no
//! thread of its own: it is registered straight into the epoll set of a worker (round robin),
//! which wakes only when bytes (or a FIN) arrive. Sharing the workers' threads matters for
//! request/response traffic: a worker that hands a container's segment to the host is often
//! still polling when the host's socket becomes readable, and no other thread has to wake.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::kernel::epoll::Epoll;
use crate::kernel::sockdiag::{SockDiag, TcpEnds};

use super::Token;

mod handover;

pub use handover::PairSnap;

/// Bytes a pipe may hold; larger pipes mean fewer `splice` calls per byte.
const PIPE_SIZE: libc::c_int = 1 << 20;

/// Empty pipes each worker keeps for its next pairs: a short connection then costs no
/// `pipe2`, `fcntl` and two `close` per direction. Their descriptors are the daemon's own
/// (see [`RelayPool::spare_fds`]), not a flow's.
const SPARE_PIPES: usize = 8;

/// Called once when a pair is finished (both directions closed or reset).
pub type Done = Box<dyn FnOnce() + Send>;

/// One worker's share: its epoll set and the pairs registered in it.
struct Shared {
    epoll: Arc<Epoll>,
    pairs: Mutex<Pairs>,
}

#[derive(Default)]
struct Pairs {
    map: HashMap<u64, Pair>,
    next_id: u64,
}

/// The relay threads. Cloning shares them.
#[derive(Clone)]
pub struct RelayPool {
    threads: Arc<Vec<Arc<Shared>>>,
    next: Arc<AtomicUsize>,
    /// Pairs relayed so far.
    relayed: Arc<AtomicU64>,
}

impl RelayPool {
    /// A pool over the workers' epoll sets (worker `i` polls `epolls[i]`).
    pub fn new(epolls: &[Arc<Epoll>]) -> RelayPool {
        let list = epolls
            .iter()
            .map(|epoll| {
                Arc::new(Shared {
                    epoll: epoll.clone(),
                    pairs: Mutex::new(Pairs::default()),
                })
            })
            .collect();
        RelayPool {
            threads: Arc::new(list),
            next: Arc::new(AtomicUsize::new(0)),
            relayed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Relays `a` <-> `b` until both directions are finished, then calls `done`. `owner` is the
    /// container the pair serves, so that its pairs can be reset when it goes
    /// ([`RelayPool::reset_owner`]). Pairs go to the workers round robin: the thread that
    /// accepts them (the NAT service) runs on any CPU, so its CPU says nothing about where the
    /// flow's frames are served.
    pub fn relay(
        &self,
        a: TcpStream,
        b: TcpStream,
        owner: Ipv4Addr,
        done: impl FnOnce() + Send + 'static,
    ) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.threads.len();
        if [&a, &b].iter().any(|s| s.set_nonblocking(true).is_err()) {
            for s in [&a, &b] {
                linger_zero(s);
            }
            return done();
        }
        self.relay_on(i, a, b, owner, done)
    }

    /// [`RelayPool::relay`] on worker `worker` (the one that accepted the pair: its sockets'
    /// first bytes are about to come through that worker, which is awake). Both sockets must
    /// be non-blocking already.
    pub fn relay_on(
        &self,
        worker: usize,
        a: TcpStream,
        b: TcpStream,
        owner: Ipv4Addr,
        done: impl FnOnce() + Send + 'static,
    ) {
        let shared = &self.threads[worker % self.threads.len()];
        let mut pairs = shared.pairs.lock().unwrap_or_else(|e| e.into_inner());
        let id = pairs.next_id;
        pairs.next_id += 1;
        // Readable and hung-up only: a socket is writable at once, and asking for that would
        // wake the thread for nothing. Writability is asked for when a write would block.
        let events = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
        let ok = [&a, &b].into_iter().enumerate().all(|(side, s)| {
            (shared.epoll)
                .add(s.as_raw_fd(), events, token(id, side))
                .is_ok()
        });
        if !ok {
            for s in [&a, &b] {
                let _ = shared.epoll.delete(s.as_raw_fd());
                linger_zero(s);
            }
            drop(pairs);
            done();
            return;
        }
        self.relayed.fetch_add(1, Ordering::Relaxed);
        let pair = Pair {
            socks: [a, b],
            owner,
            flows: Default::default(),
            done: Some(Box::new(done)),
            wants_out: [false; 2],
            closed_first: None,
        };
        pairs.map.insert(id, pair);
    }
}

impl RelayPool {
    /// Resets both sides of every pair `owner` has (a container that was unplugged or exited):
    /// the far ends see the connection end at once rather than hang.
    pub fn reset_owner(&self, owner: Ipv4Addr) {
        self.reset_where(|p| p.owner == owner);
    }

    /// Resets every pair, at shutdown: a relayed connection ends with a reset on both sides,
    /// not as an orphaned socket that keeps trying to deliver queued bytes.
    pub fn reset_all(&self) {
        self.reset_where(|_| true);
    }

    /// Resets the pairs that serve these NAT flows, each named by the container's address and
    /// port and the gateway port of the host's socket facing it (the relay listener's port, or
    /// a published connection's ephemeral port). Returns how many it reset.
    pub fn reset_flows(&self, flows: &[(SocketAddrV4, u16)]) -> usize {
        self.reset_where(|p| {
            p.socks
                .iter()
                .any(|s| match (s.peer_addr(), s.local_addr()) {
                    (Ok(SocketAddr::V4(peer)), Ok(local)) => {
                        *peer.ip() == p.owner && flows.contains(&(peer, local.port()))
                    }
                    _ => false,
                })
        })
    }

    /// Worker `worker`'s epoll set.
    pub fn epoll(&self, worker: usize) -> Option<&Arc<Epoll>> {
        self.threads.get(worker).map(|s| &s.epoll)
    }

    /// How many workers serve the pool.
    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    /// Descriptors the workers' spare pipes may hold at most: the daemon's own, to reserve.
    pub fn spare_fds(&self) -> usize {
        self.threads.len() * SPARE_PIPES * 2
    }

    /// Pairs relayed so far.
    pub fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }

    fn reset_where(&self, which: impl Fn(&Pair) -> bool) -> usize {
        let mut reset = 0;
        for shared in self.threads.iter() {
            let mut pairs = shared.pairs.lock().unwrap_or_else(|e| e.into_inner());
            let ids: Vec<u64> = (pairs.map.iter())
                .filter(|(_, p)| which(p))
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                if let Some(pair) = pairs.map.remove(&id) {
                    retire(shared, pair, true);
                    reset += 1;
                }
            }
        }
        reset
    }
}

/// Makes the next close (or disconnect) of `s` send a RST instead of a FIN.
pub fn linger_zero(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a valid struct linger for the call's duration.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// One direction of a pair: bytes from `from` to `to` through `pipe`.
#[derive(Default)]
struct Flow {
    pipe: Option<Pipe>,
    /// Bytes in the pipe not yet written to `to`.
    queued: usize,
    /// `from` reached end of stream and the FIN was passed on.
    finished: bool,
}

struct Pair {
    socks: [TcpStream; 2],
    owner: Ipv4Addr,
    /// `flows[0]`: socks[0] -> socks[1]; `flows[1]`: socks[1] -> socks[0].
    flows: [Flow; 2],
    done: Option<Done>,
    /// Whether writability of each socket is being watched.
    wants_out: [bool; 2],
    /// The relay's socket that sent the first FIN of its leg (the other side's FIN passed on),
    /// as it was while connected: it will hold a TIME_WAIT once the pair is finished.
    closed_first: Option<TcpEnds>,
}

enum Step {
    /// Nothing more to do until the next readiness event.
    Idle,
    /// The destination's buffer is full: wait until it is writable.
    Blocked,
    /// One side was reset (or failed): reset the other and drop the pair.
    Reset,
}

fn token(pair: u64, side: usize) -> u64 {
    Token::Relay {
        pair,
        side: side as u8,
    }
    .into()
}

impl RelayPool {
    /// Serves an epoll event of worker `worker` about relayed pair `pair`.
    pub fn service(&self, worker: usize, pair: u64) {
        if let Some(shared) = self.threads.get(worker) {
            service(shared, pair);
        }
    }
}

/// Moves whatever can move in both directions of pair `id`, and retires it when finished.
fn service(shared: &Shared, id: u64) {
    let mut pairs = shared.pairs.lock().unwrap_or_else(|e| e.into_inner());
    let Some(pair) = pairs.map.get_mut(&id) else {
        return;
    };
    let mut reset = false;
    for dir in 0..2 {
        match pump(pair, dir) {
            Step::Idle => {}
            Step::Blocked => {
                let to = 1 - dir;
                if !pair.wants_out[to] {
                    pair.wants_out[to] = true;
                    let events =
                        (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
                    let token = token(id, to);
                    let _ = shared
                        .epoll
                        .modify(pair.socks[to].as_raw_fd(), events, token);
                }
            }
            Step::Reset => {
                reset = true;
                break;
            }
        }
    }
    let finished = pair.flows.iter().all(|f| f.finished && f.queued == 0);
    if reset || finished {
        let pair = pairs.map.remove(&id).expect("present");
        drop(pairs);
        retire(shared, pair, reset);
    }
}

/// Takes a finished (or reset) pair out of its worker's set; its sockets close on drop.
fn retire(shared: &Shared, mut pair: Pair, reset: bool) {
    for s in &pair.socks {
        if reset {
            linger_zero(s);
        }
        let _ = shared.epoll.delete(s.as_raw_fd());
    }
    if !reset {
        if let Some(ends) = pair.closed_first.take() {
            end_time_wait(&ends);
        }
        // Finished: both pipes are empty, the next pairs of this thread take them.
        for flow in &mut pair.flows {
            if let Some(pipe) = flow.pipe.take().filter(|_| flow.queued == 0) {
                pipe.spare();
            }
        }
    }
    if let Some(done) = pair.done.take() {
        done();
    }
}

/// Set once ending a TIME_WAIT has failed for a reason that will not change (the kernel or the
/// process cannot): the relay stops trying.
static NO_SOCK_DESTROY: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Each worker's sock_diag socket, made on first use.
    static SOCK_DIAG: RefCell<Option<SockDiag>> = const { RefCell::new(None) };
}

/// Ends the TIME_WAIT the relay's socket `ends` keeps (see the module's documentation).
fn end_time_wait(ends: &TcpEnds) {
    if NO_SOCK_DESTROY.load(Ordering::Relaxed) {
        return;
    }
    let result = SOCK_DIAG.with(|diag| {
        let mut diag = diag.borrow_mut();
        if diag.is_none() {
            *diag = Some(SockDiag::new()?);
        }
        diag.as_mut().expect("just made").end_time_wait(ends)
    });
    if let Err(e) = result {
        // ENOENT/ESTALE: no TIME_WAIT there (both sides closed at once, or it went already).
        if !matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESTALE)) {
            NO_SOCK_DESTROY.store(true, Ordering::Relaxed);
            eprintln!(
                "vswitch: cannot end the relay's TIME_WAIT sockets ({e}): each finished NAT'd \
                 connection leaves one on the host for 60 s"
            );
        }
    }
}

/// Moves bytes of one direction until the kernel says "would block" on either side.
fn pump(pair: &mut Pair, dir: usize) -> Step {
    let (from, to) = (pair.socks[dir].as_raw_fd(), pair.socks[1 - dir].as_raw_fd());
    let first_fin = !pair.flows[1 - dir].finished;
    let closed_first = &mut pair.closed_first;
    let flow = &mut pair.flows[dir];
    loop {
        // First drain what the pipe holds.
        while flow.queued > 0 {
            let pipe = flow.pipe.as_ref().expect("queued bytes live in a pipe");
            match splice(pipe.read.as_raw_fd(), to, flow.queued) {
                Ok(0) => return Step::Reset,
                Ok(n) => flow.queued -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Blocked,
                Err(_) => return Step::Reset, // the destination is gone: reset the source
            }
        }
        if flow.finished {
            return Step::Idle;
        }
        if flow.pipe.is_none() {
            match Pipe::take() {
                Ok(p) => flow.pipe = Some(p),
                Err(_) => return Step::Reset,
            }
        }
        let pipe = flow.pipe.as_ref().expect("just made");
        match splice(from, pipe.write.as_raw_fd(), PIPE_SIZE as usize) {
            Ok(0) => {
                // End of stream: pass the FIN on (the pipe is empty here). The first FIN of the
                // pair makes `to` the socket that closes first on its leg: note what ending its
                // TIME_WAIT will need while it is still connected.
                flow.finished = true;
                if first_fin && !NO_SOCK_DESTROY.load(Ordering::Relaxed) {
                    *closed_first = TcpEnds::of(to).ok();
                }
                // SAFETY: plain system call on a descriptor we hold.
                unsafe { libc::shutdown(to, libc::SHUT_WR) };
                return Step::Idle;
            }
            Ok(n) => flow.queued = n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Idle,
            Err(_) => return Step::Reset, // the source was reset
        }
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: plain system call on descriptors we hold.
        let ret = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if ret >= 0 {
            return Ok(ret as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

thread_local! {
    /// This thread's empty pipes (see `SPARE_PIPES`).
    static SPARES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

impl Pipe {
    /// An empty pipe: a spare one of this thread's, else a new one.
    fn take() -> io::Result<Pipe> {
        match SPARES.with(|s| s.borrow_mut().pop()) {
            Some(pipe) => Ok(pipe),
            None => Pipe::new(),
        }
    }

    /// Keeps an empty pipe for this thread's next pair (closes it when there are enough).
    fn spare(self) {
        SPARES.with(|s| {
            let mut spares = s.borrow_mut();
            if spares.len() < SPARE_PIPES {
                spares.push(self);
            }
        })
    }

    fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 returns.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are fresh and ours.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Best effort: a bigger pipe moves more per call; the default 64 KiB still works.
        // SAFETY: plain fcntl on our descriptor.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        Ok(Pipe { read, write })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener};
    use std::time::Duration;

    const OWNER: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 2);

    /// A pool served by `n` threads of its own, as the workers would.
    pub(super) fn pool(n: usize) -> RelayPool {
        let epolls: Vec<Arc<Epoll>> = (0..n).map(|_| Arc::new(Epoll::new().unwrap())).collect();
        let pool = RelayPool::new(&epolls);
        for (i, epoll) in epolls.into_iter().enumerate() {
            let pool = pool.clone();
            std::thread::spawn(move || loop {
                // SAFETY: all-zero epoll_events are valid.
                let mut events: [libc::epoll_event; 16] = unsafe { std::mem::zeroed() };
                for ev in epoll.wait(&mut events, -1) {
                    if let Some(Token::Relay { pair, .. }) = Token::decode(ev.u64) {
                        pool.service(i, pair);
                    }
                }
            });
        }
        pool
    }

    /// A connected pair of loopback sockets.
    pub(super) fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }

    #[test]
    fn relays_both_ways_and_passes_half_close_on() {
        let pool = pool(2);
        let (mut client, relay_a) = pair();
        let (relay_b, mut server) = pair();
        let (tx, rx) = std::sync::mpsc::channel();
        pool.relay(relay_a, relay_b, OWNER, move || tx.send(()).unwrap());
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let writer = {
            let data = data.clone();
            let mut client = client.try_clone().unwrap();
            std::thread::spawn(move || {
                client.write_all(&data).unwrap();
                client.shutdown(Shutdown::Write).unwrap();
            })
        };
        let mut got = Vec::new();
        server.read_to_end(&mut got).unwrap(); // ends: the half-close came through
        writer.join().unwrap();
        assert!(got == data);
        server.write_all(b"reply").unwrap();
        drop(server);
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).unwrap();
        assert_eq!(reply, b"reply");
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn passes_a_reset_on() {
        let pool = pool(1);
        let (mut client, relay_a) = pair();
        let (relay_b, server) = pair();
        let (tx, rx) = std::sync::mpsc::channel();
        pool.relay(relay_a, relay_b, OWNER, move || tx.send(()).unwrap());
        linger_zero(&server);
        drop(server); // RST
        let mut buf = [0u8; 16];
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let err = client.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn resetting_an_owner_resets_its_pairs_only() {
        let pool = pool(2);
        let (mut mine, relay_a) = pair();
        let (relay_b, _server) = pair();
        pool.relay(relay_a, relay_b, OWNER, || {});
        let (mut other, relay_c) = pair();
        let (relay_d, mut other_server) = pair();
        pool.relay(relay_c, relay_d, Ipv4Addr::new(10, 1, 1, 3), || {});
        pool.reset_owner(OWNER);
        mine.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 8];
        let err = mine.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        other.write_all(b"still").unwrap();
        other_server.read_exact(&mut buf[..5]).unwrap();
        assert_eq!(&buf[..5], b"still");
    }

    #[test]
    fn resetting_flows_resets_the_pairs_that_serve_them() {
        let pool = pool(2);
        let loopback = Ipv4Addr::LOCALHOST;
        let v4 = |a: SocketAddr| match a {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!(),
        };
        // Each pair's first socket faces the "container" (the client's end, on loopback).
        let (mut mine, relay_a) = pair();
        let key = (
            v4(mine.local_addr().unwrap()),
            relay_a.local_addr().unwrap().port(),
        );
        let (relay_b, _server) = pair();
        pool.relay(relay_a, relay_b, loopback, || {});
        let (mut other, relay_c) = pair();
        let (relay_d, mut other_server) = pair();
        pool.relay(relay_c, relay_d, loopback, || {});
        assert_eq!((pool.len(), pool.relayed()), (2, 2));

        let unknown = (SocketAddrV4::new(loopback, 1), key.1);
        assert_eq!(pool.reset_flows(&[unknown]), 0);
        assert_eq!(pool.reset_flows(&[key]), 1);
        assert_eq!((pool.len(), pool.relayed()), (1, 2));
        mine.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 8];
        let err = mine.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        other.write_all(b"still").unwrap();
        other_server.read_exact(&mut buf[..5]).unwrap();
        assert_eq!(&buf[..5], b"still");
    }

    #[test]
    fn many_short_connections() {
        let pool = pool(2);
        for i in 0..200u32 {
            let (mut client, relay_a) = pair();
            let (relay_b, mut server) = pair();
            pool.relay(relay_a, relay_b, OWNER, || {});
            client.write_all(&i.to_be_bytes()).unwrap();
            let mut b = [0u8; 4];
            server.read_exact(&mut b).unwrap();
            server.write_all(&b).unwrap();
            drop(server);
            let mut back = Vec::new();
            client.read_to_end(&mut back).unwrap();
            assert_eq!(back, i.to_be_bytes());
        }
    }
}
