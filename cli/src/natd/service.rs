//! The NAT service thread: one epoll set over the host sockets behind the containers' flows,
//! fed by the mailbox. What each kind of socket does lives in `connect` (outgoing TCP), `udp`
//! and `publish`.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use vswitch_nat::{FlowId, Nat};

use crate::datapath::relay::RelayPool;
use crate::datapath::wait::{Busy, Waiter};
use crate::datapath::{Fabric, Token};
use crate::kernel::epoll::{Epoll, EventFd, IN};
use crate::kernel::sys::cvt;

use super::budget::{FdBudget, Lease};
use super::connect::Outbound;
use super::udp::UdpFlows;
use super::{NatJob, NatMailbox};

/// A loopback client of a published UDP port is forgotten after this long without traffic
/// (the NAT's timeout for a replied UDP flow).
const LOCAL_UDP_IDLE: Duration = Duration::from_secs(120);

/// A socket the service watches, besides its wake-up eventfd and the relay listeners.
pub(super) enum Entry {
    /// Upstream connect in progress, the container's SYN held.
    Connecting {
        flow: FlowId,
        from: SocketAddrV4,
        stream: TcpStream,
        syn: Vec<u8>,
        /// Pays for the whole relayed connection, given back when the relay ends.
        lease: Lease,
    },
    Udp {
        flow: FlowId,
        /// Shared with the workers (`UdpFlows`), which send and read on it.
        sock: Arc<UdpSocket>,
        _lease: Lease,
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
        _lease: Lease,
    },
}

impl Entry {
    pub(super) fn fd(&self) -> RawFd {
        match self {
            Entry::Connecting { stream, .. } => stream.as_raw_fd(),
            Entry::Udp { sock, .. } => sock.as_raw_fd(),
            Entry::PubUdp { sock, .. } | Entry::PubUdpLocal { sock, .. } => sock.as_raw_fd(),
            Entry::PubTcp { listener, .. } => listener.as_raw_fd(),
        }
    }
}

pub struct NatService {
    pub(super) nat: Arc<Nat>,
    pub(super) fabric: Fabric,
    pub(super) budget: Arc<FdBudget>,
    pub(super) gateway: Ipv4Addr,
    epoll: Epoll,
    rx: Receiver<NatJob>,
    wake: Arc<EventFd>,
    /// Outgoing TCP connections until they reach the relay (served by the workers).
    pub(super) outbound: Arc<Outbound>,
    /// UDP flows' sockets, handed to the workers.
    pub(super) udp: Arc<UdpFlows>,
    /// The workers that splice relayed connections.
    pub(super) pool: RelayPool,
    pub(super) entries: HashMap<u64, Entry>,
    next_token: u64,
    pub(super) udp_by_flow: HashMap<FlowId, u64>,
    pub(super) pub_udp_by_id: HashMap<u32, u64>,
    /// Loopback clients of published UDP ports, by (publish id, client).
    pub(super) pub_udp_local: HashMap<(u32, SocketAddr), u64>,
    pub(super) next_publish_id: u32,
    pub(super) buf: Vec<u8>,
    pub(super) out: Vec<u8>,
    /// Published connections being connected to their container on threads of their own.
    pub(super) publishing: Arc<AtomicUsize>,
    /// The thread's time spent working.
    busy: Arc<Busy>,
}

impl NatService {
    /// Prepares the service; `run` it on its own thread.
    pub fn new(
        nat: Arc<Nat>,
        fabric: Fabric,
        budget: Arc<FdBudget>,
        pool: RelayPool,
        gateway: Ipv4Addr,
        relays: Vec<(TcpListener, u16)>,
    ) -> io::Result<(NatService, NatMailbox)> {
        let icmp = echo_socket();
        NatService::with_icmp(nat, fabric, budget, pool, gateway, relays, icmp)
    }

    /// Like `new`, with `icmp` as the raw socket echo requests leave through.
    pub(super) fn with_icmp(
        nat: Arc<Nat>,
        fabric: Fabric,
        budget: Arc<FdBudget>,
        pool: RelayPool,
        gateway: Ipv4Addr,
        relays: Vec<(TcpListener, u16)>,
        icmp: Option<OwnedFd>,
    ) -> io::Result<(NatService, NatMailbox)> {
        let epoll = Epoll::new()?;
        let wake = Arc::new(EventFd::new()?);
        epoll.add(wake.as_raw_fd(), IN, Token::Wake.into())?;
        let outbound = Arc::new(Outbound::new(
            nat.clone(),
            fabric.clone(),
            budget.clone(),
            pool.clone(),
            relays,
        )?);
        let (tx, rx) = crossbeam_channel::unbounded();
        let udp = Arc::new(UdpFlows::default());
        let mailbox = NatMailbox {
            tx,
            wake: wake.clone(),
            icmp: icmp.map(Arc::new),
            outbound: outbound.clone(),
            udp: udp.clone(),
        };
        let service = NatService {
            nat,
            fabric,
            budget,
            gateway,
            epoll,
            rx,
            wake,
            outbound,
            udp,
            pool,
            entries: HashMap::new(),
            next_token: 0,
            udp_by_flow: HashMap::new(),
            pub_udp_by_id: HashMap::new(),
            pub_udp_local: HashMap::new(),
            next_publish_id: 1,
            buf: vec![0; 65536],
            out: vec![0; 65536 + 128],
            publishing: Arc::default(),
            busy: Arc::default(),
        };
        Ok((service, mailbox))
    }

    /// Where the service thread's time spent working adds up (see [`Busy`]).
    pub fn busy(&self) -> Arc<Busy> {
        self.busy.clone()
    }

    /// Serves until every mailbox is dropped, polling for `poll` after each event before it
    /// sleeps (see [`Waiter`]).
    pub fn run(mut self, poll: Duration) {
        // SAFETY: all-zero epoll_events are valid.
        let mut events: [libc::epoll_event; 64] = unsafe { std::mem::zeroed() };
        let mut last_sweep = Instant::now();
        let mut waiter = Waiter::new(poll, None).count_busy(self.busy.clone());
        loop {
            for ev in waiter.wait(&self.epoll, &mut events, 1000) {
                match Token::decode(ev.u64) {
                    Some(Token::Wake) => self.wake.drain(),
                    Some(Token::Entry(t)) => self.entry_ready(t),
                    _ => {}
                }
            }
            loop {
                match self.rx.try_recv() {
                    Ok(job) => self.job(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            // Timeouts are in seconds: sweep once a second, not after every event.
            let now = Instant::now();
            if now.duration_since(last_sweep) >= Duration::from_secs(1) {
                last_sweep = now;
                self.sweep(now);
            }
        }
    }

    fn job(&mut self, job: NatJob) {
        match job {
            NatJob::UdpOut {
                flow,
                from,
                dst,
                payload,
                gso_size,
            } => self.udp_out(flow, from, dst, &payload, gso_size),
            NatJob::UdpToClient {
                publish_id,
                client,
                payload,
                gso_size,
            } => self.udp_to_client(publish_id, client, &payload, gso_size),
            NatJob::Publish {
                container,
                mac,
                ports,
            } => self.publish(container, mac, ports),
            NatJob::Unpublish { container } => self.unpublish(container),
            NatJob::Pause { fds, reply, resume } => self.pause(fds, reply, resume),
            NatJob::Forget(expired) => {
                for e in expired {
                    if let Some(token) = self.udp_by_flow.remove(&e.flow) {
                        self.remove_entry(token);
                    }
                    self.outbound.forget(e.flow);
                }
            }
        }
    }

    fn entry_ready(&mut self, token: u64) {
        match self.entries.get(&token) {
            Some(Entry::Connecting { .. }) => self.connected(token),
            Some(Entry::Udp { flow, .. }) => self.udp_ready(*flow, token),
            Some(Entry::PubTcp { .. }) => self.published_tcp_ready(token),
            Some(Entry::PubUdp { .. }) => self.published_udp_ready(token),
            Some(Entry::PubUdpLocal { .. }) => self.local_udp_ready(token),
            None => {}
        }
    }

    /// Drops what has waited too long: upstreams whose container never reached the relay,
    /// loopback clients of published UDP ports gone quiet.
    fn sweep(&mut self, now: Instant) {
        self.outbound.waiting().retain(|_, w| !w.expired(now));
        let idle: Vec<u64> = (self.entries.iter())
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

    /// Watches `fd` (owned by `entry`) for `events`; returns its token.
    pub(super) fn add_entry(&mut self, events: u32, entry: Entry) -> Option<u64> {
        let token = self.next_token;
        self.next_token += 1;
        // A UDP flow's socket goes to the workers; the service reads it only without any.
        let to_workers = match &entry {
            Entry::Udp { flow, sock, .. } => self.udp.add(&self.pool, token, *flow, sock),
            _ => false,
        };
        if !to_workers {
            (self.epoll)
                .add(entry.fd(), events, Token::Entry(token).into())
                .ok()?;
        }
        self.entries.insert(token, entry);
        Some(token)
    }

    pub(super) fn remove_entry(&mut self, token: u64) -> Option<Entry> {
        let entry = self.entries.remove(&token)?;
        if let Entry::Udp { .. } = entry {
            self.udp.remove(&self.pool, token);
        }
        let _ = self.epoll.delete(entry.fd());
        Some(entry)
    }
}

/// The raw socket echo requests go out through: ping sockets need a `ping_group_range` that
/// includes us, which the host may not have. Without CAP_NET_RAW, pings out simply don't work.
fn echo_socket() -> Option<OwnedFd> {
    let flags = libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain system call.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, flags, libc::IPPROTO_ICMP) }).ok()?;
    // SAFETY: `fd` is fresh and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}
