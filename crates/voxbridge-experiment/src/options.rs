//! What a caller chooses about a run ([`RunOptions`], [`ResumeFrom`]), how a run stopped on
//! request reports it ([`Preempted`]), and where this process stands in the run ([`Rank`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use voxbridge_collective::Collective;
use voxbridge_config::{DeviceSpec, ExperimentConfig, Precision, RunDir};

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
    /// `--device` and `--precision`: override `[compute]`.
    pub compute: ComputeChoice,
}

/// The command line's choice of device and precision; each wins over the experiment's
/// `[compute]` when given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ComputeChoice {
    pub device: Option<DeviceSpec>,
    pub precision: Option<Precision>,
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
            compute: ComputeChoice::default(),
        }
    }

    /// `config` with the command line's device and precision, which win over `[compute]`.
    pub fn compute_of(&self, config: &ExperimentConfig) -> ExperimentConfig {
        let mut config = config.clone();
        config.compute.device = self.compute.device.unwrap_or(config.compute.device);
        config.compute.precision = self.compute.precision.unwrap_or(config.compute.precision);
        config
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
        .unwrap_or_else(|| RunDir::new(&options.dir).default_checkpoint_root().display().to_string())
}

/// This process's place in the run: its rank among `world` processes (0 of 1 alone) and the
/// directory it writes — the run directory on rank 0, `<run>/rank-R/` on rank R > 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rank {
    pub index: usize,
    pub world: usize,
    pub dir: RunDir,
}

impl Rank {
    pub fn of(options: &RunOptions, collective: Option<&dyn Collective>) -> Self {
        let (index, world) = collective.map_or((0, 1), |c| (c.rank(), c.world_size()));
        let run = RunDir::new(&options.dir);
        let dir = if index == 0 { run } else { run.rank(index) };
        Rank { index, world, dir }
    }

    /// Rank 0: it writes the run directory, checkpoints, the final model and the evaluation.
    pub fn is_primary(&self) -> bool {
        self.index == 0
    }

    /// More than one process. A data-parallel run of one worker still goes through the
    /// data-parallel path's set-up (so it can be compared with more workers) but needs no
    /// agreement with others.
    pub fn is_shared(&self) -> bool {
        self.world > 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_zero_writes_the_run_directory_and_the_others_their_own() {
        let options = RunOptions::new("/runs/a");
        let alone = Rank::of(&options, None);
        assert_eq!((alone.index, alone.world, alone.is_primary(), alone.is_shared()), (0, 1, true, false));
        assert_eq!(alone.dir.path(), std::path::Path::new("/runs/a"));
        let second = Rank { index: 1, world: 2, dir: RunDir::new("/runs/a").rank(1) };
        assert_eq!(second.dir.path(), std::path::Path::new("/runs/a/rank-1"));
        assert!(!second.is_primary() && second.is_shared());
    }
}
