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
    /// Start no workers: they are started by the cluster (`srun`) and join this coordinator.
    #[arg(long)]
    external_workers: bool,
    /// Once listening, write the address workers reach this coordinator at (host:port) to this
    /// file, whole (a temporary file renamed over it); `voxbridge-worker --coordinator-file`
    /// waits for it. With `--listen 0.0.0.0:0` the port is a free one.
    #[arg(long)]
    address_file: Option<std::path::PathBuf>,
    /// The host written to --address-file (default: the listen address's IP, or this machine's
    /// host name when listening on every interface).
    #[arg(long, requires = "address_file")]
    advertise_host: Option<String>,
}

/// The coordinator's exit code when the workers stopped on request (EX_TEMPFAIL: try again).
const STOPPED_EXIT_CODE: u8 = 75;

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
    let launch = if args.external_workers {
        // SIGTERM (preemption, the time limit) goes to the workers, which checkpoint and report
        // done; the coordinator keeps running until they have.
        if let Err(e) = voxbridge_coordinator::ignore_sigterm() {
            eprintln!("voxbridge-coordinator: {e}");
            return ExitCode::FAILURE;
        }
        voxbridge_coordinator::external_launch(options)
    } else {
        voxbridge_coordinator::local_launch(&worker, &args.experiment, &args.out, options, args.step_timeout_s)
    };
    let publish =
        args.address_file.map(|file| voxbridge_coordinator::Publish { file, host: args.advertise_host.clone() });
    match voxbridge_coordinator::run_blocking_published(&args.listen, launch, publish.as_ref()) {
        Ok(voxbridge_coordinator::Outcome::Finished) => ExitCode::SUCCESS,
        Ok(voxbridge_coordinator::Outcome::Stopped { steps_done }) => {
            // Not an error, but not the end of the run: SLURM records the job as failed with this
            // code, so jobs waiting on it (`afterok`) do not start on an unfinished model.
            eprintln!(
                "voxbridge-coordinator: stopped on request after step {steps_done} with a committed checkpoint; \
                 resubmit the job to resume (exit code {STOPPED_EXIT_CODE})"
            );
            ExitCode::from(STOPPED_EXIT_CODE)
        }
        Err(e) => {
            eprintln!("voxbridge-coordinator: {e}");
            ExitCode::FAILURE
        }
    }
}
