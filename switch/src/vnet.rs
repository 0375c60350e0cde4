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
}
