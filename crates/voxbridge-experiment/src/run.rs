//! One experiment, end to end, into its run directory (layout in the crate docs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::Backend;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use voxbridge_checkpoint::fault::{Fault, fault_from_env, kill_self, signal_self};
use voxbridge_checkpoint::retention::{self, RetentionPolicy, Seen};
use voxbridge_checkpoint::{CheckpointId, CheckpointStore};
use voxbridge_collective::Collective;
use voxbridge_config::{BackboneKind, ExperimentConfig, ModelConfig, ModelFamily, NewSubjectBias};
use voxbridge_data::Dataset;
use voxbridge_model::losses::LossWeights;
use voxbridge_model::lowlevel::LowLevelConfig;
use voxbridge_model::prior::PriorConfig;
use voxbridge_model::{BackboneMode, MindEye2, MindEye2Config, RidgeBiasInit};
use voxbridge_train::distributed::{Placement, ShardComm, gather_model};
use voxbridge_train::{
    EvalOptions, Evaluation, Progress, StepComm, StepRecord, TrainObserver, TrainPlan, evaluate, train,
};

use crate::checkpoint::{self, ModelCard};
use crate::inputs::{self, ExperimentInputs, LoadScope};
use crate::metrics::{EpochRecord, MetricsWriter};
use crate::resume::{self, TrainingCheckpoint, TrainingState};
use crate::{TrainBackend, plots};

pub const CONFIG_FILE: &str = "config.toml";
pub const REPORT_FILE: &str = "report.json";

/// Where and how to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run directory.
    pub dir: PathBuf,
    /// Draw a progress bar on the terminal.
    pub progress: bool,
    pub resume: ResumeFrom,
    /// Training-relevant config fields (dotted keys) allowed to differ from the checkpoint's.
    pub allow_config_change: Vec<String>,
    /// Checkpoint root chosen by the launcher; overrides `checkpoint.url`.
    pub checkpoint_url: Option<String>,
    /// Deadline of each collective after the first step (data-parallel runs).
    pub step_timeout: std::time::Duration,
    /// How many times the launcher has restarted this run (fault drills can target one).
    pub generation: u32,
    /// Set (by a SIGTERM handler) to stop: the step under way finishes, every rank agrees on
    /// the step, a checkpoint is committed, and the run returns [`Preempted`].
    pub stop: Option<Arc<AtomicBool>>,
}

/// A run stopped on request (preemption, the job's time limit) after committing a checkpoint
/// of `steps_done` steps; running it again with `--resume auto` continues from there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "stopped on request after step {steps_done} with a committed checkpoint; run again with --resume auto to continue"
)]
pub struct Preempted {
    pub steps_done: u64,
}

impl RunOptions {
    /// A fresh run into `dir`, no progress bar.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RunOptions {
            dir: dir.into(),
            progress: false,
            resume: ResumeFrom::Never,
            allow_config_change: Vec::new(),
            checkpoint_url: None,
            step_timeout: std::time::Duration::from_secs(60),
            generation: 0,
            stop: None,
        }
    }
}

/// `--resume`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ResumeFrom {
    /// Start at step 0; committed checkpoints at the run's checkpoint URL are an error.
    #[default]
    Never,
    /// The newest committed checkpoint at the run's checkpoint URL, or step 0 when there is none
    /// (said in the log).
    Auto,
    /// This checkpoint (or the newest committed one under this root).
    At(String),
}

/// The checkpoint root of a run: the launcher's choice, else `checkpoint.url`, else
/// `<run dir>/checkpoints`.
pub fn checkpoint_url(config: &ExperimentConfig, options: &RunOptions) -> String {
    options
        .checkpoint_url
        .clone()
        .or_else(|| config.checkpoint.url.clone())
        .unwrap_or_else(|| options.dir.join("checkpoints").display().to_string())
}

/// `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub name: String,
    pub config_hash: String,
    pub train_subjects: Vec<u8>,
    /// Sessions each training subject's trials came from, keyed `"subject<N>"`.
    pub sessions_used: BTreeMap<String, Vec<u16>>,
    pub train_trials: usize,
    /// The pretraining run this one was fine-tuned from.
    pub init_from: Option<String>,
    /// Trainable parameters of the trained model.
    pub parameters: u64,
    pub plan: TrainPlan,
    pub steps: u64,
    pub train_seconds: f64,
    pub ms_per_step: f64,
    pub samples_per_second: f64,
    pub final_loss: f64,
    /// Final evaluation per evaluation subject, keyed `"subject<N>"`.
    pub evaluation: BTreeMap<String, Evaluation>,
    pub epochs: Vec<EpochRecord>,
}

impl RunReport {
    /// The final evaluation of `subject`.
    pub fn evaluation_of(&self, subject: u8) -> Option<&Evaluation> {
        self.evaluation.get(&subject_key(subject))
    }
}

fn subject_key(subject: u8) -> String {
    format!("subject{subject}")
}

/// What [`run_experiment`] returns.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub dir: PathBuf,
    pub report: RunReport,
    /// The directory already held this run's complete result, which was kept.
    pub reused: bool,
}

/// Trains and evaluates `config` into `options.dir`. A directory that already holds a finished
/// run of the same resolved config is reused as it is; one holding another config is an error,
/// so nothing finished is overwritten.
pub fn run_experiment(config: &ExperimentConfig, options: &RunOptions) -> anyhow::Result<RunSummary> {
    run_experiment_on(config, options, None)
}

/// [`run_experiment`] as one rank of a data-parallel run over `collective` (`None`: one
/// process). The global batch's rows are placed on the ranks ([`Placement`]: whole subjects,
/// or a subject's share split over several ranks when there are more ranks than subjects);
/// each rank holds only its subjects' ridges and trains the same model on its rows of each
/// global batch. Rank 0 writes the run directory, checkpoints (the whole state, gathered) and
/// the final model and evaluation; rank r > 0 writes its metrics under `<dir>/rank-r/`.
pub fn run_experiment_on(
    config: &ExperimentConfig,
    options: &RunOptions,
    mut collective: Option<&mut dyn Collective>,
) -> anyhow::Result<RunSummary> {
    let (rank, world) = collective.as_deref().map_or((0, 1), |c| (c.rank(), c.world_size()));
    // A data-parallel run of one worker still goes through the data-parallel path (and its
    // up-front initialisation), so it can be compared with more workers.
    let primary = rank == 0;
    let rank_dir = options.dir.join(format!("rank-{rank}"));
    let dir = if primary { &options.dir } else { &rank_dir };
    let hash = config.config_hash();
    // Whether the run already finished is rank 0's report's to say: a rank whose own report
    // survived a job killed before rank 0 wrote its report trains again with the others
    // (deciding alone, it would leave rank 0 waiting in a collective).
    let mut finished = None;
    if primary && let Some(existing) = read_report(dir)? {
        if existing.config_hash != hash {
            bail!(
                "{} already holds the finished run `{}` of another config (hash {}…); pass another output \
                 directory or remove it",
                dir.display(),
                existing.name,
                &existing.config_hash[..12]
            );
        }
        finished = Some(existing);
    }
    if let Some(c) = collective.as_deref_mut()
        && world > 1
    {
        let mut bytes = match &finished {
            Some(report) => serde_json::to_vec(report)?,
            None => Vec::new(),
        };
        c.broadcast(&mut bytes, 0).context("agreeing whether the run already finished")?;
        if !primary && !bytes.is_empty() {
            finished = Some(serde_json::from_slice(&bytes).context("rank 0's report")?);
        }
    }
    if let Some(report) = finished {
        tracing::info!(run = %config.name, dir = %dir.display(), "already finished; reusing its report");
        return Ok(RunSummary { dir: dir.clone(), report, reused: true });
    }
    if config.model.family != ModelFamily::MindEye2 {
        bail!(
            "model.family = \"{}\": `voxbridge train` runs mindeye2 (ridge baselines: `voxbridge ridge`); \
             the other families are not trainable yet",
            config.model.family
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    checkpoint::write_atomically(&dir.join(CONFIG_FILE), config.to_toml().as_bytes())?;

    // This rank's rows of each batch and so its subjects (their ridge indices stay those of
    // the whole model); it reads only their trials, and the test trials on rank 0.
    let subjects = config.data.train_subjects.len();
    let per_subject = TrainPlan::per_subject(config.train.batch_size as usize, subjects);
    let placement = Placement::new(subjects, world, per_subject).map_err(anyhow::Error::msg)?;
    let held = placement.subjects_of(rank);
    let scope = if world > 1 { LoadScope { train: Some(held.clone()), tests: primary } } else { LoadScope::all() };
    let dataset = Dataset::open(&config.data.manifest)?;
    let inputs = inputs::load(&dataset, &config.data, config.model.low_level, &scope)?;
    let device = Default::default();
    let plan = train_plan(config, &inputs);
    let ckpt_url = checkpoint_url(config, options);
    let store = CheckpointStore::open(&ckpt_url)?;
    let found = find_resume_point(&store, &options.resume, collective.as_deref_mut())?;
    let train_data = &inputs.train;
    // Training trials of the whole run: each subject counted by its first owner.
    let mut train_trials = inputs.train_trials();
    if let Some(c) = collective.as_deref_mut()
        && world > 1
    {
        let firsts: usize = inputs
            .train
            .subjects
            .iter()
            .filter(|s| placement.owners(s.ridge).first() == Some(&rank))
            .map(|s| s.len())
            .sum();
        let mut total = [firsts as f32]; // exact below 2^24 trials
        c.all_reduce_sum(&mut total)?;
        train_trials = total[0] as usize;
    }

    let (mut model, init_from, architecture, mut resume) = match &found {
        Some(found) => {
            let restored = resume::restore(found, train_data, &plan, &device)?;
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
            <TrainBackend as Backend>::seed(&device, config.train.seed);
            let (model, init_from, architecture) = initial_model(config, &inputs, &device)?;
            // Every parameter is drawn now, in module order, whatever the worker count: one
            // process and N workers (each touching only its own subjects' ridges in its first
            // step) start from the same weights.
            materialise(&model);
            (model, init_from, architecture, None)
        }
    };
    inputs::check_teacher_fits(&architecture, &inputs)?;
    if world > 1 {
        // Only this rank's subjects' ridges (and their optimizer state) stay in memory.
        model = MindEye2 { ridge: model.ridge.keep_only(&held), ..model };
        if let Some(r) = resume.as_mut() {
            r.optim.retain_params_of(&model);
        }
    }
    let steps_done = resume.as_ref().map_or(0, |r| r.steps_done);
    tracing::info!(
        run = %config.name,
        subjects = ?config.data.train_subjects,
        trials = train_trials,
        steps = plan.total_steps(),
        iters_per_epoch = plan.iters_per_epoch,
        checkpoints = %store.url(),
        "training"
    );

    let card = ModelCard {
        architecture: architecture.clone(),
        subjects: config.data.train_subjects.clone(),
        run: config.name.clone(),
        steps: plan.total_steps(),
    };
    let checkpointer = Some(Checkpointer {
        generation: store.next_generation()?,
        store,
        every_steps: u64::from(config.checkpoint.every_steps),
        policy: RetentionPolicy::new(config.checkpoint.keep_last as usize, {
            let spacing = if config.checkpoint.every_steps > 0 {
                u64::from(config.checkpoint.every_steps)
            } else {
                plan.iters_per_epoch as u64
            };
            u64::from(config.checkpoint.keep_every) * spacing
        })
        .map_err(|e| anyhow::anyhow!("checkpoint.{e}"))?,
        base: resume::base_state(
            &config.name,
            &hash,
            &plan,
            &config.data.train_subjects,
            &inputs.sessions_used,
            init_from.clone(),
        ),
        card,
        config_toml: config.to_toml(),
    });
    let step_fault = fault_from_env().map_err(anyhow::Error::msg)?.filter(|f| !matches!(f, Fault::Put { .. }));
    let mut observer = RunObserver::new(
        config,
        &inputs,
        &plan,
        dir,
        options.progress && primary,
        steps_done,
        checkpointer,
        step_fault.filter(|f| f.applies_to_generation(options.generation)).map(|f| (f, rank)),
    )?;
    observer.evaluate_epochs = primary;
    observer.stop = options.stop.clone();
    let started = Instant::now();
    let trained = match collective.as_deref_mut() {
        Some(c) if world > 1 => {
            let comm = ShardComm::new(c, placement.clone()).map_err(anyhow::Error::msg)?;
            let mut comm = comm.with_step_timeout(options.step_timeout);
            train(model, train_data, &plan, config.optim.weight_decay, resume, &mut observer, &mut comm)
        }
        _ => train(
            model,
            train_data,
            &plan,
            config.optim.weight_decay,
            resume,
            &mut observer,
            &mut voxbridge_train::Alone,
        ),
    };
    observer.finish();
    if let Some(e) = observer.error.take() {
        return Err(e);
    }
    if let Some(steps_done) = observer.stopped_after {
        tracing::warn!(run = %config.name, steps_done, "stopped on request; checkpoint committed");
        return Err(Preempted { steps_done }.into());
    }
    let mut model = trained.with_context(|| format!("run `{}` stopped", config.name))?;
    if let Some(c) = collective.as_mut()
        && world > 1
        && let Some(whole) = gather_model(&model, &mut **c, &placement).map_err(anyhow::Error::msg)?
    {
        model = whole; // on rank 0: every subject's ridge, for the evaluation and the saved model
    }
    let train_seconds = started.elapsed().as_secs_f64() + observer.resumed_seconds;
    let steps = observer.steps;

    let model = model.valid();
    let options_eval = eval_options(config, true);
    let mut evaluation = BTreeMap::new();
    for (&subject, test) in inputs.tests.iter().filter(|_| primary) {
        let result = evaluate(&model, test, &inputs.train.targets, &options_eval);
        tracing::info!(
            subject,
            image_top1 = result.retrieval.image_top1.mean,
            brain_top1 = result.retrieval.brain_top1.mean,
            "final {}-way retrieval",
            result.retrieval.ways
        );
        evaluation.insert(subject_key(subject), result);
    }
    let card =
        ModelCard { architecture, subjects: config.data.train_subjects.clone(), run: config.name.clone(), steps };
    if primary {
        checkpoint::save(dir, &model, &card)?;
    }

    let batch = plan.per_subject * config.data.train_subjects.len();
    let report = RunReport {
        name: config.name.clone(),
        config_hash: hash,
        train_subjects: config.data.train_subjects.clone(),
        sessions_used: inputs.sessions_used.iter().map(|(s, v)| (subject_key(*s), v.clone())).collect(),
        train_trials,
        init_from,
        parameters: model.num_params() as u64,
        steps,
        train_seconds,
        ms_per_step: 1e3 * train_seconds / steps.max(1) as f64,
        samples_per_second: (steps as usize * batch) as f64 / train_seconds.max(1e-9),
        final_loss: observer.last_loss,
        plan,
        evaluation,
        epochs: observer.epochs.clone(),
    };
    plots::run_plots(&dir.join("plots"), &report, &observer.step_losses)?;
    checkpoint::write_atomically(&dir.join(REPORT_FILE), serde_json::to_string_pretty(&report)?.as_bytes())?;
    Ok(RunSummary { dir: dir.clone(), report, reused: false })
}

/// The report of a finished run in `dir`, if there is one.
pub fn read_report(dir: &Path) -> anyhow::Result<Option<RunReport>> {
    let path = dir.join(REPORT_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let report =
        serde_json::from_str(&text).with_context(|| format!("{} is not a voxbridge run report", path.display()))?;
    Ok(Some(report))
}

/// Draws every lazily initialised parameter now, in module order.
pub(crate) fn materialise<B: burn::tensor::backend::AutodiffBackend>(model: &MindEye2<B>) {
    struct Touch;
    impl<B: burn::tensor::backend::AutodiffBackend> burn::module::ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<burn::tensor::Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    model.visit(&mut Touch);
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

/// The checkpoint to continue from, as `--resume` asks. Without `--resume`, committed
/// checkpoints at the run's URL are an error: a new run must not mix with an old one.
fn find_resume_point(
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

/// MindEye2's nominal epoch (spec §2.3) with the dataset's trials per session in place of 750:
/// 40 sessions' worth when pretraining on several subjects, the sessions used for one subject.
fn default_samples_per_epoch(inputs: &ExperimentInputs, subjects: usize) -> usize {
    let per_session = inputs.trials_per_session;
    if subjects > 1 { per_session * 40 } else { per_session * inputs.sessions_used.values().next().map_or(1, Vec::len) }
}

/// A fresh model, or the pretrained one with a new ridge for the fine-tuned subject; with the
/// architecture actually trained (the pretrained one when fine-tuning).
fn initial_model(
    config: &ExperimentConfig,
    inputs: &ExperimentInputs,
    device: &burn::tensor::Device<TrainBackend>,
) -> anyhow::Result<(MindEye2<TrainBackend>, Option<String>, MindEye2Config)> {
    let Some(from) = &config.train.init_from else {
        let [tokens, dim] = [inputs.train.targets.tokens, inputs.train.targets.dim];
        let mut architecture =
            mindeye2_config(&config.model, inputs.voxels.clone(), tokens, dim, lowlevel_shape(inputs))?;
        inputs::fit_projector_to_teacher(&mut architecture, inputs);
        return Ok((MindEye2::init(&architecture, device), None, architecture));
    };
    let (pretrained, card) = checkpoint::load::<TrainBackend>(Path::new(from), device)
        .with_context(|| format!("train.init_from = {from:?}"))?;
    let arch = &card.architecture;
    if (arch.clip_tokens, arch.clip_dim) != (inputs.train.targets.tokens, inputs.train.targets.dim) {
        bail!(
            "train.init_from = {from:?} predicts {}×{} CLIP tokens but the data has {}×{}",
            arch.clip_tokens,
            arch.clip_dim,
            inputs.train.targets.tokens,
            inputs.train.targets.dim
        );
    }
    if arch.hidden != config.model.hidden as usize || arch.blocks != config.model.blocks as usize {
        tracing::warn!(
            "[model] sizes (hidden {}, blocks {}) are ignored: the pretrained model from {from} has hidden {}, blocks {}",
            config.model.hidden,
            config.model.blocks,
            arch.hidden,
            arch.blocks
        );
    }
    let bias = match config.train.new_subject_bias {
        NewSubjectBias::CopyFirstPretrainedSubject => RidgeBiasInit::CopyFirstPretrainedSubject,
        NewSubjectBias::Fresh => RidgeBiasInit::Fresh,
    };
    tracing::info!(from = %from, pretrained_subjects = ?card.subjects, ?bias, "fine-tuning a new subject");
    if card.architecture.low_level.is_some() != config.model.low_level {
        bail!(
            "model.low_level = {} but the pretrained model from {from} {} the low-level branch",
            config.model.low_level,
            if card.architecture.low_level.is_some() { "has" } else { "lacks" }
        );
    }
    let architecture = MindEye2Config { voxels: inputs.voxels.clone(), ..card.architecture.clone() };
    Ok((pretrained.for_new_subject(inputs.voxels[0], bias, device), Some(from.clone()), architecture))
}

fn lowlevel_shape(inputs: &ExperimentInputs) -> Option<[usize; 3]> {
    inputs.train.targets.lowlevel.as_ref().map(|(shape, _)| *shape)
}

/// `[model]` + the data's sizes (CLIP tokens × width; the VAE latent `[C, H, W]` when the
/// low-level branch is on) → the model's architecture; sizes that do not fit name their key.
pub fn mindeye2_config(
    model: &ModelConfig,
    voxels: Vec<usize>,
    tokens: usize,
    dim: usize,
    lowlevel: Option<[usize; 3]>,
) -> anyhow::Result<MindEye2Config> {
    let low_level = match (model.low_level, lowlevel) {
        (false, _) => None,
        (true, None) => bail!("model.low_level = true needs the dataset's low-level latents"),
        (true, Some([c, h, w])) => {
            // MindEye2's decoder upsamples a 7×7 map ×2 per extra block: the latent side must be 7·2^k.
            let blocks = (0..3).find(|k| 7usize << k == h).filter(|_| h == w).with_context(|| {
                format!(
                    "model.low_level: the dataset's latents are {c}×{h}×{w}; the branch makes 7·2^k squares (7, 14, 28)"
                )
            })? + 1;
            let mut l = LowLevelConfig::mindeye2(model.hidden as usize);
            l.latent_channels = c;
            l.latent_size = h;
            l.block_out_channels.truncate(blocks);
            Some(l)
        }
    };
    let prior = if model.prior {
        let head = model.prior_dim_head as usize;
        if !dim.is_multiple_of(head) {
            bail!("model.prior_dim_head = {head} must divide the CLIP token width {dim} of this dataset");
        }
        let mut p = PriorConfig::mindeye2(dim, tokens, model.prior_depth as usize, head);
        p.timesteps = model.prior_timesteps as usize;
        Some(p)
    } else {
        None
    };
    let config = MindEye2Config {
        voxels,
        hidden: model.hidden as usize,
        blocks: model.blocks as usize,
        clip_tokens: tokens,
        clip_dim: dim,
        dropout: model.dropout,
        backbone_mode: match model.backbone {
            BackboneKind::Released => BackboneMode::Released,
            BackboneKind::CorrectedResidual => BackboneMode::CorrectedResidual,
        },
        low_level,
        prior,
    };
    let problems = config.problems();
    if !problems.is_empty() {
        bail!("[model]: {}", problems.join("; "));
    }
    Ok(config)
}

fn eval_options(config: &ExperimentConfig, with_prior: bool) -> EvalOptions {
    EvalOptions {
        ways: config.eval.ways as usize,
        loops: config.eval.loops as usize,
        seed: config.train.seed,
        mind_reader_batch: config.eval.mind_reader_batch as usize,
        prior_steps: (with_prior && config.eval.prior_steps > 0).then_some(config.eval.prior_steps as usize),
        chunk: 256,
    }
}

/// Saves training checkpoints when due and applies the retention policy after each commit.
struct Checkpointer {
    store: CheckpointStore,
    generation: u32,
    /// 0: at the end of every epoch.
    every_steps: u64,
    policy: RetentionPolicy,
    base: TrainingState,
    card: ModelCard,
    config_toml: String,
}

/// Whether a checkpoint is due after `steps_done` steps: every `every_steps` steps (0: at each
/// epoch's end), and always after the run's last step.
pub fn checkpoint_due(steps_done: u64, epoch_finished: bool, run_finished: bool, every_steps: u64) -> bool {
    run_finished || if every_steps == 0 { epoch_finished } else { steps_done.is_multiple_of(every_steps) }
}

impl Checkpointer {
    /// Every rank gathers the whole state; the writer (rank 0) commits it.
    fn save(
        &self,
        p: &Progress<'_, TrainBackend>,
        comm: &mut dyn StepComm<TrainBackend>,
        last_loss: f64,
    ) -> anyhow::Result<()> {
        let Some(whole) = comm.whole_state(p.model, p.optim, p.streams).map_err(anyhow::Error::msg)? else {
            return Ok(()); // not the writer
        };
        let id = CheckpointId { step: p.steps_done, generation: self.generation };
        let state = resume::training_state(
            &self.base,
            p.steps_done,
            p.epoch,
            p.epoch_finished,
            &whole.streams,
            p.optim,
            last_loss,
        );
        let parts = TrainingCheckpoint {
            model: &whole.model,
            card: &self.card,
            moments: &whole.moments,
            state: &state,
            config_toml: &self.config_toml,
        };
        let record = resume::save_training(&self.store, id, &parts)
            .with_context(|| format!("saving checkpoint {}", self.store.location(id)))?;
        tracing::info!(checkpoint = %self.store.location(id), bytes = record.total_bytes(), "checkpoint committed");
        // Retention runs only now that a newer commit is durable; a failed delete is not fatal.
        let seen: Vec<Seen> =
            self.store.list()?.iter().map(|l| Seen { id: l.id, committed: l.committed, damaged: l.damaged }).collect();
        for decision in retention::decide(&seen, self.generation, self.policy) {
            if let retention::Decision::Delete { id, reason } = decision {
                match self.store.delete(id) {
                    Ok(()) => tracing::debug!(checkpoint = %self.store.location(id), reason, "deleted"),
                    Err(e) => tracing::warn!("retention could not delete {}: {e}", self.store.location(id)),
                }
            }
        }
        Ok(())
    }
}

/// Writes metrics, draws the progress bar, evaluates every `eval.every_epochs`, checkpoints.
struct RunObserver<'a> {
    config: &'a ExperimentConfig,
    inputs: &'a ExperimentInputs,
    metrics: MetricsWriter,
    bar: ProgressBar,
    epochs: Vec<EpochRecord>,
    step_losses: Vec<(u64, f64)>,
    epoch_sums: (f64, f64, f64, usize, f64),
    epoch_phase: &'static str,
    steps: u64,
    last_loss: f64,
    /// Training seconds recorded before a resume (from steps.csv).
    resumed_seconds: f64,
    checkpointer: Option<Checkpointer>,
    /// A fault drill (`VOXBRIDGE_FAULT`) and this process's rank.
    step_fault: Option<(Fault, usize)>,
    /// Evaluate at epoch ends (rank 0 of a data-parallel run only).
    evaluate_epochs: bool,
    error: Option<anyhow::Error>,
    /// The stop request (RunOptions::stop), and the step a stop happened after.
    stop: Option<Arc<AtomicBool>>,
    stopped_after: Option<u64>,
}

impl<'a> RunObserver<'a> {
    /// Starts the metrics of a fresh run, or continues those of a run resumed after
    /// `steps_done` steps (rows of later steps, written before a crash, are dropped).
    #[allow(clippy::too_many_arguments)]
    fn new(
        config: &'a ExperimentConfig,
        inputs: &'a ExperimentInputs,
        plan: &TrainPlan,
        dir: &Path,
        progress: bool,
        steps_done: u64,
        checkpointer: Option<Checkpointer>,
        step_fault: Option<(Fault, usize)>,
    ) -> anyhow::Result<Self> {
        let bar = if progress { ProgressBar::new(plan.total_steps()) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps {per_sec} eta {eta} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(config.name.clone());
        bar.set_position(steps_done);
        let metrics_dir = dir.join("metrics");
        let (metrics, rows, epochs) = if steps_done == 0 {
            (MetricsWriter::create(&metrics_dir)?, Vec::new(), Vec::new())
        } else {
            let epochs_done = (steps_done / plan.iters_per_epoch as u64) as usize;
            MetricsWriter::resume(&metrics_dir, steps_done, epochs_done)?
        };
        let mut observer = RunObserver {
            config,
            inputs,
            metrics,
            bar,
            epochs,
            step_losses: Vec::new(),
            epoch_sums: (0.0, 0.0, 0.0, 0, 0.0),
            epoch_phase: "",
            steps: steps_done,
            last_loss: f64::NAN,
            resumed_seconds: 0.0,
            checkpointer,
            step_fault,
            evaluate_epochs: true,
            error: None,
            stop: None,
            stopped_after: None,
        };
        let current_epoch = (steps_done / plan.iters_per_epoch as u64) as usize;
        for row in rows {
            observer.resumed_seconds += row.seconds;
            observer.step_losses.push((row.step, row.loss));
            observer.last_loss = row.loss;
            if row.epoch == current_epoch {
                observer.add_to_epoch(row.loss, row.clip_loss, row.prior_loss, row.seconds);
            }
        }
        Ok(observer)
    }

    fn add_to_epoch(&mut self, loss: f64, clip: f64, prior: f64, seconds: f64) {
        let (l, c, p, n, s) = &mut self.epoch_sums;
        *l += loss;
        *c += clip;
        *p += prior;
        *n += 1;
        *s += seconds;
    }

    fn finish(&mut self) {
        self.bar.finish_and_clear();
    }

    fn keep(&mut self, result: anyhow::Result<()>) {
        if let Err(e) = result
            && self.error.is_none()
        {
            self.error = Some(e);
        }
    }
}

impl TrainObserver<TrainBackend> for RunObserver<'_> {
    fn on_step(&mut self, r: &StepRecord) {
        let result = self.metrics.step(r);
        self.keep(result);
        self.step_losses.push((r.step, r.loss));
        self.add_to_epoch(r.loss, r.clip_loss, r.prior_loss, r.seconds);
        self.epoch_phase = r.phase;
        self.steps = r.step + 1;
        self.last_loss = r.loss;
        self.bar.inc(1);
        if r.step.is_multiple_of(10) {
            self.bar.set_message(format!("epoch {} loss {:.4}", r.epoch, r.loss));
        }
    }

    fn on_epoch_end(&mut self, epoch: usize, model: &MindEye2<TrainBackend>) {
        let (l, c, p, n, seconds) = std::mem::take(&mut self.epoch_sums);
        let n_f = n.max(1) as f64;
        let every = self.config.eval.every_epochs as usize;
        let last = epoch + 1 == self.config.train.epochs as usize;
        let (mut image_top1, mut brain_top1) = (None, None);
        if every > 0
            && self.evaluate_epochs
            && ((epoch + 1).is_multiple_of(every) || last)
            && let Some(test) = self.inputs.tests.values().next()
            && model.ridge.linear(test.ridge).is_some()
        {
            let e = evaluate(&model.valid(), test, &self.inputs.train.targets, &eval_options(self.config, false));
            image_top1 = Some(e.retrieval.image_top1.mean);
            brain_top1 = Some(e.retrieval.brain_top1.mean);
        }
        let record = EpochRecord {
            epoch,
            steps: self.steps,
            phase: self.epoch_phase.to_string(),
            mean_loss: l / n_f,
            mean_clip_loss: c / n_f,
            mean_prior_loss: p / n_f,
            seconds,
            image_top1,
            brain_top1,
        };
        tracing::debug!(?record, "epoch");
        if let (Some(i), Some(b)) = (image_top1, brain_top1) {
            self.bar.suspend(|| {
                tracing::info!(epoch, loss = record.mean_loss, image_top1 = i, brain_top1 = b, "evaluated");
            });
        }
        let result = self.metrics.epoch(&record);
        self.keep(result);
        self.epochs.push(record);
    }

    fn after_step(
        &mut self,
        p: &Progress<'_, TrainBackend>,
        comm: &mut dyn StepComm<TrainBackend>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if let Some(e) = self.error.take() {
            return Err(e.into());
        }
        // A stop request on any rank stops every rank after the same step (one 4-byte sum).
        let stop = match &self.stop {
            Some(flag) if !p.run_finished => {
                let mut asked = [if flag.load(Ordering::SeqCst) { 1.0 } else { 0.0 }];
                comm.sum(&mut asked)?;
                asked[0] > 0.0
            }
            _ => false,
        };
        if let Some(c) = &self.checkpointer
            && (stop || checkpoint_due(p.steps_done, p.epoch_finished, p.run_finished, c.every_steps))
        {
            // Metrics up to this step are on disk before the checkpoint that a resume starts from.
            self.metrics.flush()?;
            let last_loss = self.last_loss;
            self.bar.suspend(|| c.save(p, comm, last_loss))?;
        }
        if stop {
            self.stopped_after = Some(p.steps_done);
            return Err(Box::new(Preempted { steps_done: p.steps_done }));
        }
        if let Some((fault, rank)) = &self.step_fault
            && let Some(signal) = fault.signal_after_step(*rank, p.steps_done)
        {
            let why = format!("{} on rank {rank} after step {}", voxbridge_checkpoint::fault::FAULT_ENV, p.steps_done);
            if signal == "KILL" {
                let Err(e) = kill_self(&why);
                return Err(e.into());
            }
            signal_self(signal, &why)?;
        }
        Ok(())
    }
}
