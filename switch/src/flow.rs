//! Which flow a frame belongs to, as a number: the edge uses it to keep every frame of a flow
//! on one queue of a multi-queue device (the TAP sends a flow's replies back through the queue
//! its frames last came in by).

use crate::frame::{ETHERTYPE_IPV4, ETH_HDR_LEN};

const ETHERTYPE_IPV6: u16 = 0x86dd;
const TCP: u8 = 6;
const UDP: u8 = 17;

/// A hash of the IP addresses and TCP/UDP ports of `frame` (an Ethernet frame): the same for
/// every frame of a flow, whichever its direction; 0 for a frame that is not IP. Never panics.
pub fn flow_hash(frame: &[u8]) -> u32 {
    let ethertype = match frame.get(12..14) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => return 0,
    };
    let ip = &frame[ETH_HDR_LEN.min(frame.len())..];
    let (addresses, l4) = match ethertype {
        ETHERTYPE_IPV4 => {
            let Some(header) = ip.get(..20) else { return 0 };
            let ihl = usize::from(header[0] & 0x0f) * 4;
            // Only the first fragment (or none) carries the ports.
            let first = u16::from_be_bytes([header[6], header[7]]) & 0x1fff == 0;
            let l4 = (first && matches!(header[9], TCP | UDP)).then(|| ip.get(ihl..ihl + 4));
            (&header[12..20], l4.flatten())
        }
        ETHERTYPE_IPV6 => {
            let Some(header) = ip.get(..40) else { return 0 };
            let l4 = matches!(header[6], TCP | UDP).then(|| ip.get(40..44));
            (&header[8..40], l4.flatten())
        }
        _ => return 0,
    };
    // XOR is symmetric: source and destination may swap places.
    let mut h = addresses.chunks_exact(4).fold(0u32, |h, w| {
        h ^ u32::from_be_bytes([w[0], w[1], w[2], w[3]])
    });
    if let Some(&[s0, s1, d0, d1]) = l4 {
        h ^= u32::from(u16::from_be_bytes([s0, s1]) ^ u16::from_be_bytes([d0, d1]));
    }
    // Mix, so that the low bits (a queue number) depend on every input bit.
    h = (h ^ (h >> 16)).wrapping_mul(0x045d_9f3b);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + TCP frame with `payload` bytes of data.
    fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend([0x08, 0x00, 0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, TCP, 0, 0]);
        f.extend(src);
        f.extend(dst);
        f.extend(sport.to_be_bytes());
        f.extend(dport.to_be_bytes());
        f.extend(vec![0u8; 16 + payload]);
        f
    }

    #[test]
    fn one_flow_one_hash_either_way() {
        let (a, b) = ([10, 1, 1, 2], [10, 1, 1, 3]);
        let h = flow_hash(&tcp4(a, b, 40000, 80, 0));
        assert_ne!(h, 0);
        assert_eq!(flow_hash(&tcp4(a, b, 40000, 80, 1400)), h);
        assert_eq!(flow_hash(&tcp4(b, a, 80, 40000, 0)), h);
        assert_ne!(flow_hash(&tcp4(a, b, 40001, 80, 0)), h);
    }

    #[test]
    fn flows_spread_over_two_queues() {
        let queue = |sport| flow_hash(&tcp4([10, 1, 1, 2], [10, 1, 1, 3], sport, 80, 0)) % 2;
        let ones = (40000..40100).filter(|&p| queue(p) == 1).count();
        assert!((30..=70).contains(&ones), "{ones} of 100 flows on queue 1");
    }

    #[test]
    fn other_frames_and_short_ones() {
        let arp = [vec![0u8; 12], vec![0x08, 0x06], vec![0u8; 28]].concat();
        assert_eq!(flow_hash(&arp), 0);
        let f = tcp4([10, 1, 1, 2], [10, 1, 1, 3], 1, 2, 0);
        for len in 0..f.len() {
            flow_hash(&f[..len]); // never panics
        }
        let mut v6 = vec![0u8; 12];
        v6.extend([0x86, 0xdd, 0x60, 0, 0, 0, 0, 20, UDP, 64]);
        v6.extend((0..32).map(|i| i as u8));
        v6.extend([0, 53, 0x9c, 0x40]);
        assert_ne!(flow_hash(&v6), 0);
    }
}
