//! Address management for the switch's subnet: which container addresses are free.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 subnet such as `10.1.1.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Net {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("invalid subnet {0:?}: expected ADDRESS/PREFIX such as 10.1.1.0/24")]
    BadSubnet(String),
    #[error(
        "subnet {0} is too small: it needs room for a gateway and containers (prefix at most /30)"
    )]
    TooSmall(Ipv4Net),
    #[error("address {addr} is not a usable host address of subnet {net}")]
    OutOfSubnet { addr: Ipv4Addr, net: Ipv4Net },
    #[error("address {0} is the gateway's")]
    IsGateway(Ipv4Addr),
    #[error("address {0} is already in use by another container")]
    InUse(Ipv4Addr),
    #[error("subnet {0} is full: every address is in use")]
    Full(Ipv4Net),
}

impl Ipv4Net {
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == u32::from(self.network)
    }
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }
    /// First usable host address (conventionally the gateway).
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }
    /// Whether `a` is a host address of this subnet (not the network or broadcast address).
    pub fn is_host(&self, a: Ipv4Addr) -> bool {
        self.contains(a) && a != self.network && a != self.broadcast()
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = IpamError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IpamError::BadSubnet(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        let net = Ipv4Net {
            network: addr,
            prefix,
        };
        // Accept 10.1.1.7/24 as 10.1.1.0/24, as `ip` does for routes.
        let net = Ipv4Net {
            network: Ipv4Addr::from(u32::from(addr) & net.mask()),
            prefix,
        };
        if prefix > 30 {
            return Err(IpamError::TooSmall(net));
        }
        Ok(net)
    }
}

/// The subnet's address book: the gateway plus the addresses handed to containers.
#[derive(Debug)]
pub struct Ipam {
    net: Ipv4Net,
    gateway: Ipv4Addr,
    used: BTreeSet<Ipv4Addr>,
}

impl Ipam {
    pub fn new(net: Ipv4Net, gateway: Ipv4Addr) -> Result<Ipam, IpamError> {
        if !net.is_host(gateway) {
            return Err(IpamError::OutOfSubnet { addr: gateway, net });
        }
        Ok(Ipam {
            net,
            gateway,
            used: BTreeSet::new(),
        })
    }

    pub fn net(&self) -> Ipv4Net {
        self.net
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// Reserves `wanted`, or the lowest free address when `None`.
    #[cfg(test)]
    pub fn reserve(&mut self, wanted: Option<Ipv4Addr>) -> Result<Ipv4Addr, IpamError> {
        self.reserve_where(wanted, |_| true)
    }

    /// Reserves `wanted`, or the lowest free address that is also `usable` when `None` (the
    /// manager skips addresses whose derived MAC a manual plug has taken).
    pub fn reserve_where(
        &mut self,
        wanted: Option<Ipv4Addr>,
        usable: impl Fn(Ipv4Addr) -> bool,
    ) -> Result<Ipv4Addr, IpamError> {
        let addr = match wanted {
            Some(addr) => {
                if !self.net.is_host(addr) {
                    return Err(IpamError::OutOfSubnet {
                        addr,
                        net: self.net,
                    });
                }
                if addr == self.gateway {
                    return Err(IpamError::IsGateway(addr));
                }
                if self.used.contains(&addr) {
                    return Err(IpamError::InUse(addr));
                }
                addr
            }
            None => {
                let first = u32::from(self.net.network) + 1;
                let last = u32::from(self.net.broadcast()) - 1;
                (first..=last)
                    .map(Ipv4Addr::from)
                    .find(|a| *a != self.gateway && !self.used.contains(a) && usable(*a))
                    .ok_or(IpamError::Full(self.net))?
            }
        };
        self.used.insert(addr);
        Ok(addr)
    }

    pub fn release(&mut self, addr: Ipv4Addr) {
        self.used.remove(&addr);
    }

    /// How many addresses are left: the subnet's host addresses but the gateway and those in
    /// use.
    pub fn free(&self) -> u64 {
        let hosts = (1u64 << (32 - self.net.prefix)) - 2;
        hosts - 1 - self.used.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(s: &str) -> Ipam {
        let net: Ipv4Net = s.parse().unwrap();
        Ipam::new(net, net.first_host()).unwrap()
    }

    #[test]
    fn parses_and_normalises_subnets() {
        let net: Ipv4Net = "10.1.1.7/24".parse().unwrap();
        assert_eq!(net.to_string(), "10.1.1.0/24");
        assert_eq!(net.broadcast(), Ipv4Addr::new(10, 1, 1, 255));
        assert!(matches!(
            "10.1.1.0".parse::<Ipv4Net>(),
            Err(IpamError::BadSubnet(_))
        ));
        assert!(matches!(
            "10.1.1.0/33".parse::<Ipv4Net>(),
            Err(IpamError::BadSubnet(_))
        ));
        assert!(matches!(
            "10.1.1.0/31".parse::<Ipv4Net>(),
            Err(IpamError::TooSmall(_))
        ));
        assert!(matches!(
            "x/24".parse::<Ipv4Net>(),
            Err(IpamError::BadSubnet(_))
        ));
    }

    #[test]
    fn hands_out_lowest_free_address_and_reuses_released_ones() {
        let mut ipam = ipam("10.1.1.0/24");
        assert_eq!(ipam.reserve(None), Ok(Ipv4Addr::new(10, 1, 1, 2)));
        assert_eq!(ipam.reserve(None), Ok(Ipv4Addr::new(10, 1, 1, 3)));
        ipam.release(Ipv4Addr::new(10, 1, 1, 2));
        assert_eq!(ipam.reserve(None), Ok(Ipv4Addr::new(10, 1, 1, 2)));
    }

    #[test]
    fn rejects_bad_explicit_addresses() {
        let mut ipam = ipam("10.1.1.0/24");
        let five = Ipv4Addr::new(10, 1, 1, 5);
        assert_eq!(ipam.reserve(Some(five)), Ok(five));
        assert_eq!(ipam.reserve(Some(five)), Err(IpamError::InUse(five)));
        let gw = Ipv4Addr::new(10, 1, 1, 1);
        assert_eq!(ipam.reserve(Some(gw)), Err(IpamError::IsGateway(gw)));
        for bad in [[10, 1, 1, 0], [10, 1, 1, 255], [10, 1, 2, 1]] {
            assert!(matches!(
                ipam.reserve(Some(Ipv4Addr::from(bad))),
                Err(IpamError::OutOfSubnet { .. })
            ));
        }
    }

    #[test]
    fn automatic_addresses_skip_unusable_ones() {
        let mut book = ipam("10.1.1.0/24");
        let three = Ipv4Addr::new(10, 1, 1, 3);
        let got = book.reserve_where(None, |a| a != Ipv4Addr::new(10, 1, 1, 2));
        assert_eq!(got, Ok(three));
        // An explicit address is the caller's to check.
        let two = Ipv4Addr::new(10, 1, 1, 2);
        assert_eq!(book.reserve_where(Some(two), |_| false), Ok(two));
        let mut small = ipam("10.9.9.0/30");
        assert!(matches!(
            small.reserve_where(None, |_| false),
            Err(IpamError::Full(_))
        ));
    }

    #[test]
    fn reports_a_full_subnet() {
        let mut ipam = ipam("10.9.9.0/30");
        assert_eq!(ipam.free(), 1);
        assert_eq!(ipam.reserve(None), Ok(Ipv4Addr::new(10, 9, 9, 2)));
        assert_eq!(ipam.free(), 0);
        assert!(matches!(ipam.reserve(None), Err(IpamError::Full(_))));
    }

    #[test]
    fn counts_free_addresses() {
        let mut book = ipam("10.1.1.0/24");
        assert_eq!(book.free(), 253);
        let five = Ipv4Addr::new(10, 1, 1, 5);
        book.reserve(Some(five)).unwrap();
        book.reserve(None).unwrap();
        assert_eq!(book.free(), 251);
        book.release(five);
        assert_eq!(book.free(), 252);
        assert_eq!(ipam("10.0.0.0/8").free(), (1 << 24) - 3);
    }
}
