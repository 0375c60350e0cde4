//! A frame's headers as the filter and the summaries need them: Ethernet (with up to two VLAN
//! tags), then IPv4 or ARP. Everything is bounds-checked: a short or odd frame parses as far as
//! it goes, never panics.

use std::net::Ipv4Addr;

use vswitch_switch::ethertype;

/// IPv4 protocol numbers.
pub const ICMP: u8 = 1;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// 802.1ad (QinQ) outer tag.
const QINQ: u16 = 0x88a8;

pub struct Packet<'a> {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: u16,
    pub net: Net<'a>,
}

pub enum Net<'a> {
    Ipv4(Ipv4<'a>),
    Arp(Arp),
    /// Another EtherType, or a header too short to read.
    Other,
}

pub struct Ipv4<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    /// The transport header and payload, as far as the frame holds them; empty in a fragment
    /// other than the first (which has no transport header).
    pub l4: &'a [u8],
    pub first_fragment: bool,
}

impl Ipv4<'_> {
    /// Source and destination port of a TCP or UDP packet that carries its transport header.
    pub fn ports(&self) -> Option<(u16, u16)> {
        if !matches!(self.proto, TCP | UDP) || !self.first_fragment {
            return None;
        }
        let h = self.l4.get(..4)?;
        Some((
            u16::from_be_bytes([h[0], h[1]]),
            u16::from_be_bytes([h[2], h[3]]),
        ))
    }
}

pub struct Arp {
    pub op: u16,
    pub sha: [u8; 6],
    pub spa: Ipv4Addr,
    pub tpa: Ipv4Addr,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn ipv4_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

impl<'a> Packet<'a> {
    /// Parses an Ethernet frame (no virtio-net header); `None` if shorter than its header.
    pub fn parse(eth: &'a [u8]) -> Option<Packet<'a>> {
        let dst = eth.get(..6)?.try_into().ok()?;
        let src = eth.get(6..12)?.try_into().ok()?;
        let mut at = 12;
        let mut ethertype = be16(eth, at)?;
        for _ in 0..2 {
            if ethertype != ethertype::VLAN && ethertype != QINQ {
                break;
            }
            at += 4;
            ethertype = be16(eth, at)?;
        }
        let l3 = eth.get(at + 2..).unwrap_or_default();
        let net = match ethertype {
            ethertype::IPV4 => Self::ipv4(l3).map_or(Net::Other, Net::Ipv4),
            ethertype::ARP => Self::arp(l3).map_or(Net::Other, Net::Arp),
            _ => Net::Other,
        };
        Some(Packet {
            dst,
            src,
            ethertype,
            net,
        })
    }

    fn ipv4(l3: &'a [u8]) -> Option<Ipv4<'a>> {
        let first = *l3.first()?;
        let ihl = usize::from(first & 0x0f) * 4;
        if first >> 4 != 4 || ihl < 20 || l3.len() < 20 {
            return None;
        }
        let offset = be16(l3, 6)? & 0x1fff;
        // The transport part: up to the total length when the frame holds it all (Ethernet
        // padding is not payload).
        let total = usize::from(be16(l3, 2)?).clamp(ihl, l3.len().max(ihl));
        Some(Ipv4 {
            src: ipv4_at(l3, 12)?,
            dst: ipv4_at(l3, 16)?,
            proto: l3[9],
            l4: if offset == 0 {
                l3.get(ihl..total).unwrap_or_default()
            } else {
                &[]
            },
            first_fragment: offset == 0,
        })
    }

    fn arp(l3: &[u8]) -> Option<Arp> {
        // Ethernet/IPv4 ARP only: htype 1, ptype IPv4, hlen 6, plen 4.
        if be16(l3, 0)? != 1 || be16(l3, 2)? != ethertype::IPV4 || l3.get(4..6)? != [6, 4] {
            return None;
        }
        Some(Arp {
            op: be16(l3, 6)?,
            sha: l3.get(8..14)?.try_into().ok()?,
            spa: ipv4_at(l3, 14)?,
            tpa: ipv4_at(l3, 24)?,
        })
    }
}

#[cfg(test)]
pub mod tests {
    //! Frames for the tests of this crate.

    use super::*;

    pub const A: [u8; 6] = [2, 0x76, 10, 1, 1, 2];
    pub const B: [u8; 6] = [2, 0x76, 10, 1, 1, 3];

    fn eth(ethertype: u16, l3: &[u8]) -> Vec<u8> {
        let mut f = [&B[..], &A[..], &ethertype.to_be_bytes()].concat();
        f.extend_from_slice(l3);
        f
    }

    /// An IPv4 header (no options) for `proto` from `src` to `dst`, then `l4`.
    pub fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
        let total = (20 + l4.len()) as u16;
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend_from_slice(l4);
        eth(ethertype::IPV4, &h)
    }

    /// A TCP segment with `flags` and `payload` from `src:sport` to `dst:dport`.
    pub fn tcp(
        src: [u8; 4],
        sport: u16,
        dst: [u8; 4],
        dport: u16,
        flags: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut t = [&sport.to_be_bytes()[..], &dport.to_be_bytes()].concat();
        t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        t.extend_from_slice(payload);
        ipv4(TCP, src, dst, &t)
    }

    pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
        let len = (8 + payload.len()) as u16;
        let mut u = [
            &sport.to_be_bytes()[..],
            &dport.to_be_bytes(),
            &len.to_be_bytes(),
            &[0, 0],
        ]
        .concat();
        u.extend_from_slice(payload);
        ipv4(UDP, src, dst, &u)
    }

    /// An ICMP echo request (type 8) or reply (0).
    pub fn echo(src: [u8; 4], dst: [u8; 4], kind: u8, id: u16, seq: u16) -> Vec<u8> {
        let mut i = vec![kind, 0, 0, 0];
        i.extend_from_slice(&id.to_be_bytes());
        i.extend_from_slice(&seq.to_be_bytes());
        i.extend_from_slice(&[0xab; 8]);
        ipv4(ICMP, src, dst, &i)
    }

    /// An ARP request (op 1) from `spa` for `tpa`, or reply (op 2).
    pub fn arp(op: u16, spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
        let mut a = vec![0, 1, 8, 0, 6, 4];
        a.extend_from_slice(&op.to_be_bytes());
        a.extend_from_slice(&A);
        a.extend_from_slice(&spa);
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&tpa);
        eth(ethertype::ARP, &a)
    }

    pub fn other(ethertype: u16) -> Vec<u8> {
        eth(ethertype, &[0; 46])
    }

    #[test]
    fn headers_are_read_through_vlan_tags_and_short_frames_parse_as_far_as_they_go() {
        let f = tcp([10, 1, 1, 2], 40000, [10, 1, 1, 3], 80, 0x02, b"");
        let p = Packet::parse(&f).unwrap();
        let Net::Ipv4(ip) = &p.net else { panic!() };
        assert_eq!(
            (ip.src, ip.dst, ip.proto),
            ([10, 1, 1, 2].into(), [10, 1, 1, 3].into(), TCP)
        );
        assert_eq!(ip.ports(), Some((40000, 80)));
        // The same behind an 802.1Q tag.
        let tagged = [&f[..12], &[0x81, 0, 0, 5], &f[12..]].concat();
        let p = Packet::parse(&tagged).unwrap();
        assert!(matches!(&p.net, Net::Ipv4(ip) if ip.ports() == Some((40000, 80))));
        // A later fragment has no ports.
        let mut frag = f.clone();
        frag[14 + 6..14 + 8].copy_from_slice(&[0, 10]);
        let p = Packet::parse(&frag).unwrap();
        assert!(matches!(&p.net, Net::Ipv4(ip) if ip.ports().is_none()));
        // Truncated: parses as far as it goes.
        assert!(Packet::parse(&f[..13]).is_none());
        assert!(matches!(Packet::parse(&f[..20]).unwrap().net, Net::Other));
        let p = Packet::parse(&f[..14 + 20 + 2]).unwrap();
        assert!(matches!(&p.net, Net::Ipv4(ip) if ip.ports().is_none()));
        let a = arp(1, [10, 1, 1, 2], [10, 1, 1, 3]);
        let Net::Arp(arp) = Packet::parse(&a).unwrap().net else {
            panic!()
        };
        assert_eq!(
            (arp.op, arp.spa, arp.tpa),
            (1, [10, 1, 1, 2].into(), [10, 1, 1, 3].into())
        );
    }
}
