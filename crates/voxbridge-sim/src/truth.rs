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
//! - low-level teacher features (stand-in for MindEye2's ConvNeXt maps; only when
//!   `shapes.teacher` is set): on a coarse 4×4 grid each cell has a code K_c z (rank 16); the
//!   codes are bilinearly interpolated to the s×s positions (s² = positions, row-major), and
//!   position p's features are V·tanh(code_p·g); `[positions, width]`. Spatially smooth and
//!   different per image, like a convolutional feature map.
//! - augmented teacher views: the teacher of a perturbed latent z + 0.3·ε_a, ε_a ~ N(0, I) drawn
//!   per image and view from the stream ("teacher-aug", image id) — the same content seen
//!   slightly differently (cosine to the clean view ≈ 0.9), as a photometric augmentation of the
//!   image changes its ConvNeXt features; `[augs, positions, width]`.
//!
//! g = 1.5/√latent_dim keeps the pre-activations at sd ≈ 1.5, inside tanh's bend.
//!
//! The teacher's parameters come from their own stream ("teacher"), so datasets with and without
//! teacher features have bit-identical other targets and voxels.

use voxbridge_data::TargetShapes;

use crate::rng::{normal_vec, normals, stream};
use crate::spec::SimSpec;

const COARSE: usize = 4;
const CAPTION_RANK: usize = 16;
/// Rank of the teacher's per-position code.
const TEACHER_RANK: usize = 16;
/// Sd of the latent perturbation that makes an augmented teacher view.
pub const TEACHER_AUG_SD: f32 = 0.3;
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
    teacher: Option<TeacherMap>,
}

/// Parameters of the simulated low-level teacher (see the module docs).
#[derive(Debug, Clone)]
struct TeacherMap {
    /// Side s of the s×s position grid.
    side: usize,
    width: usize,
    augs: usize,
    k_cells: Vec<f32>, // [COARSE·COARSE, TEACHER_RANK, latent_dim]
    v_out: Vec<f32>,   // [width, TEACHER_RANK]
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
            teacher: None,
        };
        // Drawn from a stream of their own, after everything else: the other targets do not
        // depend on whether the dataset has teacher features.
        truth.teacher = spec.shapes.teacher.map(|[positions, width]| {
            let mut rng = stream(seed, "teacher", 0);
            TeacherMap {
                side: teacher_side(positions).expect("SimSpec::validate checks positions is a square"),
                width,
                augs: spec.shapes.teacher_augs,
                k_cells: normal_vec(&mut rng, COARSE * COARSE * TEACHER_RANK * dz, 1.0),
                v_out: normal_vec(&mut rng, width * TEACHER_RANK, 1.0 / (TEACHER_RANK as f32).sqrt()),
            }
        });
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

    /// Low-level teacher features of latent z, row-major `[positions, width]`; `None` when the
    /// spec has none.
    pub fn teacher(&self, z: &[f32]) -> Option<Vec<f32>> {
        let t = self.teacher.as_ref()?;
        let (r, dz, cells) = (TEACHER_RANK, self.latent_dim, COARSE * COARSE);
        let mut codes = vec![0.0; cells * r]; // [cell, rank]
        for (c, code) in codes.chunks_exact_mut(r).enumerate() {
            matvec(&t.k_cells[c * r * dz..(c + 1) * r * dz], z, code);
        }
        let mut out = Vec::with_capacity(t.side * t.side * t.width);
        let mut u = vec![0.0; r];
        let mut feature = vec![0.0; t.width];
        for y in 0..t.side {
            let (y0, ty) = bilinear_cell(y, t.side);
            for x in 0..t.side {
                let (x0, tx) = bilinear_cell(x, t.side);
                let code = |yy: usize, xx: usize, k: usize| codes[(yy * COARSE + xx) * r + k];
                for (k, uk) in u.iter_mut().enumerate() {
                    let top = code(y0, x0, k) * (1.0 - tx) + code(y0, x0 + 1, k) * tx;
                    let bottom = code(y0 + 1, x0, k) * (1.0 - tx) + code(y0 + 1, x0 + 1, k) * tx;
                    *uk = ((top * (1.0 - ty) + bottom * ty) * self.gain).tanh();
                }
                matvec(&t.v_out, &u, &mut feature);
                out.extend_from_slice(&feature);
            }
        }
        Some(out)
    }

    /// The augmented teacher views of image `image_id` (latent z): the teacher of
    /// z + [`TEACHER_AUG_SD`]·ε per view, row-major `[augs, positions, width]`; `None` without
    /// teacher features.
    pub fn teacher_aug(&self, image_id: u32, z: &[f32]) -> Option<Vec<f32>> {
        let t = self.teacher.as_ref()?;
        let mut rng = stream(self.seed, "teacher-aug", image_id as u64);
        let mut eps = vec![0.0; z.len()];
        let mut out = Vec::with_capacity(t.augs * t.side * t.side * t.width);
        for _ in 0..t.augs {
            normals(&mut rng, &mut eps);
            let perturbed: Vec<f32> = z.iter().zip(&eps).map(|(a, e)| a + TEACHER_AUG_SD * e).collect();
            out.extend(self.teacher(&perturbed)?);
        }
        Some(out)
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

/// Side of the square grid of `positions` teacher positions, if it is one.
pub fn teacher_side(positions: usize) -> Option<usize> {
    let side = (positions as f64).sqrt().round() as usize;
    (side >= 1 && side * side == positions).then_some(side)
}

/// Position `i` of `n` on the coarse grid with aligned corners: the cell's first index and the
/// weight of the next one.
fn bilinear_cell(i: usize, n: usize) -> (usize, f32) {
    let f = if n > 1 { i as f32 * (COARSE - 1) as f32 / (n - 1) as f32 } else { 0.0 };
    let cell = (f.floor() as usize).min(COARSE - 2);
    (cell, f - cell as f32)
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

    /// Teacher features leave every other output bit-identical (their own stream); they have
    /// the manifest's shape, differ between images and positions, and the augmented views stay
    /// close to the clean one without equalling it.
    #[test]
    fn teacher_features_are_separate_and_shaped() {
        let with = SimSpec::small();
        assert_eq!(with.shapes.teacher, Some([49, 32]));
        let mut without = with.clone();
        without.shapes.teacher = None;
        without.shapes.teacher_augs = 0;
        let (a, b) = (GroundTruth::new(&with, 4), GroundTruth::new(&without, 4));
        let z = a.latent(9);
        assert_eq!(z, b.latent(9));
        assert_eq!(a.clip_tokens(&z), b.clip_tokens(&z));
        assert_eq!(a.lowlevel(&z), b.lowlevel(&z));
        assert_eq!(a.captions(9, &z), b.captions(9, &z));
        assert_eq!(a.features(&z), b.features(&z));
        assert_eq!(b.teacher(&z), None);

        let clean = a.teacher(&z).unwrap();
        assert_eq!(clean.len(), with.shapes.teacher_len());
        assert_eq!(a.teacher(&z).unwrap(), clean, "a fixed function of z");
        let augs = a.teacher_aug(9, &z).unwrap();
        assert_eq!(augs.len(), with.shapes.teacher_aug_len());
        assert_eq!(a.teacher_aug(9, &z).unwrap(), augs);
        let cos = |x: &[f32], y: &[f32]| {
            let dot: f32 = x.iter().zip(y).map(|(a, b)| a * b).sum();
            dot / (x.iter().map(|a| a * a).sum::<f32>().sqrt() * y.iter().map(|b| b * b).sum::<f32>().sqrt())
        };
        let width = 32;
        let row = |v: &[f32], p: usize| v[p * width..(p + 1) * width].to_vec();
        let other = a.teacher(&a.latent(10)).unwrap();
        let view = |k: usize| augs[k * clean.len()..(k + 1) * clean.len()].to_vec();
        let mean_cos = |x: &[f32], y: &[f32]| (0..49).map(|p| cos(&row(x, p), &row(y, p))).sum::<f32>() / 49.0;
        let (same_image, other_image) = (mean_cos(&clean, &view(0)), mean_cos(&clean, &other));
        assert!(same_image > 0.6 && same_image < 0.999, "augmented view vs clean: {same_image}");
        assert!(other_image < same_image - 0.2, "another image {other_image} vs a view {same_image}");
        assert_ne!(view(0), view(1), "the views are different augmentations");
        assert!(cos(&row(&clean, 0), &row(&clean, 48)) < 0.99, "positions differ");
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
