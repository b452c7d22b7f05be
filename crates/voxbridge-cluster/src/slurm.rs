//! The SLURM commands voxbridge runs: `sbatch`, `sinfo`, `squeue`, `sacct`. Each failure says
//! which command failed and shows its stderr.

use std::path::Path;
use std::process::Command;

use crate::ClusterError;

/// Runs `program args…`; its stdout, or an error naming it with its stderr.
fn run(program: &str, args: &[&str]) -> Result<String, ClusterError> {
    let output = Command::new(program).args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ClusterError::Slurm(format!(
                "`{program}` is not on PATH: run on a SLURM login node (or pass --dry-run to see the job scripts)"
            ))
        } else {
            ClusterError::Slurm(format!("cannot run `{program}`: {e}"))
        }
    })?;
    if !output.status.success() {
        return Err(ClusterError::Slurm(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Submits a job script; its job id.
pub fn sbatch(script: &Path) -> Result<String, ClusterError> {
    let path = script.display().to_string();
    let out = run("sbatch", &["--parsable", &path])?;
    // `--parsable` prints `id` or `id;cluster`.
    let id = out.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(ClusterError::Slurm(format!("sbatch printed {:?}, not a job id", out.trim())));
    }
    Ok(id)
}

/// The partitions this cluster has (`sinfo`), the default one marked with its trailing `*`
/// removed.
pub fn partitions() -> Result<Vec<String>, ClusterError> {
    let out = run("sinfo", &["-a", "-h", "-o", "%P"])?;
    Ok(out.lines().map(|l| l.trim().trim_end_matches('*').to_string()).filter(|p| !p.is_empty()).collect())
}

/// Cancels jobs (`scancel`), sending `signal` (e.g. `TERM`) to their steps when given.
pub fn scancel(ids: &[String], signal: Option<&str>) -> Result<(), ClusterError> {
    let mut args: Vec<String> = Vec::new();
    if let Some(s) = signal {
        args.push(format!("--signal={s}"));
    }
    args.extend(ids.iter().cloned());
    run("scancel", &args.iter().map(String::as_str).collect::<Vec<_>>()).map(|_| ())
}

/// A job's (or array task's) state as SLURM reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobState {
    /// `123`, or `123_4` for an array task.
    pub id: String,
    /// `PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, `CANCELLED`, `TIMEOUT`, …
    pub state: String,
    /// `code:signal` (sacct) or empty (squeue).
    pub exit_code: String,
    pub elapsed: String,
}

impl JobState {
    pub fn is_finished(&self) -> bool {
        !matches!(self.state.as_str(), "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "REQUEUED" | "SUSPENDED")
    }
}

/// States of `ids`: `sacct` when accounting is on (finished jobs too), else `squeue` (jobs
/// still known to the controller), else `scontrol show job` for each.
pub fn states(ids: &[String]) -> Result<Vec<JobState>, ClusterError> {
    let list = ids.join(",");
    if let Ok(out) = run("sacct", &["-X", "-n", "-P", "-j", &list, "-o", "JobID,State,ExitCode,Elapsed"])
        && !out.trim().is_empty()
    {
        return Ok(parse_sacct(&out));
    }
    let mut states = Vec::new();
    if let Ok(out) = run("squeue", &["-h", "-j", &list, "-o", "%i|%T|%M"]) {
        states = parse_squeue(&out);
    }
    for id in ids {
        // A job the controller has already forgotten is left out (shown as unknown), not an
        // error that would hide every other job's state.
        if !states.iter().any(|s| s.id == *id || s.id.starts_with(&format!("{id}_")))
            && let Ok(out) = run("scontrol", &["show", "job", id])
        {
            states.extend(parse_scontrol(&out));
        }
    }
    Ok(states)
}

/// `sacct -X -n -P -o JobID,State,ExitCode,Elapsed` lines (`CANCELLED by 0` is cut to
/// `CANCELLED`).
pub fn parse_sacct(out: &str) -> Vec<JobState> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (f.len() >= 4).then(|| JobState {
                id: f[0].to_string(),
                state: f[1].split_whitespace().next().unwrap_or("").to_string(),
                exit_code: f[2].to_string(),
                elapsed: f[3].to_string(),
            })
        })
        .collect()
}

/// `squeue -h -o "%i|%T|%M"` lines.
pub fn parse_squeue(out: &str) -> Vec<JobState> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().split('|').collect();
            (f.len() >= 3).then(|| JobState {
                id: f[0].to_string(),
                state: f[1].to_string(),
                exit_code: String::new(),
                elapsed: f[2].to_string(),
            })
        })
        .collect()
}

/// `scontrol show job` records (one per array task): JobId / ArrayJobId+ArrayTaskId, JobState,
/// ExitCode, RunTime.
pub fn parse_scontrol(out: &str) -> Vec<JobState> {
    out.split("\n\n")
        .filter(|r| r.contains("JobState="))
        .map(|record| {
            let field = |key: &str| {
                record.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{key}="))).unwrap_or("").to_string()
            };
            let id = match (field("ArrayJobId"), field("ArrayTaskId")) {
                (a, t) if !a.is_empty() && !t.is_empty() => format!("{a}_{t}"),
                _ => field("JobId"),
            };
            JobState { id, state: field("JobState"), exit_code: field("ExitCode"), elapsed: field("RunTime") }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_reports() {
        let sacct = parse_sacct("12|COMPLETED|0:0|00:00:05\n13_0|CANCELLED by 0|0:15|00:01:00\n");
        assert_eq!(
            sacct[1],
            JobState {
                id: "13_0".into(),
                state: "CANCELLED".into(),
                exit_code: "0:15".into(),
                elapsed: "00:01:00".into()
            }
        );
        assert!(sacct.iter().all(JobState::is_finished));
        let squeue = parse_squeue("14|RUNNING|0:07\n15|PENDING|0:00\n");
        assert_eq!((squeue[0].state.as_str(), squeue.len()), ("RUNNING", 2));
        assert!(!squeue[1].is_finished());
        let scontrol = parse_scontrol(
            "JobId=16 JobName=x\n   JobState=COMPLETED Reason=None Dependency=(null)\n   RunTime=00:00:03 ExitCode=0:0\n",
        );
        assert_eq!(
            scontrol,
            [JobState {
                id: "16".into(),
                state: "COMPLETED".into(),
                exit_code: "0:0".into(),
                elapsed: "00:00:03".into()
            }]
        );
    }
}
