//! The layout of a run directory: every file and folder a run, a data-parallel rank or a SLURM
//! job writes under it, by name. Paths only — nothing here touches the disk.
//!
//! ```text
//! <run>/config.toml             the resolved config (every default written out)
//! <run>/metrics/steps.csv       one row per optimizer step
//! <run>/metrics/epochs.csv      one row per epoch (+ retrieval where evaluated)
//! <run>/report.json             what was trained, timings, final evaluation per subject
//! <run>/plots/loss.png          loss per step
//! <run>/plots/retrieval.png     retrieval per evaluated epoch
//! <run>/checkpoint/             the final model: model.safetensors + model.json
//! <run>/checkpoints/            training checkpoints, unless a checkpoint URL is given
//! <run>/rank-R/                 rank R > 0 of a data-parallel run (its own metrics)
//! <run>/jobs.json               SLURM jobs submitted for the run
//! <run>/slurm/                  sbatch scripts, experiment copies and SLURM logs
//! ```

use std::path::{Path, PathBuf};

/// A run directory, by its path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    pub const CONFIG_FILE: &'static str = "config.toml";
    pub const REPORT_FILE: &'static str = "report.json";
    pub const METRICS_DIR: &'static str = "metrics";
    pub const STEPS_CSV: &'static str = "steps.csv";
    pub const EPOCHS_CSV: &'static str = "epochs.csv";
    pub const PLOTS_DIR: &'static str = "plots";
    pub const LOSS_PLOT: &'static str = "loss.png";
    pub const RETRIEVAL_PLOT: &'static str = "retrieval.png";
    /// The final model's folder.
    pub const MODEL_DIR: &'static str = "checkpoint";
    /// The model's weights (safetensors), in the final model's folder and in every training
    /// checkpoint.
    pub const WEIGHTS_FILE: &'static str = "model.safetensors";
    /// The model card (architecture, subjects), beside the weights.
    pub const MODEL_CARD_FILE: &'static str = "model.json";
    /// Training checkpoints when neither the launcher nor `checkpoint.url` chooses a root.
    pub const CHECKPOINTS_DIR: &'static str = "checkpoints";
    pub const JOBS_FILE: &'static str = "jobs.json";
    pub const SLURM_DIR: &'static str = "slurm";
    /// The experiment a one-run SLURM job trains, copied into its `slurm/` folder.
    pub const SLURM_EXPERIMENT: &'static str = "experiment.toml";
    /// SLURM's log of a single job (`%j`: job id).
    pub const SLURM_LOG: &'static str = "slurm-%j.out";
    /// SLURM's log of each task of an array job (`%A`: array job id, `%a`: task index).
    pub const SLURM_ARRAY_LOG: &'static str = "slurm-%A_%a.out";

    pub fn new(path: impl Into<PathBuf>) -> Self {
        RunDir { path: path.into() }
    }

    /// `runs/<name>`: where a run named `name` goes when no directory is given.
    pub fn default_for(name: &str) -> Self {
        RunDir::new(Path::new("runs").join(name))
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `config.toml`: the resolved config.
    pub fn config(&self) -> PathBuf {
        self.path.join(Self::CONFIG_FILE)
    }

    /// `report.json`: written last, so its presence means the run finished.
    pub fn report(&self) -> PathBuf {
        self.path.join(Self::REPORT_FILE)
    }

    /// `metrics/`.
    pub fn metrics(&self) -> PathBuf {
        self.path.join(Self::METRICS_DIR)
    }

    /// `metrics/steps.csv`.
    pub fn steps_csv(&self) -> PathBuf {
        self.metrics().join(Self::STEPS_CSV)
    }

    /// `metrics/epochs.csv`.
    pub fn epochs_csv(&self) -> PathBuf {
        self.metrics().join(Self::EPOCHS_CSV)
    }

    /// `plots/`.
    pub fn plots(&self) -> PathBuf {
        self.path.join(Self::PLOTS_DIR)
    }

    /// `plots/loss.png`.
    pub fn loss_plot(&self) -> PathBuf {
        self.plots().join(Self::LOSS_PLOT)
    }

    /// `plots/retrieval.png`.
    pub fn retrieval_plot(&self) -> PathBuf {
        self.plots().join(Self::RETRIEVAL_PLOT)
    }

    /// `checkpoint/`: the final model.
    pub fn model_dir(&self) -> PathBuf {
        self.path.join(Self::MODEL_DIR)
    }

    /// `checkpoint/model.safetensors`.
    pub fn model_weights(&self) -> PathBuf {
        self.model_dir().join(Self::WEIGHTS_FILE)
    }

    /// `checkpoint/model.json`.
    pub fn model_card(&self) -> PathBuf {
        self.model_dir().join(Self::MODEL_CARD_FILE)
    }

    /// `rank-R/`: where rank `rank` of a data-parallel run writes its own files.
    pub fn rank(&self, rank: usize) -> RunDir {
        RunDir::new(self.path.join(format!("rank-{rank}")))
    }

    /// `checkpoints/`: the training checkpoints' root unless another one is chosen.
    pub fn default_checkpoint_root(&self) -> PathBuf {
        self.path.join(Self::CHECKPOINTS_DIR)
    }

    /// `jobs.json`: the SLURM jobs submitted for this directory.
    pub fn jobs(&self) -> PathBuf {
        self.path.join(Self::JOBS_FILE)
    }

    /// `slurm/`: scripts, experiment copies and logs of SLURM jobs.
    pub fn slurm(&self) -> PathBuf {
        self.path.join(Self::SLURM_DIR)
    }

    /// `slurm/experiment.toml`: the experiment a one-run job trains.
    pub fn slurm_experiment(&self) -> PathBuf {
        self.slurm().join(Self::SLURM_EXPERIMENT)
    }

    /// `slurm/<run>.toml`: the experiment of run `run` of a sweep job (in the sweep's directory).
    pub fn slurm_sweep_experiment(&self, run: &str) -> PathBuf {
        self.slurm().join(format!("{run}.toml"))
    }

    /// `slurm/<job>.sbatch`: the script submitted for job `job`.
    pub fn slurm_script(&self, job: &str) -> PathBuf {
        self.slurm().join(format!("{job}.sbatch"))
    }

    /// `slurm/slurm-%j.out`, or `slurm/slurm-%A_%a.out` for an array job: SLURM's log pattern.
    pub fn slurm_log(&self, array: bool) -> PathBuf {
        self.slurm().join(if array { Self::SLURM_ARRAY_LOG } else { Self::SLURM_LOG })
    }
}

impl AsRef<Path> for RunDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl From<PathBuf> for RunDir {
    fn from(path: PathBuf) -> Self {
        RunDir::new(path)
    }
}

impl From<&Path> for RunDir {
    fn from(path: &Path) -> Self {
        RunDir::new(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(dir: &RunDir, path: PathBuf) -> String {
        path.strip_prefix(dir.path()).unwrap().display().to_string()
    }

    #[test]
    fn every_file_of_a_run_has_its_fixed_name() {
        let dir = RunDir::new("runs/a");
        let layout = [
            (dir.config(), "config.toml"),
            (dir.report(), "report.json"),
            (dir.metrics(), "metrics"),
            (dir.steps_csv(), "metrics/steps.csv"),
            (dir.epochs_csv(), "metrics/epochs.csv"),
            (dir.plots(), "plots"),
            (dir.loss_plot(), "plots/loss.png"),
            (dir.retrieval_plot(), "plots/retrieval.png"),
            (dir.model_dir(), "checkpoint"),
            (dir.model_weights(), "checkpoint/model.safetensors"),
            (dir.model_card(), "checkpoint/model.json"),
            (dir.default_checkpoint_root(), "checkpoints"),
            (dir.jobs(), "jobs.json"),
        ];
        for (path, expected) in layout {
            assert_eq!(rel(&dir, path), expected);
        }
    }

    #[test]
    fn a_rank_has_its_own_run_directory_inside_the_run() {
        let dir = RunDir::new("/runs/a");
        assert_eq!(RunDir::default_for("a").path(), Path::new("runs/a"));
        let rank = dir.rank(2);
        assert_eq!(rank.path(), Path::new("/runs/a/rank-2"));
        assert_eq!(rank.steps_csv(), Path::new("/runs/a/rank-2/metrics/steps.csv"));
    }

    #[test]
    fn slurm_files_live_in_the_slurm_folder() {
        let dir = RunDir::new("/runs/a");
        assert_eq!(dir.slurm(), Path::new("/runs/a/slurm"));
        assert_eq!(dir.slurm_experiment(), Path::new("/runs/a/slurm/experiment.toml"));
        assert_eq!(dir.slurm_sweep_experiment("lr-1"), Path::new("/runs/a/slurm/lr-1.toml"));
        assert_eq!(dir.slurm_script("pretrain"), Path::new("/runs/a/slurm/pretrain.sbatch"));
        assert_eq!(dir.slurm_log(false), Path::new("/runs/a/slurm/slurm-%j.out"));
        assert_eq!(dir.slurm_log(true), Path::new("/runs/a/slurm/slurm-%A_%a.out"));
    }
}
