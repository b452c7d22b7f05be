//! `voxbridge demo`: the main job on embedded defaults. Until training lands (issue 5) it
//! simulates the `small` NSD with the oracle, verifies it, and decodes subject 1 with the ridge
//! baseline from 1 session and from all sessions; it writes `report.json` under `--out`.

use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;
use voxbridge_data::{Dataset, MANIFEST_FILE, Sessions};
use voxbridge_sim::{OracleReport, SimSpec};

use crate::args::{DemoArgs, SimulateArgs};
use crate::baseline::{BaselineResult, ridge_baseline};

#[derive(Debug, Serialize)]
struct DemoReport {
    dataset: String,
    preset: String,
    seed: u64,
    chance: f64,
    oracle: OracleReport,
    ridge_1session: BaselineResult,
    ridge_all_sessions: BaselineResult,
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

    let dataset = Dataset::open(&manifest_path)?;
    let one = ridge_baseline(&dataset, 1, Sessions::First(1), args.seed)?;
    let all = ridge_baseline(&dataset, 1, Sessions::All, args.seed)?;
    let report = DemoReport {
        dataset: name,
        preset: args.preset.clone(),
        seed: args.seed,
        chance: one.retrieval.chance,
        oracle,
        ridge_1session: one,
        ridge_all_sessions: all,
        seconds: started.elapsed().as_secs_f64(),
    };
    let path = args.out.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", path.display()))?;

    let o = report.oracle.subjects.iter().find(|s| s.subject == 1).context("no oracle for subject 1")?;
    println!();
    println!("subject 1, {}-way top-1 retrieval (chance {:.4})", report.ridge_1session.retrieval.ways, report.chance);
    println!("  {:<36} {:>8} {:>8}", "decoder", "image", "brain");
    for (name, r) in [("ridge, 1 session", &report.ridge_1session), ("ridge, all sessions", &report.ridge_all_sessions)]
    {
        println!("  {:<36} {:>8.3} {:>8.3}", format!("{name} ({} trials)", r.train_trials), r.image_top1, r.brain_top1);
    }
    println!("  {:<36} {:>8.3} {:>8.3}", "ideal decoder (oracle)", o.image_top1, o.brain_top1);
    println!("report: {} ({:.0} s)", path.display(), report.seconds);
    Ok(())
}
