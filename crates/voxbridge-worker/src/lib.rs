//! One training rank: joins the coordinator, waits for its rank and the collective's addresses,
//! builds the TCP ring, trains its shard of the experiment, and reports back — with a heartbeat
//! every half second while it lives.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use voxbridge_collective::TcpRing;
use voxbridge_coordinator::protocol::{FromWorker, ToWorker, encode};
use voxbridge_experiment::{ResumeFrom, RunOptions, run::run_experiment_on};

/// What a worker is told on its command line.
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    pub coordinator: String,
    pub generation: u32,
    pub experiment: PathBuf,
    pub out: PathBuf,
    /// Deadline of the collective's set-up and first step.
    pub init_timeout: Duration,
    /// Deadline of every later collective.
    pub step_timeout: Duration,
    /// Reduce over NCCL on this CUDA device (feature `nccl`); the TCP ring otherwise.
    pub nccl_device: Option<usize>,
    /// Continue from the newest committed checkpoint (if any) even in generation 0: a job
    /// resubmitted after preemption.
    pub resume: bool,
    /// Set on SIGTERM: finish the step, commit a checkpoint, report done, exit 0.
    pub stop: Option<Arc<AtomicBool>>,
}

/// Connects to the coordinator, retrying until `within` has passed: under SLURM the workers
/// may start before the coordinator listens.
fn connect(addr: &str, within: Duration) -> anyhow::Result<TcpStream> {
    let deadline = std::time::Instant::now() + within;
    let mut wait = Duration::from_millis(50);
    loop {
        match TcpStream::connect(addr) {
            Ok(stream) => return Ok(stream),
            Err(e) if std::time::Instant::now() + wait < deadline => {
                tracing::debug!(%addr, "coordinator not reachable yet: {e}");
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e).with_context(|| format!("cannot reach the coordinator at {addr}")),
        }
    }
}

pub fn run(args: &WorkerArgs) -> anyhow::Result<()> {
    let config = voxbridge_config::load_experiment(&args.experiment)?;
    let stream = connect(&args.coordinator, args.init_timeout)?;
    // The ring listens on the interface that reaches the coordinator.
    let host = stream.local_addr()?.ip();
    let listener = TcpListener::bind((host, 0)).context("cannot open the collective's port")?;
    let mut writer = stream.try_clone()?;
    let join = FromWorker::Join {
        generation: args.generation,
        pid: std::process::id(),
        ring_addr: listener.local_addr()?.to_string(),
    };
    writer.write_all(encode(&join).as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).context("the coordinator closed the connection before the start")?;
    let ToWorker::Start { rank, world, generation, ring_addrs } =
        serde_json::from_str(&line).with_context(|| format!("unexpected message from the coordinator: {line}"))?;
    tracing::info!(rank, world, generation, "starting");

    let alive = Arc::new(AtomicBool::new(true));
    let heartbeat = {
        let (alive, mut writer) = (alive.clone(), writer.try_clone()?);
        std::thread::spawn(move || {
            while alive.load(Ordering::SeqCst) {
                if writer.write_all(encode(&FromWorker::Heartbeat { steps: 0 }).as_bytes()).is_err() {
                    break;
                }
                std::thread::park_timeout(Duration::from_millis(500));
            }
        })
    };
    let result = (|| -> anyhow::Result<Option<u64>> {
        let addrs = ring_addrs.iter().map(|a| a.parse()).collect::<Result<Vec<_>, _>>()?;
        let ring = TcpRing::connect(rank, &addrs, listener, generation, args.init_timeout)?;
        let mut collective = collective(ring, args.nccl_device)?;
        // A restarted generation, or a resubmitted job, continues from the newest checkpoint.
        let resume = if generation > 0 || args.resume { ResumeFrom::Auto } else { ResumeFrom::Never };
        let options = RunOptions {
            step_timeout: args.step_timeout,
            resume,
            generation,
            stop: args.stop.clone(),
            ..RunOptions::new(args.out.clone())
        };
        match run_experiment_on(&config, &options, Some(&mut *collective)) {
            Ok(_) => Ok(None),
            // Stopped on request: the checkpoint is committed; this worker's part is done.
            Err(e) => match e.downcast_ref::<voxbridge_experiment::Preempted>() {
                Some(p) => {
                    tracing::warn!(rank, "{e}");
                    Ok(Some(p.steps_done))
                }
                None => Err(e),
            },
        }
    })();
    alive.store(false, Ordering::SeqCst);
    heartbeat.thread().unpark();
    let _ = heartbeat.join();
    let report = match &result {
        Ok(None) => FromWorker::Done,
        Ok(Some(steps_done)) => FromWorker::Stopped { steps_done: *steps_done },
        Err(e) => FromWorker::Failed { error: format!("rank {rank}: {e:#}") },
    };
    let _ = writer.write_all(encode(&report).as_bytes());
    result.map(|_| ())
}

/// The TCP ring, or NCCL on `device` with the ring for control.
fn collective(ring: TcpRing, device: Option<usize>) -> anyhow::Result<Box<dyn voxbridge_collective::Collective>> {
    match device {
        None => Ok(Box::new(ring)),
        #[cfg(feature = "nccl")]
        Some(device) => Ok(Box::new(voxbridge_collective::nccl::NcclCollective::new(ring, device)?)),
        #[cfg(not(feature = "nccl"))]
        Some(device) => {
            anyhow::bail!("--nccl-device {device}: this voxbridge-worker was built without the `nccl` feature")
        }
    }
}
