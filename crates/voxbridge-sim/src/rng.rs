//! Named random streams. Every part of the simulation draws from its own stream, keyed by
//! (seed, domain, index), so subjects, sessions and images are independent of each other and of
//! the order they are generated in. ChaCha8 gives the same numbers on every platform.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The stream `(domain, index)` of the simulation seeded with `seed`
/// ([`voxbridge_seed::simulator_stream`]).
pub fn stream(seed: u64, domain: &str, index: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(voxbridge_seed::simulator_stream(seed, domain, index))
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
