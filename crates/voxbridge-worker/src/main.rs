//! `voxbridge-worker`: one training rank under a coordinator (started by `voxbridge train
//! --workers N`, or by a cluster launcher).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
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
    /// All-reduce over NCCL on this CUDA device (built with the `nccl` feature): a device
    /// number, or `local` for SLURM's `SLURM_LOCALID` (one worker per GPU). Training itself
    /// still runs on the CPU backend in this version.
    #[arg(long)]
    nccl_device: Option<String>,
    /// `auto`: continue from the newest committed checkpoint when there is one (a resubmitted
    /// job); `never` (default): a fresh run, unless the coordinator restarted this worker.
    #[arg(long, default_value = "never", value_parser = ["auto", "never"])]
    resume: String,
}

/// `--nccl-device N|local`.
fn nccl_device(arg: Option<&str>) -> Result<Option<usize>, String> {
    let Some(arg) = arg else { return Ok(None) };
    let (text, from) = if arg == "local" {
        (
            std::env::var("SLURM_LOCALID")
                .map_err(|_| "--nccl-device local: SLURM_LOCALID is not set (not under srun)")?,
            "SLURM_LOCALID",
        )
    } else {
        (arg.to_string(), "--nccl-device")
    };
    text.parse().map(Some).map_err(|_| format!("{from} = {text:?} is not a device number"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    voxbridge_coordinator::init_logging("info");
    let nccl_device = match nccl_device(args.nccl_device.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("voxbridge-worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SIGTERM (SLURM's preemption or time-limit warning): finish the step, checkpoint, exit 0.
    let stop = Arc::new(AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone()) {
        eprintln!("voxbridge-worker: cannot handle SIGTERM: {e}");
        return ExitCode::FAILURE;
    }
    let worker = voxbridge_worker::WorkerArgs {
        coordinator: args.coordinator,
        generation: args.generation,
        experiment: args.experiment,
        out: args.out,
        init_timeout: Duration::from_secs(args.init_timeout_s),
        step_timeout: Duration::from_secs(args.step_timeout_s),
        nccl_device,
        resume: args.resume == "auto",
        stop: Some(stop),
    };
    match voxbridge_worker::run(&worker) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voxbridge-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}
