//! `switch_frames`: a sequence of frames on several ports with time advancing (forward, and
//! sometimes a few milliseconds back, as workers reading the clock at different moments see
//! it), interleaved with ports plugged and unplugged, aging sweeps, fast-path reports,
//! gratuitous ARP, table flushes and hand-overs, on a switch with a small forwarding table so
//! that learning, moves, aging, a full table, ARP answers, flooding and hairpins are all
//! reached.
//!
//! Every step is checked against a reference model written from the switch's documented
//! behaviour (not from its data structures): the exact [`Action`], the ARP reply's bytes (and
//! smoltcp's reading of them), that nothing is written into the reply buffer beyond the reply
//! (or at all, without one), every counter, the forwarding table's length and live entries, the
//! port directory, the table a successor restores from the entries reported (ages included),
//! and `flow_hash` being the same both ways of a flow. Now and then a MAC address in text goes
//! through `MacAddr`'s parser (the `--mac` option), which must accept exactly the documented
//! syntax and read back what `Display` writes.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol};
use vswitch_switch::{
    flow_hash, Action, Config, DropReason, FdbEntry, MacAddr, PortId, PortInfo, Switch, SwitchStats,
};

use crate::input::Input;

/// Steps per input: bounds the time an input takes.
const MAX_OPS: usize = 96;
/// The forwarding table refreshes an entry's last-seen time at most this often (its entries'
/// ages are documented to within this).
const REFRESH_MS: u64 = 1000;
/// Port numbers the fuzzer uses: four are registered at the start.
const PORT_IDS: [u16; 8] = [0, 1, 2, 3, 4, 5, 64, u16::MAX];
const ARP_FRAME_LEN: usize = 60;
/// Fills the reply buffer, to see what the switch writes.
const SENTINEL: u8 = 0xa5;

fn station(n: u8) -> MacAddr {
    MacAddr([2, 0, 0, 0, 0, n])
}

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, n)
}

fn mac(inp: &mut Input) -> MacAddr {
    match inp.u8() % 16 {
        n @ 0..=7 => station(n),
        n @ 8..=11 => MacAddr([2, 0xaa, 0, 0, 0, n]),
        12 => MacAddr::BROADCAST,
        13 => MacAddr([1, 0, 0x5e, 0, 0, 1]),
        14 => MacAddr::ZERO,
        _ => {
            let mut m = [0u8; 6];
            let b = inp.bytes(6);
            m[..b.len()].copy_from_slice(b);
            MacAddr(m)
        }
    }
}

fn addr(inp: &mut Input) -> Ipv4Addr {
    match inp.u8() % 12 {
        n @ 0..=8 => ip(n),
        9 => ip(254),
        10 => Ipv4Addr::UNSPECIFIED,
        _ => Ipv4Addr::from(inp.u32()),
    }
}

fn port(inp: &mut Input) -> PortId {
    PortId(inp.pick(&PORT_IDS))
}

/// Advances (or, a little, rewinds) the clock.
fn tick(inp: &mut Input, now: u64) -> u64 {
    let b = inp.u8();
    let k = u64::from(b & 63);
    match b >> 6 {
        0 => now,
        1 => now.saturating_add(k),
        2 => now.saturating_add(k * 250),
        _ if b & 32 == 0 => now.saturating_add((k & 31) * 5000),
        _ => now.saturating_sub(k & 31),
    }
}

/// An Ethernet frame: mostly ARP (the switch's own protocol), else anything with chosen
/// addresses, IPv4 headers for the flow hash, or raw bytes.
fn frame(inp: &mut Input) -> Vec<u8> {
    let kind = inp.u8() % 8;
    if kind == 7 {
        let n = inp.below(80);
        return inp.bytes(n).to_vec();
    }
    let mut f = Vec::with_capacity(64);
    f.extend(mac(inp).0);
    f.extend(mac(inp).0);
    match kind {
        0..=3 => {
            f.extend(0x0806u16.to_be_bytes());
            f.extend(inp.pick(&[1u16, 1, 1, 6]).to_be_bytes());
            f.extend(inp.pick(&[0x0800u16, 0x0800, 0x0800, 0x86dd]).to_be_bytes());
            f.push(inp.pick(&[6, 6, 6, 0]));
            f.push(inp.pick(&[4, 4, 4, 16]));
            f.extend(inp.pick(&[1u16, 1, 2, 3]).to_be_bytes());
            f.extend(mac(inp).0);
            f.extend(addr(inp).octets());
            f.extend(mac(inp).0);
            f.extend(addr(inp).octets());
            f.resize(f.len() + inp.pick(&[0, 18, 0, 1]), 0);
            if inp.chance(24) {
                let n = inp.below(f.len() + 1);
                f.truncate(n);
            }
        }
        4..=5 => {
            f.extend(inp.pick(&[0x0800u16, 0x86dd, 0x8100, 0x0806]).to_be_bytes());
            let n = inp.u8().into();
            f.extend(inp.bytes(n));
        }
        _ => {
            f.extend(0x0800u16.to_be_bytes());
            let ihl = inp.pick(&[5u8, 5, 6, 15, 4, 0]);
            let proto = inp.pick(&[6u8, 17, 1, 47]);
            let frag = inp.pick(&[0u16, 0x4000, 0x2000, 0x0001]);
            f.extend([0x40 | ihl, 0, 0, 40]);
            f.extend([0, 0]);
            f.extend(frag.to_be_bytes());
            f.extend([64, proto, 0, 0]);
            f.extend(addr(inp).octets());
            f.extend(addr(inp).octets());
            f.resize(f.len() + usize::from(ihl.saturating_sub(5)) * 4, 1);
            f.extend(inp.u32().to_be_bytes());
            let n = inp.below(32);
            f.extend(inp.bytes(n));
        }
    }
    f
}

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

/// What learning a source did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Learned {
    Known,
    New,
    Moved,
    Full,
    PortGone,
}

/// Who answers ARP for an address.
enum Owner {
    Ingress,
    Station(MacAddr),
    Nobody,
}

/// The switch as its documentation describes it.
#[derive(Debug)]
struct Model {
    capacity: usize,
    age_ms: u64,
    /// MAC -> (port, last seen).
    fdb: BTreeMap<MacAddr, (PortId, u64)>,
    info: BTreeMap<PortId, PortInfo>,
    /// Which port an address is answered for: the port that claimed it last.
    by_ip: HashMap<Ipv4Addr, PortId>,
    stats: SwitchStats,
}

impl Model {
    fn live(&self, seen: u64, now: u64) -> bool {
        now.saturating_sub(seen) <= self.age_ms
    }

    fn lookup(&self, mac: MacAddr, now: u64) -> Option<PortId> {
        let &(port, seen) = self.fdb.get(&mac)?;
        self.live(seen, now).then_some(port)
    }

    /// Forgets the aged entries (counted), returns how many.
    fn sweep(&mut self, now: u64) -> usize {
        let before = self.fdb.len();
        let age = self.age_ms;
        self.fdb
            .retain(|_, &mut (_, seen)| now.saturating_sub(seen) <= age);
        let aged = before - self.fdb.len();
        self.stats.aged += aged as u64;
        aged
    }

    /// Forgets every entry, or those of `port`, aged or not (not counted as aged).
    fn flush(&mut self, port: Option<PortId>) -> usize {
        let before = self.fdb.len();
        self.fdb
            .retain(|_, &mut (p, _)| port.is_some_and(|x| x != p));
        before - self.fdb.len()
    }

    fn learn(&mut self, mac: MacAddr, port: PortId, now: u64) -> Learned {
        let age = self.age_ms;
        if let Some((p, seen)) = self.fdb.get_mut(&mac) {
            if *p == port {
                // Known here: refreshed, at most once per REFRESH_MS.
                if now.saturating_sub(*seen) >= REFRESH_MS {
                    *seen = now;
                }
                return Learned::Known;
            }
        }
        if !self.info.contains_key(&port) {
            return Learned::PortGone;
        }
        if let Some((p, seen)) = self.fdb.get_mut(&mac) {
            let was_live = now.saturating_sub(*seen) <= age;
            *seen = (*seen).max(now);
            *p = port;
            return if was_live {
                Learned::Moved
            } else {
                Learned::New
            };
        }
        if self.fdb.len() >= self.capacity {
            self.sweep(now);
        }
        if self.fdb.len() >= self.capacity {
            return Learned::Full;
        }
        self.fdb.insert(mac, (port, now));
        Learned::New
    }

    fn arp_owner(&self, ingress: PortId, tpa: Ipv4Addr) -> Owner {
        if self.info.get(&ingress).and_then(|i| i.ip) == Some(tpa) {
            return Owner::Ingress;
        }
        match self.by_ip.get(&tpa) {
            Some(&p) if p == ingress => Owner::Ingress,
            Some(p) => self
                .info
                .get(p)
                .map_or(Owner::Nobody, |i| Owner::Station(i.mac)),
            None => Owner::Nobody,
        }
    }

    fn forget_ip(&mut self, id: PortId) {
        if let Some(ip) = self.info.get(&id).and_then(|i| i.ip) {
            if self.by_ip.get(&ip) == Some(&id) {
                self.by_ip.remove(&ip);
            }
        }
    }

    fn add_port(&mut self, id: PortId, info: PortInfo) {
        self.forget_ip(id);
        if let Some(ip) = info.ip {
            self.by_ip.insert(ip, id);
        }
        self.info.insert(id, info);
    }

    fn remove_port(&mut self, id: PortId) {
        self.forget_ip(id);
        self.info.remove(&id);
        self.fdb.retain(|_, &mut (p, _)| p != id);
    }

    fn seen(&mut self, mac: MacAddr, port: PortId, now: u64) {
        if let Some((p, seen)) = self.fdb.get_mut(&mac) {
            if *p == port {
                *seen = (*seen).max(now);
            }
            return;
        }
        if self.learn(mac, port, now) == Learned::New {
            self.stats.learned += 1;
        }
    }

    fn malformed(&mut self) -> (Action, Option<[u8; ARP_FRAME_LEN]>) {
        self.stats.malformed += 1;
        (Action::Drop(DropReason::Malformed), None)
    }

    /// The action for a frame, and the reply's bytes if it is answered.
    fn process(
        &mut self,
        ingress: PortId,
        f: &[u8],
        outgoing: bool,
        now: u64,
        buf_len: usize,
    ) -> (Action, Option<[u8; ARP_FRAME_LEN]>) {
        self.stats.frames += 1;
        if outgoing {
            self.stats.outgoing += 1;
            return (Action::Drop(DropReason::Outgoing), None);
        }
        if !self.info.contains_key(&ingress) {
            return (Action::Drop(DropReason::UnknownPort), None);
        }
        if f.len() < 14 {
            return self.malformed();
        }
        let mac_at =
            |at: usize| MacAddr([f[at], f[at + 1], f[at + 2], f[at + 3], f[at + 4], f[at + 5]]);
        let (dst, src) = (mac_at(0), mac_at(6));
        if src.0[0] & 1 != 0 || src == MacAddr::ZERO {
            return self.malformed();
        }
        let mut request = None;
        if f[12..14] == [0x08, 0x06] {
            let a = &f[14..];
            if a.len() < 28 {
                return self.malformed();
            }
            if a[..8] == [0, 1, 8, 0, 6, 4, 0, 1] {
                let sha = mac_at(14 + 8);
                let spa = Ipv4Addr::new(a[14], a[15], a[16], a[17]);
                let tpa = Ipv4Addr::new(a[24], a[25], a[26], a[27]);
                request = Some((sha, spa, tpa));
            }
        }
        match self.learn(src, ingress, now) {
            Learned::New => self.stats.learned += 1,
            Learned::Moved => self.stats.moved += 1,
            Learned::Full => self.stats.fdb_full += 1,
            Learned::Known | Learned::PortGone => {}
        }
        let to = if dst.0[0] & 1 != 0 {
            None
        } else {
            self.lookup(dst, now)
        };
        if let Some((sha, spa, tpa)) = request {
            match self.arp_owner(ingress, tpa) {
                Owner::Ingress => return (Action::Drop(DropReason::ArpForSelf), None),
                Owner::Station(mac) if buf_len >= ARP_FRAME_LEN => {
                    self.stats.arp_replies += 1;
                    let reply = arp_reply(src, mac, tpa, sha, spa);
                    return (Action::Reply { len: ARP_FRAME_LEN }, Some(reply));
                }
                Owner::Station(_) | Owner::Nobody => {}
            }
        }
        match to {
            Some(p) if p == ingress => {
                self.stats.hairpin += 1;
                (Action::Drop(DropReason::Hairpin), None)
            }
            Some(p) => (Action::Forward(p), None),
            None => {
                self.stats.flooded += 1;
                (Action::Flood, None)
            }
        }
    }

    fn entries(&self, now: u64) -> Vec<FdbEntry> {
        self.fdb
            .iter()
            .filter(|(_, &(_, seen))| self.live(seen, now))
            .map(|(&mac, &(port, seen))| FdbEntry {
                mac,
                port,
                age_ms: now.saturating_sub(seen),
            })
            .collect()
    }
}

/// An ARP frame, padded to 60 bytes.
fn arp_frame(
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

/// The answer of station (`mac`, `tpa`) to a request from Ethernet source `req_src`.
fn arp_reply(
    req_src: MacAddr,
    mac: MacAddr,
    tpa: Ipv4Addr,
    sha: MacAddr,
    spa: Ipv4Addr,
) -> [u8; ARP_FRAME_LEN] {
    arp_frame(req_src, 2, (mac, tpa), (sha, spa))
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

impl Run {
    fn frame_op(&mut self, inp: &mut Input) {
        let ingress = port(inp);
        let flags = inp.u8();
        let outgoing = flags & 15 == 0;
        let buf_len = [60, 60, 64, 1514, 59, 0, 42, 61][usize::from(flags >> 4) % 8];
        self.now = tick(inp, self.now);
        let f = frame(inp);
        let mut buf = vec![SENTINEL; buf_len];
        let action = self.sw.process(ingress, &f, outgoing, self.now, &mut buf);
        let (want, reply) = self.model.process(ingress, &f, outgoing, self.now, buf_len);
        assert_eq!(
            action, want,
            "process(port {ingress}, outgoing {outgoing}, now {}, buf {buf_len}) of {f:02x?}",
            self.now
        );
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
        let info = PortInfo {
            mac: mac(inp),
            ip: (!inp.chance(40)).then(|| addr(inp)),
        };
        self.sw.add_port(id, info.clone());
        self.model.add_port(id, info);
    }

    fn gratuitous_arp(&mut self, inp: &mut Input) {
        let id = port(inp);
        let len = inp.pick(&[60, 64, 59, 0]);
        let mut buf = vec![SENTINEL; len];
        let got = self.sw.gratuitous_arp(id, &mut buf);
        let want = self
            .model
            .info
            .get(&id)
            .and_then(|i| Some((i.mac, i.ip?)))
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
        let Some((_, &(_, seen))) = self.model.fdb.iter().nth(inp.below(n)) else {
            return;
        };
        let edge = seen.saturating_add(self.model.age_ms);
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

    /// `vswitch fdb --flush [PORT]`.
    fn flush(&mut self, inp: &mut Input) {
        let port = inp.chance(128).then(|| port(inp));
        let n = self.sw.flush_fdb(port);
        assert_eq!(n, self.model.flush(port), "flush_fdb({port:?})");
    }

    /// A process taking over: a new switch with the same ports learns the live entries this
    /// one reports, and reports them back the same, ages included.
    fn handover(&self) {
        let entries = self.sw.fdb_entries(self.now);
        let next = Switch::new(Config {
            fdb_capacity: self.model.capacity,
            fdb_age_ms: self.model.age_ms,
        });
        for (&id, info) in &self.model.info {
            next.add_port(id, info.clone());
        }
        next.restore_fdb(&entries, self.now);
        assert_eq!(
            next.fdb_entries(self.now),
            entries,
            "restored at {}",
            self.now
        );
        assert_eq!(next.fdb_len(), entries.len(), "restored table length");
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
    }
}

/// The `switch_frames` target.
pub fn switch_frames(data: &[u8]) {
    let mut inp = Input::new(data);
    let capacity = inp.pick(&[0, 1, 2, 3, 4, 8, 16, 64]);
    let age_ms = 1000 + u64::from(inp.u8()) * 250;
    let now = inp.pick(&[0, 1, 1 << 40, u64::MAX - (1 << 30)]);
    let mut run = Run {
        sw: Switch::new(Config {
            fdb_capacity: capacity,
            fdb_age_ms: age_ms,
        }),
        model: Model {
            capacity,
            age_ms,
            fdb: BTreeMap::new(),
            info: BTreeMap::new(),
            by_ip: HashMap::new(),
            stats: SwitchStats::default(),
        },
        now,
    };
    for n in 0..4u8 {
        let info = PortInfo {
            mac: station(n),
            ip: Some(ip(n + 1)),
        };
        run.sw.add_port(PortId(n.into()), info.clone());
        run.model.add_port(PortId(n.into()), info);
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
            12 => {
                let (mac, id) = (mac(&mut inp), port(&mut inp));
                run.now = tick(&mut inp, run.now);
                run.sw.seen(mac, id, run.now);
                run.model.seen(mac, id, run.now);
            }
            13 => run.gratuitous_arp(&mut inp),
            14 => run.jump_to_aging_edge(&mut inp),
            15 if inp.chance(64) => run.mac_text(&mut inp),
            15 if inp.chance(16) => run.flush(&mut inp),
            15 if inp.chance(16) => run.handover(),
            _ => {
                for id in PORT_IDS.map(PortId) {
                    assert_eq!(run.sw.port_info(id).as_ref(), run.model.info.get(&id));
                }
            }
        }
        run.check();
    }
}
