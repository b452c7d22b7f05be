//! `voxbridge demo` around its three runs: the dataset it simulates (or reuses, once it is shown
//! to be made with the same settings), and the scores it reports — subject 1 after one session,
//! pretrained + fine-tuned against from scratch, next to a ridge baseline and the ideal decoder —
//! written to `<out>/report.json`. The CLI prints them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;
use voxbridge_data::{Dataset, MANIFEST_FILE};
use voxbridge_sim::{OracleReport, SimSpec};
use voxbridge_train::Evaluation;

use crate::baseline::{BaselineResult, Sessions, ridge_baseline};
use crate::demo::{DEMO_PLOT, DEMO_REPORT, DemoPlan, DemoRuns, run_demo};

/// Where the demo's dataset lives under `--out`.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoData {
    /// `<out>/data`.
    pub dir: PathBuf,
    /// The same, as a storage location.
    pub location: String,
    /// Its manifest.
    pub manifest: String,
}

impl DemoData {
    pub fn under(out: &Path) -> anyhow::Result<Self> {
        let dir = out.join("data");
        let location = dir.to_str().context("--out must be valid UTF-8")?.to_string();
        let manifest = format!("{location}/{MANIFEST_FILE}");
        Ok(DemoData { dir, location, manifest })
    }
}

/// A dataset an earlier demo left, made with the settings asked for now.
pub struct ExistingDataset {
    dataset: Dataset,
}

impl ExistingDataset {
    pub fn name(&self) -> String {
        self.dataset.manifest().name.clone()
    }

    /// The ideal decoder's scores the simulator recorded in the manifest.
    pub fn oracle(&self) -> anyhow::Result<OracleReport> {
        let table =
            self.dataset.manifest().oracle.clone().context("the existing dataset has no oracle; pass another --out")?;
        table.try_into().context("the existing dataset's oracle section is unreadable")
    }
}

/// The dataset already in `data`, if there is one; an error when it was made with other
/// settings than `preset` and `seed` (a re-run reuses the dataset only when it would make the
/// same one).
pub fn existing_dataset(data: &DemoData, preset: &str, seed: u64) -> anyhow::Result<Option<ExistingDataset>> {
    if !data.dir.join(MANIFEST_FILE).exists() {
        return Ok(None);
    }
    let dataset = Dataset::open(&data.manifest)?;
    let g = &dataset.manifest().generator;
    let wanted = SimSpec::preset(preset)
        .with_context(|| format!("unknown preset `{preset}` (choose one of {:?})", SimSpec::PRESETS))?;
    let wanted_params = toml::Table::try_from(&wanted).context("serialising the preset")?;
    if g.preset.as_deref() != Some(preset) || g.seed != Some(seed) || g.params != wanted_params {
        bail!(
            "{} holds a dataset made with other settings (preset {:?} seed {:?}, or other generator \
             parameters) than --preset {preset} --seed {seed}; pass another --out",
            data.dir.display(),
            g.preset,
            g.seed,
        );
    }
    Ok(Some(ExistingDataset { dataset }))
}

/// Top-1 retrieval of subject 1 (fractions), with the 95% CI half-widths.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub image_top1: f64,
    pub brain_top1: f64,
    pub image_ci95: f64,
    pub brain_ci95: f64,
    pub run: String,
}

impl Score {
    fn of(e: &Evaluation, run: &Path) -> Self {
        let r = &e.retrieval;
        Score {
            image_top1: r.image_top1.mean,
            brain_top1: r.brain_top1.mean,
            image_ci95: r.image_top1.ci95,
            brain_ci95: r.brain_top1.ci95,
            run: run.display().to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Oracle {
    pub image_top1: f64,
    pub brain_top1: f64,
}

/// `<out>/report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub dataset: String,
    pub preset: String,
    pub seed: u64,
    pub ways: usize,
    pub chance: f64,
    pub pretrained_1session: Score,
    pub scratch_1session: Score,
    /// The ideal decoder of subject 1 (knows the simulator's ground truth).
    pub oracle: Oracle,
    pub ridge_1session: BaselineResult,
    pub oracle_all_subjects: OracleReport,
    pub plan: DemoPlan,
    pub seconds: f64,
}

/// The finished demo.
#[derive(Debug, Clone)]
pub struct DemoOutcome {
    pub report: DemoReport,
    pub runs: DemoRuns,
    /// Subject 1's final evaluation after fine-tuning, and from scratch.
    pub finetune: Evaluation,
    pub scratch: Evaluation,
    /// Where the report and the figure went.
    pub report_path: PathBuf,
    pub plot_path: PathBuf,
}

/// What the demo trains and scores.
#[derive(Debug, Clone)]
pub struct DemoRequest<'a> {
    pub out: &'a Path,
    pub preset: &'a str,
    pub seed: u64,
    pub data: &'a DemoData,
    /// The dataset's name and its ideal decoder's scores.
    pub dataset: String,
    pub oracle: OracleReport,
    /// Progress bars on the terminal.
    pub progress: bool,
    /// When the demo started (the report's `seconds`).
    pub started: Instant,
    /// `--device` / `--precision`.
    pub compute: crate::options::ComputeChoice,
}

/// Runs the demo's three runs on the (verified) dataset, scores subject 1 against a ridge
/// baseline and the oracle, and writes the report.
pub fn run_and_score(request: DemoRequest<'_>) -> anyhow::Result<DemoOutcome> {
    let plan = DemoPlan::for_preset(request.preset);
    let runs = run_demo(&plan, &request.data.manifest, request.out, request.seed, request.progress, request.compute)?;
    let dataset = Dataset::open(&request.data.manifest)?;
    let ridge = ridge_baseline(&dataset, 1, Sessions::First(1), request.seed)?;
    let fine = runs.finetune_eval().context("the fine-tuned run has no evaluation of subject 1")?.clone();
    let scratch = runs.scratch_eval().context("the scratch run has no evaluation of subject 1")?.clone();
    let o = request.oracle.subjects.iter().find(|s| s.subject == 1).context("no oracle for subject 1")?.clone();
    let report = DemoReport {
        dataset: request.dataset,
        preset: request.preset.to_string(),
        seed: request.seed,
        ways: fine.retrieval.ways,
        chance: fine.retrieval.chance,
        pretrained_1session: Score::of(&fine, &runs.finetune.dir),
        scratch_1session: Score::of(&scratch, &runs.scratch.dir),
        oracle: Oracle { image_top1: o.image_top1, brain_top1: o.brain_top1 },
        ridge_1session: ridge,
        oracle_all_subjects: request.oracle,
        plan,
        seconds: request.started.elapsed().as_secs_f64(),
    };
    let report_path = request.out.join(DEMO_REPORT);
    std::fs::write(&report_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", report_path.display()))?;
    Ok(DemoOutcome { report, runs, finetune: fine, scratch, report_path, plot_path: request.out.join(DEMO_PLOT) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_data_lives_under_out() {
        let data = DemoData::under(Path::new("runs/demo")).unwrap();
        assert_eq!(data.dir, Path::new("runs/demo/data"));
        assert_eq!(data.manifest, "runs/demo/data/manifest.toml");
    }

    #[test]
    fn no_dataset_yet_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let data = DemoData::under(dir.path()).unwrap();
        assert!(existing_dataset(&data, "tiny", 0).unwrap().is_none());
    }
}
