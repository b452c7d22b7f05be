//! `voxbridge-worker`: one training rank under a coordinator.
//!
//! Only the command line exists so far; the worker is the distributed-training issue's work.
//! Running it says so and exits non-zero.

use std::process::ExitCode;

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
    /// GPU index on this node (CPU when absent).
    #[arg(long)]
    device: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    eprintln!(
        "voxbridge-worker: distributed training is not implemented yet (coordinator {}, device {:?})",
        args.coordinator, args.device
    );
    ExitCode::FAILURE
}
