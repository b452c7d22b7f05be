//! The validated experiment configuration, with every default filled in.
//!
//! This is what the rest of voxbridge consumes and what is saved next to every run
//! ([`ExperimentConfig::to_toml`]). Writing defaults out explicitly means a saved config still
//! describes the run exactly after a default changes in a later release.

use crate::compute::ComputeConfig;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::raw::RawSessions;

/// A complete, checked experiment. Build it with `load_experiment` or
/// `RawExperiment::validate`; constructing it by hand skips the checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// `[a-z0-9._-]{1,64}`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub data: DataConfig,
    pub train: TrainConfig,
    pub optim: OptimConfig,
    pub checkpoint: CheckpointConfig,
    pub model: ModelConfig,
    pub eval: EvalConfig,
    /// Older resolved configs (before `[compute]`) read as the CPU in f32.
    #[serde(default)]
    pub compute: ComputeConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Path or `s3://` / `gs://` / `file://` URL of the data manifest.
    pub manifest: String,
    /// 1-based subject ids (1..=8), unique, in the order written.
    pub train_subjects: Vec<u8>,
    /// Defaults to `train_subjects`.
    pub eval_subjects: Vec<u8>,
    pub sessions: SessionSelection,
    pub average_test_repeats: bool,
}

/// Which sessions of each training subject to use. Written as `"all"` or an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawSessions", into = "RawSessions")]
pub enum SessionSelection {
    All,
    /// The first N sessions in chronological order (N >= 1).
    First(u32),
}

impl From<SessionSelection> for RawSessions {
    fn from(s: SessionSelection) -> Self {
        match s {
            SessionSelection::All => RawSessions::Word("all".to_owned()),
            SessionSelection::First(n) => RawSessions::Count(i64::from(n)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub seed: u64,
    pub epochs: u32,
    /// In multi-subject mode, at least the number of training subjects.
    pub batch_size: u32,
    /// Optional cap on optimizer steps; `None` runs all epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    /// Nominal epoch length in samples; `None` = MindEye2's rule (750·40 when pretraining on
    /// several subjects, 750·sessions for one subject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_per_epoch: Option<u64>,
    /// Fraction of the epochs trained with BiMixCo before SoftCLIP (0.33).
    pub mixup_pct: f64,
    /// Weight of the diffusion-prior loss (30).
    pub prior_scale: f64,
    /// Weight of the contrastive loss (1).
    pub clip_scale: f64,
    /// Weight of the low-level L1 loss (0.5; used when `model.low_level`).
    pub blur_scale: f64,
    /// A pretraining run directory (path or URL) to fine-tune from; its ridges are dropped and
    /// one new ridge is made for the single training subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
    pub new_subject_bias: NewSubjectBias,
}

/// How a fine-tune initialises the new subject's ridge bias (spec §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NewSubjectBias {
    /// The released code's accident: the first pretraining subject's bias is kept (default,
    /// for parity with the paper's fine-tunes).
    CopyFirstPretrainedSubject,
    /// PyTorch's default `nn.Linear` bias init.
    Fresh,
}

impl NewSubjectBias {
    pub const ALL: [NewSubjectBias; 2] = [Self::CopyFirstPretrainedSubject, Self::Fresh];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CopyFirstPretrainedSubject => "copy-first-pretrained-subject",
            Self::Fresh => "fresh",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    pub lr: f64,
    pub weight_decay: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Path or URL; `None` leaves the choice to the launcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// At least 2: the newest checkpoint may still be being written while an older one is
    /// deleted.
    pub keep_last: u32,
    /// Also keep every N-th checkpoint forever; 0 = off.
    pub keep_every: u32,
    /// Save every N optimizer steps; 0 = at the end of every epoch. The last step is always saved.
    #[serde(default)]
    pub every_steps: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub family: ModelFamily,
    /// Ridge output and backbone width (4096 released).
    pub hidden: u32,
    /// Residual mixer blocks (4 released).
    pub blocks: u32,
    pub dropout: f64,
    pub backbone: BackboneKind,
    /// Train the diffusion prior (its loss weighs `train.prior_scale`).
    pub prior: bool,
    pub prior_depth: u32,
    /// Must divide the CLIP token width.
    pub prior_dim_head: u32,
    pub prior_timesteps: u32,
    /// Train the low-level branch (L1 to the dataset's VAE latents).
    pub low_level: bool,
}

/// MindEye2's backbone as released (its MLP outputs are dead) or with the residuals corrected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackboneKind {
    Released,
    CorrectedResidual,
}

impl BackboneKind {
    pub const ALL: [BackboneKind; 2] = [Self::Released, Self::CorrectedResidual];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Released => "released",
            Self::CorrectedResidual => "corrected-residual",
        }
    }
}

/// `[eval]`: MindEye2's retrieval protocol (30 loops of 300 images) and its schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    pub ways: u32,
    pub loops: u32,
    /// Evaluate every N epochs during training (0 = only at the end).
    pub every_epochs: u32,
    /// DDIM steps for scoring the prior's samples (0 = skip).
    pub prior_steps: u32,
    /// Mind Reader's single-trial batch.
    pub mind_reader_batch: u32,
}

/// The decoder architectures voxbridge knows how to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFamily {
    MindEye2,
    MindEye1,
    MindReader,
    Ridge,
}

impl ModelFamily {
    /// Every family, in the order listed in error messages.
    pub const ALL: [ModelFamily; 4] = [Self::MindEye2, Self::MindEye1, Self::MindReader, Self::Ridge];
    /// The families `voxbridge train` can train; an experiment naming another is refused when
    /// it is validated (`voxbridge config check`).
    pub const TRAINABLE: [ModelFamily; 1] = [Self::MindEye2];

    /// The spelling used in experiment files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MindEye2 => "mindeye2",
            Self::MindEye1 => "mindeye1",
            Self::MindReader => "mindreader",
            Self::Ridge => "ridge",
        }
    }
}

impl fmt::Display for ModelFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ExperimentConfig {
    /// The resolved config as TOML, every default written out. Saved with every run.
    ///
    /// # Panics
    /// Only if the struct was built by hand with a `u64` above `i64::MAX` (TOML integers are
    /// 64-bit signed); configs from `RawExperiment::validate` never are.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a validated ExperimentConfig only holds TOML-representable values")
    }

    /// Hex SHA-256 of [`to_toml`](Self::to_toml) without `compute.device`: identical for files
    /// that differ only in comments, formatting, whether a default was written out, or the
    /// device (the same run, finished or continued on another device).
    pub fn config_hash(&self) -> String {
        let identity =
            ExperimentConfig { compute: ComputeConfig { device: Default::default(), ..self.compute }, ..self.clone() };
        hex::encode(Sha256::digest(identity.to_toml().as_bytes()))
    }
}
