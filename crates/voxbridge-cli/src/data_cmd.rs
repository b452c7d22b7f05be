//! `voxbridge data simulate`, `verify` and `import-nsd`: progress bars and printing around
//! the library's dataset functions.

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use voxbridge_experiment::datasets::{
    self, DatasetCheck, Progress, SimulateOutcome, SimulateProgress, SimulateRequest,
};

use crate::args::SimulateArgs;

fn bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

pub fn simulate(args: &SimulateArgs) -> anyhow::Result<()> {
    simulate_request(&SimulateRequest {
        out: args.out.clone(),
        preset: args.preset.name().to_string(),
        seed: args.seed,
        name: args.name.clone(),
        manifest: args.manifest.clone(),
        oracle: args.oracle,
        subjects: args.subjects.clone(),
        max_sessions: args.max_sessions,
        ncsnr: args.ncsnr.clone(),
        representational_noise: args.representational_noise,
    })
    .map(|_| ())
}

/// Simulates with a progress bar, then prints what was written.
pub fn simulate_request(request: &SimulateRequest) -> anyhow::Result<SimulateOutcome> {
    let mut progress: Option<ProgressBar> = None;
    let outcome = datasets::simulate(request, &mut |event| match event {
        SimulateProgress::Start { steps } => progress = Some(bar(steps, "simulate")),
        SimulateProgress::Step(step) => {
            let Some(progress) = &progress else { return };
            match step {
                Progress::Session { subject, session, sessions } => {
                    progress.set_message(format!("subject {subject} session {session}/{sessions}"));
                    progress.inc(1);
                }
                Progress::Targets { written, total } => {
                    progress.set_message(format!("targets {written}/{total}"));
                    if written == total {
                        progress.inc(1);
                    }
                }
            }
        }
    });
    if let Some(progress) = &progress {
        progress.finish_and_clear();
    }
    let outcome = outcome?;
    if let Some(path) = &outcome.registered {
        println!("  manifest also at {}", path.display());
    }
    let m = &outcome.simulated.manifest;
    println!("dataset {} at {}", m.name, outcome.url);
    println!(
        "  subjects {}, files {}, {:.1} MiB",
        m.subjects.len(),
        m.files.len(),
        outcome.bytes as f64 / (1 << 20) as f64
    );
    if let Some(o) = &outcome.simulated.oracle {
        println!(
            "  oracle (ideal decoder), {}-way top-1: image {:.3}, brain {:.3} (chance {:.4})",
            o.ways, o.image_top1, o.brain_top1, o.chance
        );
        for s in &o.subjects {
            println!(
                "    subject {}: image {}, brain {}",
                s.subject,
                crate::accuracy(&s.retrieval.image_top1, s.retrieval.loops),
                crate::accuracy(&s.retrieval.brain_top1, s.retrieval.loops)
            );
        }
    }
    Ok(outcome)
}

pub fn verify(manifest: &str) -> anyhow::Result<()> {
    let check = DatasetCheck::open(manifest)?;
    let total = check.files();
    let progress = bar(total as u64, "verify");
    let report = check.run(|done, _| progress.set_position(done as u64));
    progress.finish_and_clear();
    if report.is_ok() {
        println!(
            "ok: {} files, {:.1} MiB verified ({})",
            report.files_ok,
            report.bytes_ok as f64 / (1 << 20) as f64,
            check.origin()
        );
        return Ok(());
    }
    for p in &report.problems {
        eprintln!("FAILED {p}");
    }
    bail!("{} of {} files failed verification ({})", report.problems.len(), total, check.origin())
}

/// `voxbridge data import-nsd`.
pub fn import_nsd(args: &crate::args::ImportNsdArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let summary = voxbridge_nsd::import_subject(&voxbridge_nsd::ImportOptions {
        subject: args.subject,
        betas: args.betas.clone(),
        wds: args.wds.clone(),
        targets: args.targets.clone(),
        out: args.out.clone(),
        voxels: args.voxels,
        normalisation: args.normalisation.into(),
        name: args.name.clone(),
        targets_per_file: 1000,
        append: args.append,
        allow_missing_trials: args.allow_missing_trials,
    })?;
    if !summary.missing.is_empty() {
        println!(
            "dropped {} trials without a behaviour row (--allow-missing-trials; recorded in the manifest): {}",
            summary.missing.total(),
            summary.missing.describe()
        );
    }
    tracing::info!(
        subject = args.subject,
        trials = summary.trials,
        sessions = summary.sessions,
        images = summary.manifest.targets.images,
        seconds = started.elapsed().as_secs_f64(),
        "imported into {}",
        args.out
    );
    Ok(())
}
