//! The hasher of the forwarding table. Keys are MAC addresses (48-bit integers) and a frame
//! needs two lookups, so SipHash would be a large share of the per-frame budget. Source MACs
//! are chosen by the containers, though, so the hash must not be predictable: a folded
//! 64x64->128-bit multiply keyed with a per-table random seed is one multiplication and
//! leaves an attacker no way to aim collisions at one bucket.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// Odd constant with well-spread bits (2^64 / golden ratio).
const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

#[derive(Debug, Clone, Copy)]
pub(crate) struct MacHashBuilder {
    seed: u64,
}

impl MacHashBuilder {
    /// Seeded from std's per-process random keys.
    pub fn random() -> MacHashBuilder {
        MacHashBuilder {
            seed: RandomState::new().hash_one(u64::from_le_bytes(*b"vswitch!")),
        }
    }
}

impl BuildHasher for MacHashBuilder {
    type Hasher = MacHasher;

    #[inline]
    fn build_hasher(&self) -> MacHasher {
        MacHasher { state: self.seed }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct MacHasher {
    state: u64,
}

#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hasher for MacHasher {
    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.state = folded_multiply(self.state ^ x, MULTIPLIER);
    }

    /// Only `u64` keys are hashed in this crate; other input is folded in 8 bytes at a time.
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn sequential_macs_spread_over_buckets() {
        let b = MacHashBuilder::random();
        // Low 10 bits (a 1024-bucket table) of 1024 MACs that differ only in their top 10 bits.
        let buckets: HashSet<u64> = (0..1024u64)
            .map(|i| b.hash_one(0x0000_0a01_0102 | (i << 38)) & 1023)
            .collect();
        assert!(buckets.len() > 500, "{} distinct buckets", buckets.len());
        // And MACs that differ only in their low bits (a NIC's serial number).
        let buckets: HashSet<u64> = (0..1024u64)
            .map(|i| b.hash_one(0x0276_0a00_0000 | (i << 4)) & 1023)
            .collect();
        assert!(buckets.len() > 500, "{} distinct buckets", buckets.len());
    }
}
