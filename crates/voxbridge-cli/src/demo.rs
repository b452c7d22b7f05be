//! `voxbridge demo`: the main job on embedded defaults. It simulates the `small` NSD (with the
//! ideal decoder's score), verifies it, pretrains MindEye2 on subjects 2–8, fine-tunes subject 1
//! on its first session, trains subject 1 on the same session from scratch with the same budget,
//! and scores both with MindEye2's 300-way retrieval next to a ridge baseline and the oracle
//! (voxbridge-experiment's `demo_report`). Here: the steps in order, and the table printed.

use std::time::Instant;

use anyhow::Context;
use voxbridge_experiment::datasets::SimulateRequest;
use voxbridge_experiment::demo_report::{DemoData, DemoRequest, existing_dataset, run_and_score};
use voxbridge_experiment::run_eval::Evaluation;

use crate::args::DemoArgs;

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let preset = args.preset.name();
    let data = DemoData::under(&args.out)?;
    let (dataset, oracle) = match existing_dataset(&data, preset, args.seed)? {
        Some(existing) => {
            println!("reusing the dataset in {}", data.dir.display());
            crate::data_cmd::verify(&data.manifest)?;
            (existing.name(), existing.oracle()?)
        }
        None => {
            let request = SimulateRequest::preset(data.location.clone(), preset, args.seed);
            let simulated = crate::data_cmd::simulate_request(&request)?.simulated;
            crate::data_cmd::verify(&data.manifest)?;
            (simulated.manifest.name, simulated.oracle.context("the simulator returned no oracle")?)
        }
    };
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let outcome = run_and_score(DemoRequest {
        out: &args.out,
        preset,
        seed: args.seed,
        data: &data,
        dataset,
        oracle,
        progress,
        started,
        compute: voxbridge_experiment::ComputeChoice {
            device: args.compute.device,
            precision: args.compute.precision(),
        },
    })?;
    let report = &outcome.report;

    let pre = &outcome.runs.pretrain.report;
    println!();
    println!(
        "pretrained on subjects 2-8: {} steps, {:.0} s ({:.0} ms/step)",
        pre.steps, pre.train_seconds, pre.ms_per_step
    );
    println!(
        "subject 1, one session ({} trials), {}-way top-1 retrieval (chance {:.4})",
        outcome.runs.finetune.report.train_trials, report.ways, report.chance
    );
    println!("  {:<40} {:>16} {:>16}", "decoder", "image", "brain");
    let row = |name: &str, e: &Evaluation| {
        let r = &e.retrieval;
        println!(
            "  {:<40} {:>16} {:>16}",
            name,
            crate::accuracy(&r.image_top1, r.loops),
            crate::accuracy(&r.brain_top1, r.loops)
        );
    };
    row("MindEye2, pretrained + fine-tuned", &outcome.finetune);
    row("MindEye2, from scratch (same budget)", &outcome.scratch);
    println!(
        "  {:<40} {:>16.3} {:>16.3}",
        "ridge regression", report.ridge_1session.image_top1, report.ridge_1session.brain_top1
    );
    println!(
        "  {:<40} {:>16.3} {:>16.3}",
        "ideal decoder (oracle)", report.oracle.image_top1, report.oracle.brain_top1
    );
    println!(
        "report: {} ({:.0} s); plot: {}",
        outcome.report_path.display(),
        report.seconds,
        outcome.plot_path.display()
    );
    Ok(())
}
