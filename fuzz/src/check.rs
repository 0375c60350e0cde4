//! Frame parsing and checksums written independently of the NAT's own (`nat/src/wire.rs`,
//! `nat/src/checksum.rs`), so that a bug shared by the code under test and its check cannot
//! hide: a naive byte-pair checksum, explicit offsets, and smoltcp's parsers as a second
//! opinion on the frames the NAT writes.
//!
//! smoltcp's `verify_checksum` always answers `true` when built with `--cfg fuzzing` (as
//! cargo-fuzz builds), which is why checksums are verified here by hand and compared with
//! smoltcp's only in ordinary builds.

use std::net::Ipv4Addr;

use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet};

/// `[virtio_net_hdr]` length.
pub const VNET: usize = 10;
/// Offset of the IPv4 header in a frame.
pub const IP: usize = VNET + 14;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

/// Naive one's complement sum of byte pairs, folded (0 only if every word is 0).
pub fn ones_sum(parts: &[&[u8]]) -> u16 {
    let mut s: u64 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => s += u64::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        s += u64::from(hi) << 8;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

pub fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[..4].copy_from_slice(&src.octets());
    p[4..8].copy_from_slice(&dst.octets());
    p[9] = proto;
    p[10..].copy_from_slice(&(len as u16).to_be_bytes());
    p
}

pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// What the fuzzer reads of a frame `[vnet][Ethernet][IPv4]...`, as the datapath documents it:
/// the packet must fit the frame (which may be longer: Ethernet padding), but a GSO super-frame
/// may carry a total length of 0 (the packet then runs to the end of the frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4View {
    pub vnet_flags: u8,
    pub gso_type: u8,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub src_mac: [u8; 6],
    pub ihl: usize,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    /// Flags and fragment offset.
    pub frag: u16,
    /// Offset of the transport header.
    pub l4: usize,
    /// End of the IPv4 packet in the frame.
    pub end: usize,
}

/// How a frame reads at the IPv4 level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Too short for the virtio-net and Ethernet headers' EtherType.
    Short,
    /// Not IPv4 (ARP, IPv6...).
    NotIpv4,
    /// IPv4 EtherType but no valid IPv4 header.
    BadIpv4,
    /// A valid IPv4 header whose total length is below its own length or past the frame.
    BadLength,
    Ipv4(Ipv4View),
}

/// An Ethernet frame with a VLAN tag (802.1Q, or 802.1ad's outer tag) where the EtherType is.
pub fn is_tagged(f: &[u8]) -> bool {
    f.len() >= IP && matches!(be16(f, VNET + 12), 0x8100 | 0x88a8)
}

pub fn parse(f: &[u8]) -> Parsed {
    if f.len() < IP {
        return Parsed::Short;
    }
    if be16(f, VNET + 12) != 0x0800 {
        return Parsed::NotIpv4;
    }
    let ip = &f[IP..];
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return Parsed::BadIpv4;
    }
    let ihl = usize::from(ip[0] & 15) * 4;
    if ihl < 20 || ihl > ip.len() {
        return Parsed::BadIpv4;
    }
    let total = usize::from(be16(ip, 2));
    let end = if total == 0 && f[1] != 0 {
        f.len()
    } else if total < ihl || IP + total > f.len() {
        return Parsed::BadLength;
    } else {
        IP + total
    };
    let mut src_mac = [0u8; 6];
    src_mac.copy_from_slice(&f[VNET + 6..VNET + 12]);
    Parsed::Ipv4(Ipv4View {
        vnet_flags: f[0],
        gso_type: f[1],
        gso_size: u16::from_le_bytes([f[4], f[5]]),
        csum_start: u16::from_le_bytes([f[6], f[7]]),
        csum_offset: u16::from_le_bytes([f[8], f[9]]),
        src_mac,
        ihl,
        src: ip_at(ip, 12),
        dst: ip_at(ip, 16),
        proto: ip[9],
        ttl: ip[8],
        frag: be16(ip, 6),
        l4: IP + ihl,
        end,
    })
}

impl Ipv4View {
    pub fn is_fragment(&self) -> bool {
        self.frag & 0x3fff != 0
    }

    pub fn l4<'a>(&self, f: &'a [u8]) -> &'a [u8] {
        &f[self.l4..self.end]
    }

    /// The TCP header length, if the segment has a valid one.
    pub fn tcp_hlen(&self, f: &[u8]) -> Option<usize> {
        let l4 = self.l4(f);
        if l4.len() < 20 {
            return None;
        }
        let hlen = usize::from(l4[12] >> 4) * 4;
        (20..=l4.len()).contains(&hlen).then_some(hlen)
    }

    /// Ports of a TCP/UDP header long enough to hold them.
    pub fn ports(&self, f: &[u8]) -> Option<(u16, u16)> {
        let l4 = self.l4(f);
        (l4.len() >= 4).then(|| (be16(l4, 0), be16(l4, 2)))
    }

    /// The NEEDS_CSUM offload points at the transport checksum field at `field`.
    pub fn offload_at(&self, field: usize) -> bool {
        usize::from(self.csum_start) + VNET == self.l4 && usize::from(self.csum_offset) == field
    }
}

/// The IPv4 header checksum is right.
pub fn ip_csum_ok(f: &[u8], v: &Ipv4View) -> bool {
    ones_sum(&[&f[IP..IP + v.ihl]]) == 0xffff
}

/// The TCP checksum is right: complete, or (`NEEDS_CSUM`) a partial sum that finishing would
/// make right, i.e. the folded pseudo-header sum.
pub fn tcp_csum_ok(f: &[u8], v: &Ipv4View) -> bool {
    let l4 = v.l4(f);
    if l4.len() < 18 {
        return false;
    }
    let ps = pseudo(v.src, v.dst, TCP, l4.len());
    if v.vnet_flags & 1 != 0 {
        // What the offload does: sum from the transport header (the field included) to the
        // end, store the complement. The result must then verify.
        let mut seg = l4.to_vec();
        let c = !ones_sum(&[&seg]);
        seg[16..18].copy_from_slice(&c.to_be_bytes());
        ones_sum(&[&ps, &seg]) == 0xffff
    } else {
        ones_sum(&[&ps, l4]) == 0xffff
    }
}

/// A frame the NAT wrote: `[zeroed vnet][Ethernet to dst_mac from gw_mac][IPv4 src -> dst,
/// no options, DF, TTL 64, right checksum and total length]`. Returns the transport part.
/// Checked by hand, then by smoltcp.
pub fn written(
    f: &[u8],
    dst_mac: [u8; 6],
    gw_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
) -> &[u8] {
    assert!(f.len() >= IP + 20, "written frame too short: {}", f.len());
    assert_eq!(
        f[..VNET],
        [0; VNET],
        "written frame: virtio-net header not zero"
    );
    assert_eq!(
        f[VNET..VNET + 6],
        dst_mac,
        "written frame: Ethernet destination"
    );
    assert_eq!(
        f[VNET + 6..VNET + 12],
        gw_mac,
        "written frame: Ethernet source"
    );
    assert_eq!(be16(f, VNET + 12), 0x0800, "written frame: EtherType");
    let ip = &f[IP..];
    assert_eq!(ip[0], 0x45, "written frame: version/IHL");
    assert_eq!(
        usize::from(be16(ip, 2)),
        ip.len(),
        "written frame: total length"
    );
    assert_eq!(be16(ip, 6), 0x4000, "written frame: DF, not a fragment");
    assert_eq!(ip[8], 64, "written frame: TTL");
    assert_eq!(ip[9], proto, "written frame: protocol");
    assert_eq!(
        ones_sum(&[&ip[..20]]),
        0xffff,
        "written frame: IPv4 checksum"
    );
    assert_eq!(
        (ip_at(ip, 12), ip_at(ip, 16)),
        (src, dst),
        "written frame: addresses"
    );
    let l4 = &ip[20..];
    match proto {
        TCP | UDP => {
            if proto == UDP {
                // 0 would mean "no checksum": a sum of 0 is sent as 0xffff (RFC 768).
                assert_ne!(be16(l4, 6), 0, "written frame: UDP checksum 0");
            }
            let ps = pseudo(src, dst, proto, l4.len());
            assert_eq!(
                ones_sum(&[&ps, l4]),
                0xffff,
                "written frame: transport checksum"
            );
        }
        _ => assert_eq!(ones_sum(&[l4]), 0xffff, "written frame: ICMP checksum"),
    }
    second_opinion(f, proto);
    l4
}

/// smoltcp must read a written frame the same way.
fn second_opinion(f: &[u8], proto: u8) {
    let eth = EthernetFrame::new_checked(&f[VNET..]).expect("smoltcp: Ethernet");
    assert_eq!(eth.ethertype(), EthernetProtocol::Ipv4);
    let ip = Ipv4Packet::new_checked(eth.payload()).expect("smoltcp: IPv4");
    assert!(ip.verify_checksum(), "smoltcp: IPv4 checksum");
    assert!(!ip.more_frags() && ip.frag_offset() == 0);
    let (src, dst) = (
        IpAddress::Ipv4(ip.src_addr()),
        IpAddress::Ipv4(ip.dst_addr()),
    );
    let payload = ip.payload();
    match proto {
        TCP => {
            assert_eq!(ip.next_header(), IpProtocol::Tcp);
            let tcp = smoltcp::wire::TcpPacket::new_checked(payload).expect("smoltcp: TCP");
            assert!(tcp.verify_checksum(&src, &dst), "smoltcp: TCP checksum");
        }
        UDP => {
            assert_eq!(ip.next_header(), IpProtocol::Udp);
            let udp = smoltcp::wire::UdpPacket::new_checked(payload).expect("smoltcp: UDP");
            assert_eq!(usize::from(udp.len()), payload.len(), "smoltcp: UDP length");
            assert!(udp.verify_checksum(&src, &dst), "smoltcp: UDP checksum");
        }
        _ => {
            assert_eq!(ip.next_header(), IpProtocol::Icmp);
            let icmp = smoltcp::wire::Icmpv4Packet::new_checked(payload).expect("smoltcp: ICMP");
            assert!(icmp.verify_checksum(), "smoltcp: ICMP checksum");
        }
    }
}

/// On ordinary builds, smoltcp's verdict on an IPv4 header checksum, to cross-check
/// [`ip_csum_ok`] (under `--cfg fuzzing` smoltcp answers `true` whatever the bytes).
pub fn cross_check_ip_csum(f: &[u8], v: &Ipv4View, mine: bool) {
    if cfg!(fuzzing) {
        return;
    }
    if let Ok(p) = Ipv4Packet::new_checked(&f[IP..v.end]) {
        if usize::from(p.header_len()) == v.ihl {
            assert_eq!(
                p.verify_checksum(),
                mine,
                "IPv4 checksum: smoltcp disagrees"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ones_sum_matches_rfc1071_example() {
        // RFC 1071 section 3: 0001 f203 f4f5 f6f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(ones_sum(&[&data]), 0xddf2);
        // Split anywhere, even at odd offsets: the same sum.
        assert_eq!(ones_sum(&[&data[..3], &data[3..]]), 0xddf2);
        assert_eq!(ones_sum(&[&[0xab]]), 0xab00);
    }
}
