//! Maps keyed by process id (tgid), hashed by one multiplication instead of SipHash: the
//! rules look a process up two or three times per event, and SipHash was most of each
//! look-up (about 110 of 175 instructions in the pipeline benchmark). Keys are ids the
//! kernel hands out, not text an attacker chooses, so SipHash's resistance to chosen keys
//! buys nothing here.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hasher},
};

/// A `HashMap` keyed by tgid (or any integer id).
pub type TgidMap<V> = HashMap<u32, V, BuildTgidHasher>;

/// Builds [`TgidHasher`]s.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildTgidHasher;

impl BuildHasher for BuildTgidHasher {
    type Hasher = TgidHasher;
    fn build_hasher(&self) -> TgidHasher {
        TgidHasher(0)
    }
}

/// Fibonacci hashing: the product's high bits (the table's tag) mix every bit of the id,
/// and its low bits (the bucket) stay distinct for ids that differ in their low bits.
#[derive(Clone, Copy, Debug, Default)]
pub struct TgidHasher(u64);

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for TgidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(id)).wrapping_mul(K);
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0.rotate_left(5) ^ id).wrapping_mul(K);
    }
}

#[cfg(test)]
mod tests {
    use super::TgidMap;

    #[test]
    fn a_map_of_many_ids_finds_each() {
        let mut map = TgidMap::default();
        for tgid in (1..200_000u32).step_by(7) {
            map.insert(tgid, tgid * 2);
        }
        assert!((1..200_000u32)
            .step_by(7)
            .all(|tgid| map.get(&tgid) == Some(&(tgid * 2))));
        assert_eq!(map.get(&2), None);
    }
}
