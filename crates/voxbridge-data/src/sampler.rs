//! Deterministic shuffles: the order of an epoch is a pure function of (seed, epoch, stream), so
//! a resumed or re-run training sees exactly the same batches.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// SplitMix64 finaliser: spreads nearby inputs over the whole u64 range.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A permutation of `0..len` for one epoch of one stream (for example one subject).
pub fn epoch_order(len: usize, seed: u64, epoch: u64, stream: u64) -> Vec<usize> {
    let key = mix64(mix64(mix64(seed) ^ epoch) ^ stream.rotate_left(17));
    let mut rng = ChaCha8Rng::seed_from_u64(key);
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut rng);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_same_order_and_a_permutation() {
        let a = epoch_order(100, 5, 3, 1);
        assert_eq!(a, epoch_order(100, 5, 3, 1));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn epoch_seed_and_stream_each_change_the_order() {
        let base = epoch_order(100, 5, 3, 1);
        assert_ne!(base, epoch_order(100, 5, 4, 1));
        assert_ne!(base, epoch_order(100, 6, 3, 1));
        assert_ne!(base, epoch_order(100, 5, 3, 2));
    }

    #[test]
    fn pinned_first_elements() {
        // Guards against a silent change of shuffle algorithm (dependency bump).
        let got = epoch_order(10, 0, 0, 0);
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_eq!(got, PINNED.to_vec(), "shuffle changed: regenerate golden data deliberately");
    }

    // Recorded from this implementation (rand 0.9 / rand_chacha 0.9).
    const PINNED: [usize; 10] = [8, 7, 4, 9, 1, 5, 2, 3, 6, 0];
}
