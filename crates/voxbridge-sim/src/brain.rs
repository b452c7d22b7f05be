//! A subject's brain: its own voxel mixing of the shared features, per-voxel SNR, per-session
//! drift, single-trial noise, then NSD's per-session voxel-wise z-scoring.
//!
//! raw[t, v] = ncsnr[v]·(M f(z_t))[v] + noise[t, v] + offset[session, v] + trend[session, v]·(t/T − ½)
//! noise[t, v] = κ·ncsnr[v]·(M η_t)[v] + √(1 − κ²ncsnr[v]²)·ε[t, v],   η_t ~ N(0, Σ_f),  ε ~ N(0, 1)
//!
//! M (the subject's mixing) has rows scaled so (M f)[v] has unit variance, hence noise has unit
//! variance per voxel and ncsnr is exactly NSD's noise-ceiling SNR (sd of signal / sd of noise).
//! η is representational noise: the encoded features vary from trial to trial (κ relative to
//! their spread across images) and reach the voxels through the same weights as the signal, so
//! they limit the information any decoder can extract. M is drawn independently for every
//! subject: no mixing is shared, only the feature map f is.

use rand::Rng;

use crate::design::Trial;
use crate::rng::{normal_vec, normals, stream};
use crate::spec::{SimSpec, SubjectSpec};
use crate::truth::{GroundTruth, matvec};

#[derive(Debug, Clone)]
pub struct SubjectBrain {
    pub subject: u8,
    pub voxels: usize,
    /// `[voxels, feature_dim]`, rows scaled to unit signal variance.
    mixing: Vec<f32>,
    pub ncsnr: Vec<f32>,
    feature_dim: usize,
    /// Representational noise κ (see the module docs).
    pub kappa: f32,
    /// Cholesky factor of the feature covariance, for drawing η.
    feature_chol: Vec<f32>,
}

/// One session's output.
#[derive(Debug)]
pub struct SessionVoxels {
    /// z-scored betas, `[trials, voxels]`.
    pub zscored: Vec<f32>,
    /// Drift-free raw responses (signal + noise) of the test trials, for the oracle:
    /// `(row in session, [voxels])`.
    pub test_clean: Vec<(usize, Vec<f32>)>,
}

impl SubjectBrain {
    pub fn new(spec: &SimSpec, subject: &SubjectSpec, truth: &GroundTruth, seed: u64) -> Self {
        let df = truth.feature_dim();
        let mut rng = stream(seed, "subject", subject.subject as u64);
        let mut mixing = normal_vec(&mut rng, subject.voxels * df, 1.0);
        let cov = truth.feature_cov();
        for row in mixing.chunks_exact_mut(df) {
            let mut var = 0f64;
            for i in 0..df {
                for j in 0..df {
                    var += row[i] as f64 * cov[i * df + j] * row[j] as f64;
                }
            }
            let scale = 1.0 / var.sqrt().max(1e-9) as f32;
            row.iter_mut().for_each(|x| *x *= scale);
        }
        let [lo, hi] = spec.ncsnr_range;
        let ncsnr =
            (0..subject.voxels).map(|_| if hi > lo { rng.random_range(lo..hi) as f32 } else { lo as f32 }).collect();
        SubjectBrain {
            subject: subject.subject,
            voxels: subject.voxels,
            mixing,
            ncsnr,
            feature_dim: df,
            kappa: spec.representational_noise as f32,
            feature_chol: truth.feature_cov_cholesky(),
        }
    }

    /// The mixing, `[voxels, feature_dim]`, rows scaled to unit signal variance.
    pub fn mixing(&self) -> &[f32] {
        &self.mixing
    }

    /// Noise-free response to features f: ncsnr ⊙ (M f); `[voxels]`.
    pub fn expected_response(&self, features: &[f32]) -> Vec<f32> {
        debug_assert_eq!(features.len(), self.feature_dim);
        let mut s = vec![0.0; self.voxels];
        matvec(&self.mixing, features, &mut s);
        s.iter_mut().zip(&self.ncsnr).for_each(|(x, g)| *x *= g);
        s
    }

    /// Simulates one session's trials (all from `session`, chronological).
    pub fn session(
        &self,
        spec: &SimSpec,
        trials: &[Trial],
        session: u16,
        truth: &GroundTruth,
        seed: u64,
    ) -> SessionVoxels {
        let v = self.voxels;
        let key = (self.subject as u64) << 16 | session as u64;
        let mut drift_rng = stream(seed, "drift", key);
        let offset = normal_vec(&mut drift_rng, v, spec.session_offset_sd);
        let trend = normal_vec(&mut drift_rng, v, spec.session_trend_sd);
        let mut noise_rng = stream(seed, "noise", key);
        let mut noise = vec![0.0; v];
        let mut xi = vec![0.0; self.feature_dim];
        let mut eta = vec![0.0; self.feature_dim];
        let mut shared = vec![0.0; v];
        // Per voxel: weight of the representational part and of the white part.
        let rep: Vec<f32> = self.ncsnr.iter().map(|g| self.kappa * g).collect();
        let white: Vec<f32> = rep.iter().map(|r| (1.0 - r * r).max(0.0).sqrt()).collect();
        let tps = spec.trials_per_session as f32;

        let mut raw = Vec::with_capacity(trials.len() * v);
        let mut test_clean = Vec::new();
        for (row, t) in trials.iter().enumerate() {
            debug_assert_eq!(t.session, session);
            let response = self.expected_response(&truth.features(&truth.latent(t.image_id)));
            normals(&mut noise_rng, &mut noise);
            normals(&mut noise_rng, &mut xi);
            matvec(&self.feature_chol, &xi, &mut eta);
            matvec(&self.mixing, &eta, &mut shared);
            for i in 0..v {
                noise[i] = rep[i] * shared[i] + white[i] * noise[i];
            }
            let x = t.index_in_session as f32 / tps - 0.5;
            if t.is_test {
                test_clean.push((row, response.iter().zip(&noise).map(|(s, e)| s + e).collect()));
            }
            raw.extend((0..v).map(|i| response[i] + noise[i] + offset[i] + trend[i] * x));
        }
        zscore_columns(&mut raw, v);
        SessionVoxels { zscored: raw, test_clean }
    }
}

/// Per-voxel z-scoring over the rows (population sd, like sklearn's StandardScaler).
pub fn zscore_columns(data: &mut [f32], cols: usize) {
    let rows = data.len() / cols;
    if rows == 0 {
        return;
    }
    let mut sum = vec![0f64; cols];
    let mut sq = vec![0f64; cols];
    for row in data.chunks_exact(cols) {
        for (i, &x) in row.iter().enumerate() {
            sum[i] += x as f64;
            sq[i] += (x as f64) * (x as f64);
        }
    }
    let n = rows as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let sd: Vec<f64> = sq.iter().zip(&mean).map(|(q, m)| (q / n - m * m).max(0.0).sqrt()).collect();
    for row in data.chunks_exact_mut(cols) {
        for (i, x) in row.iter_mut().enumerate() {
            *x = if sd[i] > 1e-12 { ((*x as f64 - mean[i]) / sd[i]) as f32 } else { 0.0 };
        }
    }
}
