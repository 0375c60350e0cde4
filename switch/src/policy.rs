//! Port security: what a port may send, and whom it may reach.
//!
//! Every container port is checked by default (anti-spoofing): a frame whose Ethernet source is
//! not the port's MAC, IPv4 whose source is not the port's address, ARP whose sender is not the
//! port's station (a gratuitous ARP claiming another address; only an RFC 5227 probe may say
//! 0.0.0.0), or any EtherType but IPv4 and ARP (IPv6 included, until the switch knows IPv6) is
//! dropped and counted by kind. A port is registered with a [`PortPolicy`] that may widen this
//! (`allow_*`), turn it off (`trusted`: a container that routes or bridges others, or the host's
//! TAP), or isolate the port from the other containers (`isolated`).
//!
//! The decision is pure and cheap: the common policy (the station's own MAC and address, IPv4 +
//! ARP) is one word and an address per port, read without a lock (see `port`); only a port
//! with `allow_*` lists takes a read lock for them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::frame::{Arp, ARP_OP_REQUEST, ETHERTYPE_ARP, ETHERTYPE_IPV4};
use crate::mac::MacAddr;

/// An IPv4 prefix, `ADDR/LEN` (host bits zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Prefix {
    addr: Ipv4Addr,
    len: u8,
}

/// A string that is not an IPv4 prefix with its host bits zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParsePrefixError {
    #[error("invalid IPv4 prefix {0:?}: expected ADDR/LEN like 10.1.1.0/28")]
    Syntax(String),
    #[error("{given} has host bits set: the prefix is {prefix}")]
    HostBits { given: String, prefix: Ipv4Prefix },
}

impl Ipv4Prefix {
    /// `addr/len`; `None` if `len > 32` or `addr` has bits set past `len`.
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Ipv4Prefix> {
        let p = Ipv4Prefix { addr, len };
        (len <= 32 && u32::from(addr) & !p.mask() == 0).then_some(p)
    }

    /// The single address `addr/32`.
    pub fn host(addr: Ipv4Addr) -> Ipv4Prefix {
        Ipv4Prefix { addr, len: 32 }
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The netmask as a number (`/24` -> `0xffffff00`).
    pub fn mask(&self) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0)
    }

    #[inline]
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv4Prefix {
    type Err = ParsePrefixError;

    /// `ADDR/LEN`, or a bare address for `/32`.
    fn from_str(s: &str) -> Result<Ipv4Prefix, ParsePrefixError> {
        let syntax = || ParsePrefixError::Syntax(s.chars().take(64).collect());
        let (addr, len) = match s.split_once('/') {
            Some((a, l))
                if !l.is_empty() && l.len() <= 2 && l.bytes().all(|b| b.is_ascii_digit()) =>
            {
                (a, l.parse::<u8>().map_err(|_| syntax())?)
            }
            Some(_) => return Err(syntax()),
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        if len > 32 {
            return Err(syntax());
        }
        Ipv4Prefix::new(addr, len).ok_or_else(|| {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            ParsePrefixError::HostBits {
                given: s.to_string(),
                prefix: Ipv4Prefix {
                    addr: Ipv4Addr::from(u32::from(addr) & mask),
                    len,
                },
            }
        })
    }
}

/// What a port may send and whom it may reach. The default is the secure one: the station's
/// own MAC and address, IPv4 and ARP only, not isolated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortPolicy {
    /// No source checks at all: the port may send any MAC, address and EtherType (a container
    /// that routes or bridges others; the host's TAP, since the host routes anything).
    pub trusted: bool,
    /// The port reaches only uplink ports and is reached by them only: no other container, not
    /// even through ARP (as Docker's `enable_icc=false`).
    pub isolated: bool,
    /// The host's port (the TAP): every port reaches it, isolated ones included.
    pub uplink: bool,
    /// Ethernet source (and ARP sender) MACs allowed besides the station's own.
    pub allow_macs: Vec<MacAddr>,
    /// IPv4 source (and ARP sender) prefixes allowed besides the station's own address.
    pub allow_ips: Vec<Ipv4Prefix>,
    /// EtherTypes allowed besides IPv4 and ARP; their frames are checked for the source MAC
    /// only (the switch does not parse them).
    pub allow_ethertypes: Vec<u16>,
    /// Most MACs the forwarding table learns on this port besides the station's own. `None`:
    /// the number of `allow_macs` for a checked port (it cannot send any other), the switch's
    /// [`Config::max_macs_per_port`](crate::Config::max_macs_per_port) for a trusted one.
    pub max_macs: Option<u32>,
}

impl PortPolicy {
    /// No checks (see [`PortPolicy::trusted`](PortPolicy#structfield.trusted)).
    pub fn trusted() -> PortPolicy {
        PortPolicy {
            trusted: true,
            ..PortPolicy::default()
        }
    }

    /// The host's port: trusted, and reached by isolated ports.
    pub fn uplink() -> PortPolicy {
        PortPolicy {
            trusted: true,
            uplink: true,
            ..PortPolicy::default()
        }
    }

    /// The one prefix that holds exactly the IPv4 sources a checked port with station address
    /// `own` may use, if there is one: `own/32` without `allow_ips`, or the allowed prefix
    /// that holds `own` and every other allowed one. `None` for a trusted port (no check), and
    /// where no single prefix says it (a kernel fast path that compares one prefix must leave
    /// such a port's frames to the switch).
    pub fn source_prefix(&self, own: Option<Ipv4Addr>) -> Option<Ipv4Prefix> {
        if self.trusted {
            return None;
        }
        let mut all: Vec<Ipv4Prefix> = self.allow_ips.clone();
        all.extend(own.map(Ipv4Prefix::host));
        let widest = *all.iter().min_by_key(|p| p.len)?;
        // The widest holds another allowed prefix when it holds its address (the other is no
        // wider).
        all.iter()
            .all(|p| widest.contains(p.addr))
            .then_some(widest)
    }

    /// Whether the checks need the lists (else one compare per field does).
    pub(crate) fn is_extended(&self) -> bool {
        !(self.allow_macs.is_empty()
            && self.allow_ips.is_empty()
            && self.allow_ethertypes.is_empty())
    }

    /// The port's learned-MAC limit, given the switch's default for trusted ports.
    pub(crate) fn mac_limit(&self, trusted_default: u32) -> u32 {
        self.max_macs.unwrap_or(if self.trusted {
            trusted_default
        } else {
            self.allow_macs.len().try_into().unwrap_or(u32::MAX)
        })
    }
}

/// What a spoofed frame forged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpoofKind {
    /// Its Ethernet source is not a MAC the port may use.
    Mac,
    /// IPv4 from a source address the port may not use (0.0.0.0 included).
    Ip,
    /// ARP whose sender MAC or address the port may not claim (a gratuitous ARP for another
    /// address, a forged reply), or ARP of another hardware or protocol type.
    Arp,
    /// An EtherType the port may not send (IPv6 among them, by default).
    EtherType,
}

impl SpoofKind {
    pub const ALL: [SpoofKind; 4] = [
        SpoofKind::Mac,
        SpoofKind::Ip,
        SpoofKind::Arp,
        SpoofKind::EtherType,
    ];

    /// `mac`, `ip`, `arp` or `ethertype`.
    pub fn name(self) -> &'static str {
        match self {
            SpoofKind::Mac => "mac",
            SpoofKind::Ip => "ip",
            SpoofKind::Arp => "arp",
            SpoofKind::EtherType => "ethertype",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for SpoofKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a checked port's frame is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Spoofed(SpoofKind),
    /// IPv4 too short to carry a source address.
    Truncated,
}

/// What a port's frames are checked against: its station and its policy.
pub(crate) trait Allowed {
    fn mac(&self, mac: MacAddr) -> bool;
    fn ip(&self, ip: Ipv4Addr) -> bool;
    fn ethertype(&self, ethertype: u16) -> bool;
}

/// The common case: the station's own MAC and address, IPv4 and ARP. Numbers, so that the
/// hot path compares registers.
#[derive(Clone, Copy)]
pub(crate) struct Station {
    /// `MacAddr::as_u64`.
    pub mac: u64,
    /// The address as a number, if the station has one.
    pub ip: Option<u32>,
}

impl Allowed for Station {
    #[inline(always)]
    fn mac(&self, mac: MacAddr) -> bool {
        mac.as_u64() == self.mac
    }
    #[inline(always)]
    fn ip(&self, ip: Ipv4Addr) -> bool {
        Some(u32::from(ip)) == self.ip
    }
    #[inline(always)]
    fn ethertype(&self, _: u16) -> bool {
        false
    }
}

/// A station with `allow_*` lists.
pub(crate) struct Widened<'a> {
    pub station: Station,
    pub policy: &'a PortPolicy,
}

impl Allowed for Widened<'_> {
    fn mac(&self, mac: MacAddr) -> bool {
        self.station.mac(mac) || self.policy.allow_macs.contains(&mac)
    }
    fn ip(&self, ip: Ipv4Addr) -> bool {
        self.station.ip(ip) || self.policy.allow_ips.iter().any(|p| p.contains(ip))
    }
    fn ethertype(&self, ethertype: u16) -> bool {
        self.policy.allow_ethertypes.contains(&ethertype)
    }
}

/// A frame, as much of it as the checks read.
#[derive(Clone, Copy)]
pub(crate) struct Sent<'a> {
    pub src: MacAddr,
    pub ethertype: u16,
    /// What follows the Ethernet header.
    pub payload: &'a [u8],
    /// The frame's ARP packet (IPv4 over Ethernet), parsed by the caller: `None` for an ARP
    /// frame of another hardware or protocol type, and for every other frame.
    pub arp: Option<&'a Arp>,
}

/// The anti-spoofing decision for a frame from a checked port. Always inlined: its caller's
/// frame must stay in registers (a `Sent` passed through memory stalls on the reload).
#[inline(always)]
pub(crate) fn check(allowed: &impl Allowed, sent: Sent<'_>) -> Result<(), Refusal> {
    if !allowed.mac(sent.src) {
        return Err(Refusal::Spoofed(SpoofKind::Mac));
    }
    match sent.ethertype {
        ETHERTYPE_IPV4 => {
            let Some(&[a, b, c, d]) = sent.payload.get(12..16) else {
                return Err(Refusal::Truncated);
            };
            if !allowed.ip(Ipv4Addr::new(a, b, c, d)) {
                return Err(Refusal::Spoofed(SpoofKind::Ip));
            }
        }
        ETHERTYPE_ARP => {
            let ok = sent.arp.is_some_and(|a| {
                // RFC 5227: a probe says 0.0.0.0 while it asks whether an address is taken.
                let probe = a.op == ARP_OP_REQUEST && a.spa.is_unspecified();
                allowed.mac(a.sha) && (probe || allowed.ip(a.spa))
            });
            if !ok {
                return Err(Refusal::Spoofed(SpoofKind::Arp));
            }
        }
        other if allowed.ethertype(other) => {}
        _ => return Err(Refusal::Spoofed(SpoofKind::EtherType)),
    }
    Ok(())
}

/// A port's port-security counters since it was registered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortSecurityStats {
    /// Spoofed frames dropped, by kind (index as [`SpoofKind::ALL`]).
    pub spoofed: [u64; 4],
    /// Frames dropped because they would have crossed between this port and another container
    /// when either is isolated (counted on the sender's port).
    pub isolated: u64,
    /// Source MACs the forwarding table refused to learn on this port: over its limit, or
    /// another port's station.
    pub learn_refused: u64,
}

impl PortSecurityStats {
    pub fn spoofed(&self, kind: SpoofKind) -> u64 {
        self.spoofed[kind.index()]
    }

    pub fn spoofed_total(&self) -> u64 {
        self.spoofed.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_print_and_contain() {
        let p: Ipv4Prefix = "10.1.1.0/28".parse().unwrap();
        assert_eq!(
            (p.addr(), p.prefix_len(), p.mask()),
            (Ipv4Addr::new(10, 1, 1, 0), 28, 0xffff_fff0)
        );
        assert_eq!(p.to_string(), "10.1.1.0/28");
        assert!(p.contains(Ipv4Addr::new(10, 1, 1, 15)));
        assert!(!p.contains(Ipv4Addr::new(10, 1, 1, 16)));
        let host: Ipv4Prefix = "10.1.1.7".parse().unwrap();
        assert_eq!(host, Ipv4Prefix::host(Ipv4Addr::new(10, 1, 1, 7)));
        let all: Ipv4Prefix = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(203, 0, 113, 9)) && all.mask() == 0);
        assert_eq!(
            "10.1.1.5/24".parse::<Ipv4Prefix>().unwrap_err().to_string(),
            "10.1.1.5/24 has host bits set: the prefix is 10.1.1.0/24"
        );
        for bad in [
            "",
            "10.1.1.0/",
            "10.1.1.0/33",
            "10.1.1/24",
            "10.1.1.0/+4",
            "x/8",
            "10.1.1.0/024",
        ] {
            assert!(bad.parse::<Ipv4Prefix>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn one_prefix_for_the_sources_where_there_is_one() {
        let own = Some(Ipv4Addr::new(10, 1, 1, 5));
        let with = |ips: &[&str]| PortPolicy {
            allow_ips: ips.iter().map(|p| p.parse().unwrap()).collect(),
            ..PortPolicy::default()
        };
        let prefix = |p: &str| Some(p.parse::<Ipv4Prefix>().unwrap());
        assert_eq!(with(&[]).source_prefix(own), prefix("10.1.1.5/32"));
        assert_eq!(with(&[]).source_prefix(None), None);
        assert_eq!(
            with(&["10.1.1.0/24"]).source_prefix(own),
            prefix("10.1.1.0/24")
        );
        assert_eq!(
            with(&["10.1.1.0/28", "10.1.0.0/16"]).source_prefix(own),
            prefix("10.1.0.0/16")
        );
        assert_eq!(with(&["192.168.0.0/16"]).source_prefix(own), None);
        assert_eq!(
            with(&["192.168.0.0/16"]).source_prefix(None),
            prefix("192.168.0.0/16")
        );
        assert_eq!(
            with(&["10.1.1.0/28", "10.1.2.0/28"]).source_prefix(own),
            None
        );
        assert_eq!(PortPolicy::trusted().source_prefix(own), None);
    }

    #[test]
    fn default_limits() {
        let mut p = PortPolicy::default();
        assert_eq!(p.mac_limit(99), 0);
        p.allow_macs.push(MacAddr([2, 0, 0, 0, 0, 9]));
        assert_eq!(p.mac_limit(99), 1);
        assert_eq!(PortPolicy::trusted().mac_limit(99), 99);
        p.max_macs = Some(5);
        assert_eq!(p.mac_limit(99), 5);
        assert!(p.is_extended() && !PortPolicy::uplink().is_extended());
    }
}
