//! The binaries a job runs. `voxbridge-worker --capabilities` says what a worker was built
//! with; [`check_worker`] decides (a pure function) whether such a worker can run a site's
//! jobs, so `voxbridge submit` refuses before submitting a job whose workers would exit at start.

use std::path::Path;
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::ClusterError;
use crate::site::Site;

/// The command that builds a `voxbridge-worker` able to reduce over NCCL (its `nccl` feature).
pub const NCCL_BUILD: &str = "cargo build --release -p voxbridge-worker --features nccl";

/// What a `voxbridge-worker` binary supports: the JSON object `voxbridge-worker --capabilities`
/// prints (keys it adds later are ignored here).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WorkerCapabilities {
    /// Built with the `nccl` feature: `--nccl-device` works.
    pub nccl: bool,
}

impl WorkerCapabilities {
    /// Parses `--capabilities` output of the binary `worker` (named in errors).
    pub fn parse(text: &str, worker: &Path) -> Result<WorkerCapabilities, ClusterError> {
        serde_json::from_str(text.trim()).map_err(|e| {
            ClusterError::Binary(format!(
                "{} --capabilities printed {:?}, not its capabilities ({e}): rebuild the workspace's binaries \
                 or pass --bin-dir",
                worker.display(),
                text.trim()
            ))
        })
    }
}

/// Runs `worker --capabilities`.
pub fn query_worker(worker: &Path) -> Result<WorkerCapabilities, ClusterError> {
    let output = Command::new(worker)
        .arg("--capabilities")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ClusterError::Binary(format!("cannot run {} --capabilities: {e}", worker.display())))?;
    if !output.status.success() {
        return Err(ClusterError::Binary(format!(
            "{} --capabilities failed ({}): {}; a worker older than this voxbridge cannot say what it \
             supports: rebuild the workspace's binaries (`cargo build --release --workspace --bins`) or pass --bin-dir",
            worker.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    WorkerCapabilities::parse(&String::from_utf8_lossy(&output.stdout), worker)
}

/// Whether the worker binary `worker`, which supports `caps`, can run `site`'s jobs: a GPU
/// site's workers reduce over NCCL (`--nccl-device local`), which needs the `nccl` feature.
pub fn check_worker(site: &Site, caps: &WorkerCapabilities, worker: &Path) -> Result<(), ClusterError> {
    if site.uses_nccl() && !caps.nccl {
        return Err(ClusterError::Binary(format!(
            "site {}: gpus_per_node = {} starts the workers with --nccl-device local, but {} was built without \
             the `nccl` feature and would exit at start on every node; build it with `{NCCL_BUILD}` \
             (or pass --bin-dir to a directory holding such a build)",
            site.name,
            site.gpus_per_node,
            worker.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(gpus: u32) -> Site {
        let text = format!("name = \"s\"\ngpus_per_node = {gpus}\ntasks_per_node = 2\n");
        Site::parse(&text, Path::new("s.toml")).unwrap()
    }

    #[test]
    fn a_gpu_site_needs_a_worker_with_nccl() {
        let worker = Path::new("/opt/vb/voxbridge-worker");
        let (cpu, nccl) = (WorkerCapabilities { nccl: false }, WorkerCapabilities { nccl: true });
        check_worker(&site(2), &nccl, worker).unwrap();
        check_worker(&site(0), &cpu, worker).unwrap();
        check_worker(&site(0), &nccl, worker).unwrap();
        let err = check_worker(&site(2), &cpu, worker).unwrap_err().to_string();
        for want in ["site s", "gpus_per_node = 2", "/opt/vb/voxbridge-worker", NCCL_BUILD, "--bin-dir"] {
            assert!(err.contains(want), "{want} missing from {err}");
        }
    }

    #[test]
    fn capabilities_parse() {
        let worker = Path::new("w");
        let caps = WorkerCapabilities::parse("{\"nccl\":true,\"version\":\"9.9.9\"}\n", worker).unwrap();
        assert_eq!(caps, WorkerCapabilities { nccl: true });
        let err = WorkerCapabilities::parse("nccl=yes", worker).unwrap_err().to_string();
        assert!(err.starts_with("w --capabilities printed \"nccl=yes\""), "{err}");
        assert!(WorkerCapabilities::parse("{}", worker).is_err());
    }

    #[test]
    fn a_worker_that_cannot_answer_is_named() {
        let err = query_worker(Path::new("/nonexistent/voxbridge-worker")).unwrap_err().to_string();
        assert!(err.contains("cannot run /nonexistent/voxbridge-worker --capabilities"), "{err}");
        // `false` exits 1 whatever its arguments: a worker that does not know the flag.
        let err = query_worker(Path::new("false")).unwrap_err().to_string();
        assert!(err.contains("false --capabilities failed") && err.contains("rebuild"), "{err}");
    }
}
