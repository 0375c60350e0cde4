//! Hashing of flow keys. Keys are chosen by containers and by remote hosts, so the hash must not
//! be predictable (or collisions could be aimed at one bucket or one shard), yet it is on the
//! per-packet path, where SipHash would be a large share of the budget: a folded 64x64->128-bit
//! multiply keyed with a per-table random seed costs a few multiplications per 128-bit key.
//!
//! The flow index stores a key's 64-bit keyed hash (its fingerprint) rather than the key, and
//! the flow found is checked against the full key: index buckets of 16 bytes instead of 32 keep
//! more of a large table in the CPU caches. The fingerprint is already a good hash, so the index
//! uses it as is ([`IdentityHasher`]).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// Odd constant with well-spread bits (2^64 / golden ratio).
const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
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

/// Keyed 64-bit fingerprint of a 128-bit flow key.
#[inline]
pub(crate) fn fingerprint(seed: u64, key: u128) -> u64 {
    let a = folded_multiply(seed ^ key as u64, MULTIPLIER);
    let b = folded_multiply(a ^ (key >> 64) as u64, MULTIPLIER);
    // One more round so that the top bits (hashbrown's control byte) depend on every input bit.
    folded_multiply(b, MULTIPLIER)
}

/// Builds [`IdentityHasher`]s.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IdentityBuild;

impl BuildHasher for IdentityBuild {
    type Hasher = IdentityHasher;

    #[inline]
    fn build_hasher(&self) -> IdentityHasher {
        IdentityHasher(0)
    }
}

/// Passes a `u64` that is already a keyed hash through.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.0 = x;
    }

    /// Only `u64` fingerprints are hashed with this hasher; anything else is folded in.
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = folded_multiply(self.0 ^ u64::from_le_bytes(word), MULTIPLIER);
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn keys_differing_in_one_field_spread() {
        let seed = random_seed(1);
        for shift in [0u32, 16, 64, 80, 112] {
            let fps: Vec<u64> = (0..1024u128)
                .map(|i| fingerprint(seed, (0x0a01_0102_u128 << 80) ^ (i << shift)))
                .collect();
            let buckets: HashSet<u64> = fps.iter().map(|f| f & 1023).collect();
            assert!(
                buckets.len() > 500,
                "shift {shift}: {} buckets",
                buckets.len()
            );
            let tops: HashSet<u64> = fps.iter().map(|f| f >> 57).collect();
            assert!(
                tops.len() > 100,
                "shift {shift}: {} control bytes",
                tops.len()
            );
        }
    }

    #[test]
    fn seeds_change_fingerprints() {
        assert_ne!(fingerprint(1, 42), fingerprint(2, 42));
        assert_ne!(fingerprint(1, 42), fingerprint(1, 43));
        assert_ne!(fingerprint(1, 42), fingerprint(1, 42 << 64));
    }
}
