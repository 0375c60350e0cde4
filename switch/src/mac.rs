//! Ethernet (MAC) addresses: the key of the forwarding table and of every station.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// A 48-bit Ethernet address.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// 00:00:00:00:00:00
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// Group address (I/G bit set), broadcast included.
    #[inline]
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    #[inline]
    pub fn is_broadcast(&self) -> bool {
        self.0 == [0xff; 6]
    }

    #[inline]
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// The address as a big-endian integer in the low 48 bits (ordering matches `Ord`).
    #[inline]
    pub const fn as_u64(&self) -> u64 {
        // Two loads and their byte swaps (the eight-byte form compiles to a vector shuffle).
        let [a, b, c, d, e, f] = self.0;
        (u16::from_be_bytes([a, b]) as u64) << 32 | u32::from_be_bytes([c, d, e, f]) as u64
    }

    /// Inverse of [`MacAddr::as_u64`]; the top 16 bits are ignored.
    #[inline]
    pub const fn from_u64(v: u64) -> MacAddr {
        let [_, _, a, b, c, d, e, f] = v.to_be_bytes();
        MacAddr([a, b, c, d, e, f])
    }

    /// Stable locally-administered unicast MAC derived from an IPv4 address: 02:76:a:b:c:d
    pub const fn from_ipv4(ip: Ipv4Addr) -> MacAddr {
        let [a, b, c, d] = ip.octets();
        MacAddr([0x02, 0x76, a, b, c, d])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A string that is not six ':'-separated hex octets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six ':'-separated hex octets like 02:76:0a:01:01:02")]
pub struct ParseMacError(String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    /// Parses `aa:bb:cc:dd:ee:ff` (one or two hex digits per octet, any case).
    fn from_str(s: &str) -> Result<MacAddr, ParseMacError> {
        let err = || ParseMacError(s.chars().take(64).collect());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            let valid =
                (1..=2).contains(&part.len()) && part.bytes().all(|c| c.is_ascii_hexdigit());
            if !valid {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let mac = MacAddr::from_ipv4(Ipv4Addr::new(10, 1, 1, 2));
        assert_eq!(mac.to_string(), "02:76:0a:01:01:02");
        assert_eq!("02:76:0A:1:1:02".parse::<MacAddr>(), Ok(mac));
        assert_eq!(
            "ff:ff:ff:ff:ff:ff".parse::<MacAddr>(),
            Ok(MacAddr::BROADCAST)
        );
    }

    #[test]
    fn parse_rejects_garbage() {
        for bad in [
            "",
            "02:76:0a:01:01",
            "02:76:0a:01:01:02:03",
            "02:76:0a:01:01:",
            "002:76:0a:01:01:02",
            "+2:76:0a:01:01:02",
            "02-76-0a-01-01-02",
            "g2:76:0a:01:01:02",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn classification() {
        assert!(MacAddr::BROADCAST.is_multicast() && MacAddr::BROADCAST.is_broadcast());
        let mcast = MacAddr([0x01, 0x00, 0x5e, 0, 0, 1]);
        assert!(mcast.is_multicast() && !mcast.is_broadcast());
        assert!(MacAddr::ZERO.is_zero() && !MacAddr::ZERO.is_multicast());
        let mac = MacAddr([0x02, 0x76, 0x0a, 0x01, 0x01, 0x02]);
        assert!(!mac.is_multicast());
        assert_eq!(mac.as_u64(), 0x0276_0a01_0102);
        assert_eq!(MacAddr::from_u64(mac.as_u64()), mac);
    }
}
