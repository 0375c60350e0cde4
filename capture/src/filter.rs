//! What a capture keeps: frames of one protocol, to or from one IPv4 host, to or from one TCP
//! or UDP port, or any combination of the three (all must hold). The empty filter keeps
//! everything. Simple on purpose: for anything richer, capture to a file and filter it with
//! `tcpdump -r FILE EXPRESSION`.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::packet::{Net, Packet, ICMP, TCP, UDP};

/// A protocol to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Arp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Arp => "arp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?} (tcp, udp, icmp or arp)")]
pub struct ParseProtoError(pub String);

impl FromStr for Proto {
    type Err = ParseProtoError;
    fn from_str(s: &str) -> Result<Proto, ParseProtoError> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "icmp" => Proto::Icmp,
            "arp" => Proto::Arp,
            _ => return Err(ParseProtoError(s.to_string())),
        })
    }
}

/// Conditions a frame must all meet to be captured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Filter {
    pub proto: Option<Proto>,
    /// IPv4 source or destination (ARP: sender or target address).
    pub host: Option<Ipv4Addr>,
    /// TCP or UDP source or destination port.
    pub port: Option<u16>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// Whether the Ethernet frame `eth` (no virtio-net header) passes.
    pub fn matches(&self, eth: &[u8]) -> bool {
        if self.is_empty() {
            return true;
        }
        let Some(packet) = Packet::parse(eth) else {
            return false;
        };
        let (proto, addrs, ports) = match &packet.net {
            Net::Ipv4(ip) => {
                let proto = match ip.proto {
                    TCP => Some(Proto::Tcp),
                    UDP => Some(Proto::Udp),
                    ICMP => Some(Proto::Icmp),
                    _ => None,
                };
                (proto, Some((ip.src, ip.dst)), ip.ports())
            }
            Net::Arp(arp) => (Some(Proto::Arp), Some((arp.spa, arp.tpa)), None),
            Net::Other => (None, None, None),
        };
        self.proto.is_none_or(|want| proto == Some(want))
            && self
                .host
                .is_none_or(|h| addrs.is_some_and(|(s, d)| s == h || d == h))
            && self
                .port
                .is_none_or(|p| ports.is_some_and(|(s, d)| s == p || d == p))
    }
}

/// As tcpdump would write it: `tcp and host 10.1.1.2 and port 80`; `all frames` when empty.
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(p) = self.proto {
            parts.push(p.to_string());
        }
        if let Some(h) = self.host {
            parts.push(format!("host {h}"));
        }
        if let Some(p) = self.port {
            parts.push(format!("port {p}"));
        }
        match parts.is_empty() {
            true => f.write_str("all frames"),
            false => f.write_str(&parts.join(" and ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::tests::{arp, echo, other, tcp, udp};

    const C2: [u8; 4] = [10, 1, 1, 2];
    const C3: [u8; 4] = [10, 1, 1, 3];
    const OUT: [u8; 4] = [198, 51, 100, 2];

    fn filter(proto: Option<&str>, host: Option<[u8; 4]>, port: Option<u16>) -> Filter {
        Filter {
            proto: proto.map(|p| p.parse().unwrap()),
            host: host.map(Ipv4Addr::from),
            port,
        }
    }

    #[test]
    fn each_condition_and_their_conjunction() {
        let syn = tcp(C2, 40000, C3, 80, 0x02, b"");
        let dns = udp(C2, 5353, OUT, 53, b"q");
        let ping = echo(C2, C3, 8, 1, 1);
        let who_has = arp(1, C2, C3);
        let ipv6 = other(0x86dd);
        let frames = [&syn, &dns, &ping, &who_has, &ipv6];
        let kept = |f: Filter| -> Vec<usize> {
            (frames.iter().enumerate())
                .filter(|(_, fr)| f.matches(fr))
                .map(|(i, _)| i)
                .collect()
        };
        assert_eq!(kept(Filter::default()), [0, 1, 2, 3, 4]);
        assert_eq!(kept(filter(Some("tcp"), None, None)), [0]);
        assert_eq!(kept(filter(Some("UDP"), None, None)), [1]);
        assert_eq!(kept(filter(Some("icmp"), None, None)), [2]);
        assert_eq!(kept(filter(Some("arp"), None, None)), [3]);
        // A host is either end, and ARP's addresses count.
        assert_eq!(kept(filter(None, Some(C3), None)), [0, 2, 3]);
        assert_eq!(kept(filter(None, Some(OUT), None)), [1]);
        assert_eq!(
            kept(filter(None, Some([10, 9, 9, 9]), None)),
            Vec::<usize>::new()
        );
        // A port is either end, TCP or UDP only.
        assert_eq!(kept(filter(None, None, Some(80))), [0]);
        assert_eq!(kept(filter(None, None, Some(40000))), [0]);
        assert_eq!(kept(filter(None, None, Some(53))), [1]);
        assert_eq!(kept(filter(None, None, Some(1))), Vec::<usize>::new());
        // All conditions must hold.
        assert_eq!(kept(filter(Some("tcp"), Some(C3), Some(80))), [0]);
        assert_eq!(
            kept(filter(Some("udp"), Some(C3), None)),
            Vec::<usize>::new()
        );
        assert_eq!(
            kept(filter(Some("icmp"), None, Some(80))),
            Vec::<usize>::new()
        );
        // Frames too short to tell are not kept by a filter (they are by none).
        assert!(!filter(Some("tcp"), None, None).matches(&syn[..10]));
        assert!(Filter::default().matches(&syn[..10]));
    }

    #[test]
    fn protocols_parse_and_filters_read_like_tcpdump() {
        assert_eq!("ICMP".parse::<Proto>().unwrap(), Proto::Icmp);
        assert_eq!(
            "sctp".parse::<Proto>().unwrap_err().to_string(),
            "unknown protocol \"sctp\" (tcp, udp, icmp or arp)"
        );
        assert_eq!(Filter::default().to_string(), "all frames");
        assert_eq!(
            filter(Some("tcp"), Some(C3), Some(80)).to_string(),
            "tcp and host 10.1.1.3 and port 80"
        );
        assert_eq!(filter(None, None, Some(53)).to_string(), "port 53");
    }
}
