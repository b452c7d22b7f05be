//! The ground truth: each image has a latent z ~ N(0, I); its targets and the shared brain
//! feature map are fixed nonlinear functions of z, drawn once per seed.
//!
//! - shared feature map (what every brain encodes): f(z) = tanh(W z·g + b), standardised per
//!   feature; `[feature_dim]`.
//! - "CLIP tokens": token k = U·tanh(C_k z·g) + b_k; `[tokens, dim]`.
//! - "low-level latent": a coarse 4×4 grid per channel, tanh(L z·g), bilinearly upsampled to
//!   `[channels, h, w]` (smooth, like a VAE latent of a blurred image).
//! - captions: base = P·tanh(Q z·g), made unit-norm; each of the captions adds its own noise and
//!   is renormalised; `[captions, dim]`.
//!
//! g = 1.5/√latent_dim keeps the pre-activations at sd ≈ 1.5, inside tanh's bend.

use voxbridge_data::TargetShapes;

use crate::rng::{normal_vec, normals, stream};
use crate::spec::SimSpec;

const COARSE: usize = 4;
const CAPTION_RANK: usize = 16;
/// Latents used to estimate the mean and covariance of f(z).
const CALIBRATION_SAMPLES: usize = 4096;

#[derive(Debug, Clone)]
pub struct GroundTruth {
    seed: u64,
    latent_dim: usize,
    feature_dim: usize,
    shapes: TargetShapes,
    rank: usize,
    gain: f32,
    caption_noise: f32,
    w_feat: Vec<f32>, // [feature_dim, latent_dim]
    b_feat: Vec<f32>, // [feature_dim]
    feat_mean: Vec<f32>,
    feat_sd: Vec<f32>,
    /// Covariance of the standardised features, `[feature_dim, feature_dim]`.
    feat_cov: Vec<f64>,
    c_tok: Vec<f32>, // [tokens, rank, latent_dim]
    u_tok: Vec<f32>, // [dim, rank]
    b_tok: Vec<f32>, // [tokens, dim]
    l_low: Vec<f32>, // [channels·COARSE·COARSE, latent_dim]
    q_cap: Vec<f32>, // [CAPTION_RANK, latent_dim]
    p_cap: Vec<f32>, // [caption_dim, CAPTION_RANK]
}

/// `out[i] = Σ_j m[i, j]·x[j]` for row-major `m` of shape `[out.len(), x.len()]`.
pub fn matvec(m: &[f32], x: &[f32], out: &mut [f32]) {
    let n = x.len();
    for (o, row) in out.iter_mut().zip(m.chunks_exact(n)) {
        *o = row.iter().zip(x).map(|(a, b)| a * b).sum();
    }
}

impl GroundTruth {
    pub fn new(spec: &SimSpec, seed: u64) -> Self {
        let (dz, df, r) = (spec.latent_dim, spec.feature_dim, spec.token_rank);
        let [tokens, dim] = spec.shapes.clip_tokens;
        let [channels, _, _] = spec.shapes.lowlevel;
        let [_, cap_dim] = spec.shapes.captions;
        let mut rng = stream(seed, "truth", 0);
        let mut truth = GroundTruth {
            seed,
            latent_dim: dz,
            feature_dim: df,
            shapes: spec.shapes,
            rank: r,
            gain: 1.5 / (dz as f32).sqrt(),
            caption_noise: spec.caption_noise,
            w_feat: normal_vec(&mut rng, df * dz, 1.0),
            b_feat: normal_vec(&mut rng, df, 0.5),
            feat_mean: vec![0.0; df],
            feat_sd: vec![1.0; df],
            feat_cov: vec![0.0; df * df],
            c_tok: normal_vec(&mut rng, tokens * r * dz, 1.0),
            u_tok: normal_vec(&mut rng, dim * r, 1.0 / (r as f32).sqrt()),
            b_tok: normal_vec(&mut rng, tokens * dim, 0.5),
            l_low: normal_vec(&mut rng, channels * COARSE * COARSE * dz, 1.0),
            q_cap: normal_vec(&mut rng, CAPTION_RANK * dz, 1.0),
            p_cap: normal_vec(&mut rng, cap_dim * CAPTION_RANK, 1.0),
        };
        truth.calibrate();
        truth
    }

    /// Estimates the mean, sd and covariance of f(z) from fixed draws, so features are
    /// standardised and voxel signals can be scaled to unit variance exactly.
    fn calibrate(&mut self) {
        let df = self.feature_dim;
        let mut rng = stream(self.seed, "calibration", 0);
        let mut z = vec![0.0; self.latent_dim];
        let mut samples = Vec::with_capacity(CALIBRATION_SAMPLES * df);
        for _ in 0..CALIBRATION_SAMPLES {
            normals(&mut rng, &mut z);
            samples.extend(self.raw_features(&z));
        }
        let n = CALIBRATION_SAMPLES as f64;
        let mut mean = vec![0f64; df];
        for s in samples.chunks_exact(df) {
            for (m, &x) in mean.iter_mut().zip(s) {
                *m += x as f64 / n;
            }
        }
        let mut cov = vec![0f64; df * df];
        for s in samples.chunks_exact(df) {
            for i in 0..df {
                let di = s[i] as f64 - mean[i];
                for j in 0..df {
                    cov[i * df + j] += di * (s[j] as f64 - mean[j]) / n;
                }
            }
        }
        let sd: Vec<f64> = (0..df).map(|i| cov[i * df + i].sqrt().max(1e-6)).collect();
        for i in 0..df {
            for j in 0..df {
                cov[i * df + j] /= sd[i] * sd[j];
            }
        }
        self.feat_mean = mean.iter().map(|&m| m as f32).collect();
        self.feat_sd = sd.iter().map(|&s| s as f32).collect();
        self.feat_cov = cov;
    }

    pub fn latent_dim(&self) -> usize {
        self.latent_dim
    }

    pub fn feature_dim(&self) -> usize {
        self.feature_dim
    }

    pub fn feature_cov(&self) -> &[f64] {
        &self.feat_cov
    }

    /// Lower-triangular L with L·Lᵀ = feature covariance, row-major `[feature_dim, feature_dim]`:
    /// draws L·ξ, ξ ~ N(0, I), have the features' covariance.
    pub fn feature_cov_cholesky(&self) -> Vec<f32> {
        let df = self.feature_dim;
        let cov = nalgebra::DMatrix::from_row_slice(df, df, &self.feat_cov);
        let ridge = nalgebra::DMatrix::<f64>::identity(df, df) * 1e-9;
        let l = (cov + ridge).cholesky().expect("a sample covariance plus jitter is positive definite").l();
        (0..df).flat_map(|i| (0..df).map(move |j| (i, j))).map(|(i, j)| l[(i, j)] as f32).collect()
    }

    /// The latent of an image: a pure function of (seed, image id).
    pub fn latent(&self, image_id: u32) -> Vec<f32> {
        let mut rng = stream(self.seed, "latent", image_id as u64);
        normal_vec(&mut rng, self.latent_dim, 1.0)
    }

    fn raw_features(&self, z: &[f32]) -> Vec<f32> {
        let mut pre = vec![0.0; self.feature_dim];
        matvec(&self.w_feat, z, &mut pre);
        pre.iter().zip(&self.b_feat).map(|(p, b)| (p * self.gain + b).tanh()).collect()
    }

    /// The shared brain features of latent z, standardised; `[feature_dim]`.
    pub fn features(&self, z: &[f32]) -> Vec<f32> {
        let mut f = self.raw_features(z);
        for ((x, m), s) in f.iter_mut().zip(&self.feat_mean).zip(&self.feat_sd) {
            *x = (*x - m) / s;
        }
        f
    }

    /// CLIP-token targets, row-major `[tokens, dim]`.
    pub fn clip_tokens(&self, z: &[f32]) -> Vec<f32> {
        let [tokens, dim] = self.shapes.clip_tokens;
        let (r, dz) = (self.rank, self.latent_dim);
        let mut out = Vec::with_capacity(tokens * dim);
        let mut a = vec![0.0; r];
        let mut tok = vec![0.0; dim];
        for k in 0..tokens {
            matvec(&self.c_tok[k * r * dz..(k + 1) * r * dz], z, &mut a);
            a.iter_mut().for_each(|x| *x = (*x * self.gain).tanh());
            matvec(&self.u_tok, &a, &mut tok);
            out.extend(tok.iter().zip(&self.b_tok[k * dim..(k + 1) * dim]).map(|(t, b)| t + b));
        }
        out
    }

    /// Low-level latent, row-major `[channels, h, w]`.
    pub fn lowlevel(&self, z: &[f32]) -> Vec<f32> {
        let [channels, h, w] = self.shapes.lowlevel;
        let mut coarse = vec![0.0; channels * COARSE * COARSE];
        matvec(&self.l_low, z, &mut coarse);
        coarse.iter_mut().for_each(|x| *x = (*x * self.gain).tanh());
        // Bilinear upsampling with aligned corners.
        let pos = |i: usize, n: usize| if n > 1 { i as f32 * (COARSE - 1) as f32 / (n - 1) as f32 } else { 0.0 };
        let mut out = Vec::with_capacity(channels * h * w);
        for c in 0..channels {
            let grid = &coarse[c * COARSE * COARSE..(c + 1) * COARSE * COARSE];
            for y in 0..h {
                let fy = pos(y, h);
                let (y0, ty) =
                    ((fy.floor() as usize).min(COARSE - 2), fy - (fy.floor() as usize).min(COARSE - 2) as f32);
                for x in 0..w {
                    let fx = pos(x, w);
                    let (x0, tx) =
                        ((fx.floor() as usize).min(COARSE - 2), fx - (fx.floor() as usize).min(COARSE - 2) as f32);
                    let g = |yy: usize, xx: usize| grid[yy * COARSE + xx];
                    let top = g(y0, x0) * (1.0 - tx) + g(y0, x0 + 1) * tx;
                    let bottom = g(y0 + 1, x0) * (1.0 - tx) + g(y0 + 1, x0 + 1) * tx;
                    out.push(top * (1.0 - ty) + bottom * ty);
                }
            }
        }
        out
    }

    /// Caption embeddings of image `image_id`: noisy unit-norm variants, `[captions, dim]`.
    pub fn captions(&self, image_id: u32, z: &[f32]) -> Vec<f32> {
        let [n, dim] = self.shapes.captions;
        let mut hidden = vec![0.0; CAPTION_RANK];
        matvec(&self.q_cap, z, &mut hidden);
        hidden.iter_mut().for_each(|x| *x = (*x * self.gain).tanh());
        let mut base = vec![0.0; dim];
        matvec(&self.p_cap, &hidden, &mut base);
        normalise(&mut base);
        let mut rng = stream(self.seed, "caption", image_id as u64);
        let noise_scale = self.caption_noise / (dim as f32).sqrt();
        let mut out = Vec::with_capacity(n * dim);
        let mut eps = vec![0.0; dim];
        for _ in 0..n {
            normals(&mut rng, &mut eps);
            let mut cap: Vec<f32> = base.iter().zip(&eps).map(|(b, e)| b + noise_scale * e).collect();
            normalise(&mut cap);
            out.extend(cap);
        }
        out
    }
}

fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_determinism() {
        let spec = SimSpec::tiny();
        let t = GroundTruth::new(&spec, 3);
        let z = t.latent(17);
        assert_eq!(z, GroundTruth::new(&spec, 3).latent(17));
        assert_ne!(z, t.latent(18));
        assert_eq!(t.clip_tokens(&z).len(), spec.shapes.clip_len());
        assert_eq!(t.lowlevel(&z).len(), spec.shapes.lowlevel_len());
        let caps = t.captions(17, &z);
        assert_eq!(caps.len(), spec.shapes.captions_len());
        let dim = spec.shapes.captions[1];
        for c in caps.chunks(dim) {
            assert!((c.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4);
        }
        assert_ne!(caps[..dim], caps[dim..2 * dim], "captions are distinct variants");
    }

    #[test]
    fn features_are_standardised() {
        let spec = SimSpec::tiny();
        let t = GroundTruth::new(&spec, 0);
        let n = 2000;
        let mut sum = vec![0f64; spec.feature_dim];
        let mut sq = vec![0f64; spec.feature_dim];
        for i in 0..n {
            let f = t.features(&t.latent(100_000 + i));
            for k in 0..f.len() {
                sum[k] += f[k] as f64;
                sq[k] += (f[k] as f64).powi(2);
            }
        }
        for k in 0..spec.feature_dim {
            let mean = sum[k] / n as f64;
            let var = sq[k] / n as f64 - mean * mean;
            assert!(mean.abs() < 0.1, "feature {k} mean {mean}");
            assert!((var - 1.0).abs() < 0.15, "feature {k} var {var}");
        }
    }

    #[test]
    fn lowlevel_is_smooth() {
        let spec = SimSpec::small();
        let t = GroundTruth::new(&spec, 0);
        let low = t.lowlevel(&t.latent(5));
        let [_, _, w] = spec.shapes.lowlevel;
        let max_step = low.chunks(w).flat_map(|row| row.windows(2).map(|p| (p[1] - p[0]).abs())).fold(0.0f32, f32::max);
        assert!(max_step < 0.5, "neighbouring pixels jump by {max_step}");
    }
}
