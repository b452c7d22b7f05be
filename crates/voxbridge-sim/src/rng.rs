//! Named random streams. Every part of the simulation draws from its own stream, keyed by
//! (seed, domain, index), so subjects, sessions and images are independent of each other and of
//! the order they are generated in. ChaCha8 gives the same numbers on every platform.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use voxbridge_data::sampler::mix64;

/// FNV-1a: a stable hash of the domain name (std's hasher may change between releases).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

pub fn stream(seed: u64, domain: &str, index: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix64(mix64(seed) ^ fnv1a(domain)) ^ mix64(index.wrapping_add(0x5151)))
}

/// Fills `out` with standard-normal draws.
pub fn normals(rng: &mut ChaCha8Rng, out: &mut [f32]) {
    use rand::Rng;
    for x in out {
        *x = rng.sample(rand_distr::StandardNormal);
    }
}

pub fn normal_vec(rng: &mut ChaCha8Rng, len: usize, scale: f32) -> Vec<f32> {
    let mut v = vec![0.0; len];
    normals(rng, &mut v);
    v.iter_mut().for_each(|x| *x *= scale);
    v
}
