//! `voxbridge data simulate` and `voxbridge data verify`.

use std::time::Instant;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use voxbridge_data::{Manifest, Storage, open_manifest, verify as verify_dataset};
use voxbridge_sim::{Progress, SimOptions, SimSpec, Simulated, simulate as run_simulation};

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

pub fn simulate(args: &SimulateArgs) -> anyhow::Result<Simulated> {
    let spec = SimSpec::preset(&args.preset)
        .with_context(|| format!("unknown preset `{}` (choose one of {:?})", args.preset, SimSpec::PRESETS))?
        .restrict(args.subjects.as_deref(), args.max_sessions);
    let mut spec = spec;
    if let Some(range) = &args.ncsnr {
        let parsed = range.split(',').map(|x| x.trim().parse::<f64>()).collect::<Result<Vec<_>, _>>();
        match parsed.as_deref() {
            Ok(&[lo, hi]) => spec.ncsnr_range = [lo, hi],
            _ => bail!("--ncsnr takes two numbers LO,HI, got `{range}`"),
        }
    }
    if let Some(rho) = args.representational_noise {
        spec.representational_noise = rho;
    }
    if spec.subjects.is_empty() {
        bail!("--subjects {:?} selects none of the subjects 1..=8", args.subjects.as_deref().unwrap_or_default());
    }
    let out = Storage::open(&args.out)?;
    if out.exists(voxbridge_data::MANIFEST_FILE)? {
        bail!("{} already holds a dataset (manifest.toml exists); choose another --out or remove it", out.url());
    }
    let sessions: u64 = spec.subjects.iter().map(|s| s.sessions as u64).sum();
    let progress = bar(sessions + 1, "simulate");
    let started = Instant::now();
    let options = SimOptions { name: args.name.clone(), oracle: args.oracle };
    let result = run_simulation(&spec, args.seed, out.clone(), &options, &mut |p| match p {
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
    })?;
    progress.finish_and_clear();
    let m = &result.manifest;
    let bytes: u64 = m.files.iter().map(|f| f.bytes).sum();
    tracing::info!(
        name = %m.name, files = m.files.len(), mib = bytes as f64 / (1 << 20) as f64,
        seconds = started.elapsed().as_secs_f64(), "wrote {}/{}", out.url(), voxbridge_data::MANIFEST_FILE
    );
    if let Some(path) = &args.manifest {
        write_registered_manifest(path, m, &out)?;
    }
    println!("dataset {} at {}", m.name, out.url());
    println!("  subjects {}, files {}, {:.1} MiB", m.subjects.len(), m.files.len(), bytes as f64 / (1 << 20) as f64);
    if let Some(o) = &result.oracle {
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
    Ok(result)
}

/// A copy of the manifest kept elsewhere (e.g. `data-manifests/`) points back at the data.
fn write_registered_manifest(path: &std::path::Path, manifest: &Manifest, out: &Storage) -> anyhow::Result<()> {
    let mut copy = manifest.clone();
    copy.root = Some(out.url());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, copy.to_toml()).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    println!("  manifest also at {}", path.display());
    Ok(())
}

pub fn verify(manifest: &str) -> anyhow::Result<()> {
    let opened = open_manifest(manifest)?;
    let total = opened.manifest.files.len() as u64;
    let progress = bar(total, "verify");
    let report = verify_dataset(&opened, |done, _| progress.set_position(done as u64));
    progress.finish_and_clear();
    if report.is_ok() {
        println!(
            "ok: {} files, {:.1} MiB verified ({})",
            report.files_ok,
            report.bytes_ok as f64 / (1 << 20) as f64,
            opened.origin
        );
        return Ok(());
    }
    for p in &report.problems {
        eprintln!("FAILED {p}");
    }
    bail!("{} of {} files failed verification ({})", report.problems.len(), total, opened.origin)
}

/// `voxbridge data import-nsd`.
pub fn import_nsd(args: &crate::args::ImportNsdArgs) -> anyhow::Result<()> {
    use voxbridge_nsd::{ImportOptions, Normalisation};
    let normalisation = match args.normalisation.as_str() {
        "per-session" => Normalisation::PerSession,
        "train-set" => Normalisation::TrainSet,
        _ => Normalisation::AsReleased,
    };
    let started = std::time::Instant::now();
    let summary = voxbridge_nsd::import_subject(&ImportOptions {
        subject: args.subject,
        betas: args.betas.clone(),
        wds: args.wds.clone(),
        targets: args.targets.clone(),
        out: args.out.clone(),
        voxels: args.voxels,
        normalisation,
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
