//! The `voxbridge` command: argument parsing and the commands, behind a testable
//! [`main_with_args`]. Binaries stay thin.

mod arg_values;
mod args;
mod baseline;
mod ckpt_cmd;
mod cluster_cmd;
mod config_cmd;
mod data_cmd;
mod demo;
mod model_cmd;
mod train_cmd;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

pub use args::Cli;

/// Parses `args`, sets up logging and runs the command. Errors are printed as one chain of
/// causes and give exit code 1; usage errors give clap's code 2.
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    voxbridge_coordinator::init_logging(&cli.log);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // `voxbridge ckpt ls … | head`: the reader left; that is not a failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    use args::{Command, ConfigCommand, DataCommand};
    match cli.command {
        Command::Data(DataCommand::Simulate(a)) => data_cmd::simulate(&a).map(|_| ()),
        Command::Data(DataCommand::Verify(a)) => data_cmd::verify(&a.manifest),
        Command::Data(DataCommand::ImportNsd(a)) => data_cmd::import_nsd(&a),
        Command::Config(ConfigCommand::Check { file }) => config_cmd::check(&file),
        Command::Demo(a) => demo::run(&a),
        Command::Ridge(a) => baseline::run(&a),
        Command::Params(a) => model_cmd::params(&a),
        Command::Predict(a) => model_cmd::predict(&a),
        Command::Retrieve(a) => model_cmd::retrieve(&a),
        Command::Train(a) => train_cmd::train(&a),
        Command::Sweep(a) => train_cmd::sweep(&a),
        Command::Eval(a) => train_cmd::eval(&a),
        Command::Bench(args::BenchCommand::Train(a)) => train_cmd::bench(&a),
        Command::Bench(args::BenchCommand::Ckpt(a)) => train_cmd::bench_ckpt(&a),
        Command::Bench(args::BenchCommand::Allreduce(a)) => train_cmd::bench_all_reduce(&a),
        Command::Submit(a) => cluster_cmd::submit(&a),
        Command::Status(a) => cluster_cmd::status(&a),
        Command::Ckpt(args::CkptCommand::Ls { url }) => ckpt_cmd::ls(&url),
        Command::Ckpt(args::CkptCommand::Inspect { url }) => ckpt_cmd::inspect(&url),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// "0.812 ± 0.013", or just "0.812" when the protocol ran a single loop (no spread to report).
pub(crate) fn accuracy(a: &voxbridge_experiment::run_eval::Accuracy, loops: usize) -> String {
    if loops > 1 { format!("{:.3} ± {:.3}", a.mean, a.ci95) } else { format!("{:.3}", a.mean) }
}
