//! Experiment configuration for voxbridge: one TOML file describes one training run.
//!
//! Reading a file happens in two steps, the raw-vs-resolved split that ripgrep uses for its
//! flags:
//!
//! 1. [`parse_experiment`] checks the *shape* against a strict schema. Unknown keys are errors
//!    (a typo such as `lrr` must not silently fall back to a default), and so are values of the
//!    wrong TOML type. The first such error stops parsing and is reported with
//!    `file:line:column`.
//! 2. [`RawExperiment::validate`] checks every *value*, fills in every default and returns an
//!    [`ExperimentConfig`]. It reports all problems at once, each with its location.
//!
//! [`load_experiment`] does both for a file on disk. The resolved config is saved with every
//! run ([`ExperimentConfig::to_toml`]) and identified by [`ExperimentConfig::config_hash`].
//!
//! ```
//! let text = r#"
//! name = "pretrain-sim-small"
//! [data]
//! manifest = "data-manifests/sim-small-seed0.toml"
//! train_subjects = [2, 3, 4, 5, 6, 7, 8]
//! eval_subjects = [1]
//! "#;
//! let raw = voxbridge_config::parse_experiment(text, "example.toml")?;
//! let config = raw.validate("example.toml", Some(text))?;
//! assert_eq!(config.train.epochs, 150);
//! assert_eq!(config.train.batch_size, 42);
//! # Ok::<(), voxbridge_config::ConfigError>(())
//! ```

pub mod by_subject;
mod check;
mod compute;
mod diff;
mod error;
mod location;
mod raw;
mod rules;
mod run_dir;
mod sweep;
mod validate;
mod validated;

#[cfg(test)]
mod tests;

pub use by_subject::{parse_subject_key, subject_key};
pub use compute::{ComputeConfig, DeviceSpec, Precision};
pub use diff::{FieldChange, training_changes};
pub use error::{ConfigError, Problem};
pub use location::line_col;
pub use raw::{
    RawCheckpoint, RawCompute, RawData, RawEval, RawExperiment, RawModel, RawOptim, RawSessions, RawTrain,
    parse_experiment,
};
pub use run_dir::RunDir;
pub use sweep::{SweepRun, derive as derive_experiment, expand as expand_sweep, load_sweep};
pub use validate::load_experiment;
pub use validated::{
    BackboneKind, CheckpointConfig, DataConfig, EvalConfig, ExperimentConfig, ModelConfig, ModelFamily, NewSubjectBias,
    OptimConfig, SessionSelection, TrainConfig,
};
