//! The training loop (spec §2.2–2.3): nominal epochs of balanced multi-subject batches through
//! [`train_step`], the OneCycle learning rate and β1 every iteration, BiMixCo for the first
//! `mixup_pct` of the epochs and SoftCLIP with the annealed temperature after.
//!
//! The loop owns no IO: data arrives in memory ([`TrainData`]), progress and per-epoch
//! evaluation go to a [`TrainObserver`], gradients pass through the `sync_gradients` hook.

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use voxbridge_model::MindEye2;
use voxbridge_model::losses::{LossWeights, cosine_anneal};

use crate::adamw::AdamW;
use crate::comm::StepComm;
use crate::error::StepError;
use crate::sampler::{BalancedStreams, iters_per_epoch};
use crate::schedule::OneCycle;
use crate::step::{Batch, ContrastivePhase, StepContext, SubjectBatch, train_step};

/// BiMixCo's fixed temperature (`mixco_nce(..., temp=0.006)`).
pub const BIMIXCO_TEMPERATURE: f64 = 0.006;
/// SoftCLIP's temperature rises from the first to the second value over the SoftCLIP epochs.
pub const SOFTCLIP_TEMPERATURE: (f64, f64) = (0.004, 0.0075);

/// One subject's training trials in memory.
#[derive(Debug, Clone)]
pub struct SubjectSamples {
    /// Index of the subject's ridge in the model (not the NSD subject number).
    pub ridge: usize,
    /// The NSD subject number; keys the subject's sample stream.
    pub subject: u8,
    pub voxel_count: usize,
    /// `[trials, voxel_count]`, row-major.
    pub voxels: Vec<f32>,
    /// Row of each trial's image in [`ClipTargets`].
    pub target_rows: Vec<usize>,
}

impl SubjectSamples {
    pub fn len(&self) -> usize {
        self.target_rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.target_rows.is_empty()
    }
}

/// Targets by row: CLIP tokens `[images, tokens·dim]` and, when the model has the low-level
/// branch, VAE latents `[images, C·H·W]` and, when the dataset has them, teacher features.
#[derive(Debug, Clone)]
pub struct ClipTargets {
    pub tokens: usize,
    pub dim: usize,
    pub values: Vec<f32>,
    /// `([C, H, W], values)`; `None` trains no low-level loss.
    pub lowlevel: Option<([usize; 3], Vec<f32>)>,
    /// The low-level branch's teacher features; `None` trains the branch without its soft
    /// contrastive term.
    pub teacher: Option<TeacherTargets>,
}

/// Per-image teacher features of the low-level soft contrastive term (spec §2.1): the clean
/// image's and `augs` fixed augmented views' (MindEye2 computes ConvNeXt features of a fresh
/// random augmentation every step; stored views are picked from per step instead).
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherTargets {
    /// Grid positions P (the branch's s×s map: 49) and feature width W (its projector: 512).
    pub positions: usize,
    pub width: usize,
    /// Augmented views A per image (≥ 1).
    pub augs: usize,
    /// `[images, P·W]`, by target row.
    pub clean: Vec<f32>,
    /// `[images, A·P·W]`, by target row.
    pub aug: Vec<f32>,
}

impl TeacherTargets {
    /// Row `row`'s views, clean first: `[(1 + A)·P·W]`.
    pub fn views(&self, row: usize) -> impl Iterator<Item = &f32> {
        let (n, a) = (self.positions * self.width, self.augs * self.positions * self.width);
        self.clean[row * n..(row + 1) * n].iter().chain(&self.aug[row * a..(row + 1) * a])
    }
}

impl ClipTargets {
    pub fn row(&self, row: usize) -> &[f32] {
        let width = self.tokens * self.dim;
        &self.values[row * width..(row + 1) * width]
    }
}

/// Everything the loop reads.
#[derive(Debug, Clone)]
pub struct TrainData {
    pub subjects: Vec<SubjectSamples>,
    pub targets: ClipTargets,
}

/// The whole schedule of a run, fixed before the first step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainPlan {
    pub seed: u64,
    pub epochs: usize,
    pub iters_per_epoch: usize,
    /// Samples per subject per batch (`batch_size // subjects`).
    pub per_subject: usize,
    /// Epochs trained with BiMixCo: `int(mixup_pct · epochs)`.
    pub mixup_epochs: usize,
    pub schedule: OneCycle,
    pub weights: LossWeights,
    /// Stop early after this many steps (the schedule still spans all epochs).
    pub max_steps: Option<u64>,
}

impl TrainPlan {
    /// MindEye2's plan: `per_subject = batch_size // subjects`, `iters_per_epoch =
    /// samples_per_epoch // (per_subject · subjects)`, OneCycle over all steps.
    pub fn mindeye2(
        seed: u64,
        epochs: usize,
        batch_size: usize,
        subjects: usize,
        samples_per_epoch: usize,
        max_lr: f64,
        mixup_pct: f64,
    ) -> Self {
        let per_subject = Self::per_subject(batch_size, subjects);
        let iters = iters_per_epoch(samples_per_epoch, per_subject, subjects);
        TrainPlan {
            seed,
            epochs,
            iters_per_epoch: iters,
            per_subject,
            mixup_epochs: (mixup_pct * epochs as f64) as usize,
            schedule: OneCycle::mindeye2(max_lr, epochs, iters),
            weights: LossWeights::default(),
            max_steps: None,
        }
    }

    /// Samples per subject per batch: `batch_size // subjects`, at least 1
    /// ([`voxbridge_placement::per_subject`], which job planning applies too).
    pub fn per_subject(batch_size: usize, subjects: usize) -> usize {
        voxbridge_placement::per_subject(batch_size, subjects)
    }

    /// Steps the run will take.
    pub fn total_steps(&self) -> u64 {
        let all = (self.epochs * self.iters_per_epoch) as u64;
        self.max_steps.map_or(all, |m| m.min(all))
    }

    /// The contrastive loss and temperature of `epoch` (0-based).
    pub fn phase(&self, epoch: usize) -> ContrastivePhase {
        if epoch < self.mixup_epochs {
            return ContrastivePhase::BiMixCo { temperature: BIMIXCO_TEMPERATURE };
        }
        let (start, end) = SOFTCLIP_TEMPERATURE;
        let temps = cosine_anneal(start, end, self.epochs - self.mixup_epochs);
        ContrastivePhase::SoftClip { temperature: f64::from(temps[epoch - self.mixup_epochs]) }
    }
}

/// What the loop reports after every step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepRecord {
    pub step: u64,
    pub epoch: usize,
    pub lr: f64,
    pub beta1: f64,
    /// `"bimixco"` or `"softclip"`.
    pub phase: &'static str,
    pub temperature: f64,
    pub loss: f64,
    pub clip_loss: f64,
    /// `NaN` when the model has no prior.
    pub prior_loss: f64,
    /// `NaN` without the low-level branch.
    pub blur_loss: f64,
    pub seconds: f64,
    /// The low-level soft contrastive term (unweighted); `NaN` when it is off (no low-level
    /// branch, or no teacher features). Last, so the columns before it keep their places.
    pub blur_cont: f64,
}

/// Where a run stands after a step: everything a checkpoint needs besides the plan and data.
pub struct Progress<'a, B: AutodiffBackend> {
    /// Steps taken so far (the next step's index).
    pub steps_done: u64,
    /// Epoch of the step just taken (0-based).
    pub epoch: usize,
    /// The step just taken was the last of its epoch.
    pub epoch_finished: bool,
    /// The run's last step was just taken.
    pub run_finished: bool,
    pub model: &'a MindEye2<B>,
    pub optim: &'a AdamW<B>,
    pub streams: &'a BalancedStreams,
}

/// A run continued from a checkpoint: the steps already taken, the optimizer and the sampler.
/// The learning-rate schedule and every random draw are functions of the step, so nothing else
/// is needed.
pub struct Resume<B: AutodiffBackend> {
    pub steps_done: u64,
    pub optim: AdamW<B>,
    pub streams: BalancedStreams,
}

/// Why training stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Step(#[from] StepError),
    /// The observer failed (writing metrics, saving a checkpoint).
    #[error("{0}")]
    Observer(Box<dyn std::error::Error + Send + Sync>),
}

/// Receives progress; the loop never writes files or prints itself.
pub trait TrainObserver<B: AutodiffBackend> {
    fn on_step(&mut self, record: &StepRecord);
    /// After the last step of `epoch`, with the current weights (for evaluation).
    fn on_epoch_end(&mut self, epoch: usize, model: &MindEye2<B>);
    /// After every step, once `on_epoch_end` has run for a finished epoch: the place to save
    /// checkpoints. An error stops training.
    /// `comm` reaches the other ranks (see [`StepComm::whole_state`]).
    fn after_step(
        &mut self,
        _progress: &Progress<'_, B>,
        _comm: &mut dyn StepComm<B>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(())
    }
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct Quiet;

impl<B: AutodiffBackend> TrainObserver<B> for Quiet {
    fn on_step(&mut self, _: &StepRecord) {}
    fn on_epoch_end(&mut self, _: usize, _: &MindEye2<B>) {}
}

/// The sample streams of a fresh run of `plan` on `data`.
pub fn fresh_streams(data: &TrainData, plan: &TrainPlan) -> BalancedStreams {
    let (lens, ids) = stream_keys(data);
    BalancedStreams::new(&lens, &ids, plan.seed)
}

/// Samples and ids of each subject's stream, in ridge order.
pub fn stream_keys(data: &TrainData) -> (Vec<usize>, Vec<u64>) {
    (
        data.subjects.iter().map(SubjectSamples::len).collect(),
        data.subjects.iter().map(|s| u64::from(s.subject)).collect(),
    )
}

/// Runs `plan` on `model` with a fresh AdamW and fresh streams, or continues `resume`.
/// `weight_decay` scales MindEye2's decay groups (the groups decide which parameters decay at
/// all). Every random draw of step `s` is a function of `(plan.seed, s)`, so the same plan, data
/// and initial weights give the same run, and a resumed run continues it exactly.
pub fn train<B: AutodiffBackend>(
    mut model: MindEye2<B>,
    data: &TrainData,
    plan: &TrainPlan,
    weight_decay: f64,
    resume: Option<Resume<B>>,
    observer: &mut dyn TrainObserver<B>,
    comm: &mut dyn StepComm<B>,
) -> Result<MindEye2<B>, TrainError> {
    let device = model.backbone.backbone_linear.weight.device();
    if resume.is_none() {
        // Lazily initialised weights are drawn in step 0's forward pass, from this stream.
        <B as burn::tensor::backend::Backend>::seed(&device, plan.seed);
    }
    let Resume { steps_done, mut optim, mut streams } =
        resume.unwrap_or_else(|| Resume { steps_done: 0, optim: AdamW::default(), streams: fresh_streams(data, plan) });
    let decay = |path: &str| crate::decay::mindeye2_weight_decay(path) / 1e-2 * weight_decay;
    let total = plan.total_steps();
    let iters = plan.iters_per_epoch as u64;

    let mut step = steps_done;
    while step < total {
        // Shapes: each step takes `per_subject` trials of every subject → batch [S·per_subject].
        let epoch = (step / iters) as usize;
        let phase = plan.phase(epoch);
        let started = Instant::now();
        let picks = streams.next_batch(plan.per_subject);
        let batch = assemble(data, &picks, &device);
        let point = plan.schedule.at(step as usize);
        let context = StepContext {
            seed: plan.seed,
            step,
            phase,
            loss_weights: &plan.weights,
            lr: point.lr,
            beta1: point.beta1,
            weight_decay: &decay,
        };
        let (next, report) = train_step(model, &mut optim, batch, &context, comm)?;
        model = next;
        let (phase_name, temperature) = match phase {
            ContrastivePhase::BiMixCo { temperature } => ("bimixco", temperature),
            ContrastivePhase::SoftClip { temperature } => ("softclip", temperature),
        };
        observer.on_step(&StepRecord {
            step,
            epoch,
            lr: point.lr,
            beta1: point.beta1,
            phase: phase_name,
            temperature,
            loss: report.total,
            clip_loss: report.clip,
            prior_loss: report.prior.unwrap_or(f64::NAN),
            blur_loss: report.blur.unwrap_or(f64::NAN),
            seconds: started.elapsed().as_secs_f64(),
            blur_cont: report.blur_cont.unwrap_or(f64::NAN),
        });
        step += 1;
        let epoch_finished = step.is_multiple_of(iters);
        if epoch_finished {
            observer.on_epoch_end(epoch, &model);
        }
        let progress = Progress {
            steps_done: step,
            epoch,
            epoch_finished,
            run_finished: step == total,
            model: &model,
            optim: &optim,
            streams: &streams,
        };
        observer.after_step(&progress, comm).map_err(TrainError::Observer)?;
    }
    Ok(model)
}

/// Gathers the picked trials of each subject into tensors: voxels `[b, V_s]`, targets `[b, T, D]`,
/// latents `[b, C, H, W]` and teacher views `[b, 1 + A, P, W]` when the data has them.
pub fn assemble<B: AutodiffBackend>(data: &TrainData, picks: &[Vec<usize>], device: &B::Device) -> Batch<B> {
    let (tokens, dim) = (data.targets.tokens, data.targets.dim);
    let subjects = data
        .subjects
        .iter()
        .zip(picks)
        .filter(|(_, rows)| !rows.is_empty())
        .map(|(s, rows)| {
            let v = s.voxel_count;
            let mut voxels = Vec::with_capacity(rows.len() * v);
            let mut targets = Vec::with_capacity(rows.len() * tokens * dim);
            let mut blur = Vec::new();
            let mut teacher: Vec<f32> = Vec::new();
            for &r in rows {
                voxels.extend_from_slice(&s.voxels[r * v..(r + 1) * v]);
                targets.extend_from_slice(data.targets.row(s.target_rows[r]));
                if let Some(([c, h, w], values)) = &data.targets.lowlevel {
                    let n = c * h * w;
                    blur.extend_from_slice(&values[s.target_rows[r] * n..(s.target_rows[r] + 1) * n]);
                }
                if let Some(t) = &data.targets.teacher {
                    teacher.extend(t.views(s.target_rows[r]));
                }
            }
            let b = rows.len();
            let blur_target = data.targets.lowlevel.as_ref().map(|([c, h, w], _)| {
                Tensor::from_data(TensorData::new(std::mem::take(&mut blur), [b, *c, *h, *w]), device)
            });
            let teacher = data.targets.teacher.as_ref().map(|t| {
                let shape = [b, 1 + t.augs, t.positions, t.width];
                Tensor::from_data(TensorData::new(std::mem::take(&mut teacher), shape), device)
            });
            SubjectBatch {
                subject: s.ridge,
                voxels: Tensor::from_data(TensorData::new(voxels, [b, v]), device),
                clip_target: Tensor::from_data(TensorData::new(targets, [b, tokens, dim]), device),
                blur_target,
                teacher,
            }
        })
        .collect();
    Batch { subjects }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(epochs: usize) -> TrainPlan {
        TrainPlan::mindeye2(0, epochs, 42, 7, 750 * 40, 3e-4, 0.33)
    }

    #[test]
    fn released_pretraining_plan_has_the_spec_step_counts() {
        let p = plan(150);
        assert_eq!(p.per_subject, 6);
        assert_eq!(p.iters_per_epoch, 714);
        assert_eq!(p.total_steps(), 107_100);
        assert_eq!(p.mixup_epochs, 49);
        let fine = TrainPlan::mindeye2(0, 150, 24, 1, 750, 3e-4, 0.33);
        assert_eq!((fine.iters_per_epoch, fine.total_steps()), (31, 4650));
    }

    #[test]
    fn bimixco_for_the_first_49_epochs_then_softclip_with_the_annealed_temperature() {
        let p = plan(150);
        assert_eq!(p.phase(0), ContrastivePhase::BiMixCo { temperature: 0.006 });
        assert_eq!(p.phase(48), ContrastivePhase::BiMixCo { temperature: 0.006 });
        let temp = |e| match p.phase(e) {
            ContrastivePhase::SoftClip { temperature } => temperature,
            other => panic!("epoch {e}: {other:?}"),
        };
        // τ_i = 0.0075 + (0.004 − 0.0075)/2 · (1 + cos(π·i/100)), i = epoch − 49, in float32.
        assert!((temp(49) - 0.004).abs() < 1e-9);
        assert!((temp(149) - 0.0075).abs() < 1e-9);
        let mid = 0.0075 + (0.004 - 0.0075) / 2.0 * (1.0 + (std::f64::consts::PI * 0.5).cos());
        assert!((temp(99) - mid).abs() < 1e-9, "{} vs {mid}", temp(99));
        assert!((temp(74) - (0.0075 - 0.0035 / 2.0 * (1.0 + (std::f64::consts::PI / 4.0).cos()))).abs() < 1e-9);
    }

    #[test]
    fn max_steps_caps_the_run_but_not_the_schedule() {
        let mut p = plan(10);
        p.max_steps = Some(5);
        assert_eq!(p.total_steps(), 5);
        assert_eq!(p.schedule.total_steps, 10 * 714);
    }
}
