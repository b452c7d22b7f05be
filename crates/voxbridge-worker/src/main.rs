//! `voxbridge-worker`: one training rank under a coordinator (started by `voxbridge train
//! --workers N`, or by a cluster launcher).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "voxbridge-worker",
    version,
    about = "One voxbridge training rank: joins a coordinator, trains its subjects' shard, all-reduces shared gradients."
)]
struct Args {
    /// Coordinator address (host:port).
    #[arg(long)]
    coordinator: String,
    /// The generation (restart count) this worker was started for.
    #[arg(long, default_value_t = 0)]
    generation: u32,
    /// Experiment TOML file.
    #[arg(long)]
    experiment: std::path::PathBuf,
    /// Run directory (rank 0 writes it; rank r writes <out>/rank-r/).
    #[arg(long)]
    out: std::path::PathBuf,
    /// Seconds allowed for the collective's set-up and first step.
    #[arg(long, default_value_t = 300)]
    init_timeout_s: u64,
    /// Seconds allowed for every later collective.
    #[arg(long, default_value_t = 60)]
    step_timeout_s: u64,
    /// All-reduce over NCCL on this CUDA device (built with the `nccl` feature); training itself
    /// still runs on the CPU backend in this version.
    #[arg(long)]
    nccl_device: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    voxbridge_coordinator::init_logging("info");
    let worker = voxbridge_worker::WorkerArgs {
        coordinator: args.coordinator,
        generation: args.generation,
        experiment: args.experiment,
        out: args.out,
        init_timeout: Duration::from_secs(args.init_timeout_s),
        step_timeout: Duration::from_secs(args.step_timeout_s),
        nccl_device: args.nccl_device,
    };
    match voxbridge_worker::run(&worker) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voxbridge-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}
