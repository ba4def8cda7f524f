//! Keyed hashing for the tables indexed by values that come from the network (flow tuples,
//! data destinations), without randomness in the core: the caller supplies the key
//! ([`crate::engine::Config::hash_key`]; the daemon draws it at start, tests use a fixed one).
//! An attacker who does not know the key cannot choose addresses and ports that collide.
//!
//! The hash is std's SipHash-1-3 (`DefaultHasher`) with the 128-bit key written into its state
//! before the value; the keyed state is prepared once and copied for each hash.

use std::hash::{BuildHasher, DefaultHasher, Hasher};

/// A hash key, and the [`BuildHasher`] it makes.
#[derive(Clone, Debug)]
pub struct HashKey {
    key: [u64; 2],
    state: DefaultHasher,
}

impl HashKey {
    /// A key from two 64-bit words (the daemon draws them at start; tests use fixed ones).
    pub fn new(key: [u64; 2]) -> Self {
        let mut state = DefaultHasher::new();
        state.write_u64(key[0]);
        state.write_u64(key[1]);
        HashKey { key, state }
    }

    /// The key, as given.
    pub fn key(&self) -> [u64; 2] {
        self.key
    }
}

impl Default for HashKey {
    /// The zero key: deterministic, for tests and tools that hash no hostile input.
    fn default() -> Self {
        HashKey::new([0, 0])
    }
}

impl PartialEq for HashKey {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for HashKey {}

impl BuildHasher for HashKey {
    type Hasher = DefaultHasher;

    fn build_hasher(&self) -> DefaultHasher {
        self.state.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_changes_the_hash_and_equal_keys_agree() {
        let a = HashKey::new([1, 2]);
        let b = HashKey::new([1, 3]);
        assert_eq!(a.hash_one(42u32), HashKey::new([1, 2]).hash_one(42u32));
        assert_ne!(a.hash_one(42u32), b.hash_one(42u32));
    }
}
