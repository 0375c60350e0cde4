//! Hashing of flow keys. Keys are chosen by containers and by remote hosts, so the hash must not
//! be predictable (or collisions could be aimed at one bucket or one shard), yet it is on the
//! per-packet path, where SipHash would be a large share of the budget: a folded 64x64->128-bit
//! multiply keyed with a per-table random seed costs two multiplications per 128-bit key.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// Odd constant with well-spread bits (2^64 / golden ratio).
const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline]
pub(crate) fn folded_multiply(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// A random 64-bit seed from std's per-process random keys.
pub(crate) fn random_seed(salt: u64) -> u64 {
    RandomState::new().hash_one(salt)
}

/// Keyed hash of a 64-bit value, for choosing a shard.
#[inline]
pub(crate) fn hash64(seed: u64, x: u64) -> u64 {
    folded_multiply(folded_multiply(seed ^ x, MULTIPLIER), MULTIPLIER)
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyHashBuilder {
    seed: u64,
}

impl KeyHashBuilder {
    pub fn random() -> KeyHashBuilder {
        KeyHashBuilder {
            seed: random_seed(0x6e61_7420_6b65_7973),
        }
    }
}

impl BuildHasher for KeyHashBuilder {
    type Hasher = KeyHasher;

    #[inline]
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher { state: self.seed }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyHasher {
    state: u64,
}

impl Hasher for KeyHasher {
    #[inline]
    fn write_u128(&mut self, x: u128) {
        self.write_u64(x as u64);
        self.write_u64((x >> 64) as u64);
    }

    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.state = folded_multiply(self.state ^ x, MULTIPLIER);
    }

    /// Only `u128` keys are hashed in this crate; other input is folded in 8 bytes at a time.
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        // One more round so that the top bits (hashbrown's control byte) depend on every input bit.
        folded_multiply(self.state, MULTIPLIER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn keys_differing_in_one_field_spread() {
        let b = KeyHashBuilder::random();
        for shift in [0u32, 16, 64, 80, 112] {
            let buckets: HashSet<u64> = (0..1024u128)
                .map(|i| b.hash_one((0x0a01_0102_u128 << 80) ^ (i << shift)) & 1023)
                .collect();
            assert!(
                buckets.len() > 500,
                "shift {shift}: {} buckets",
                buckets.len()
            );
            let tops: HashSet<u64> = (0..1024u128)
                .map(|i| b.hash_one((0x0a01_0102_u128 << 80) ^ (i << shift)) >> 57)
                .collect();
            assert!(
                tops.len() > 100,
                "shift {shift}: {} control bytes",
                tops.len()
            );
        }
    }
}
