//! Read-only views of the only headers the switch looks at: Ethernet, and ARP for IPv4 over
//! Ethernet. Bytes come straight from containers, so every field is read through checked
//! fixed-size chunks: no input length or content can make the datapath panic.

use std::net::Ipv4Addr;

use crate::mac::MacAddr;

pub(crate) const ETH_HDR_LEN: usize = 14;
pub(crate) use ethertype::{ARP as ETHERTYPE_ARP, IPV4 as ETHERTYPE_IPV4};

/// The EtherTypes the switch and the NAT tell apart.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    /// An 802.1Q VLAN tag.
    pub const VLAN: u16 = 0x8100;
    pub const IPV6: u16 = 0x86dd;
}
/// Length of an ARP packet for IPv4 over Ethernet.
pub(crate) const ARP_LEN: usize = 28;
pub(crate) const ARP_HTYPE_ETHERNET: u16 = 1;
pub(crate) const ARP_OP_REQUEST: u16 = 1;
pub(crate) const ARP_OP_REPLY: u16 = 2;

/// An Ethernet II header and what follows it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ethernet<'a> {
    pub dst: MacAddr,
    pub src: MacAddr,
    pub ethertype: u16,
    pub payload: &'a [u8],
}

impl<'a> Ethernet<'a> {
    /// `None` if the frame is shorter than an Ethernet header.
    #[inline]
    pub fn parse(frame: &'a [u8]) -> Option<Ethernet<'a>> {
        let (hdr, payload) = frame.split_first_chunk::<ETH_HDR_LEN>()?;
        let [d0, d1, d2, d3, d4, d5, s0, s1, s2, s3, s4, s5, t0, t1] = *hdr;
        Some(Ethernet {
            dst: MacAddr([d0, d1, d2, d3, d4, d5]),
            src: MacAddr([s0, s1, s2, s3, s4, s5]),
            ethertype: u16::from_be_bytes([t0, t1]),
            payload,
        })
    }
}

/// An ARP packet for IPv4 over Ethernet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arp {
    pub op: u16,
    pub sha: MacAddr,
    pub spa: Ipv4Addr,
    pub tha: MacAddr,
    pub tpa: Ipv4Addr,
}

/// An ARP payload too short for even an IPv4-over-Ethernet packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Truncated;

impl Arp {
    /// Parses the payload of an ARP-ethertype frame. `Ok(None)` for ARP of another hardware or
    /// protocol type (not ours to answer: forwarded like any frame).
    pub fn parse(payload: &[u8]) -> Result<Option<Arp>, Truncated> {
        let (pkt, _padding) = payload.split_first_chunk::<ARP_LEN>().ok_or(Truncated)?;
        let [h0, h1, p0, p1, hlen, plen, o0, o1, rest @ ..] = *pkt;
        let [a0, a1, a2, a3, a4, a5, b0, b1, b2, b3, c0, c1, c2, c3, c4, c5, d0, d1, d2, d3] = rest;
        if u16::from_be_bytes([h0, h1]) != ARP_HTYPE_ETHERNET
            || u16::from_be_bytes([p0, p1]) != ETHERTYPE_IPV4
            || hlen != 6
            || plen != 4
        {
            return Ok(None);
        }
        Ok(Some(Arp {
            op: u16::from_be_bytes([o0, o1]),
            sha: MacAddr([a0, a1, a2, a3, a4, a5]),
            spa: Ipv4Addr::new(b0, b1, b2, b3),
            tha: MacAddr([c0, c1, c2, c3, c4, c5]),
            tpa: Ipv4Addr::new(d0, d1, d2, d3),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethernet_needs_fourteen_bytes() {
        let frame: Vec<u8> = (0..14).collect();
        assert!(Ethernet::parse(&frame[..13]).is_none());
        let eth = Ethernet::parse(&frame).unwrap();
        assert_eq!(eth.dst, MacAddr([0, 1, 2, 3, 4, 5]));
        assert_eq!(eth.src, MacAddr([6, 7, 8, 9, 10, 11]));
        assert_eq!(eth.ethertype, 0x0c0d);
        assert!(eth.payload.is_empty());
    }

    #[test]
    fn arp_fields_and_types() {
        let mut pkt = vec![0, 1, 8, 0, 6, 4, 0, 1];
        pkt.extend([2, 0, 0, 0, 0, 1, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
        pkt.extend([0; 18]); // Ethernet padding is ignored
        let arp = Arp::parse(&pkt).unwrap().unwrap();
        assert_eq!(arp.op, ARP_OP_REQUEST);
        assert_eq!(arp.sha, MacAddr([2, 0, 0, 0, 0, 1]));
        assert_eq!(arp.spa, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(arp.tha, MacAddr::ZERO);
        assert_eq!(arp.tpa, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(Arp::parse(&pkt[..27]), Err(Truncated));
        pkt[2] = 0x86; // ptype IPv6: not ours
        assert_eq!(Arp::parse(&pkt), Ok(None));
    }
}
