//! `voxbridge demo`: the main job on embedded defaults. It simulates the `small` NSD (with the
//! ideal decoder's score), verifies it, pretrains MindEye2 on subjects 2–8, fine-tunes subject 1
//! on its first session, trains subject 1 on the same session from scratch with the same budget,
//! and scores both with MindEye2's 300-way retrieval next to a ridge baseline and the oracle.
//! Writes `report.json`, `finetune_vs_scratch.png` and the three run directories under `--out`.

use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;
use voxbridge_data::{Dataset, MANIFEST_FILE, Sessions};
use voxbridge_experiment::demo::{DemoPlan, run_demo};
use voxbridge_sim::{OracleReport, SimSpec};

use crate::args::{DemoArgs, SimulateArgs};
use crate::baseline::{BaselineResult, ridge_baseline};

/// Top-1 retrieval of subject 1 (fractions), with the 95% CI half-widths.
#[derive(Debug, Serialize)]
struct Score {
    image_top1: f64,
    brain_top1: f64,
    image_ci95: f64,
    brain_ci95: f64,
    run: String,
}

impl Score {
    fn of(e: &voxbridge_train::Evaluation, run: &std::path::Path) -> Self {
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

#[derive(Debug, Serialize)]
struct Oracle {
    image_top1: f64,
    brain_top1: f64,
}

#[derive(Debug, Serialize)]
struct DemoReport {
    dataset: String,
    preset: String,
    seed: u64,
    ways: usize,
    chance: f64,
    pretrained_1session: Score,
    scratch_1session: Score,
    /// The ideal decoder of subject 1 (knows the simulator's ground truth).
    oracle: Oracle,
    ridge_1session: BaselineResult,
    oracle_all_subjects: OracleReport,
    plan: DemoPlan,
    seconds: f64,
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let data_dir = args.out.join("data");
    let data = data_dir.to_str().context("--out must be valid UTF-8")?.to_string();
    let manifest_path = format!("{data}/{MANIFEST_FILE}");
    let (name, oracle) = if data_dir.join(MANIFEST_FILE).exists() {
        // A re-run reuses the dataset once it is verified and was made with the same settings.
        let dataset = Dataset::open(&manifest_path)?;
        let g = &dataset.manifest().generator;
        let wanted = SimSpec::preset(&args.preset)
            .with_context(|| format!("unknown preset `{}` (choose one of {:?})", args.preset, SimSpec::PRESETS))?;
        let wanted_params = toml::Table::try_from(&wanted).context("serialising the preset")?;
        if g.preset.as_deref() != Some(args.preset.as_str()) || g.seed != Some(args.seed) || g.params != wanted_params {
            bail!(
                "{} holds a dataset made with other settings (preset {:?} seed {:?}, or other generator \
                 parameters) than --preset {} --seed {}; pass another --out",
                data_dir.display(),
                g.preset,
                g.seed,
                args.preset,
                args.seed
            );
        }
        println!("reusing the dataset in {}", data_dir.display());
        crate::data_cmd::verify(&manifest_path)?;
        let table =
            dataset.manifest().oracle.clone().context("the existing dataset has no oracle; pass another --out")?;
        let oracle: OracleReport = table.try_into().context("the existing dataset's oracle section is unreadable")?;
        (dataset.manifest().name.clone(), oracle)
    } else {
        let simulated = crate::data_cmd::simulate(&SimulateArgs {
            out: data.clone(),
            preset: args.preset.clone(),
            seed: args.seed,
            name: None,
            manifest: None,
            oracle: true,
            subjects: None,
            max_sessions: None,
            ncsnr: None,
            representational_noise: None,
        })?;
        crate::data_cmd::verify(&manifest_path)?;
        (simulated.manifest.name, simulated.oracle.context("the simulator returned no oracle")?)
    };

    let plan = if args.preset == "tiny" { DemoPlan::tiny() } else { DemoPlan::small() };
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let runs = run_demo(&plan, &manifest_path, &args.out, args.seed, progress)?;
    let dataset = Dataset::open(&manifest_path)?;
    let ridge = ridge_baseline(&dataset, 1, Sessions::First(1), args.seed)?;
    let fine = runs.finetune_eval().context("the fine-tuned run has no evaluation of subject 1")?;
    let scratch = runs.scratch_eval().context("the scratch run has no evaluation of subject 1")?;
    let o = oracle.subjects.iter().find(|s| s.subject == 1).context("no oracle for subject 1")?.clone();
    let report = DemoReport {
        dataset: name,
        preset: args.preset.clone(),
        seed: args.seed,
        ways: fine.retrieval.ways,
        chance: fine.retrieval.chance,
        pretrained_1session: Score::of(fine, &runs.finetune.dir),
        scratch_1session: Score::of(scratch, &runs.scratch.dir),
        oracle: Oracle { image_top1: o.image_top1, brain_top1: o.brain_top1 },
        ridge_1session: ridge,
        oracle_all_subjects: oracle,
        plan,
        seconds: started.elapsed().as_secs_f64(),
    };
    let path = args.out.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", path.display()))?;

    let pre = &runs.pretrain.report;
    println!();
    println!(
        "pretrained on subjects 2-8: {} steps, {:.0} s ({:.0} ms/step)",
        pre.steps, pre.train_seconds, pre.ms_per_step
    );
    println!(
        "subject 1, one session ({} trials), {}-way top-1 retrieval (chance {:.4})",
        runs.finetune.report.train_trials, report.ways, report.chance
    );
    println!("  {:<40} {:>16} {:>16}", "decoder", "image", "brain");
    let row = |name: &str, e: &voxbridge_train::Evaluation| {
        let r = &e.retrieval;
        println!(
            "  {:<40} {:>16} {:>16}",
            name,
            crate::accuracy(&r.image_top1, r.loops),
            crate::accuracy(&r.brain_top1, r.loops)
        );
    };
    row("MindEye2, pretrained + fine-tuned", fine);
    row("MindEye2, from scratch (same budget)", scratch);
    println!(
        "  {:<40} {:>16.3} {:>16.3}",
        "ridge regression", report.ridge_1session.image_top1, report.ridge_1session.brain_top1
    );
    println!("  {:<40} {:>16.3} {:>16.3}", "ideal decoder (oracle)", o.image_top1, o.brain_top1);
    println!(
        "report: {} ({:.0} s); plot: {}",
        path.display(),
        report.seconds,
        args.out.join("finetune_vs_scratch.png").display()
    );
    Ok(())
}
