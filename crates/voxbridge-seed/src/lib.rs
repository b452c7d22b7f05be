//! The seed scheme, in one place. Every random stream of a run is a pure function of the run's
//! seed and a counter (step, epoch, rank's first row, simulator domain and index), so a resumed
//! or re-sharded run draws exactly the numbers an uninterrupted one-process run draws. The
//! derivations are fixed: changing one changes every trained number (the golden-loss test and
//! the demo's figures pin them).
//!
//! Generators (ChaCha8, the backend's RNG) are seeded by the callers with the `u64`s made here;
//! the one generator drawn here is the epoch permutation ([`epoch_order`]), which the data
//! loader and training's sampler must agree on.

/// The golden-ratio increment of SplitMix64 (2^64 / φ).
pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// Keys the stream the augmented teacher views of a step are picked from.
pub const TEACHER_STREAM: u64 = 0x7EAC_4E55_A06D_1E55;

/// How every random draw is derived; stored with each checkpoint so a reader knows what "the
/// RNG state" is.
pub const RNG_SCHEME: &str = "counter-based: step s draws from ChaCha8(seed ^ s·0x9E3779B97F4A7C15) (BiMixCo, \
                              prior noise) and reseeds the backend with mix64(seed ^ mix64(s)) (dropout); \
                              sampler orders are ChaCha8 permutations keyed by (seed, stream epoch, subject)";

/// SplitMix64 finaliser: spreads nearby inputs over the whole u64 range.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(GOLDEN_GAMMA);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The SplitMix64 generator: a self-contained, platform-independent stream of `u64`s.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        let out = mix64(self.state);
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        out
    }

    /// A uniform draw in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Seed of step `step`'s host-side draws (BiMixCo's β and permutations, the prior's noise,
/// condition dropping): identical on every rank.
pub fn step_draws(seed: u64, step: u64) -> u64 {
    seed ^ step.wrapping_mul(GOLDEN_GAMMA)
}

/// Seed the backend's RNG (dropout masks) is reset to at step `step`; `rank_key` (0 on one
/// process, [`rank_key`] of the rank's first row in a data-parallel run) keeps ranks' masks apart.
pub fn backend_step(seed: u64, step: u64, rank_key: u64) -> u64 {
    mix64(seed ^ mix64(step)) ^ rank_key
}

/// The key of a data-parallel rank whose rows start at global row `row_start`.
pub fn rank_key(row_start: usize) -> u64 {
    mix64(row_start as u64 + 1)
}

/// Seed of the stream that picks step `step`'s augmented teacher views.
pub fn teacher_views(seed: u64, step: u64) -> u64 {
    mix64(backend_step(seed, step, 0) ^ TEACHER_STREAM)
}

/// Seed of the shuffle of epoch `epoch` of sampler stream `stream` (one per subject).
pub fn epoch_shuffle(seed: u64, epoch: u64, stream: u64) -> u64 {
    mix64(mix64(mix64(seed) ^ epoch) ^ stream.rotate_left(17))
}

/// FNV-1a: a stable hash of a name (std's hasher may change between releases).
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Seed of the simulator's stream `(domain, index)` (a subject's brain, a session's noise, an
/// image's latent): independent of the order things are generated in.
pub fn simulator_stream(seed: u64, domain: &str, index: u64) -> u64 {
    mix64(mix64(seed) ^ fnv1a(domain)) ^ mix64(index.wrapping_add(0x5151))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix64_is_splitmix64() {
        // SplitMix64's published first outputs for seed 0 and 1234567.
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(g.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut g = SplitMix64::new(1_234_567);
        assert_eq!(g.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(mix64(0), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn uniform_draws_lie_in_the_unit_interval() {
        let mut g = SplitMix64::new(42);
        assert!((0..1000).map(|_| g.next_f64()).all(|u| (0.0..1.0).contains(&u)));
    }

    #[test]
    fn derivations_are_pinned() {
        // The scheme is part of every trained number: these values must never change.
        assert_eq!(step_draws(42, 0), 42);
        assert_eq!(step_draws(42, 1), 42 ^ GOLDEN_GAMMA);
        assert_eq!(backend_step(7, 3, 0), mix64(7 ^ mix64(3)));
        assert_eq!(backend_step(7, 3, rank_key(5)), mix64(7 ^ mix64(3)) ^ mix64(6));
        assert_eq!(teacher_views(7, 3), mix64(mix64(7 ^ mix64(3)) ^ TEACHER_STREAM));
        assert_eq!(epoch_shuffle(1, 2, 3), mix64(mix64(mix64(1) ^ 2) ^ 3u64.rotate_left(17)));
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(simulator_stream(9, "brain", 2), mix64(mix64(9) ^ fnv1a("brain")) ^ mix64(0x5153));
    }

    #[test]
    fn streams_differ_by_counter_and_rank() {
        assert_ne!(backend_step(1, 0, 0), backend_step(1, 1, 0));
        assert_ne!(backend_step(1, 0, rank_key(0)), backend_step(1, 0, rank_key(4)));
        assert_ne!(epoch_shuffle(1, 0, 0), epoch_shuffle(1, 0, 1));
        assert_ne!(simulator_stream(1, "a", 0), simulator_stream(1, "b", 0));
    }
}

/// A permutation of `0..len` for epoch `epoch` of stream `stream` (a subject): ChaCha8 keyed by
/// [`epoch_shuffle`]. Training's sampler and the data loader's epoch iterator both draw it.
pub fn epoch_order(len: usize, seed: u64, epoch: u64, stream: u64) -> Vec<usize> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(epoch_shuffle(seed, epoch, stream));
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut rng);
    order
}

#[cfg(test)]
mod epoch_order_tests {
    #[test]
    fn epoch_order_is_pinned() {
        // rand 0.9 / rand_chacha 0.9; changing it changes every trained number.
        assert_eq!(super::epoch_order(10, 0, 0, 0), [8, 7, 4, 9, 1, 5, 2, 3, 6, 0]);
    }
}
