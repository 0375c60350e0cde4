//! A container's outgoing TCP: its SYN is held while the host connects to the destination;
//! once connected the SYN goes on to the relay listener (rewritten by the NAT), and the relay's
//! accepted socket is spliced to the upstream one. A refused or unreachable destination is
//! answered the way it answered: a reset, or an ICMP error.
//!
//! All of it runs on the datapath worker that saw the SYN, with no other thread in the way: the
//! worker connects (on a local path the upstream handshake is usually over before `connect`
//! returns, so the SYN goes on at once), watches a connect still in progress in its own epoll
//! set, and the relay listeners are in every worker's set, so the worker that hands the
//! container's ACK to the host usually accepts the connection itself, while it is still
//! awake, and splices the pair on its own thread. The NAT service only sweeps what waited too
//! long, forgets what the table reclaimed, and hands the lot over to a new process.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vswitch_nat::{FlowId, Nat};

use crate::datapath::relay::{linger_zero, RelayPool};
use crate::datapath::{now_ms, Fabric, Token};

use super::budget::{FdBudget, Lease, TCP_RELAY};
use super::service::{Entry, NatService};
use super::sockets::{accept_nonblocking, connect_nonblocking};

/// How long a connected upstream waits for the container's side to reach the relay.
const ACCEPT_WAIT: Duration = Duration::from_secs(30);

/// A connected upstream whose container side has not reached the relay yet.
pub(super) struct Waiting {
    pub upstream: TcpStream,
    /// The container's address and port.
    pub from: SocketAddrV4,
    pub since: Instant,
    pub lease: Lease,
}

impl Waiting {
    pub fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.since) >= ACCEPT_WAIT
    }
}

/// An upstream connect in progress on a worker, the container's SYN held.
pub(super) struct Connecting {
    pub flow: FlowId,
    pub from: SocketAddrV4,
    pub stream: TcpStream,
    pub syn: Vec<u8>,
    /// Pays for the whole relayed connection, given back when the relay ends.
    pub lease: Lease,
    /// The worker whose epoll set watches it.
    pub worker: usize,
}

/// The outgoing TCP connections between the container's SYN and the relay, shared by the
/// workers (which connect and accept) and the NAT service (which sweeps and hands over).
pub(super) struct Outbound {
    nat: Arc<Nat>,
    fabric: Fabric,
    budget: Arc<FdBudget>,
    pool: RelayPool,
    /// The relay listeners and their ports, in every worker's epoll set (`Token::Listener`).
    pub relays: Vec<(TcpListener, u16)>,
    /// Connects in progress, by their token in their worker's epoll set (`Token::Entry`).
    connecting: Mutex<HashMap<u64, Connecting>>,
    next_token: AtomicU64,
    /// Connected upstreams waiting for the container's connection to reach the relay.
    waiting: Mutex<HashMap<FlowId, Waiting>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Outbound {
    /// Shares the relay listeners with the workers: each listener goes into every worker's
    /// epoll set. Exclusive: a new connection wakes one sleeping worker, not all (a worker that
    /// is polling finds it anyway).
    pub fn new(
        nat: Arc<Nat>,
        fabric: Fabric,
        budget: Arc<FdBudget>,
        pool: RelayPool,
        relays: Vec<(TcpListener, u16)>,
    ) -> io::Result<Outbound> {
        let events = (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32;
        for worker in 0..pool.workers() {
            let epoll = pool.epoll(worker).expect("a worker of the pool");
            for (i, (l, _)) in relays.iter().enumerate() {
                epoll.add(l.as_raw_fd(), events, Token::Listener(i as u16).into())?;
            }
        }
        Ok(Outbound {
            nat,
            fabric,
            budget,
            pool,
            relays,
            connecting: Mutex::default(),
            next_token: AtomicU64::new(0),
            waiting: Mutex::default(),
        })
    }

    pub fn waiting(&self) -> MutexGuard<'_, HashMap<FlowId, Waiting>> {
        locked(&self.waiting)
    }

    /// Calls `f` on every connect in progress on the workers, oldest first (a hand-over
    /// describes them while the workers are paused; they stay where they are).
    pub fn each_connecting(&self, mut f: impl FnMut(&Connecting)) {
        let connecting = locked(&self.connecting);
        let mut tokens: Vec<&u64> = connecting.keys().collect();
        tokens.sort_unstable();
        for t in tokens {
            f(&connecting[t]);
        }
    }

    /// A flow the table reclaimed: drop what it still holds here.
    pub fn forget(&self, flow: FlowId) {
        self.waiting().remove(&flow);
        let mut connecting = locked(&self.connecting);
        let gone: Vec<u64> = (connecting.iter())
            .filter(|(_, c)| c.flow == flow)
            .map(|(t, _)| *t)
            .collect();
        for t in gone {
            if let Some(c) = connecting.remove(&t) {
                if let Some(epoll) = self.pool.epoll(c.worker) {
                    let _ = epoll.delete(c.stream.as_raw_fd());
                }
            }
        }
    }

    /// A container's SYN to `dst` (held in `syn`), seen by worker `worker`: connect upstream.
    pub fn connect(
        &self,
        worker: usize,
        flow: FlowId,
        from: SocketAddrV4,
        dst: SocketAddrV4,
        syn: Vec<u8>,
    ) {
        // A new connection from the same container address and port replaces one that never
        // reached the relay (e.g. the host still held the previous connection's TIME_WAIT and
        // the container reset and retried): reset its upstream now, so the destination does not
        // keep serving a connection nobody will use.
        {
            let mut waiting = self.waiting();
            if waiting.values().any(|w| w.from == from) {
                waiting.retain(|_, w| {
                    let stale = w.from == from;
                    if stale {
                        linger_zero(&w.upstream);
                    }
                    !stale
                });
            }
        }
        // No descriptors for the connection: refused now, with a reset, rather than failing
        // later half-way.
        let Some(lease) = self
            .budget
            .lease(TCP_RELAY, Some(*from.ip()), "a TCP connection")
        else {
            let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
            return self.refuse(flow, &syn, &refused);
        };
        let stream = match connect_nonblocking(dst) {
            Ok(stream) => stream,
            Err(e) => {
                self.budget.check(&e, "connecting upstream");
                return self.refuse(flow, &syn, &e);
            }
        };
        // On a local path the destination has usually answered before `connect` returned:
        // go on at once, without watching the socket.
        if decided(&stream) {
            return self.decided(flow, from, stream, syn, lease);
        }
        let Some(epoll) = self.pool.epoll(worker) else {
            return;
        };
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let fd = stream.as_raw_fd();
        let entry = Connecting {
            flow,
            from,
            stream,
            syn,
            lease,
            worker,
        };
        locked(&self.connecting).insert(token, entry);
        let events = (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32;
        if let Err(e) = epoll.add(fd, events, Token::Entry(token).into()) {
            if let Some(c) = locked(&self.connecting).remove(&token) {
                self.refuse(c.flow, &c.syn, &e);
            }
        }
    }

    /// Connect `token`, watched by worker `worker`, is decided.
    pub fn ready(&self, worker: usize, token: u64) {
        let Some(c) = locked(&self.connecting).remove(&token) else {
            return;
        };
        if let Some(epoll) = self.pool.epoll(worker) {
            let _ = epoll.delete(c.stream.as_raw_fd());
        }
        self.decided(c.flow, c.from, c.stream, c.syn, c.lease);
    }

    /// The upstream connect of `flow` is decided: release the held SYN, or refuse it.
    pub fn decided(
        &self,
        flow: FlowId,
        from: SocketAddrV4,
        stream: TcpStream,
        mut syn: Vec<u8>,
        lease: Lease,
    ) {
        match stream.take_error() {
            Ok(None) => {
                if self.nat.tcp_connected(flow, &mut syn, now_ms()).is_ok() {
                    let waiting = Waiting {
                        upstream: stream,
                        from,
                        since: Instant::now(),
                        lease,
                    };
                    // Before the SYN goes on: the connection may reach the relay (and another
                    // worker accept it) before `to_host` returns.
                    self.waiting().insert(flow, waiting);
                    self.fabric.to_host(&syn);
                }
            }
            Ok(Some(err)) | Err(err) => self.refuse(flow, &syn, &err),
        }
    }

    /// Answers a held SYN whose destination could not be reached the way the destination did.
    fn refuse(&self, flow: FlowId, syn: &[u8], err: &io::Error) {
        let mut out = vec![0; syn.len() + 128];
        let nat = &self.nat;
        let len = match err.raw_os_error() {
            Some(libc::ECONNREFUSED) => nat.tcp_reset_reply(flow, syn, &mut out),
            Some(libc::ENETUNREACH) => nat.icmp_unreachable_reply(flow, syn, 0, &mut out),
            Some(libc::EACCES | libc::EPERM) => nat.icmp_unreachable_reply(flow, syn, 13, &mut out),
            _ => nat.icmp_unreachable_reply(flow, syn, 1, &mut out),
        };
        if let Ok(len) = len {
            self.fabric.to_containers(&out[..len]);
        }
    }

    /// The container's side of a connection reached relay listener `index`: splice it to its
    /// upstream, on worker `worker`. One per event: the listener is level-triggered, so one more
    /// waiting comes back at the next wait, and a lone connection costs no `accept` that finds
    /// none.
    pub fn accept(&self, worker: usize, index: usize) {
        let Some((listener, relay_port)) = self.relays.get(index) else {
            return;
        };
        let (conn, peer) = match accept_nonblocking(listener) {
            Ok(accepted) => accepted,
            Err(e) => {
                self.budget.check(&e, "accepting on a relay listener");
                return;
            }
        };
        let waiting = (self.nat.relay_lookup(peer, *relay_port))
            .and_then(|rf| self.waiting().remove(&rf.flow));
        match waiting {
            // Both non-blocking: the upstream was made so, the accepted socket too.
            Some(w) => {
                let lease = w.lease;
                (self.pool).relay_on(worker, conn, w.upstream, *peer.ip(), move || drop(lease))
            }
            None => linger_zero(&conn), // no such flow: reset
        }
    }
}

/// Whether a non-blocking connect is decided (connected or failed), without waiting.
fn decided(stream: &TcpStream) -> bool {
    let mut pfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: `pfd` is one live pollfd; a zero timeout never blocks.
    unsafe { libc::poll(&mut pfd, 1, 0) > 0 }
}

impl NatService {
    /// A connect handed over by a previous process (watched by the service) is decided.
    pub(super) fn connected(&mut self, token: u64) {
        let Some(Entry::Connecting {
            flow,
            from,
            stream,
            syn,
            lease,
        }) = self.remove_entry(token)
        else {
            return;
        };
        self.outbound.decided(flow, from, stream, syn, lease);
    }
}
