//! Evaluation metrics shared by the simulator's oracle, the ridge baseline and training.
//!
//! The retrieval protocol is MindEye2's (spec §4.1): `loops` draws of `ways` test images without
//! replacement; image retrieval (brain→image) is top-1 over each row of the score matrix, brain
//! retrieval (image→brain) is top-1 over each column; the mean over loops is reported with a
//! normal 95% confidence interval (1.96 · SD / √loops).

use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// MindEye2's protocol: 30 loops of 300 random test images.
pub const MINDEYE2_LOOPS: usize = 30;
/// MindEye2's protocol: 300 candidates per loop (chance = 1/300).
pub const MINDEYE2_WAYS: usize = 300;

/// A square score matrix: `scores[i * n + j]` is how well brain sample `i` matches image `j`;
/// the correct match of brain sample `i` is image `i`. Higher is better.
#[derive(Debug, Clone)]
pub struct ScoreMatrix {
    n: usize,
    scores: Vec<f32>,
}

impl ScoreMatrix {
    /// `scores` is row-major `[n, n]`.
    pub fn new(n: usize, scores: Vec<f32>) -> Self {
        assert_eq!(scores.len(), n * n, "score matrix must be n×n");
        Self { n, scores }
    }

    /// Cosine similarity between predictions and targets, both `[n, dim]` row-major.
    pub fn cosine(predictions: &[f32], targets: &[f32], dim: usize) -> Self {
        assert_eq!(predictions.len(), targets.len(), "predictions and targets differ in size");
        assert!(dim > 0 && predictions.len().is_multiple_of(dim), "rows must be `dim` long");
        let n = predictions.len() / dim;
        let unit = |rows: &[f32]| -> Vec<f32> {
            let mut out = rows.to_vec();
            for row in out.chunks_mut(dim) {
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                row.iter_mut().for_each(|v| *v /= norm);
            }
            out
        };
        let (p, t) = (unit(predictions), unit(targets));
        let mut scores = vec![0.0f32; n * n];
        for i in 0..n {
            let pi = &p[i * dim..(i + 1) * dim];
            for j in 0..n {
                let tj = &t[j * dim..(j + 1) * dim];
                scores[i * n + j] = pi.iter().zip(tj).map(|(a, b)| a * b).sum();
            }
        }
        Self { n, scores }
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn get(&self, brain: usize, image: usize) -> f32 {
        self.scores[brain * self.n + image]
    }
}

/// Mean and 95% CI of one retrieval direction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    /// Mean top-1 accuracy over loops, a fraction in [0, 1].
    pub mean: f64,
    /// Half-width of the normal 95% confidence interval, 1.96 · SD / √loops.
    pub ci95: f64,
}

/// Result of the retrieval protocol.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Retrieval {
    /// Brain → image (forward) top-1.
    pub image_top1: Accuracy,
    /// Image → brain (backward) top-1.
    pub brain_top1: Accuracy,
    /// Candidates per loop (min(ways, n)).
    pub ways: usize,
    pub loops: usize,
    /// 1 / ways.
    pub chance: f64,
}

/// Runs `loops` draws of `ways` candidates seeded by `seed`. With no more test images than
/// `ways`, every draw would be the whole set, so one loop is run and the CI is 0.
/// Ties count as failures, so a constant predictor scores 0, not 1.
pub fn top1_retrieval(scores: &ScoreMatrix, ways: usize, loops: usize, seed: u64) -> Retrieval {
    let n = scores.len();
    let ways = ways.min(n).max(1);
    let loops = if ways >= n { 1 } else { loops.max(1) };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut image_acc = Vec::with_capacity(loops);
    let mut brain_acc = Vec::with_capacity(loops);
    for _ in 0..loops {
        let subset = if n == 0 { Vec::new() } else { sample(&mut rng, n, ways).into_vec() };
        let (mut fwd, mut bwd) = (0usize, 0usize);
        for &a in &subset {
            let row_best = subset.iter().all(|&b| b == a || scores.get(a, b) < scores.get(a, a));
            let col_best = subset.iter().all(|&b| b == a || scores.get(b, a) < scores.get(a, a));
            fwd += row_best as usize;
            bwd += col_best as usize;
        }
        let denom = subset.len().max(1) as f64;
        image_acc.push(fwd as f64 / denom);
        brain_acc.push(bwd as f64 / denom);
    }
    Retrieval {
        image_top1: summarize(&image_acc),
        brain_top1: summarize(&brain_acc),
        ways,
        loops,
        chance: 1.0 / ways as f64,
    }
}

/// Mind Reader's retrieval (spec §4.4; `fmri_clip_utils.sim_eval`): one random batch of `batch`
/// single-trial test samples, scores `w·cos(target_i, pred_j) − (1 − w)·MSE(target_i, pred_j)`, and
/// top-1 (first argmax) correct when the chosen sample shows the **same image** — so repeats of an
/// image inside the batch count as hits. Returns (brain → image, image → brain) accuracies.
/// `preds`, `targets`: `[n, dim]` row-major, row k belonging to `image_ids[k]`.
pub fn mind_reader_batch_retrieval(
    preds: &[f32],
    targets: &[f32],
    image_ids: &[u32],
    dim: usize,
    batch: usize,
    cos_weight: f32,
    seed: u64,
) -> (f64, f64) {
    let n = image_ids.len();
    assert_eq!(preds.len(), n * dim, "preds must be [n, dim]");
    assert_eq!(targets.len(), n * dim, "targets must be [n, dim]");
    if n == 0 {
        return (0.0, 0.0);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut chosen = sample(&mut rng, n, batch.clamp(1, n)).into_vec();
    chosen.sort_unstable();
    let score = |i: usize, j: usize| {
        let (t, p) = (&targets[i * dim..(i + 1) * dim], &preds[j * dim..(j + 1) * dim]);
        let dot: f32 = t.iter().zip(p).map(|(a, b)| a * b).sum();
        let norms = t.iter().map(|a| a * a).sum::<f32>().sqrt() * p.iter().map(|a| a * a).sum::<f32>().sqrt();
        let cos = if norms > 0.0 { dot / norms } else { 0.0 };
        let mse = t.iter().zip(p).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / dim.max(1) as f32;
        cos_weight * cos - (1.0 - cos_weight) * mse
    };
    // First index of the maximum, as torch.argmax.
    let argmax = |values: &mut dyn Iterator<Item = f32>| {
        let mut best = (0usize, f32::NEG_INFINITY);
        for (k, v) in values.enumerate() {
            if v > best.1 {
                best = (k, v);
            }
        }
        best.0
    };
    let (mut brain_to_image, mut image_to_brain) = (0usize, 0usize);
    for &k in &chosen {
        // prediction k against every target in the batch
        let i = argmax(&mut chosen.iter().map(|&t| score(t, k)));
        brain_to_image += (image_ids[chosen[i]] == image_ids[k]) as usize;
        // target k against every prediction in the batch
        let j = argmax(&mut chosen.iter().map(|&p| score(k, p)));
        image_to_brain += (image_ids[chosen[j]] == image_ids[k]) as usize;
    }
    let b = chosen.len() as f64;
    (brain_to_image as f64 / b, image_to_brain as f64 / b)
}

fn summarize(values: &[f64]) -> Accuracy {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    Accuracy { mean, ci95: 1.96 * var.sqrt() / n.sqrt() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_scores_retrieve_perfectly() {
        let n = 5;
        let mut s = vec![0.0; n * n];
        for i in 0..n {
            s[i * n + i] = 1.0;
        }
        let r = top1_retrieval(&ScoreMatrix::new(n, s), 300, 3, 0);
        assert_eq!(r.ways, 5);
        assert_eq!(r.image_top1.mean, 1.0);
        assert_eq!(r.brain_top1.mean, 1.0);
        assert_eq!(r.image_top1.ci95, 0.0);
        assert!((r.chance - 0.2).abs() < 1e-12);
    }

    #[test]
    fn directions_are_counted_separately() {
        // Hand-computed 3×3 case. Row-wise (brain→image): row 0 best is col 0 (ok), row 1 best is
        // col 0 (miss), row 2 best is col 2 (ok) → 2/3. Column-wise (image→brain): col 0 best is
        // row 1 (miss), col 1 best is row 1 (ok), col 2 best is row 2 (ok) → 2/3, but different
        // samples succeed.
        #[rustfmt::skip]
        let s = vec![
            0.9, 0.1, 0.0,
            0.95, 0.5, 0.2,
            0.1, 0.3, 0.8,
        ];
        let r = top1_retrieval(&ScoreMatrix::new(3, s), 3, 1, 0);
        assert!((r.image_top1.mean - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.brain_top1.mean - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn ties_are_failures() {
        let r = top1_retrieval(&ScoreMatrix::new(4, vec![1.0; 16]), 4, 2, 0);
        assert_eq!(r.image_top1.mean, 0.0);
        assert_eq!(r.brain_top1.mean, 0.0);
    }

    #[test]
    fn cosine_ignores_scale() {
        let p = vec![2.0, 0.0, 0.0, 3.0];
        let t = vec![1.0, 0.0, 0.0, 1.0];
        let s = ScoreMatrix::cosine(&p, &t, 2);
        assert!((s.get(0, 0) - 1.0).abs() < 1e-6);
        assert!(s.get(0, 1).abs() < 1e-6);
        assert!((s.get(1, 1) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn ci_uses_sample_sd_over_sqrt_loops() {
        let a = summarize(&[0.0, 1.0]);
        assert!((a.mean - 0.5).abs() < 1e-12);
        // sample SD = sqrt(0.5); CI = 1.96 * sqrt(0.5) / sqrt(2) = 0.98
        assert!((a.ci95 - 0.98).abs() < 1e-12);
    }

    #[test]
    fn mind_reader_counts_repeats_of_the_same_image_as_hits() {
        // 4 samples, 2-d. Samples 0 and 1 show image 7, sample 2 image 8, sample 3 image 9.
        // Prediction 1 points at target 0 (same image 7: a hit under Mind Reader's rule, a miss
        // under MindEye2's); prediction 3 points at target 2 (image 8 ≠ 9: a miss).
        let targets = [1.0, 0.0, 1.0, 0.1, 0.0, 1.0, -1.0, -1.0];
        let preds = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0];
        let ids = [7, 7, 8, 9];
        let (b2i, i2b) = mind_reader_batch_retrieval(&preds, &targets, &ids, 2, 4, 1.0, 0);
        // brain→image: pred0→t0 ✓, pred1→t0 ✓ (same image), pred2→t2 ✓, pred3→t2 ✗ = 3/4.
        assert_eq!(b2i, 0.75);
        // image→brain: t0→p0 ✓, t1→p0 ✓ (same image), t2→p2 ✓, t3 = (−1,−1): every cosine is
        // −0.707, the first (p0) wins → image 7 ≠ 9 ✗ = 3/4.
        assert_eq!(i2b, 0.75);
        // With MSE weight only, pred 3 (0,1) is nearest target 2 (0,1): still a miss.
        let (b2i, _) = mind_reader_batch_retrieval(&preds, &targets, &ids, 2, 4, 0.0, 0);
        assert_eq!(b2i, 0.75);
    }

    #[test]
    fn random_scores_sit_near_chance() {
        let n = 300;
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let s: Vec<f32> = (0..n * n).map(|_| rand::Rng::random::<f32>(&mut rng)).collect();
        let r = top1_retrieval(&ScoreMatrix::new(n, s), 300, 30, 1);
        assert!(r.image_top1.mean < 0.03, "{:?}", r.image_top1);
    }
}
