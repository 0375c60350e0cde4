//! Checked views of the frames the datapath carries: `[virtio_net_hdr][Ethernet][IPv4][L4]`.
//!
//! Every length and offset is validated once, when a view is built from the byte slice, so no
//! input bytes can make the NAT index out of bounds; the translation code then works on the
//! offsets a view vouches for. The views are lenient where the kernel is (GSO super-frames whose
//! IPv4 total length is the super-frame's, or 0) and strict where a wrong length would make the
//! NAT read or quote bytes that are not the packet's.

use thiserror::Error;

use vswitch_switch::vnet::VnetHdr;
pub use vswitch_switch::vnet::{
    F_DATA_VALID as VNET_F_DATA_VALID, F_NEEDS_CSUM as VNET_F_NEEDS_CSUM,
    GSO_NONE as VNET_GSO_NONE, VNET_HDR_LEN,
};

/// Offset of the Ethernet header in a frame.
pub const ETH_OFF: usize = VNET_HDR_LEN;
/// Length of an untagged Ethernet header.
pub const ETH_HDR_LEN: usize = 14;
/// Offset of the IPv4 header in a frame.
pub const IP_OFF: usize = ETH_OFF + ETH_HDR_LEN;

pub(crate) use vswitch_switch::ethertype::IPV4 as ETHERTYPE_IPV4;
pub(crate) const IPPROTO_ICMP: u8 = 1;
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;

pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_RST: u8 = 0x04;
pub(crate) const TCP_ACK: u8 = 0x10;

/// Offset of the checksum field in a TCP header.
pub(crate) const TCP_CSUM_OFF: usize = 16;

pub(crate) const ICMP_ECHO_REPLY: u8 = 0;
pub(crate) const ICMP_ECHO_REQUEST: u8 = 8;

/// Why bytes are not a frame the NAT can translate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("frame truncated")]
    Truncated,
    #[error("IP version is not 4")]
    BadVersion,
    #[error("bad IPv4 header length")]
    BadHeaderLength,
    #[error("bad IPv4 total length")]
    BadTotalLength,
    #[error("bad TCP data offset")]
    BadTcpOffset,
    #[error("bad UDP length")]
    BadUdpLength,
    #[error("checksum offload does not point at the transport checksum")]
    BadChecksumOffload,
}

#[inline]
pub(crate) fn rd16(b: &[u8], off: usize) -> Option<u16> {
    match b.get(off..off + 2) {
        Some(&[x, y]) => Some(u16::from_be_bytes([x, y])),
        _ => None,
    }
}

#[inline]
pub(crate) fn rd32(b: &[u8], off: usize) -> Option<u32> {
    match b.get(off..off + 4) {
        Some(&[w, x, y, z]) => Some(u32::from_be_bytes([w, x, y, z])),
        _ => None,
    }
}

/// Writes a big-endian u16; out-of-range writes are ignored (callers write at validated offsets).
#[inline]
pub(crate) fn wr16(b: &mut [u8], off: usize, v: u16) {
    if let Some(d) = b.get_mut(off..off + 2) {
        d.copy_from_slice(&v.to_be_bytes());
    }
}

/// Writes a big-endian u32; out-of-range writes are ignored.
#[inline]
pub(crate) fn wr32(b: &mut [u8], off: usize, v: u32) {
    if let Some(d) = b.get_mut(off..off + 4) {
        d.copy_from_slice(&v.to_be_bytes());
    }
}

/// A frame carrying an IPv4 packet: the virtio-net header fields the NAT needs and the offsets
/// of the IPv4 header's parts, all within the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ipv4Frame {
    pub vnet_flags: u8,
    pub gso_type: u8,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub src: u32,
    pub dst: u32,
    pub proto: u8,
    pub ttl: u8,
    /// More-fragments set or a non-zero fragment offset.
    pub fragment: bool,
    /// IPv4 header length in bytes (20..=60).
    pub ihl: usize,
    /// Offset of the transport header in the frame (`IP_OFF + ihl`).
    pub l4: usize,
    /// End of the IPv4 packet in the frame (`l4 <= end <= frame.len()`).
    pub end: usize,
}

impl Ipv4Frame {
    /// `Ok(None)`: a well-formed frame that is not IPv4 (ARP, IPv6, VLAN-tagged...).
    pub fn parse(frame: &[u8]) -> Result<Option<Ipv4Frame>, WireError> {
        let Some(ethertype) = rd16(frame, ETH_OFF + 12) else {
            return Err(WireError::Truncated);
        };
        if ethertype != ETHERTYPE_IPV4 {
            return Ok(None);
        }
        let ip = frame.get(IP_OFF..).ok_or(WireError::Truncated)?;
        if ip.len() < 20 {
            return Err(WireError::Truncated);
        }
        if ip[0] >> 4 != 4 {
            return Err(WireError::BadVersion);
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ihl < 20 {
            return Err(WireError::BadHeaderLength);
        }
        if ihl > ip.len() {
            return Err(WireError::Truncated);
        }
        let vnet = VnetHdr::parse(frame).ok_or(WireError::Truncated)?;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        // A GSO super-frame may carry 0 (a packet too long for the field); otherwise the
        // packet must fit the frame (which may be longer: Ethernet padding).
        let end = if total == 0 && vnet.is_gso() {
            frame.len()
        } else if total < ihl || IP_OFF + total > frame.len() {
            return Err(WireError::BadTotalLength);
        } else {
            IP_OFF + total
        };
        let frag = u16::from_be_bytes([ip[6], ip[7]]);
        Ok(Some(Ipv4Frame {
            vnet_flags: vnet.flags,
            gso_type: vnet.gso_type,
            gso_size: vnet.gso_size,
            csum_start: vnet.csum_start,
            csum_offset: vnet.csum_offset,
            src: u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]),
            dst: u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]),
            proto: ip[9],
            ttl: ip[8],
            fragment: frag & 0x3fff != 0,
            ihl,
            l4: IP_OFF + ihl,
            end,
        }))
    }

    /// Whether the IPv4 header's checksum is right (it sums to all ones, RFC 1071).
    pub fn header_checksum_ok(&self, frame: &[u8]) -> bool {
        frame
            .get(IP_OFF..self.l4)
            .is_some_and(|header| crate::checksum::finish(crate::checksum::sum(header, 0)) == 0)
    }

    /// A GSO super-frame, to be segmented downstream.
    #[inline]
    pub fn is_gso(&self) -> bool {
        self.gso_type != VNET_GSO_NONE
    }

    /// Length of the IPv4 packet as carried in this frame.
    #[inline]
    pub fn l3_len(&self) -> usize {
        self.end - IP_OFF
    }

    /// The transport part of the packet.
    #[inline]
    pub fn l4_bytes<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        frame.get(self.l4..self.end).unwrap_or(&[])
    }

    /// Whether the transport checksum field (at `field` within the transport header) holds a
    /// partial sum. A `NEEDS_CSUM` frame whose offload points anywhere else is refused: the NAT
    /// would not know what the field means.
    pub fn partial_csum(&self, field: usize) -> Result<bool, WireError> {
        if self.vnet_flags & VNET_F_NEEDS_CSUM == 0 {
            return Ok(false);
        }
        if usize::from(self.csum_start) + ETH_OFF == self.l4
            && usize::from(self.csum_offset) == field
        {
            Ok(true)
        } else {
            Err(WireError::BadChecksumOffload)
        }
    }
}

/// The fields of a TCP header the NAT reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpHdr {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub flags: u8,
    /// Header length in bytes (20..=60).
    pub len: usize,
}

impl TcpHdr {
    /// `l4`: the transport part of the packet.
    pub fn parse(l4: &[u8]) -> Result<TcpHdr, WireError> {
        if l4.len() < 20 {
            return Err(WireError::Truncated);
        }
        let len = usize::from(l4[12] >> 4) * 4;
        if len < 20 || len > l4.len() {
            return Err(WireError::BadTcpOffset);
        }
        Ok(TcpHdr {
            sport: u16::from_be_bytes([l4[0], l4[1]]),
            dport: u16::from_be_bytes([l4[2], l4[3]]),
            seq: u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]),
            flags: l4[13],
            len,
        })
    }
}

/// The fields of a UDP header the NAT reads, with the payload's extent in the transport part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UdpHdr {
    pub sport: u16,
    pub dport: u16,
    /// End of the payload within the transport part (8 <= payload_end <= l4.len()).
    pub payload_end: usize,
}

impl UdpHdr {
    /// `gso`: a UDP GSO super-frame, whose length field does not describe the whole buffer; its
    /// payload runs to the end of the packet.
    pub fn parse(l4: &[u8], gso: bool) -> Result<UdpHdr, WireError> {
        if l4.len() < 8 {
            return Err(WireError::Truncated);
        }
        let len = usize::from(u16::from_be_bytes([l4[4], l4[5]]));
        let payload_end = if gso {
            l4.len()
        } else if len < 8 || len > l4.len() {
            return Err(WireError::BadUdpLength);
        } else {
            len
        };
        Ok(UdpHdr {
            sport: u16::from_be_bytes([l4[0], l4[1]]),
            dport: u16::from_be_bytes([l4[2], l4[3]]),
            payload_end,
        })
    }
}

/// The first 8 bytes of an ICMP message; `ident` and `seq` are those of an echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub ident: u16,
    pub seq: u16,
}

impl IcmpHdr {
    pub fn parse(l4: &[u8]) -> Result<IcmpHdr, WireError> {
        if l4.len() < 8 {
            return Err(WireError::Truncated);
        }
        Ok(IcmpHdr {
            kind: l4[0],
            code: l4[1],
            ident: u16::from_be_bytes([l4[4], l4[5]]),
            seq: u16::from_be_bytes([l4[6], l4[7]]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ip: &[u8], vnet: [u8; VNET_HDR_LEN]) -> Vec<u8> {
        let mut f = vnet.to_vec();
        f.extend([0u8; 12]);
        f.extend(ETHERTYPE_IPV4.to_be_bytes());
        f.extend(ip);
        f
    }

    fn ip_header(total: u16) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[9] = IPPROTO_UDP;
        h
    }

    #[test]
    fn non_ipv4_is_none() {
        let mut f = vec![0u8; 60];
        f[ETH_OFF + 12..ETH_OFF + 14].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert_eq!(Ipv4Frame::parse(&f), Ok(None));
    }

    #[test]
    fn total_length_must_fit_the_frame() {
        // A total length past the frame is a lie (a 36-byte packet claiming 1000).
        let mut ip = ip_header(1000).to_vec();
        ip.extend([0u8; 8]);
        let f = frame(&ip, [0; VNET_HDR_LEN]);
        assert_eq!(Ipv4Frame::parse(&f), Err(WireError::BadTotalLength));
        // A shorter total length ends the packet early (Ethernet padding is not payload).
        let mut ip = ip_header(24).to_vec();
        ip.extend([0u8; 30]);
        let f = frame(&ip, [0; VNET_HDR_LEN]);
        assert_eq!(Ipv4Frame::parse(&f).unwrap().unwrap().end, IP_OFF + 24);
    }

    #[test]
    fn zero_total_length_only_for_gso() {
        let mut ip = ip_header(0).to_vec();
        ip.extend([0u8; 8]);
        let f = frame(&ip, [0; VNET_HDR_LEN]);
        assert_eq!(Ipv4Frame::parse(&f), Err(WireError::BadTotalLength));
        let mut vnet = [0u8; VNET_HDR_LEN];
        vnet[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
        let f = frame(&ip, vnet);
        assert_eq!(Ipv4Frame::parse(&f).unwrap().unwrap().end, f.len());
    }

    #[test]
    fn bad_headers() {
        let mut ip = ip_header(20);
        ip[0] = 0x65;
        assert_eq!(
            Ipv4Frame::parse(&frame(&ip, [0; 10])),
            Err(WireError::BadVersion)
        );
        ip[0] = 0x44;
        assert_eq!(
            Ipv4Frame::parse(&frame(&ip, [0; 10])),
            Err(WireError::BadHeaderLength)
        );
        ip[0] = 0x46;
        assert_eq!(
            Ipv4Frame::parse(&frame(&ip, [0; 10])),
            Err(WireError::Truncated)
        );
        assert_eq!(Ipv4Frame::parse(&[0u8; 23]), Err(WireError::Truncated));
    }

    #[test]
    fn tcp_and_udp_lengths() {
        let mut tcp = [0u8; 20];
        tcp[12] = 0x40;
        assert_eq!(TcpHdr::parse(&tcp), Err(WireError::BadTcpOffset));
        tcp[12] = 0x60;
        assert_eq!(TcpHdr::parse(&tcp), Err(WireError::BadTcpOffset));
        tcp[12] = 0x50;
        assert_eq!(TcpHdr::parse(&tcp).unwrap().len, 20);
        let mut udp = [0u8; 12];
        udp[4..6].copy_from_slice(&13u16.to_be_bytes());
        assert_eq!(UdpHdr::parse(&udp, false), Err(WireError::BadUdpLength));
        assert_eq!(UdpHdr::parse(&udp, true).unwrap().payload_end, 12);
        udp[4..6].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(UdpHdr::parse(&udp, false).unwrap().payload_end, 10);
    }
}
