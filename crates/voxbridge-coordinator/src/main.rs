//! `voxbridge-coordinator`: rendezvous, rank assignment and restarts for distributed training.
//!
//! Only the command line exists so far; the coordinator itself is the distributed-training
//! issue's work. Running it says so and exits non-zero, rather than pretending to coordinate.

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "voxbridge-coordinator",
    version,
    about = "Coordinates voxbridge workers: rendezvous, subject sharding across ranks, heartbeats, restarts."
)]
struct Args {
    /// Resolved experiment configuration (TOML).
    #[arg(long)]
    config: std::path::PathBuf,
    /// Address to listen on for workers.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Number of workers to wait for.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    eprintln!(
        "voxbridge-coordinator: distributed training is not implemented yet (config {}, listen {}, {} workers); \
         use `voxbridge` on one machine",
        args.config.display(),
        args.listen,
        args.workers
    );
    ExitCode::FAILURE
}
