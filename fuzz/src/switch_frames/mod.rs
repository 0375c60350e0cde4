//! `switch_frames`: a sequence of frames on several ports with time advancing (forward, and
//! sometimes a few milliseconds back, as workers reading the clock at different moments see
//! it), interleaved with ports plugged (with any port-security policy) and unplugged, aging
//! sweeps, fast-path reports, gratuitous ARP, table flushes and hand-overs, on a switch with a
//! small forwarding table and small per-port MAC limits, so that learning, moves, aging, a full
//! table, evictions for a station, refusals, anti-spoofing, isolation, ARP answers, flooding
//! and hairpins are all reached.
//!
//! Every step is checked against a reference model written from the switch's documented
//! behaviour (`model.rs`, not the switch's data structures): the exact [`Action`] (and
//! `admit`'s decision), the ARP reply's bytes (and smoltcp's reading of them), that nothing is
//! written into the reply buffer beyond the reply (or at all, without one), every counter, each
//! port's port-security counters, MAC limit and learned MACs, the forwarding table's length and
//! live entries, the port directory and its policies, whom a flood may reach, the table a
//! successor restores from the entries reported (ages included), and `flow_hash` being the same
//! both ways of a flow. Now and then a MAC address or an IPv4 prefix in text goes through its
//! parser (`--mac`, `--allow-ip`), which must accept exactly the documented syntax and read
//! back what `Display` writes.

mod gen;
mod model;

use std::collections::HashSet;
use std::net::Ipv4Addr;

use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol};
use vswitch_switch::{flow_hash, Action, Config, Ipv4Prefix, MacAddr, PortId, Switch, SwitchStats};

use crate::input::Input;
use gen::{addr, ip, mac, port, station, tick, PORT_IDS};
use model::{Model, Oracle};

/// Steps per input: bounds the time an input takes.
const MAX_OPS: usize = 96;
const ARP_FRAME_LEN: usize = 60;
/// Fills the reply buffer, to see what the switch writes.
const SENTINEL: u8 = 0xa5;

/// The same frame from the other end of its flow: IPv4 addresses and, where the flow hash
/// reads them, the ports swapped. `None` for frames whose header is not well-formed.
fn reversed(f: &[u8]) -> Option<Vec<u8>> {
    let ip = f.get(14..)?;
    let mut r = f.to_vec();
    match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => {
            let ihl = usize::from(ip.get(..20)?[0] & 15) * 4;
            if ihl < 20 {
                return None;
            }
            r[14 + 12..14 + 16].copy_from_slice(&ip[16..20]);
            r[14 + 16..14 + 20].copy_from_slice(&ip[12..16]);
            let first = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
            if first && matches!(ip[9], 6 | 17) && ip.len() >= ihl + 4 {
                let p = 14 + ihl;
                r[p..p + 2].copy_from_slice(&ip[ihl + 2..ihl + 4]);
                r[p + 2..p + 4].copy_from_slice(&ip[ihl..ihl + 2]);
            }
        }
        0x86dd => {
            let h = ip.get(..40)?;
            r[14 + 8..14 + 24].copy_from_slice(&h[24..40]);
            r[14 + 24..14 + 40].copy_from_slice(&h[8..24]);
            if matches!(h[6], 6 | 17) && ip.len() >= 44 {
                r[54..56].copy_from_slice(&ip[42..44]);
                r[56..58].copy_from_slice(&ip[40..42]);
            }
        }
        _ => return None,
    }
    Some(r)
}

/// An ARP frame, padded to 60 bytes.
pub(super) fn arp_frame(
    eth_dst: MacAddr,
    op: u16,
    sender: (MacAddr, Ipv4Addr),
    target: (MacAddr, Ipv4Addr),
) -> [u8; ARP_FRAME_LEN] {
    let mut f = [0u8; ARP_FRAME_LEN];
    let mut v = Vec::with_capacity(42);
    v.extend(eth_dst.0);
    v.extend(sender.0 .0);
    v.extend([0x08, 0x06, 0, 1, 8, 0, 6, 4]);
    v.extend(op.to_be_bytes());
    v.extend(sender.0 .0);
    v.extend(sender.1.octets());
    v.extend(target.0 .0);
    v.extend(target.1.octets());
    f[..42].copy_from_slice(&v);
    f
}

/// smoltcp must read an ARP frame the switch wrote as the model meant it.
fn smoltcp_reads_arp(f: &[u8], expect_op: ArpOperation) {
    let eth = EthernetFrame::new_checked(f).expect("smoltcp: ARP frame's Ethernet header");
    assert_eq!(eth.ethertype(), EthernetProtocol::Arp);
    let pkt = ArpPacket::new_checked(eth.payload()).expect("smoltcp: ARP packet");
    match ArpRepr::parse(&pkt).expect("smoltcp: ARP repr") {
        ArpRepr::EthernetIpv4 { operation, .. } => assert_eq!(operation, expect_op),
        other => panic!("smoltcp reads {other:?}"),
    }
}

struct Run {
    sw: Switch,
    model: Model,
    now: u64,
}

/// The entry the switch evicted among `victims` (it evicts live entries only): the one
/// missing from its table now.
fn evicted(sw: &Switch, now: u64, victims: &[MacAddr]) -> MacAddr {
    let left: HashSet<MacAddr> = sw.fdb_entries(now).iter().map(|e| e.mac).collect();
    let gone: Vec<MacAddr> = (victims.iter().copied())
        .filter(|m| !left.contains(m))
        .collect();
    assert_eq!(gone.len(), 1, "evicted {gone:?} of {victims:?}");
    gone[0]
}

impl Run {
    fn frame_op(&mut self, inp: &mut Input) {
        // Mostly a registered port.
        let ports: Vec<PortId> = self.model.ports.keys().copied().collect();
        let ingress = match ports.is_empty() || inp.chance(32) {
            true => port(inp),
            false => inp.pick(&ports),
        };
        let flags = inp.u8();
        let outgoing = flags & 15 == 0;
        let admit = flags & 15 == 1;
        let buf_len = [60, 60, 64, 1514, 59, 0, 42, 61][usize::from(flags >> 4) % 8];
        self.now = tick(inp, self.now);
        let own = self.model.ports.get(&ingress).map(|(i, _)| i.clone());
        let f = gen::frame(inp, own.as_ref());
        let what = format!(
            "port {ingress}, now {}, buf {buf_len}, frame {f:02x?}",
            self.now
        );
        // The frame as a port hands it over, behind a UDP GSO header: a count of at least one
        // datagram and at most one per byte of the frame, never a panic.
        let gso_size = u16::from(inp.u8()).max(1);
        let mut with_hdr = vec![0, vswitch_switch::vnet::GSO_UDP_L4, 0, 0];
        with_hdr.extend_from_slice(&gso_size.to_le_bytes());
        with_hdr.extend_from_slice(&[0; 4]);
        with_hdr.extend_from_slice(&f);
        let datagrams = vswitch_switch::vnet::datagrams(&with_hdr);
        assert!(
            (1..=f.len().max(1)).contains(&datagrams),
            "datagrams({what}) = {datagrams}"
        );
        if admit {
            let got = self.sw.admit(ingress, &f);
            assert_eq!(got, self.model.admit(ingress, &f), "admit({what})");
            return;
        }
        let mut buf = vec![SENTINEL; buf_len];
        let action = self.sw.process(ingress, &f, outgoing, self.now, &mut buf);
        let (sw, now) = (&self.sw, self.now);
        let which: Oracle = &|v| evicted(sw, now, v);
        let (want, reply) = self
            .model
            .process(ingress, &f, outgoing, self.now, buf_len, which);
        assert_eq!(action, want, "process(outgoing {outgoing}, {what})");
        if let Action::Reply { len } = action {
            assert!(
                len <= buf.len(),
                "reply of {len} bytes in a {buf_len}-byte buffer"
            );
        }
        match reply {
            Some(r) => {
                assert_eq!(buf[..ARP_FRAME_LEN], r, "ARP reply bytes");
                assert!(buf[ARP_FRAME_LEN..].iter().all(|&b| b == SENTINEL));
                smoltcp_reads_arp(&buf[..ARP_FRAME_LEN], ArpOperation::Reply);
            }
            None => assert!(
                buf.iter().all(|&b| b == SENTINEL),
                "reply buffer written without a reply"
            ),
        }
        self.flow_hash(&f);
    }

    fn flow_hash(&self, f: &[u8]) {
        let h = flow_hash(f);
        let ethertype = f.get(12..14).map(|t| u16::from_be_bytes([t[0], t[1]]));
        if !matches!(ethertype, Some(0x0800 | 0x86dd)) {
            assert_eq!(h, 0, "flow hash of a non-IP frame");
        }
        if let Some(r) = reversed(f) {
            assert_eq!(flow_hash(&r), h, "flow hash differs between directions");
        }
    }

    fn add_port(&mut self, inp: &mut Input) {
        let id = port(inp);
        let (info, policy) = (gen::info(inp), gen::policy(inp));
        self.sw
            .add_port_with_policy(id, info.clone(), policy.clone());
        self.model.add_port(id, info, policy);
    }

    fn seen(&mut self, inp: &mut Input) {
        let (mac, id) = (mac(inp), port(inp));
        self.now = tick(inp, self.now);
        self.sw.seen(mac, id, self.now);
        let (sw, now) = (&self.sw, self.now);
        self.model.seen(mac, id, now, &|v| evicted(sw, now, v));
    }

    fn gratuitous_arp(&mut self, inp: &mut Input) {
        let id = port(inp);
        let len = inp.pick(&[60, 64, 59, 0]);
        let mut buf = vec![SENTINEL; len];
        let got = self.sw.gratuitous_arp(id, &mut buf);
        let want = (self.model.ports.get(&id))
            .and_then(|(i, _)| Some((i.mac, i.ip?)))
            .filter(|_| len >= ARP_FRAME_LEN)
            .map(|(mac, ip)| arp_frame(MacAddr::BROADCAST, 1, (mac, ip), (MacAddr::ZERO, ip)));
        assert_eq!(got, want.map(|_| ARP_FRAME_LEN), "gratuitous_arp({id})");
        match want {
            Some(w) => {
                assert_eq!(buf[..ARP_FRAME_LEN], w, "gratuitous ARP bytes");
                assert!(buf[ARP_FRAME_LEN..].iter().all(|&b| b == SENTINEL));
                smoltcp_reads_arp(&buf[..ARP_FRAME_LEN], ArpOperation::Request);
            }
            None => assert!(buf.iter().all(|&b| b == SENTINEL)),
        }
    }

    /// Jumps to just before, at or after the moment a learned entry ages.
    fn jump_to_aging_edge(&mut self, inp: &mut Input) {
        let n = self.model.fdb.len();
        let Some(e) = self.model.fdb.values().nth(inp.below(n)) else {
            return;
        };
        let edge = e.seen.saturating_add(self.model.age_ms);
        let target = match inp.u8() % 3 {
            0 => edge.saturating_sub(1),
            1 => edge,
            _ => edge.saturating_add(1),
        };
        self.now = self.now.max(target);
    }

    /// `MacAddr`'s parser (the `--mac` option): accepts exactly six ':'-separated octets of
    /// one or two hex digits, and reads back what `Display` writes.
    fn mac_text(&mut self, inp: &mut Input) {
        let mut text: Vec<char> = if inp.chance(160) {
            mac(inp).to_string().chars().collect()
        } else {
            let n = inp.below(24);
            String::from_utf8_lossy(inp.bytes(n)).chars().collect()
        };
        for _ in 0..inp.below(3) {
            let at = inp.below(text.len() + 1);
            let c = inp.pick(&['0', '9', 'a', 'F', 'g', ':', '-', '+', ' ', '\u{e9}']);
            match inp.u8() % 3 {
                0 => text.insert(at, c),
                1 if at < text.len() => text[at] = c,
                _ if at < text.len() => {
                    text.remove(at);
                }
                _ => {}
            }
        }
        let text: String = text.into_iter().collect();
        let parts: Vec<&str> = text.split(':').collect();
        let valid = parts.len() == 6
            && parts
                .iter()
                .all(|p| (1..=2).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_hexdigit()));
        match text.parse::<MacAddr>() {
            Ok(m) => {
                assert!(valid, "{text:?} parsed as {m}");
                for (octet, part) in m.0.iter().zip(&parts) {
                    assert_eq!(Ok(*octet), u8::from_str_radix(part, 16), "{text:?}");
                }
                let shown = m.to_string();
                assert_eq!(shown.len(), 17, "{m:?} shown as {shown:?}");
                assert_eq!(shown.parse::<MacAddr>(), Ok(m), "{shown:?}");
            }
            Err(e) => {
                assert!(!valid, "{text:?} refused");
                assert!(!e.to_string().is_empty());
            }
        }
    }

    /// `Ipv4Prefix`'s parser (`--allow-ip`): `ADDR/LEN` with one or two digits up to 32 and
    /// no host bits, or a bare address; reads back what `Display` writes.
    fn prefix_text(&mut self, inp: &mut Input) {
        let mut text: Vec<char> = if inp.chance(160) {
            let a = addr(inp);
            let len = inp.pick(&[0u8, 8, 24, 29, 32, 33]);
            match inp.u8() % 4 {
                0 => a.to_string(),
                1 => format!("{a}/{len:02}"),
                _ => format!("{a}/{len}"),
            }
            .chars()
            .collect()
        } else {
            let n = inp.below(24);
            String::from_utf8_lossy(inp.bytes(n)).chars().collect()
        };
        for _ in 0..inp.below(3) {
            let at = inp.below(text.len() + 1);
            let c = inp.pick(&['0', '9', '.', '/', '+', ' ', '\u{e9}']);
            match inp.u8() % 2 {
                0 => text.insert(at, c),
                _ if at < text.len() => text[at] = c,
                _ => {}
            }
        }
        let text: String = text.into_iter().collect();
        let want = match text.split_once('/') {
            None => text.parse::<Ipv4Addr>().ok().map(|a| (a, 32)),
            Some((a, l)) => match (a.parse::<Ipv4Addr>(), l) {
                (Ok(a), l)
                    if (1..=2).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    l.parse::<u8>().ok().filter(|&l| l <= 32).map(|l| (a, l))
                }
                _ => None,
            },
        };
        let want = want.filter(|&(a, l)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(l)).unwrap_or(0);
            u32::from(a) & !mask == 0
        });
        match (text.parse::<Ipv4Prefix>(), want) {
            (Ok(p), Some((a, l))) => {
                assert_eq!((p.addr(), p.prefix_len()), (a, l), "{text:?}");
                assert_eq!(p.to_string().parse::<Ipv4Prefix>(), Ok(p), "{p}");
            }
            (Err(e), None) => assert!(!e.to_string().is_empty()),
            (got, want) => panic!("{text:?}: parsed as {got:?}, expected {want:?}"),
        }
    }

    /// `vswitch fdb --flush [PORT]`.
    fn flush(&mut self, inp: &mut Input) {
        let port = inp.chance(128).then(|| port(inp));
        let n = self.sw.flush_fdb(port);
        assert_eq!(n, self.model.flush(port), "flush_fdb({port:?})");
    }

    /// A process taking over: a new switch with the same ports learns the live entries this
    /// one reports, as a new model does; nothing is counted.
    fn handover(&self) {
        let entries = self.sw.fdb_entries(self.now);
        let m = &self.model;
        let next = Switch::new(Config {
            fdb_capacity: m.capacity,
            fdb_age_ms: m.age_ms,
            max_macs_per_port: m.trusted_limit,
        });
        let mut model = Model::new(m.capacity, m.age_ms, m.trusted_limit);
        for (&id, (info, policy)) in &m.ports {
            next.add_port_with_policy(id, info.clone(), policy.clone());
            model.add_port(id, info.clone(), policy.clone());
        }
        next.restore_fdb(&entries, self.now);
        for e in &entries {
            let seen = self.now.saturating_sub(e.age_ms);
            model.learn(e.mac, e.port, seen, &|v| {
                panic!("restoring evicts one of {v:?}")
            });
        }
        let now = self.now;
        assert_eq!(
            next.fdb_entries(now),
            model.entries(now),
            "restored at {now}"
        );
        assert_eq!(next.fdb_len(), model.fdb.len(), "restored table length");
        assert_eq!(next.stats(), SwitchStats::default(), "restoring counts");
    }

    /// The port directory, the policies and whom a flood reaches.
    fn directory(&self) {
        for id in PORT_IDS.map(PortId) {
            let m = self.model.ports.get(&id);
            assert_eq!(self.sw.port_info(id).as_ref(), m.map(|(i, _)| i), "{id}");
            assert_eq!(self.sw.port_policy(id).as_ref(), m.map(|(_, p)| p), "{id}");
            if let Some(limit) = self.model.mac_limit(id) {
                assert_eq!(self.sw.port_mac_limit(id), limit, "port {id}'s MAC limit");
            }
            for to in PORT_IDS.map(PortId) {
                assert_eq!(
                    self.sw.floods_to(id, to),
                    self.model.floods_to(id, to),
                    "floods_to({id}, {to})"
                );
            }
        }
    }

    fn check(&self) {
        assert_eq!(self.sw.stats(), self.model.stats, "counters");
        assert_eq!(self.sw.fdb_len(), self.model.fdb.len(), "table length");
        assert!(
            self.sw.fdb_len() <= self.model.capacity,
            "table over capacity"
        );
        assert_eq!(
            self.sw.fdb_entries(self.now),
            self.model.entries(self.now),
            "live entries at {}",
            self.now
        );
        for id in PORT_IDS.map(PortId) {
            assert_eq!(
                self.sw.port_security(id),
                self.model.security.get(&id).copied(),
                "port {id}'s security counters"
            );
            assert_eq!(
                self.sw.fdb_learned_on(id),
                self.model.learned_on(id),
                "MACs learned on port {id}"
            );
        }
    }
}

/// The `switch_frames` target.
pub fn switch_frames(data: &[u8]) {
    let mut inp = Input::new(data);
    let capacity = inp.pick(&[0, 1, 2, 3, 4, 8, 16, 64]);
    let age_ms = 1000 + u64::from(inp.u8()) * 250;
    let now = inp.pick(&[0, 1, 1 << 40, u64::MAX - (1 << 30)]);
    let trusted_limit = inp.pick(&[0, 1, 2, 4, 256]);
    let mut run = Run {
        sw: Switch::new(Config {
            fdb_capacity: capacity,
            fdb_age_ms: age_ms,
            max_macs_per_port: trusted_limit,
        }),
        model: Model::new(capacity, age_ms, trusted_limit),
        now,
    };
    for n in 0..4u8 {
        let info = vswitch_switch::PortInfo {
            mac: station(n),
            ip: Some(ip(n + 1)),
        };
        let policy = gen::policy(&mut inp);
        let id = PortId(n.into());
        run.sw
            .add_port_with_policy(id, info.clone(), policy.clone());
        run.model.add_port(id, info, policy);
    }
    for _ in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        match inp.u8() % 16 {
            0..=8 => run.frame_op(&mut inp),
            9 => run.add_port(&mut inp),
            10 => {
                let id = port(&mut inp);
                run.sw.remove_port(id);
                run.model.remove_port(id);
            }
            11 => {
                run.now = tick(&mut inp, run.now);
                let n = run.sw.expire(run.now);
                assert_eq!(n, run.model.sweep(run.now), "expire({})", run.now);
            }
            12 => run.seen(&mut inp),
            13 => run.gratuitous_arp(&mut inp),
            14 => run.jump_to_aging_edge(&mut inp),
            15 if inp.chance(48) => run.mac_text(&mut inp),
            15 if inp.chance(48) => run.prefix_text(&mut inp),
            15 if inp.chance(24) => run.flush(&mut inp),
            15 if inp.chance(24) => run.handover(),
            _ => run.directory(),
        }
        run.check();
    }
}
