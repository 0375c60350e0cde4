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
    let mut sum: u64 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
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
        assert_eq!(finish(&data, 20, 0), None);
    }
}
