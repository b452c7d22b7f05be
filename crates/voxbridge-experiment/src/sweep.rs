//! A sweep: every run of an expanded grid into `<out>/<run name>/`, then `sweep.json` and
//! `retrieval_vs_sessions.png` (MindEye2's "varying amount of training data" figure: mean top-1
//! over the runs with the same number of sessions). Finished runs are reused, so an interrupted
//! sweep continues where it stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use voxbridge_config::SweepRun;

use crate::plots::{LinePlot, Series};
use crate::run::{ResumeFrom, RunOptions, run_experiment};

/// The sweep's report, in its directory.
pub const SWEEP_REPORT: &str = "sweep.json";
/// Retrieval against the number of sessions, beside the report.
pub const SWEEP_PLOT: &str = "retrieval_vs_sessions.png";

/// One run's line in `sweep.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepEntry {
    pub name: String,
    /// `key = value` overrides of this run.
    pub overrides: BTreeMap<String, String>,
    pub dir: PathBuf,
    /// Sessions the (first) training subject used.
    pub sessions: usize,
    pub seed: u64,
    /// Final retrieval of the first evaluation subject.
    pub image_top1: f64,
    pub brain_top1: f64,
    pub chance: f64,
    pub reused: bool,
}

/// `sweep.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    pub runs: Vec<SweepEntry>,
    /// Mean top-1 (image, brain) per number of sessions, over the runs with that many.
    pub by_sessions: BTreeMap<usize, (f64, f64)>,
}

/// Runs every run of `runs` (from [`voxbridge_config::load_sweep`]) under `out`.
pub fn run_sweep(
    runs: &[SweepRun],
    out: &Path,
    progress: bool,
    compute: crate::options::ComputeChoice,
) -> anyhow::Result<SweepReport> {
    let mut entries = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        tracing::info!(run = %run.name, "sweep run {}/{}", i + 1, runs.len());
        let dir = out.join(&run.name);
        let summary = run_experiment(
            &run.config,
            &RunOptions { progress, resume: ResumeFrom::Auto, compute, ..RunOptions::new(dir.clone()) },
        )
        .with_context(|| format!("sweep run `{}`", run.name))?;
        let report = &summary.report;
        let eval =
            report.evaluation.values().next().with_context(|| format!("run `{}` has no evaluation", run.name))?;
        entries.push(SweepEntry {
            name: run.name.clone(),
            overrides: run.overrides.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
            dir,
            sessions: report.sessions_used.values().next().map_or(0, Vec::len),
            seed: run.config.train.seed,
            image_top1: eval.retrieval.image_top1.mean,
            brain_top1: eval.retrieval.brain_top1.mean,
            chance: eval.retrieval.chance,
            reused: summary.reused,
        });
    }
    let mut groups: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
    for e in &entries {
        groups.entry(e.sessions).or_default().push((e.image_top1, e.brain_top1));
    }
    let by_sessions = groups
        .into_iter()
        .map(|(s, v)| {
            let n = v.len() as f64;
            (s, (v.iter().map(|p| p.0).sum::<f64>() / n, v.iter().map(|p| p.1).sum::<f64>() / n))
        })
        .collect::<BTreeMap<_, _>>();
    let report = SweepReport { runs: entries, by_sessions };
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    crate::checkpoint::write_atomically(&out.join(SWEEP_REPORT), serde_json::to_string_pretty(&report)?.as_bytes())?;
    let chance = report.runs.first().map_or(0.0, |r| r.chance);
    let line = |f: fn(&(f64, f64)) -> f64| report.by_sessions.iter().map(|(s, v)| (*s as f64, f(v))).collect();
    LinePlot {
        title: "Retrieval vs. amount of training data",
        x_label: "training sessions (hours of data)",
        y_label: "top-1 accuracy (mean over runs)",
        series: vec![
            Series { label: "image retrieval".into(), points: line(|v| v.0), markers: true },
            Series { label: "brain retrieval".into(), points: line(|v| v.1), markers: true },
        ],
        reference: Some(("chance", chance)),
        y_range: Some((0.0, 1.0)),
    }
    .draw(&out.join(SWEEP_PLOT))?;
    Ok(report)
}
