//! The port directory: which ports exist and which station (MAC, IPv4) sits behind each.
//! Every frame asks "is the ingress port registered?", so that answer is a bitmap read with
//! one relaxed load; the stations (for ARP and the control plane) sit behind a lock that only
//! ARP requests and port changes take.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use crate::mac::MacAddr;

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
    Station(MacAddr),
    /// No port has the address.
    Unknown,
}

const WORDS: usize = (u16::MAX as usize + 1) / 64;

#[derive(Debug)]
pub(crate) struct Ports {
    /// Bit `id` set while port `id` is registered.
    live: Box<[AtomicU64]>,
    dir: RwLock<Directory>,
}

#[derive(Debug, Default)]
struct Directory {
    info: HashMap<PortId, PortInfo>,
    by_ip: HashMap<Ipv4Addr, PortId>,
}

impl Directory {
    fn forget_ip(&mut self, id: PortId) {
        if let Some(ip) = self.info.get(&id).and_then(|i| i.ip) {
            if self.by_ip.get(&ip) == Some(&id) {
                self.by_ip.remove(&ip);
            }
        }
    }
}

#[inline]
fn bit(id: PortId) -> (usize, u64) {
    (usize::from(id.0) / 64, 1 << (id.0 % 64))
}

impl Ports {
    pub fn new() -> Ports {
        Ports {
            live: (0..WORDS).map(|_| AtomicU64::new(0)).collect(),
            dir: RwLock::default(),
        }
    }

    #[inline]
    pub fn is_live(&self, id: PortId) -> bool {
        let (word, mask) = bit(id);
        self.live
            .get(word)
            .is_some_and(|w| w.load(Ordering::Relaxed) & mask != 0)
    }

    /// Registers or replaces port `id`. If two ports claim one IPv4 address, the later wins.
    pub fn add(&self, id: PortId, info: PortInfo) {
        let mut dir = self.dir.write().unwrap_or_else(PoisonError::into_inner);
        dir.forget_ip(id);
        if let Some(ip) = info.ip {
            dir.by_ip.insert(ip, id);
        }
        dir.info.insert(id, info);
        let (word, mask) = bit(id);
        if let Some(w) = self.live.get(word) {
            w.fetch_or(mask, Ordering::Relaxed);
        }
    }

    pub fn remove(&self, id: PortId) {
        let mut dir = self.dir.write().unwrap_or_else(PoisonError::into_inner);
        let (word, mask) = bit(id);
        if let Some(w) = self.live.get(word) {
            w.fetch_and(!mask, Ordering::Relaxed);
        }
        dir.forget_ip(id);
        dir.info.remove(&id);
    }

    pub fn info(&self, id: PortId) -> Option<PortInfo> {
        let dir = self.dir.read().unwrap_or_else(PoisonError::into_inner);
        dir.info.get(&id).cloned()
    }

    pub fn arp_target(&self, ingress: PortId, ip: Ipv4Addr) -> ArpTarget {
        let dir = self.dir.read().unwrap_or_else(PoisonError::into_inner);
        if dir.info.get(&ingress).and_then(|i| i.ip) == Some(ip) {
            return ArpTarget::IngressItself;
        }
        match dir.by_ip.get(&ip) {
            Some(&id) if id == ingress => ArpTarget::IngressItself,
            Some(id) => dir
                .info
                .get(id)
                .map_or(ArpTarget::Unknown, |i| ArpTarget::Station(i.mac)),
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

    #[test]
    fn live_bits_follow_registration() {
        let ports = Ports::new();
        for id in [0, 63, 64, u16::MAX] {
            assert!(!ports.is_live(PortId(id)));
            ports.add(PortId(id), info(1, None));
            assert!(ports.is_live(PortId(id)));
        }
        ports.remove(PortId(64));
        assert!(!ports.is_live(PortId(64)));
        assert!(ports.is_live(PortId(63)) && ports.is_live(PortId(u16::MAX)));
    }

    #[test]
    fn readding_a_port_moves_its_address() {
        let ports = Ports::new();
        ports.add(PortId(1), info(1, Some(1)));
        ports.add(PortId(1), info(1, Some(2)));
        let ip = |d| Ipv4Addr::new(10, 0, 0, d);
        assert_eq!(ports.arp_target(PortId(9), ip(1)), ArpTarget::Unknown);
        assert_eq!(
            ports.arp_target(PortId(9), ip(2)),
            ArpTarget::Station(MacAddr([2, 0, 0, 0, 0, 1]))
        );
        // Removing a port that lost the address to another one leaves the other's claim.
        ports.add(PortId(2), info(2, Some(2)));
        ports.remove(PortId(1));
        assert_eq!(
            ports.arp_target(PortId(9), ip(2)),
            ArpTarget::Station(MacAddr([2, 0, 0, 0, 0, 2]))
        );
        assert_eq!(ports.arp_target(PortId(2), ip(2)), ArpTarget::IngressItself);
    }
}
