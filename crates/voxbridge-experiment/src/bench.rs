//! `voxbridge bench train`: milliseconds per training step and samples per second, on the
//! configurations of `notes/perf-anchors.md` (P1, P1-big) or on an experiment's model. One timed
//! step is what the anchors time: forward, losses, backward, AdamW, loss read back.

use std::time::Instant;

use burn::tensor::backend::Backend;
use serde::Serialize;
use voxbridge_model::losses::LossWeights;
use voxbridge_model::prior::PriorConfig;
use voxbridge_model::{BackboneMode, MindEye2, MindEye2Config};
use voxbridge_train::{AdamW, ClipTargets, ContrastivePhase, SubjectSamples, TrainData, mindeye2_weight_decay};

use crate::TrainBackend;

/// A benchmark configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchSetup {
    pub name: String,
    pub model: MindEye2Config,
    pub per_subject: usize,
}

impl BenchSetup {
    /// The anchors' subjects: NSD's subjects 2–8 voxel counts ÷ 32.
    pub const ANCHOR_VOXELS: [usize; 7] = [446, 476, 411, 407, 560, 396, 450];

    /// `P1` or `P1-big` from `notes/perf-anchors.md`.
    pub fn anchor(name: &str) -> Option<BenchSetup> {
        let (hidden, tokens, dim) = match name {
            "P1" => (512, 16, 128),
            "P1-big" => (1024, 64, 256),
            _ => return None,
        };
        let model = MindEye2Config {
            voxels: Self::ANCHOR_VOXELS.to_vec(),
            hidden,
            blocks: 4,
            clip_tokens: tokens,
            clip_dim: dim,
            dropout: 0.15,
            backbone_mode: BackboneMode::Released,
            low_level: None,
            prior: Some(PriorConfig::mindeye2(dim, tokens, 2, 32)),
        };
        Some(BenchSetup { name: name.into(), model, per_subject: 6 })
    }
}

/// What [`bench_train`] measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchResult {
    pub name: String,
    pub parameters: u64,
    pub batch: usize,
    pub warmup: usize,
    pub steps: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub samples_per_second: f64,
}

/// Times `steps` SoftCLIP steps (τ 0.006, prior loss ×30) after `warmup` untimed ones, on random
/// voxels and a fixed random target, as the anchors do.
pub fn bench_train(setup: &BenchSetup, warmup: usize, steps: usize) -> BenchResult {
    let device = Default::default();
    <TrainBackend as Backend>::seed(&device, 0);
    let model = MindEye2::<TrainBackend>::init(&setup.model, &device);
    let parameters = burn::module::Module::num_params(&model) as u64;
    let (tokens, dim) = (setup.model.clip_tokens, setup.model.clip_dim);
    let b = setup.per_subject;
    let mut values = vec![0f32; b * tokens * dim];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    values.iter_mut().for_each(|v| *v = next());
    let subjects = setup
        .model
        .voxels
        .iter()
        .enumerate()
        .map(|(ridge, &v)| SubjectSamples {
            ridge,
            subject: ridge as u8 + 1,
            voxel_count: v,
            voxels: (0..b * v).map(|_| next()).collect(),
            target_rows: (0..b).collect(),
        })
        .collect();
    let data = TrainData { subjects, targets: ClipTargets { tokens, dim, values, lowlevel: None } };
    let picks: Vec<Vec<usize>> = setup.model.voxels.iter().map(|_| (0..b).collect()).collect();
    let mut optim = AdamW::<TrainBackend>::default();
    let mut model = model;
    let mut times = Vec::with_capacity(steps);
    for step in 0..warmup + steps {
        let started = Instant::now();
        let batch = voxbridge_train::trainer::assemble::<TrainBackend>(&data, &picks, &device);
        let (next_model, _report) = voxbridge_train::train_step(
            model,
            &mut optim,
            batch,
            ContrastivePhase::SoftClip { temperature: 0.006 },
            &LossWeights::default(),
            (3e-4, 0.9),
            (0, step as u64),
            &mindeye2_weight_decay,
            &mut |g| g,
        )
        .expect("random data gives finite losses");
        model = next_model;
        if step >= warmup {
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median_ms = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    let batch = b * setup.model.voxels.len();
    BenchResult {
        name: setup.name.clone(),
        parameters,
        batch,
        warmup,
        steps,
        median_ms,
        min_ms: sorted.first().copied().unwrap_or(f64::NAN),
        max_ms: sorted.last().copied().unwrap_or(f64::NAN),
        samples_per_second: batch as f64 / (median_ms / 1e3),
    }
}
