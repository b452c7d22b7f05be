//! Per-step and per-epoch metrics as CSV (`metrics/steps.csv`, `metrics/epochs.csv`), flushed as
//! they come so a crashed run keeps its history.

use std::fs::File;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use voxbridge_train::StepRecord;

/// One row of `epochs.csv`. Retrieval columns are empty in epochs that were not evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub steps: u64,
    pub phase: String,
    pub mean_loss: f64,
    pub mean_clip_loss: f64,
    /// `NaN` without a prior.
    pub mean_prior_loss: f64,
    pub seconds: f64,
    pub image_top1: Option<f64>,
    pub brain_top1: Option<f64>,
}

/// CSV writers for the two files.
pub struct MetricsWriter {
    steps: csv::Writer<File>,
    epochs: csv::Writer<File>,
}

impl MetricsWriter {
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let open = |name: &str| {
            let path = dir.join(name);
            csv::Writer::from_path(&path).with_context(|| format!("cannot create {}", path.display()))
        };
        Ok(MetricsWriter { steps: open("steps.csv")?, epochs: open("epochs.csv")? })
    }

    pub fn step(&mut self, record: &StepRecord) -> anyhow::Result<()> {
        self.steps.serialize(record)?;
        Ok(())
    }

    pub fn epoch(&mut self, record: &EpochRecord) -> anyhow::Result<()> {
        self.epochs.serialize(record)?;
        self.epochs.flush()?;
        self.steps.flush()?;
        Ok(())
    }
}
