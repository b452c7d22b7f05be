//! The coordinator of distributed training: starts the workers, runs the rendezvous (ranks in
//! join order, the collective's addresses relayed), watches heartbeats and exits, and restarts
//! every worker in a new generation when one fails, within a budget. Its decisions are a pure
//! function ([`decide::decide`]) of the time, what it has observed and its limits; [`run`] is
//! the event loop that carries them out.

pub mod address;
pub mod decide;
mod run;

pub use run::{CoordinatorError, Launch, Outcome, run};
/// Logging of every voxbridge binary (the `voxbridge-logging` crate).
pub use voxbridge_logging::init_logging;
/// The coordinator ⇄ worker messages (the `voxbridge-protocol` crate, which workers use
/// without this one).
pub use voxbridge_protocol as protocol;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The [`Launch`] of `voxbridge-worker` processes on this machine for one experiment.
pub fn local_launch(
    worker: &Path,
    experiment: &Path,
    out: &Path,
    options: decide::Options,
    step_timeout_s: u64,
) -> Launch {
    let args: Vec<OsString> = vec![
        "--experiment".into(),
        experiment.as_os_str().to_owned(),
        "--out".into(),
        out.as_os_str().to_owned(),
        "--step-timeout-s".into(),
        step_timeout_s.to_string().into(),
    ];
    Launch { program: Some(worker.to_path_buf()), args, env: Vec::new(), options }
}

/// Replaces SIGTERM's default (exit) with a handler that only records it: under SLURM the
/// signal is meant for the workers, and the coordinator must stay to hear them finish.
pub fn ignore_sigterm() -> std::io::Result<()> {
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, seen).map(|_| ())
}

/// A job whose workers are started elsewhere (one per GPU by `srun`) and join on their own.
/// Nothing here can start them again, so a failure ends the job (restarts are SLURM's:
/// resubmitting resumes from the newest checkpoint).
pub fn external_launch(options: decide::Options) -> Launch {
    Launch { program: None, args: Vec::new(), env: Vec::new(), options: decide::Options { max_restarts: 0, ..options } }
}

/// Where a coordinator publishes the address its workers reach it at, once it listens.
#[derive(Debug, Clone)]
pub struct Publish {
    /// The address file ([`address::publish`]).
    pub file: PathBuf,
    /// The host written there; default [`address::advertised`]'s.
    pub host: Option<String>,
}

/// Runs a local job on a fresh runtime: the coordinator on `listen` (port 0 picks one) and
/// `options.world_size` workers.
pub fn run_blocking(listen: &str, launch: Launch) -> Result<Outcome, CoordinatorError> {
    run_blocking_published(listen, launch, None)
}

/// [`run_blocking`], writing the address workers reach the coordinator at to `publish`'s file
/// once it listens (workers started elsewhere wait for that file).
pub fn run_blocking_published(
    listen: &str,
    launch: Launch,
    publish: Option<&Publish>,
) -> Result<Outcome, CoordinatorError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| CoordinatorError::Publish(format!("cannot listen on {listen}: {e}")))?;
        let bound = listener.local_addr()?;
        tracing::info!(addr = %bound, workers = launch.options.world_size, "coordinator listening");
        if let Some(p) = publish {
            let addr = address::advertised(bound, p.host.as_deref(), address::hostname().as_deref())
                .map_err(CoordinatorError::Publish)?;
            address::publish(&p.file, &addr)
                .map_err(|e| CoordinatorError::Publish(format!("cannot write {}: {e}", p.file.display())))?;
            tracing::info!(%addr, file = %p.file.display(), "address published");
        }
        run(listener, launch, std::future::pending()).await
    })
}
