//! The frames both ways: `Nat::outbound` (a container's frame to the gateway's MAC) and
//! `Nat::from_host` (a frame the host sent out of the TAP), each verdict checked against the
//! frame's headers and what the fuzzer knows of the flows.

use std::net::SocketAddrV4;

use vswitch_nat::{NatDrop, NatStats, Proto, ReplyFrame, Verdict};

use super::build::{ACK, FIN, RST, SYN};
use super::edge::{check_icmp_error, check_rst};
use super::{drop_counters, drop_index, in_subnet, sa, Kind, Known, World, DROPS, GW};
use crate::check::{
    be16, cross_check_ip_csum, ip_at, ip_csum_ok, is_tagged, parse, tcp_csum_ok, Ipv4View, Parsed,
    ICMP, IP, TCP, UDP,
};

/// ICMP time exceeded (in transit).
const TIME_EXCEEDED: (u8, u8) = (11, 0);
/// ICMP destination unreachable, communication administratively prohibited (RFC 1812).
const ADMIN_PROHIBITED: (u8, u8) = (3, 13);

/// What a container's frame must come to, from its headers alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutClass {
    Pass,
    Drop(NatDrop),
    /// Its TTL runs out at the gateway: answered with ICMP time exceeded.
    TimeExceeded(Ipv4View),
    Tcp(Ipv4View),
    Udp(Ipv4View),
    Echo(Ipv4View),
}

fn out_class(f: &[u8]) -> OutClass {
    let v = match parse(f) {
        Parsed::Short | Parsed::BadIpv4 => return OutClass::Drop(NatDrop::Malformed),
        Parsed::BadLength => return OutClass::Drop(NatDrop::BadLength),
        Parsed::NotIpv4 if is_tagged(f) => return OutClass::Drop(NatDrop::Tagged),
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
    // What a router checks before it forwards.
    if !ip_csum_ok(f, &v) {
        return OutClass::Drop(NatDrop::BadChecksum);
    }
    if v.ttl <= 1 {
        return OutClass::TimeExceeded(v);
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
pub(super) fn only_changed(
    before: &[u8],
    after: &[u8],
    allowed: &[std::ops::Range<usize>],
    what: &str,
) {
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
pub(super) fn checksums_kept(before: &[u8], after: &[u8], what: &str) {
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

impl World {
    /// A container's frame to the gateway's MAC.
    pub fn outbound(&mut self, frame: &[u8]) -> Verdict {
        let before = self.nat.stats();
        let mut f = frame.to_vec();
        let v = self.nat.outbound(&mut f, self.now);
        let what = format!("outbound({v:?}) at {} of {frame:02x?}", self.now);
        if !v.rewrote() {
            assert_eq!(f, frame, "{what}: frame changed");
        }
        let why = self.drop_counted(&before, &v, &what);
        match (out_class(frame), &v) {
            (OutClass::Pass, Verdict::Pass) => {}
            (OutClass::Drop(want), Verdict::Drop(got)) => assert_eq!(got, &want, "{what}"),
            (OutClass::TimeExceeded(p), Verdict::Reply(r)) => {
                assert_eq!(why, Some(NatDrop::TtlExceeded), "{what}");
                check_icmp_error(r.bytes(), frame, &p, GW, TIME_EXCEEDED, &what);
            }
            (OutClass::Tcp(p), _) => self.tcp_out(frame, &f, &p, &v, why, &what),
            (OutClass::Udp(p), _) => self.udp_out(frame, &p, &v, why, &what),
            (OutClass::Echo(p), _) => self.echo_out(frame, &p, &v, why, &what),
            (class, _) => panic!("{what}: expected {class:?}"),
        }
        v
    }

    /// Every drop bumps its own counter, by one, and so does a frame the NAT answered itself
    /// (its TTL ran out, or its new flow was refused); nothing else bumps a drop counter.
    /// Returns the drop counted.
    fn drop_counted(&self, before: &NatStats, v: &Verdict, what: &str) -> Option<NatDrop> {
        let after = self.nat.stats();
        let (was, now) = (drop_counters(before), drop_counters(&after));
        let moved: Vec<NatDrop> = (DROPS.iter().zip(was.iter().zip(&now)))
            .filter(|(_, (a, b))| a != b)
            .map(|(d, _)| *d)
            .collect();
        let why = match (v, moved.as_slice()) {
            (Verdict::Drop(d), &[m]) => {
                assert_eq!(*d, m, "{what}: drop counted as {m:?}");
                Some(m)
            }
            (Verdict::Reply(_), &[m]) => {
                let answered = [
                    NatDrop::TtlExceeded,
                    NatDrop::TableFull,
                    NatDrop::ContainerLimit,
                    NatDrop::HalfOpenLimit,
                ];
                assert!(answered.contains(&m), "{what}: answered, counted as {m:?}");
                Some(m)
            }
            (Verdict::Drop(_) | Verdict::Reply(_), _) => {
                panic!("{what}: counters {moved:?} moved")
            }
            (_, []) => None,
            (_, _) => panic!("{what}: not dropped, counters {moved:?} moved"),
        };
        if let Some(d) = why {
            let i = drop_index(d);
            assert_eq!(now[i], was[i] + 1, "{what}: {d:?} counted more than once");
        }
        if why == Some(NatDrop::TableFull) {
            // Finished TCP flows are outside the bound: at least `max_flows` flows.
            assert!(after.flows >= self.max_flows, "{what}: table not full");
        }
        why
    }

    /// A new flow refused, answered for the remote (`why` as counted): a reset for a TCP
    /// connection, ICMP administratively prohibited from the gateway otherwise.
    fn refused(
        &mut self,
        frame: &[u8],
        p: &Ipv4View,
        reply: &ReplyFrame,
        why: Option<NatDrop>,
        what: &str,
    ) {
        match why {
            // The table's fullness was checked as the drop was counted.
            Some(NatDrop::TableFull) => {}
            Some(NatDrop::ContainerLimit) => {
                let held = self.share_upper_bound(p.src, false);
                assert!(
                    held >= self.shares.flows,
                    "{what}: {held} flows, share {:?}",
                    self.shares
                );
            }
            Some(NatDrop::HalfOpenLimit) => {
                assert_eq!(p.proto, TCP, "{what}: half-open, not TCP");
                let held = self.share_upper_bound(p.src, true);
                assert!(
                    held >= self.shares.half_open,
                    "{what}: {held} connecting, share {:?}",
                    self.shares
                );
            }
            w => panic!("{what}: refused, counted as {w:?}"),
        }
        *self.refused.entry(p.src).or_default() += 1;
        if p.proto == TCP {
            check_rst(reply.bytes(), frame, p, what);
        } else {
            check_icmp_error(reply.bytes(), frame, p, GW, ADMIN_PROHIBITED, what);
        }
    }

    fn tcp_out(
        &mut self,
        frame: &[u8],
        f: &[u8],
        p: &Ipv4View,
        v: &Verdict,
        why: Option<NatDrop>,
        what: &str,
    ) {
        let l4 = p.l4(frame);
        let (sport, dport, flags) = (be16(l4, 0), be16(l4, 2), l4[13]);
        let (c, r) = (sa(p.src, sport), sa(p.dst, dport));
        let partial = p.vnet_flags & 1 != 0;
        match v {
            Verdict::Rewritten | Verdict::Offload(_) | Verdict::Closing(_) => {
                let i = self
                    .by_ends(Proto::Tcp, c, r)
                    .unwrap_or_else(|| panic!("{what}: rewritten, but no such flow"));
                offload_agrees(v, c, r, self.flows[i].kind, what);
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
                        Some(
                            Kind::TcpEgress {
                                connecting: true,
                                ..
                            } | Kind::TcpTranslated { .. }
                        )
                    ),
                    "{what}: pending on {k:?}"
                );
            }
            Verdict::TcpConnect { flow, from, dst } => {
                assert!(is_new_syn(flags), "{what}: not a SYN");
                assert_eq!((*from, *dst), (c, r), "{what}: ends");
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
                    finished: false,
                    expires_at: 0,
                    replied: false,
                });
                self.created_within_bounds(*c.ip(), true, true, what);
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
            Verdict::Reply(reply) => {
                assert!(is_new_syn(flags), "{what}: refused, not a SYN");
                assert!(!partial || p.offload_at(16), "{what}: odd offload refused");
                self.refused(frame, p, reply, why, what);
            }
            _ => panic!("{what}: not a TCP verdict"),
        }
    }

    fn udp_out(
        &mut self,
        frame: &[u8],
        p: &Ipv4View,
        v: &Verdict,
        why: Option<NatDrop>,
        what: &str,
    ) {
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
                from,
                dst,
                payload,
                new,
                gso_size,
            } => {
                assert_eq!(
                    (*from, *dst, payload.clone(), *gso_size),
                    (c, r, p.l4 + 8..end, want_gso),
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
                        finished: false,
                        expires_at: now.saturating_add(self.timeouts.udp),
                        replied: false,
                    });
                    self.created_within_bounds(*c.ip(), true, false, what);
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
            Verdict::Reply(reply) => {
                assert!(known.is_none(), "{what}: refused, but {known:?}");
                self.refused(frame, p, reply, why, what);
            }
            _ => panic!("{what}: not a UDP verdict"),
        }
    }

    fn echo_out(
        &mut self,
        frame: &[u8],
        p: &Ipv4View,
        v: &Verdict,
        why: Option<NatDrop>,
        what: &str,
    ) {
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
                            finished: false,
                            expires_at: now.saturating_add(self.timeouts.icmp),
                            replied: false,
                        });
                        self.created_within_bounds(*c.ip(), true, false, what);
                    }
                }
            }
            Verdict::Reply(reply) => {
                assert!(known.is_none(), "{what}: refused, but {known:?}");
                self.refused(frame, p, reply, why, what);
            }
            _ => panic!("{what}: not an echo verdict"),
        }
    }

    /// A frame the host kernel sent out of the TAP.
    pub fn tap_frame(&mut self, frame: &[u8]) -> Verdict {
        let before = self.nat.stats();
        let mut f = frame.to_vec();
        let v = self.nat.from_host(&mut f, self.now);
        let what = format!("from_host({v:?}) at {} of {frame:02x?}", self.now);
        if !v.rewrote() {
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
            Verdict::Rewritten | Verdict::Offload(_) | Verdict::Closing(_) => {
                let r = self.flows[i].r;
                offload_agrees(&v, self.flows[i].c, r, self.flows[i].kind, &what);
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
            // The kernel carries it: the host has no side of it.
            Verdict::Drop(NatDrop::NoFlow) => {
                let k = self.flows[i].kind;
                assert!(matches!(k, Kind::TcpTranslated { .. }), "{what}: on {k:?}");
            }
            _ => panic!("{what}: not a from_host verdict"),
        }
        v
    }
}

/// An `Offload` verdict hands the edge the translation the NAT itself applies to the
/// connection: the container's ends, the relay's (or published connection's) port on the
/// gateway; only for TCP.
fn offload_agrees(v: &Verdict, c: SocketAddrV4, r: SocketAddrV4, kind: Kind, what: &str) {
    if let Verdict::Offload(o) = v {
        let (Kind::TcpEgress { relay, .. } | Kind::TcpPublished { eph: relay }) = kind else {
            panic!("{what}: {kind:?} handed to the edge");
        };
        assert_eq!(
            (o.container, o.remote, o.relay),
            (c, r, sa(GW, relay)),
            "{what}: the offload is not the translation"
        );
    }
}
