//! `voxbridge submit` and `voxbridge status`: experiments and sweeps as SLURM jobs, and what
//! became of them. What to submit is decided by voxbridge-cluster's [`plan`]; here the plan is
//! checked against the cluster, executed (files written, scripts rendered and submitted,
//! records kept) and printed.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use voxbridge_cluster::{Finetune, PlanOptions, Site, Target, plan, slurm};
use voxbridge_experiment::checkpoints::run_progress;

use crate::args::{StatusArgs, SubmitArgs};

pub fn submit(args: &SubmitArgs) -> anyhow::Result<()> {
    let site = match &args.cluster {
        Some(path) => Site::load(&std::path::absolute(path)?)?,
        None => Site::local(),
    };
    let target = Target::read(&args.target)?;
    let options = PlanOptions {
        nodes: args.nodes,
        out: args.out.as_deref().map(std::path::absolute).transpose()?,
        workdir: std::env::current_dir()?,
        finetune: args
            .finetune_all
            .then(|| Finetune { subjects: args.finetune_subjects.clone(), sessions: args.finetune_sessions }),
    };
    let plan = plan(&target, &site, &options)?;

    let bin_dir = bin_dir(args, &site)?;
    if !args.dry_run {
        check_partition(args, &site)?;
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
        for planned in &plan.jobs {
            refuse_while_running(planned.record_dir.path())?;
        }
    }

    let mut ids: Vec<String> = Vec::new();
    for planned in &plan.jobs {
        // Dependencies point to earlier jobs: their ids (or dry-run placeholders) are known.
        let job = planned.job_after(&ids);
        let script = voxbridge_cluster::render(&site, &job, &bin_dir)?;
        let kind = planned.kind.as_str();
        if args.dry_run {
            println!("# ---- {kind} job {} ({}) ----", job.name, planned.script.display());
            println!("{script}");
            ids.push(planned.placeholder_id());
            continue;
        }
        for experiment in &planned.experiments {
            write_file(&experiment.path, &experiment.text)?;
        }
        write_file(&planned.script, &script)?;
        let id = slurm::sbatch(&planned.script)?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        voxbridge_cluster::append_record(planned.record_dir.path(), planned.record(&id, &ids, now))?;
        println!(
            "submitted {kind} job {id} ({}{}) → {}",
            job.name,
            if job.runs.len() > 1 { format!(", array of {}", job.runs.len()) } else { String::new() },
            planned.record_dir.path().display()
        );
        ids.push(id);
    }
    Ok(())
}

/// Where voxbridge-coordinator and voxbridge-worker are: `--bin-dir`, else the site's, else
/// this binary's directory.
fn bin_dir(args: &SubmitArgs, site: &Site) -> anyhow::Result<PathBuf> {
    Ok(match (&args.bin_dir, &site.bin_dir) {
        (Some(d), _) | (None, Some(d)) => std::path::absolute(d)?,
        (None, None) => {
            std::env::current_exe()?.parent().context("the voxbridge binary has no directory")?.to_path_buf()
        }
    })
}

/// The site's partition, if it names one, must be one of the cluster's.
fn check_partition(args: &SubmitArgs, site: &Site) -> anyhow::Result<()> {
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
        bail!("{} has no {}: nothing was submitted from it", args.run.display(), voxbridge_config::RunDir::JOBS_FILE);
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
