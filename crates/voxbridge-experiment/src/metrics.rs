//! Per-step and per-epoch metrics as CSV (`metrics/steps.csv`, `metrics/epochs.csv`), flushed as
//! they come so a crashed run keeps its history; a resumed run drops the rows written after its
//! checkpoint and continues the files.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use voxbridge_config::RunDir;
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

/// The columns of a `steps.csv` row that a resumed run needs back.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StepRow {
    pub step: u64,
    pub epoch: usize,
    pub loss: f64,
    pub clip_loss: f64,
    pub prior_loss: f64,
    pub seconds: f64,
}

/// CSV writers for the two files.
pub struct MetricsWriter {
    steps: csv::Writer<File>,
    epochs: csv::Writer<File>,
}

impl MetricsWriter {
    /// Starts both files of `run` afresh.
    pub fn create(run: &RunDir) -> anyhow::Result<Self> {
        let dir = run.metrics();
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let open =
            |path: PathBuf| csv::Writer::from_path(&path).with_context(|| format!("cannot create {}", path.display()));
        Ok(MetricsWriter { steps: open(run.steps_csv())?, epochs: open(run.epochs_csv())? })
    }

    /// Continues the files of a run resumed after `steps_done` steps and `epochs_done` whole
    /// epochs: keeps the rows before those, drops the rest (written after the checkpoint, before
    /// a crash), and returns the kept rows. Missing files start empty.
    pub fn resume(
        run: &RunDir,
        steps_done: u64,
        epochs_done: usize,
    ) -> anyhow::Result<(Self, Vec<StepRow>, Vec<EpochRecord>)> {
        let dir = run.metrics();
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let steps_path = run.steps_csv();
        let epochs_path = run.epochs_csv();
        let step_rows: Vec<StepRow> = read_rows(&steps_path)?;
        let epoch_rows: Vec<EpochRecord> = read_rows(&epochs_path)?;
        let (kept_steps, kept_epochs) = (
            step_rows.iter().take_while(|r| r.step < steps_done).count(),
            epoch_rows.iter().take_while(|r| r.epoch < epochs_done).count(),
        );
        let steps = truncate_rows(&steps_path, kept_steps, Some(&steps_header()))?;
        let epochs = truncate_rows(&epochs_path, kept_epochs, None)?;
        if kept_steps as u64 != steps_done {
            tracing::warn!(
                "{} has {kept_steps} rows before step {steps_done}: metrics of the missing steps are lost",
                steps_path.display()
            );
        }
        Ok((
            MetricsWriter { steps, epochs },
            step_rows.into_iter().take(kept_steps).collect(),
            epoch_rows.into_iter().take(kept_epochs).collect(),
        ))
    }

    /// Appends a step's row and flushes it (a crash loses at most the row being written).
    pub fn step(&mut self, record: &StepRecord) -> anyhow::Result<()> {
        self.steps.serialize(record)?;
        self.steps.flush()?;
        Ok(())
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.steps.flush()?;
        self.epochs.flush()?;
        Ok(())
    }

    pub fn epoch(&mut self, record: &EpochRecord) -> anyhow::Result<()> {
        self.epochs.serialize(record)?;
        self.epochs.flush()?;
        self.steps.flush()?;
        Ok(())
    }
}

/// Every row of a CSV file with a header; a missing file has none.
fn read_rows<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut reader = csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, row) in reader.deserialize().enumerate() {
        match row {
            Ok(row) => rows.push(row),
            // A row cut short by a crash can only be the last one.
            Err(e) => {
                tracing::warn!("{}: row {} unreadable ({e}); ignoring it and what follows", path.display(), i + 2);
                break;
            }
        }
    }
    Ok(rows)
}

/// The header line `steps.csv` is written with today.
fn steps_header() -> String {
    let record = StepRecord {
        step: 0,
        epoch: 0,
        lr: 0.0,
        beta1: 0.0,
        phase: "",
        temperature: 0.0,
        loss: 0.0,
        clip_loss: 0.0,
        prior_loss: 0.0,
        blur_loss: 0.0,
        seconds: 0.0,
        blur_cont: 0.0,
    };
    let mut writer = csv::Writer::from_writer(Vec::new());
    let text = writer
        .serialize(record)
        .ok()
        .and_then(|()| writer.into_inner().ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    text.lines().next().unwrap_or_default().to_string()
}

/// Rewrites `path` with its header and first `keep` rows (through a temporary file and a rename)
/// and opens it for appending. When `header` (today's columns) extends the file's header by
/// columns added since the file was written (`steps.csv` gained `blur_cont`), the header becomes
/// today's and the kept rows get `NaN` in the new columns, so appended rows match it.
fn truncate_rows(path: &Path, keep: usize, header: Option<&str>) -> anyhow::Result<csv::Writer<File>> {
    let mut lines: Vec<String> = if path.exists() {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .lines()
            .map(str::to_string)
            .collect()
    } else {
        Vec::new()
    };
    let has_header = !lines.is_empty();
    lines.truncate(if has_header { keep + 1 } else { 0 });
    if let Some(header) = header
        && has_header
        && lines[0] != header
    {
        match header.strip_prefix(&format!("{},", lines[0])) {
            Some(added) => {
                let pad = ",NaN".repeat(added.split(',').count());
                tracing::info!("{}: adding the columns {added} (NaN in the earlier rows)", path.display());
                lines[0] = header.to_string();
                for line in &mut lines[1..] {
                    line.push_str(&pad);
                }
            }
            None => anyhow::bail!(
                "{}: its columns ({}) are not this version's ({header}); move it aside to resume",
                path.display(),
                lines[0]
            ),
        }
    }
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    crate::checkpoint::write_atomically(path, text.as_bytes())?;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {} for appending", path.display()))?;
    Ok(csv::WriterBuilder::new().has_headers(!has_header).from_writer(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(step: u64) -> StepRecord {
        StepRecord {
            step,
            epoch: 0,
            lr: 1e-4,
            beta1: 0.9,
            phase: "bimixco",
            temperature: 0.006,
            loss: 2.0,
            clip_loss: 1.0,
            prior_loss: f64::NAN,
            blur_loss: f64::NAN,
            seconds: 0.5,
            blur_cont: 0.25,
        }
    }

    /// A `steps.csv` written before `blur_cont` existed: resuming gives it the new column (NaN
    /// in the old rows), so the appended rows match the header and a second resume keeps
    /// every row. (Before: the old header stayed, new rows had one more field, and the next
    /// resume dropped every row from the first new one on.)
    #[test]
    fn resuming_a_steps_file_of_an_earlier_version_adds_the_new_columns() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path());
        std::fs::create_dir_all(run.metrics()).unwrap();
        let old = "step,epoch,lr,beta1,phase,temperature,loss,clip_loss,prior_loss,blur_loss,seconds\n\
                   0,0,0.0001,0.9,bimixco,0.006,3,1,NaN,NaN,0.5\n\
                   1,0,0.0001,0.9,bimixco,0.006,2.5,1,NaN,NaN,0.5\n\
                   2,0,0.0001,0.9,bimixco,0.006,2.4,1,NaN,NaN,0.5\n";
        std::fs::write(run.steps_csv(), old).unwrap();
        let (mut writer, kept, _) = MetricsWriter::resume(&run, 2, 0).unwrap();
        assert_eq!(kept.len(), 2);
        writer.step(&record(2)).unwrap();
        drop(writer);
        let text = std::fs::read_to_string(run.steps_csv()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], steps_header());
        assert!(lines[0].ends_with(",blur_cont"), "{text}");
        assert!(lines[1].ends_with(",0.5,NaN") && lines[3].ends_with(",0.25"), "{text}");
        let (_, kept, _) = MetricsWriter::resume(&run, 3, 0).unwrap();
        assert_eq!(kept.iter().map(|r| r.step).collect::<Vec<_>>(), [0, 1, 2]);
    }
}
