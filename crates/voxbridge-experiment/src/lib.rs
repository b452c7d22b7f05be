//! Experiments end to end: a validated [`ExperimentConfig`](voxbridge_config::ExperimentConfig)
//! becomes data in memory ([`inputs`]), a model ([`architecture`]: fresh or fine-tuned from a
//! pretraining run; [`resume`]: continued from a checkpoint), a training run
//! ([`voxbridge_train::train`], watched by the observer, checkpointed by [`checkpointer`]), an
//! evaluation, and a run directory ([`voxbridge_config::RunDir`]):
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
//! [`run`] lists a run's stages, each in its own module: already finished? (`finished`) →
//! prepare (`prepare`) → start or resume (`start`) → train (`training`) → finish (`finish`).
//! [`sweep`] expands a grid into runs and plots retrieval against the number of sessions;
//! [`bench`] times training steps.

pub mod architecture;
pub mod baseline;
pub mod bench;
pub mod bench_setups;
pub mod checkpoint;
pub mod checkpointer;
pub mod checkpoints;
pub mod datasets;
pub mod demo;
pub mod demo_report;
pub mod drills;
pub mod engine;
pub mod families;
mod finish;
mod finished;
pub mod inputs;
pub mod metrics;
pub mod model_file;
pub mod multispace;
mod observer;
pub mod options;
pub mod plots;
pub mod predict;
mod prepare;
pub mod report;
pub mod resume;
pub mod retrieve;
pub mod run;
pub mod run_eval;
mod start;
pub mod sweep;
mod training;

pub use engine::{BackendTask, CpuBackend, CpuTrain, Engine, dispatch};

pub use options::{ComputeChoice, Preempted, ResumeFrom, RunOptions};
pub use report::{RunReport, RunSummary};
pub use resume::load_model;
pub use run::run_experiment;
pub use sweep::{SweepReport, run_sweep};
