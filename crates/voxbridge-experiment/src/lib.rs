//! Experiments end to end: a validated [`ExperimentConfig`](voxbridge_config::ExperimentConfig)
//! becomes data in memory ([`inputs`]), a model (fresh or fine-tuned from a pretraining run,
//! [`checkpoint`]), a training run ([`voxbridge_train::train`]), an evaluation, and a run
//! directory ([`run`]):
//!
//! ```text
//! <run>/config.toml             the resolved config (every default written out)
//! <run>/metrics/steps.csv       one row per optimizer step
//! <run>/metrics/epochs.csv      one row per epoch (+ retrieval where evaluated)
//! <run>/report.json             what was trained, timings, final evaluation per subject
//! <run>/plots/*.png             loss curves, retrieval per epoch
//! <run>/checkpoint/             model.safetensors + model.json (architecture, subjects)
//! ```
//!
//! [`sweep`] expands a grid into runs and plots retrieval against the number of sessions;
//! [`bench`] times training steps.

pub mod bench;
pub mod checkpoint;
pub mod demo;
pub mod inputs;
pub mod metrics;
pub mod plots;
pub mod resume;
pub mod run;
pub mod sweep;

/// The CPU training backend (burn's `flex`).
pub type CpuBackend = burn::backend::Flex;
/// [`CpuBackend`] with autodiff.
pub type TrainBackend = burn::backend::Autodiff<CpuBackend>;

pub use run::{Preempted, ResumeFrom, RunOptions, RunReport, RunSummary, run_experiment};
pub use sweep::{SweepReport, run_sweep};
