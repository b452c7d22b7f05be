//! `report.json`: what a finished run trained, how long it took and how it evaluates; its
//! presence in a run directory means the run finished.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use voxbridge_config::RunDir;
use voxbridge_train::{Evaluation, TrainPlan};

use crate::metrics::EpochRecord;

/// The report's name in a run directory.
pub const REPORT_FILE: &str = RunDir::REPORT_FILE;

/// `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub name: String,
    pub config_hash: String,
    pub train_subjects: Vec<u8>,
    /// Sessions each training subject's trials came from, by NSD subject (saved as `"subject<N>"`).
    #[serde(with = "voxbridge_config::by_subject")]
    pub sessions_used: BTreeMap<u8, Vec<u16>>,
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
    /// Final evaluation per evaluation subject, by NSD subject (saved as `"subject<N>"`).
    #[serde(with = "voxbridge_config::by_subject")]
    pub evaluation: BTreeMap<u8, Evaluation>,
    pub epochs: Vec<EpochRecord>,
}

impl RunReport {
    /// The final evaluation of `subject`.
    pub fn evaluation_of(&self, subject: u8) -> Option<&Evaluation> {
        self.evaluation.get(&subject)
    }
}

/// What a run returns: its directory and report.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub dir: PathBuf,
    pub report: RunReport,
    /// The directory already held this run's complete result, which was kept.
    pub reused: bool,
}

/// The report of a finished run in `dir`, if there is one.
pub fn read_report(dir: impl AsRef<Path>) -> anyhow::Result<Option<RunReport>> {
    let path = RunDir::new(dir.as_ref()).report();
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let report =
        serde_json::from_str(&text).with_context(|| format!("{} is not a voxbridge run report", path.display()))?;
    Ok(Some(report))
}
