//! One training rank: joins the coordinator, waits for its rank and the collective's addresses,
//! builds the TCP ring, trains its shard of the experiment, and reports back — with a heartbeat
//! every half second while it lives.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use voxbridge_collective::TcpRing;
use voxbridge_experiment::{ResumeFrom, RunOptions, run::run_experiment_on};
use voxbridge_protocol::{FromWorker, ToWorker, decode, encode};

/// What this build supports, as one JSON object (`voxbridge-worker --capabilities`):
/// `voxbridge submit` asks before it starts workers that need a feature (NCCL on a GPU site).
pub fn capabilities() -> String {
    serde_json::json!({ "nccl": cfg!(feature = "nccl"), "version": env!("CARGO_PKG_VERSION") }).to_string()
}

/// Where the coordinator is.
#[derive(Debug, Clone)]
pub enum CoordinatorAt {
    /// `host:port`.
    Addr(String),
    /// The file the coordinator publishes its `host:port` in once it listens
    /// (`voxbridge-coordinator --address-file`).
    File(PathBuf),
}

/// What a worker is told on its command line.
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    pub coordinator: CoordinatorAt,
    pub generation: u32,
    pub experiment: PathBuf,
    pub out: PathBuf,
    /// Deadline of the collective's set-up and first step.
    pub init_timeout: Duration,
    /// Deadline of every later collective.
    pub step_timeout: Duration,
    /// Reduce over NCCL on this CUDA device (feature `nccl`); the TCP ring otherwise.
    pub nccl_device: Option<usize>,
    /// `--device` and `--precision`: override the experiment's `[compute]`.
    pub device: Option<voxbridge_config::DeviceSpec>,
    pub precision: Option<voxbridge_config::Precision>,
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

/// Waits until `deadline` for the coordinator to publish its address in `file` (polled: the
/// file sits on the filesystem the job's nodes share), then reads it.
fn wait_for_address(file: &Path, deadline: Instant) -> anyhow::Result<String> {
    let mut wait = Duration::from_millis(50);
    loop {
        match std::fs::read_to_string(file) {
            Ok(text) => return voxbridge_protocol::address_file::parse(&text, file).map_err(anyhow::Error::msg),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let now = Instant::now();
                if now >= deadline {
                    anyhow::bail!(
                        "{}: the coordinator did not publish its address within the init timeout; did it start? \
                         (see the job's log)",
                        file.display()
                    );
                }
                std::thread::sleep(wait.min(deadline - now));
                wait = (wait * 2).min(Duration::from_millis(500));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read the coordinator's address file {}", file.display()));
            }
        }
    }
}

pub fn run(args: &WorkerArgs) -> anyhow::Result<()> {
    let config = voxbridge_config::load_experiment(&args.experiment)?;
    let deadline = Instant::now() + args.init_timeout;
    let stream = match &args.coordinator {
        CoordinatorAt::Addr(addr) => connect(addr, args.init_timeout)?,
        CoordinatorAt::File(file) => {
            let addr = wait_for_address(file, deadline)?;
            tracing::debug!(%addr, file = %file.display(), "coordinator address published");
            connect(&addr, deadline.saturating_duration_since(Instant::now()))
                .with_context(|| format!("address from {}", file.display()))?
        }
    };
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
        decode(&line).with_context(|| format!("unexpected message from the coordinator: {line}"))?;
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
            compute: voxbridge_experiment::ComputeChoice { device: args.device, precision: args.precision },
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
    let report = report_of(&result);
    let _ = writer.write_all(encode(&report).as_bytes());
    result.map(|_| ())
}

/// What a worker tells the coordinator about its run. The coordinator knows the rank and names
/// it in every message, so the error does not repeat it.
fn report_of(result: &anyhow::Result<Option<u64>>) -> FromWorker {
    match result {
        Ok(None) => FromWorker::Done,
        Ok(Some(steps_done)) => FromWorker::Stopped { steps_done: *steps_done },
        Err(e) => FromWorker::Failed { error: format!("{e:#}") },
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The coordinator prefixes `rank R: `; the worker's report must not (it read "rank 1: rank
    /// 1: …" in the give-up error).
    #[test]
    fn a_failure_report_does_not_repeat_the_rank() {
        let result: anyhow::Result<Option<u64>> =
            Err(anyhow::anyhow!("no data from rank 0 in 5 s").context("run `x` stopped"));
        match report_of(&result) {
            FromWorker::Failed { error } => assert_eq!(error, "run `x` stopped: no data from rank 0 in 5 s"),
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod rendezvous_tests {
    use super::*;

    #[test]
    fn the_address_file_is_awaited_and_named() {
        let dir = std::env::temp_dir().join(format!("voxbridge-worker-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("coordinator-5.addr");
        let err = wait_for_address(&file, Instant::now()).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: the coordinator did not publish", file.display())), "{err}");
        std::fs::write(&file, "node07:4242\n").unwrap();
        assert_eq!(wait_for_address(&file, Instant::now()).unwrap(), "node07:4242");
        std::fs::write(&file, "node07\n").unwrap();
        let err = wait_for_address(&file, Instant::now()).unwrap_err().to_string();
        assert!(err.contains(&file.display().to_string()) && err.contains("no port"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn capabilities_say_whether_nccl_is_built_in() {
        let caps: serde_json::Value = serde_json::from_str(&capabilities()).unwrap();
        assert_eq!(caps["nccl"], cfg!(feature = "nccl"));
    }
}
