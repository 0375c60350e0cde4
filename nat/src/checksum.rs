//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Translation changes a few 16-bit words of a packet (an address, a port), so checksums are
//! patched from the old and new words instead of being recomputed over the whole payload:
//! that keeps the cost per packet independent of its size, and GSO super-frames of 64 KiB cost
//! the same as a bare ACK. Two forms of the transport checksum field exist on the datapath:
//! - complete: the field holds `~sum`; updated with `HC' = ~(~HC + ~m + m')` (RFC 1624 eqn 3);
//! - partial (`NEEDS_CSUM` offload): the field holds the non-complemented folded pseudo-header
//!   sum and the rest is added later by whoever finishes the checksum; updated with
//!   `field' = fold(field + ~m + m')`.

/// One's complement sum of `data` as big-endian 16-bit words (a trailing odd byte is padded with
/// zero), added to `initial`. Not folded: pass it to [`fold`] or [`finish`].
pub fn sum(data: &[u8], initial: u64) -> u64 {
    let mut acc = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a 64-bit accumulator to 16 bits with end-around carries.
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field value for a sum: its complement.
#[inline]
pub fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// Sum of the IPv4 pseudo-header of a TCP or UDP segment of `len` bytes.
#[inline]
pub fn pseudo_header(src: u32, dst: u32, proto: u8, len: u16) -> u64 {
    u64::from(src >> 16)
        + u64::from(src & 0xffff)
        + u64::from(dst >> 16)
        + u64::from(dst & 0xffff)
        + u64::from(proto)
        + u64::from(len)
}

/// The accumulated difference `~m + m'` of the words a translation changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta(u64);

impl Delta {
    /// A 16-bit word changes from `old` to `new`.
    #[inline]
    pub fn word(&mut self, old: u16, new: u16) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// A 32-bit field (an IPv4 address) changes from `old` to `new`.
    #[inline]
    pub fn addr(&mut self, old: u32, new: u32) {
        self.word((old >> 16) as u16, (new >> 16) as u16);
        self.word(old as u16, new as u16);
    }

    /// Updates a complete checksum field (RFC 1624 eqn 3).
    #[inline]
    pub fn apply_full(self, field: u16) -> u16 {
        !fold(u64::from(!field) + self.0)
    }

    /// Updates a partial (`NEEDS_CSUM`) field: the non-complemented pseudo-header sum.
    #[inline]
    pub fn apply_partial(self, field: u16) -> u16 {
        fold(u64::from(field) + self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071's worked example: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)), 0xddf2);
        assert_eq!(finish(sum(&data, 0)), !0xddf2);
    }

    #[test]
    fn odd_length_is_zero_padded() {
        assert_eq!(fold(sum(&[0x12, 0x34, 0x56], 0)), 0x1234 + 0x5600);
    }

    #[test]
    fn incremental_word_matches_recompute() {
        let mut data = [0x45u8, 0x00, 0x12, 0x34, 0xab, 0xcd, 0xff, 0xff];
        let hc = finish(sum(&data, 0));
        let mut d = Delta::default();
        d.word(0xabcd, 0x0102);
        data[4..6].copy_from_slice(&[0x01, 0x02]);
        assert_eq!(d.apply_full(hc), finish(sum(&data, 0)));
    }
}
