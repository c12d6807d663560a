//! Keys and values for write benchmarks.
//!
//! A key is `key_size` bytes: zeros, then the key's number in big-endian in the
//! last `min(key_size, 8)` bytes, so sequential keys sort in order and numbers
//! below `256^key_size` give distinct keys. The number is the request's index
//! modulo the key space (`--sequential-keys`) or drawn uniformly from the key
//! space. Values are one random buffer of `val_size` bytes shared by every request.

use rand::{Rng, RngCore, SeedableRng};

/// Picks the key of each request of one client.
#[derive(Debug)]
pub struct KeyGen {
    key_size: usize,
    key_space: u64,
    sequential: bool,
    rng: rand::rngs::StdRng,
}

impl KeyGen {
    /// `key_space` must be at least 1 (the caller validates it).
    pub fn new(key_size: usize, key_space: u64, sequential: bool) -> KeyGen {
        KeyGen {
            key_size,
            key_space: key_space.max(1),
            sequential,
            rng: rand::rngs::StdRng::from_entropy(),
        }
    }

    /// The key of the request with global index `index`.
    pub fn key(&mut self, index: u64) -> Vec<u8> {
        let n = if self.sequential {
            index % self.key_space
        } else {
            self.rng.gen_range(0..self.key_space)
        };
        encode(n, self.key_size)
    }
}

/// `n` as a `key_size`-byte key (see the module doc).
pub fn encode(n: u64, key_size: usize) -> Vec<u8> {
    let mut key = vec![0u8; key_size];
    let be = n.to_be_bytes();
    let take = key_size.min(be.len());
    key[key_size - take..].copy_from_slice(&be[be.len() - take..]);
    key
}

/// A random value of `size` bytes.
pub fn value(size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_requested_size_and_sort_like_their_numbers() {
        assert_eq!(encode(1, 8), vec![0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(encode(258, 2), vec![1, 2]);
        assert_eq!(encode(7, 10).len(), 10);
        assert!(encode(255, 8) < encode(256, 8));
    }

    #[test]
    fn sequential_keys_wrap_around_the_key_space() {
        let mut g = KeyGen::new(8, 3, true);
        let nums: Vec<u8> = (0..5).map(|i| g.key(i)[7]).collect();
        assert_eq!(nums, vec![0, 1, 2, 0, 1]);
    }

    #[test]
    fn random_keys_stay_in_the_key_space() {
        let mut g = KeyGen::new(8, 4, false);
        for i in 0..100 {
            assert!(g.key(i)[7] < 4);
        }
        assert_eq!(value(256).len(), 256);
    }
}
