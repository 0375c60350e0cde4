//! Outgoing TCP connections translated in the kernel from their SYN on (`run --tcp-nat
//! kernel`): no relay, no host socket carrying the data, the container's connection is the one
//! the remote end sees, as through a kernel NAT.
//!
//! At the container's SYN, instead of connecting upstream:
//! - the host's route to the destination must leave by an interface of the host (not the TAP,
//!   not loopback), which gets the uplinks' program (`bpf::fastpath::Uplinks`);
//! - a repair-mode socket (`sockets::reserve_tcp`) reserves the host's address and the
//!   container's port (else one the kernel chooses) for the four-tuple, so that no connection
//!   of the host's collides with it;
//! - both directions go into the relay maps (`bpf::relay::Translation`): the veth's program
//!   rewrites the container's segments to come from the host and sends them to the next hop
//!   (`bpf_redirect_neigh`), the uplink's program rewrites the remote end's back and sends
//!   them out of the container's veth;
//! - the NAT rewrites the held SYN the same way, and it leaves through a raw socket.
//!
//! Anything that does not fit (no fast path for the container, a local destination, no
//! descriptor to spare, full maps) goes the relay's way. `natd::offload` then follows the
//! connection by its flags, until it is over.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vswitch_nat::{
    tcp_reset_frame, tcp_syn_frame, FlowId, Nat, Proto as NatProto, Verdict, TCP_RST_FRAME_LEN,
    TCP_SYN_FRAME_MAX,
};
use vswitch_switch::VNET_HDR_LEN;

use crate::bpf::fastpath::Uplinks;
use crate::bpf::relay::{Event, EventKind, Proto, Traffic, Translation};
use crate::datapath::now_ms;
use crate::kernel::netlink::Netlink;

use super::budget::{FdBudget, Lease};
use super::offload::{Offloads, MAX_CREDITS};
use super::sockets::{raw_ipv4_socket, reserve_tcp, send_raw};

/// How containers' outgoing TCP connections reach the outside (`run --tcp-nat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TcpNat {
    /// Relayed through the host's sockets (`natd::connect`, `datapath::relay`).
    Relay,
    /// Translated in the kernel where it can be, else relayed.
    Kernel,
}

/// How long a route looked up stays trusted.
const ROUTE_TTL: Duration = Duration::from_secs(1);
/// `RTN_UNICAST` (<linux/rtnetlink.h>): a route to somewhere else (not local, not a blackhole).
const RTN_UNICAST: u8 = 1;

pub struct Translator {
    offloads: Arc<Offloads>,
    uplinks: Arc<Uplinks>,
    budget: Arc<FdBudget>,
    raw: OwnedFd,
    routes: Mutex<Routes>,
    gateway_mac: [u8; 6],
    /// The TAP's and loopback's: no uplinks.
    not_uplinks: [u32; 2],
    /// The containers' links' MTU: an uplink must be as wide (the kernel forwards what it
    /// translates whole, or drops it).
    mtu: u32,
}

struct Routes {
    nl: Netlink,
    /// The uplink the route to an address leaves by and the host's address it leaves from
    /// (None: no uplink), and when looked up.
    cache: HashMap<Ipv4Addr, (Option<Uplink>, Instant)>,
}

type Uplink = (u32, Option<Ipv4Addr>);

impl Translator {
    /// Opens its sockets (needs CAP_NET_RAW and CAP_NET_ADMIN) in the host's namespace.
    pub fn new(
        offloads: Arc<Offloads>,
        uplinks: Arc<Uplinks>,
        budget: Arc<FdBudget>,
        gateway_mac: [u8; 6],
        (tap, mtu): (u32, u32),
    ) -> std::io::Result<Translator> {
        let nl = Netlink::open().map_err(std::io::Error::other)?;
        Ok(Translator {
            offloads,
            uplinks,
            budget,
            raw: raw_ipv4_socket()?,
            routes: Mutex::new(Routes {
                nl,
                cache: HashMap::new(),
            }),
            gateway_mac,
            not_uplinks: [tap, 1],
            mtu,
        })
    }

    /// Follows the programs' events (`bpf::relay::Event`) on a thread of its own, which sleeps
    /// until one comes; from then on the kernel opens connections itself (`open`).
    pub fn watch(&self, nat: Arc<Nat>) -> std::io::Result<()> {
        let Some(mut ring) = self.offloads.take_events() else {
            return Ok(());
        };
        let offloads = self.offloads.clone();
        let budget = self.budget.clone();
        std::thread::Builder::new()
            .name("vswitch-events".into())
            .spawn(move || {
                // Read every millisecond while events come (the programs wake no one), asleep
                // after ten empty looks (woken by the next event).
                let mut empty = 0;
                let mut to_grant = Vec::new();
                loop {
                    let Some(_batch) = offloads.batch() else {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    };
                    let now = now_ms();
                    let mut read = 0;
                    let mut opened = Vec::new();
                    // One event after the other: a connection's later events (its FIN, read in
                    // the same batch) find what its earlier ones did.
                    ring.drain(|record| {
                        read += 1;
                        match Event::parse(record) {
                            Some(ev) if ev.kind == EventKind::Opened => {
                                open(&offloads, &budget, &ev, &nat, now);
                                opened.push(*ev.container.ip());
                            }
                            Some(ev) => {
                                // A connection on the ports of a finished one, whose reservation
                                // went with it: the same four-tuple again, if the host has it.
                                let reopened = offloads.event(&ev, &nat, now);
                                if let Some((flow, [container, remote, host])) = reopened {
                                    let reservation = reserve(&budget, container, remote, host);
                                    if let Some(reservation) = reservation {
                                        offloads.reserved(flow, reservation);
                                    }
                                }
                            }
                            None => {}
                        }
                    });
                    // The credits they used, granted again once every event of the
                    // connections opened so far is read (their flows count in the room).
                    to_grant.extend(opened);
                    if !ring.pending() {
                        to_grant.sort_unstable();
                        to_grant.dedup();
                        for ip in to_grant.drain(..) {
                            grant(&offloads, &budget, &nat, ip);
                        }
                    }
                    drop(_batch);
                    empty = if read > 0 { 0 } else { empty + 1 };
                    if empty < 10 {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    offloads.wake_events(true);
                    if ring.pending() {
                        offloads.wake_events(false);
                        continue;
                    }
                    let mut pfd = libc::pollfd {
                        fd: ring.fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // A program that read the flag just before it was set wakes no one: a
                    // second at most, as the manager's reports.
                    // SAFETY: `pfd` is one live pollfd.
                    if unsafe { libc::poll(&mut pfd, 1, 1000) } < 0 {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    offloads.wake_events(false);
                    empty = 0;
                }
            })?;
        self.offloads.open_in_kernel(self.gateway_mac);
        Ok(())
    }

    /// Takes up the connections the kernel opened that the previous daemon had not followed
    /// yet (`Offloads::adopt`), as if their SYNs had just been told (their sequence numbers
    /// unknown: a refusal's reset may not reach the container, whose connection then times out).
    pub fn adopt_opened(&self, nat: &Nat, orphans: &[Translation]) {
        let now = now_ms();
        for t in orphans {
            let ev = Event {
                flags: 0x02,
                kind: EventKind::Opened,
                container: t.container,
                remote: t.remote,
                seq: 0,
                len: 40,
            };
            open(&self.offloads, &self.budget, &ev, nat, now);
        }
    }

    /// Carries new connection `flow` from `from` to `dst`, whose SYN is `frame`, in the kernel
    /// if it can (true: the SYN has left); false leaves it to the relay.
    pub fn translate(
        &self,
        nat: &Nat,
        flow: FlowId,
        from: SocketAddrV4,
        dst: SocketAddrV4,
        frame: &[u8],
        now: u64,
    ) -> bool {
        let Some((port, veth)) = self.offloads.served(from.ip()) else {
            return false;
        };
        let Some((uplink, _)) = self.uplink_to(*dst.ip()) else {
            return false;
        };
        if let Err(e) = self.uplinks.attach(uplink) {
            tracing::warn!(uplink, "no program on the uplink, TCP relayed ({e})");
            self.routes()
                .cache
                .insert(*dst.ip(), (None, Instant::now()));
            return false;
        }
        let Some(lease) = self.budget.lease(1, Some(*from.ip()), "a TCP connection") else {
            return false;
        };
        let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, from.port());
        let Ok((reservation, host)) = reserve_tcp(dst, any) else {
            return false;
        };
        // The next connections to there the kernel opens itself, for a second, as many as the
        // container has room for.
        self.offloads.route(*dst.ip(), uplink, *host.ip());
        grant(&self.offloads, &self.budget, nat, *from.ip());
        let Some(mac) = frame.get(VNET_HDR_LEN + 6..VNET_HDR_LEN + 12) else {
            return false;
        };
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(mac);
        macs[6..].copy_from_slice(&self.gateway_mac);
        let t = Translation {
            proto: Proto::Tcp,
            container: from,
            remote: dst,
            host,
            uplink,
            veth,
            port,
            macs,
        };
        if !self.offloads.translate(flow, &t, (reservation, lease)) {
            return false;
        }
        let mut syn = frame.to_vec();
        match nat.tcp_translated(flow, &mut syn, host, now) {
            // Lost, it is the container's to send again: the kernel carries that one.
            Ok(packet) => {
                let _ = send_raw(&self.raw, &syn[packet], *dst.ip());
                true
            }
            Err(_) => {
                self.offloads.forget([flow]);
                false
            }
        }
    }

    /// Hands UDP flow or echo `flow` to the kernel where it can: its container served, the
    /// host's route to the remote end by an uplink (`uplink_to`). Its later datagrams both ways
    /// are then translated by the programs, as a translated connection's segments. `host` is a
    /// UDP flow's side on the host (its socket's address); an echo leaves from the route's
    /// address with the NAT's identifier.
    pub fn carry(&self, nat: &Nat, flow: FlowId, host: Option<SocketAddrV4>) {
        if self.offloads.carries(flow) {
            return;
        }
        let Some(d) = nat.datagram_flow(flow) else {
            return;
        };
        let Some((port, veth)) = self.offloads.served(d.container.ip()) else {
            return;
        };
        let Some((uplink, src)) = self.uplink_to(*d.remote.ip()) else {
            return;
        };
        let host = match (d.proto, host, src) {
            (NatProto::Udp, Some(host), _) => host,
            (NatProto::Icmp, _, Some(src)) => SocketAddrV4::new(src, d.host_ident),
            _ => return,
        };
        if let Err(e) = self.uplinks.attach(uplink) {
            tracing::warn!(
                uplink,
                "no program on the uplink, datagrams cross the daemon ({e})"
            );
            return;
        }
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&d.mac);
        macs[6..].copy_from_slice(&self.gateway_mac);
        let t = Translation {
            proto: match d.proto {
                NatProto::Udp => Proto::Udp,
                _ => Proto::Icmp,
            },
            container: d.container,
            remote: d.remote,
            host,
            uplink,
            veth,
            port,
            macs,
        };
        self.offloads.carry(flow, &t);
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The uplink the host's route to `dst` leaves by, if it leaves the host by one as wide as
    /// the containers' links, and the host's address it leaves from.
    fn uplink_to(&self, dst: Ipv4Addr) -> Option<Uplink> {
        let mut routes = self.routes();
        if let Some(&(uplink, at)) = routes.cache.get(&dst) {
            if at.elapsed() < ROUTE_TTL {
                return uplink;
            }
        }
        let uplink = match routes.nl.route_to(dst) {
            Ok(r) if r.kind == RTN_UNICAST => (r.oif)
                .filter(|oif| !self.not_uplinks.contains(oif))
                .map(|oif| (oif, r.src)),
            _ => None,
        };
        let uplink = uplink.filter(|&(oif, _)| {
            matches!(routes.nl.link_by_index(oif), Ok(Some(l)) if l.mtu >= Some(self.mtu))
        });
        if routes.cache.len() > 4096 {
            routes.cache.clear();
        }
        routes.cache.insert(dst, (uplink, Instant::now()));
        uplink
    }
}

/// The host's four-tuple `host` → `remote` for `container`'s connection, with the descriptor it
/// costs; None if the container has no descriptor to spare or the host has that four-tuple.
fn reserve(
    budget: &Arc<FdBudget>,
    container: SocketAddrV4,
    remote: SocketAddrV4,
    host: SocketAddrV4,
) -> Option<(OwnedFd, Lease)> {
    let lease = budget.lease(1, Some(*container.ip()), "a TCP connection")?;
    match reserve_tcp(remote, host) {
        Ok((fd, got)) if got == host => Some((fd, lease)),
        _ => None,
    }
}

/// A connection the veth's filter opened itself (`EventKind::Opened`), its SYN sent: the NAT
/// makes its flow from the SYN (rebuilt from the event: the same limits, the same refusals),
/// the host's four-tuple is reserved, and the daemon follows it. Refused, its entries go and
/// the container gets the NAT's answer, or a reset.
fn open(offloads: &Offloads, budget: &Arc<FdBudget>, ev: &Event, nat: &Nat, now: u64) {
    // Gone already (the container's RST, an unplug): nothing to follow.
    let Some(t) = offloads.translation(ev.container, ev.remote) else {
        return;
    };
    let (container_mac, gateway_mac) = split_macs(&t.macs);
    let mut syn = [0u8; TCP_SYN_FRAME_MAX];
    let macs = (gateway_mac, container_mac);
    let Ok(len) = tcp_syn_frame(&mut syn, macs, t.container, t.remote, ev.seq, ev.len) else {
        return;
    };
    let syn = &mut syn[..len];
    let mut reset = [0u8; TCP_RST_FRAME_LEN];
    let refuse = |reply: Option<&[u8]>, reset: &mut [u8]| match reply {
        Some(reply) => offloads.refuse(&t, reply),
        None => {
            let macs = (container_mac, gateway_mac);
            let ack = ev.seq.wrapping_add(1);
            let rst = tcp_reset_frame(reset, macs, t.remote, t.container, 0, ack);
            offloads.refuse(&t, rst.map_or(&[][..], |n| &reset[..n]));
        }
    };
    let flow = match nat.outbound(syn, now) {
        Verdict::TcpConnect { flow, .. } => flow,
        Verdict::Reply(reply) => return refuse(Some(reply.bytes()), &mut reset),
        _ => return refuse(None, &mut reset),
    };
    let reservation = reserve(budget, t.container, t.remote, t.host);
    let translated = reservation.map(|r| (r, nat.tcp_translated(flow, syn, t.host, now)));
    match translated {
        Some((reservation, Ok(_))) => {
            let sent = Traffic {
                packets: 1,
                bytes: (len - VNET_HDR_LEN - 14) as u64,
                ..Traffic::default()
            };
            offloads.opened(flow, &t, reservation, sent);
        }
        _ => {
            nat.remove_flow(flow);
            refuse(None, &mut reset);
        }
    }
}

/// Grants container `ip` credits for connections the kernel opens (`Offloads::grant`): what its
/// shares of the NAT's table and of the descriptors have room for, but for the last
/// `MAX_CREDITS`. A grant writes over what the programs took since the daemon last looked,
/// so up to a grant's worth may be open that the room does not show yet; those last places
/// are the daemon's own, where a full table refuses a SYN before it leaves.
fn grant(offloads: &Offloads, budget: &FdBudget, nat: &Nat, ip: Ipv4Addr) {
    let room = nat.room(ip).min(budget.room(ip));
    offloads.grant(ip, room.saturating_sub(MAX_CREDITS));
}

/// A translation's MACs: the container's, the gateway's.
fn split_macs(macs: &[u8; 12]) -> ([u8; 6], [u8; 6]) {
    let mut pair = ([0u8; 6], [0u8; 6]);
    pair.0.copy_from_slice(&macs[..6]);
    pair.1.copy_from_slice(&macs[6..]);
    pair
}
