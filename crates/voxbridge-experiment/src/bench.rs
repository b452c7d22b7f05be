//! `voxbridge bench train`: milliseconds per training step, samples per second, achieved
//! TFLOP/s (model FLOPs counted analytically) and peak device memory, on the configurations of
//! `bench/torch_anchor.py` (P1, P1-big, released, pretrain) or on an experiment's model, on any
//! backend ([`Engine`]). One timed step is what the anchors time: forward, losses, backward,
//! AdamW, loss read back (which waits for the device).

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;
use voxbridge_model::losses::LossWeights;
use voxbridge_model::prior::PriorConfig;
use voxbridge_model::{BackboneMode, MindEye2, MindEye2Config};
use voxbridge_train::{
    AdamW, ClipTargets, ContrastivePhase, StepContext, SubjectSamples, TrainData, mindeye2_weight_decay,
};

use crate::engine::{CpuTrain, DeviceMemory, Engine};

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

    /// The anchor's `released` (MindEye2 as released fine-tuning subject 1: hidden 4096, 4
    /// blocks, 256×1664 tokens, prior depth 6; the blurry branch off; batch 24 of subject 1,
    /// 2,212,136,216 parameters) or `pretrain` (the same with subjects 2–8's ridges, batch 63
    /// = 9 per subject, 2,560,103,704 parameters). Voxel counts are NSD's nsdgeneral ones.
    pub fn released(name: &str) -> Option<BenchSetup> {
        const NSD_VOXELS: [usize; 8] = [15724, 14278, 15226, 13153, 13039, 17907, 12682, 14386];
        let (voxels, per_subject) = match name {
            "released" => (NSD_VOXELS[..1].to_vec(), 24),
            "pretrain" => (NSD_VOXELS[1..].to_vec(), 9),
            _ => return None,
        };
        let model = MindEye2Config {
            voxels,
            hidden: 4096,
            blocks: 4,
            clip_tokens: 256,
            clip_dim: 1664,
            dropout: 0.15,
            backbone_mode: BackboneMode::Released,
            low_level: None,
            prior: Some(PriorConfig::mindeye2(1664, 256, 6, 52)),
        };
        Some(BenchSetup { name: name.into(), model, per_subject })
    }

    /// Samples per step.
    pub fn batch(&self) -> usize {
        self.per_subject * self.model.voxels.len()
    }
}

/// What [`bench_train`] measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchResult {
    pub name: String,
    /// `cpu`, `wgpu`, `cuda:N`, and the backend's own name.
    pub device: String,
    pub backend: String,
    pub precision: String,
    pub parameters: u64,
    /// Model FLOPs of one step (forward + backward), counted from the architecture.
    pub model_flop_per_step: f64,
    /// `model_flop_per_step` / median step time.
    pub achieved_tflops: f64,
    /// Device memory after the timed steps (`None`: the backend does not report it).
    pub memory: Option<DeviceMemory>,
    pub batch: usize,
    pub warmup: usize,
    pub steps: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub samples_per_second: f64,
}

/// A model of `setup` and random data for it (one batch per subject).
fn model_and_data<B: AutodiffBackend>(
    setup: &BenchSetup,
    device: &B::Device,
) -> (MindEye2<B>, TrainData, Vec<Vec<usize>>) {
    B::seed(device, 0);
    let model = MindEye2::<B>::init(&setup.model, device);
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
    let data = TrainData { subjects, targets: ClipTargets { tokens, dim, values, lowlevel: None, teacher: None } };
    let picks: Vec<Vec<usize>> = setup.model.voxels.iter().map(|_| (0..b).collect()).collect();
    (model, data, picks)
}

/// The anchors' timed step: SoftCLIP (τ 0.006), default loss weights, lr 3e-4, β1 0.9.
fn bench_step<B: AutodiffBackend>(
    model: MindEye2<B>,
    optim: &mut AdamW<B>,
    data: &TrainData,
    picks: &[Vec<usize>],
    step: u64,
    comm: &mut dyn voxbridge_train::StepComm<B>,
) -> anyhow::Result<MindEye2<B>> {
    let device = model.backbone.backbone_linear.weight.device();
    let batch = voxbridge_train::trainer::assemble::<B>(data, picks, &device);
    let context = StepContext {
        seed: 0,
        step,
        phase: ContrastivePhase::SoftClip { temperature: 0.006 },
        loss_weights: &LossWeights::default(),
        lr: 3e-4,
        beta1: 0.9,
        weight_decay: &mindeye2_weight_decay,
    };
    let (model, _) = voxbridge_train::train_step(model, optim, batch, &context, comm)?;
    Ok(model)
}

/// Times `steps` SoftCLIP steps (τ 0.006, prior loss ×30) after `warmup` untimed ones, on random
/// voxels and a fixed random target, as the anchors do.
pub fn bench_train<B: AutodiffBackend>(
    engine: &Engine<B>,
    setup: &BenchSetup,
    warmup: usize,
    steps: usize,
) -> anyhow::Result<BenchResult> {
    let (mut model, data, picks) = model_and_data::<B>(setup, &engine.device);
    let parameters = burn::module::Module::num_params(&model) as u64;
    let _autocast = voxbridge_model::precision::Autocast::enter(engine.compute_dtype());
    let mut optim = AdamW::<B>::default();
    let mut times = Vec::with_capacity(steps);
    for step in 0..warmup + steps {
        let started = Instant::now();
        model = bench_step(model, &mut optim, &data, &picks, step as u64, &mut voxbridge_train::Alone)?;
        engine.sync();
        if step >= warmup {
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median_ms = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    let batch = setup.batch();
    let flop = step_flop(setup);
    Ok(BenchResult {
        name: setup.name.clone(),
        device: engine.spec.to_string(),
        backend: B::name(&engine.device),
        precision: engine.precision.to_string(),
        parameters,
        model_flop_per_step: flop,
        achieved_tflops: flop / (median_ms / 1e3) / 1e12,
        memory: engine.memory(),
        batch,
        warmup,
        steps,
        median_ms,
        min_ms: sorted.first().copied().unwrap_or(f64::NAN),
        max_ms: sorted.last().copied().unwrap_or(f64::NAN),
        samples_per_second: batch as f64 / (median_ms / 1e3),
    })
}

/// Model FLOPs of one training step of `setup` (forward + backward of every matmul).
pub fn step_flop(setup: &BenchSetup) -> f64 {
    voxbridge_model::budget::train_step_flops(&setup.model, setup.batch()).total() as f64
}

/// Data-parallel steps: `workers` ranks (threads of this process on a loopback TCP ring), the
/// setup's subjects sharded over them, the same global batch as [`bench_train`]. The median is
/// the slowest rank's; samples/s is per worker (its share of the global batch).
pub fn bench_train_workers<B: AutodiffBackend>(
    engine: &Engine<B>,
    setup: &BenchSetup,
    workers: usize,
    warmup: usize,
    steps: usize,
) -> anyhow::Result<BenchResult> {
    use voxbridge_train::distributed::{Placement, ShardComm};
    let (model, data, _) = model_and_data::<B>(setup, &engine.device);
    crate::architecture::materialise(&model);
    let parameters = burn::module::Module::num_params(&model) as u64;
    let subjects = setup.model.voxels.len();
    let placement = Placement::new(subjects, workers, setup.per_subject)?;
    let (rings, _) = voxbridge_collective::local_rings(workers, std::time::Duration::from_secs(120))?;
    let b = setup.per_subject;
    let compute = engine.compute_dtype();
    let per_rank: Vec<Vec<f64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = rings
            .into_iter()
            .enumerate()
            .map(|(rank, mut ring)| {
                let placement = placement.clone();
                let held = placement.subjects_of(rank);
                let mut model = MindEye2 { ridge: model.ridge.clone().keep_only(&held), ..model.clone() };
                let local = TrainData {
                    subjects: held.iter().map(|&s| data.subjects[s].clone()).collect(),
                    targets: data.targets.clone(),
                };
                scope.spawn(move || -> anyhow::Result<Vec<f64>> {
                    let _autocast = voxbridge_model::precision::Autocast::enter(compute);
                    let picks: Vec<Vec<usize>> = local.subjects.iter().map(|_| (0..b).collect()).collect();
                    let mut comm = ShardComm::<B>::new(&mut ring, placement)?;
                    let mut optim = AdamW::<B>::default();
                    let mut times = Vec::with_capacity(steps);
                    for step in 0..warmup + steps {
                        let started = Instant::now();
                        model = bench_step(model, &mut optim, &local, &picks, step as u64, &mut comm)?;
                        if step >= warmup {
                            times.push(started.elapsed().as_secs_f64() * 1e3);
                        }
                    }
                    Ok(times)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a bench rank panicked"))))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let mut per_step: Vec<f64> = (0..steps).map(|i| per_rank.iter().map(|t| t[i]).fold(0.0, f64::max)).collect();
    per_step.sort_by(f64::total_cmp);
    let median_ms = per_step.get(per_step.len() / 2).copied().unwrap_or(f64::NAN);
    let batch = b * subjects;
    let flop = step_flop(setup);
    Ok(BenchResult {
        name: format!("{} ×{workers} workers", setup.name),
        device: engine.spec.to_string(),
        backend: B::name(&engine.device),
        precision: engine.precision.to_string(),
        parameters,
        // Each worker computes its share of the batch: the whole step's FLOPs per median step.
        model_flop_per_step: flop,
        achieved_tflops: flop / (median_ms / 1e3) / 1e12,
        memory: engine.memory(),
        batch,
        warmup,
        steps,
        median_ms,
        min_ms: per_step.first().copied().unwrap_or(f64::NAN),
        max_ms: per_step.last().copied().unwrap_or(f64::NAN),
        samples_per_second: batch as f64 / workers as f64 / (median_ms / 1e3),
    })
}

/// What [`bench_checkpoint`] measured: one checkpoint save and the memory it took beyond what
/// the process held before.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointBench {
    pub name: String,
    /// Bytes committed (all files).
    pub bytes: u64,
    pub seconds: f64,
    pub part_size: usize,
    /// Resident memory before the save and its peak during it (from /proc/self/status).
    pub rss_before: u64,
    pub rss_peak: u64,
}

impl CheckpointBench {
    pub fn extra(&self) -> u64 {
        self.rss_peak.saturating_sub(self.rss_before)
    }
}

/// `VmRSS` or `VmHWM` of this process in bytes (Linux).
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Resets `VmHWM` to the current RSS, so the next peak is the save's own.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Saves once to `url` and measures time and peak memory. `setup = None` writes one blob of
/// `blob_mib` MiB that is already in memory (the multipart path alone: the extra memory should
/// stay near `(in-flight parts + 1) × part size`); `Some` saves a full training checkpoint of
/// that model after one step (weights, AdamW moments, state), including serialisation.
pub fn bench_checkpoint(
    setup: Option<&BenchSetup>,
    blob_mib: usize,
    url: &str,
    part_size: usize,
) -> anyhow::Result<CheckpointBench> {
    use voxbridge_checkpoint::{CheckpointId, CheckpointStore};
    let store = CheckpointStore::open(url)?.with_part_size(part_size);
    let id = CheckpointId { step: 0, generation: store.next_generation()? };
    let (name, save): (String, Box<dyn FnOnce() -> anyhow::Result<u64>>) = match setup {
        None => {
            let blob = bytes::Bytes::from((0..blob_mib << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
            let store = store.clone();
            (
                format!("blob {blob_mib} MiB"),
                Box::new(move || Ok(store.save(id, &[("blob.bin", blob)], serde_json::Value::Null)?.total_bytes())),
            )
        }
        Some(setup) => {
            let (model, data, picks) = model_and_data::<CpuTrain>(setup, &Default::default());
            let mut optim = AdamW::<CpuTrain>::default();
            // One step, so the optimizer holds moments for every trained parameter.
            let model = bench_step(model, &mut optim, &data, &picks, 0, &mut voxbridge_train::Alone)?;
            let store = store.clone();
            let config = setup.model.clone();
            let name = format!("{} training checkpoint", setup.name);
            (
                name,
                Box::new(move || {
                    let card = crate::checkpoint::ModelCard {
                        architecture: config,
                        subjects: (1..=data.subjects.len() as u8).collect(),
                        run: "bench".into(),
                        steps: 1,
                    };
                    let plan = voxbridge_train::TrainPlan::mindeye2(0, 1, 42, data.subjects.len(), 42, 3e-4, 0.33);
                    let base =
                        crate::resume::base_state("bench", "none", &plan, &card.subjects, &Default::default(), None);
                    let streams = voxbridge_train::fresh_streams(&data, &plan);
                    let state = crate::resume::training_state(&base, 1, 0, false, streams.state(), &optim, f64::NAN);
                    let moments = optim.export(&model);
                    let parts = crate::resume::TrainingCheckpoint {
                        model: &model,
                        card: &card,
                        moments: &moments,
                        state: &state,
                        config_toml: "",
                    };
                    Ok(crate::resume::save_training(&store, id, &parts)?.total_bytes())
                }),
            )
        }
    };
    let peak_reset = reset_peak_rss();
    let rss_before = proc_status_bytes("VmRSS:").unwrap_or(0);
    let started = Instant::now();
    let bytes = save()?;
    let seconds = started.elapsed().as_secs_f64();
    let rss_peak = if peak_reset { proc_status_bytes("VmHWM:").unwrap_or(0) } else { 0 };
    store.delete(id)?;
    Ok(CheckpointBench { name, bytes, seconds, part_size, rss_before, rss_peak })
}
