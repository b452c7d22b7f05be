//! Per-section checks behind [`RawExperiment::validate`](crate::RawExperiment::validate).
//!
//! Each section function runs every rule for its keys before giving up, so one bad value
//! never hides another; the per-value rules themselves live in `rules`.

use crate::compute::{ComputeConfig, DeviceSpec, Precision};
use crate::error::Problem;
use crate::location::SourceMap;
use crate::raw::{RawCheckpoint, RawCompute, RawData, RawEval, RawModel, RawOptim, RawTrain};
use crate::rules;
use crate::validated::{
    BackboneKind, CheckpointConfig, DataConfig, EvalConfig, ModelConfig, ModelFamily, NewSubjectBias, OptimConfig,
    SessionSelection, TrainConfig,
};

/// MindEye2 trains for 150 epochs.
const DEFAULT_EPOCHS: u32 = 150;
/// MindEye2's batch size.
const DEFAULT_BATCH_SIZE: u32 = 42;
const DEFAULT_LR: f64 = 3e-4;
const DEFAULT_WEIGHT_DECAY: f64 = 1e-2;
/// The smallest safe value; see `checkpoint.keep_last`.
const DEFAULT_KEEP_LAST: u32 = 2;

/// Collects problems with their locations. Invariant: every method that returns `None` has
/// recorded a problem, so a `None` anywhere implies `problems` is non-empty.
pub(crate) struct Checker<'a> {
    source: Option<SourceMap<'a>>,
    problems: Vec<Problem>,
}

impl<'a> Checker<'a> {
    /// `text` is the source, when available, for locating problems.
    pub(crate) fn new(text: Option<&'a str>) -> Self {
        Self { source: text.map(SourceMap::new), problems: Vec::new() }
    }

    pub(crate) fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    pub(crate) fn into_problems(self) -> Vec<Problem> {
        self.problems
    }

    pub(crate) fn push(&mut self, field: &str, index: Option<usize>, message: String) {
        let path: Vec<&str> = field.split('.').collect();
        let at = self.source.as_ref().and_then(|s| s.position(&path, index));
        self.problems.push(Problem {
            field: field.to_owned(),
            line: at.map(|(line, _)| line),
            column: at.map(|(_, column)| column),
            message,
        });
    }

    pub(crate) fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|message| self.push(field, None, message)).ok()
    }

    pub(crate) fn required<R, T>(
        &mut self,
        field: &str,
        value: Option<R>,
        why: &str,
        rule: impl FnOnce(R) -> Result<T, String>,
    ) -> Option<T> {
        let Some(v) = value else {
            self.push(field, None, format!("is missing; it is required: {why}"));
            return None;
        };
        self.check(field, rule(v))
    }

    pub(crate) fn optional<R, T>(
        &mut self,
        field: &str,
        value: Option<R>,
        default: T,
        rule: impl FnOnce(R) -> Result<T, String>,
    ) -> Option<T> {
        match value {
            Some(v) => self.check(field, rule(v)),
            None => Some(default),
        }
    }

    pub(crate) fn subjects(&mut self, field: &str, values: &[i64]) -> Option<Vec<u8>> {
        match rules::subjects(values) {
            Ok(ids) => Some(ids),
            Err(problems) => {
                for (index, message) in problems {
                    self.push(field, index, message);
                }
                None
            }
        }
    }
}

pub(crate) fn data(c: &mut Checker<'_>, raw: RawData) -> Option<DataConfig> {
    let manifest = c.required(
        "data.manifest",
        raw.manifest,
        "give the data manifest to read (a path or an s3://, gs:// or file:// URL)",
        |m| rules::storage_location(&m),
    );
    let train_subjects = match raw.train_subjects {
        Some(ids) => c.subjects("data.train_subjects", &ids),
        None => {
            let why = "list the subjects to train on, e.g. [1] or [2, 3, 4, 5, 6, 7, 8]";
            c.push("data.train_subjects", None, format!("is missing; it is required: {why}"));
            None
        }
    };
    let eval_subjects = match raw.eval_subjects {
        Some(ids) => c.subjects("data.eval_subjects", &ids),
        None => train_subjects.clone(),
    };
    let sessions = c.optional("data.sessions", raw.sessions, SessionSelection::All, SessionSelection::try_from);
    Some(DataConfig {
        manifest: manifest?,
        train_subjects: train_subjects?,
        eval_subjects: eval_subjects?,
        sessions: sessions?,
        average_test_repeats: raw.average_test_repeats.unwrap_or(true),
    })
}

pub(crate) fn train(c: &mut Checker<'_>, raw: RawTrain, n_subjects: Option<usize>) -> Option<TrainConfig> {
    let seed = c.optional("train.seed", raw.seed, 0, |v| rules::at_least_u64(v, 0, ""));
    let epochs = c.optional("train.epochs", raw.epochs, DEFAULT_EPOCHS, |v| rules::at_least_u32(v, 1, ""));
    let batch_size = c.optional("train.batch_size", raw.batch_size, DEFAULT_BATCH_SIZE, |v| {
        let b = rules::at_least_u32(v, 1, "")?;
        rules::batch_fits_subjects(b, n_subjects.unwrap_or(1)).map(|()| b)
    });
    let why = " (leave it out to train for all epochs)";
    let max_steps = c.optional("train.max_steps", raw.max_steps, None, |v| rules::at_least_u64(v, 1, why).map(Some));
    let why = " (leave it out for MindEye2's rule: 750·40 samples pretraining, 750·sessions fine-tuning)";
    let samples_per_epoch = c
        .optional("train.samples_per_epoch", raw.samples_per_epoch, None, |v| rules::at_least_u64(v, 1, why).map(Some));
    let mixup_pct = c.optional("train.mixup_pct", raw.mixup_pct, 0.33, rules::fraction);
    let prior_scale = c.optional("train.prior_scale", raw.prior_scale, 30.0, rules::weight_decay);
    let clip_scale = c.optional("train.clip_scale", raw.clip_scale, 1.0, rules::weight_decay);
    let blur_scale = c.optional("train.blur_scale", raw.blur_scale, 0.5, rules::weight_decay);
    let init_from = c.optional("train.init_from", raw.init_from, None, |u| rules::storage_location(&u).map(Some));
    let new_subject_bias =
        c.optional("train.new_subject_bias", raw.new_subject_bias, NewSubjectBias::CopyFirstPretrainedSubject, |v| {
            rules::one_of(&v, &NewSubjectBias::ALL, |b| b.as_str())
        });
    if let (Some(Some(_)), Some(n)) = (&init_from, n_subjects)
        && n != 1
    {
        c.push(
            "train.init_from",
            None,
            format!("fine-tuning from a pretraining run trains one new subject, but data.train_subjects has {n}"),
        );
    }
    Some(TrainConfig {
        seed: seed?,
        epochs: epochs?,
        batch_size: batch_size?,
        max_steps: max_steps?,
        samples_per_epoch: samples_per_epoch?,
        mixup_pct: mixup_pct?,
        prior_scale: prior_scale?,
        clip_scale: clip_scale?,
        blur_scale: blur_scale?,
        init_from: init_from?,
        new_subject_bias: new_subject_bias?,
    })
}

pub(crate) fn optim(c: &mut Checker<'_>, raw: RawOptim) -> Option<OptimConfig> {
    let lr = c.optional("optim.lr", raw.lr, DEFAULT_LR, rules::learning_rate);
    let weight_decay = c.optional("optim.weight_decay", raw.weight_decay, DEFAULT_WEIGHT_DECAY, rules::weight_decay);
    Some(OptimConfig { lr: lr?, weight_decay: weight_decay? })
}

pub(crate) fn checkpoint(c: &mut Checker<'_>, raw: RawCheckpoint) -> Option<CheckpointConfig> {
    let url = c.optional("checkpoint.url", raw.url, None, |u| rules::storage_location(&u).map(Some));
    let why = ", because the newest checkpoint may still be being written when an older one is \
               deleted; keeping only one could leave no complete checkpoint to resume from";
    let keep_last =
        c.optional("checkpoint.keep_last", raw.keep_last, DEFAULT_KEEP_LAST, |v| rules::at_least_u32(v, 2, why));
    let keep_every =
        c.optional("checkpoint.keep_every", raw.keep_every, 0, |v| rules::at_least_u32(v, 0, " (0 turns it off)"));
    let every_steps = c.optional("checkpoint.every_steps", raw.every_steps, 0, |v| {
        rules::at_least_u32(v, 0, " (0 saves at the end of every epoch)")
    });
    Some(CheckpointConfig { url: url?, keep_last: keep_last?, keep_every: keep_every?, every_steps: every_steps? })
}

pub(crate) fn model(c: &mut Checker<'_>, raw: RawModel) -> Option<ModelConfig> {
    let family = c.optional("model.family", raw.family, ModelFamily::MindEye2, |f| rules::trainable_family(&f));
    let hidden = c.optional("model.hidden", raw.hidden, 4096, |v| rules::at_least_u32(v, 1, ""));
    let blocks = c.optional("model.blocks", raw.blocks, 4, |v| rules::at_least_u32(v, 0, ""));
    let dropout = c.optional("model.dropout", raw.dropout, 0.15, rules::probability_below_one);
    let backbone = c.optional("model.backbone", raw.backbone, BackboneKind::Released, |v| {
        rules::one_of(&v, &BackboneKind::ALL, |b| b.as_str())
    });
    let prior_depth = c.optional("model.prior_depth", raw.prior_depth, 6, |v| rules::at_least_u32(v, 1, ""));
    let prior_dim_head = c.optional("model.prior_dim_head", raw.prior_dim_head, 52, |v| rules::at_least_u32(v, 2, ""));
    let prior_timesteps =
        c.optional("model.prior_timesteps", raw.prior_timesteps, 100, |v| rules::at_least_u32(v, 2, ""));
    Some(ModelConfig {
        family: family?,
        hidden: hidden?,
        blocks: blocks?,
        dropout: dropout?,
        backbone: backbone?,
        prior: raw.prior.unwrap_or(true),
        prior_depth: prior_depth?,
        prior_dim_head: prior_dim_head?,
        prior_timesteps: prior_timesteps?,
        low_level: raw.low_level.unwrap_or(false),
    })
}

pub(crate) fn eval(c: &mut Checker<'_>, raw: RawEval) -> Option<EvalConfig> {
    let ways = c.optional("eval.ways", raw.ways, 300, |v| rules::at_least_u32(v, 2, ""));
    let loops = c.optional("eval.loops", raw.loops, 30, |v| rules::at_least_u32(v, 1, ""));
    let every_epochs =
        c.optional("eval.every_epochs", raw.every_epochs, 0, |v| rules::at_least_u32(v, 0, " (0 = only at the end)"));
    let prior_steps =
        c.optional("eval.prior_steps", raw.prior_steps, 20, |v| rules::at_least_u32(v, 0, " (0 skips prior samples)"));
    let mind_reader_batch =
        c.optional("eval.mind_reader_batch", raw.mind_reader_batch, 300, |v| rules::at_least_u32(v, 2, ""));
    Some(EvalConfig {
        ways: ways?,
        loops: loops?,
        every_epochs: every_epochs?,
        prior_steps: prior_steps?,
        mind_reader_batch: mind_reader_batch?,
    })
}

pub(crate) fn compute(c: &mut Checker<'_>, raw: RawCompute) -> Option<ComputeConfig> {
    let device = c.optional("compute.device", raw.device, DeviceSpec::Cpu, |d| d.parse());
    let precision = c.optional("compute.precision", raw.precision, Precision::Fp32, |v| {
        rules::one_of(&v, &Precision::ALL, |p| p.as_str())
    });
    Some(ComputeConfig { device: device?, precision: precision? })
}
