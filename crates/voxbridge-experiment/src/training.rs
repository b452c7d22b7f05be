//! The training stage: a checkpointer and an observer around `voxbridge_train::train`, on one
//! process or as one rank of a data-parallel run.

use std::time::Instant;

use anyhow::Context;
use voxbridge_collective::Collective;
use voxbridge_config::ExperimentConfig;
use voxbridge_model::{MindEye2, MindEye2Config};
use voxbridge_train::distributed::ShardComm;
use voxbridge_train::train;

use crate::checkpoint::ModelCard;
use crate::checkpointer::Checkpointer;
use crate::drills::ArmedDrill;
use crate::engine::Engine;
use crate::observer::{ObservedRun, RunObserver};
use crate::options::{Rank, RunOptions};
use crate::prepare::Prepared;
use crate::resume;
use crate::start::Started;
use burn::tensor::backend::AutodiffBackend;

/// A model trained to the end of its plan (this rank's part of it).
pub(crate) struct Trained<B: AutodiffBackend> {
    pub model: MindEye2<B>,
    pub observed: ObservedRun,
    /// When training started, for the run's training time (which includes gathering the model).
    pub started_at: Instant,
    pub architecture: MindEye2Config,
    pub init_from: Option<String>,
}

/// Trains `started` on this rank's data, checkpointing as `[checkpoint]` asks; a stop request
/// returns [`Preempted`](crate::options::Preempted) once every rank committed.
pub(crate) fn train_run<B: AutodiffBackend>(
    engine: &Engine<B>,
    config: &ExperimentConfig,
    options: &RunOptions,
    rank: &Rank,
    prepared: &Prepared,
    started: Started<B>,
    train_trials: usize,
    collective: Option<&mut (dyn Collective + '_)>,
) -> anyhow::Result<Trained<B>> {
    let (inputs, plan) = (&prepared.inputs, &prepared.plan);
    let steps_done = started.steps_done();
    tracing::info!(
        run = %config.name,
        subjects = ?config.data.train_subjects,
        trials = train_trials,
        steps = plan.total_steps(),
        iters_per_epoch = plan.iters_per_epoch,
        checkpoints = %prepared.store.url(),
        "training"
    );
    let card = ModelCard {
        architecture: started.architecture.clone(),
        subjects: config.data.train_subjects.clone(),
        run: config.name.clone(),
        steps: plan.total_steps(),
    };
    let base = resume::base_state(
        &config.name,
        &config.config_hash(),
        plan,
        &config.data.train_subjects,
        &inputs.sessions_used,
        started.init_from.clone(),
    );
    let checkpointer =
        Checkpointer::new(&prepared.store, &config.checkpoint, plan.iters_per_epoch, base, card, config.to_toml())?;
    let drill = ArmedDrill::from_env(rank.index, options.generation).map_err(anyhow::Error::msg)?;
    let progress = options.progress && rank.is_primary();
    let mut observer =
        RunObserver::new(config, inputs, plan, &rank.dir, progress, steps_done, Some(checkpointer), drill)?;
    observer.evaluate_epochs = rank.is_primary();
    observer.stop = options.stop.clone();
    let started_at = Instant::now();
    let weight_decay = config.optim.weight_decay;
    // Matmuls and convolutions of this thread's forward passes run in the run's precision
    // (torch's autocast); weights, gradients and AdamW stay f32.
    let compute = engine.compute_dtype();
    tracing::info!(device = %engine.spec, precision = %engine.precision, matmuls = compute.as_str(), "compute");
    let _autocast = voxbridge_model::precision::Autocast::enter(compute);
    let trained = match collective {
        Some(c) if rank.is_shared() => {
            let device_comm = engine.device_comm(&mut *c)?;
            let comm = ShardComm::new(c, prepared.placement.clone()).map_err(anyhow::Error::msg)?;
            let mut comm = comm.with_device_comm(device_comm).with_step_timeout(options.step_timeout);
            train(started.model, &inputs.train, plan, weight_decay, started.resume, &mut observer, &mut comm)
        }
        _ => train(
            started.model,
            &inputs.train,
            plan,
            weight_decay,
            started.resume,
            &mut observer,
            &mut voxbridge_train::Alone,
        ),
    };
    let observed = observer.conclude()?;
    let model = trained.with_context(|| format!("run `{}` stopped", config.name))?;
    Ok(Trained { model, observed, started_at, architecture: started.architecture, init_from: started.init_from })
}
