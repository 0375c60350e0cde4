//! The NAT targets: a [`World`] holds a [`Nat`] with a realistic table, built through the
//! public API as the daemon's edge builds it (TCP flows through an outbound SYN and
//! `tcp_connected`, UDP and echo flows with replies, published TCP and UDP ports), and what the
//! fuzzer has learnt about each flow from the NAT's answers: its id, translation, container MAC,
//! first frame, and for UDP and echo flows (whose timeouts do not depend on TCP flags) the exact
//! moment it expires.
//!
//! Every call is checked, by [`World`]'s methods, against what the documentation promises:
//! - a frame that is not `Rewritten` is left byte for byte as it was; a `Rewritten` one changed
//!   only its address, port and checksum fields, to the flow's translation, and its IPv4 and
//!   TCP checksums are still right if they were (complete or partial), and still wrong if not;
//! - the verdict class follows from the frame (not IPv4 or local: `Pass`; VLAN tags, bad
//!   lengths, addresses or header checksums, fragments, other protocols: their drops; a TTL
//!   that runs out: ICMP time exceeded from the gateway) and every drop bumps exactly its
//!   counter;
//! - a new flow is refused (a reset, or ICMP administratively prohibited) only when the table,
//!   the container's share of it or its share of connecting TCP flows is used up, and counted
//!   once, as the table's refusal and the container's;
//! - the frames the NAT writes are well-formed (by hand and by smoltcp), addressed to the flow's
//!   container, fit the buffer, and nothing is written past them or on error;
//! - a flow is created only within `max_flows` open flows (finished TCP connections are
//!   outside the bound) and its container's shares, and a connected flow, once finished, never
//!   opens again in place (a new connection is a new flow); `created = flows + expired +
//!   removed`, every live entry is a flow the fuzzer saw created, no two share a key or an
//!   echo identifier, UDP and echo flows live exactly as long as their timeouts say, and every
//!   flow is reported (by `expire`) or removed (with a result saying so) exactly once.
//!
//! `frames.rs` checks the verdicts on frames, `edge.rs` the edge's calls, `decode.rs` turns the
//! fuzzer's bytes into steps (and builds the starting table), `build.rs` builds frames.

mod build;
mod decode;
mod edge;
mod frames;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use vswitch_nat::{FlowId, Nat, NatConfig, NatDrop, NatStats, Proto, Shares, Timeouts};

use crate::input::Input;

const GW: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 1);
const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const SUBNET: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 0);
const CONTAINERS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 1, 1, 2),
    Ipv4Addr::new(10, 1, 1, 3),
    Ipv4Addr::new(10, 1, 1, 4),
];
const OUT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const OUT2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const RELAYS: [u16; 3] = [40000, 40001, 40002];
/// The host's side of the connections the edge translates itself.
const HOST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 50000);
/// Fills output buffers, to see what the NAT writes.
const SENTINEL: u8 = 0xa5;
/// Largest UDP payload that fits an IPv4 packet.
const MAX_UDP_PAYLOAD: usize = 65535 - 28;

/// Short timeouts, so that every state's expiry is reached within a few steps.
const SHORT: Timeouts = Timeouts {
    tcp_syn_sent: 2000,
    tcp_syn_recv: 1500,
    tcp_established: 9000,
    tcp_fin_wait: 3000,
    tcp_close_wait: 2500,
    tcp_last_ack: 1200,
    tcp_time_wait: 4000,
    tcp_close: 1000,
    udp: 3000,
    udp_replied: 6000,
    icmp: 2000,
};

fn container_mac(ip: Ipv4Addr) -> [u8; 6] {
    let [_, _, _, d] = ip.octets();
    [2, 0, 0, 0, 0, d]
}

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

fn in_subnet(ip: Ipv4Addr) -> bool {
    ip.octets()[..3] == SUBNET.octets()[..3]
}

/// What the fuzzer knows of a flow, and how it translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    TcpEgress {
        relay: u16,
        connecting: bool,
    },
    /// Handed to the edge at its SYN (`Nat::tcp_translated`): its segments are the edge's.
    TcpTranslated {
        relay: u16,
        connecting: bool,
    },
    TcpPublished {
        eph: u16,
    },
    UdpEgress,
    UdpPublished {
        publish_id: u32,
    },
    Echo {
        nat_ident: u16,
    },
}

impl Kind {
    fn proto(self) -> Proto {
        match self {
            Kind::TcpEgress { .. } | Kind::TcpTranslated { .. } | Kind::TcpPublished { .. } => {
                Proto::Tcp
            }
            Kind::UdpEgress | Kind::UdpPublished { .. } => Proto::Udp,
            Kind::Echo { .. } => Proto::Icmp,
        }
    }

    fn gateway_port(self) -> Option<u16> {
        match self {
            Kind::TcpEgress { relay, .. } | Kind::TcpTranslated { relay, .. } => Some(relay),
            Kind::TcpPublished { eph } => Some(eph),
            _ => None,
        }
    }

    /// UDP and echo flows expire at a time the fuzzer can tell exactly.
    fn timed(self) -> bool {
        self.proto() != Proto::Tcp
    }

    /// A flow the container started: it counts against the container's share.
    fn egress(self) -> bool {
        matches!(
            self,
            Kind::TcpEgress { .. }
                | Kind::TcpTranslated { .. }
                | Kind::UdpEgress
                | Kind::Echo { .. }
        )
    }

    /// A connect not answered yet: it counts against the container's half-open share.
    fn connecting(self) -> bool {
        matches!(
            self,
            Kind::TcpEgress {
                connecting: true,
                ..
            } | Kind::TcpTranslated {
                connecting: true,
                ..
            }
        )
    }
}

#[derive(Debug, Clone)]
struct Known {
    id: FlowId,
    kind: Kind,
    /// Container address and port (echo: its identifier).
    c: SocketAddrV4,
    /// Remote address and port (echo: port 0).
    r: SocketAddrV4,
    mac: [u8; 6],
    /// The frame that created the flow (egress flows).
    first: Vec<u8>,
    /// Certainly no longer in the table.
    gone: bool,
    /// A connected TCP egress flow seen finished (TIME_WAIT or CLOSE): it never opens again in
    /// place (a new SYN on its addresses is a new flow, and a new connect).
    finished: bool,
    /// Timed flows: when the flow expires, and whether it was replied.
    expires_at: u64,
    replied: bool,
}

/// What the mix of operations favours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// Frames both ways, interleaved with the edge's calls.
    Frames,
    /// The frames the NAT writes, with payload and buffer sizes around every limit, and held
    /// SYNs of any shape.
    Replies,
}

pub struct World {
    nat: Nat,
    max_flows: usize,
    shares: Shares,
    relays: Vec<u16>,
    timeouts: Timeouts,
    now: u64,
    flows: Vec<Known>,
    /// Every id the NAT gave out.
    ids: HashSet<FlowId>,
    /// Ids reported by `expire` or removed with a result saying so: each only once.
    dead: HashSet<FlowId>,
    stats: NatStats,
    /// New flows each container was refused (the NAT answered for the remote), since it was
    /// last forgotten.
    refused: HashMap<Ipv4Addr, u64>,
}

/// Every [`NatDrop`], in the order of [`drop_counters`].
const DROPS: [NatDrop; 14] = [
    NatDrop::Malformed,
    NatDrop::Fragment,
    NatDrop::TableFull,
    NatDrop::NoFlow,
    NatDrop::NoRelayPort,
    NatDrop::NoEchoIdent,
    NatDrop::Unsupported,
    NatDrop::BadAddress,
    NatDrop::BadChecksum,
    NatDrop::BadLength,
    NatDrop::TtlExceeded,
    NatDrop::Tagged,
    NatDrop::ContainerLimit,
    NatDrop::HalfOpenLimit,
];

/// The drop counters of a [`NatStats`], in [`DROPS`] order.
fn drop_counters(s: &NatStats) -> [u64; 14] {
    [
        s.malformed,
        s.fragments,
        s.table_full,
        s.no_flow,
        s.no_relay_port,
        s.no_echo_ident,
        s.unsupported,
        s.bad_address,
        s.bad_checksum,
        s.bad_length,
        s.ttl_exceeded,
        s.tagged,
        s.container_limit,
        s.half_open_limit,
    ]
}

fn drop_index(d: NatDrop) -> usize {
    DROPS.iter().position(|&x| x == d).unwrap_or_else(|| {
        // A variant added to NatDrop must be added here (and to `drop_counters`).
        panic!("{d:?} not in DROPS")
    })
}

impl World {
    pub fn new(inp: &mut Input) -> World {
        let max_flows = inp.pick(&[1, 2, 3, 5, 8, 16, 64, 1000]);
        let relays = RELAYS[..1 + inp.below(3)].to_vec();
        let timeouts = if inp.chance(160) {
            SHORT
        } else {
            Timeouts::default()
        };
        let now = inp.pick(&[0, 1, 1 << 40, 1_000_000]);
        // Mostly the default shares (all of a small table); sometimes small ones, so that a
        // container runs out of its share before the table is full.
        let shares = if inp.chance(160) {
            Shares::for_table(max_flows)
        } else {
            Shares {
                flows: inp.pick(&[1, 2, 3, 5, 8]),
                half_open: inp.pick(&[1, 1, 2, 1024]),
            }
        };
        let cfg = NatConfig {
            gateway: GW,
            gateway_mac: GW_MAC,
            subnet: SUBNET,
            prefix: 24,
            relay_ports: relays.clone(),
            max_flows,
            shares,
            timeouts,
        };
        World {
            nat: Nat::new(cfg),
            max_flows,
            shares,
            relays,
            timeouts,
            now,
            flows: Vec::new(),
            ids: HashSet::new(),
            dead: HashSet::new(),
            stats: NatStats::default(),
            refused: HashMap::new(),
        }
    }

    /// Room for every flow of the starting table.
    fn roomy(&self) -> bool {
        self.max_flows >= 16 && self.shares.flows >= 8 && self.shares.half_open >= 2
    }

    /// Container `ip`'s flows that count against its share and are certainly or perhaps
    /// still in the table (not reported by `expire` nor removed): of all its egress flows
    /// (`connecting` false), or of its connecting TCP flows only.
    fn share_upper_bound(&self, ip: Ipv4Addr, connecting: bool) -> usize {
        (self.flows.iter())
            .filter(|k| !k.gone && k.kind.egress() && *k.c.ip() == ip)
            .filter(|k| !connecting || k.kind.connecting())
            .count()
    }

    fn alive(&self, k: &Known) -> bool {
        !k.gone && (!k.kind.timed() || self.now < k.expires_at)
    }

    fn udp_timeout(&self, replied: bool) -> u64 {
        if replied {
            self.timeouts.udp_replied
        } else {
            self.timeouts.udp
        }
    }

    fn by_id(&self, id: FlowId) -> Option<usize> {
        self.flows.iter().rposition(|k| k.id == id)
    }

    /// The latest flow of `proto` between these ends not known to be gone.
    fn by_ends(&self, proto: Proto, c: SocketAddrV4, r: SocketAddrV4) -> Option<usize> {
        self.flows.iter().rposition(|k| {
            !k.gone
                && k.kind.proto() == proto
                && k.c == c
                && match k.kind {
                    Kind::Echo { .. } => k.r.ip() == r.ip(),
                    _ => k.r == r,
                }
        })
    }

    fn by_outside(&self, c: SocketAddrV4, gw_port: u16) -> Option<usize> {
        self.flows
            .iter()
            .rposition(|k| !k.gone && k.c == c && k.kind.gateway_port() == Some(gw_port))
    }

    fn fresh(&mut self, id: FlowId, what: &str) {
        assert!(
            self.ids.insert(id),
            "{what}: flow id {id:#x} given out twice"
        );
    }

    /// A flow reported or removed: once only.
    fn bury(&mut self, id: FlowId, what: &str) {
        assert!(self.ids.contains(&id), "{what}: flow {id:#x} never created");
        assert!(self.dead.insert(id), "{what}: flow {id:#x} reported twice");
        for k in self.flows.iter_mut().filter(|k| k.id == id) {
            k.gone = true;
        }
    }

    /// Every flow belongs to a container the fuzzer saw create it, so the containers' counters
    /// add up to the table's.
    pub fn container_totals(&self) {
        let s = self.nat.stats();
        let ips: HashSet<Ipv4Addr> = (self.flows.iter().map(|k| *k.c.ip()))
            .chain(self.refused.keys().copied())
            .collect();
        let mut sum = vswitch_nat::ContainerStats::default();
        let all = self.nat.all_container_stats();
        for (ip, c) in &all {
            assert!(
                ips.contains(ip) || *c == Default::default(),
                "{ip}: counters of an unknown container {c:?}"
            );
        }
        for ip in ips {
            let c = self.nat.container_stats(ip);
            assert_eq!(
                all.get(&ip).copied().unwrap_or_default(),
                c,
                "{ip}: all_container_stats vs container_stats"
            );
            assert_eq!(
                c.refused,
                self.refused.get(&ip).copied().unwrap_or(0),
                "{ip}: refused"
            );
            assert!(c.flows_created >= c.flows as u64, "{ip}: {c:?}");
            sum.flows += c.flows;
            sum.packets_out += c.packets_out;
            sum.packets_in += c.packets_in;
            sum.bytes_out += c.bytes_out;
            sum.bytes_in += c.bytes_in;
        }
        let table = (
            s.flows,
            s.packets_out,
            s.packets_in,
            s.bytes_out,
            s.bytes_in,
        );
        let containers = (
            sum.flows,
            sum.packets_out,
            sum.packets_in,
            sum.bytes_out,
            sum.bytes_in,
        );
        assert_eq!(containers, table, "containers' counters vs the table's");
    }

    /// The relay finds each egress flow by its relay port, with its real destination.
    pub fn relay_lookups(&self) {
        for k in self.flows.iter().filter(|k| !k.gone) {
            let Kind::TcpEgress { relay, .. } = k.kind else {
                continue;
            };
            let Some(found) = self.nat.relay_lookup(k.c, relay) else {
                continue; // expired, reaped: reported at the next expire
            };
            let i = self
                .by_id(found.flow)
                .unwrap_or_else(|| panic!("relay_lookup: unknown {found:?}"));
            let f = &self.flows[i];
            assert!(
                f.c == k.c && f.kind.gateway_port() == Some(relay),
                "relay_lookup: {found:?} for {k:?}"
            );
            assert_eq!(found.dst, f.r, "relay_lookup: destination");
        }
    }

    /// The invariants of the table, after every step.
    pub fn check(&mut self) {
        let s = self.nat.stats();
        assert_eq!(
            s.created,
            s.flows as u64 + s.expired + s.removed,
            "flow accounting: {s:?}"
        );
        let (a, b) = (drop_counters(&self.stats), drop_counters(&s));
        assert!(
            a.iter().zip(&b).all(|(a, b)| a <= b),
            "a drop counter went down"
        );
        assert!(s.created >= self.stats.created && s.expired >= self.stats.expired);
        assert!(s.removed >= self.stats.removed);
        self.stats = s;

        let now = self.now;
        let entries = self.nat.entries(now);
        assert!(entries.len() <= s.flows);
        let mut ids = HashSet::new();
        let mut keys = HashSet::new();
        let mut idents = HashSet::new();
        for e in &entries {
            assert!(e.timeout_ms > 0, "{e:?}");
            assert!(ids.insert(e.flow), "{e:?}: id listed twice");
            assert!(
                !self.dead.contains(&e.flow),
                "{e:?}: reported or removed, still listed"
            );
            let i = self
                .by_id(e.flow)
                .unwrap_or_else(|| panic!("{e:?}: never created"));
            let k = &self.flows[i];
            assert_eq!(
                (e.proto, e.inside),
                (k.kind.proto(), k.c),
                "{e:?} for {k:?}"
            );
            match k.kind {
                Kind::Echo { nat_ident } => {
                    assert_eq!(e.outside, sa(*k.r.ip(), nat_ident), "{e:?}");
                    assert!(idents.insert(nat_ident), "{e:?}: echo identifier shared");
                }
                _ => assert_eq!(e.outside, k.r, "{e:?}"),
            }
            let key = (e.proto, e.inside, *k.r.ip(), k.r.port());
            assert!(keys.insert(key), "{e:?}: two flows with one key");
            let published = matches!(
                k.kind,
                Kind::TcpPublished { .. } | Kind::UdpPublished { .. }
            );
            assert_eq!(e.published, published, "{e:?}");
            assert_eq!(e.gateway_port, k.kind.gateway_port(), "{e:?}");
            if k.kind.timed() {
                assert!(self.alive(k), "{e:?}: listed after it expired ({k:?})");
                assert_eq!(e.timeout_ms, k.expires_at - now, "{e:?}: timeout");
                let state = if k.replied { "REPLIED" } else { "UNREPLIED" };
                assert_eq!(e.state, state, "{e:?}");
            }
        }
        for k in &self.flows {
            if k.kind.timed() && self.alive(k) {
                assert!(ids.contains(&k.id), "{k:?}: live but not listed");
            }
        }
        for e in &entries {
            let Some(i) = self.by_id(e.flow) else {
                continue;
            };
            let k = &mut self.flows[i];
            if let Kind::TcpEgress {
                connecting: false, ..
            } = k.kind
            {
                let finished = matches!(e.state, "TIME_WAIT" | "CLOSE");
                assert!(
                    finished || !k.finished,
                    "{e:?}: a finished connection opened again in place"
                );
                k.finished = finished;
            }
        }
    }

    /// Right after a flow is created (by container `c`'s frame if `egress`): the open flows
    /// (all but finished TCP connections) within `max_flows`; and for an egress flow, `c`'s
    /// open egress flows within its share, and (for a connect, the one creation that checks
    /// them) its connecting ones within its share of those. Not at every step: a finished flow
    /// that opens again takes its places back, whatever the bounds.
    fn created_within_bounds(&self, c: Ipv4Addr, egress: bool, connect: bool, what: &str) {
        let (mut open, mut held, mut connecting) = (0, 0, 0);
        for e in self.nat.entries(self.now) {
            if matches!(e.state, "TIME_WAIT" | "CLOSE") {
                continue;
            }
            open += 1;
            let Some(k) = self.by_id(e.flow).map(|i| &self.flows[i]) else {
                continue; // `check` tells
            };
            if k.kind.egress() && *k.c.ip() == c {
                held += 1;
                connecting += usize::from(k.kind.connecting());
            }
        }
        assert!(
            open <= self.max_flows,
            "{what}: {open} open flows, max {}",
            self.max_flows
        );
        if egress {
            assert!(
                held <= self.shares.flows && (!connect || connecting <= self.shares.half_open),
                "{what}: {c} holds {held} flows, {connecting} connecting, over {:?}",
                self.shares
            );
        }
    }

    /// The end of an input: everything expires, every flow is accounted for.
    pub fn finish(&mut self) {
        self.now = u64::MAX;
        self.expire();
        assert_eq!(
            self.nat.stats().flows,
            0,
            "flows left after expiring everything"
        );
        assert!(self.nat.entries(u64::MAX).is_empty());
        for id in &self.ids {
            assert!(
                self.dead.contains(id),
                "flow {id:#x} never reported nor removed"
            );
        }
        self.check();
    }
    /// Runs one input.
    pub fn run(data: &[u8], mix: Mix, max_steps: usize) {
        let mut inp = Input::new(data);
        let mut w = World::new(&mut inp);
        w.populate();
        for _ in 0..max_steps {
            if inp.is_empty() {
                break;
            }
            w.step(&mut inp, mix);
        }
        w.finish();
    }
}
