//! How training starts: from step 0 (fresh weights, or a pretrained model with a new ridge for
//! the fine-tuned subject), or from a committed checkpoint, as `--resume` asks — refusing one
//! trained with other training-relevant settings unless allowed.

use anyhow::{Context, bail};
use voxbridge_checkpoint::CheckpointStore;
use voxbridge_collective::Collective;
use voxbridge_config::ExperimentConfig;
use voxbridge_model::{MindEye2, MindEye2Config};
use voxbridge_train::Resume;

use crate::architecture::initial_model;
use crate::inputs;
use crate::options::{Rank, ResumeFrom, RunOptions};
use crate::prepare::Prepared;
use crate::resume;
use burn::tensor::backend::AutodiffBackend;

/// The model training starts from, and where.
pub(crate) struct Started<B: AutodiffBackend> {
    /// This rank's part of the model: the shared weights and its subjects' ridges.
    pub model: MindEye2<B>,
    /// The pretraining run (or checkpoint) the model was fine-tuned from.
    pub init_from: Option<String>,
    /// The architecture trained (the pretrained one when fine-tuning).
    pub architecture: MindEye2Config,
    /// Optimizer and sampler state after the checkpoint's steps; `None`: step 0.
    pub resume: Option<Resume<B>>,
}

impl<B: AutodiffBackend> Started<B> {
    /// Steps done before this start.
    pub fn steps_done(&self) -> u64 {
        self.resume.as_ref().map_or(0, |r| r.steps_done)
    }
}

/// The model of `found` (a checkpoint to resume), else a fresh or fine-tuned one; on a rank of
/// a data-parallel run, keeping only its subjects' ridges.
pub(crate) fn start_or_resume<B: AutodiffBackend>(
    config: &ExperimentConfig,
    options: &RunOptions,
    rank: &Rank,
    prepared: &Prepared,
    found: Option<resume::Found>,
    device: &B::Device,
) -> anyhow::Result<Started<B>> {
    let inputs = &prepared.inputs;
    let plan = &prepared.plan;
    let (mut model, init_from, architecture, mut resume) = match &found {
        Some(found) => {
            let restored = resume::restore(found, &inputs.train, plan, device)?;
            refuse_config_changes(config, &restored.config_toml, &found.location(), &options.allow_config_change)?;
            tracing::info!(
                from = %found.location(),
                steps_done = restored.state.steps_done,
                total = plan.total_steps(),
                "resuming"
            );
            (restored.model, restored.state.parent.clone(), restored.card.architecture, Some(restored.resume))
        }
        None => {
            let (model, init_from, architecture) = initial_model(config, inputs, device)?;
            (model, init_from, architecture, None)
        }
    };
    inputs::check_teacher_fits(&architecture, inputs)?;
    if rank.is_shared() {
        // Only this rank's subjects' ridges (and their optimizer state) stay in memory.
        model = MindEye2 { ridge: model.ridge.keep_only(&prepared.held), ..model };
        if let Some(r) = resume.as_mut() {
            r.optim.retain_params_of(&model);
        }
    }
    Ok(Started { model, init_from, architecture, resume })
}

/// The checkpoint to continue from, as `--resume` asks. Without `--resume`, committed
/// checkpoints at the run's URL are an error: a new run must not mix with an old one.
pub(crate) fn find_resume_point(
    store: &CheckpointStore,
    resume: &ResumeFrom,
    collective: Option<&mut (dyn Collective + '_)>,
) -> anyhow::Result<Option<resume::Found>> {
    match resume {
        ResumeFrom::Never => {
            if let Some(id) = store.latest_committed()? {
                bail!(
                    "{} already holds committed checkpoints (newest {id}); continue that run with `--resume auto`, \
                     or give this run another checkpoint.url or --out",
                    store.url()
                );
            }
            Ok(None)
        }
        ResumeFrom::Auto => {
            let found = match collective.filter(|c| c.world_size() > 1) {
                None => resume::newest_intact(store, true)?,
                // Rank 0 verifies and chooses; the others take its choice (one verification,
                // and every rank resumes from the same checkpoint).
                Some(c) => {
                    let primary = c.rank() == 0;
                    let chosen = if primary { resume::newest_intact(store, true) } else { Ok(None) };
                    let mut bytes = match &chosen {
                        Ok(found) => serde_json::to_vec(&found.as_ref().map(resume::Found::id))?,
                        Err(_) => Vec::new(),
                    };
                    c.broadcast(&mut bytes, 0).context("agreeing on the checkpoint to resume from")?;
                    if primary {
                        chosen?
                    } else if bytes.is_empty() {
                        bail!("rank 0 found no intact checkpoint to resume from under {} (see its log)", store.url());
                    } else {
                        match serde_json::from_slice::<Option<voxbridge_checkpoint::CheckpointId>>(&bytes)
                            .context("rank 0's choice of checkpoint")?
                        {
                            Some(id) => Some(resume::Found { store: store.clone(), record: store.commit_record(id)? }),
                            None => None,
                        }
                    }
                }
            };
            if found.is_none() {
                tracing::info!(url = store.url(), "resume auto: no committed checkpoint here yet; starting at step 0");
            }
            Ok(found)
        }
        ResumeFrom::At(location) => Ok(Some(
            resume::find_checkpoint(location)?
                .with_context(|| format!("--resume {location}: no committed checkpoint there"))?,
        )),
    }
}

/// Refuses to continue a checkpoint trained with other training-relevant settings, naming each
/// differing field, unless every one is in `allowed`.
fn refuse_config_changes(
    config: &ExperimentConfig,
    saved_toml: &str,
    location: &str,
    allowed: &[String],
) -> anyhow::Result<()> {
    let origin = format!("{location}/{}", resume::CONFIG_FILE);
    let saved = voxbridge_config::parse_experiment(saved_toml, &origin)
        .and_then(|raw| raw.validate(&origin, Some(saved_toml)))
        .with_context(|| format!("{origin}: the checkpoint's config no longer validates"))?;
    let refused: Vec<String> = voxbridge_config::training_changes(&saved, config)
        .into_iter()
        .filter(|change| !allowed.contains(&change.key))
        .map(|change| change.to_string())
        .collect();
    if !refused.is_empty() {
        bail!(
            "cannot resume {location}: the config differs in training-relevant fields:\n  {}\n\
             pass --allow-config-change with those keys (comma-separated) to accept them",
            refused.join("\n  ")
        );
    }
    Ok(())
}
