//! The NAT service's sockets handed to another process: the relay listeners, every entry of its
//! epoll set (UDP flows, connects in progress with their held SYN, published ports and their
//! loopback clients) and the connected upstreams waiting for their container. The descriptors
//! travel by index (`kernel::fdpass`); the rest is plain data.
//!
//! The service describes itself on its own thread (`NatJob::Pause`), then waits: it owns the
//! sockets, so nothing can change them until the hand-over is decided.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use vswitch_nat::{FlowId, Nat};

use crate::datapath::relay::RelayPool;
use crate::datapath::Fabric;
use crate::kernel::epoll::IN;
use crate::kernel::fdpass::{FdIn, FdOut};

use super::budget::{FdBudget, TCP_RELAY, UDP_FLOW};
use super::connect::Waiting;
use super::service::{Entry, NatService};
use super::NatMailbox;

/// How long a pause waits for published connections still connecting to their container.
const PUBLISHING_WAIT: Duration = Duration::from_secs(2);

/// The service, its descriptors named by index.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSnap {
    /// Relay listeners and their ports.
    pub relays: Vec<(usize, u16)>,
    pub entries: Vec<EntrySnap>,
    pub waiting: Vec<WaitingSnap>,
    pub next_publish_id: u32,
}

/// One socket of the service's epoll set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum EntrySnap {
    Connecting {
        flow: FlowId,
        from: SocketAddrV4,
        fd: usize,
        syn: Vec<u8>,
    },
    Udp {
        flow: FlowId,
        fd: usize,
    },
    PubTcp {
        fd: usize,
        container: SocketAddrV4,
    },
    PubUdp {
        fd: usize,
        id: u32,
        container: SocketAddrV4,
        mac: [u8; 6],
    },
    PubUdpLocal {
        fd: usize,
        id: u32,
        container: SocketAddrV4,
        client: SocketAddr,
        idle_ms: u64,
    },
}

/// A connected upstream waiting for its container's side to reach the relay.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitingSnap {
    pub flow: FlowId,
    pub fd: usize,
    pub from: SocketAddrV4,
    pub age_ms: u64,
}

impl NatService {
    /// `NatJob::Pause`: waits for published connections still connecting (they end up in the
    /// relay), describes every socket, and blocks until told to go on.
    pub(super) fn pause(
        &mut self,
        mut fds: FdOut,
        reply: Sender<(ServiceSnap, FdOut)>,
        resume: Receiver<()>,
    ) {
        let deadline = Instant::now() + PUBLISHING_WAIT;
        while self.publishing.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let left = self.publishing.load(Ordering::SeqCst);
        if left > 0 {
            tracing::warn!("{left} published connections still connecting: not handed over");
        }
        let snap = self.snapshot(&mut fds);
        if reply.send((snap, fds)).is_ok() {
            // Until the hand-over is decided: these sockets must not change meanwhile.
            let _ = resume.recv();
        }
    }

    fn snapshot(&self, fds: &mut FdOut) -> ServiceSnap {
        let relays = (self.outbound.relays.iter())
            .map(|(l, port)| (fds.add(l), *port))
            .collect();
        let now = Instant::now();
        let mut tokens: Vec<&u64> = self.entries.keys().collect();
        // In the order they were made: a restored service makes them again in that order.
        tokens.sort_unstable();
        let mut entries: Vec<EntrySnap> = (tokens.into_iter())
            .map(|t| match &self.entries[t] {
                Entry::Connecting {
                    flow,
                    from,
                    stream,
                    syn,
                    ..
                } => EntrySnap::Connecting {
                    flow: *flow,
                    from: *from,
                    fd: fds.add(stream),
                    syn: syn.clone(),
                },
                Entry::Udp { flow, sock, .. } => EntrySnap::Udp {
                    flow: *flow,
                    fd: fds.add(sock),
                },
                Entry::PubTcp {
                    listener,
                    container,
                } => EntrySnap::PubTcp {
                    fd: fds.add(listener),
                    container: *container,
                },
                Entry::PubUdp {
                    sock,
                    id,
                    container,
                    mac,
                } => EntrySnap::PubUdp {
                    fd: fds.add(sock),
                    id: *id,
                    container: *container,
                    mac: *mac,
                },
                Entry::PubUdpLocal {
                    sock,
                    id,
                    container,
                    client,
                    last,
                    ..
                } => EntrySnap::PubUdpLocal {
                    fd: fds.add(sock),
                    id: *id,
                    container: *container,
                    client: *client,
                    idle_ms: now.duration_since(*last).as_millis() as u64,
                },
            })
            .collect();
        // Connects in progress on the (paused) workers: a restored service watches them.
        self.outbound.each_connecting(|c| {
            entries.push(EntrySnap::Connecting {
                flow: c.flow,
                from: c.from,
                fd: fds.add(&c.stream),
                syn: c.syn.clone(),
            })
        });
        let waiting = (self.outbound.waiting().iter())
            .map(|(flow, w)| WaitingSnap {
                flow: *flow,
                fd: fds.add(&w.upstream),
                from: w.from,
                age_ms: now.duration_since(w.since).as_millis() as u64,
            })
            .collect();
        ServiceSnap {
            relays,
            entries,
            waiting,
            next_publish_id: self.next_publish_id,
        }
    }

    /// The service another process described in `snap`, with its sockets from `fds`: each
    /// socket watched again as it was, each flow's descriptors leased from `budget` again.
    /// `icmp` is the raw socket echo requests leave through.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        nat: Arc<Nat>,
        fabric: Fabric,
        budget: Arc<FdBudget>,
        pool: RelayPool,
        gateway: std::net::Ipv4Addr,
        snap: &ServiceSnap,
        icmp: Option<OwnedFd>,
        fds: &mut FdIn,
    ) -> std::io::Result<(NatService, NatMailbox)> {
        let mut relays = Vec::new();
        for &(fd, port) in &snap.relays {
            relays.push((TcpListener::from(fds.take(fd)?), port));
        }
        let (mut service, mailbox) =
            NatService::with_icmp(nat, fabric, budget, pool, gateway, relays, icmp)?;
        service.next_publish_id = snap.next_publish_id;
        let now = Instant::now();
        let ago = |ms: u64| now.checked_sub(Duration::from_millis(ms)).unwrap_or(now);
        // A UDP flow's container, whose share of the descriptors its socket counts against.
        let nat = service.nat.clone();
        let owner = |flow| nat.flow_inside(flow).map(|a| *a.ip());
        for e in &snap.entries {
            let (events, entry) = restore_entry(&service, e, fds, &owner, &ago)?;
            let fd = entry.fd();
            let token = service.add_entry(events, entry).ok_or_else(|| {
                std::io::Error::other(format!("watching a taken-over socket ({fd})"))
            })?;
            match e {
                EntrySnap::Udp { flow, .. } => {
                    service.udp_by_flow.insert(*flow, token);
                }
                EntrySnap::PubUdp { id, .. } => {
                    service.pub_udp_by_id.insert(*id, token);
                }
                EntrySnap::PubUdpLocal { id, client, .. } => {
                    service.pub_udp_local.insert((*id, *client), token);
                }
                _ => {}
            }
        }
        for w in &snap.waiting {
            let waiting = Waiting {
                upstream: TcpStream::from(fds.take(w.fd)?),
                from: w.from,
                since: ago(w.age_ms),
                lease: service.budget.lease_held(TCP_RELAY, Some(*w.from.ip())),
            };
            service.outbound.waiting().insert(w.flow, waiting);
        }
        Ok((service, mailbox))
    }
}

/// A service entry of the old process, on its socket.
fn restore_entry(
    service: &NatService,
    e: &EntrySnap,
    fds: &mut FdIn,
    owner: &impl Fn(FlowId) -> Option<Ipv4Addr>,
    ago: &impl Fn(u64) -> Instant,
) -> std::io::Result<(u32, Entry)> {
    Ok(match e {
        EntrySnap::Connecting {
            flow,
            from,
            fd,
            syn,
        } => (
            (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32,
            Entry::Connecting {
                flow: *flow,
                from: *from,
                stream: TcpStream::from(fds.take(*fd)?),
                syn: syn.clone(),
                lease: service.budget.lease_held(TCP_RELAY, Some(*from.ip())),
            },
        ),
        EntrySnap::Udp { flow, fd } => (
            IN,
            Entry::Udp {
                flow: *flow,
                sock: Arc::new(UdpSocket::from(fds.take(*fd)?)),
                _lease: service.budget.lease_held(UDP_FLOW, owner(*flow)),
            },
        ),
        EntrySnap::PubTcp { fd, container } => (
            IN,
            Entry::PubTcp {
                listener: TcpListener::from(fds.take(*fd)?),
                container: *container,
            },
        ),
        EntrySnap::PubUdp {
            fd,
            id,
            container,
            mac,
        } => (
            IN,
            Entry::PubUdp {
                sock: UdpSocket::from(fds.take(*fd)?),
                id: *id,
                container: *container,
                mac: *mac,
            },
        ),
        EntrySnap::PubUdpLocal {
            fd,
            id,
            container,
            client,
            idle_ms,
        } => (
            IN,
            Entry::PubUdpLocal {
                sock: UdpSocket::from(fds.take(*fd)?),
                id: *id,
                container: *container,
                client: *client,
                last: ago(*idle_ms),
                _lease: service.budget.lease_held(UDP_FLOW, Some(*container.ip())),
            },
        ),
    })
}
