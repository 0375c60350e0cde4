//! Finishing a partial transport checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`) in a capture's copy
//! of a frame, as the kernel does before it hands such a frame to a device that cannot
//! (`skb_checksum_help`): the field holds the pseudo-header's sum, the rest is summed from
//! `csum_start` to the end. A capture then shows the checksum the receiver verifies, not the
//! placeholder that offloading leaves (tcpdump -vv would call it wrong).

/// The checksum to store at `start + offset` of `eth`, or `None` if the header points outside
/// the frame.
pub fn finish(eth: &[u8], start: usize, offset: usize) -> Option<u16> {
    let data = eth.get(start..)?;
    if offset + 2 > data.len() {
        return None;
    }
    // The one's complement sum of 16-bit words, taken 32 bits at a time (the carries land in
    // the upper half of the accumulator, folded at the end: the same sum, half the additions).
    let mut sum: u64 = 0;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        sum += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let mut rest = words.remainder().chunks_exact(2);
    for c in &mut rest {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = rest.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // 0 would mean "no checksum" to UDP: the kernel writes 0xffff instead (CSUM_MANGLED_0).
    Some(match !(sum as u16) {
        0 => 0xffff,
        c => c,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_checksum_is_finished_as_the_receiver_checks_it() {
        // RFC 1071's example: the words 0001 f203 f4f5 f6f7 sum (with carries) to ddf2, whose
        // complement is 220d. The field (the last word, zero) holds the pseudo-header's part.
        let mut data = vec![0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7, 0, 0];
        assert_eq!(finish(&data, 0, 8), Some(0x220d));
        // With the checksum stored, the whole sums to 0xffff: what a receiver verifies.
        data[8..].copy_from_slice(&0x220du16.to_be_bytes());
        // (and a result of 0 is written as 0xffff).
        assert_eq!(finish(&data, 0, 8), Some(0xffff));
        // An odd length pads with a zero byte: ffff + 0000 + 0100 folds to 0100.
        assert_eq!(finish(&[0xff, 0xff, 0, 0, 0x01], 0, 2), Some(0xfeff));
        // A header that points outside the frame is refused.
        assert_eq!(finish(&data, 9, 0), None);
        // Any length, any content: the same as the plain sum of 16-bit words.
        let plain = |d: &[u8]| {
            let mut sum: u64 = (d.chunks(2))
                .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
                .sum();
            while sum >> 16 != 0 {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            match !(sum as u16) {
                0 => 0xffff,
                c => c,
            }
        };
        let bytes: Vec<u8> = (0..4099u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for len in [2, 3, 4, 5, 6, 7, 1500, 4097, 4099] {
            assert_eq!(
                finish(&bytes[..len], 0, 0),
                Some(plain(&bytes[..len])),
                "{len}"
            );
        }
        assert_eq!(finish(&data, 20, 0), None);
    }
}
