//! A flow: what it is (its [`Kind`], with the translation that goes with it), its two keys,
//! and what the table keeps of it: the hot part read by every packet ([`Flow`]) and the rest
//! ([`Extra`]).

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::tcp_state::TcpTracker;

use super::ContainerStats;

/// Transport protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Proto {
    Tcp,
    Udp,
    /// ICMP echo.
    Icmp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }

    pub(super) fn code(self) -> u128 {
        match self {
            Proto::Tcp => 0,
            Proto::Udp => 1,
            Proto::Icmp => 2,
        }
    }
}

/// What a flow is, with the translation that goes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Container -> outside TCP, relayed through `relay` on the gateway; `connecting` while the
    /// edge connects to the real destination and the container's SYN is held.
    TcpEgress {
        relay: u16,
        connecting: bool,
    },
    /// Container -> outside TCP that the edge translates itself from the SYN on (a kernel
    /// path): its segments never cross the NAT again. `relay` only keeps its key unique.
    TcpTranslated {
        relay: u16,
        connecting: bool,
    },
    /// Outside client -> container through a published port; the host talks from `eph`.
    TcpPublished {
        eph: u16,
    },
    UdpEgress,
    UdpPublished {
        publish_id: u32,
    },
    /// ICMP echo with the container's identifier translated to `nat_ident`.
    Echo {
        nat_ident: u16,
    },
}

impl Kind {
    pub fn proto(self) -> Proto {
        match self {
            Kind::TcpEgress { .. } | Kind::TcpTranslated { .. } | Kind::TcpPublished { .. } => {
                Proto::Tcp
            }
            Kind::UdpEgress | Kind::UdpPublished { .. } => Proto::Udp,
            Kind::Echo { .. } => Proto::Icmp,
        }
    }

    /// The gateway port of the translated key, for flows the host's frames reach.
    pub(super) fn gateway_port(self) -> Option<u16> {
        match self {
            Kind::TcpEgress { relay, .. } | Kind::TcpTranslated { relay, .. } => Some(relay),
            Kind::TcpPublished { eph } => Some(eph),
            _ => None,
        }
    }

    pub(super) fn published(self) -> bool {
        matches!(self, Kind::TcpPublished { .. } | Kind::UdpPublished { .. })
    }

    /// A flow the container started (it counts against its share of the table).
    pub(super) fn egress(self) -> bool {
        matches!(
            self,
            Kind::TcpEgress { .. }
                | Kind::TcpTranslated { .. }
                | Kind::UdpEgress
                | Kind::Echo { .. }
        )
    }

    /// A TCP connection whose connect is still in progress (no answer from its destination
    /// yet).
    pub(super) fn connecting(self) -> bool {
        matches!(
            self,
            Kind::TcpEgress {
                connecting: true,
                ..
            } | Kind::TcpTranslated {
                connecting: true,
                ..
            }
        )
    }
}

/// Container-side key.
#[inline]
pub(crate) fn inside_key(proto: Proto, cip: u32, cport: u16, rip: u32, rport: u16) -> u128 {
    (1 << 126)
        | (proto.code() << 112)
        | (u128::from(cip) << 80)
        | (u128::from(cport) << 64)
        | (u128::from(rip) << 16)
        | u128::from(rport)
}

/// Translated (host-side) key of a TCP flow.
#[inline]
pub(crate) fn outside_key(cip: u32, cport: u16, gateway_port: u16) -> u128 {
    (2 << 126)
        | (Proto::Tcp.code() << 112)
        | (u128::from(cip) << 80)
        | (u128::from(cport) << 64)
        | u128::from(gateway_port)
}

/// Length of the quote of a container's packet kept for ICMP errors: an IPv4 header without
/// options and the first 8 bytes of the transport header.
pub(crate) const QUOTE_LEN: usize = 28;

#[derive(Debug, Clone)]
pub(crate) struct Flow {
    pub kind: Kind,
    /// Container address and port (for ICMP: its echo identifier).
    pub cip: u32,
    pub cport: u16,
    /// Remote address and port (destination, or published client; for ICMP port 0).
    pub rip: u32,
    pub rport: u16,
    pub tcp: TcpTracker,
    pub replied: bool,
    pub expires_at: u64,
    pub packets_out: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// What the NAT keeps of a flow for the frames it writes to the container, apart from the
/// per-packet data so that a flow's hot part fits one cache line.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Extra {
    /// The container's MAC.
    pub mac: [u8; 6],
    /// The container's first packet, for ICMP errors about the flow.
    pub quote: Option<[u8; QUOTE_LEN]>,
}

impl Extra {
    pub fn mac(mac: [u8; 6]) -> Extra {
        Extra { mac, quote: None }
    }
}

impl Flow {
    pub fn new(kind: Kind, cip: u32, cport: u16, rip: u32, rport: u16) -> Flow {
        Flow {
            kind,
            cip,
            cport,
            rip,
            rport,
            tcp: TcpTracker::new(),
            replied: false,
            expires_at: 0,
            packets_out: 0,
            packets_in: 0,
            bytes_out: 0,
            bytes_in: 0,
        }
    }

    pub(super) fn inside_key(&self) -> u128 {
        let rport = match self.kind {
            Kind::Echo { .. } => 0,
            _ => self.rport,
        };
        inside_key(self.kind.proto(), self.cip, self.cport, self.rip, rport)
    }

    pub(super) fn outside_key(&self) -> Option<u128> {
        self.kind
            .gateway_port()
            .map(|p| outside_key(self.cip, self.cport, p))
    }

    #[inline]
    pub fn count_out(&mut self, bytes: usize) {
        self.packets_out += 1;
        self.bytes_out += bytes as u64;
    }

    #[inline]
    pub fn count_in(&mut self, bytes: usize) {
        self.packets_in += 1;
        self.bytes_in += bytes as u64;
    }

    pub fn inside(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(self.cip), self.cport)
    }

    pub fn remote(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(self.rip), self.rport)
    }

    pub(super) fn state_str(&self) -> &'static str {
        match (self.kind.proto(), self.replied) {
            (Proto::Tcp, _) => self.tcp.state().as_str(),
            (_, false) => "UNREPLIED",
            (_, true) => "REPLIED",
        }
    }

    pub(super) fn add_to(&self, s: &mut ContainerStats) {
        s.packets_out += self.packets_out;
        s.packets_in += self.packets_in;
        s.bytes_out += self.bytes_out;
        s.bytes_in += self.bytes_in;
    }
}
