//! Job scripts: `#SBATCH` directives and set-up lines worked out here, the rest from the
//! templates in `cluster/templates/` (environment and `srun` lines only).

use std::path::{Path, PathBuf};

use voxbridge_config::RunDir;

use crate::ClusterError;
use crate::site::Site;

const SINGLE_NODE: &str = include_str!("../../../cluster/templates/single-node.sbatch");
const MULTI_NODE: &str = include_str!("../../../cluster/templates/multi-node.sbatch");

/// One run of a job: its run directory and experiment file.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    pub run_dir: PathBuf,
    pub experiment: PathBuf,
}

/// What must finish first: `afterok` on a job id, or (in a dry run) a named job not yet
/// submitted.
#[derive(Debug, Clone, PartialEq)]
pub enum Dependency {
    AfterOk(String),
}

/// A job to render: one run, or several as a job array (one array task per run).
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub name: String,
    pub runs: Vec<RunSpec>,
    pub nodes: u32,
    /// The directory the job runs in (relative paths of experiments resolve against it).
    pub workdir: PathBuf,
    /// Where SLURM writes the job's output.
    pub log_dir: PathBuf,
    pub dependency: Option<Dependency>,
}

impl Job {
    /// Ranks of each run: nodes × workers per node.
    pub fn world(&self, site: &Site) -> u32 {
        self.nodes * site.tasks_per_node
    }
}

/// Single-quotes `s` for bash.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn quote_path(p: &Path) -> String {
    quote(&p.display().to_string())
}

/// The job script for `job` on `site`, with the voxbridge binaries in `bin_dir`.
pub fn render(site: &Site, job: &Job, bin_dir: &Path) -> Result<String, ClusterError> {
    if job.runs.is_empty() {
        return Err(ClusterError::Job(format!("job {}: no runs", job.name)));
    }
    if job.nodes == 0 {
        return Err(ClusterError::Job(format!("job {}: nodes must be at least 1", job.name)));
    }
    // `#SBATCH` lines are not shell words: whitespace splits them and `%` is a SLURM pattern.
    for (what, path) in [("working directory", &job.workdir), ("log directory", &job.log_dir)] {
        let text = path.display().to_string();
        if text.chars().any(|c| c.is_whitespace() || c == '%') {
            return Err(ClusterError::Job(format!(
                "job {}: the {what} {text:?} holds whitespace or `%`, which #SBATCH lines cannot carry; choose another path",
                job.name
            )));
        }
    }
    let mut directives = vec![format!("--job-name={}", job.name)];
    directives.extend(site.partition.as_ref().map(|p| format!("--partition={p}")));
    directives.extend(site.account.as_ref().map(|a| format!("--account={a}")));
    directives.push(format!("--nodes={}", job.nodes));
    directives.push(format!("--ntasks-per-node={}", site.tasks_per_node));
    directives.push(format!("--cpus-per-task={}", site.cpus_per_task));
    if site.gpus_per_node > 0 {
        directives.push(format!("--gpus-per-node={}", site.gpus_per_node));
    }
    directives.extend(site.mem.as_ref().map(|m| format!("--mem={m}")));
    directives.push(format!("--time={}", site.time_limit));
    // Preemption and the time limit: SIGTERM to the job steps (the workers) this long before;
    // a worker then finishes its step, commits a checkpoint and exits 0.
    directives.push(format!("--signal=TERM@{}", site.grace_s));
    directives.push(format!("--chdir={}", job.workdir.display()));
    let log = if job.runs.len() > 1 { RunDir::SLURM_ARRAY_LOG } else { RunDir::SLURM_LOG };
    directives.push(format!("--output={}", job.log_dir.join(log).display()));
    directives.push("--open-mode=append".into());
    if job.runs.len() > 1 {
        directives.push(format!("--array=0-{}", job.runs.len() - 1));
    }
    match &job.dependency {
        Some(Dependency::AfterOk(id)) => directives.push(format!("--dependency=afterok:{id}")),
        None => {}
    }
    let directives: Vec<String> = directives.into_iter().map(|d| format!("#SBATCH {d}")).collect();

    let mut setup = Vec::new();
    for module in &site.modules {
        setup.push(format!("module load {}", quote(module)));
    }
    for file in &site.env_files {
        setup.push(format!("source {}", quote_path(file)));
    }
    for (key, value) in &site.env {
        setup.push(format!("export {key}={}", quote(value)));
    }
    let list = |f: &dyn Fn(&RunSpec) -> String| job.runs.iter().map(f).collect::<Vec<_>>().join(" ");
    setup.push(format!("RUNS=({})", list(&|r| quote_path(&r.run_dir))));
    setup.push(format!("EXPERIMENTS=({})", list(&|r| quote_path(&r.experiment))));
    setup.push("export VOXBRIDGE_RUN=\"${RUNS[${SLURM_ARRAY_TASK_ID:-0}]}\"".into());
    setup.push("export VOXBRIDGE_EXPERIMENT=\"${EXPERIMENTS[${SLURM_ARRAY_TASK_ID:-0}]}\"".into());

    let worker_flags = if site.uses_nccl() { "--nccl-device local" } else { "" };
    let template = if job.nodes > 1 { MULTI_NODE } else { SINGLE_NODE };
    fill(
        template,
        &[
            ("directives", directives.join("\n")),
            ("setup", setup.join("\n")),
            ("bin", quote_path(bin_dir)),
            ("cpus_per_task", site.cpus_per_task.to_string()),
            ("world", job.world(site).to_string()),
            ("nodes", job.nodes.to_string()),
            ("tasks_per_node", site.tasks_per_node.to_string()),
            ("worker_flags", worker_flags.to_string()),
        ],
    )
}

/// Replaces every `{{key}}`; a placeholder without a value is an error (a template typo).
fn fill(template: &str, values: &[(&str, String)]) -> Result<String, ClusterError> {
    let mut out = String::with_capacity(template.len() + 512);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").ok_or_else(|| ClusterError::Job("unclosed `{{` in a template".into()))?;
        let key = rest[start + 2..start + end].trim();
        let value = values
            .iter()
            .find(|(k, _)| *k == key)
            .ok_or_else(|| ClusterError::Job(format!("template placeholder {{{{{key}}}}} has no value")))?;
        out.push_str(&value.1);
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(out.replace(" \n", "\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu_site() -> Site {
        let text = "name = \"g\"\npartition = \"gpu\"\naccount = \"lab\"\ngpus_per_node = 4\ncpus_per_task = 8\n\
                    time_limit = \"24:00:00\"\nmodules = [\"cuda/12.4\"]\nenv_files = [\"env/nccl.env\"]\n\
                    [env]\nOMP_NUM_THREADS = \"8\"\n";
        Site::parse(text, Path::new("/c/cluster/g.toml")).unwrap()
    }

    fn job(runs: usize, nodes: u32) -> Job {
        Job {
            name: "pre".into(),
            runs: (0..runs)
                .map(|i| RunSpec {
                    run_dir: format!("/runs/r{i}").into(),
                    experiment: format!("/runs/r{i}/experiment.toml").into(),
                })
                .collect(),
            nodes,
            workdir: "/work".into(),
            log_dir: "/runs/slurm".into(),
            dependency: None,
        }
    }

    fn directives(script: &str) -> Vec<&str> {
        script.lines().filter_map(|l| l.strip_prefix("#SBATCH ")).collect()
    }

    #[test]
    fn single_node() {
        let s = render(&gpu_site(), &job(1, 1), Path::new("/opt/vb")).unwrap();
        let d = directives(&s);
        for want in [
            "--job-name=pre",
            "--partition=gpu",
            "--account=lab",
            "--nodes=1",
            "--ntasks-per-node=4",
            "--gpus-per-node=4",
            "--signal=TERM@90",
            "--chdir=/work",
            "--output=/runs/slurm/slurm-%j.out",
        ] {
            assert!(d.contains(&want), "{want} missing from {d:?}");
        }
        assert!(!d.iter().any(|l| l.starts_with("--array") || l.starts_with("--dependency")), "{d:?}");
        assert!(
            s.contains("module load 'cuda/12.4'\nsource '/c/cluster/env/nccl.env'\nexport OMP_NUM_THREADS='8'"),
            "{s}"
        );
        assert!(s.contains("--workers 4 --listen"), "{s}");
        assert!(s.contains("srun --ntasks=4 --cpus-per-task=8 --kill-on-bad-exit=1 '/opt/vb'/voxbridge-worker"), "{s}");
        assert!(s.contains("--resume auto --nccl-device local"), "{s}");
        assert!(s.contains("RUNS=('/runs/r0')"), "{s}");
        assert!(!s.contains("{{"), "{s}");
    }

    #[test]
    fn multi_node() {
        let s = render(&gpu_site(), &job(1, 3), Path::new("/opt/vb")).unwrap();
        assert!(directives(&s).contains(&"--nodes=3"), "{s}");
        assert!(s.contains("--workers 12 --listen"), "{s}");
        assert!(s.contains("srun --nodes=3 --ntasks-per-node=4 --cpus-per-task=8"), "{s}");
    }

    #[test]
    fn array_of_a_sweep() {
        let s = render(&Site::local(), &job(3, 1), Path::new("/b")).unwrap();
        let d = directives(&s);
        assert!(d.contains(&"--array=0-2") && d.contains(&"--output=/runs/slurm/slurm-%A_%a.out"), "{d:?}");
        assert!(!d.iter().any(|l| l.starts_with("--gpus") || l.starts_with("--partition")), "{d:?}");
        assert!(s.contains("RUNS=('/runs/r0' '/runs/r1' '/runs/r2')"), "{s}");
        assert!(s.contains("VOXBRIDGE_RUN=\"${RUNS[${SLURM_ARRAY_TASK_ID:-0}]}\""), "{s}");
        assert!(s.contains("--resume auto\n"), "CPU workers get no device flag: {s}");
    }

    /// The coordinator takes a free port (0) and publishes where it listens in a file unique to
    /// the job, removed before it starts; the workers wait for that file. No port is derived
    /// from the job id (ids 30000 apart, or two SLURMs on one machine, collided).
    #[test]
    fn the_coordinator_publishes_a_free_port_in_a_file_unique_to_the_job() {
        for nodes in [1, 3] {
            let s = render(&gpu_site(), &job(1, nodes), Path::new("/opt/vb")).unwrap();
            assert!(!s.contains("30000") && !s.contains("VOXBRIDGE_PORT"), "{s}");
            let file = "VOXBRIDGE_ADDRESS_FILE=\"$VOXBRIDGE_RUN/slurm/coordinator-$SLURM_JOB_ID.addr\"";
            assert!(s.contains(&format!("export {file}\nrm -f \"$VOXBRIDGE_ADDRESS_FILE\"\n")), "{s}");
            assert!(s.contains("--listen 0.0.0.0:0 --address-file \"$VOXBRIDGE_ADDRESS_FILE\""), "{s}");
            assert!(s.contains("--coordinator-file \"$VOXBRIDGE_ADDRESS_FILE\""), "{s}");
            let rm = s.find("rm -f").unwrap();
            assert!(rm < s.find("voxbridge-coordinator").unwrap(), "{s}");
        }
    }

    #[test]
    fn dependency() {
        let mut j = job(1, 1);
        j.dependency = Some(Dependency::AfterOk("4242".into()));
        let s = render(&Site::local(), &j, Path::new("/b")).unwrap();
        assert!(directives(&s).contains(&"--dependency=afterok:4242"), "{s}");
    }

    #[test]
    fn quoting_and_template_errors() {
        assert_eq!(quote("it's"), r"'it'\''s'");
        let err = fill("a {{nope}} b", &[]).unwrap_err().to_string();
        assert!(err.contains("{{nope}}"), "{err}");
        assert!(render(&Site::local(), &job(0, 1), Path::new("/b")).is_err());
        let mut spaced = job(1, 1);
        spaced.log_dir = "/my runs/slurm".into();
        let err = render(&Site::local(), &spaced, Path::new("/b")).unwrap_err().to_string();
        assert!(err.contains("\"/my runs/slurm\" holds whitespace"), "{err}");
        let s = render(&Site::local(), &job(1, 1), Path::new("/it's")).unwrap();
        assert!(s.contains(r"'/it'\''s'/voxbridge-worker"), "{s}");
    }
}
