//! The edge's calls: connects decided, replies from host sockets, published ports, removals
//! and `expire`, each result checked against what the fuzzer knows of the flow, and every frame
//! the NAT writes checked for form and content.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};

use vswitch_nat::{
    FlowId, NatError, Proto, ECHO_FRAME_OVERHEAD, ICMP_ERROR_FRAME_MAX, TCP_RST_FRAME_LEN,
    UDP_FRAME_OVERHEAD,
};

use super::build::{ACK, RST, SYN};
use super::frames::{checksums_kept, only_changed};
use super::{in_subnet, sa, Kind, Known, World, GW, GW_MAC, HOST, MAX_UDP_PAYLOAD, SENTINEL};
use crate::check::{be16, ip_at, ones_sum, parse, written, Ipv4View, Parsed, ICMP, IP, TCP, UDP};

fn sentinel_after(out: &[u8], len: usize, what: &str) {
    assert!(
        out[len..].iter().all(|&b| b == SENTINEL),
        "{what}: bytes written past the frame"
    );
}

impl World {
    /// What the edge's call on flow `id`'s held SYN (`syn`, `f` after the call) must have
    /// done, whatever the call: a SYN that is no TCP segment is malformed, a dead flow unknown,
    /// and a refused SYN unchanged; an accepted one was its connecting flow's. Returns that
    /// flow, its relay port and the SYN's view.
    fn held_syn_taken(
        &self,
        id: FlowId,
        syn: &[u8],
        f: &[u8],
        res: Result<(), NatError>,
        what: &str,
    ) -> Option<(usize, u16, Ipv4View)> {
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
            return None;
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
        Some((i, relay, p))
    }

    /// The edge connected flow `id`; `syn` is the SYN it held.
    pub fn tcp_connected(&mut self, id: FlowId, syn: &[u8]) {
        let mut f = syn.to_vec();
        let res = self.nat.tcp_connected(id, &mut f, self.now);
        let what = format!("tcp_connected({id:#x}) = {res:?} of {syn:02x?}");
        let Some((i, relay, p)) = self.held_syn_taken(id, syn, &f, res, &what) else {
            return;
        };
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

    /// The edge translates connecting flow `id` in the kernel from `HOST`; `syn` is the SYN it
    /// held. Checked as `tcp_connected`, with the source rewritten instead and the checksum
    /// complete.
    pub fn tcp_translated(&mut self, id: FlowId, syn: &[u8]) {
        let mut f = syn.to_vec();
        let res = self.nat.tcp_translated(id, &mut f, HOST, self.now);
        let what = format!("tcp_translated({id:#x}) = {res:?} of {syn:02x?}");
        let taken = self.held_syn_taken(id, syn, &f, res.clone().map(drop), &what);
        let (Some((i, relay, p)), Ok(packet)) = (taken, res) else {
            return;
        };
        assert_eq!(packet, IP..p.end, "{what}: the packet");
        let allowed = [
            0..1,
            IP + 12..IP + 16,
            IP + 10..IP + 12,
            p.l4..p.l4 + 2,
            p.l4 + 16..p.l4 + 18,
        ];
        only_changed(syn, &f, &allowed, &what);
        assert_eq!(
            sa(ip_at(&f, IP + 12), be16(&f, p.l4)),
            HOST,
            "{what}: the host's side"
        );
        // Complete, and right if it was right (offloaded or not).
        assert_eq!(f[0] & 1, 0, "{what}: still partial");
        checksums_kept(syn, &f, &what);
        self.flows[i].kind = Kind::TcpTranslated {
            relay,
            connecting: true,
        };
    }

    /// The edge reports the flags translated flow `id`'s segments carried each way: `None`
    /// exactly when the fuzzer knows no live translated flow `id`; once answered it no longer
    /// counts as connecting.
    pub fn translated_seen(&mut self, id: FlowId, flags: (u8, u8)) {
        let res = self
            .nat
            .translated_seen(id, flags, (1, 60), (1, 60), self.now);
        let what = format!("translated_seen({id:#x}, {flags:?}) = {res:?}");
        let i = self.by_id(id).filter(|&i| !self.flows[i].gone);
        let known = i.map(|i| self.flows[i].kind);
        let Some(state) = res else {
            // Gone from the table (expired, reaped: the next expire tells) or not translated.
            if let Some(Kind::TcpTranslated { .. }) = known {
                assert!(
                    self.nat.entries(self.now).iter().all(|e| e.flow != id),
                    "{what}"
                );
            }
            return;
        };
        let (Some(i), Some(Kind::TcpTranslated { relay, connecting })) = (i, known) else {
            panic!("{what}: on {known:?}");
        };
        let answered = flags.1 & (SYN | RST) != 0 || state != vswitch_nat::TcpState::SynSent;
        self.flows[i].kind = Kind::TcpTranslated {
            relay,
            connecting: connecting && !answered,
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
        match icmp {
            None => check_rst(f, held, p, what),
            Some(code) => check_icmp_error(f, held, p, p.dst, (3, code), what),
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
                    finished: false,
                    expires_at: 0,
                    replied: false,
                });
                self.created_within_bounds(*c.ip(), false, false, &what);
            }
            // Finished TCP flows are outside the bound: at least `max_flows` flows.
            Err(NatError::TableFull) => assert!(before.flows >= self.max_flows, "{what}"),
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
            assert!(before.flows >= self.max_flows, "{what}");
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
                    finished: false,
                    expires_at: now.saturating_add(self.timeouts.udp),
                    replied: false,
                });
                self.created_within_bounds(*c.ip(), false, false, &what);
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
        self.refused.remove(&ip);
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
}

/// A reset answering TCP segment `held` (`p`), from its destination: ports swapped, sequence
/// 0, acknowledging the segment (its SYN and data).
pub(super) fn check_rst(f: &[u8], held: &[u8], p: &Ipv4View, what: &str) {
    let (sport, dport) = p.ports(held).unwrap_or_default();
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

/// An ICMP error (`kind`: type and code) from `from` about packet `held` (`p`), back to its
/// sender: it quotes the packet's IPv4 header as sent (options included) and up to 8 bytes of
/// what follows (RFC 792).
pub(super) fn check_icmp_error(
    f: &[u8],
    held: &[u8],
    p: &Ipv4View,
    from: Ipv4Addr,
    kind: (u8, u8),
    what: &str,
) {
    let l4 = written(f, p.src_mac, GW_MAC, from, p.src, ICMP);
    assert_eq!(l4[..2], [kind.0, kind.1], "{what}: ICMP type/code");
    assert_eq!(l4[4..8], [0; 4], "{what}: ICMP unused");
    let quoted = &held[IP..(p.l4 + 8).min(p.end)];
    assert_eq!(&l4[8..], quoted, "{what}: quote");
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
