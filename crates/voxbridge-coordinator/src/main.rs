//! `voxbridge-coordinator`: rendezvous, rank assignment, heartbeats and restarts for
//! distributed training; starts `voxbridge-worker` processes on this machine.

use std::process::ExitCode;

use clap::Parser;
use voxbridge_coordinator::decide::Options;

#[derive(Debug, Parser)]
#[command(
    name = "voxbridge-coordinator",
    version,
    about = "Coordinates voxbridge workers: rendezvous, subject sharding across ranks, heartbeats, restarts."
)]
struct Args {
    /// Experiment TOML file.
    #[arg(long)]
    experiment: std::path::PathBuf,
    /// Run directory.
    #[arg(long)]
    out: std::path::PathBuf,
    /// Address to listen on for workers.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Number of workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Restarts of all workers allowed after a failure.
    #[arg(long, default_value_t = 0)]
    max_restarts: u32,
    /// Seconds without a heartbeat before a worker counts as dead.
    #[arg(long, default_value_t = 30)]
    heartbeat_timeout_s: u64,
    /// Seconds allowed for every collective after the first step.
    #[arg(long, default_value_t = 60)]
    step_timeout_s: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    voxbridge_coordinator::init_logging("info");
    let worker = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("voxbridge-worker")))
        .unwrap_or_else(|| "voxbridge-worker".into());
    let options = Options {
        world_size: args.workers,
        join_timeout_ms: 120_000,
        heartbeat_timeout_ms: args.heartbeat_timeout_s * 1000,
        max_restarts: args.max_restarts,
    };
    let launch =
        voxbridge_coordinator::local_launch(&worker, &args.experiment, &args.out, options, args.step_timeout_s);
    match voxbridge_coordinator::run_blocking(&args.listen, launch) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voxbridge-coordinator: {e}");
            ExitCode::FAILURE
        }
    }
}
