//! The ideal decoder. It knows the generative model (mixing, SNR, drift), so it scores a test
//! image j against the repeat-averaged, drift-free response r_i of brain sample i by the
//! Gaussian log-likelihood −‖r_i − ncsnr ⊙ M f(z_j)‖². With a uniform prior over the candidates,
//! picking the best score is the Bayes-optimal identification: no decoder can retrieve better
//! on average, so every trained model's numbers can be read against this one.

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
        let expected: Vec<Vec<f32>> = self
            .test_ids
            .iter()
            .map(|&id| brain.expected_response(&truth.features(&truth.latent(id))))
            .collect();
        let mut scores = vec![0.0f32; n * n];
        for i in 0..n {
            let c = self.counts[i].max(1) as f32;
            let r: Vec<f32> = self.sums[i * v..(i + 1) * v].iter().map(|s| s / c).collect();
            for (j, e) in expected.iter().enumerate() {
                scores[i * n + j] = -r.iter().zip(e).map(|(a, b)| (a - b) * (a - b)).sum::<f32>();
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
