//! A site file (`cluster/<site>.toml`): where and how a cluster runs voxbridge jobs.
//!
//! ```toml
//! name = "mycluster"
//! partition = "gpu"              # optional: the cluster's default partition otherwise
//! account = "lab"                # optional
//! gpus_per_node = 4              # 0: CPU workers (tasks_per_node of them per node)
//! tasks_per_node = 4             # default: gpus_per_node
//! cpus_per_task = 8
//! mem = "200G"                   # optional, per node
//! time_limit = "24:00:00"
//! grace_s = 90                   # SIGTERM this long before the time limit (preemption)
//! bin_dir = "/opt/voxbridge/bin" # optional: default, the directory of the running voxbridge
//! modules = ["cuda/12.4"]
//! env_files = ["env/nccl.env"]   # relative to the site file; sourced by the job
//! [env]
//! OMP_NUM_THREADS = "8"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ClusterError;

/// `cluster/local.toml`: the default site.
const LOCAL: &str = include_str!("../../../cluster/local.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    name: String,
    partition: Option<String>,
    account: Option<String>,
    gpus_per_node: u32,
    tasks_per_node: Option<u32>,
    cpus_per_task: Option<u32>,
    mem: Option<String>,
    time_limit: Option<String>,
    grace_s: Option<u32>,
    bin_dir: Option<PathBuf>,
    #[serde(default)]
    modules: Vec<String>,
    #[serde(default)]
    env_files: Vec<PathBuf>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// A checked site.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub name: String,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub gpus_per_node: u32,
    /// Workers per node (one per GPU on a GPU site).
    pub tasks_per_node: u32,
    pub cpus_per_task: u32,
    pub mem: Option<String>,
    pub time_limit: String,
    /// Seconds between SIGTERM and the time limit.
    pub grace_s: u32,
    pub bin_dir: Option<PathBuf>,
    pub modules: Vec<String>,
    /// Absolute (resolved against the site file's directory).
    pub env_files: Vec<PathBuf>,
    pub env: BTreeMap<String, String>,
}

impl Site {
    /// The site used without `--cluster`: `cluster/local.toml`, embedded.
    pub fn local() -> Site {
        Site::parse(LOCAL, Path::new("cluster/local.toml")).expect("cluster/local.toml is a valid site (tested)")
    }

    /// Whether the workers reduce over NCCL (`--nccl-device local`): a site with GPUs.
    pub fn uses_nccl(&self) -> bool {
        self.gpus_per_node > 0
    }

    pub fn load(path: &Path) -> Result<Site, ClusterError> {
        let text = std::fs::read_to_string(path).map_err(|e| ClusterError::Site {
            file: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Site::parse(&text, path)
    }

    /// Parses a site file's text; `path` names it in errors and anchors `env_files`.
    pub fn parse(text: &str, path: &Path) -> Result<Site, ClusterError> {
        let file = path.display().to_string();
        let raw: RawSite = toml::from_str(text).map_err(|e| {
            let (line, column) = voxbridge_config::line_col(text, e.span().map_or(0, |s| s.start));
            ClusterError::Site { file: format!("{file}:{line}:{column}"), message: e.message().trim().to_string() }
        })?;
        let bad = |field: &str, message: String| ClusterError::Site { file: format!("{file}: {field}"), message };
        let tasks_per_node = match (raw.tasks_per_node, raw.gpus_per_node) {
            (Some(0), _) => return Err(bad("tasks_per_node", "must be at least 1".into())),
            (Some(t), 0) => t,
            (Some(t), g) if t != g => {
                return Err(bad("tasks_per_node", format!("{t} workers for {g} GPUs per node: one worker per GPU")));
            }
            (_, 0) => return Err(bad("tasks_per_node", "needed when gpus_per_node = 0 (CPU workers)".into())),
            (_, g) => g,
        };
        let time_limit = raw.time_limit.unwrap_or_else(|| "24:00:00".into());
        if !valid_time(&time_limit) {
            return Err(bad("time_limit", format!("{time_limit:?} is not a SLURM time ([D-]HH:MM:SS or minutes)")));
        }
        let grace_s = raw.grace_s.unwrap_or(90);
        if grace_s > 65_535 {
            return Err(bad("grace_s", format!("{grace_s} s: SLURM's --signal takes at most 65535 s")));
        }
        if let Some(limit) = time_seconds(&time_limit)
            && u64::from(grace_s) >= limit
        {
            return Err(bad(
                "grace_s",
                format!("{grace_s} s is not shorter than time_limit {time_limit}: every job would stop at once"),
            ));
        }
        for key in raw.env.keys() {
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad(&format!("env.{key}"), "not a shell variable name".into()));
            }
        }
        let base = path.parent().unwrap_or(Path::new("."));
        Ok(Site {
            name: raw.name,
            partition: raw.partition,
            account: raw.account,
            gpus_per_node: raw.gpus_per_node,
            tasks_per_node,
            cpus_per_task: raw.cpus_per_task.unwrap_or(1).max(1),
            mem: raw.mem,
            time_limit,
            grace_s,
            bin_dir: raw.bin_dir,
            modules: raw.modules,
            env_files: raw.env_files.iter().map(|f| base.join(f)).collect(),
            env: raw.env,
        })
    }
}

/// Seconds of a valid SLURM time (see `valid_time`).
fn time_seconds(t: &str) -> Option<u64> {
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().ok()?, r),
        None => (0, t),
    };
    let parts: Vec<u64> = rest.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let seconds = match (t.contains('-'), parts.as_slice()) {
        (false, [m]) => m * 60,
        (false, [m, s]) => m * 60 + s,
        (_, [h, m, s]) => h * 3600 + m * 60 + s,
        (true, [h]) => h * 3600,
        (true, [h, m]) => h * 3600 + m * 60,
        _ => return None,
    };
    Some(days * 86_400 + seconds)
}

/// `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS` (sbatch's `--time`).
fn valid_time(t: &str) -> bool {
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (Some(d), r),
        None => (None, t),
    };
    let numeric = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let parts: Vec<&str> = rest.split(':').collect();
    days.is_none_or(numeric) && (1..=3).contains(&parts.len()) && parts.iter().all(|p| numeric(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_site_has_one_worker_per_gpu() {
        let text = "name = \"c\"\npartition = \"gpu\"\ngpus_per_node = 4\nenv_files = [\"env/nccl.env\"]\n\
                    [env]\nOMP_NUM_THREADS = \"8\"\n";
        let site = Site::parse(text, Path::new("/x/cluster/c.toml")).unwrap();
        assert_eq!((site.tasks_per_node, site.grace_s), (4, 90));
        assert_eq!(site.env_files, [PathBuf::from("/x/cluster/env/nccl.env")]);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_line_or_field() {
        let err = Site::parse("name = \"c\"\ngpus_per_node = 1\nparttion = \"x\"\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("c.toml:3:1") && err.to_string().contains("parttion"), "{err}");
        let err = Site::parse("name = \"c\"\ngpus_per_node = 0\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("tasks_per_node"), "{err}");
        let err =
            Site::parse("name = \"c\"\ngpus_per_node = 4\ntasks_per_node = 2\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("one worker per GPU"), "{err}");
        let err =
            Site::parse("name = \"c\"\ngpus_per_node = 4\ntime_limit = \"1h\"\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("time_limit"), "{err}");
    }

    #[test]
    fn the_embedded_local_site_parses() {
        let site = Site::local();
        assert_eq!((site.gpus_per_node, site.tasks_per_node, site.grace_s), (0, 2, 90));
        assert_eq!(site.time_limit, "01:00:00");
    }

    #[test]
    fn slurm_times() {
        for ok in ["30", "30:00", "24:00:00", "2-00", "2-12:00:00"] {
            assert!(valid_time(ok), "{ok}");
        }
        for bad in ["", "1h", "1:2:3:4", "x-10", "-10"] {
            assert!(!valid_time(bad), "{bad}");
        }
        assert_eq!(time_seconds("30"), Some(1800));
        assert_eq!(time_seconds("24:00:00"), Some(86_400));
        assert_eq!(time_seconds("2-12"), Some(2 * 86_400 + 12 * 3600));
    }
}
