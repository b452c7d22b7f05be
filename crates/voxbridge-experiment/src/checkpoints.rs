//! Training checkpoints as `voxbridge ckpt` and `voxbridge status` show them: the listing of a
//! root (committed or not, step, generation, size, a summary from each marker), one checkpoint
//! with every file verified against its marker, and a run directory's progress from its own
//! files. Data only; the CLI prints it.

use std::path::Path;

use anyhow::Context;
use voxbridge_checkpoint::{CheckpointId, CheckpointStore, Located, locate};
use voxbridge_config::RunDir;

use crate::resume::{self, Found, STATE_FILE, TrainingState};

/// One checkpoint of a root's listing.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointRow {
    /// Its folder's name.
    pub name: String,
    pub step: u64,
    pub generation: u32,
    /// `committed`, `DAMAGED` (committed, then found damaged) or `partial`.
    pub state: &'static str,
    pub bytes: u64,
    /// `run R, epoch E, loss L` from a committed checkpoint's marker; empty for a partial one.
    pub summary: String,
}

/// The checkpoints under a root.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointListing {
    pub url: String,
    pub rows: Vec<CheckpointRow>,
}

/// Lists the checkpoints under `url` (a root, or the root of the one checkpoint it names).
pub fn list_checkpoints(url: &str) -> anyhow::Result<CheckpointListing> {
    let store = match locate(url)? {
        Located::Root(store) => store,
        Located::One(store, _) => store,
    };
    let rows = store
        .list()?
        .iter()
        .map(|l| CheckpointRow {
            name: l.id.dir_name(),
            step: l.id.step,
            generation: l.id.generation,
            state: match (l.committed, l.damaged) {
                (true, true) => "DAMAGED",
                (true, false) => "committed",
                (false, _) => "partial",
            },
            bytes: l.bytes(),
            summary: if l.committed { summary(&store, l.id) } else { String::new() },
        })
        .collect();
    Ok(CheckpointListing { url: store.url().to_string(), rows })
}

/// `run R, epoch E, loss L` from a commit marker (cheap: the marker only).
fn summary(store: &CheckpointStore, id: CheckpointId) -> String {
    match store.commit_record(id) {
        Ok(record) => {
            let m = &record.metadata;
            format!(
                "run {}, epoch {}, loss {}",
                m["run"].as_str().unwrap_or("?"),
                m["epoch"],
                m["last_loss"].as_f64().map_or("-".into(), |l| format!("{l:.4}"))
            )
        }
        Err(e) => format!("unreadable marker: {e}"),
    }
}

/// One file of a checkpoint, checked against its marker.
#[derive(Debug, Clone, PartialEq)]
pub struct FileCheck {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
    /// Why it failed its size or checksum check, if it did.
    pub problem: Option<String>,
}

/// One committed checkpoint with every file verified.
#[derive(Debug)]
pub struct Inspection {
    pub found: Found,
    pub files: Vec<FileCheck>,
}

impl Inspection {
    /// The checkpoint's URL.
    pub fn location(&self) -> String {
        self.found.location()
    }

    /// Names of the files that failed their check.
    pub fn bad_files(&self) -> Vec<String> {
        self.files.iter().filter(|f| f.problem.is_some()).map(|f| f.name.clone()).collect()
    }

    fn verified(&self, name: &str) -> bool {
        self.files.iter().any(|f| f.name == name && f.problem.is_none())
    }

    /// The training state, when its file verified.
    pub fn state(&self) -> anyhow::Result<Option<TrainingState>> {
        if !self.verified(STATE_FILE) && self.files.iter().any(|f| f.name == STATE_FILE) {
            return Ok(None);
        }
        let bytes = self.found.store.read(&self.found.record, STATE_FILE)?;
        let state = serde_json::from_slice(&bytes).with_context(|| format!("{}/{STATE_FILE}", self.location()))?;
        Ok(Some(state))
    }

    /// The saved config's text, when its file verified.
    pub fn config(&self) -> anyhow::Result<Option<String>> {
        if !self.verified(resume::CONFIG_FILE) && self.files.iter().any(|f| f.name == resume::CONFIG_FILE) {
            return Ok(None);
        }
        let bytes = self.found.store.read(&self.found.record, resume::CONFIG_FILE)?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }
}

/// The checkpoint at `url` (a root: its newest committed one), every file read and verified.
pub fn inspect_checkpoint(url: &str) -> anyhow::Result<Inspection> {
    let found = resume::find_checkpoint(url)?.with_context(|| format!("{url}: no committed checkpoint"))?;
    let files = found
        .record
        .files
        .iter()
        .map(|file| FileCheck {
            name: file.name.clone(),
            bytes: file.bytes,
            sha256: file.sha256.clone(),
            problem: found.store.read(&found.record, &file.name).err().map(|e| e.to_string()),
        })
        .collect();
    Ok(Inspection { found, files })
}

/// A run's progress from its own files: steps logged, newest committed checkpoint, finished.
pub fn run_progress(dir: &Path) -> String {
    let run = RunDir::new(dir);
    let mut parts = vec![dir.display().to_string()];
    match std::fs::read_to_string(run.steps_csv()).map(|t| t.lines().count().saturating_sub(1)) {
        Ok(n) => parts.push(format!("{n} steps logged")),
        Err(_) => parts.push("not started".into()),
    }
    let root = std::fs::read_to_string(run.config())
        .ok()
        .and_then(|t| voxbridge_config::parse_experiment(&t, RunDir::CONFIG_FILE).ok())
        .and_then(|raw| raw.validate(RunDir::CONFIG_FILE, None).ok())
        .and_then(|c| c.checkpoint.url)
        .unwrap_or_else(|| run.default_checkpoint_root().display().to_string());
    if let Ok(store) = CheckpointStore::open(&root)
        && let Ok(Some(id)) = store.latest_committed()
    {
        parts.push(format!("checkpoint at step {} committed", id.step));
    }
    if run.report().is_file() {
        parts.push("finished (report.json)".into());
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_directory_tells_how_far_it_got() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        assert_eq!(run_progress(path), format!("{}: not started", path.display()));
        let run = RunDir::new(path);
        std::fs::create_dir_all(run.metrics()).unwrap();
        std::fs::write(run.steps_csv(), "step,loss\n0,1\n1,0.5\n").unwrap();
        std::fs::write(run.report(), "{}").unwrap();
        assert_eq!(run_progress(path), format!("{}: 2 steps logged: finished (report.json)", path.display()));
    }
}
