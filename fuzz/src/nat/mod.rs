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
//! - the verdict class follows from the frame (not IPv4 or local: `Pass`; bad addresses,
//!   fragments, other protocols: their drops) and every drop bumps exactly its counter;
//! - the frames the NAT writes are well-formed (by hand and by smoltcp), addressed to the flow's
//!   container, fit the buffer, and nothing is written past them or on error;
//! - the table never holds more than `max_flows`, `created = flows + expired + removed`, every
//!   live entry is a flow the fuzzer saw created, no two share a key or an echo identifier,
//!   UDP and echo flows live exactly as long as their timeouts say, and every flow is reported
//!   (by `expire`) or removed (with a result saying so) exactly once.

mod build;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};

use vswitch_nat::{
    FlowId, Nat, NatConfig, NatDrop, NatError, NatStats, Proto, Timeouts, Verdict,
    ECHO_FRAME_OVERHEAD, ICMP_ERROR_FRAME_MAX, TCP_RST_FRAME_LEN, UDP_FRAME_OVERHEAD,
};

use self::build::{mangle, Spec, ACK, FIN, PSH, RST, SYN};
use crate::check::{
    be16, cross_check_ip_csum, ip_at, ip_csum_ok, ones_sum, parse, tcp_csum_ok, written, Ipv4View,
    Parsed, ICMP, IP, TCP, UDP,
};
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
    TcpEgress { relay: u16, connecting: bool },
    TcpPublished { eph: u16 },
    UdpEgress,
    UdpPublished { publish_id: u32 },
    Echo { nat_ident: u16 },
}

impl Kind {
    fn proto(self) -> Proto {
        match self {
            Kind::TcpEgress { .. } | Kind::TcpPublished { .. } => Proto::Tcp,
            Kind::UdpEgress | Kind::UdpPublished { .. } => Proto::Udp,
            Kind::Echo { .. } => Proto::Icmp,
        }
    }

    fn gateway_port(self) -> Option<u16> {
        match self {
            Kind::TcpEgress { relay, .. } => Some(relay),
            Kind::TcpPublished { eph } => Some(eph),
            _ => None,
        }
    }

    /// UDP and echo flows expire at a time the fuzzer can tell exactly.
    fn timed(self) -> bool {
        self.proto() != Proto::Tcp
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
    relays: Vec<u16>,
    timeouts: Timeouts,
    now: u64,
    flows: Vec<Known>,
    /// Every id the NAT gave out.
    ids: HashSet<FlowId>,
    /// Ids reported by `expire` or removed with a result saying so: each only once.
    dead: HashSet<FlowId>,
    stats: NatStats,
}

/// The drop counters of a [`NatStats`], in [`NatDrop`] order.
fn drop_counters(s: &NatStats) -> [u64; 8] {
    [
        s.malformed,
        s.fragments,
        s.table_full,
        s.no_flow,
        s.no_relay_port,
        s.no_echo_ident,
        s.unsupported,
        s.bad_address,
    ]
}

fn drop_index(d: NatDrop) -> usize {
    match d {
        NatDrop::Malformed => 0,
        NatDrop::Fragment => 1,
        NatDrop::TableFull => 2,
        NatDrop::NoFlow => 3,
        NatDrop::NoRelayPort => 4,
        NatDrop::NoEchoIdent => 5,
        NatDrop::Unsupported => 6,
        NatDrop::BadAddress => 7,
    }
}

/// What a container's frame must come to, from its headers alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutClass {
    Pass,
    Drop(NatDrop),
    Tcp(Ipv4View),
    Udp(Ipv4View),
    Echo(Ipv4View),
}

fn out_class(f: &[u8]) -> OutClass {
    let v = match parse(f) {
        Parsed::Short | Parsed::BadIpv4 => return OutClass::Drop(NatDrop::Malformed),
        Parsed::NotIpv4 => return OutClass::Pass,
        Parsed::Ipv4(v) => v,
    };
    let [d0, ..] = v.dst.octets();
    if v.dst == GW || in_subnet(v.dst) || d0 >= 224 {
        return OutClass::Pass;
    }
    if !in_subnet(v.src) || v.src == GW || d0 == 0 || d0 == 127 {
        return OutClass::Drop(NatDrop::BadAddress);
    }
    if v.is_fragment() {
        return OutClass::Drop(NatDrop::Fragment);
    }
    let l4 = v.l4(f);
    match v.proto {
        TCP if v.tcp_hlen(f).is_none() => OutClass::Drop(NatDrop::Malformed),
        TCP => OutClass::Tcp(v),
        UDP if l4.len() < 8 => OutClass::Drop(NatDrop::Malformed),
        UDP if v.gso_type == 0 && !(8..=l4.len()).contains(&usize::from(be16(l4, 4))) => {
            OutClass::Drop(NatDrop::Malformed)
        }
        UDP => OutClass::Udp(v),
        ICMP if l4.len() < 8 => OutClass::Drop(NatDrop::Malformed),
        ICMP if l4[0] != 8 || l4[1] != 0 => OutClass::Drop(NatDrop::Unsupported),
        ICMP => OutClass::Echo(v),
        _ => OutClass::Drop(NatDrop::Unsupported),
    }
}

fn is_new_syn(flags: u8) -> bool {
    flags & (SYN | ACK | RST | FIN) == SYN
}

/// The byte ranges a translation may change.
fn only_changed(before: &[u8], after: &[u8], allowed: &[std::ops::Range<usize>], what: &str) {
    assert_eq!(before.len(), after.len(), "{what}: length changed");
    for (i, (a, b)) in before.iter().zip(after).enumerate() {
        if a != b {
            assert!(
                allowed.iter().any(|r| r.contains(&i)),
                "{what}: byte {i} changed ({a:#04x} -> {b:#04x})"
            );
        }
    }
}

/// A translated TCP segment: checksums right exactly when they were.
fn checksums_kept(before: &[u8], after: &[u8], what: &str) {
    let (Parsed::Ipv4(b), Parsed::Ipv4(a)) = (parse(before), parse(after)) else {
        panic!("{what}: no longer IPv4");
    };
    let ip_ok = ip_csum_ok(before, &b);
    assert_eq!(ip_csum_ok(after, &a), ip_ok, "{what}: IPv4 header checksum");
    cross_check_ip_csum(after, &a, ip_ok);
    assert_eq!(
        tcp_csum_ok(after, &a),
        tcp_csum_ok(before, &b),
        "{what}: TCP checksum"
    );
}

fn sentinel_after(out: &[u8], len: usize, what: &str) {
    assert!(
        out[len..].iter().all(|&b| b == SENTINEL),
        "{what}: bytes written past the frame"
    );
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
        let cfg = NatConfig {
            gateway: GW,
            gateway_mac: GW_MAC,
            subnet: SUBNET,
            prefix: 24,
            relay_ports: relays.clone(),
            max_flows,
            timeouts,
        };
        World {
            nat: Nat::new(cfg),
            max_flows,
            relays,
            timeouts,
            now,
            flows: Vec::new(),
            ids: HashSet::new(),
            dead: HashSet::new(),
            stats: NatStats::default(),
        }
    }

    fn roomy(&self) -> bool {
        self.max_flows >= 16
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

    // ---- frames ----

    /// A container's frame to the gateway's MAC.
    pub fn outbound(&mut self, frame: &[u8]) -> Verdict {
        let before = self.nat.stats();
        let mut f = frame.to_vec();
        let v = self.nat.outbound(&mut f, self.now);
        let what = format!("outbound({v:?}) at {} of {frame:02x?}", self.now);
        if v != Verdict::Rewritten {
            assert_eq!(f, frame, "{what}: frame changed");
        }
        self.drop_counted(&before, &v, &what);
        match (out_class(frame), &v) {
            (OutClass::Pass, Verdict::Pass) => {}
            (OutClass::Drop(want), Verdict::Drop(got)) => assert_eq!(got, &want, "{what}"),
            (OutClass::Tcp(p), _) => self.tcp_out(frame, &f, &p, &v, &what),
            (OutClass::Udp(p), _) => self.udp_out(frame, &p, &v, &what),
            (OutClass::Echo(p), _) => self.echo_out(frame, &p, &v, &what),
            (class, _) => panic!("{what}: expected {class:?}"),
        }
        v
    }

    /// Every drop bumps its own counter, by one; nothing else bumps a drop counter.
    fn drop_counted(&self, before: &NatStats, v: &Verdict, what: &str) {
        let after = self.nat.stats();
        let mut want = drop_counters(before);
        if let Verdict::Drop(d) = v {
            want[drop_index(*d)] += 1;
            if *d == NatDrop::TableFull {
                assert_eq!(after.flows, self.max_flows, "{what}: table not full");
            }
        }
        assert_eq!(drop_counters(&after), want, "{what}: drop counters");
    }

    fn tcp_out(&mut self, frame: &[u8], f: &[u8], p: &Ipv4View, v: &Verdict, what: &str) {
        let l4 = p.l4(frame);
        let (sport, dport, flags) = (be16(l4, 0), be16(l4, 2), l4[13]);
        let (c, r) = (sa(p.src, sport), sa(p.dst, dport));
        let partial = p.vnet_flags & 1 != 0;
        match v {
            Verdict::Rewritten => {
                let i = self
                    .by_ends(Proto::Tcp, c, r)
                    .unwrap_or_else(|| panic!("{what}: rewritten, but no such flow"));
                let gw_port = match self.flows[i].kind {
                    Kind::TcpEgress { connecting, relay } => {
                        assert!(!connecting, "{what}: rewritten while connecting");
                        relay
                    }
                    Kind::TcpPublished { eph } => eph,
                    k => panic!("{what}: rewritten on {k:?}"),
                };
                assert!(
                    !partial || p.offload_at(16),
                    "{what}: odd offload rewritten"
                );
                let allowed = [
                    IP + 16..IP + 20,
                    IP + 10..IP + 12,
                    p.l4 + 2..p.l4 + 4,
                    p.l4 + 16..p.l4 + 18,
                ];
                only_changed(frame, f, &allowed, what);
                assert_eq!(ip_at(f, IP + 16), GW, "{what}: new destination");
                assert_eq!(be16(f, p.l4 + 2), gw_port, "{what}: new port");
                checksums_kept(frame, f, what);
            }
            Verdict::Pending => {
                let i = self.by_ends(Proto::Tcp, c, r);
                let k = i.map(|i| self.flows[i].kind);
                assert!(
                    matches!(
                        k,
                        Some(Kind::TcpEgress {
                            connecting: true,
                            ..
                        })
                    ),
                    "{what}: pending on {k:?}"
                );
            }
            Verdict::TcpConnect { flow, dst } => {
                assert!(is_new_syn(flags), "{what}: not a SYN");
                assert_eq!(*dst, r, "{what}: destination");
                assert!(!partial || p.offload_at(16), "{what}: odd offload accepted");
                self.fresh(*flow, what);
                // The relay port: the one the relay finds the flow by.
                let relays: Vec<u16> = self
                    .relays
                    .iter()
                    .copied()
                    .filter(|&rp| {
                        self.nat.relay_lookup(c, rp).map(|x| (x.flow, x.dst)) == Some((*flow, r))
                    })
                    .collect();
                assert_eq!(relays.len(), 1, "{what}: relay ports {relays:?}");
                self.flows.push(Known {
                    id: *flow,
                    kind: Kind::TcpEgress {
                        relay: relays[0],
                        connecting: true,
                    },
                    c,
                    r,
                    mac: p.src_mac,
                    first: frame.to_vec(),
                    gone: false,
                    expires_at: 0,
                    replied: false,
                });
            }
            Verdict::Drop(NatDrop::Malformed) => {
                assert!(partial && !p.offload_at(16), "{what}: malformed?");
            }
            Verdict::Drop(NatDrop::NoFlow) => assert!(!is_new_syn(flags), "{what}"),
            Verdict::Drop(NatDrop::NoRelayPort) => {
                assert!(is_new_syn(flags), "{what}");
                for &rp in &self.relays {
                    // Taken by an egress flow, or by a published connection from that port.
                    let taken =
                        self.nat.relay_lookup(c, rp).is_some() || self.by_outside(c, rp).is_some();
                    assert!(taken, "{what}: relay port {rp} free");
                }
            }
            Verdict::Drop(NatDrop::TableFull) => assert!(is_new_syn(flags), "{what}"),
            _ => panic!("{what}: not a TCP verdict"),
        }
    }

    fn udp_out(&mut self, frame: &[u8], p: &Ipv4View, v: &Verdict, what: &str) {
        let l4 = p.l4(frame);
        let (c, r) = (sa(p.src, be16(l4, 0)), sa(p.dst, be16(l4, 2)));
        let gso = p.gso_type != 0;
        let end = if gso {
            p.end
        } else {
            p.l4 + usize::from(be16(l4, 4))
        };
        let want_gso = if gso { p.gso_size } else { 0 };
        let known = self
            .by_ends(Proto::Udp, c, r)
            .filter(|&i| self.alive(&self.flows[i]));
        let now = self.now;
        match v {
            Verdict::UdpOut {
                flow,
                dst,
                payload,
                new,
                gso_size,
            } => {
                assert_eq!(
                    (*dst, payload.clone(), *gso_size),
                    (r, p.l4 + 8..end, want_gso),
                    "{what}"
                );
                if *new {
                    assert!(known.is_none(), "{what}: a new flow over {known:?}");
                    self.fresh(*flow, what);
                    self.flows.push(Known {
                        id: *flow,
                        kind: Kind::UdpEgress,
                        c,
                        r,
                        mac: p.src_mac,
                        first: frame.to_vec(),
                        gone: false,
                        expires_at: now.saturating_add(self.timeouts.udp),
                        replied: false,
                    });
                } else {
                    let i = known.unwrap_or_else(|| panic!("{what}: no such flow"));
                    assert_eq!(self.flows[i].kind, Kind::UdpEgress, "{what}");
                    assert_eq!(self.flows[i].id, *flow, "{what}: flow id");
                    let t = self.udp_timeout(self.flows[i].replied);
                    self.flows[i].expires_at = now.saturating_add(t);
                }
            }
            Verdict::UdpToClient {
                publish_id,
                client,
                payload,
                gso_size,
            } => {
                assert_eq!(
                    (*client, payload.clone(), *gso_size),
                    (r, p.l4 + 8..end, want_gso),
                    "{what}"
                );
                let i = known.unwrap_or_else(|| panic!("{what}: no such flow"));
                let k = &mut self.flows[i];
                assert_eq!(
                    k.kind,
                    Kind::UdpPublished {
                        publish_id: *publish_id
                    },
                    "{what}"
                );
                k.replied = true;
                k.expires_at = now.saturating_add(self.timeouts.udp_replied);
            }
            Verdict::Drop(NatDrop::TableFull) => assert!(known.is_none(), "{what}"),
            _ => panic!("{what}: not a UDP verdict"),
        }
    }

    fn echo_out(&mut self, frame: &[u8], p: &Ipv4View, v: &Verdict, what: &str) {
        let l4 = p.l4(frame);
        let c = sa(p.src, be16(l4, 4));
        let known = self
            .by_ends(Proto::Icmp, c, sa(p.dst, 0))
            .filter(|&i| self.alive(&self.flows[i]));
        let now = self.now;
        match v {
            Verdict::EchoOut {
                flow,
                dst,
                ident,
                seq,
                payload,
            } => {
                assert_eq!(
                    (*dst, *seq, payload.clone()),
                    (p.dst, be16(l4, 6), p.l4 + 8..p.end),
                    "{what}"
                );
                match known {
                    Some(i) => {
                        let k = &mut self.flows[i];
                        assert_eq!(
                            (k.id, k.kind),
                            (*flow, Kind::Echo { nat_ident: *ident }),
                            "{what}"
                        );
                        k.expires_at = now.saturating_add(self.timeouts.icmp);
                    }
                    None => {
                        self.fresh(*flow, what);
                        self.flows.push(Known {
                            id: *flow,
                            kind: Kind::Echo { nat_ident: *ident },
                            c,
                            r: sa(p.dst, 0),
                            mac: p.src_mac,
                            first: frame.to_vec(),
                            gone: false,
                            expires_at: now.saturating_add(self.timeouts.icmp),
                            replied: false,
                        });
                    }
                }
            }
            Verdict::Drop(NatDrop::TableFull) => assert!(known.is_none(), "{what}"),
            _ => panic!("{what}: not an echo verdict"),
        }
    }

    /// A frame the host kernel sent out of the TAP.
    pub fn tap_frame(&mut self, frame: &[u8]) -> Verdict {
        let before = self.nat.stats();
        let mut f = frame.to_vec();
        let v = self.nat.from_host(&mut f, self.now);
        let what = format!("from_host({v:?}) at {} of {frame:02x?}", self.now);
        if v != Verdict::Rewritten {
            assert_eq!(f, frame, "{what}: frame changed");
        }
        self.drop_counted(&before, &v, &what);
        if v == Verdict::Pass {
            return v;
        }
        let Parsed::Ipv4(p) = parse(frame) else {
            panic!("{what}: not IPv4");
        };
        assert!(p.proto == TCP && p.src == GW && !p.is_fragment(), "{what}");
        assert!(p.tcp_hlen(frame).is_some(), "{what}: bad TCP header");
        let (sport, dport) = p.ports(frame).unwrap_or_default();
        let i = self
            .by_outside(sa(p.dst, dport), sport)
            .unwrap_or_else(|| panic!("{what}: no such flow"));
        match v {
            Verdict::Rewritten => {
                let r = self.flows[i].r;
                let allowed = [
                    IP + 12..IP + 16,
                    IP + 10..IP + 12,
                    p.l4..p.l4 + 2,
                    p.l4 + 16..p.l4 + 18,
                ];
                only_changed(frame, &f, &allowed, &what);
                assert_eq!(
                    sa(ip_at(&f, IP + 12), be16(&f, p.l4)),
                    r,
                    "{what}: new source"
                );
                checksums_kept(frame, &f, &what);
            }
            Verdict::Drop(NatDrop::Malformed) => {
                assert!(p.vnet_flags & 1 != 0 && !p.offload_at(16), "{what}");
            }
            _ => panic!("{what}: not a from_host verdict"),
        }
        v
    }

    // ---- the edge's calls ----

    /// The edge connected flow `id`; `syn` is the SYN it held.
    pub fn tcp_connected(&mut self, id: FlowId, syn: &[u8]) {
        let mut f = syn.to_vec();
        let res = self.nat.tcp_connected(id, &mut f, self.now);
        let what = format!("tcp_connected({id:#x}) = {res:?} of {syn:02x?}");
        // The frame is read first, then the flow looked up.
        let tcp = match parse(syn) {
            Parsed::Ipv4(p) if p.proto == TCP => p.tcp_hlen(syn).is_some(),
            _ => false,
        };
        if !tcp {
            assert_eq!(res, Err(NatError::Malformed), "{what}");
        } else if self.dead.contains(&id) {
            assert_eq!(res, Err(NatError::UnknownFlow(id)), "{what}");
        }
        if res.is_err() {
            assert_eq!(f, syn, "{what}: SYN changed");
            return;
        }
        let i = self
            .by_id(id)
            .unwrap_or_else(|| panic!("{what}: unknown flow"));
        let Kind::TcpEgress { relay, connecting } = self.flows[i].kind else {
            panic!("{what}: not egress");
        };
        assert!(connecting && !self.flows[i].gone, "{what}");
        let Parsed::Ipv4(p) = parse(syn) else {
            panic!("{what}: not IPv4");
        };
        let (sport, dport) = p.ports(syn).unwrap_or_default();
        assert_eq!(
            (sa(p.src, sport), sa(p.dst, dport)),
            (self.flows[i].c, self.flows[i].r),
            "{what}"
        );
        let allowed = [
            IP + 16..IP + 20,
            IP + 10..IP + 12,
            p.l4 + 2..p.l4 + 4,
            p.l4 + 16..p.l4 + 18,
        ];
        only_changed(syn, &f, &allowed, &what);
        assert_eq!(
            sa(ip_at(&f, IP + 16), be16(&f, p.l4 + 2)),
            sa(GW, relay),
            "{what}"
        );
        checksums_kept(syn, &f, &what);
        self.flows[i].kind = Kind::TcpEgress {
            relay,
            connecting: false,
        };
    }

    /// Whether egress flow `id` is in the table (expired or not), as the relay sees it.
    fn egress_present(&self, id: FlowId) -> bool {
        let Some(i) = self.by_id(id) else {
            return false;
        };
        match self.flows[i].kind {
            Kind::TcpEgress { relay, .. } => {
                self.nat
                    .relay_lookup(self.flows[i].c, relay)
                    .map(|x| x.flow)
                    == Some(id)
            }
            _ => false,
        }
    }

    /// The edge's connect for `id` failed: refused (RST to the container) or unreachable
    /// (ICMP error with `code`). `held` need not be the flow's SYN: the frame written follows
    /// from `held` alone.
    pub fn connect_failed(
        &mut self,
        id: FlowId,
        held: &[u8],
        icmp_code: Option<u8>,
        out_len: usize,
    ) {
        let present = self.egress_present(id);
        let mut out = vec![SENTINEL; out_len];
        let res = match icmp_code {
            None => self.nat.tcp_reset_reply(id, held, &mut out),
            Some(code) => self.nat.icmp_unreachable_reply(id, held, code, &mut out),
        };
        let what =
            format!("connect_failed({id:#x}, {icmp_code:?}, {out_len}) = {res:?} of {held:02x?}");
        if present {
            self.bury(id, &what);
            assert!(!self.egress_present(id), "{what}: flow still there");
        }
        // What the reply must be, from the held frame alone.
        let p = match parse(held) {
            Parsed::Ipv4(p) if p.proto == TCP => Some(p),
            _ => None,
        };
        let want: Result<usize, ()> = match (p, icmp_code) {
            (Some(p), None) => match p.tcp_hlen(held) {
                Some(_) if held[p.l4 + 13] & SYN != 0 => Ok(TCP_RST_FRAME_LEN),
                _ => Err(()),
            },
            (Some(p), Some(_)) if p.l4 + 8 <= p.end => Ok(IP + 20 + 8 + p.ihl + 8),
            _ => Err(()),
        };
        match (want, res) {
            (Ok(need), Ok(len)) => {
                assert_eq!(len, need, "{what}");
                assert!(len <= out_len && len <= ICMP_ERROR_FRAME_MAX.max(TCP_RST_FRAME_LEN));
                sentinel_after(&out, len, &what);
                let Some(p) = p else { unreachable!() };
                self.check_connect_reply(&out[..len], held, &p, icmp_code, &what);
            }
            (Ok(need), Err(e)) => {
                assert!(need > out_len, "{what}");
                assert_eq!(
                    e,
                    NatError::BufferTooSmall {
                        need,
                        have: out_len
                    },
                    "{what}"
                );
                sentinel_after(&out, 0, &what);
            }
            (Err(()), Err(e)) => {
                assert_eq!(e, NatError::Malformed, "{what}");
                sentinel_after(&out, 0, &what);
            }
            (Err(()), Ok(_)) => panic!("{what}: a reply to a frame that is not a SYN"),
        }
    }

    fn check_connect_reply(
        &self,
        f: &[u8],
        held: &[u8],
        p: &Ipv4View,
        icmp: Option<u8>,
        what: &str,
    ) {
        let (sport, dport) = p.ports(held).unwrap_or_default();
        match icmp {
            None => {
                let l4 = written(f, p.src_mac, GW_MAC, p.dst, p.src, TCP);
                let hlen = p.tcp_hlen(held).unwrap_or(20);
                let data = (p.end - p.l4 - hlen) as u32;
                let seq = u32::from_be_bytes([
                    held[p.l4 + 4],
                    held[p.l4 + 5],
                    held[p.l4 + 6],
                    held[p.l4 + 7],
                ]);
                assert_eq!(
                    (be16(l4, 0), be16(l4, 2)),
                    (dport, sport),
                    "{what}: RST ports"
                );
                assert_eq!(l4[4..8], [0; 4], "{what}: RST seq");
                let ack = u32::from_be_bytes([l4[8], l4[9], l4[10], l4[11]]);
                assert_eq!(
                    ack,
                    seq.wrapping_add(1).wrapping_add(data),
                    "{what}: RST ack"
                );
                assert_eq!((l4[12], l4[13]), (0x50, RST | ACK), "{what}: RST flags");
            }
            Some(code) => {
                let l4 = written(f, p.src_mac, GW_MAC, p.dst, p.src, ICMP);
                assert_eq!(l4[..2], [3, code], "{what}: ICMP type/code");
                assert_eq!(l4[4..8], [0; 4], "{what}: ICMP unused");
                assert_eq!(l4[8..], held[IP..p.l4 + 8], "{what}: quote");
            }
        }
    }

    /// A datagram the flow's host socket received.
    pub fn udp_reply(&mut self, id: FlowId, payload: &[u8], out_len: usize) {
        let mut out = vec![SENTINEL; out_len];
        let res = self.nat.udp_reply(id, payload, &mut out, self.now);
        let what = format!(
            "udp_reply({id:#x}, {} bytes, {out_len}) = {res:?}",
            payload.len()
        );
        let need = UDP_FRAME_OVERHEAD + payload.len();
        let i = self.by_id(id);
        let want = if payload.len() > MAX_UDP_PAYLOAD {
            Err(NatError::PayloadTooLarge(payload.len()))
        } else if out_len < need {
            Err(NatError::BufferTooSmall {
                need,
                have: out_len,
            })
        } else {
            match i.map(|i| &self.flows[i]) {
                Some(k) if self.alive(k) && k.kind == Kind::UdpEgress => Ok(need),
                Some(k) if self.alive(k) && k.kind.timed() => Err(NatError::WrongFlowKind(id)),
                // TCP: the wrong kind, or already reaped.
                Some(k) if !k.gone && res == Err(NatError::UnknownFlow(id)) => res,
                Some(k) if !k.gone && !k.kind.timed() => Err(NatError::WrongFlowKind(id)),
                _ => Err(NatError::UnknownFlow(id)),
            }
        };
        assert_eq!(res, want, "{what}");
        let Ok(len) = res else {
            return sentinel_after(&out, 0, &what);
        };
        sentinel_after(&out, len, &what);
        let i = i.unwrap_or_else(|| unreachable!());
        let k = &self.flows[i];
        let l4 = written(&out[..len], k.mac, GW_MAC, *k.r.ip(), *k.c.ip(), UDP);
        assert_eq!(
            (be16(l4, 0), be16(l4, 2)),
            (k.r.port(), k.c.port()),
            "{what}: ports"
        );
        assert_eq!(&l4[8..], payload, "{what}: payload");
        let t = self.timeouts.udp_replied;
        let k = &mut self.flows[i];
        k.replied = true;
        k.expires_at = self.now.saturating_add(t);
    }

    /// An echo reply for translated identifier `ident`.
    pub fn echo_reply(&mut self, ident: u16, seq: u16, payload: &[u8], out_len: usize) {
        let mut out = vec![SENTINEL; out_len];
        let res = self.nat.echo_reply(ident, seq, payload, &mut out, self.now);
        let what = format!(
            "echo_reply({ident}, {seq}, {} bytes, {out_len}) = {res:?}",
            payload.len()
        );
        let need = ECHO_FRAME_OVERHEAD + payload.len();
        let i = self
            .flows
            .iter()
            .rposition(|k| !k.gone && k.kind == Kind::Echo { nat_ident: ident });
        if payload.len() > MAX_UDP_PAYLOAD {
            assert_eq!(res, Err(NatError::PayloadTooLarge(payload.len())), "{what}");
        } else if out_len < need {
            assert_eq!(
                res,
                Err(NatError::BufferTooSmall {
                    need,
                    have: out_len
                }),
                "{what}"
            );
        } else {
            match i {
                Some(i) if self.alive(&self.flows[i]) => assert_eq!(res, Ok(need), "{what}"),
                Some(i) => assert!(
                    res == Err(NatError::UnknownEchoIdent(ident))
                        || res == Err(NatError::UnknownFlow(self.flows[i].id)),
                    "{what}"
                ),
                None => assert_eq!(res, Err(NatError::UnknownEchoIdent(ident)), "{what}"),
            }
        }
        let Ok(len) = res else {
            return sentinel_after(&out, 0, &what);
        };
        sentinel_after(&out, len, &what);
        let i = i.unwrap_or_else(|| unreachable!());
        let k = &self.flows[i];
        let l4 = written(&out[..len], k.mac, GW_MAC, *k.r.ip(), *k.c.ip(), ICMP);
        assert_eq!(l4[..2], [0, 0], "{what}: type/code");
        assert_eq!(
            (be16(l4, 4), be16(l4, 6)),
            (k.c.port(), seq),
            "{what}: ident/seq"
        );
        assert_eq!(&l4[8..], payload, "{what}: payload");
        let t = self.timeouts.icmp;
        let k = &mut self.flows[i];
        k.replied = true;
        k.expires_at = self.now.saturating_add(t);
    }

    /// An ICMP error about a UDP or echo flow.
    pub fn udp_error(&mut self, id: FlowId, icmp_type: u8, code: u8, out_len: usize) {
        let mut out = vec![SENTINEL; out_len];
        let res = self.nat.udp_error_reply(id, icmp_type, code, &mut out);
        let what = format!("udp_error_reply({id:#x}, {icmp_type}, {code}, {out_len}) = {res:?}");
        let need = IP + 20 + 8 + 28;
        let sized = if out_len < need {
            Err(NatError::BufferTooSmall {
                need,
                have: out_len,
            })
        } else {
            Ok(need)
        };
        let unknown = Err(NatError::UnknownFlow(id));
        let i = self.by_id(id);
        // The flow is looked up whether it has timed out or not: one that has, but is not
        // reclaimed yet, still has its socket (until `expire` reports it), and may get an error.
        let ok = match i.map(|i| &self.flows[i]) {
            None => res == unknown,
            Some(k) if k.gone => res == unknown,
            Some(k) => match k.kind {
                Kind::UdpEgress | Kind::Echo { .. } if self.alive(k) => res == sized,
                Kind::UdpEgress | Kind::Echo { .. } => res == sized || res == unknown,
                Kind::UdpPublished { .. } if self.alive(k) => {
                    res == Err(NatError::WrongFlowKind(id))
                }
                // Expired or TCP: perhaps reclaimed already.
                _ => res == Err(NatError::WrongFlowKind(id)) || res == unknown,
            },
        };
        assert!(ok, "{what}: {:?}", i.map(|i| &self.flows[i]));
        let Ok(len) = res else {
            return sentinel_after(&out, 0, &what);
        };
        sentinel_after(&out, len, &what);
        let k = &self.flows[i.unwrap_or_else(|| panic!("{what}: unknown flow"))];
        assert!(
            !k.gone && matches!(k.kind, Kind::UdpEgress | Kind::Echo { .. }),
            "{what}"
        );
        let l4 = written(&out[..len], k.mac, GW_MAC, *k.r.ip(), *k.c.ip(), ICMP);
        assert_eq!(l4[..2], [icmp_type, code], "{what}: type/code");
        assert_eq!(l4[4..8], [0; 4], "{what}: unused");
        check_quote(&l4[8..], &k.first, &what);
    }

    pub fn publish_tcp(&mut self, eph: u16, c: SocketAddrV4, client: SocketAddrV4) {
        let before = self.nat.stats();
        let res = self.nat.publish_tcp(eph, c, client, self.now);
        let what = format!("publish_tcp({eph}, {c}, {client}) = {res:?}");
        if !in_subnet(*c.ip()) {
            return assert_eq!(res, Err(NatError::NotInSubnet), "{what}");
        }
        if in_subnet(*client.ip()) || client.ip().octets()[0] == 127 {
            return assert_eq!(res, Err(NatError::LocalClient), "{what}");
        }
        match res {
            Ok(id) => {
                self.fresh(id, &what);
                self.flows.push(Known {
                    id,
                    kind: Kind::TcpPublished { eph },
                    c,
                    r: client,
                    mac: [0; 6],
                    first: Vec::new(),
                    gone: false,
                    expires_at: 0,
                    replied: false,
                });
            }
            Err(NatError::TableFull) => assert_eq!(before.flows, self.max_flows, "{what}"),
            Err(NatError::InUse) => {}
            Err(e) => panic!("{what}: {e}"),
        }
    }

    pub fn publish_tcp_done(&mut self, eph: u16) {
        let done = self.nat.publish_tcp_done(eph);
        let what = format!("publish_tcp_done({eph}) = {done}");
        if done {
            let i = self
                .flows
                .iter()
                .rposition(|k| !k.gone && k.kind == Kind::TcpPublished { eph })
                .unwrap_or_else(|| panic!("{what}: no such flow"));
            let id = self.flows[i].id;
            self.bury(id, &what);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn publish_udp_in(
        &mut self,
        publish_id: u32,
        c: SocketAddrV4,
        client: SocketAddrV4,
        mac: [u8; 6],
        payload: &[u8],
        out_len: usize,
    ) {
        let before = self.nat.stats();
        let mut out = vec![SENTINEL; out_len];
        let res = self
            .nat
            .publish_udp_in(publish_id, c, client, mac, payload, &mut out, self.now);
        let what = format!(
            "publish_udp_in({publish_id}, {c}, {client}, {} bytes, {out_len}) = {res:?}",
            payload.len()
        );
        let need = UDP_FRAME_OVERHEAD + payload.len();
        let known = self
            .by_ends(Proto::Udp, c, client)
            .filter(|&i| self.alive(&self.flows[i]));
        let want = if !in_subnet(*c.ip()) {
            Err(NatError::NotInSubnet)
        } else if in_subnet(*client.ip()) || client.ip().octets()[0] == 127 {
            Err(NatError::LocalClient)
        } else if payload.len() > MAX_UDP_PAYLOAD {
            Err(NatError::PayloadTooLarge(payload.len()))
        } else if out_len < need {
            Err(NatError::BufferTooSmall {
                need,
                have: out_len,
            })
        } else if known.is_some_and(|i| self.flows[i].kind == Kind::UdpEgress) {
            Err(NatError::InUse)
        } else if known.is_none() && res == Err(NatError::TableFull) {
            assert_eq!(before.flows, self.max_flows, "{what}");
            Err(NatError::TableFull)
        } else {
            Ok(need)
        };
        assert_eq!(res, want, "{what}");
        let Ok(len) = res else {
            return sentinel_after(&out, 0, &what);
        };
        sentinel_after(&out, len, &what);
        let l4 = written(&out[..len], mac, GW_MAC, *client.ip(), *c.ip(), UDP);
        assert_eq!(
            (be16(l4, 0), be16(l4, 2)),
            (client.port(), c.port()),
            "{what}: ports"
        );
        assert_eq!(&l4[8..], payload, "{what}: payload");
        let now = self.now;
        match known {
            Some(i) => {
                let t = self.udp_timeout(self.flows[i].replied);
                let k = &mut self.flows[i];
                k.kind = Kind::UdpPublished { publish_id };
                k.mac = mac;
                k.expires_at = now.saturating_add(t);
            }
            None => {
                // The id of the new flow, as `conntrack -L` lists it.
                let ids: Vec<FlowId> = self
                    .nat
                    .entries(now)
                    .iter()
                    .filter(|e| {
                        e.proto == Proto::Udp && e.published && e.inside == c && e.outside == client
                    })
                    .map(|e| e.flow)
                    .collect();
                assert_eq!(ids.len(), 1, "{what}: entries {ids:?}");
                self.fresh(ids[0], &what);
                self.flows.push(Known {
                    id: ids[0],
                    kind: Kind::UdpPublished { publish_id },
                    c,
                    r: client,
                    mac,
                    first: Vec::new(),
                    gone: false,
                    expires_at: now.saturating_add(self.timeouts.udp),
                    replied: false,
                });
            }
        }
    }

    pub fn remove_flow(&mut self, id: FlowId) {
        let removed = self.nat.remove_flow(id);
        let what = format!("remove_flow({id:#x}) = {removed}");
        if removed {
            self.bury(id, &what);
        } else if let Some(i) = self.by_id(id) {
            let k = &self.flows[i];
            assert!(!(self.alive(k) && k.kind.timed()), "{what}: a live flow");
        }
    }

    pub fn forget_container(&mut self, ip: Ipv4Addr) {
        let gone = self.nat.forget_container(ip);
        let what = format!("forget_container({ip}) = {gone:?}");
        let listed: HashSet<FlowId> = gone.iter().map(|e| e.flow).collect();
        for k in &self.flows {
            if self.alive(k) && k.kind.timed() && *k.c.ip() == ip {
                assert!(listed.contains(&k.id), "{what}: {k:?} not removed");
            }
        }
        for e in &gone {
            let i = self
                .by_id(e.flow)
                .unwrap_or_else(|| panic!("{what}: unknown flow"));
            assert_eq!(e.proto, self.flows[i].kind.proto(), "{what}");
            self.bury(e.flow, &what);
        }
        for k in self.flows.iter_mut().filter(|k| *k.c.ip() == ip) {
            k.gone = true;
        }
        assert_eq!(
            self.nat.container_stats(ip),
            Default::default(),
            "{what}: counters kept"
        );
    }

    pub fn expire(&mut self) {
        let now = self.now;
        let reported = self.nat.expire(now);
        let what = format!("expire({now}) = {reported:?}");
        for e in &reported {
            let i = self
                .by_id(e.flow)
                .unwrap_or_else(|| panic!("{what}: unknown flow"));
            assert_eq!(e.proto, self.flows[i].kind.proto(), "{what}");
            assert!(
                !(self.flows[i].kind.timed() && self.alive(&self.flows[i])),
                "{what}: a live flow reported"
            );
            self.bury(e.flow, &what);
        }
        for k in &self.flows {
            assert!(
                !(k.kind.timed() && !k.gone && k.expires_at <= now),
                "{what}: {k:?} expired, not reported"
            );
        }
        let live = self.nat.entries(now).len();
        assert_eq!(live, self.nat.stats().flows, "{what}: expired flows left");
    }

    /// Every flow belongs to a container the fuzzer saw create it, so the containers' counters
    /// add up to the table's.
    pub fn container_totals(&self) {
        let s = self.nat.stats();
        let ips: HashSet<Ipv4Addr> = self.flows.iter().map(|k| *k.c.ip()).collect();
        let mut sum = vswitch_nat::ContainerStats::default();
        for ip in ips {
            let c = self.nat.container_stats(ip);
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
        assert!(
            s.flows <= self.max_flows,
            "{} flows, max {}",
            s.flows,
            self.max_flows
        );
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
}

/// The quote of a container's first packet in an ICMP error: its IPv4 header without options
/// (total length and checksum adjusted) and the first 8 bytes of its transport header.
fn check_quote(q: &[u8], first: &[u8], what: &str) {
    let Parsed::Ipv4(p) = parse(first) else {
        panic!("{what}: first frame not IPv4");
    };
    assert_eq!(q.len(), 28, "{what}: quote length");
    let h = &first[IP..IP + 20];
    assert_eq!(q[0], 0x45, "{what}: quoted version/IHL");
    let options = (p.ihl - 20) as u16;
    assert_eq!(
        be16(q, 2),
        be16(h, 2).saturating_sub(options),
        "{what}: quoted length"
    );
    assert_eq!(
        (q[1], &q[4..10], &q[12..20]),
        (h[1], &h[4..10], &h[12..20]),
        "{what}: quote"
    );
    if p.ihl > 20 {
        assert_eq!(
            ones_sum(&[&q[..20]]),
            0xffff,
            "{what}: quoted header checksum"
        );
    } else {
        assert_eq!(q[10..12], h[10..12], "{what}: quoted checksum");
    }
    let l4 = p.l4(first);
    let n = l4.len().min(8);
    assert_eq!(q[20..20 + n], l4[..n], "{what}: quoted transport header");
    assert!(q[20 + n..].iter().all(|&b| b == 0), "{what}: quote padding");
}

// ---- decoding the fuzzer's bytes into steps ----

fn container(inp: &mut Input) -> Ipv4Addr {
    match inp.u8() % 8 {
        n @ 0..=5 => CONTAINERS[usize::from(n) % 3],
        6 => Ipv4Addr::new(10, 1, 1, inp.u8()),
        _ => inp.pick(&[GW, OUT, Ipv4Addr::new(10, 1, 1, 255)]),
    }
}

fn remote(inp: &mut Input) -> Ipv4Addr {
    match inp.u8() % 12 {
        n @ 0..=5 => [OUT, OUT2, CLIENT][usize::from(n) % 3],
        6 => GW,
        7 => CONTAINERS[1],
        8 => inp.pick(&[Ipv4Addr::new(224, 0, 0, 251), Ipv4Addr::BROADCAST]),
        9 => inp.pick(&[Ipv4Addr::LOCALHOST, Ipv4Addr::new(0, 1, 2, 3)]),
        _ => Ipv4Addr::from(inp.u32()),
    }
}

fn l4_port(inp: &mut Input) -> u16 {
    match inp.u8() % 8 {
        0 => 5000,
        1 => 5001,
        2 => 80,
        3 => 443,
        4 => 53,
        5 => inp.pick(&RELAYS),
        6 => 33000,
        _ => inp.u16(),
    }
}

fn tcp_flags(inp: &mut Input) -> u8 {
    match inp.u8() % 8 {
        0 => SYN,
        1 => SYN | ACK,
        2 | 3 => ACK,
        4 => PSH | ACK,
        5 => FIN | ACK,
        6 => inp.pick(&[RST, RST | ACK]),
        _ => inp.u8(),
    }
}

fn time_step(inp: &mut Input) -> u64 {
    match inp.u8() % 12 {
        0 => 0,
        1 => 1,
        2 => 100,
        3 => 999,
        4 => 1000,
        5 => 2000,
        6 => 5000,
        7 => 30_000,
        8 => 120_000,
        9 => 432_000_001,
        _ => u64::from(inp.u16()),
    }
}

fn out_len(inp: &mut Input, need: usize) -> usize {
    match inp.u8() % 8 {
        0..=3 => need + 16,
        4 => need,
        5 => need.saturating_sub(1),
        6 => inp.pick(&[0, 59, 64, 1514]),
        _ => need + usize::from(inp.u8()),
    }
}

fn payload_len(inp: &mut Input) -> usize {
    match inp.u8() % 16 {
        0..=9 => usize::from(inp.u8() % 64),
        10 => 1472,
        11 => MAX_UDP_PAYLOAD,
        12 => MAX_UDP_PAYLOAD + 1,
        13 => usize::from(inp.u16()),
        _ => 0,
    }
}

impl World {
    /// A known flow (gone ones included: they must stay gone), or none.
    fn pick_flow(&self, inp: &mut Input) -> Option<usize> {
        let n = self.flows.len();
        let i = inp.below(n + 1);
        (i < n).then_some(i)
    }

    /// A flow id: a known one, or one the NAT never gave out.
    fn pick_id(&self, inp: &mut Input) -> FlowId {
        match self.pick_flow(inp) {
            Some(i) => self.flows[i].id,
            None => inp.pick(&[0xff << 32, u64::MAX, 1 << 40]),
        }
    }

    /// A frame from a container: of a known flow, or of any addresses.
    fn container_frame(&self, inp: &mut Input) -> Vec<u8> {
        let mut spec = match self.pick_flow(inp) {
            Some(i) => {
                let k = &self.flows[i];
                match k.kind {
                    Kind::Echo { .. } => Spec::new(*k.c.ip(), *k.r.ip(), ICMP, 8 << 8, k.c.port()),
                    kind => {
                        let proto = if kind.proto() == Proto::Tcp { TCP } else { UDP };
                        Spec::new(*k.c.ip(), *k.r.ip(), proto, k.c.port(), k.r.port())
                    }
                }
            }
            None => {
                let proto = inp.pick(&[TCP, TCP, UDP, UDP, ICMP, ICMP, 47, 0]);
                let proto = if proto == 0 { inp.u8() } else { proto };
                let (src, dst) = (container(inp), remote(inp));
                let sport = if proto == ICMP {
                    inp.pick(&[8 << 8, 8 << 8, 0, 3 << 8, 8 << 8 | 1])
                } else {
                    l4_port(inp)
                };
                Spec::new(src, dst, proto, sport, l4_port(inp))
            }
        };
        spec.src_mac = if inp.chance(16) {
            [2, 0, 0, 0, 0, inp.u8()]
        } else {
            container_mac(spec.src)
        };
        spec.dst_mac = GW_MAC;
        spec.flags = tcp_flags(inp);
        spec.seq = inp.u32();
        spec.vary(inp);
        let mut f = spec.build(inp);
        mangle(&mut f, inp);
        f
    }

    /// A frame from the host: to a known flow's gateway port, or any.
    fn host_frame(&self, inp: &mut Input) -> Vec<u8> {
        let flow = self
            .pick_flow(inp)
            .filter(|&i| self.flows[i].kind.proto() == Proto::Tcp);
        let mut spec = match flow {
            Some(i) => {
                let k = &self.flows[i];
                let port = k.kind.gateway_port().unwrap_or_default();
                let mut s = Spec::new(GW, *k.c.ip(), TCP, port, k.c.port());
                s.dst_mac = k.mac;
                s
            }
            None => {
                let src = if inp.chance(200) { GW } else { remote(inp) };
                let proto = inp.pick(&[TCP, TCP, TCP, UDP]);
                Spec::new(src, container(inp), proto, l4_port(inp), l4_port(inp))
            }
        };
        spec.src_mac = GW_MAC;
        spec.flags = tcp_flags(inp);
        spec.seq = inp.u32();
        spec.vary(inp);
        let mut f = spec.build(inp);
        mangle(&mut f, inp);
        f
    }

    /// A held SYN: the flow's own, another flow's, or any frame.
    fn held_syn(&self, inp: &mut Input, id: FlowId) -> Vec<u8> {
        match inp.u8() % 4 {
            0 | 1 => {
                let mut f = self
                    .by_id(id)
                    .map(|i| self.flows[i].first.clone())
                    .unwrap_or_default();
                mangle(&mut f, inp);
                f
            }
            2 => self.container_frame(inp),
            _ => {
                let n = inp.below(100);
                inp.bytes(n).to_vec()
            }
        }
    }

    fn step(&mut self, inp: &mut Input, mix: Mix) {
        let op = inp.u8();
        let op = match mix {
            Mix::Frames => op % 20,
            // Mostly the reply builders.
            Mix::Replies => [10, 10, 11, 11, 12, 12, 13, 15, 0, 17, 9, 19][usize::from(op) % 12],
        };
        match op {
            0..=5 => {
                let f = self.container_frame(inp);
                if let Verdict::TcpConnect { flow, .. } = self.outbound(&f) {
                    // The edge's connect, decided at once or later.
                    match inp.u8() % 4 {
                        0 => self.tcp_connected(flow, &f),
                        1 => self.connect_failed(flow, &f, None, TCP_RST_FRAME_LEN),
                        _ => {}
                    }
                }
            }
            6..=8 => {
                let f = self.host_frame(inp);
                self.tap_frame(&f);
            }
            9 => {
                let id = self.pick_id(inp);
                let syn = self.held_syn(inp, id);
                self.tcp_connected(id, &syn);
            }
            10 => {
                let id = self.pick_id(inp);
                let held = self.held_syn(inp, id);
                let code = inp.chance(128).then(|| inp.pick(&[0, 1, 13, 255]));
                let need = if code.is_some() {
                    ICMP_ERROR_FRAME_MAX
                } else {
                    TCP_RST_FRAME_LEN
                };
                let n = out_len(inp, need);
                self.connect_failed(id, &held, code, n);
            }
            11 => {
                let id = self.pick_id(inp);
                let len = payload_len(inp);
                let payload = inp.filled(len);
                let n = out_len(inp, UDP_FRAME_OVERHEAD + payload.len());
                self.udp_reply(id, &payload, n);
            }
            12 => {
                let ident = match self.pick_flow(inp).map(|i| self.flows[i].kind) {
                    Some(Kind::Echo { nat_ident }) => nat_ident,
                    _ => inp.u16(),
                };
                let seq = inp.u16();
                let len = payload_len(inp);
                let payload = inp.filled(len);
                let n = out_len(inp, ECHO_FRAME_OVERHEAD + payload.len());
                self.echo_reply(ident, seq, &payload, n);
            }
            13 => {
                let id = self.pick_id(inp);
                let (t, code) = (inp.pick(&[3, 11, 12, 0]), inp.u8() % 16);
                let n = out_len(inp, IP + 56);
                self.udp_error(id, t, code, n);
            }
            14 => {
                let eph = inp.pick(&[33000, 33001, 40000]);
                let c = sa(container(inp), l4_port(inp));
                let client = sa(remote(inp), l4_port(inp));
                if inp.chance(128) {
                    self.publish_tcp(eph, c, client);
                } else {
                    self.publish_tcp_done(eph);
                }
            }
            15 => {
                let publish_id = inp.below(3) as u32;
                let c = sa(container(inp), l4_port(inp));
                let client = sa(remote(inp), l4_port(inp));
                let mac = container_mac(*c.ip());
                let len = payload_len(inp);
                let payload = inp.filled(len);
                let n = out_len(inp, UDP_FRAME_OVERHEAD + payload.len());
                self.publish_udp_in(publish_id, c, client, mac, &payload, n);
            }
            16 => {
                if inp.chance(200) {
                    let id = self.pick_id(inp);
                    self.remove_flow(id);
                } else {
                    let ip = container(inp);
                    self.forget_container(ip);
                }
            }
            17 | 18 => {
                self.now = self.now.saturating_add(time_step(inp));
                if op == 17 {
                    self.expire();
                }
            }
            _ => {
                // To the very moment a timed flow expires, or just before.
                if let Some(i) = self.pick_flow(inp) {
                    let at = self.flows[i]
                        .expires_at
                        .saturating_sub(u64::from(inp.u8() % 2));
                    self.now = self.now.max(at);
                }
                self.relay_lookups();
                self.container_totals();
            }
        }
        self.check();
    }

    /// The table the edge builds in normal operation, through the public API.
    fn populate(&mut self) {
        let [c1, c2, c3] = CONTAINERS;
        let frame =
            |src: SocketAddrV4, dst: SocketAddrV4, proto: u8, flags: u8, mac: [u8; 6], dst_mac| {
                let mut s = Spec::new(*src.ip(), *dst.ip(), proto, src.port(), dst.port());
                s.flags = flags;
                s.src_mac = mac;
                s.dst_mac = dst_mac;
                s.payload_len = 5;
                s.build(&mut Input::new(&[]))
            };
        let roomy = self.roomy();
        // TCP out: SYN held, connected, SYN-ACK from the relay, ACK.
        let syn = frame(
            sa(c1, 5000),
            sa(OUT, 80),
            TCP,
            SYN,
            container_mac(c1),
            GW_MAC,
        );
        if let Verdict::TcpConnect { flow, .. } = self.outbound(&syn) {
            self.tcp_connected(flow, &syn);
            let relay = self
                .flows
                .last()
                .and_then(|k| k.kind.gateway_port())
                .unwrap_or_default();
            let v = self.tap_frame(&frame(
                sa(GW, relay),
                sa(c1, 5000),
                TCP,
                SYN | ACK,
                GW_MAC,
                container_mac(c1),
            ));
            assert!(v == Verdict::Rewritten || !roomy, "populate: SYN-ACK {v:?}");
            let v = self.outbound(&frame(
                sa(c1, 5000),
                sa(OUT, 80),
                TCP,
                ACK,
                container_mac(c1),
                GW_MAC,
            ));
            assert!(v == Verdict::Rewritten || !roomy, "populate: ACK {v:?}");
        } else {
            assert!(!roomy, "populate: no TCP flow");
        }
        // TCP out, still connecting.
        self.outbound(&frame(
            sa(c2, 5001),
            sa(OUT2, 443),
            TCP,
            SYN,
            container_mac(c2),
            GW_MAC,
        ));
        // UDP out, replied.
        let v = self.outbound(&frame(
            sa(c1, 53000),
            sa(OUT, 53),
            UDP,
            0,
            container_mac(c1),
            GW_MAC,
        ));
        if let Verdict::UdpOut { flow, .. } = v {
            self.udp_reply(flow, b"answer", 256);
        }
        // Echo, replied.
        let v = self.outbound(&frame(
            sa(c2, 8 << 8),
            sa(OUT, 7),
            ICMP,
            0,
            container_mac(c2),
            GW_MAC,
        ));
        if let Verdict::EchoOut { ident, .. } = v {
            self.echo_reply(ident, 7, b"pong", 256);
        }
        // Published TCP: the host's SYN to the container, its SYN-ACK.
        self.publish_tcp(33000, sa(c3, 80), sa(CLIENT, 40123));
        let v = self.tap_frame(&frame(
            sa(GW, 33000),
            sa(c3, 80),
            TCP,
            SYN,
            GW_MAC,
            container_mac(c3),
        ));
        assert!(
            v == Verdict::Rewritten || !roomy,
            "populate: published SYN {v:?}"
        );
        self.outbound(&frame(
            sa(c3, 80),
            sa(CLIENT, 40123),
            TCP,
            SYN | ACK,
            container_mac(c3),
            GW_MAC,
        ));
        // Published UDP: a client's datagram, the container's answer.
        self.publish_udp_in(
            1,
            sa(c3, 5353),
            sa(CLIENT, 6000),
            container_mac(c3),
            b"query",
            256,
        );
        let v = self.outbound(&frame(
            sa(c3, 5353),
            sa(CLIENT, 6000),
            UDP,
            0,
            container_mac(c3),
            GW_MAC,
        ));
        assert!(
            matches!(v, Verdict::UdpToClient { .. }) || !roomy,
            "populate: {v:?}"
        );
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
