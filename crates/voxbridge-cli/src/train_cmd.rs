//! `voxbridge train`, `sweep`, `eval` and `bench train`: thin wrappers over voxbridge-experiment.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context;
use voxbridge_config::{RunDir, load_experiment, load_sweep, subject_key};
use voxbridge_experiment::bench::bench_checkpoint;
use voxbridge_experiment::bench_setups::{BenchRequest, MAX_PARTS_IN_FLIGHT, all_reduce, anchor_setup, bench_configs};
use voxbridge_experiment::report::read_report;
use voxbridge_experiment::run_eval::{EvalRequest, Evaluation, evaluate_run};
use voxbridge_experiment::sweep::SWEEP_PLOT;
use voxbridge_experiment::{ComputeChoice, ResumeFrom, RunOptions, run_experiment, run_sweep};

use crate::arg_values::ComputeArgs;
use crate::args::{BenchAllreduceArgs, BenchCkptArgs, BenchTrainArgs, EvalArgs, SweepArgs, TrainArgs};

fn progress() -> bool {
    std::io::stderr().is_terminal()
}

fn compute_choice(args: &ComputeArgs) -> ComputeChoice {
    ComputeChoice { device: args.device, precision: args.precision() }
}

pub fn train(args: &TrainArgs) -> anyhow::Result<()> {
    let config = load_experiment(&args.experiment)?;
    let dir = args.out.clone().unwrap_or_else(|| RunDir::default_for(&config.name).path().to_path_buf());
    if let Some(workers) = args.workers {
        return train_workers(args, workers, &config.name, &dir);
    }
    let resume = args.resume.clone().unwrap_or(ResumeFrom::Never);
    // SIGTERM (a scheduler's preemption or time limit): finish the step, commit a checkpoint,
    // stop with a message saying how to continue.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone()).context("cannot handle SIGTERM")?;
    let options = RunOptions {
        progress: progress(),
        resume,
        allow_config_change: args.allow_config_change.clone(),
        checkpoint_url: args.checkpoint_url.clone(),
        stop: Some(stop),
        compute: compute_choice(&args.compute),
        ..RunOptions::new(dir)
    };
    let summary = run_experiment(&config, &options)?;
    let r = &summary.report;
    println!("run {} in {}{}", r.name, summary.dir.display(), if summary.reused { " (already finished)" } else { "" });
    print_report(r);
    Ok(())
}

/// Steps, timing, final loss and each subject's evaluation of a finished run.
fn print_report(r: &voxbridge_experiment::RunReport) {
    println!(
        "  {} steps in {:.1} s ({:.1} ms/step, {:.0} samples/s), final loss {:.4}",
        r.steps, r.train_seconds, r.ms_per_step, r.samples_per_second, r.final_loss
    );
    for (subject, e) in &r.evaluation {
        print_evaluation(&subject_key(*subject), e);
    }
}

/// `--workers N`: a local coordinator and N `voxbridge-worker` processes (next to this binary).
fn train_workers(args: &TrainArgs, workers: usize, name: &str, dir: &Path) -> anyhow::Result<()> {
    if args.resume.is_some() || args.checkpoint_url.is_some() {
        anyhow::bail!("--resume and --checkpoint-url are single-process only so far; drop them or --workers");
    }
    let worker = std::env::current_exe()?
        .parent()
        .map(|d| d.join("voxbridge-worker"))
        .context("cannot locate voxbridge-worker next to this binary")?;
    let options = voxbridge_coordinator::decide::Options {
        world_size: workers,
        join_timeout_ms: 120_000,
        heartbeat_timeout_ms: 30_000,
        max_restarts: args.max_restarts,
    };
    let experiment = std::fs::canonicalize(&args.experiment)
        .with_context(|| format!("cannot read {}", args.experiment.display()))?;
    let mut launch = voxbridge_coordinator::local_launch(&worker, &experiment, dir, options, args.step_timeout_s);
    if let Some(device) = args.compute.device {
        launch.args.extend(["--device".into(), device.to_string().into()]);
    }
    if let Some(precision) = args.compute.precision() {
        launch.args.extend(["--precision".into(), precision.to_string().into()]);
    }
    if let voxbridge_coordinator::Outcome::Stopped { steps_done } =
        voxbridge_coordinator::run_blocking("127.0.0.1:0", launch)?
    {
        anyhow::bail!(
            "the workers stopped on request after step {steps_done}; run again with --resume auto to continue"
        );
    }
    let r = read_report(dir)?.with_context(|| format!("the workers finished but {} has no report", dir.display()))?;
    println!("run {name} in {} ({workers} workers)", dir.display());
    print_report(&r);
    Ok(())
}

pub fn sweep(args: &SweepArgs) -> anyhow::Result<()> {
    let runs = load_sweep(&args.sweep)?;
    let prefix = runs.first().map(|r| r.name.clone()).unwrap_or_default();
    let default_out = RunDir::default_for(&args.sweep.file_stem().map_or("sweep".into(), |s| s.to_string_lossy()))
        .path()
        .to_path_buf();
    let out = args.out.clone().unwrap_or(default_out);
    let report = run_sweep(&runs, &out, progress(), compute_choice(&args.compute))?;
    println!("sweep of {} runs in {} (first: {prefix})", report.runs.len(), out.display());
    println!("  {:<44} {:>8} {:>8} {:>8}", "run", "sessions", "image", "brain");
    for r in &report.runs {
        println!("  {:<44} {:>8} {:>8.3} {:>8.3}", r.name, r.sessions, r.image_top1, r.brain_top1);
    }
    for (sessions, (image, brain)) in &report.by_sessions {
        println!("  mean over runs with {sessions} session(s): image {image:.3}, brain {brain:.3}");
    }
    println!("  plot: {}", out.join(SWEEP_PLOT).display());
    Ok(())
}

pub fn eval(args: &EvalArgs) -> anyhow::Result<()> {
    let request = EvalRequest {
        run: args.run.clone(),
        data: args.data.clone(),
        subjects: args.subjects.clone(),
        ways: args.ways,
        loops: args.loops,
        prior_steps: args.prior_steps,
        seed: args.seed,
        json: args.json.clone(),
        device: args.compute.device.unwrap_or_default(),
    };
    evaluate_run(&request, &mut |subject, e| print_evaluation(&subject_key(subject), e))?;
    Ok(())
}

fn print_evaluation(subject: &str, e: &Evaluation) {
    let r = &e.retrieval;
    println!(
        "  {subject}: {}-way top-1 ({} loops, {} test images): image {}, brain {} (chance {:.4})",
        r.ways,
        r.loops,
        e.test_images,
        crate::accuracy(&r.image_top1, r.loops),
        crate::accuracy(&r.brain_top1, r.loops),
        r.chance
    );
    println!(
        "    Mind Reader batch-{} (single trials): image {:.3}, brain {:.3}",
        e.mind_reader.batch, e.mind_reader.image_top1, e.mind_reader.brain_top1
    );
    if let Some(p) = &e.prior {
        println!(
            "    prior samples ({} DDIM steps): cosine to target {:.3}, image {}, brain {}",
            p.ddim_steps,
            p.cosine,
            crate::accuracy(&p.retrieval.image_top1, p.retrieval.loops),
            crate::accuracy(&p.retrieval.brain_top1, p.retrieval.loops)
        );
    }
}

pub fn bench(args: &BenchTrainArgs) -> anyhow::Result<()> {
    let device = args.compute.device.unwrap_or_default();
    let precision = args.compute.precision().unwrap_or_default();
    let request = BenchRequest { configs: &args.config, warmup: args.warmup, steps: args.steps, workers: args.workers };
    let results = bench_configs(device, precision, &request)?;
    println!(
        "{:<28} {:>7} {:>5} {:>12} {:>6} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>10}",
        "config",
        "device",
        "prec",
        "parameters",
        "batch",
        "median ms",
        "min ms",
        "max ms",
        "samples/s",
        "TFLOP",
        "TFLOP/s",
        "peak GiB"
    );
    for r in &results {
        let peak = r.memory.map_or("n/a".to_string(), |m| format!("{:.2}", m.peak as f64 / (1u64 << 30) as f64));
        println!(
            "{:<28} {:>7} {:>5} {:>12} {:>6} {:>10.1} {:>10.1} {:>10.1} {:>10.0} {:>9.4} {:>9.3} {:>10}",
            r.name,
            r.device,
            r.precision,
            r.parameters,
            r.batch,
            r.median_ms,
            r.min_ms,
            r.max_ms,
            r.samples_per_second,
            r.model_flop_per_step / 1e12,
            r.achieved_tflops,
            peak
        );
    }
    if let Some(m) = results.first().and_then(|r| r.memory) {
        println!("(backend {}; peak memory: {})", results[0].backend, m.source);
    }
    println!("(TFLOP: model FLOPs of one step, forward + backward, counted from the architecture)");
    println!("({} timed steps after {} warm-up; threads: burn's default for this machine)", args.steps, args.warmup);
    if args.workers.is_some() {
        println!("(×N workers: ranks are threads of this process sharing its cores; samples/s is per worker)");
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

pub fn bench_ckpt(args: &BenchCkptArgs) -> anyhow::Result<()> {
    let part = args.part_mib.max(1) << 20;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!(
        "{:<32} {:>10} {:>9} {:>9} {:>12} {:>12} {:>12}",
        "save", "MiB", "seconds", "MiB/s", "RSS before", "peak RSS", "extra MiB"
    );
    let mut setups = vec![None];
    for anchor in &args.config {
        setups.push(Some(anchor_setup(anchor.name())?));
    }
    for setup in &setups {
        let r = bench_checkpoint(setup.as_ref(), args.blob_mib, &args.url, part)?;
        println!(
            "{:<32} {:>10.1} {:>9.2} {:>9.0} {:>12.1} {:>12.1} {:>12.1}",
            r.name,
            mib(r.bytes),
            r.seconds,
            mib(r.bytes) / r.seconds.max(1e-9),
            mib(r.rss_before),
            mib(r.rss_peak),
            mib(r.extra())
        );
    }
    println!(
        "(part size {} MiB, at most {} parts in flight: the upload itself holds ≤ {} MiB beyond the serialised files)",
        args.part_mib,
        MAX_PARTS_IN_FLIGHT,
        (MAX_PARTS_IN_FLIGHT + 1) * args.part_mib
    );
    Ok(())
}

/// `bench allreduce`: the CPU ring's all-reduce bandwidth.
pub fn bench_all_reduce(a: &BenchAllreduceArgs) -> anyhow::Result<()> {
    let (seconds, gbps) = all_reduce(a.workers, a.bytes, a.iters)?;
    println!(
        "all_reduce_sum of {} MiB on {} ranks (TCP ring, loopback): median {:.1} ms, algorithm bandwidth {:.2} GB/s",
        a.bytes as f64 / (1u64 << 20) as f64,
        a.workers,
        seconds * 1e3,
        gbps
    );
    Ok(())
}
