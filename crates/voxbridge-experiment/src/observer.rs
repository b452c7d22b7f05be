//! What a run does while it trains, step by step: metrics rows, the progress bar, retrieval at
//! the end of every `eval.every_epochs` epochs, and after each step the stop agreement,
//! checkpoints when due and fault drills.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use burn::module::AutodiffModule;
use indicatif::{ProgressBar, ProgressStyle};
use voxbridge_config::{ExperimentConfig, RunDir};
use voxbridge_model::MindEye2;
use voxbridge_train::{EvalOptions, Progress, StepComm, StepRecord, TrainObserver, TrainPlan, evaluate};

use crate::checkpointer::Checkpointer;
use crate::drills::{ArmedDrill, agree_to_stop};
use crate::inputs::ExperimentInputs;
use crate::metrics::{EpochRecord, MetricsWriter};
use crate::options::Preempted;
use burn::tensor::backend::AutodiffBackend;

/// Retrieval settings of `[eval]`; the prior's samples only when `with_prior` (final evaluation).
pub(crate) fn eval_options(config: &ExperimentConfig, with_prior: bool) -> EvalOptions {
    EvalOptions {
        ways: config.eval.ways as usize,
        loops: config.eval.loops as usize,
        seed: config.train.seed,
        mind_reader_batch: config.eval.mind_reader_batch as usize,
        prior_steps: (with_prior && config.eval.prior_steps > 0).then_some(config.eval.prior_steps as usize),
        chunk: 256,
    }
}

/// Writes metrics, draws the progress bar, evaluates every `eval.every_epochs`, checkpoints.
pub(crate) struct RunObserver<'a> {
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
    checkpointer: Option<Checkpointer<'a>>,
    /// A fault drill (`VOXBRIDGE_FAULT`) armed in this process.
    drill: Option<ArmedDrill>,
    /// Evaluate at epoch ends (rank 0 of a data-parallel run only).
    pub evaluate_epochs: bool,
    error: Option<anyhow::Error>,
    /// The stop request (RunOptions::stop), and the step a stop happened after.
    pub stop: Option<Arc<AtomicBool>>,
    stopped_after: Option<u64>,
}

/// What the observer recorded of a training run that ran to its end.
pub(crate) struct ObservedRun {
    pub epochs: Vec<EpochRecord>,
    /// Loss of every step, since step 0 (a resumed run's earlier ones read back from steps.csv).
    pub step_losses: Vec<(u64, f64)>,
    /// Steps done.
    pub steps: u64,
    pub last_loss: f64,
    /// Training seconds recorded before a resume (from steps.csv).
    pub resumed_seconds: f64,
}

impl<'a> RunObserver<'a> {
    /// Starts the metrics of a fresh run, or continues those of a run resumed after
    /// `steps_done` steps (rows of later steps, written before a crash, are dropped).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &'a ExperimentConfig,
        inputs: &'a ExperimentInputs,
        plan: &TrainPlan,
        dir: &RunDir,
        progress: bool,
        steps_done: u64,
        checkpointer: Option<Checkpointer<'a>>,
        drill: Option<ArmedDrill>,
    ) -> anyhow::Result<Self> {
        let bar = if progress { ProgressBar::new(plan.total_steps()) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps {per_sec} eta {eta} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(config.name.clone());
        bar.set_position(steps_done);
        let (metrics, rows, epochs) = if steps_done == 0 {
            (MetricsWriter::create(dir)?, Vec::new(), Vec::new())
        } else {
            let epochs_done = (steps_done / plan.iters_per_epoch as u64) as usize;
            MetricsWriter::resume(dir, steps_done, epochs_done)?
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
            drill,
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

    /// Ends the progress bar, then: the first error met while observing, [`Preempted`] when
    /// the run stopped on request, else what was recorded.
    pub fn conclude(mut self) -> anyhow::Result<ObservedRun> {
        self.bar.finish_and_clear();
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if let Some(steps_done) = self.stopped_after {
            tracing::warn!(run = %self.config.name, steps_done, "stopped on request; checkpoint committed");
            return Err(Preempted { steps_done }.into());
        }
        Ok(ObservedRun {
            epochs: self.epochs,
            step_losses: self.step_losses,
            steps: self.steps,
            last_loss: self.last_loss,
            resumed_seconds: self.resumed_seconds,
        })
    }

    fn keep(&mut self, result: anyhow::Result<()>) {
        if let Err(e) = result
            && self.error.is_none()
        {
            self.error = Some(e);
        }
    }
}

impl<B: AutodiffBackend> TrainObserver<B> for RunObserver<'_> {
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

    fn on_epoch_end(&mut self, epoch: usize, model: &MindEye2<B>) {
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
        p: &Progress<'_, B>,
        comm: &mut dyn StepComm<B>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if let Some(e) = self.error.take() {
            return Err(e.into());
        }
        let stop = agree_to_stop(self.stop.as_deref(), p.run_finished, comm)?;
        if let Some(c) = &self.checkpointer
            && (stop || c.is_due(p))
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
        if let Some(drill) = &self.drill {
            drill.after_step(p.steps_done)?;
        }
        Ok(())
    }
}
