//! MindEye2's evaluation of a model (spec §4.1, §4.4): single-trial forward passes, outputs
//! averaged over each image's repeats, top-1 retrieval in both directions over `loops` draws of
//! `ways` images; Mind Reader's batch variant on single trials; and the prior's sampled
//! embeddings scored against the targets.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use voxbridge_eval::{Retrieval, ScoreMatrix, mind_reader_batch_retrieval, top1_retrieval};
use voxbridge_model::MindEye2;

use crate::trainer::ClipTargets;

/// One subject's single test trials.
#[derive(Debug, Clone)]
pub struct TestTrials {
    /// Index of the subject's ridge in the model.
    pub ridge: usize,
    pub voxel_count: usize,
    /// `[trials, voxel_count]`.
    pub voxels: Vec<f32>,
    pub image_ids: Vec<u32>,
    /// Row of each trial's image in the [`ClipTargets`].
    pub target_rows: Vec<usize>,
}

/// How to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalOptions {
    pub ways: usize,
    pub loops: usize,
    pub seed: u64,
    /// Mind Reader's batch of single trials.
    pub mind_reader_batch: usize,
    /// DDIM steps for prior samples; `None` skips sampling.
    pub prior_steps: Option<usize>,
    /// Rows per forward pass.
    pub chunk: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            ways: voxbridge_eval::MINDEYE2_WAYS,
            loops: voxbridge_eval::MINDEYE2_LOOPS,
            seed: 0,
            mind_reader_batch: 300,
            prior_steps: Some(20),
            chunk: 256,
        }
    }
}

/// Mind Reader's batch retrieval (both directions, fractions).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BatchRetrieval {
    pub batch: usize,
    pub image_top1: f64,
    pub brain_top1: f64,
}

/// The prior's samples against the targets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PriorScores {
    pub ddim_steps: usize,
    /// Mean cosine similarity of each image's sample with its target (flattened tokens).
    pub cosine: f64,
    /// Retrieval with the samples in place of the retrieval embeddings.
    pub retrieval: Retrieval,
}

/// Everything [`evaluate`] measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub test_images: usize,
    pub test_trials: usize,
    pub retrieval: Retrieval,
    pub mind_reader: BatchRetrieval,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prior: Option<PriorScores>,
}

/// Per-image predictions, outputs averaged over repeats, images in id order.
#[derive(Debug, Clone)]
pub struct ImagePredictions {
    pub image_ids: Vec<u32>,
    pub target_rows: Vec<usize>,
    /// `[images, T·D]`: the retrieval embedding (`clip_voxels`).
    pub clip: Vec<f32>,
    /// `[images, T·D]`: the backbone tokens (the prior's condition).
    pub backbone: Vec<f32>,
}

/// Single-trial forward passes in chunks: (`clip_voxels`, `backbone`), each `[trials, T·D]`.
pub fn forward_trials<B: Backend>(
    model: &MindEye2<B>,
    ridge: usize,
    voxels: &[f32],
    voxel_count: usize,
    chunk: usize,
) -> (Vec<f32>, Vec<f32>) {
    let device = model.backbone.backbone_linear.weight.device();
    let rows = voxels.len() / voxel_count.max(1);
    let (mut clip, mut backbone) = (Vec::new(), Vec::new());
    for start in (0..rows).step_by(chunk.max(1)) {
        let end = (start + chunk.max(1)).min(rows);
        let x = Tensor::<B, 2>::from_data(
            TensorData::new(voxels[start * voxel_count..end * voxel_count].to_vec(), [end - start, voxel_count]),
            &device,
        );
        let out = model.forward(ridge, x);
        clip.extend(to_vec(out.clip_voxels.flatten::<2>(1, 2)));
        backbone.extend(to_vec(out.backbone.flatten::<2>(1, 2)));
    }
    (clip, backbone)
}

fn to_vec<B: Backend>(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().expect("float tensor data")
}

/// Averages rows that share an image id (MindEye2 averages the model outputs over repeats).
fn average_rows(rows: &[f32], width: usize, image_ids: &[u32]) -> (Vec<u32>, Vec<f32>) {
    let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (r, &id) in image_ids.iter().enumerate() {
        groups.entry(id).or_default().push(r);
    }
    let mut out = Vec::with_capacity(groups.len() * width);
    for members in groups.values() {
        let mut acc = vec![0f64; width];
        for &r in members {
            for (a, v) in acc.iter_mut().zip(&rows[r * width..(r + 1) * width]) {
                *a += f64::from(*v);
            }
        }
        out.extend(acc.iter().map(|a| (a / members.len() as f64) as f32));
    }
    (groups.into_keys().collect(), out)
}

/// The model's outputs for every test image, averaged over its repeats.
pub fn predict_images<B: Backend>(model: &MindEye2<B>, test: &TestTrials, chunk: usize) -> ImagePredictions {
    let (clip, backbone) = forward_trials(model, test.ridge, &test.voxels, test.voxel_count, chunk);
    let width = clip.len() / test.image_ids.len().max(1);
    let (image_ids, clip) = average_rows(&clip, width, &test.image_ids);
    let (_, backbone) = average_rows(&backbone, width, &test.image_ids);
    let row_of: BTreeMap<u32, usize> = test.image_ids.iter().copied().zip(test.target_rows.iter().copied()).collect();
    let target_rows = image_ids.iter().map(|id| row_of[id]).collect();
    ImagePredictions { image_ids, target_rows, clip, backbone }
}

/// Samples the prior with `steps` DDIM steps (η = 0, no guidance) from `backbone` `[n, T·D]`;
/// the starting noise comes from `seed`. Returns `[n, T·D]`, or `None` without a prior.
pub fn sample_prior<B: Backend>(
    model: &MindEye2<B>,
    backbone: &[f32],
    tokens: usize,
    dim: usize,
    steps: usize,
    seed: u64,
) -> Option<Vec<f32>> {
    let prior = model.prior.as_ref()?;
    let device = model.backbone.backbone_linear.weight.device();
    let n = backbone.len() / (tokens * dim).max(1);
    let brain = Tensor::<B, 3>::from_data(TensorData::new(backbone.to_vec(), [n, tokens, dim]), &device);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut draw = |shape: [usize; 3]| {
        let values: Vec<f32> = (0..shape.iter().product()).map(|_| StandardNormal.sample(&mut rng)).collect();
        Tensor::<B, 3>::from_data(TensorData::new(values, shape), &device)
    };
    let samples = prior.sample_ddim(brain, steps, 1.0, 0.0, &mut draw);
    Some(to_vec(samples.flatten::<2>(1, 2)))
}

/// Runs the whole evaluation of one subject.
pub fn evaluate<B: Backend>(
    model: &MindEye2<B>,
    test: &TestTrials,
    targets: &ClipTargets,
    options: &EvalOptions,
) -> Evaluation {
    let width = targets.tokens * targets.dim;
    // Mind Reader: single trials, one random batch.
    let (single, _) = forward_trials(model, test.ridge, &test.voxels, test.voxel_count, options.chunk);
    let single_targets: Vec<f32> = test.target_rows.iter().flat_map(|&r| targets.row(r).to_vec()).collect();
    let (mr_image, mr_brain) = mind_reader_batch_retrieval(
        &single,
        &single_targets,
        &test.image_ids,
        width,
        options.mind_reader_batch,
        1.0,
        options.seed,
    );
    // MindEye2: outputs averaged over repeats.
    let images = predict_images(model, test, options.chunk);
    let image_targets: Vec<f32> = images.target_rows.iter().flat_map(|&r| targets.row(r).to_vec()).collect();
    let retrieval = top1_retrieval(
        &ScoreMatrix::cosine(&images.clip, &image_targets, width),
        options.ways,
        options.loops,
        options.seed,
    );
    let prior = options.prior_steps.and_then(|steps| {
        let samples = sample_prior(model, &images.backbone, targets.tokens, targets.dim, steps, options.seed)?;
        let cosine = mean_cosine(&samples, &image_targets, width);
        let retrieval = top1_retrieval(
            &ScoreMatrix::cosine(&samples, &image_targets, width),
            options.ways,
            options.loops,
            options.seed,
        );
        Some(PriorScores { ddim_steps: steps, cosine, retrieval })
    });
    Evaluation {
        test_images: images.image_ids.len(),
        test_trials: test.image_ids.len(),
        retrieval,
        mind_reader: BatchRetrieval {
            batch: options.mind_reader_batch.min(test.image_ids.len()),
            image_top1: mr_image,
            brain_top1: mr_brain,
        },
        prior,
    }
}

/// Mean over rows of the cosine similarity of `a[i]` and `b[i]`.
pub fn mean_cosine(a: &[f32], b: &[f32], width: usize) -> f64 {
    let rows = a.len() / width.max(1);
    if rows == 0 {
        return 0.0;
    }
    let total: f64 = a
        .chunks(width)
        .zip(b.chunks(width))
        .map(|(x, y)| {
            let dot: f64 = x.iter().zip(y).map(|(p, q)| f64::from(*p) * f64::from(*q)).sum();
            let nx = x.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
            let ny = y.iter().map(|q| f64::from(*q).powi(2)).sum::<f64>().sqrt();
            if nx > 0.0 && ny > 0.0 { dot / (nx * ny) } else { 0.0 }
        })
        .sum();
    total / rows as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_averaged_per_image_in_id_order() {
        let rows = [1.0, 2.0, 10.0, 20.0, 3.0, 4.0, 5.0, 0.0];
        let (ids, avg) = average_rows(&rows, 2, &[7, 3, 7, 7]);
        assert_eq!(ids, vec![3, 7]);
        assert_eq!(avg, vec![10.0, 20.0, 3.0, 2.0]);
    }

    #[test]
    fn mean_cosine_of_hand_computed_rows() {
        // cos([1,0],[1,0]) = 1; cos([1,1],[1,-1]) = 0; cos([3,4],[-3,-4]) = -1.
        let a = [1.0, 0.0, 1.0, 1.0, 3.0, 4.0];
        let b = [1.0, 0.0, 1.0, -1.0, -3.0, -4.0];
        assert!((mean_cosine(&a, &b, 2) - 0.0).abs() < 1e-12);
        assert!((mean_cosine(&a[..2], &b[..2], 2) - 1.0).abs() < 1e-12);
    }
}
