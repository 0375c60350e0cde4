//! The NAT service: the host sockets behind the containers' flows to the outside and behind the
//! published ports. The translation itself is the pure `vswitch-nat` crate; this is its edge.
//!
//! One thread with an epoll set owns the non-blocking sockets: relay listeners, upstream TCP
//! connects in progress, one UDP socket per UDP flow and the published ports' listeners.
//! Established TCP connections are handed to the `relay`, which splices them on the datapath
//! workers; echo requests leave through a raw ICMP socket straight from the workers, which also
//! read the replies.
//! Datapath workers send it jobs through a crossbeam channel plus an eventfd to wake it.

use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use vswitch_nat::{Expired, FlowId, Nat, NatError, ICMP_DEST_UNREACH};

use crate::datapath::relay;
use crate::datapath::wait::Waiter;
use crate::datapath::Token;
use crate::datapath::{now_ms, Fabric};
use crate::kernel::epoll::{Epoll, EventFd, IN};
use crate::kernel::sys::cvt;

pub mod dns;
mod hook;
pub mod resolv;

pub use hook::NatHook;

/// Work the datapath and the manager hand to the NAT service.
pub enum NatJob {
    /// A container's SYN to the outside: connect to `dst`, then release or answer the SYN.
    TcpConnect {
        flow: FlowId,
        dst: SocketAddrV4,
        syn: Vec<u8>,
    },
    UdpOut {
        flow: FlowId,
        dst: SocketAddrV4,
        payload: Vec<u8>,
        gso_size: u16,
    },
    UdpToClient {
        publish_id: u32,
        client: SocketAddrV4,
        payload: Vec<u8>,
        gso_size: u16,
    },
    /// Serve these published ports (already bound by the manager) for a container.
    Publish {
        container: Ipv4Addr,
        mac: [u8; 6],
        ports: Vec<(Listener, u16)>,
    },
    /// Close a container's published ports.
    Unpublish { container: Ipv4Addr },
    /// Flows the table reclaimed: close their sockets.
    Forget(Vec<Expired>),
}

/// A bound host socket of a published port.
pub enum Listener {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// The NAT service's mailbox, cloned into every worker.
#[derive(Clone)]
pub struct NatMailbox {
    tx: Sender<NatJob>,
    wake: Arc<EventFd>,
    /// The raw ICMP socket echo requests leave through (none without CAP_NET_RAW).
    icmp: Option<Arc<OwnedFd>>,
}

impl NatMailbox {
    /// Sends a container's echo request out, translated, straight from the worker: one thread
    /// hop less on a ping's way.
    pub fn send_echo(&self, dst: Ipv4Addr, ident: u16, seq: u16, payload: &[u8]) {
        let Some(icmp) = &self.icmp else { return };
        let mut packet = Vec::with_capacity(8 + payload.len());
        packet.extend_from_slice(&[8, 0, 0, 0]);
        packet.extend_from_slice(&ident.to_be_bytes());
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(payload);
        let sum = internet_checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(dst).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `packet` and `addr` are live for the call's duration.
        unsafe {
            libc::sendto(
                icmp.as_raw_fd(),
                packet.as_ptr() as *const libc::c_void,
                packet.len(),
                libc::MSG_DONTWAIT,
                &addr as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
    }

    /// The raw ICMP socket, for the workers to poll: echo replies are read by whichever worker
    /// is awake (see [`NatMailbox::echo_replies`]).
    pub fn icmp_fd(&self) -> Option<RawFd> {
        self.icmp.as_ref().map(|fd| fd.as_raw_fd())
    }

    /// Reads the echo replies waiting on the raw ICMP socket and hands each, translated back,
    /// to its container. `buf` and `out` are the caller's scratch (64 KiB and a bit more).
    pub fn echo_replies(&self, nat: &Nat, fabric: &Fabric, buf: &mut [u8], out: &mut [u8]) {
        let Some(icmp) = &self.icmp else { return };
        loop {
            // SAFETY: reading into the caller's live buffer.
            let n = unsafe {
                libc::recv(
                    icmp.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                return;
            }
            let packet = &buf[..n as usize];
            // A raw socket hands us the IPv4 header too.
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let Some(icmp) = packet.get(ihl..) else {
                continue;
            };
            if icmp.len() < 8 || icmp[0] != 0 {
                continue; // only echo replies; errors for our UDP flows come through their sockets
            }
            let ident = u16::from_be_bytes([icmp[4], icmp[5]]);
            let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
            if let Ok(len) = nat.echo_reply(ident, seq, &icmp[8..], out, now_ms()) {
                fabric.to_containers(&out[..len]);
            }
        }
    }

    /// Queues a job and wakes the service.
    pub fn send(&self, job: NatJob) {
        if self.post(job) {
            self.wake();
        }
    }

    /// Queues a job without waking the service: a worker posts a whole batch's jobs, then
    /// wakes the service once (one eventfd write per batch, not per datagram).
    pub fn post(&self, job: NatJob) -> bool {
        self.tx.send(job).is_ok()
    }

    pub fn wake(&self) {
        self.wake.wake();
    }
}

/// How long a connected upstream waits for the container's side to reach the relay.
const ACCEPT_WAIT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A loopback client of a published UDP port is forgotten after this long without traffic
/// (the NAT's timeout for a replied UDP flow).
const LOCAL_UDP_IDLE: Duration = Duration::from_secs(120);

/// A connected upstream whose container side has not reached the relay yet.
struct Waiting {
    upstream: TcpStream,
    /// The container's address and port.
    from: SocketAddrV4,
    since: Instant,
}

enum Entry {
    /// Upstream connect in progress, the container's SYN held.
    Connecting {
        flow: FlowId,
        stream: TcpStream,
        syn: Vec<u8>,
    },
    Udp {
        flow: FlowId,
        sock: UdpSocket,
    },
    PubTcp {
        listener: TcpListener,
        container: SocketAddrV4,
    },
    PubUdp {
        sock: UdpSocket,
        id: u32,
        container: SocketAddrV4,
        mac: [u8; 6],
    },
    /// A client of published UDP port `id` that the container could not answer directly (the
    /// host itself, over loopback): its datagrams go to the container from this socket on the
    /// gateway, and the answers go back to `client` from the published socket.
    PubUdpLocal {
        sock: UdpSocket,
        id: u32,
        container: SocketAddrV4,
        client: SocketAddr,
        last: Instant,
    },
}

pub struct NatService {
    nat: Arc<Nat>,
    fabric: Fabric,
    gateway: Ipv4Addr,
    epoll: Epoll,
    rx: Receiver<NatJob>,
    wake: Arc<EventFd>,
    relays: Vec<(TcpListener, u16)>,
    /// Threads that splice relayed connections.
    pool: relay::RelayPool,
    entries: HashMap<u64, Entry>,
    next_token: u64,
    udp_by_flow: HashMap<FlowId, u64>,
    pub_udp_by_id: HashMap<u32, u64>,
    /// Loopback clients of published UDP ports, by (publish id, client).
    pub_udp_local: HashMap<(u32, SocketAddr), u64>,
    next_publish_id: u32,
    /// Upstream connections waiting for the container's connection to reach the relay.
    waiting: HashMap<FlowId, Waiting>,
    buf: Vec<u8>,
    out: Vec<u8>,
}

/// Binds the TCP relay listeners on the gateway address (the host kernel terminates the
/// containers' outgoing TCP there). Several, so that one container port can reach several
/// destinations at once.
pub fn bind_relays(gateway: Ipv4Addr, count: usize) -> io::Result<Vec<(TcpListener, u16)>> {
    (0..count)
        .map(|_| {
            let l = TcpListener::bind((gateway, 0))?;
            l.set_nonblocking(true)?;
            let port = l.local_addr()?.port();
            Ok((l, port))
        })
        .collect()
}

impl NatService {
    /// Prepares the service; `run` it on its own thread.
    pub fn new(
        nat: Arc<Nat>,
        fabric: Fabric,
        pool: relay::RelayPool,
        gateway: Ipv4Addr,
        relays: Vec<(TcpListener, u16)>,
    ) -> io::Result<(NatService, NatMailbox)> {
        let epoll = Epoll::new()?;
        let wake = Arc::new(EventFd::new()?);
        epoll.add(wake.as_raw_fd(), IN, Token::Wake.into())?;
        for (i, (l, _)) in relays.iter().enumerate() {
            epoll.add(l.as_raw_fd(), IN, Token::Listener(i as u16).into())?;
        }
        // Echo goes through a raw socket: ping sockets need a ping_group_range that includes us,
        // which the host may not have. Without CAP_NET_RAW, pings out simply don't work.
        // SAFETY: plain system call.
        let icmp = cvt(unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::IPPROTO_ICMP,
            )
        })
        .ok()
        .map(|fd| Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }));
        let (tx, rx) = crossbeam_channel::unbounded();
        let mailbox = NatMailbox {
            tx,
            wake: wake.clone(),
            icmp: icmp.clone(),
        };
        Ok((
            NatService {
                nat,
                fabric,
                gateway,
                epoll,
                rx,
                wake,
                relays,
                pool,
                entries: HashMap::new(),
                next_token: 0,
                udp_by_flow: HashMap::new(),
                pub_udp_by_id: HashMap::new(),
                pub_udp_local: HashMap::new(),
                next_publish_id: 1,
                waiting: HashMap::new(),
                buf: vec![0; 65536],
                out: vec![0; 65536 + 128],
            },
            mailbox,
        ))
    }

    /// Serves until every mailbox is dropped, polling for `poll` after each event before it
    /// sleeps (see [`Waiter`]).
    pub fn run(mut self, poll: Duration) {
        // SAFETY: all-zero epoll_events are valid.
        let mut events: [libc::epoll_event; 64] = unsafe { std::mem::zeroed() };
        let mut last_sweep = Instant::now();
        let mut waiter = Waiter::new(poll, None);
        loop {
            for ev in waiter.wait(&self.epoll, &mut events, 1000) {
                match Token::decode(ev.u64) {
                    Some(Token::Wake) => self.wake.drain(),
                    Some(Token::Listener(i)) => self.relay_accept(usize::from(i)),
                    Some(Token::Entry(t)) => self.entry_ready(t, ev.events),
                    _ => {}
                }
            }
            loop {
                match self.rx.try_recv() {
                    Ok(job) => self.job(job),
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => return,
                }
            }
            // Timeouts are in seconds: sweep once a second, not after every event.
            let now = Instant::now();
            if now.duration_since(last_sweep) < Duration::from_secs(1) {
                continue;
            }
            last_sweep = now;
            self.waiting
                .retain(|_, w| now.duration_since(w.since) < ACCEPT_WAIT);
            let idle: Vec<u64> = self
                .entries
                .iter()
                .filter(|(_, e)| match e {
                    Entry::PubUdpLocal { last, .. } => now.duration_since(*last) > LOCAL_UDP_IDLE,
                    _ => false,
                })
                .map(|(t, _)| *t)
                .collect();
            for token in idle {
                self.remove_local_udp(token);
            }
        }
    }

    fn add_entry(&mut self, fd: RawFd, events: u32, entry: Entry) -> Option<u64> {
        let token = self.next_token;
        self.next_token += 1;
        self.epoll
            .add(fd, events, Token::Entry(token).into())
            .ok()?;
        self.entries.insert(token, entry);
        Some(token)
    }

    fn remove_entry(&mut self, token: u64) -> Option<Entry> {
        let entry = self.entries.remove(&token)?;
        let fd = match &entry {
            Entry::Connecting { stream, .. } => stream.as_raw_fd(),
            Entry::Udp { sock, .. }
            | Entry::PubUdp { sock, .. }
            | Entry::PubUdpLocal { sock, .. } => sock.as_raw_fd(),
            Entry::PubTcp { listener, .. } => listener.as_raw_fd(),
        };
        let _ = self.epoll.delete(fd);
        Some(entry)
    }

    fn job(&mut self, job: NatJob) {
        match job {
            NatJob::TcpConnect { flow, dst, syn } => self.tcp_connect(flow, dst, syn),
            NatJob::UdpOut {
                flow,
                dst,
                payload,
                gso_size,
            } => self.udp_out(flow, dst, &payload, gso_size),
            NatJob::UdpToClient {
                publish_id,
                client,
                payload,
                gso_size,
            } => {
                if let Some(Entry::PubUdp { sock, .. }) = self
                    .pub_udp_by_id
                    .get(&publish_id)
                    .and_then(|t| self.entries.get(t))
                {
                    send_segments(|chunk| sock.send_to(chunk, client), &payload, gso_size);
                }
            }
            NatJob::Publish {
                container,
                mac,
                ports,
            } => {
                for (listener, cport) in ports {
                    let target = SocketAddrV4::new(container, cport);
                    match listener {
                        Listener::Tcp(listener) => {
                            let fd = listener.as_raw_fd();
                            let entry = Entry::PubTcp {
                                listener,
                                container: target,
                            };
                            self.add_entry(fd, IN, entry);
                        }
                        Listener::Udp(sock) => {
                            let fd = sock.as_raw_fd();
                            let id = self.next_publish_id;
                            self.next_publish_id += 1;
                            let entry = Entry::PubUdp {
                                sock,
                                id,
                                container: target,
                                mac,
                            };
                            if let Some(token) = self.add_entry(fd, IN, entry) {
                                self.pub_udp_by_id.insert(id, token);
                            }
                        }
                    }
                }
            }
            NatJob::Unpublish { container } => {
                let tokens: Vec<u64> = self
                    .entries
                    .iter()
                    .filter(|(_, e)| match e {
                        Entry::PubTcp { container: c, .. }
                        | Entry::PubUdp { container: c, .. }
                        | Entry::PubUdpLocal { container: c, .. } => *c.ip() == container,
                        _ => false,
                    })
                    .map(|(t, _)| *t)
                    .collect();
                for token in tokens {
                    match self.remove_entry(token) {
                        Some(Entry::PubUdp { id, .. }) => {
                            self.pub_udp_by_id.remove(&id);
                        }
                        Some(Entry::PubUdpLocal { id, client, .. }) => {
                            self.pub_udp_local.remove(&(id, client));
                        }
                        _ => {}
                    }
                }
            }
            NatJob::Forget(expired) => {
                for e in expired {
                    if let Some(token) = self.udp_by_flow.remove(&e.flow) {
                        self.remove_entry(token);
                    }
                    self.waiting.remove(&e.flow);
                }
            }
        }
    }

    fn tcp_connect(&mut self, flow: FlowId, dst: SocketAddrV4, syn: Vec<u8>) {
        // A new connection from the same container address and port replaces one that never
        // reached the relay (e.g. the host still held the previous connection's TIME_WAIT and
        // the container reset and retried): reset its upstream now, so the destination does not
        // keep serving a connection nobody will use.
        if let Some(from) = tcp_source(&syn) {
            let stale: Vec<FlowId> = self
                .waiting
                .iter()
                .filter(|(_, w)| w.from == from)
                .map(|(f, _)| *f)
                .collect();
            for f in stale {
                if let Some(w) = self.waiting.remove(&f) {
                    relay::linger_zero(&w.upstream);
                }
            }
        }
        match connect_nonblocking(dst) {
            Ok(stream) => {
                let fd = stream.as_raw_fd();
                let entry = Entry::Connecting { flow, stream, syn };
                let events = (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32;
                self.add_entry(fd, events, entry);
            }
            Err(e) => self.refuse(flow, &syn, &e),
        }
    }

    /// Answers a held SYN whose destination could not be reached the way the destination did.
    fn refuse(&mut self, flow: FlowId, syn: &[u8], err: &io::Error) {
        let len = match err.raw_os_error() {
            Some(libc::ECONNREFUSED) => self.nat.tcp_reset_reply(flow, syn, &mut self.out),
            Some(libc::ENETUNREACH) => self.nat.icmp_unreachable_reply(flow, syn, 0, &mut self.out),
            Some(libc::EACCES | libc::EPERM) => {
                self.nat
                    .icmp_unreachable_reply(flow, syn, 13, &mut self.out)
            }
            _ => self.nat.icmp_unreachable_reply(flow, syn, 1, &mut self.out),
        };
        if let Ok(len) = len {
            self.fabric.to_containers(&self.out[..len]);
        }
    }

    fn entry_ready(&mut self, token: u64, _flags: u32) {
        let Some(entry) = self.entries.get(&token) else {
            return;
        };
        match entry {
            Entry::Connecting { .. } => {
                let Some(Entry::Connecting {
                    flow,
                    stream,
                    mut syn,
                }) = self.remove_entry(token)
                else {
                    return;
                };
                match stream.take_error() {
                    Ok(None) => {
                        if self.nat.tcp_connected(flow, &mut syn, now_ms()).is_ok() {
                            if let Some(from) = tcp_source(&syn) {
                                let since = Instant::now();
                                let upstream = stream;
                                self.waiting.insert(
                                    flow,
                                    Waiting {
                                        upstream,
                                        from,
                                        since,
                                    },
                                );
                            }
                            self.fabric.to_host(&syn);
                        }
                    }
                    Ok(Some(err)) | Err(err) => self.refuse(flow, &syn, &err),
                }
            }
            Entry::Udp { flow, sock } => {
                let flow = *flow;
                loop {
                    match sock.recv(&mut self.buf) {
                        Ok(n) => {
                            if let Ok(len) =
                                self.nat
                                    .udp_reply(flow, &self.buf[..n], &mut self.out, now_ms())
                            {
                                self.fabric.to_containers(&self.out[..len]);
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => {
                            // The destination answered with an ICMP error: pass it on.
                            let (t, code) = match e.raw_os_error() {
                                Some(libc::ECONNREFUSED) => (ICMP_DEST_UNREACH, 3),
                                Some(libc::EHOSTUNREACH) => (ICMP_DEST_UNREACH, 1),
                                Some(libc::ENETUNREACH) => (ICMP_DEST_UNREACH, 0),
                                _ => break,
                            };
                            if let Ok(len) = self.nat.udp_error_reply(flow, t, code, &mut self.out)
                            {
                                self.fabric.to_containers(&self.out[..len]);
                            }
                            break;
                        }
                    }
                }
            }
            Entry::PubTcp {
                listener,
                container,
            } => {
                let container = *container;
                while let Ok((client, peer)) = listener.accept() {
                    self.publish_accept(client, peer, container);
                }
            }
            Entry::PubUdp {
                sock,
                id,
                container,
                mac,
            } => {
                let (id, container, mac) = (*id, *container, *mac);
                let mut local = Vec::new();
                while let Ok((n, peer)) = sock.recv_from(&mut self.buf) {
                    let SocketAddr::V4(client) = peer else {
                        continue;
                    };
                    // The NAT refuses clients the container could not answer (loopback, its
                    // subnet): those go through a relay socket on the gateway instead.
                    match self.nat.publish_udp_in(
                        id,
                        container,
                        client,
                        mac,
                        &self.buf[..n],
                        &mut self.out,
                        now_ms(),
                    ) {
                        Ok(len) => self.fabric.to_containers(&self.out[..len]),
                        Err(NatError::LocalClient) => local.push((peer, self.buf[..n].to_vec())),
                        Err(_) => {}
                    }
                }
                for (client, datagram) in local {
                    self.local_udp_in(id, container, client, &datagram);
                }
            }
            Entry::PubUdpLocal {
                sock, id, client, ..
            } => {
                let (id, client) = (*id, *client);
                let published = self
                    .pub_udp_by_id
                    .get(&id)
                    .and_then(|t| self.entries.get(t));
                while let Ok(n) = sock.recv(&mut self.buf) {
                    if let Some(Entry::PubUdp { sock: out, .. }) = published {
                        let _ = out.send_to(&self.buf[..n], client);
                    }
                }
                if let Some(Entry::PubUdpLocal { last, .. }) = self.entries.get_mut(&token) {
                    *last = Instant::now();
                }
            }
        }
    }

    /// A datagram from a loopback client of a published UDP port: relayed from a socket of its
    /// own on the gateway (the container sees the gateway as the source).
    fn local_udp_in(
        &mut self,
        id: u32,
        container: SocketAddrV4,
        client: SocketAddr,
        datagram: &[u8],
    ) {
        let token = match self.pub_udp_local.get(&(id, client)) {
            Some(t) => *t,
            None => {
                let Ok(sock) = UdpSocket::bind((self.gateway, 0)) else {
                    return;
                };
                if sock.connect(container).is_err() || sock.set_nonblocking(true).is_err() {
                    return;
                }
                let fd = sock.as_raw_fd();
                let entry = Entry::PubUdpLocal {
                    sock,
                    id,
                    container,
                    client,
                    last: Instant::now(),
                };
                let Some(token) = self.add_entry(fd, IN, entry) else {
                    return;
                };
                self.pub_udp_local.insert((id, client), token);
                token
            }
        };
        if let Some(Entry::PubUdpLocal { sock, last, .. }) = self.entries.get_mut(&token) {
            let _ = sock.send(datagram);
            *last = Instant::now();
        }
    }

    fn remove_local_udp(&mut self, token: u64) {
        if let Some(Entry::PubUdpLocal { id, client, .. }) = self.remove_entry(token) {
            self.pub_udp_local.remove(&(id, client));
        }
    }

    /// A client reached a published TCP port: connect to the container from the gateway and
    /// relay. The container sees the client's real address where that can work (the NAT
    /// refuses loopback and in-subnet clients, which then appear as the gateway).
    fn publish_accept(&self, client: TcpStream, peer: SocketAddr, container: SocketAddrV4) {
        let client_v4 = match peer {
            SocketAddr::V4(a) => Some(a),
            SocketAddr::V6(_) => None,
        };
        let (nat, gateway, pool) = (self.nat.clone(), self.gateway, self.pool.clone());
        let _ = std::thread::Builder::new()
            .name("vswitch-publish".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let _ = client.set_nonblocking(false);
                let Ok((socket, eph)) = bound_tcp_socket(gateway) else {
                    return;
                };
                // The mapping lives until the connection's own close has been translated (the
                // NAT expires it after TIME_WAIT); a leftover mapping of an ephemeral port the
                // host has since reused is replaced.
                let mapped = client_v4.is_some_and(|c| {
                    let now = now_ms();
                    match nat.publish_tcp(eph, container, c, now) {
                        Ok(_) => true,
                        Err(NatError::InUse) => {
                            nat.publish_tcp_done(eph)
                                && nat.publish_tcp(eph, container, c, now).is_ok()
                        }
                        Err(_) => false,
                    }
                });
                match connect_blocking(socket, container, CONNECT_TIMEOUT) {
                    Ok(upstream) => pool.relay(client, upstream, || {}),
                    Err(_) => {
                        relay::linger_zero(&client); // refused: the client sees a reset
                        if mapped {
                            nat.publish_tcp_done(eph);
                        }
                    }
                }
            });
    }

    fn relay_accept(&mut self, index: usize) {
        let Some((listener, relay_port)) = self.relays.get(index) else {
            return;
        };
        let relay_port = *relay_port;
        while let Ok((conn, peer)) = listener.accept() {
            let SocketAddr::V4(peer) = peer else { continue };
            let upstream = self
                .nat
                .relay_lookup(peer, relay_port)
                .and_then(|rf| self.waiting.remove(&rf.flow))
                .map(|w| w.upstream);
            match upstream {
                Some(upstream) => self.pool.relay(conn, upstream, || {}),
                None => relay::linger_zero(&conn), // no such flow: reset
            }
        }
    }

    fn udp_out(&mut self, flow: FlowId, dst: SocketAddrV4, payload: &[u8], gso_size: u16) {
        let token = match self.udp_by_flow.get(&flow) {
            Some(t) => *t,
            None => {
                let Ok(sock) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) else {
                    return;
                };
                if sock.connect(dst).is_err() || sock.set_nonblocking(true).is_err() {
                    return;
                }
                let fd = sock.as_raw_fd();
                let Some(token) = self.add_entry(fd, IN, Entry::Udp { flow, sock }) else {
                    return;
                };
                self.udp_by_flow.insert(flow, token);
                token
            }
        };
        if let Some(Entry::Udp { sock, .. }) = self.entries.get(&token) {
            send_segments(|chunk| sock.send(chunk), payload, gso_size);
        }
    }
}

/// The container's address and port in a frame carrying its TCP SYN.
fn tcp_source(frame: &[u8]) -> Option<SocketAddrV4> {
    let ip = frame.get(vswitch_nat::VNET_HDR_LEN + 14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    let src = Ipv4Addr::new(*ip.get(12)?, ip[13], ip[14], ip[15]);
    let port = u16::from_be_bytes([*ip.get(ihl)?, *ip.get(ihl + 1)?]);
    Some(SocketAddrV4::new(src, port))
}

/// Sends `payload`, cut into `gso_size` pieces when it is a UDP GSO super-datagram.
fn send_segments(mut send: impl FnMut(&[u8]) -> io::Result<usize>, payload: &[u8], gso_size: u16) {
    if gso_size == 0 || payload.len() <= usize::from(gso_size) {
        let _ = send(payload);
        return;
    }
    for chunk in payload.chunks(usize::from(gso_size)) {
        let _ = send(chunk);
    }
}

fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Starts a non-blocking connect; the socket becomes writable when it is decided.
fn connect_nonblocking(dst: SocketAddrV4) -> io::Result<TcpStream> {
    // SAFETY: plain system call; the descriptor is immediately owned.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: fresh descriptor.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let addr = sockaddr_in(dst);
    // SAFETY: `addr` is a valid sockaddr_in.
    let ret = unsafe {
        libc::connect(
            fd,
            &addr as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
    }
    Ok(stream)
}

/// A TCP socket bound to an ephemeral port of `gateway`, and that port.
fn bound_tcp_socket(gateway: Ipv4Addr) -> io::Result<(OwnedFd, u16)> {
    // SAFETY: plain system calls on a descriptor we own.
    unsafe {
        let fd = OwnedFd::from_raw_fd(cvt(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ))?);
        let addr = sockaddr_in(SocketAddrV4::new(gateway, 0));
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        cvt(libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_in as *const libc::sockaddr,
            len,
        ))?;
        let mut local: libc::sockaddr_in = std::mem::zeroed();
        let mut local_len = len;
        cvt(libc::getsockname(
            fd.as_raw_fd(),
            &mut local as *mut libc::sockaddr_in as *mut libc::sockaddr,
            &mut local_len,
        ))?;
        Ok((fd, u16::from_be(local.sin_port)))
    }
}

/// Connects a bound socket, giving up after `timeout`.
fn connect_blocking(fd: OwnedFd, dst: SocketAddrV4, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::from(fd);
    stream.set_write_timeout(Some(timeout))?;
    let addr = sockaddr_in(dst);
    // SAFETY: `addr` is a valid sockaddr_in. With a send timeout set, connect gives up after it.
    cvt(unsafe {
        libc::connect(
            stream.as_raw_fd(),
            &addr as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })?;
    stream.set_write_timeout(None)?;
    Ok(stream)
}

/// A published port: `[HOSTIP:]HOSTPORT:CPORT[/tcp|/udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PublishSpec {
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub container_port: u16,
    pub udp: bool,
}

impl std::str::FromStr for PublishSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid --publish {s:?}: expected [HOSTIP:]HOSTPORT:CPORT[/tcp|/udp]");
        let (ports, proto) = match s.rsplit_once('/') {
            Some((p, "tcp")) => (p, false),
            Some((p, "udp")) => (p, true),
            Some(_) => return Err(bad()),
            None => (s, false),
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (ip, host, cont) = match parts.as_slice() {
            [h, c] => (Ipv4Addr::UNSPECIFIED, *h, *c),
            [ip, h, c] => (ip.parse().map_err(|_| bad())?, *h, *c),
            _ => return Err(bad()),
        };
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad);
        Ok(PublishSpec {
            host_ip: ip,
            host_port: port(host)?,
            container_port: port(cont)?,
            udp: proto,
        })
    }
}

impl std::fmt::Display for PublishSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.host_ip.is_unspecified() {
            write!(f, "{}:", self.host_ip)?;
        }
        let proto = if self.udp { "udp" } else { "tcp" };
        write!(f, "{}:{}/{}", self.host_port, self.container_port, proto)
    }
}

impl PublishSpec {
    /// Binds the host side; a port already in use is a clear error.
    pub fn bind(&self) -> Result<Listener, String> {
        let addr = SocketAddr::new(IpAddr::V4(self.host_ip), self.host_port);
        let proto = if self.udp { "udp" } else { "tcp" };
        let err = |e: io::Error| match e.kind() {
            ErrorKind::AddrInUse => {
                format!("host port {}/{proto} is already in use", self.host_port)
            }
            _ => format!("publishing host port {}/{proto}: {e}", self.host_port),
        };
        if self.udp {
            let sock = UdpSocket::bind(addr).map_err(err)?;
            sock.set_nonblocking(true).map_err(err)?;
            Ok(Listener::Udp(sock))
        } else {
            let listener = TcpListener::bind(addr).map_err(err)?;
            listener.set_nonblocking(true).map_err(err)?;
            Ok(Listener::Tcp(listener))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_publish_specs() {
        let p: PublishSpec = "8080:80".parse().unwrap();
        assert_eq!(p.to_string(), "8080:80/tcp");
        let p: PublishSpec = "127.0.0.1:5353:53/udp".parse().unwrap();
        assert_eq!(p.host_ip, Ipv4Addr::LOCALHOST);
        assert!(p.udp);
        for bad in ["80", "0:80", "8080:80/sctp", "x:1:2", "1:2:3:4", "70000:80"] {
            assert!(bad.parse::<PublishSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn splits_gso_datagrams() {
        let mut sent = Vec::new();
        send_segments(
            |c| {
                sent.push(c.len());
                Ok(c.len())
            },
            &[0u8; 2500],
            1000,
        );
        assert_eq!(sent, vec![1000, 1000, 500]);
        sent.clear();
        send_segments(
            |c| {
                sent.push(c.len());
                Ok(c.len())
            },
            &[0u8; 500],
            0,
        );
        assert_eq!(sent, vec![500]);
    }
}
