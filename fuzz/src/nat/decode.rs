//! Decoding the fuzzer's bytes into steps: frames of known flows or of any addresses, the
//! edge's calls on known flows or unknown ones, time moving to the edges of timeouts; and the
//! table every input starts from.

use std::net::{Ipv4Addr, SocketAddrV4};

use vswitch_nat::{
    FlowId, Proto, Verdict, ECHO_FRAME_OVERHEAD, ICMP_ERROR_FRAME_MAX, TCP_RST_FRAME_LEN,
    UDP_FRAME_OVERHEAD,
};

use super::build::{mangle, Spec, ACK, FIN, PSH, RST, SYN};
use super::{
    container_mac, sa, Kind, Mix, World, CLIENT, CONTAINERS, GW, GW_MAC, MAX_UDP_PAYLOAD, OUT,
    OUT2, RELAYS,
};
use crate::check::{ones_sum, pseudo, ICMP, IP, TCP, UDP};
use crate::input::Input;

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

    /// Sets the first two bytes of a reply's payload so that the UDP checksum of flow `id`'s
    /// reply sums to exactly 0, which must be sent as 0xffff (0 means "no checksum"): 1 payload
    /// in 65536 otherwise.
    fn zero_udp_checksum(&self, id: FlowId, payload: &mut [u8]) {
        let Some(k) = self.by_id(id).map(|i| &self.flows[i]) else {
            return;
        };
        if payload.len() < 2 || 8 + payload.len() > usize::from(u16::MAX) {
            return;
        }
        payload[..2].fill(0);
        let len = 8 + payload.len();
        let ps = pseudo(*k.r.ip(), *k.c.ip(), UDP, len);
        let mut hdr = [0u8; 8];
        hdr[..2].copy_from_slice(&k.r.port().to_be_bytes());
        hdr[2..4].copy_from_slice(&k.c.port().to_be_bytes());
        hdr[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        let s = ones_sum(&[&ps, &hdr, payload]);
        payload[..2].copy_from_slice(&(0xffff - s).to_be_bytes());
        debug_assert_eq!(ones_sum(&[&ps, &hdr, payload]), 0xffff);
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

    pub(super) fn step(&mut self, inp: &mut Input, mix: Mix) {
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
                    match inp.u8() % 5 {
                        0 => self.tcp_connected(flow, &f),
                        1 => self.connect_failed(flow, &f, None, TCP_RST_FRAME_LEN),
                        2 => self.tcp_translated(flow, &f),
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
                match inp.u8() % 4 {
                    0 => {
                        let syn = self.held_syn(inp, id);
                        self.tcp_translated(id, &syn);
                    }
                    1 => {
                        let flags = (inp.u8(), inp.u8());
                        self.translated_seen(id, flags);
                    }
                    _ => {
                        let syn = self.held_syn(inp, id);
                        self.tcp_connected(id, &syn);
                    }
                }
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
                let mut payload = inp.filled(len);
                if mix == Mix::Replies && inp.chance(32) {
                    self.zero_udp_checksum(id, &mut payload);
                }
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
    pub(super) fn populate(&mut self) {
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
        // TCP out translated by the edge: SYN handed over, answered, established.
        let syn = frame(
            sa(c1, 5100),
            sa(OUT, 443),
            TCP,
            SYN,
            container_mac(c1),
            GW_MAC,
        );
        if let Verdict::TcpConnect { flow, .. } = self.outbound(&syn) {
            self.tcp_translated(flow, &syn);
            self.translated_seen(flow, (SYN | ACK, SYN | ACK));
            let k = self.by_id(flow).map(|i| self.flows[i].kind);
            assert!(
                matches!(
                    k,
                    Some(Kind::TcpTranslated {
                        connecting: false,
                        ..
                    })
                ) || !roomy,
                "populate: translated {k:?}"
            );
        }
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
            assert!(v.rewrote() || !roomy, "populate: SYN-ACK {v:?}");
            let v = self.outbound(&frame(
                sa(c1, 5000),
                sa(OUT, 80),
                TCP,
                ACK,
                container_mac(c1),
                GW_MAC,
            ));
            assert!(v.rewrote() || !roomy, "populate: ACK {v:?}");
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
        assert!(v.rewrote() || !roomy, "populate: published SYN {v:?}");
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
}
