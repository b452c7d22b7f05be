//! The ideal decoder. It knows the generative model (mixing, SNR, drift, noise covariance), so it
//! scores test image j against the repeat-averaged, drift-free response r_i of brain sample i by
//! the Gaussian log-likelihood ℓ_ij = −(c_i/2)·dᵀC⁻¹d, d = r_i − ncsnr ⊙ M f(z_j), where
//! C = κ²·B Σ_f Bᵀ + W is the single-trial noise covariance (B = diag(ncsnr)·M,
//! W = diag(1 − κ²·ncsnr²)) and c_i the number of repeats.
//! Image retrieval picks argmax_j ℓ_ij (Bayes-optimal with a uniform prior over candidates);
//! brain retrieval picks the sample with the highest posterior p(j | r_i) = softmax_j ℓ_ij, which
//! corrects for samples whose noise happens to be small. The posterior is normalised over all n
//! test images, not over each retrieval loop's random subset, and the responses are the
//! drift-free ones, so read it as a ceiling: no decoder of the real (drifting) shards can be
//! expected to beat it, and every trained model's numbers can be read against this one.
//!
//! C⁻¹ comes from the Woodbury identity: dᵀC⁻¹d = dᵀW⁻¹d − uᵀA⁻¹u with u = BᵀW⁻¹d and
//! A = Σ_f⁻¹/κ² + BᵀW⁻¹B, a `[feature_dim, feature_dim]` matrix.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use voxbridge_eval::{MINDEYE2_LOOPS, MINDEYE2_WAYS, Retrieval, ScoreMatrix, top1_retrieval};

use crate::brain::SubjectBrain;
use crate::truth::GroundTruth;

/// Accumulates one subject's drift-free test responses across sessions.
#[derive(Debug)]
pub struct OracleAccumulator {
    index: HashMap<u32, usize>,
    test_ids: Vec<u32>,
    sums: Vec<f32>,
    counts: Vec<u32>,
    voxels: usize,
}

impl OracleAccumulator {
    pub fn new(test_ids: &[u32], voxels: usize) -> Self {
        OracleAccumulator {
            index: test_ids.iter().enumerate().map(|(i, &id)| (id, i)).collect(),
            test_ids: test_ids.to_vec(),
            sums: vec![0.0; test_ids.len() * voxels],
            counts: vec![0; test_ids.len()],
            voxels,
        }
    }

    pub fn add(&mut self, image_id: u32, response: &[f32]) {
        if let Some(&i) = self.index.get(&image_id) {
            let v = self.voxels;
            self.sums[i * v..(i + 1) * v].iter_mut().zip(response).for_each(|(s, r)| *s += r);
            self.counts[i] += 1;
        }
    }

    /// Scores every (brain sample, image) pair and runs the retrieval protocol.
    pub fn finish(self, brain: &SubjectBrain, truth: &GroundTruth, seed: u64) -> SubjectOracle {
        let n = self.test_ids.len();
        let v = self.voxels;
        let expected: Vec<Vec<f32>> =
            self.test_ids.iter().map(|&id| brain.expected_response(&truth.features(&truth.latent(id)))).collect();
        let df = truth.feature_dim();
        let kappa = brain.kappa as f64;
        let gains: Vec<f64> = brain.ncsnr.iter().map(|&g| g as f64).collect();
        let w_inv: Vec<f64> = gains.iter().map(|g| 1.0 / (1.0 - kappa * kappa * g * g).max(1e-9)).collect();
        // B = diag(ncsnr)·M, `[voxels, feature_dim]`.
        let b = nalgebra::DMatrix::from_fn(v, df, |r, c| gains[r] * brain.mixing()[r * df + c] as f64);
        let b_w = nalgebra::DMatrix::from_fn(v, df, |r, c| b[(r, c)] * w_inv[r]); // W⁻¹B
        // A⁻¹ of the Woodbury identity (None when there is no representational noise).
        let a_inv = (kappa > 0.0).then(|| {
            let cov = nalgebra::DMatrix::from_row_slice(df, df, truth.feature_cov());
            let cov_inv = spd_inverse(cov);
            let a = cov_inv / (kappa * kappa) + b.transpose() * &b_w;
            spd_inverse(a)
        });
        let project = |x: &[f32]| b_w.transpose() * nalgebra::DVector::from_iterator(v, x.iter().map(|&y| y as f64));
        let responses: Vec<Vec<f32>> = (0..n)
            .map(|i| {
                let c = self.counts[i].max(1) as f32;
                self.sums[i * v..(i + 1) * v].iter().map(|s| s / c).collect()
            })
            .collect();
        let r_proj: Vec<_> = responses.iter().map(|r| project(r)).collect();
        let e_proj: Vec<_> = expected.iter().map(|e| project(e)).collect();
        let mut loglik = vec![0.0f64; n * n];
        for i in 0..n {
            let c = self.counts[i].max(1) as f64;
            for j in 0..n {
                let dd: f64 = responses[i]
                    .iter()
                    .zip(&expected[j])
                    .zip(&w_inv)
                    .map(|((a, b), w)| ((a - b) as f64).powi(2) * w)
                    .sum();
                let q = match &a_inv {
                    Some(a_inv) => {
                        let u = &r_proj[i] - &e_proj[j];
                        dd - u.dot(&(a_inv * &u))
                    }
                    None => dd,
                };
                loglik[i * n + j] = -0.5 * c * q;
            }
        }
        // Posterior over images for each sample: ℓ_ij − logsumexp_k ℓ_ik.
        let mut scores = vec![0.0f32; n * n];
        for i in 0..n {
            let row = &loglik[i * n..(i + 1) * n];
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
            for j in 0..n {
                scores[i * n + j] = (row[j] - lse) as f32;
            }
        }
        let retrieval = top1_retrieval(&ScoreMatrix::new(n, scores), MINDEYE2_WAYS, MINDEYE2_LOOPS, seed);
        SubjectOracle {
            subject: brain.subject,
            image_top1: retrieval.image_top1.mean,
            brain_top1: retrieval.brain_top1.mean,
            retrieval,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectOracle {
    pub subject: u8,
    pub image_top1: f64,
    pub brain_top1: f64,
    pub retrieval: Retrieval,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OracleReport {
    pub protocol: String,
    pub ways: usize,
    pub chance: f64,
    /// Means over subjects.
    pub image_top1: f64,
    pub brain_top1: f64,
    pub subjects: Vec<SubjectOracle>,
}

impl OracleReport {
    pub fn new(subjects: Vec<SubjectOracle>) -> Self {
        let n = subjects.len().max(1) as f64;
        let ways = subjects.first().map(|s| s.retrieval.ways).unwrap_or(0);
        OracleReport {
            protocol: format!(
                "ideal decoder (true generative model, Gaussian likelihood on repeat-averaged test responses); \
                 top-1 retrieval, {MINDEYE2_LOOPS} loops of min({MINDEYE2_WAYS}, test images) candidates"
            ),
            ways,
            chance: if ways > 0 { 1.0 / ways as f64 } else { 0.0 },
            image_top1: subjects.iter().map(|s| s.image_top1).sum::<f64>() / n,
            brain_top1: subjects.iter().map(|s| s.brain_top1).sum::<f64>() / n,
            subjects,
        }
    }
}

/// Inverse of a symmetric positive (semi-)definite matrix through Cholesky. Rounding can make a
/// covariance numerically indefinite; a growing ridge on the diagonal then restores definiteness
/// (the oracle's scores change by far less than their spread).
fn spd_inverse(m: nalgebra::DMatrix<f64>) -> nalgebra::DMatrix<f64> {
    let n = m.nrows();
    let scale = (m.trace() / n.max(1) as f64).abs().max(f64::MIN_POSITIVE);
    let mut jitter = 0.0;
    loop {
        let shifted = &m + nalgebra::DMatrix::<f64>::identity(n, n) * jitter;
        if let Some(chol) = shifted.cholesky() {
            return chol.inverse();
        }
        jitter = if jitter == 0.0 { scale * 1e-12 } else { jitter * 10.0 };
    }
}

#[cfg(test)]
mod tests {
    use super::spd_inverse;

    #[test]
    fn spd_inverse_inverts_and_survives_a_singular_matrix() {
        let m = nalgebra::DMatrix::from_row_slice(2, 2, &[4.0, 1.0, 1.0, 3.0]);
        let inv = spd_inverse(m.clone());
        assert!((m * inv - nalgebra::DMatrix::<f64>::identity(2, 2)).abs().max() < 1e-12);
        // Rank one: no exact inverse, but the result is finite.
        let singular = nalgebra::DMatrix::from_row_slice(2, 2, &[1.0, 1.0, 1.0, 1.0]);
        assert!(spd_inverse(singular).iter().all(|x| x.is_finite()));
    }
}
