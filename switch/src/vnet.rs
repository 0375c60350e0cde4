//! The virtio-net header (`struct virtio_net_hdr`, <linux/virtio_net.h>) that precedes every
//! frame on the daemon's ports: AF_PACKET with `PACKET_VNET_HDR`, the TAP with `IFF_VNET_HDR`.
//! It says whether the frame is a GSO super-frame and whether its transport checksum is partial.
//! Its multi-byte fields are little-endian, as the kernel writes them for packet sockets and
//! TAPs on the little-endian hosts vswitch runs on.

/// Size of `struct virtio_net_hdr`.
pub const VNET_HDR_LEN: usize = 10;

/// `flags`: the transport checksum is partial and must be finished downstream.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum has been verified.
pub const F_DATA_VALID: u8 = 2;
/// `gso_type` of an ordinary frame (not a super-frame).
pub const GSO_NONE: u8 = 0;

/// `gso_type` of a UDP super-frame (`VIRTIO_NET_HDR_GSO_UDP_L4`): datagrams the kernel's GRO
/// merged, or that a sender handed down in one `UDP_SEGMENT` send.
pub const GSO_UDP_L4: u8 = 5;

/// The header's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// The header at the start of `frame`; `None` if the frame is shorter than one.
    #[inline]
    pub fn parse(frame: &[u8]) -> Option<VnetHdr> {
        let (h, _) = frame.split_first_chunk::<VNET_HDR_LEN>()?;
        Some(VnetHdr {
            flags: h[0],
            gso_type: h[1],
            hdr_len: u16::from_le_bytes([h[2], h[3]]),
            gso_size: u16::from_le_bytes([h[4], h[5]]),
            csum_start: u16::from_le_bytes([h[6], h[7]]),
            csum_offset: u16::from_le_bytes([h[8], h[9]]),
        })
    }

    /// A GSO super-frame, to be segmented downstream.
    #[inline]
    pub fn is_gso(&self) -> bool {
        self.gso_type != GSO_NONE
    }
}

/// Whether `frame` (`[virtio_net_hdr][Ethernet]`) is a GSO super-frame.
#[inline]
pub fn is_super_frame(frame: &[u8]) -> bool {
    VnetHdr::parse(frame).is_some_and(|h| h.is_gso())
}

/// How many packets `frame` (`[virtio_net_hdr][Ethernet]`) stands for, as the links count them:
/// the datagrams of a UDP super-frame (`gso_size` bytes of payload each, the last maybe
/// shorter); 1 for anything else, a TCP super-frame included (a sender's TSO segment is one
/// packet on its link too).
#[inline]
pub fn datagrams(frame: &[u8]) -> usize {
    match VnetHdr::parse(frame) {
        Some(h) if h.gso_type == GSO_UDP_L4 && h.gso_size > 0 => {
            udp_payload(&frame[VNET_HDR_LEN..])
                .map_or(1, |len| len.div_ceil(usize::from(h.gso_size)).max(1))
        }
        _ => 1,
    }
}

/// The UDP payload's length in an Ethernet frame (VLAN tag, IPv4 options allowed; IPv6 without
/// extension headers), from the frame's own length.
fn udp_payload(eth: &[u8]) -> Option<usize> {
    let (l3, ethertype) = match eth.get(12..14)? {
        [0x81, 0x00] => (18, eth.get(16..18)?),
        t => (14, t),
    };
    let l4 = match ethertype {
        [0x08, 0x00] => l3 + usize::from(eth.get(l3)? & 0x0f) * 4,
        [0x86, 0xdd] => l3 + 40,
        _ => return None,
    };
    eth.len().checked_sub(l4 + 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_super_frames() {
        let mut frame = [0u8; VNET_HDR_LEN + 60];
        assert!(!is_super_frame(&frame));
        frame[..VNET_HDR_LEN].copy_from_slice(&[1, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0]);
        let h = VnetHdr::parse(&frame).unwrap();
        assert_eq!(h.flags, F_NEEDS_CSUM);
        assert!(h.is_gso());
        assert_eq!((h.hdr_len, h.gso_size), (54, 1448));
        assert_eq!((h.csum_start, h.csum_offset), (34, 16));
        assert!(is_super_frame(&frame));
        assert!(!is_super_frame(&frame[..9]));
    }

    #[test]
    fn a_udp_super_frame_counts_its_datagrams() {
        // 10 datagrams of 64 bytes and one of 20, IPv4 without options.
        let mut frame = vec![0u8; VNET_HDR_LEN + 14 + 20 + 8 + 10 * 64 + 20];
        frame[1] = GSO_UDP_L4;
        frame[4..6].copy_from_slice(&64u16.to_le_bytes());
        frame[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14].copy_from_slice(&[0x08, 0x00]);
        frame[VNET_HDR_LEN + 14] = 0x45;
        assert_eq!(datagrams(&frame), 11);
        // With IPv4 options (IHL 6) the payload is 4 bytes shorter: 10 full and one of 16.
        frame[VNET_HDR_LEN + 14] = 0x46;
        assert_eq!(datagrams(&frame), 11);
        // A TCP super-frame, an ordinary frame and a runt count one each.
        frame[1] = 1;
        assert_eq!(datagrams(&frame), 1);
        frame[1] = 0;
        assert_eq!(datagrams(&frame), 1);
        assert_eq!(datagrams(&frame[..VNET_HDR_LEN + 20]), 1);
        // A VLAN-tagged IPv6 one: 3 datagrams of 100 bytes.
        let mut v6 = vec![0u8; VNET_HDR_LEN + 18 + 40 + 8 + 300];
        v6[1] = GSO_UDP_L4;
        v6[4..6].copy_from_slice(&100u16.to_le_bytes());
        v6[VNET_HDR_LEN + 12..VNET_HDR_LEN + 18].copy_from_slice(&[0x81, 0, 0, 5, 0x86, 0xdd]);
        assert_eq!(datagrams(&v6), 3);
    }
}
