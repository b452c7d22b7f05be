//! Before training: the run directory and its `config.toml`, which rows of each batch this rank
//! trains on ([`Placement`]), the data of its subjects in memory, the schedule, and the
//! checkpoint store (opened once, here, and passed down).

use anyhow::{Context, bail};
use voxbridge_checkpoint::CheckpointStore;
use voxbridge_collective::Collective;
use voxbridge_config::{ExperimentConfig, ModelFamily};
use voxbridge_data::Dataset;
use voxbridge_model::losses::LossWeights;
use voxbridge_train::TrainPlan;
use voxbridge_train::distributed::Placement;

use crate::checkpoint::write_atomically;
use crate::inputs::{self, ExperimentInputs, LoadScope};
use crate::options::{Rank, RunOptions, checkpoint_url};

/// What a rank trains on, and where its checkpoints go.
pub(crate) struct Prepared {
    /// Rows of the global batch per rank (whole subjects, or a subject's share).
    pub placement: Placement,
    /// Ridge indices of the subjects this rank holds (those of the whole model).
    pub held: Vec<usize>,
    pub inputs: ExperimentInputs,
    pub plan: TrainPlan,
    pub store: CheckpointStore,
}

/// Writes the run's `config.toml`, loads this rank's data and opens the checkpoint store.
pub(crate) fn prepare(config: &ExperimentConfig, options: &RunOptions, rank: &Rank) -> anyhow::Result<Prepared> {
    if config.model.family != ModelFamily::MindEye2 {
        bail!(
            "model.family = \"{}\": `voxbridge train` runs mindeye2 (ridge baselines: `voxbridge ridge`); \
             the other families are not trainable yet",
            config.model.family
        );
    }
    let dir = rank.dir.path();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_atomically(&rank.dir.config(), config.to_toml().as_bytes())?;

    // This rank's rows of each batch and so its subjects (their ridge indices stay those of
    // the whole model); it reads only their trials, and the test trials on rank 0.
    let subjects = config.data.train_subjects.len();
    let per_subject = TrainPlan::per_subject(config.train.batch_size as usize, subjects);
    let placement = Placement::new(subjects, rank.world, per_subject).map_err(anyhow::Error::msg)?;
    let held = placement.subjects_of(rank.index);
    let scope = if rank.is_shared() {
        LoadScope { train: Some(held.clone()), tests: rank.is_primary() }
    } else {
        LoadScope::all()
    };
    let dataset = Dataset::open(&config.data.manifest)?;
    let inputs = inputs::load(&dataset, &config.data, config.model.low_level, &scope)?;
    let plan = train_plan(config, &inputs);
    let store = CheckpointStore::open(&checkpoint_url(config, options))?;
    Ok(Prepared { placement, held, inputs, plan, store })
}

/// Training trials of the whole run: each subject counted by its first owner rank.
pub(crate) fn count_train_trials(
    prepared: &Prepared,
    rank: &Rank,
    collective: Option<&mut (dyn Collective + '_)>,
) -> anyhow::Result<usize> {
    let inputs = &prepared.inputs;
    match collective {
        Some(c) if rank.is_shared() => {
            let firsts: usize = inputs
                .train
                .subjects
                .iter()
                .filter(|s| prepared.placement.owners(s.ridge).first() == Some(&rank.index))
                .map(|s| s.len())
                .sum();
            let mut total = [firsts as f32]; // exact below 2^24 trials
            c.all_reduce_sum(&mut total)?;
            Ok(total[0] as usize)
        }
        _ => Ok(inputs.train_trials()),
    }
}

/// The run's schedule: MindEye2's plan from `[train]`, `[optim]` and the data's sizes.
fn train_plan(config: &ExperimentConfig, inputs: &ExperimentInputs) -> TrainPlan {
    let samples_per_epoch = config
        .train
        .samples_per_epoch
        .map_or_else(|| default_samples_per_epoch(inputs, config.data.train_subjects.len()), |n| n as usize);
    let mut plan = TrainPlan::mindeye2(
        config.train.seed,
        config.train.epochs as usize,
        config.train.batch_size as usize,
        config.data.train_subjects.len(),
        samples_per_epoch,
        config.optim.lr,
        config.train.mixup_pct,
    );
    plan.weights = LossWeights {
        prior: config.train.prior_scale,
        clip: config.train.clip_scale,
        blur: config.train.blur_scale,
        ..Default::default()
    };
    plan.max_steps = config.train.max_steps;
    plan
}

/// MindEye2's nominal epoch (spec §2.3) with the dataset's trials per session in place of 750:
/// 40 sessions' worth when pretraining on several subjects, the sessions used for one subject.
fn default_samples_per_epoch(inputs: &ExperimentInputs, subjects: usize) -> usize {
    let per_session = inputs.trials_per_session;
    if subjects > 1 { per_session * 40 } else { per_session * inputs.sessions_used.values().next().map_or(1, Vec::len) }
}
