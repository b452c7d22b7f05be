//! One experiment, end to end, into its run directory (layout in `voxbridge_config::RunDir`),
//! as a list of stages: already finished? → prepare → start or resume → train → finish.

use burn::tensor::backend::AutodiffBackend;
use voxbridge_collective::Collective;
use voxbridge_config::ExperimentConfig;

pub use crate::architecture::mindeye2_config;
pub use crate::checkpointer::checkpoint_due;
use crate::engine::{BackendTask, Engine, dispatch};
use crate::options::Rank;
pub use crate::options::{Preempted, ResumeFrom, RunOptions, checkpoint_url};
pub use crate::report::{REPORT_FILE, RunReport, RunSummary, read_report};
use crate::{finish, finished, prepare, start, training};

/// The resolved config's name in a run directory.
pub const CONFIG_FILE: &str = voxbridge_config::RunDir::CONFIG_FILE;

/// Trains and evaluates `config` into `options.dir`. A directory that already holds a finished
/// run of the same resolved config is reused as it is; one holding another config is an error,
/// so nothing finished is overwritten.
pub fn run_experiment(config: &ExperimentConfig, options: &RunOptions) -> anyhow::Result<RunSummary> {
    run_experiment_on(config, options, None)
}

/// [`run_experiment`] as one rank of a data-parallel run over `collective` (`None`: one
/// process). The global batch's rows are placed on the ranks (`Placement`: whole subjects,
/// or a subject's share split over several ranks when there are more ranks than subjects);
/// each rank holds only its subjects' ridges and trains the same model on its rows of each
/// global batch. Rank 0 writes the run directory, checkpoints (the whole state, gathered) and
/// the final model and evaluation; rank r > 0 writes its metrics under `<dir>/rank-r/`.
/// It runs on the device of `[compute] device` (or `options.device`, which wins).
pub fn run_experiment_on(
    config: &ExperimentConfig,
    options: &RunOptions,
    collective: Option<&mut dyn Collective>,
) -> anyhow::Result<RunSummary> {
    let config = options.compute_of(config);
    let task = RunTask { config: &config, options, collective };
    dispatch(config.compute.device, config.compute.precision, task)
}

/// [`run_on`] as a task generic over the backend.
struct RunTask<'a, 'c> {
    config: &'a ExperimentConfig,
    options: &'a RunOptions,
    collective: Option<&'a mut (dyn Collective + 'c)>,
}

impl BackendTask for RunTask<'_, '_> {
    type Output = RunSummary;
    fn run<B: AutodiffBackend>(self, engine: Engine<B>) -> anyhow::Result<RunSummary> {
        run_on(&engine, self.config, self.options, self.collective)
    }
}

/// The stages of a run on the backend `engine` chose.
fn run_on<B: AutodiffBackend>(
    engine: &Engine<B>,
    config: &ExperimentConfig,
    options: &RunOptions,
    mut collective: Option<&mut (dyn Collective + '_)>,
) -> anyhow::Result<RunSummary> {
    let rank = Rank::of(options, collective.as_deref());
    if let Some(report) = finished::agree_on_finished(&config.config_hash(), &rank, collective.as_deref_mut())? {
        tracing::info!(run = %config.name, dir = %rank.dir.path().display(), "already finished; reusing its report");
        return Ok(RunSummary { dir: rank.dir.path().to_path_buf(), report, reused: true });
    }
    let prepared = prepare::prepare(config, options, &rank)?;
    let found = start::find_resume_point(&prepared.store, &options.resume, collective.as_deref_mut())?;
    let train_trials = prepare::count_train_trials(&prepared, &rank, collective.as_deref_mut())?;
    let started = start::start_or_resume::<B>(config, options, &rank, &prepared, found, &engine.device)?;
    let trained = training::train_run(
        engine,
        config,
        options,
        &rank,
        &prepared,
        started,
        train_trials,
        collective.as_deref_mut(),
    )?;
    finish::finish(config, &rank, prepared, trained, train_trials, collective)
}
