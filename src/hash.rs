//! `FastMap`: a `HashMap` with a cheap hasher, for the maps a renewal looks up.
//!
//! A renewal looks up its lease in the memory store and its route in every replica's watch
//! hub. The standard hasher (SipHash-1-3) is built to resist flooding by keys an attacker
//! chooses; these maps are keyed by lease names this process itself chose (its own elections,
//! locks and semaphore slots, the leases it created), so that resistance buys nothing here and
//! costs a noticeable share of a renewal. This is the multiply-rotate hash rustc uses
//! (FxHash), with a final rotation so the high bits the hash table probes with are mixed too.
//! A leaf module: no other module of the crate.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` hashed by [`FxHasher`]: only for keys the process chose itself.
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

const SEED: u64 = 0xf135_7aea_2e62_a9c5;

/// The hasher behind [`FastMap`]: fast for short keys, not resistant to chosen keys.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash ^ word).wrapping_mul(SEED).rotate_left(5);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            // The length keeps "a" and "a\0" apart.
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        // The table takes its control bits from the top of the hash: bring the well-mixed
        // middle bits there.
        self.hash.rotate_left(26)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    use super::*;
    use crate::record::LeaseKey;

    fn hash_of(key: &LeaseKey) -> u64 {
        BuildHasherDefault::<FxHasher>::default().hash_one(key)
    }

    #[test]
    fn a_map_finds_every_key_and_only_those() {
        let mut map: FastMap<LeaseKey, usize> = FastMap::default();
        for i in 0..10_000 {
            map.insert(LeaseKey::new("default", format!("e{i}")), i);
        }
        for i in 0..10_000 {
            assert_eq!(
                map.get(&LeaseKey::new("default", format!("e{i}"))),
                Some(&i)
            );
        }
        assert_eq!(map.get(&LeaseKey::new("other", "e1")), None);
        assert_eq!(map.get(&LeaseKey::new("default", "e10000")), None);
    }

    #[test]
    fn similar_names_hash_apart() {
        // Names that differ in one character, in length only, or in where the namespace
        // ends, as lease names of one service do.
        let keys = [
            LeaseKey::new("default", "a"),
            LeaseKey::new("default", "a\0"),
            LeaseKey::new("default", "b"),
            LeaseKey::new("defaul", "ta"),
            LeaseKey::new("default", "dsync-lock-orders-0000000"),
            LeaseKey::new("default", "dsync-lock-orders-0000001"),
            LeaseKey::new("default", "dsync-lock-orders-00000010"),
        ];
        let hashes: HashSet<u64> = keys.iter().map(hash_of).collect();
        assert_eq!(hashes.len(), keys.len());
        // The top seven bits pick the control byte: sequential names must spread over them.
        let tops: HashSet<u64> = (0..1_000)
            .map(|i| hash_of(&LeaseKey::new("default", format!("e{i}"))) >> 57)
            .collect();
        assert!(
            tops.len() > 64,
            "only {} of 128 top-bit values used",
            tops.len()
        );
    }
}
