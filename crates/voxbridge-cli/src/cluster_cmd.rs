//! `voxbridge submit` and `voxbridge status`: experiments and sweeps as SLURM jobs, and what
//! became of them.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use voxbridge_cluster::{Dependency, Job, JobRecord, RunSpec, Site, slurm};
use voxbridge_config::ExperimentConfig;
use voxbridge_train::TrainPlan;
use voxbridge_train::distributed::Placement;

use crate::args::{StatusArgs, SubmitArgs};

/// A job ready to render: what it runs, and how it is recorded.
struct Planned {
    job: Job,
    kind: &'static str,
    /// Files to write before submitting: (path, text) of each run's experiment.
    experiments: Vec<(PathBuf, String)>,
    /// Where `jobs.json` goes.
    record_dir: PathBuf,
    /// Index of the job this one waits for (`afterok`).
    after: Option<usize>,
}

/// The ranks of a job (`nodes` × the site's workers per node) must place the experiment's
/// batch (the same rule training applies).
fn check_ranks(config: &ExperimentConfig, site: &Site, nodes: u32) -> anyhow::Result<()> {
    let world = nodes * site.tasks_per_node;
    let subjects = config.data.train_subjects.len();
    let per_subject = TrainPlan::per_subject(config.train.batch_size as usize, subjects);
    Placement::new(subjects, world as usize, per_subject).map_err(|e| {
        anyhow::anyhow!(
            "{}: {nodes} node(s) × {} workers per node = {world} ranks cannot train {subjects} subject(s) \
             with train.batch_size = {}: {e} (change --nodes, the site's gpus_per_node/tasks_per_node, or the batch)",
            config.name,
            site.tasks_per_node,
            config.train.batch_size
        )
    })?;
    Ok(())
}

/// A sweep file's name (it has a `[grid]`); `None` for an experiment file.
fn sweep_name(text: &str) -> Option<String> {
    let table = toml::from_str::<toml::Table>(text).ok().filter(|t| t.contains_key("grid"))?;
    Some(table.get("name").and_then(|v| v.as_str()).unwrap_or("sweep").to_string())
}

pub fn submit(args: &SubmitArgs) -> anyhow::Result<()> {
    let site = match &args.cluster {
        Some(path) => Site::load(&std::path::absolute(path)?)?,
        None => Site::local(),
    };
    let nodes = args.nodes.max(1);
    let workdir = std::env::current_dir()?;
    let text =
        std::fs::read_to_string(&args.target).with_context(|| format!("cannot read {}", args.target.display()))?;
    let mut planned = Vec::new();
    if let Some(sweep_name) = sweep_name(&text) {
        if args.finetune_all {
            bail!("--finetune-all follows a pretraining experiment, not a sweep ({})", args.target.display());
        }
        let runs = voxbridge_config::load_sweep(&args.target)?;
        if runs.is_empty() {
            bail!("{}: the sweep expands to zero runs", args.target.display());
        }
        let dir = std::path::absolute(args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(&sweep_name)))?;
        let mut specs = Vec::new();
        let mut experiments = Vec::new();
        for run in &runs {
            check_ranks(&run.config, &site, nodes)?;
            let run_dir = dir.join(&run.name);
            let experiment = dir.join("slurm").join(format!("{}.toml", run.name));
            experiments.push((experiment.clone(), run.text.clone()));
            specs.push(RunSpec { run_dir, experiment });
        }
        let job = Job { name: sweep_name, runs: specs, nodes, workdir, log_dir: dir.join("slurm"), dependency: None };
        planned.push(Planned { job, kind: "sweep", experiments, record_dir: dir, after: None });
    } else {
        let origin = args.target.display().to_string();
        let config = voxbridge_config::parse_experiment(&text, &origin)?.validate(&origin, Some(&text))?;
        check_ranks(&config, &site, nodes)?;
        let run_dir =
            std::path::absolute(args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(&config.name)))?;
        let experiment = run_dir.join("slurm").join("experiment.toml");
        let job = Job {
            name: config.name.clone(),
            runs: vec![RunSpec { run_dir: run_dir.clone(), experiment: experiment.clone() }],
            nodes,
            workdir: workdir.clone(),
            log_dir: run_dir.join("slurm"),
            dependency: None,
        };
        planned.push(Planned {
            job,
            kind: "train",
            experiments: vec![(experiment, text.clone())],
            record_dir: run_dir.clone(),
            after: None,
        });
        if args.finetune_all {
            let subjects = if args.finetune_subjects.is_empty() {
                config.data.train_subjects.clone()
            } else {
                args.finetune_subjects.clone()
            };
            for subject in subjects {
                let name = format!("{}-finetune-subj{subject:02}", config.name);
                let subjects = toml::Value::Array(vec![toml::Value::Integer(i64::from(subject))]);
                let overrides = vec![
                    ("data.train_subjects".to_string(), subjects.clone()),
                    ("data.eval_subjects".to_string(), subjects),
                    ("data.sessions".to_string(), toml::Value::Integer(i64::from(args.finetune_sessions))),
                    ("train.init_from".to_string(), toml::Value::String(run_dir.display().to_string())),
                ];
                // Each fine-tune checkpoints into its own run directory.
                let (fine_text, fine) = voxbridge_config::derive_experiment(
                    &text,
                    &origin,
                    &name,
                    &overrides,
                    &["checkpoint.url", "data.eval_subjects"],
                )?;
                check_ranks(&fine, &site, 1)?;
                let fine_dir = run_dir.parent().unwrap_or(&run_dir).join(&name);
                let experiment = fine_dir.join("slurm").join("experiment.toml");
                let job = Job {
                    name: name.clone(),
                    runs: vec![RunSpec { run_dir: fine_dir.clone(), experiment: experiment.clone() }],
                    nodes: 1,
                    workdir: workdir.clone(),
                    log_dir: fine_dir.join("slurm"),
                    dependency: None,
                };
                planned.push(Planned {
                    job,
                    kind: "finetune",
                    experiments: vec![(experiment, fine_text)],
                    record_dir: fine_dir,
                    after: Some(0),
                });
            }
        }
    }

    let bin_dir = match (&args.bin_dir, &site.bin_dir) {
        (Some(d), _) | (None, Some(d)) => std::path::absolute(d)?,
        (None, None) => {
            std::env::current_exe()?.parent().context("the voxbridge binary has no directory")?.to_path_buf()
        }
    };
    if !args.dry_run {
        if let Some(partition) = &site.partition {
            let known = slurm::partitions()?;
            if !known.contains(partition) {
                bail!(
                    "{}: unknown partition {partition:?}; this cluster has {}",
                    args.cluster.as_deref().unwrap_or(Path::new("site")).display(),
                    known.join(", ")
                );
            }
        }
        for name in ["voxbridge-coordinator", "voxbridge-worker"] {
            if !bin_dir.join(name).is_file() {
                bail!("{} has no {name}: build the workspace's binaries or pass --bin-dir", bin_dir.display());
            }
        }
    }
    // On a GPU site the worker the scripts start must reduce over NCCL: ask it before submitting
    // (a dry run too, when the worker is here: its bin dir may be the cluster's alone).
    let worker = bin_dir.join("voxbridge-worker");
    if site.uses_nccl() && worker.is_file() {
        voxbridge_cluster::check_worker(&site, &voxbridge_cluster::query_worker(&worker)?, &worker)?;
    }

    if !args.dry_run {
        for p in &planned {
            refuse_while_running(&p.record_dir)?;
        }
    }
    let mut ids: Vec<String> = Vec::new();
    for p in &mut planned {
        // Dependencies point to earlier jobs: their ids (or dry-run placeholders) are known.
        p.job.dependency = p.after.map(|i| Dependency::AfterOk(ids[i].clone()));
        let script = voxbridge_cluster::render(&site, &p.job, &bin_dir)?;
        let script_path = p.job.log_dir.join(format!("{}.sbatch", p.job.name));
        if args.dry_run {
            println!("# ---- {} job {} ({}) ----", p.kind, p.job.name, script_path.display());
            println!("{script}");
            ids.push(format!("<job id of {}>", p.job.name));
            continue;
        }
        for (path, text) in &p.experiments {
            write_file(path, text)?;
        }
        write_file(&script_path, &script)?;
        let id = slurm::sbatch(&script_path)?;
        let record = JobRecord {
            job_id: id.clone(),
            name: p.job.name.clone(),
            kind: p.kind.to_string(),
            script: script_path.display().to_string(),
            runs: p.job.runs.iter().map(|r| r.run_dir.display().to_string()).collect(),
            after: p.after.map(|i| ids[i].clone()),
            submitted_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        voxbridge_cluster::append_record(&p.record_dir, record)?;
        println!(
            "submitted {} job {id} ({}{}) → {}",
            p.kind,
            p.job.name,
            if p.job.runs.len() > 1 { format!(", array of {}", p.job.runs.len()) } else { String::new() },
            p.record_dir.display()
        );
        ids.push(id);
    }
    Ok(())
}

/// Two jobs must never train the same run directory: a job recorded for it that SLURM still
/// lists as pending or running is an error (one it has forgotten counts as finished).
fn refuse_while_running(dir: &Path) -> anyhow::Result<()> {
    let records = voxbridge_cluster::read_records(dir)?;
    if records.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = records.iter().map(|r| r.job_id.clone()).collect();
    if let Some(state) = slurm::states(&ids)?.iter().find(|s| !s.is_finished()) {
        bail!(
            "{}: job {} is still {} for this run; wait for it to end or `scancel {}` before submitting again",
            dir.display(),
            state.id,
            state.state,
            state.id
        );
    }
    Ok(())
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let records = voxbridge_cluster::read_records(&args.run)?;
    if records.is_empty() {
        bail!("{} has no {}: nothing was submitted from it", args.run.display(), voxbridge_cluster::JOBS_FILE);
    }
    let ids: Vec<String> = records.iter().map(|r| r.job_id.clone()).collect();
    let states = match slurm::states(&ids) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("job states unavailable: {e}");
            Vec::new()
        }
    };
    for record in &records {
        let mine: Vec<_> = states
            .iter()
            .filter(|s| s.id == record.job_id || s.id.starts_with(&format!("{}_", record.job_id)))
            .collect();
        let state = match mine.as_slice() {
            [] => "unknown (no longer listed by SLURM)".to_string(),
            [one] => format!("{} {} {}", one.state, one.exit_code, one.elapsed).trim_end().to_string(),
            many => many.iter().map(|s| format!("{}={}", s.id, s.state)).collect::<Vec<_>>().join(" "),
        };
        println!("job {} {} ({}): {state}", record.job_id, record.name, record.kind);
        for run in &record.runs {
            println!("  {}", run_progress(Path::new(run)));
        }
    }
    Ok(())
}

/// A run's progress from its own files: steps logged, newest committed checkpoint, finished.
fn run_progress(dir: &Path) -> String {
    let mut parts = vec![dir.display().to_string()];
    let steps = std::fs::read_to_string(dir.join("metrics/steps.csv")).map(|t| t.lines().count().saturating_sub(1));
    match steps {
        Ok(n) => parts.push(format!("{n} steps logged")),
        Err(_) => parts.push("not started".into()),
    }
    let root = std::fs::read_to_string(dir.join(voxbridge_experiment::resume::CONFIG_FILE))
        .ok()
        .and_then(|t| voxbridge_config::parse_experiment(&t, "config.toml").ok())
        .and_then(|raw| raw.validate("config.toml", None).ok())
        .and_then(|c| c.checkpoint.url)
        .unwrap_or_else(|| dir.join("checkpoints").display().to_string());
    if let Ok(store) = voxbridge_checkpoint::CheckpointStore::open(&root)
        && let Ok(Some(id)) = store.latest_committed()
    {
        parts.push(format!("checkpoint at step {} committed", id.step));
    }
    if dir.join(voxbridge_experiment::run::REPORT_FILE).is_file() {
        parts.push("finished (report.json)".into());
    }
    parts.join(": ")
}
