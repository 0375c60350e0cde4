//! The port directory: which ports exist, which station (MAC, IPv4) sits behind each and what
//! the port may send (its [`PortPolicy`]). Every frame asks "is the ingress port registered,
//! and what may it send?": both answers are one word per port (the station's MAC and the
//! policy's flags) and its address, read without a lock. The port table is allocated in
//! chunks of [`CHUNK`] ports as ids are first used. The full stations and policies (for ARP,
//! `allow_*` lists and the control plane) sit behind locks that only ARP requests, ports with
//! `allow_*` lists and port changes take.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{OnceLock, PoisonError, RwLock};

use crate::brlock::BrLock;
use crate::frame::{Arp, Ethernet, ETHERTYPE_ARP};
use crate::mac::MacAddr;
use crate::policy::{
    self, PortPolicy, PortSecurityStats, Refusal, Sent, SpoofKind, Station, Widened,
};

/// A switch port, numbered by the caller.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PortId(pub u16);

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The station behind a port: a container's interface, or the host (gateway) behind the TAP.
#[derive(Clone, Debug, PartialEq)]
pub struct PortInfo {
    pub mac: MacAddr,
    pub ip: Option<Ipv4Addr>,
}

/// Who answers an ARP request for some IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArpTarget {
    /// The address belongs to the ingress port's own station.
    IngressItself,
    /// The address belongs to the station on another port.
    Station(MacAddr, PortId),
    /// No port has the address.
    Unknown,
}

/// Ports per chunk of the port table.
const CHUNK: usize = 1024;
const CHUNKS: usize = (u16::MAX as usize + 1) / CHUNK;

/// A port's word: the station's MAC in the low 48 bits, flags above.
const MAC_BITS: u64 = (1 << 48) - 1;
/// The port is registered.
const LIVE: u64 = 1 << 48;
/// Its frames are checked (not trusted).
const CHECKED: u64 = 1 << 49;
/// Its policy has `allow_*` lists, read from `Ports::widened`.
const WIDENED: u64 = 1 << 50;
const ISOLATED: u64 = 1 << 51;
const UPLINK: u64 = 1 << 52;
/// The station has an IPv4 address (in `Slot::ip`).
const HAS_IP: u64 = 1 << 53;

/// A snapshot of a port's word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PortWord(u64);

impl PortWord {
    #[inline]
    pub fn is_live(self) -> bool {
        self.0 & LIVE != 0
    }
    #[inline]
    fn mac(self) -> MacAddr {
        MacAddr::from_u64(self.0 & MAC_BITS)
    }
    #[inline]
    fn isolated(self) -> bool {
        self.0 & ISOLATED != 0
    }
    #[inline]
    pub fn uplink(self) -> bool {
        self.0 & UPLINK != 0
    }
}

/// A port's word, read once, and its slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PortRef<'a> {
    pub word: PortWord,
    slot: Option<&'a Slot>,
}

impl PortWord {
    /// Its frames are checked (port security).
    #[inline]
    pub fn checked(self) -> bool {
        self.0 & CHECKED != 0
    }
}

/// Whether frames may cross between two registered ports: always through an uplink, else
/// only when neither is isolated.
#[inline]
pub(crate) fn may_talk(a: PortWord, b: PortWord) -> bool {
    a.uplink() || b.uplink() || !(a.isolated() || b.isolated())
}

/// One port's lock-free state and counters: one cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Slot {
    word: AtomicU64,
    /// The station's IPv4 address, when `HAS_IP`.
    ip: AtomicU32,
    /// Most MACs the forwarding table learns on the port besides the station's own.
    max_macs: AtomicU32,
    spoofed: [AtomicU64; 4],
    isolated: AtomicU64,
    learn_refused: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Ports {
    chunks: [OnceLock<Box<[Slot; CHUNK]>>; CHUNKS],
    /// Registered ports that are isolated: while there are none, nothing needs checking.
    isolated: AtomicUsize,
    /// The policies with `allow_*` lists, by port: read by every frame of such a port, so a
    /// lock whose readers share no cache line.
    widened: BrLock<HashMap<PortId, PortPolicy>>,
    /// Whose station each IPv4 address is: read by a container's IPv4 frames while some port
    /// is isolated (see `Switch::process`), so the same kind of lock.
    owners: BrLock<HashMap<u32, PortId>>,
    dir: RwLock<Directory>,
}

#[derive(Debug, Default)]
struct Directory {
    info: HashMap<PortId, (PortInfo, PortPolicy)>,
    by_ip: HashMap<Ipv4Addr, PortId>,
    by_mac: HashMap<MacAddr, PortId>,
}

impl Directory {
    fn forget(&mut self, id: PortId) {
        if let Some((info, _)) = self.info.get(&id) {
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
}

#[inline]
fn split(id: PortId) -> (usize, usize) {
    (usize::from(id.0) / CHUNK, usize::from(id.0) % CHUNK)
}

impl Ports {
    pub fn new() -> Ports {
        Ports {
            chunks: std::array::from_fn(|_| OnceLock::new()),
            isolated: AtomicUsize::new(0),
            widened: BrLock::new(HashMap::new()),
            owners: BrLock::new(HashMap::new()),
            dir: RwLock::default(),
        }
    }

    #[inline]
    fn slot(&self, id: PortId) -> Option<&Slot> {
        let (chunk, i) = split(id);
        Some(&self.chunks.get(chunk)?.get()?[i])
    }

    fn slot_or_new(&self, id: PortId) -> &Slot {
        let (chunk, i) = split(id);
        let chunk = self.chunks[chunk].get_or_init(|| {
            let slots: Box<[Slot]> = (0..CHUNK).map(|_| Slot::default()).collect();
            slots.try_into().expect("CHUNK slots")
        });
        &chunk[i]
    }

    /// The port's word (not live if the port is not registered).
    #[inline]
    pub fn word(&self, id: PortId) -> PortWord {
        self.port(id).word
    }

    /// The port's word, and where the rest of its state is, for `check`.
    #[inline]
    pub fn port(&self, id: PortId) -> PortRef<'_> {
        let slot = self.slot(id);
        let word = PortWord(slot.map_or(0, |s| s.word.load(Ordering::Acquire)));
        PortRef { word, slot }
    }

    #[inline]
    pub fn is_live(&self, id: PortId) -> bool {
        self.word(id).is_live()
    }

    /// The port whose station has IPv4 address `ip` (as a number), if any.
    pub fn owner_of(&self, ip: u32) -> Option<PortId> {
        self.owners.read().get(&ip).copied()
    }

    /// Whether any registered port is isolated.
    #[inline]
    pub fn isolation_active(&self) -> bool {
        self.isolated.load(Ordering::Relaxed) != 0
    }

    /// Registers or replaces port `id`. If two ports claim one IPv4 address (or MAC), the
    /// later wins. A port that was not registered starts with zeroed counters.
    /// `trusted_limit`: the learned-MAC limit of a trusted port whose policy sets none.
    pub fn add(&self, id: PortId, info: PortInfo, policy: PortPolicy, trusted_limit: u32) {
        let mut dir = self.dir.write().unwrap_or_else(PoisonError::into_inner);
        let slot = self.slot_or_new(id);
        let old = PortWord(slot.word.load(Ordering::Relaxed));
        if !old.is_live() {
            for c in slot
                .spoofed
                .iter()
                .chain([&slot.isolated, &slot.learn_refused])
            {
                c.store(0, Ordering::Relaxed);
            }
        }
        let mut word = info.mac.as_u64() | LIVE;
        for (set, flag) in [
            (!policy.trusted, CHECKED),
            (policy.is_extended(), WIDENED),
            (policy.isolated, ISOLATED),
            (policy.uplink, UPLINK),
            (info.ip.is_some(), HAS_IP),
        ] {
            if set {
                word |= flag;
            }
        }
        {
            let mut widened = self.widened.write();
            if policy.is_extended() {
                widened.insert(id, policy.clone());
            } else {
                widened.remove(&id);
            }
        }
        slot.ip.store(
            info.ip.map_or(0, |ip| u32::from_ne_bytes(ip.octets())),
            Ordering::Relaxed,
        );
        slot.max_macs
            .store(policy.mac_limit(trusted_limit), Ordering::Relaxed);
        // After everything it stands for: a reader that sees the new word sees the rest.
        slot.word.store(word, Ordering::Release);
        match (old.is_live() && old.isolated(), policy.isolated) {
            (false, true) => {
                self.isolated.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.isolated.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        dir.forget(id);
        {
            let mut owners = self.owners.write();
            owners.retain(|_, owner| *owner != id);
            if let Some(ip) = info.ip {
                owners.insert(u32::from(ip), id);
            }
        }
        if let Some(ip) = info.ip {
            dir.by_ip.insert(ip, id);
        }
        dir.by_mac.insert(info.mac, id);
        dir.info.insert(id, (info, policy));
    }

    pub fn remove(&self, id: PortId) {
        let mut dir = self.dir.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = self.slot(id) {
            let old = PortWord(slot.word.swap(0, Ordering::AcqRel));
            if old.is_live() && old.isolated() {
                self.isolated.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.widened.write().remove(&id);
        self.owners.write().retain(|_, owner| *owner != id);
        dir.forget(id);
        dir.info.remove(&id);
    }

    pub fn info(&self, id: PortId) -> Option<PortInfo> {
        let dir = self.dir.read().unwrap_or_else(PoisonError::into_inner);
        dir.info.get(&id).map(|(info, _)| info.clone())
    }

    pub fn policy(&self, id: PortId) -> Option<PortPolicy> {
        let dir = self.dir.read().unwrap_or_else(PoisonError::into_inner);
        dir.info.get(&id).map(|(_, policy)| policy.clone())
    }

    /// Anti-spoofing for a frame from a checked port (`port.word.checked()`, which the caller
    /// tests first: a trusted port's frame needs no `Sent`). `sent` is `frame`, parsed. Always
    /// inlined, so that `sent` stays in registers: the port with lists parses `frame` again in
    /// a cold function instead of taking `sent` through memory.
    #[inline(always)]
    pub fn check(
        &self,
        id: PortId,
        port: PortRef<'_>,
        sent: Sent<'_>,
        frame: &[u8],
    ) -> Result<(), Refusal> {
        let word = port.word;
        let ip = (word.0 & HAS_IP != 0).then(|| {
            let raw = port.slot.map_or(0, |s| s.ip.load(Ordering::Relaxed));
            u32::from_be_bytes(raw.to_ne_bytes())
        });
        let station = Station {
            mac: word.0 & MAC_BITS,
            ip,
        };
        if word.0 & WIDENED == 0 {
            return policy::check(&station, sent);
        }
        self.check_widened(id, station, frame)
    }

    #[cold]
    #[inline(never)]
    fn check_widened(&self, id: PortId, station: Station, frame: &[u8]) -> Result<(), Refusal> {
        // The caller parsed it already: these succeed.
        let Some(eth) = Ethernet::parse(frame) else {
            return Err(Refusal::Truncated);
        };
        let arp = match eth.ethertype {
            ETHERTYPE_ARP => Arp::parse(eth.payload).ok().flatten(),
            _ => None,
        };
        let sent = Sent {
            src: eth.src,
            ethertype: eth.ethertype,
            payload: eth.payload,
            arp: arp.as_ref(),
        };
        let widened = self.widened.read();
        match widened.get(&id) {
            Some(policy) => policy::check(&Widened { station, policy }, sent),
            // Replaced meanwhile by a port without lists.
            None => policy::check(&station, sent),
        }
    }

    pub fn count_spoofed(&self, id: PortId, kind: SpoofKind) {
        if let Some(slot) = self.slot(id) {
            slot.spoofed[kind.index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn count_isolated(&self, id: PortId) {
        if let Some(slot) = self.slot(id) {
            slot.isolated.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn count_learn_refused(&self, id: PortId) {
        if let Some(slot) = self.slot(id) {
            slot.learn_refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Port `id`'s counters, `None` if it is not registered.
    pub fn security_stats(&self, id: PortId) -> Option<PortSecurityStats> {
        let slot = self.slot(id)?;
        if !PortWord(slot.word.load(Ordering::Acquire)).is_live() {
            return None;
        }
        Some(PortSecurityStats {
            spoofed: std::array::from_fn(|i| slot.spoofed[i].load(Ordering::Relaxed)),
            isolated: slot.isolated.load(Ordering::Relaxed),
            learn_refused: slot.learn_refused.load(Ordering::Relaxed),
        })
    }

    /// Most MACs the forwarding table may learn on `id` besides its station's own.
    pub fn mac_limit(&self, id: PortId) -> usize {
        self.slot(id)
            .map_or(0, |s| s.max_macs.load(Ordering::Relaxed) as usize)
    }

    /// Whether `mac` is the station of port `id`.
    #[inline]
    pub fn is_station(&self, id: PortId, mac: MacAddr) -> bool {
        let word = self.word(id);
        word.is_live() && word.mac() == mac
    }

    /// The port whose station has `mac`, if any.
    pub fn station_port(&self, mac: MacAddr) -> Option<PortId> {
        let dir = self.dir.read().unwrap_or_else(PoisonError::into_inner);
        dir.by_mac.get(&mac).copied()
    }

    pub fn arp_target(&self, ingress: PortId, ip: Ipv4Addr) -> ArpTarget {
        let dir = self.dir.read().unwrap_or_else(PoisonError::into_inner);
        if dir.info.get(&ingress).and_then(|(i, _)| i.ip) == Some(ip) {
            return ArpTarget::IngressItself;
        }
        match dir.by_ip.get(&ip) {
            Some(&id) if id == ingress => ArpTarget::IngressItself,
            Some(&id) => dir
                .info
                .get(&id)
                .map_or(ArpTarget::Unknown, |(i, _)| ArpTarget::Station(i.mac, id)),
            None => ArpTarget::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(last: u8, ip: Option<u8>) -> PortInfo {
        PortInfo {
            mac: MacAddr([2, 0, 0, 0, 0, last]),
            ip: ip.map(|d| Ipv4Addr::new(10, 0, 0, d)),
        }
    }

    fn add(ports: &Ports, id: u16, info: PortInfo) {
        ports.add(PortId(id), info, PortPolicy::default(), 8);
    }

    #[test]
    fn live_bits_follow_registration() {
        let ports = Ports::new();
        for id in [0, 63, 64, 1023, 1024, u16::MAX] {
            assert!(!ports.is_live(PortId(id)));
            add(&ports, id, info(1, None));
            assert!(ports.is_live(PortId(id)));
        }
        ports.remove(PortId(64));
        assert!(!ports.is_live(PortId(64)));
        assert!(ports.is_live(PortId(63)) && ports.is_live(PortId(u16::MAX)));
        // Only the chunks of ids in use exist.
        let made = ports.chunks.iter().filter(|c| c.get().is_some()).count();
        assert_eq!(made, 3);
    }

    #[test]
    fn readding_a_port_moves_its_address() {
        let ports = Ports::new();
        add(&ports, 1, info(1, Some(1)));
        add(&ports, 1, info(1, Some(2)));
        let ip = |d| Ipv4Addr::new(10, 0, 0, d);
        let mac = |d| MacAddr([2, 0, 0, 0, 0, d]);
        assert_eq!(ports.arp_target(PortId(9), ip(1)), ArpTarget::Unknown);
        assert_eq!(
            ports.arp_target(PortId(9), ip(2)),
            ArpTarget::Station(mac(1), PortId(1))
        );
        // Removing a port that lost the address to another one leaves the other's claim.
        add(&ports, 2, info(2, Some(2)));
        ports.remove(PortId(1));
        assert_eq!(
            ports.arp_target(PortId(9), ip(2)),
            ArpTarget::Station(mac(2), PortId(2))
        );
        assert_eq!(ports.arp_target(PortId(2), ip(2)), ArpTarget::IngressItself);
        assert_eq!(ports.station_port(mac(2)), Some(PortId(2)));
        assert_eq!(ports.station_port(mac(1)), None);
    }

    #[test]
    fn words_carry_the_station_and_the_policy() {
        let ports = Ports::new();
        let iso = PortPolicy {
            isolated: true,
            ..PortPolicy::default()
        };
        ports.add(PortId(1), info(1, Some(1)), iso.clone(), 8);
        ports.add(PortId(2), info(2, Some(2)), PortPolicy::trusted(), 8);
        ports.add(PortId(3), info(3, None), PortPolicy::uplink(), 8);
        let w = |id| ports.word(PortId(id));
        assert!(ports.is_station(PortId(1), MacAddr([2, 0, 0, 0, 0, 1])));
        assert!(!ports.is_station(PortId(2), MacAddr([2, 0, 0, 0, 0, 1])));
        assert!(w(1).isolated() && !w(2).isolated() && w(3).uplink());
        assert!(!may_talk(w(1), w(2)) && may_talk(w(1), w(3)) && may_talk(w(3), w(1)));
        assert!(ports.isolation_active());
        // Replacing and removing keep the count of isolated ports right.
        ports.add(PortId(1), info(1, Some(1)), iso, 8);
        ports.remove(PortId(1));
        assert!(!ports.isolation_active());
        assert_eq!(ports.mac_limit(PortId(2)), 8);
        assert_eq!(ports.mac_limit(PortId(3)), 8);
        assert_eq!(ports.policy(PortId(2)), Some(PortPolicy::trusted()));
        assert_eq!(ports.policy(PortId(1)), None);
    }

    #[test]
    fn counters_start_from_zero_for_a_new_port_only() {
        let ports = Ports::new();
        add(&ports, 5, info(5, Some(5)));
        ports.count_spoofed(PortId(5), SpoofKind::Arp);
        ports.count_isolated(PortId(5));
        ports.count_learn_refused(PortId(5));
        let stats = ports.security_stats(PortId(5)).unwrap();
        assert_eq!(
            (
                stats.spoofed(SpoofKind::Arp),
                stats.isolated,
                stats.learn_refused
            ),
            (1, 1, 1)
        );
        add(&ports, 5, info(5, Some(5)));
        assert_eq!(
            ports.security_stats(PortId(5)),
            Some(stats),
            "replaced: kept"
        );
        ports.remove(PortId(5));
        assert_eq!(ports.security_stats(PortId(5)), None);
        add(&ports, 5, info(5, Some(5)));
        assert_eq!(
            ports.security_stats(PortId(5)),
            Some(PortSecurityStats::default()),
            "a new port of the same id starts from nothing"
        );
        assert_eq!(ports.security_stats(PortId(6)), None);
    }
}
