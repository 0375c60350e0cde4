//! The switch as its documentation describes it (`Switch`, `PortPolicy`, the forwarding table's
//! module), written without its data structures: plain maps, counts recomputed from them.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use vswitch_switch::{
    Action, DropReason, FdbEntry, MacAddr, PortId, PortInfo, PortPolicy, PortSecurityStats,
    SpoofKind, SwitchStats,
};

use super::{arp_frame, ARP_FRAME_LEN};

/// The forwarding table refreshes an entry's last-seen time at most this often (its entries'
/// ages are documented to within this).
pub const REFRESH_MS: u64 = 1000;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;

/// What learning a source did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    Known,
    New,
    NewEvicting,
    Moved,
    Full,
    PortGone,
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub port: PortId,
    pub seen: u64,
    /// Learned as its port's station's own MAC: not counted against the port's limit, never
    /// evicted, never moved by another port's frames while it is that station's.
    pub pinned: bool,
}

/// An ARP packet for IPv4 over Ethernet.
#[derive(Debug, Clone, Copy)]
struct Arp {
    op: u16,
    sha: MacAddr,
    spa: Ipv4Addr,
    tpa: Ipv4Addr,
}

/// Why a checked port's frame is refused.
enum Refusal {
    Spoofed(SpoofKind),
    Truncated,
}

/// Who answers ARP for an address.
enum Owner {
    Ingress,
    Station(MacAddr, PortId),
    Nobody,
}

/// Picks the entry evicted among those the documentation allows (the oldest of a port that
/// holds the most: ties are the table's to break), by looking at what the switch did.
pub type Oracle<'a> = &'a dyn Fn(&[MacAddr]) -> MacAddr;

#[derive(Debug)]
pub struct Model {
    pub capacity: usize,
    pub age_ms: u64,
    /// `Config::max_macs_per_port`: a trusted port's limit unless its policy sets one.
    pub trusted_limit: u32,
    pub fdb: BTreeMap<MacAddr, Entry>,
    pub ports: BTreeMap<PortId, (PortInfo, PortPolicy)>,
    /// Whose station an address or a MAC is: the port that claimed it last.
    by_ip: HashMap<Ipv4Addr, PortId>,
    by_mac: HashMap<MacAddr, PortId>,
    /// Port-security counters of the registered ports.
    pub security: BTreeMap<PortId, PortSecurityStats>,
    pub stats: SwitchStats,
}

fn arp(payload: &[u8]) -> Result<Option<Arp>, ()> {
    let a = payload.get(..28).ok_or(())?;
    if a[..6] != [0, 1, 8, 0, 6, 4] {
        return Ok(None);
    }
    let mac = |at: usize| MacAddr([a[at], a[at + 1], a[at + 2], a[at + 3], a[at + 4], a[at + 5]]);
    let ip = |at: usize| Ipv4Addr::new(a[at], a[at + 1], a[at + 2], a[at + 3]);
    Ok(Some(Arp {
        op: u16::from_be_bytes([a[6], a[7]]),
        sha: mac(8),
        spa: ip(14),
        tpa: ip(24),
    }))
}

impl Model {
    pub fn new(capacity: usize, age_ms: u64, trusted_limit: u32) -> Model {
        Model {
            capacity,
            age_ms,
            trusted_limit,
            fdb: BTreeMap::new(),
            ports: BTreeMap::new(),
            by_ip: HashMap::new(),
            by_mac: HashMap::new(),
            security: BTreeMap::new(),
            stats: SwitchStats::default(),
        }
    }

    fn live(&self, seen: u64, now: u64) -> bool {
        now.saturating_sub(seen) <= self.age_ms
    }

    fn lookup(&self, mac: MacAddr, now: u64) -> Option<PortId> {
        let e = self.fdb.get(&mac)?;
        self.live(e.seen, now).then_some(e.port)
    }

    fn policy(&self, id: PortId) -> Option<&PortPolicy> {
        self.ports.get(&id).map(|(_, p)| p)
    }

    fn is_station(&self, id: PortId, mac: MacAddr) -> bool {
        self.ports.get(&id).is_some_and(|(i, _)| i.mac == mac)
    }

    pub fn station_port(&self, mac: MacAddr) -> Option<PortId> {
        self.by_mac.get(&mac).copied()
    }

    /// Most MACs the table learns on a registered port besides its station's own.
    pub fn mac_limit(&self, id: PortId) -> Option<u32> {
        let p = self.policy(id)?;
        Some(p.max_macs.unwrap_or(if p.trusted {
            self.trusted_limit
        } else {
            p.allow_macs.len() as u32
        }))
    }

    /// MACs learned on `id` besides its station's (aged ones not yet expired included).
    pub fn learned_on(&self, id: PortId) -> usize {
        (self.fdb.values())
            .filter(|e| e.port == id && !e.pinned)
            .count()
    }

    fn isolation_active(&self) -> bool {
        self.ports.values().any(|(_, p)| p.isolated)
    }

    /// Whether frames may cross between two ports (`isolated`, `uplink` of registered ones).
    fn may_talk(&self, a: PortId, b: PortId) -> bool {
        let flags = |id| {
            self.policy(id)
                .map_or((false, false), |p| (p.uplink, p.isolated))
        };
        let ((a_up, a_iso), (b_up, b_iso)) = (flags(a), flags(b));
        a_up || b_up || !(a_iso || b_iso)
    }

    fn may_reach(&self, ingress: PortId, egress: PortId) -> bool {
        !self.isolation_active() || self.may_talk(ingress, egress)
    }

    /// `Switch::floods_to`.
    pub fn floods_to(&self, ingress: PortId, egress: PortId) -> bool {
        if ingress == egress {
            return false;
        }
        if !self.isolation_active() {
            return true;
        }
        self.ports.contains_key(&ingress)
            && self.ports.contains_key(&egress)
            && self.may_talk(ingress, egress)
    }

    /// Forgets the aged entries (counted), returns how many.
    pub fn sweep(&mut self, now: u64) -> usize {
        let before = self.fdb.len();
        let age = self.age_ms;
        self.fdb.retain(|_, e| now.saturating_sub(e.seen) <= age);
        let aged = before - self.fdb.len();
        self.stats.aged += aged as u64;
        aged
    }

    /// Forgets every entry, or those of `port`, aged or not (not counted as aged).
    pub fn flush(&mut self, port: Option<PortId>) -> usize {
        let before = self.fdb.len();
        self.fdb.retain(|_, e| port.is_some_and(|x| x != e.port));
        before - self.fdb.len()
    }

    /// Makes room for a station's own MAC in a full table: the oldest entry of the port that
    /// holds the most learned (not pinned) MACs goes. Whether there was one.
    fn evict(&mut self, which: Oracle) -> bool {
        let mut counts: BTreeMap<PortId, usize> = BTreeMap::new();
        for e in self.fdb.values().filter(|e| !e.pinned) {
            *counts.entry(e.port).or_default() += 1;
        }
        let Some(&most) = counts.values().max() else {
            return false;
        };
        let mut victims = Vec::new();
        for (&port, _) in counts.iter().filter(|(_, &n)| n == most) {
            let of_port = || (self.fdb.iter()).filter(move |(_, e)| e.port == port && !e.pinned);
            let oldest = of_port().map(|(_, e)| e.seen).min().unwrap_or(0);
            victims.extend(of_port().filter(|(_, e)| e.seen == oldest).map(|(&m, _)| m));
        }
        let victim = match victims.as_slice() {
            [one] => *one,
            _ => which(&victims),
        };
        assert!(
            victims.contains(&victim),
            "evicted {victim}, not one of {victims:?}"
        );
        self.fdb.remove(&victim);
        true
    }

    /// `Fdb::learn_and_lookup`'s learning: `mac` seen as a source on `port`.
    pub fn learn(&mut self, mac: MacAddr, port: PortId, now: u64, which: Oracle) -> Learned {
        if let Some(e) = self.fdb.get_mut(&mac) {
            if e.port == port {
                // Known here: refreshed, at most once per REFRESH_MS.
                if now.saturating_sub(e.seen) >= REFRESH_MS {
                    e.seen = now;
                }
                return Learned::Known;
            }
        }
        if !self.ports.contains_key(&port) {
            return Learned::PortGone;
        }
        let pinned = self.is_station(port, mac);
        let limit = self.mac_limit(port).unwrap_or(0) as usize;
        let room = pinned || self.learned_on(port) < limit;
        if let Some(&e) = self.fdb.get(&mac) {
            // A station's MAC stays on its port; another port takes a learned one within its
            // limit.
            if (e.pinned && self.is_station(e.port, mac)) || !room {
                return Learned::Refused;
            }
            let was_live = self.live(e.seen, now);
            self.fdb.insert(
                mac,
                Entry {
                    port,
                    seen: e.seen.max(now),
                    pinned,
                },
            );
            return if was_live {
                Learned::Moved
            } else {
                Learned::New
            };
        }
        if !room || (!pinned && self.station_port(mac).is_some_and(|p| p != port)) {
            return Learned::Refused;
        }
        if self.fdb.len() >= self.capacity {
            self.sweep(now);
        }
        let mut evicted = false;
        if self.fdb.len() >= self.capacity {
            // Only a station's own MAC makes room.
            if !(pinned && self.capacity > 0 && self.evict(which)) {
                return Learned::Full;
            }
            evicted = true;
        }
        self.fdb.insert(
            mac,
            Entry {
                port,
                seen: now,
                pinned,
            },
        );
        if evicted {
            Learned::NewEvicting
        } else {
            Learned::New
        }
    }

    fn forget(&mut self, id: PortId) {
        if let Some((info, _)) = self.ports.get(&id) {
            if let Some(ip) = info.ip {
                if self.by_ip.get(&ip) == Some(&id) {
                    self.by_ip.remove(&ip);
                }
            }
            if self.by_mac.get(&info.mac) == Some(&id) {
                self.by_mac.remove(&info.mac);
            }
        }
    }

    pub fn add_port(&mut self, id: PortId, info: PortInfo, policy: PortPolicy) {
        // Counters start again with a port that was not registered.
        self.security.entry(id).or_default();
        self.forget(id);
        if let Some(ip) = info.ip {
            self.by_ip.insert(ip, id);
        }
        self.by_mac.insert(info.mac, id);
        self.ports.insert(id, (info, policy));
    }

    pub fn remove_port(&mut self, id: PortId) {
        self.forget(id);
        self.ports.remove(&id);
        self.security.remove(&id);
        self.fdb.retain(|_, e| e.port != id);
    }

    /// `Switch::seen`: the fast path forwarded frames from `mac` on `port`.
    pub fn seen(&mut self, mac: MacAddr, port: PortId, now: u64, which: Oracle) {
        if let Some(e) = self.fdb.get_mut(&mac) {
            if e.port == port {
                e.seen = e.seen.max(now);
            }
            return;
        }
        match self.learn(mac, port, now, which) {
            Learned::New => self.stats.learned += 1,
            Learned::NewEvicting => {
                self.stats.learned += 1;
                self.stats.evicted += 1;
            }
            _ => {}
        }
    }

    fn malformed(&mut self) -> Result<(), DropReason> {
        self.stats.malformed += 1;
        Err(DropReason::Malformed)
    }

    fn isolated(&mut self, ingress: PortId) -> DropReason {
        self.stats.isolated += 1;
        if let Some(s) = self.security.get_mut(&ingress) {
            s.isolated += 1;
        }
        DropReason::Isolated
    }

    /// Anti-spoofing: what a checked port may send.
    fn check(
        &self,
        ingress: PortId,
        src: MacAddr,
        ethertype: u16,
        payload: &[u8],
        arp: Option<Arp>,
    ) -> Result<(), Refusal> {
        let (info, p) = &self.ports[&ingress];
        let mac_ok = |m: MacAddr| m == info.mac || p.allow_macs.contains(&m);
        let ip_ok =
            |ip: Ipv4Addr| Some(ip) == info.ip || p.allow_ips.iter().any(|x| x.contains(ip));
        if !mac_ok(src) {
            return Err(Refusal::Spoofed(SpoofKind::Mac));
        }
        match ethertype {
            ETHERTYPE_IPV4 => {
                let src_ip = payload.get(12..16).ok_or(Refusal::Truncated)?;
                if !ip_ok(Ipv4Addr::new(src_ip[0], src_ip[1], src_ip[2], src_ip[3])) {
                    return Err(Refusal::Spoofed(SpoofKind::Ip));
                }
            }
            ETHERTYPE_ARP => {
                // RFC 5227: a probe says 0.0.0.0.
                let ok = arp.is_some_and(|a| {
                    let probe = a.op == 1 && a.spa.is_unspecified();
                    mac_ok(a.sha) && (probe || ip_ok(a.spa))
                });
                if !ok {
                    return Err(Refusal::Spoofed(SpoofKind::Arp));
                }
            }
            t if p.allow_ethertypes.contains(&t) => {}
            _ => return Err(Refusal::Spoofed(SpoofKind::EtherType)),
        }
        Ok(())
    }

    /// Validation and port security, as `Switch::process` and `Switch::admit` share them: the
    /// frame's ARP packet if it passes.
    fn admit_parts(&mut self, ingress: PortId, f: &[u8]) -> Result<Option<Arp>, DropReason> {
        if !self.ports.contains_key(&ingress) {
            return Err(DropReason::UnknownPort);
        }
        if f.len() < 14 {
            return self.malformed().map(|_| None);
        }
        let src = MacAddr([f[6], f[7], f[8], f[9], f[10], f[11]]);
        if src.0[0] & 1 != 0 || src == MacAddr::ZERO {
            return self.malformed().map(|_| None);
        }
        let ethertype = u16::from_be_bytes([f[12], f[13]]);
        let payload = &f[14..];
        let arp = match ethertype {
            ETHERTYPE_ARP => match arp(payload) {
                Ok(a) => a,
                Err(()) => return self.malformed().map(|_| None),
            },
            _ => None,
        };
        if self.ports[&ingress].1.trusted {
            return Ok(arp);
        }
        match self.check(ingress, src, ethertype, payload, arp) {
            Ok(()) => Ok(arp),
            Err(Refusal::Truncated) => self.malformed().map(|_| None),
            Err(Refusal::Spoofed(kind)) => {
                self.stats.spoofed += 1;
                if let Some(s) = self.security.get_mut(&ingress) {
                    s.spoofed[SpoofKind::ALL.iter().position(|&k| k == kind).unwrap_or(0)] += 1;
                }
                Err(DropReason::Spoofed(kind))
            }
        }
    }

    /// `Switch::admit`.
    pub fn admit(&mut self, ingress: PortId, f: &[u8]) -> Result<(), DropReason> {
        self.admit_parts(ingress, f).map(|_| ())
    }

    fn arp_owner(&self, ingress: PortId, tpa: Ipv4Addr) -> Owner {
        if self.ports.get(&ingress).and_then(|(i, _)| i.ip) == Some(tpa) {
            return Owner::Ingress;
        }
        match self.by_ip.get(&tpa) {
            Some(&p) if p == ingress => Owner::Ingress,
            Some(&p) => self
                .ports
                .get(&p)
                .map_or(Owner::Nobody, |(i, _)| Owner::Station(i.mac, p)),
            None => Owner::Nobody,
        }
    }

    /// An IPv4 packet from `ingress` to the station of a port it may not reach.
    fn crosses_isolation(&self, ingress: PortId, packet: &[u8]) -> bool {
        let Some(&[a, b, c, d]) = packet.get(16..20) else {
            return false;
        };
        match self.by_ip.get(&Ipv4Addr::new(a, b, c, d)) {
            Some(&owner) if owner != ingress => !self.may_talk(ingress, owner),
            _ => false,
        }
    }

    /// `Switch::process`: the action for a frame, and the reply's bytes if it is answered.
    pub fn process(
        &mut self,
        ingress: PortId,
        f: &[u8],
        outgoing: bool,
        now: u64,
        buf_len: usize,
        which: Oracle,
    ) -> (Action, Option<[u8; ARP_FRAME_LEN]>) {
        self.stats.frames += 1;
        if outgoing {
            self.stats.outgoing += 1;
            return (Action::Drop(DropReason::Outgoing), None);
        }
        let arp = match self.admit_parts(ingress, f) {
            Ok(arp) => arp,
            Err(why) => return (Action::Drop(why), None),
        };
        let dst = MacAddr([f[0], f[1], f[2], f[3], f[4], f[5]]);
        let src = MacAddr([f[6], f[7], f[8], f[9], f[10], f[11]]);
        let unicast_dst = (dst.0[0] & 1 == 0).then_some(dst);
        match self.learn(src, ingress, now, which) {
            Learned::New => self.stats.learned += 1,
            Learned::NewEvicting => {
                self.stats.learned += 1;
                self.stats.evicted += 1;
            }
            Learned::Moved => self.stats.moved += 1,
            Learned::Full => self.stats.fdb_full += 1,
            Learned::Refused => {
                self.stats.learn_refused += 1;
                if let Some(s) = self.security.get_mut(&ingress) {
                    s.learn_refused += 1;
                }
            }
            Learned::Known | Learned::PortGone => {}
        }
        let mut to = unicast_dst.and_then(|d| self.lookup(d, now));
        if let Some(a) = arp.filter(|a| a.op == 1) {
            match self.arp_owner(ingress, a.tpa) {
                Owner::Ingress => return (Action::Drop(DropReason::ArpForSelf), None),
                Owner::Station(_, p) if !self.may_reach(ingress, p) => {
                    return (Action::Drop(self.isolated(ingress)), None);
                }
                Owner::Station(mac, _) if buf_len >= ARP_FRAME_LEN => {
                    self.stats.arp_replies += 1;
                    let reply = arp_frame(src, 2, (mac, a.tpa), (a.sha, a.spa));
                    return (Action::Reply { len: ARP_FRAME_LEN }, Some(reply));
                }
                Owner::Station(..) | Owner::Nobody => {}
            }
        }
        // A station not learned (yet, or any more) is still known by its port.
        to = to.or_else(|| self.station_port(unicast_dst?));
        let uplink = |p: PortId| self.policy(p).is_some_and(|p| p.uplink);
        if u16::from_be_bytes([f[12], f[13]]) == ETHERTYPE_IPV4
            && self.isolation_active()
            && to.is_none_or(uplink)
            && self.crosses_isolation(ingress, &f[14..])
        {
            return (Action::Drop(self.isolated(ingress)), None);
        }
        match to {
            Some(p) if p == ingress => {
                self.stats.hairpin += 1;
                (Action::Drop(DropReason::Hairpin), None)
            }
            Some(p) if !self.may_reach(ingress, p) => (Action::Drop(self.isolated(ingress)), None),
            Some(p) => (Action::Forward(p), None),
            None => {
                self.stats.flooded += 1;
                (Action::Flood, None)
            }
        }
    }

    pub fn entries(&self, now: u64) -> Vec<FdbEntry> {
        (self.fdb.iter())
            .filter(|(_, e)| self.live(e.seen, now))
            .map(|(&mac, e)| FdbEntry {
                mac,
                port: e.port,
                age_ms: now.saturating_sub(e.seen),
            })
            .collect()
    }
}
