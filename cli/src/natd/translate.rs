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

use vswitch_nat::{FlowId, Nat};
use vswitch_switch::VNET_HDR_LEN;

use crate::bpf::fastpath::Uplinks;
use crate::bpf::relay::{Event, Translation};
use crate::datapath::now_ms;
use crate::kernel::netlink::Netlink;

use super::budget::FdBudget;
use super::offload::Offloads;
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
}

struct Routes {
    nl: Netlink,
    /// The interface the route to an address leaves by (None: no uplink), and when looked up.
    cache: HashMap<Ipv4Addr, (Option<u32>, Instant)>,
}

impl Translator {
    /// Opens its sockets (needs CAP_NET_RAW and CAP_NET_ADMIN) in the host's namespace.
    pub fn new(
        offloads: Arc<Offloads>,
        uplinks: Arc<Uplinks>,
        budget: Arc<FdBudget>,
        gateway_mac: [u8; 6],
        tap: u32,
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
        })
    }

    /// Follows the programs' events (`bpf::relay::Event`) on a thread of its own, which sleeps
    /// until one comes.
    pub fn watch(&self, nat: Arc<Nat>) -> std::io::Result<()> {
        let Some(mut ring) = self.offloads.take_events() else {
            return Ok(());
        };
        let offloads = self.offloads.clone();
        let budget = self.budget.clone();
        std::thread::Builder::new()
            .name("vswitch-events".into())
            .spawn(move || loop {
                let mut pfd = libc::pollfd {
                    fd: ring.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: `pfd` is one live pollfd.
                if unsafe { libc::poll(&mut pfd, 1, -1) } < 0 {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let now = now_ms();
                let mut reopened = Vec::new();
                ring.drain(|record| {
                    if let Some(ev) = Event::parse(record) {
                        if let Some(ends) = offloads.event(&ev, &nat, now) {
                            reopened.push((ev.flow, ends));
                        }
                    }
                });
                // A connection on the ports of a finished one, whose reservation went with it:
                // the same four-tuple again, if the host has it free.
                for (flow, [container, remote, host]) in reopened {
                    let owner = Some(*container.ip());
                    let Some(lease) = budget.lease(1, owner, "a TCP connection") else {
                        continue;
                    };
                    if let Ok((fd, got)) = reserve_tcp(remote, host.port()) {
                        if got.port() == host.port() {
                            offloads.reserved(flow, (fd, lease));
                        }
                    }
                }
            })?;
        Ok(())
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
        let Some(uplink) = self.uplink_to(*dst.ip()) else {
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
        let Ok((reservation, host)) = reserve_tcp(dst, from.port()) else {
            return false;
        };
        let Some(mac) = frame.get(VNET_HDR_LEN + 6..VNET_HDR_LEN + 12) else {
            return false;
        };
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(mac);
        macs[6..].copy_from_slice(&self.gateway_mac);
        let t = Translation {
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

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The uplink the host's route to `dst` leaves by, if it leaves the host.
    fn uplink_to(&self, dst: Ipv4Addr) -> Option<u32> {
        let mut routes = self.routes();
        if let Some(&(oif, at)) = routes.cache.get(&dst) {
            if at.elapsed() < ROUTE_TTL {
                return oif;
            }
        }
        let oif = match routes.nl.route_to(dst) {
            Ok((RTN_UNICAST, Some(oif))) if !self.not_uplinks.contains(&oif) => Some(oif),
            _ => None,
        };
        if routes.cache.len() > 4096 {
            routes.cache.clear();
        }
        routes.cache.insert(dst, (oif, Instant::now()));
        oif
    }
}
