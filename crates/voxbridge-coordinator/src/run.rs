//! The coordinator's event loop: starts the workers (a [`Launch`]), runs the rendezvous, relays
//! the collective's addresses, watches heartbeats and exits, and carries out [`decide`]'s
//! actions — restart every worker in a new generation, give up, or finish.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::decide::{self, Action, Failure, Options, Phase, State, Worker};
use voxbridge_protocol::{FromWorker, ToWorker, decode, encode};

/// How workers are started: `program args… --coordinator ADDR --generation G` for each; with
/// no program, workers are started by someone else (SLURM's `srun`) and only join.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: Option<PathBuf>,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub options: Options,
}

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("gave up: {reason}\n{}", summary(.failures))]
    GaveUp { reason: String, failures: Vec<Failure> },
    #[error("coordinator: {0}")]
    Io(#[from] std::io::Error),
    #[error("coordinator: shut down; the workers were stopped")]
    Shutdown,
    /// Listening, or telling the workers where (the address file).
    #[error("coordinator: {0}")]
    Publish(String),
}

fn summary(failures: &[Failure]) -> String {
    failures
        .iter()
        .map(|f| format!("  generation {} rank {} at {} ms: {}", f.generation, f.rank, f.at_ms, f.why))
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug)]
enum Event {
    Message { conn: u64, message: FromWorker, writer: Option<tokio::net::tcp::OwnedWriteHalf> },
    Closed { conn: u64 },
    Exited { generation: u32, pid: u32, status: std::io::Result<ExitStatus> },
}

/// How a job that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every worker trained to the end.
    Finished,
    /// The workers stopped on request after committing the checkpoint of `steps_done` steps.
    Stopped { steps_done: u64 },
}

/// Runs one distributed job to its end: `Ok` when every worker finished (or stopped on request), an error with every
/// failure when the restart budget is spent (or the rendezvous failed). When `shutdown`
/// completes first, every worker is killed and the result is [`CoordinatorError::Shutdown`].
pub async fn run(
    listener: TcpListener,
    launch: Launch,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Outcome, CoordinatorError> {
    tokio::pin!(shutdown);
    let addr = listener.local_addr()?;
    let (events, mut inbox) = mpsc::unbounded_channel::<Event>();
    tokio::spawn(accept_loop(listener, events.clone()));
    let started = Instant::now();
    let now = move || started.elapsed().as_millis() as u64;
    let options = launch.options;
    let mut state = State::new(options.world_size, now());
    let mut kill = spawn_workers(&launch, addr.to_string(), 0, &events)?;
    // Per connection: (generation, rank, writer); ranks are given in join order.
    let mut conns: HashMap<u64, (u32, usize, Option<tokio::net::tcp::OwnedWriteHalf>)> = HashMap::new();
    let mut ring_addrs: Vec<Option<String>> = vec![None; options.world_size];
    let mut pids: HashMap<u32, usize> = HashMap::new();
    let mut stopped_after: Option<u64> = None;
    loop {
        let d = decide::decide(now(), &state, &options);
        match d.action {
            Action::Start => {
                tracing::info!(generation = state.generation, "{}", d.reason);
                let addrs: Vec<String> = ring_addrs.iter().map(|a| a.clone().unwrap_or_default()).collect();
                for (generation, rank, writer) in conns.values_mut() {
                    if *generation != state.generation {
                        continue;
                    }
                    let start = ToWorker::Start {
                        rank: *rank,
                        world: options.world_size,
                        generation: state.generation,
                        ring_addrs: addrs.clone(),
                    };
                    if let Some(w) = writer.as_mut() {
                        w.write_all(encode(&start).as_bytes()).await?;
                    }
                }
                state.phase = Phase::Training;
            }
            Action::RestartAll { generation } => {
                tracing::warn!(generation, "{}", d.reason);
                let _ = kill.send(true);
                state = decide::restarted(now(), &state, &options);
                conns.clear();
                ring_addrs = vec![None; options.world_size];
                pids.clear();
                kill = spawn_workers(&launch, addr.to_string(), generation, &events)?;
            }
            Action::GiveUp { failures } => {
                let _ = kill.send(true);
                return Err(CoordinatorError::GaveUp { reason: d.reason, failures });
            }
            Action::Finish => {
                tracing::info!("{}", d.reason);
                return Ok(match stopped_after {
                    Some(steps_done) => Outcome::Stopped { steps_done },
                    None => Outcome::Finished,
                });
            }
            Action::Wait { until_ms } => {
                let wait = Duration::from_millis(until_ms.saturating_sub(now()).max(1));
                tokio::select! {
                    received = tokio::time::timeout(wait, inbox.recv()) => {
                        if let Ok(Some(event)) = received {
                            handle(event, now(), &mut state, &mut conns, &mut ring_addrs, &mut pids, &mut stopped_after);
                        }
                    }
                    () = &mut shutdown => {
                        let _ = kill.send(true);
                        return Err(CoordinatorError::Shutdown);
                    }
                }
            }
        }
    }
}

fn handle(
    event: Event,
    now_ms: u64,
    state: &mut State,
    conns: &mut HashMap<u64, (u32, usize, Option<tokio::net::tcp::OwnedWriteHalf>)>,
    ring_addrs: &mut [Option<String>],
    pids: &mut HashMap<u32, usize>,
    stopped_after: &mut Option<u64>,
) {
    match event {
        Event::Message { conn, message: FromWorker::Join { generation, pid, ring_addr }, writer } => {
            if generation != state.generation {
                tracing::warn!(generation, current = state.generation, "ignoring a worker of an old generation");
                return;
            }
            let Some(rank) = state.workers.iter().position(|w| *w == Worker::Missing) else {
                tracing::warn!(pid, "ignoring a surplus worker");
                return;
            };
            state.workers[rank] = Worker::Alive { last_heartbeat_ms: now_ms };
            ring_addrs[rank] = Some(ring_addr);
            pids.insert(pid, rank);
            conns.insert(conn, (generation, rank, writer));
        }
        Event::Message { conn, message, .. } => {
            let Some((generation, rank, _)) = conns.get(&conn) else { return };
            if *generation != state.generation {
                return;
            }
            let slot = &mut state.workers[*rank];
            match message {
                FromWorker::Heartbeat { .. } => {
                    if matches!(slot, Worker::Alive { .. }) {
                        *slot = Worker::Alive { last_heartbeat_ms: now_ms };
                    }
                }
                FromWorker::Done => *slot = Worker::Done,
                FromWorker::Stopped { steps_done } => {
                    *slot = Worker::Done;
                    *stopped_after = Some(steps_done);
                }
                FromWorker::Failed { error } => *slot = Worker::Failed { why: error },
                FromWorker::Join { .. } => {}
            }
        }
        Event::Closed { conn } => {
            if let Some((generation, rank, _)) = conns.remove(&conn)
                && generation == state.generation
                && matches!(state.workers[rank], Worker::Alive { .. })
            {
                state.workers[rank] = Worker::Failed { why: "connection to the coordinator lost".into() };
            }
        }
        Event::Exited { generation, pid, status } => {
            if generation != state.generation {
                return;
            }
            let failed = !matches!(&status, Ok(s) if s.success());
            let why = match &status {
                Ok(s) => describe_exit(s),
                Err(e) => format!("could not be waited for: {e}"),
            };
            let rank = pids.get(&pid).copied().or_else(|| state.workers.iter().position(|w| *w == Worker::Missing));
            if let Some(rank) = rank
                && failed
                && !matches!(state.workers[rank], Worker::Failed { .. })
            {
                state.workers[rank] = Worker::Failed { why };
            }
        }
    }
}

fn describe_exit(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(9)) => "killed by SIGKILL".into(),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "exited".into(),
    }
}

async fn accept_loop(listener: TcpListener, events: mpsc::UnboundedSender<Event>) {
    let mut next_conn = 0u64;
    while let Ok((socket, _)) = listener.accept().await {
        next_conn += 1;
        tokio::spawn(read_worker(socket, next_conn, events.clone()));
    }
}

async fn read_worker(socket: TcpStream, conn: u64, events: mpsc::UnboundedSender<Event>) {
    let (read, write) = socket.into_split();
    let mut writer = Some(write);
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match decode::<FromWorker>(&line) {
            Ok(message) => {
                let writer = if matches!(message, FromWorker::Join { .. }) { writer.take() } else { None };
                let _ = events.send(Event::Message { conn, message, writer });
            }
            Err(e) => tracing::warn!(conn, "ignoring a malformed message ({e}): {line}"),
        }
    }
    let _ = events.send(Event::Closed { conn });
}

/// Starts `world_size` workers for `generation`; sending `true` on the returned channel kills
/// them all. Each exit is reported as an event.
fn spawn_workers(
    launch: &Launch,
    coordinator: String,
    generation: u32,
    events: &mpsc::UnboundedSender<Event>,
) -> std::io::Result<watch::Sender<bool>> {
    let (kill, _) = watch::channel(false);
    let Some(program) = &launch.program else { return Ok(kill) };
    for _ in 0..launch.options.world_size {
        let mut child = tokio::process::Command::new(program)
            .args(&launch.args)
            .arg("--coordinator")
            .arg(&coordinator)
            .arg("--generation")
            .arg(generation.to_string())
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().unwrap_or(0);
        let mut killed = kill.subscribe();
        let events = events.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                _ = async {
                    // Also ends when the coordinator is gone (the sender dropped).
                    while killed.changed().await.is_ok() {
                        if *killed.borrow() {
                            break;
                        }
                    }
                } => {
                    let _ = child.kill().await;
                    child.wait().await
                }
            };
            let _ = events.send(Event::Exited { generation, pid, status });
        });
    }
    Ok(kill)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Workers that never join (here: `sh -c "exec sleep 600"`), then a shutdown: the coordinator stops them and
    /// returns at once instead of waiting for the join timeout.
    #[tokio::test]
    async fn shutdown_stops_the_workers_and_returns() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let options =
            Options { world_size: 2, join_timeout_ms: 600_000, heartbeat_timeout_ms: 10_000, max_restarts: 0 };
        let launch = Launch {
            program: Some("sh".into()),
            args: vec!["-c".into(), "exec sleep 600".into()],
            env: Vec::new(),
            options,
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let job = tokio::spawn(run(listener, launch, async {
            let _ = rx.await;
        }));
        tx.send(()).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(20), job).await.expect("returned").unwrap();
        assert!(matches!(result, Err(CoordinatorError::Shutdown)), "{result:?}");
    }

    /// A worker that exits non-zero before joining fails the rendezvous: with no restarts left
    /// the coordinator gives up naming it.
    #[tokio::test]
    async fn a_worker_dying_before_it_joins_is_a_named_failure() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let options =
            Options { world_size: 1, join_timeout_ms: 600_000, heartbeat_timeout_ms: 10_000, max_restarts: 0 };
        let launch = Launch { program: Some("false".into()), args: Vec::new(), env: Vec::new(), options };
        let result = tokio::time::timeout(Duration::from_secs(20), run(listener, launch, std::future::pending())).await;
        let Ok(Err(CoordinatorError::GaveUp { failures, .. })) = result else { panic!("{result:?}") };
        assert_eq!(failures.len(), 1);
        assert!(failures[0].why.contains("exited with code 1"), "{:?}", failures[0]);
    }
}
