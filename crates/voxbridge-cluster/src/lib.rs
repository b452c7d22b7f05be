//! SLURM jobs for voxbridge runs. A site file (`cluster/<site>.toml`) says where jobs run;
//! [`plan()`] decides, without touching the disk, which jobs an experiment or sweep becomes;
//! [`render`] turns a job (one run, or a sweep as a job array, maybe after another job) into an
//! sbatch script from the templates in `cluster/templates/`; [`slurm`] submits it and reads job
//! states; [`JobRecord`]s in the run directory's `jobs.json` remember what was submitted.
//! Nothing here trains: jobs start the `voxbridge-coordinator` and `voxbridge-worker` binaries.

pub mod binaries;
pub mod plan;
pub mod render;
pub mod site;
pub mod slurm;

use std::path::Path;

use serde::{Deserialize, Serialize};
use voxbridge_config::RunDir;

pub use binaries::{WorkerCapabilities, check_worker, query_worker};
pub use plan::{ExperimentFile, Finetune, JobKind, JobPlan, PlanError, PlanOptions, PlannedJob, Target, plan};
pub use render::{Dependency, Job, RunSpec, render};
pub use site::Site;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{file}: {message}")]
    Site { file: String, message: String },
    #[error("{0}")]
    Job(String),
    #[error("{0}")]
    Slurm(String),
    /// The binaries a job would run cannot run it.
    #[error("{0}")]
    Binary(String),
    #[error("{file}: {message}")]
    Record { file: String, message: String },
}

/// One submitted job, as `jobs.json` keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub name: String,
    /// `train`, `sweep` (a job array) or `finetune`.
    pub kind: String,
    /// The rendered script.
    pub script: String,
    /// Run directories, in array-task order.
    pub runs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    pub submitted_unix: u64,
}

/// The file in a run (or sweep) directory that lists its jobs.
pub const JOBS_FILE: &str = RunDir::JOBS_FILE;

/// The jobs recorded in `dir` (none when there is no `jobs.json`).
pub fn read_records(dir: &Path) -> Result<Vec<JobRecord>, ClusterError> {
    let path = RunDir::new(dir).jobs();
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| ClusterError::Record { file: path.display().to_string(), message: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(ClusterError::Record { file: path.display().to_string(), message: e.to_string() }),
    }
}

/// Adds `record` to `dir/jobs.json` (written to a temporary file, then renamed over it, so a
/// crash never leaves half a list).
pub fn append_record(dir: &Path, record: JobRecord) -> Result<(), ClusterError> {
    let mut records = read_records(dir)?;
    records.push(record);
    let path = RunDir::new(dir).jobs();
    let err = |e: std::io::Error| ClusterError::Record { file: path.display().to_string(), message: e.to_string() };
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = path.with_file_name(format!(".{JOBS_FILE}.tmp"));
    let text = serde_json::to_string_pretty(&records).expect("records serialise");
    std::fs::write(&tmp, text + "\n").map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_accumulate() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_records(dir.path()).unwrap().is_empty());
        let r = |id: &str| JobRecord {
            job_id: id.into(),
            name: "n".into(),
            kind: "train".into(),
            script: "s".into(),
            runs: vec!["runs/n".into()],
            after: None,
            submitted_unix: 1,
        };
        append_record(dir.path(), r("1")).unwrap();
        append_record(dir.path(), r("2")).unwrap();
        let ids: Vec<String> = read_records(dir.path()).unwrap().into_iter().map(|r| r.job_id).collect();
        assert_eq!(ids, ["1", "2"]);
        std::fs::write(dir.path().join(JOBS_FILE), "not json").unwrap();
        assert!(read_records(dir.path()).unwrap_err().to_string().contains("jobs.json"));
    }
}
