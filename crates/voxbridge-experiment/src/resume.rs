//! Training checkpoints: the complete state of a run, saved through
//! [`voxbridge_checkpoint::CheckpointStore`] (stage every file, then `COMMIT`), and read back to
//! continue the run exactly.
//!
//! ```text
//! <checkpoint.url>/step-SSSSSSSSS-gen-GGG/
//!   model.safetensors      weights; keys are burn module paths (`ridge.linears.0.weight`,
//!                          `backbone.backbone_linear.weight`, …), f32, row-major — Python's
//!                          `safetensors.numpy.load_file` opens it
//!   model.json             architecture + NSD subject of each ridge (ModelCard)
//!   optimizer.safetensors  AdamW moments: `<param path>.exp_avg`, `<param path>.exp_avg_sq`
//!   state.json             steps done, epoch, sampler streams (epoch, position, order per
//!                          subject), RNG scheme and seed, AdamW step counts and constants,
//!                          config hash, subjects and sessions, voxbridge version, parent
//!   config.toml            the resolved experiment
//!   COMMIT                 written last: every file's size and sha256, plus a summary
//! ```
//!
//! [`load_model`] reads a trained model from a run directory or from any checkpoint location.
//!
//! The learning-rate/β1 schedule is a function of the step, and every random draw of step `s`
//! (sampler orders, BiMixCo, prior noise, dropout) is a function of `(seed, s)`: the step count
//! *is* the schedule position and the RNG state, and the checkpoint records how.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use bytes::Bytes;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};
use voxbridge_checkpoint::{CheckpointId, CheckpointStore, CommitRecord, DAMAGED_FILE, Located, locate};
use voxbridge_model::MindEye2;
use voxbridge_train::sampler::{BalancedStreams, Stream};
use voxbridge_train::{AdamW, ParamMoments, Resume, TrainData, TrainPlan, stream_keys};

use crate::checkpoint::{
    self, MODEL_FILE, ModelCard, WEIGHTS_FILE, model_bytes, model_from_bytes, parse_card, saved_model_dir,
};
use burn::tensor::backend::AutodiffBackend;

pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";
pub const CONFIG_FILE: &str = "config.toml";
/// Version of `state.json`'s layout.
pub const STATE_FORMAT: u32 = 1;

/// How every random draw is derived; stored so a reader knows what "the RNG state" is.
pub use voxbridge_seed::RNG_SCHEME;

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingState {
    pub format: u32,
    pub run: String,
    pub config_hash: String,
    /// Optimizer steps taken: the next step's index and the schedule position.
    pub steps_done: u64,
    pub total_steps: u64,
    /// Epoch of the last step taken, and whether it was that epoch's last.
    pub epoch: usize,
    pub epoch_finished: bool,
    pub rng: RngState,
    pub sampler: Vec<Stream>,
    pub optimizer: OptimizerState,
    pub train_subjects: Vec<u8>,
    /// Sessions each training subject's trials came from, keyed `"subject<N>"`.
    pub sessions_used: BTreeMap<String, Vec<u16>>,
    /// Loss of the last step taken.
    pub last_loss: Option<f64>,
    pub voxbridge_version: String,
    /// The checkpoint or run this one was fine-tuned from.
    pub parent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngState {
    pub seed: u64,
    pub scheme: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerState {
    pub kind: String,
    pub beta2: f64,
    pub eps: f64,
    /// AdamW step count of each parameter with state, by burn module path.
    pub steps: BTreeMap<String, i32>,
}

/// One committed checkpoint, found.
#[derive(Debug)]
pub struct Found {
    pub store: CheckpointStore,
    pub record: CommitRecord,
}

impl Found {
    pub fn id(&self) -> CheckpointId {
        self.record.id
    }

    /// The checkpoint's URL (what `--resume <url>` and `train.init_from` accept).
    pub fn location(&self) -> String {
        self.store.location(self.record.id)
    }

    fn read(&self, name: &str) -> anyhow::Result<Bytes> {
        Ok(self.store.read(&self.record, name)?)
    }
}

/// Resolves `location` to one committed checkpoint: a `…/step-…-gen-…` checkpoint (which must be
/// committed), or a root of checkpoints (its newest committed one not marked damaged). `None`: a root with no
/// committed checkpoint.
pub fn find_checkpoint(location: &str) -> anyhow::Result<Option<Found>> {
    match locate(location)? {
        Located::One(store, id) => {
            let record = store.commit_record(id)?;
            Ok(Some(Found { store, record }))
        }
        // A checkpoint `--resume auto` marked DAMAGED is never a root's newest one.
        Located::Root(store) => {
            match store.list()?.into_iter().filter(|l| l.committed && !l.damaged).map(|l| l.id).max() {
                Some(id) => {
                    let record = store.commit_record(id)?;
                    Ok(Some(Found { store, record }))
                }
                None => Ok(None),
            }
        }
    }
}

/// The newest committed checkpoint under `store` whose files all verify (`--resume auto`).
/// A committed checkpoint whose marker or files fail is skipped — never deleted — with a
/// warning naming each failing file; with `mark`, a [`DAMAGED_FILE`] note is left beside its
/// marker so retention keeps it without counting it and `ckpt ls` shows it. `None`: nothing
/// committed; an error when committed checkpoints exist but none is intact.
pub fn newest_intact(store: &CheckpointStore, mark: bool) -> anyhow::Result<Option<Found>> {
    let listing = store.list()?;
    let marked = listing.iter().filter(|l| l.committed && l.damaged).count();
    let mut committed: Vec<CheckpointId> = listing.iter().filter(|l| l.committed && !l.damaged).map(|l| l.id).collect();
    committed.sort_unstable_by(|a, b| b.cmp(a));
    let mut skipped = Vec::new();
    for id in committed {
        let failures: Vec<String> = match store.commit_record(id) {
            Ok(record) => {
                let failures = store.verify(&record);
                // A store that did not answer is not evidence of damage: fail, to be retried,
                // rather than skip (and mark) a checkpoint that may be intact.
                if let Some(e) = failures.iter().find(|e| !e.is_damage()) {
                    bail!("cannot verify {}: {e}", store.location(id));
                }
                if failures.is_empty() {
                    if !skipped.is_empty() {
                        tracing::warn!(
                            resume_from = %store.location(id),
                            "resuming from the newest intact checkpoint, skipping {} damaged newer one(s)",
                            skipped.len()
                        );
                    }
                    return Ok(Some(Found { store: store.clone(), record }));
                }
                failures.iter().map(ToString::to_string).collect()
            }
            // Listed as committed, gone when read: deleted meanwhile (a leftover process's
            // retention), not damaged; nothing to mark.
            Err(voxbridge_checkpoint::CheckpointError::NotCommitted { location }) => {
                tracing::warn!(checkpoint = %location, "no longer committed when read; skipping it");
                continue;
            }
            Err(e) if e.is_damage() => vec![e.to_string()],
            Err(e) => return Err(e.into()),
        };
        let why = failures.join("\n");
        tracing::error!(
            checkpoint = %store.location(id),
            "DAMAGED CHECKPOINT SKIPPED (kept, not deleted; not resumed from): {}",
            failures.join("; ")
        );
        if mark && let Err(e) = store.mark_damaged(id, &why) {
            tracing::warn!("could not record the damage beside {}: {e}", store.location(id));
        }
        skipped.push((id, why));
    }
    if skipped.is_empty() && marked == 0 {
        return Ok(None);
    }
    let detail: Vec<String> = skipped.iter().map(|(id, why)| format!("{}: {why}", store.location(*id))).collect();
    bail!(
        "{}: every committed checkpoint is damaged ({} marked {DAMAGED_FILE} earlier{}{}); none to resume from. \
         Remove them, or pass another checkpoint URL / --resume URL",
        store.url(),
        marked,
        if detail.is_empty() { "" } else { "; now: " },
        detail.join("; ")
    )
}

/// `model.json` and the weights' bytes of a checkpoint, checksums verified.
pub fn read_model_files(found: &Found) -> anyhow::Result<(ModelCard, Vec<u8>)> {
    let card = parse_card(&found.read(MODEL_FILE)?, &format!("{}/{MODEL_FILE}", found.location()))?;
    Ok((card, found.read(WEIGHTS_FILE)?.to_vec()))
}

/// Reads a trained model: `location` is a run directory (or its `checkpoint/`), or a training
/// checkpoint by path or URL — one `…/step-…-gen-…` checkpoint, or a root of them (the newest
/// committed one is read).
pub fn load_model<B: burn::tensor::backend::Backend>(
    location: &std::path::Path,
    device: &B::Device,
) -> anyhow::Result<(MindEye2<B>, ModelCard)> {
    if saved_model_dir(location).is_none()
        && let Some(found) = find_checkpoint(&location.to_string_lossy())?
    {
        let (card, weights) = read_model_files(&found)?;
        let model = model_from_bytes(&card, weights, &found.location(), device)?;
        return Ok((model, card));
    }
    checkpoint::load_saved(location, device)
}

/// Everything one save writes.
pub struct TrainingCheckpoint<'a, B: AutodiffBackend> {
    pub model: &'a MindEye2<B>,
    pub card: &'a ModelCard,
    /// AdamW moments by parameter path (every parameter with state).
    pub moments: &'a [ParamMoments],
    pub state: &'a TrainingState,
    pub config_toml: &'a str,
}

/// Serialises and commits one checkpoint. Memory: one serialised copy of the state (the files'
/// bytes) plus the store's bounded upload buffers.
pub fn save_training<B: AutodiffBackend>(
    store: &CheckpointStore,
    id: CheckpointId,
    parts: &TrainingCheckpoint<'_, B>,
) -> anyhow::Result<CommitRecord> {
    let moments = parts.moments;
    let mut state = parts.state.clone();
    state.optimizer.steps = moments.iter().map(|m| (m.path.clone(), m.steps)).collect();
    let files = [
        (WEIGHTS_FILE, Bytes::from(model_bytes(parts.model)?)),
        (OPTIMIZER_FILE, Bytes::from(optimizer_bytes(moments)?)),
        (MODEL_FILE, Bytes::from(serde_json::to_vec_pretty(parts.card)?)),
        (STATE_FILE, Bytes::from(serde_json::to_vec_pretty(&state)?)),
        (CONFIG_FILE, Bytes::from(parts.config_toml.as_bytes().to_vec())),
    ];
    let summary = serde_json::json!({
        "run": state.run,
        "steps_done": state.steps_done,
        "total_steps": state.total_steps,
        "epoch": state.epoch,
        "epoch_finished": state.epoch_finished,
        "last_loss": state.last_loss,
        "config_hash": state.config_hash,
        "voxbridge_version": state.voxbridge_version,
        "parent": state.parent,
    });
    Ok(store.save(id, &files, summary)?)
}

/// `<path>.exp_avg` and `<path>.exp_avg_sq` for every parameter, f32 in the parameter's shape.
fn optimizer_bytes(moments: &[ParamMoments]) -> anyhow::Result<Vec<u8>> {
    let as_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let buffers: Vec<(String, Vec<usize>, Vec<u8>)> = moments
        .iter()
        .flat_map(|m| {
            [
                (format!("{}.exp_avg", m.path), m.shape.clone(), as_bytes(&m.exp_avg)),
                (format!("{}.exp_avg_sq", m.path), m.shape.clone(), as_bytes(&m.exp_avg_sq)),
            ]
        })
        .collect();
    let views = buffers
        .iter()
        .map(|(name, shape, data)| Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), data)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .context("serialising the optimizer state")?;
    safetensors::serialize(views, None).context("serialising the optimizer state")
}

fn optimizer_moments(bytes: &[u8], steps: &BTreeMap<String, i32>, origin: &str) -> anyhow::Result<Vec<ParamMoments>> {
    let file = SafeTensors::deserialize(bytes).with_context(|| format!("{origin}: not a safetensors file"))?;
    let mut out = Vec::with_capacity(steps.len());
    for (path, &count) in steps {
        let read = |suffix: &str| -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
            let name = format!("{path}.{suffix}");
            let view = file.tensor(&name).with_context(|| format!("{origin}: missing tensor `{name}`"))?;
            if view.dtype() != Dtype::F32 {
                bail!("{origin}: `{name}` is {:?}, expected F32", view.dtype());
            }
            let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            Ok((view.shape().to_vec(), values))
        };
        let (shape, exp_avg) = read("exp_avg")?;
        let (_, exp_avg_sq) = read("exp_avg_sq")?;
        out.push(ParamMoments { path: path.clone(), shape, exp_avg, exp_avg_sq, steps: count });
    }
    Ok(out)
}

/// A checkpoint read back for resuming.
pub struct Restored<B: AutodiffBackend> {
    pub model: MindEye2<B>,
    pub card: ModelCard,
    pub state: TrainingState,
    pub config_toml: String,
    pub resume: Resume<B>,
}

/// Reads every file of `found` (checksums verified) and rebuilds model, optimizer and sampler for
/// `plan` on `data`. State that does not fit this run (other subjects, sizes, seed) is an error.
pub fn restore<B: AutodiffBackend>(
    found: &Found,
    data: &TrainData,
    plan: &TrainPlan,
    device: &B::Device,
) -> anyhow::Result<Restored<B>> {
    let at = found.location();
    let state: TrainingState = serde_json::from_slice(&found.read(STATE_FILE)?)
        .with_context(|| format!("{at}/{STATE_FILE} is not a voxbridge training state"))?;
    if state.format != STATE_FORMAT {
        bail!("{at}/{STATE_FILE}: format {} (this voxbridge reads {STATE_FORMAT})", state.format);
    }
    if state.rng.seed != plan.seed {
        bail!("{at}: trained with seed {}, this run has seed {}", state.rng.seed, plan.seed);
    }
    let (card, weights) = read_model_files(found)?;
    let model = model_from_bytes::<B>(&card, weights, &format!("{at}/{WEIGHTS_FILE}"), device)?;
    let moments =
        optimizer_moments(&found.read(OPTIMIZER_FILE)?, &state.optimizer.steps, &format!("{at}/{OPTIMIZER_FILE}"))?;
    let mut optim = AdamW::import(&model, moments).map_err(|e| anyhow::anyhow!("{at}/{OPTIMIZER_FILE}: {e}"))?;
    optim.beta2 = state.optimizer.beta2;
    optim.eps = state.optimizer.eps;
    // A rank of a data-parallel run continues its own subjects' streams.
    let (lens, ids) = stream_keys(data);
    let sampler = state.sampler.iter().filter(|s| ids.contains(&s.id)).cloned().collect();
    let streams = BalancedStreams::restore(&lens, &ids, plan.seed, sampler)
        .map_err(|e| anyhow::anyhow!("{at}/{STATE_FILE}: {e}"))?;
    let config_toml = String::from_utf8(found.read(CONFIG_FILE)?.to_vec())
        .with_context(|| format!("{at}/{CONFIG_FILE} is not UTF-8"))?;
    let resume = Resume { steps_done: state.steps_done, optim, streams };
    Ok(Restored { model, card, state, config_toml, resume })
}

/// The state of a run after `steps_done` steps, without the optimizer step counts (filled in by
/// [`save_training`]).
pub fn training_state<B: AutodiffBackend>(
    base: &TrainingState,
    steps_done: u64,
    epoch: usize,
    epoch_finished: bool,
    streams: &[Stream],
    optim: &AdamW<B>,
    last_loss: f64,
) -> TrainingState {
    TrainingState {
        steps_done,
        epoch,
        epoch_finished,
        sampler: streams.to_vec(),
        optimizer: OptimizerState { kind: "adamw".into(), beta2: optim.beta2, eps: optim.eps, steps: BTreeMap::new() },
        last_loss: last_loss.is_finite().then_some(last_loss),
        ..base.clone()
    }
}

/// A `TrainingState` template for a run (no progress yet).
pub fn base_state(
    run: &str,
    config_hash: &str,
    plan: &TrainPlan,
    train_subjects: &[u8],
    sessions_used: &BTreeMap<u8, Vec<u16>>,
    parent: Option<String>,
) -> TrainingState {
    TrainingState {
        format: STATE_FORMAT,
        run: run.to_string(),
        config_hash: config_hash.to_string(),
        steps_done: 0,
        total_steps: plan.total_steps(),
        epoch: 0,
        epoch_finished: false,
        rng: RngState { seed: plan.seed, scheme: RNG_SCHEME.into() },
        sampler: Vec::new(),
        optimizer: OptimizerState { kind: "adamw".into(), beta2: 0.999, eps: 1e-8, steps: BTreeMap::new() },
        train_subjects: train_subjects.to_vec(),
        sessions_used: sessions_used.iter().map(|(s, v)| (voxbridge_config::subject_key(*s), v.clone())).collect(),
        last_loss: None,
        voxbridge_version: env!("CARGO_PKG_VERSION").into(),
        parent,
    }
}
