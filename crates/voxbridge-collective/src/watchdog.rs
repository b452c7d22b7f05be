//! Deadlines for device collectives (NCCL): the decisions, kept free of CUDA so they are tested
//! on any machine.
//!
//! A device collective is enqueued on a CUDA stream and returns at once; completion is observed
//! by polling an event recorded after it and NCCL's asynchronous error. [`decide`] turns one
//! observation (time waited, event state, async error) into [`Verdict::Continue`],
//! [`Verdict::Done`] or [`Verdict::Abort`]; the caller aborts the communicator on `Abort` and
//! fails the rank with an error naming the operation, the step and the rank, so the
//! coordinator restarts the generation instead of waiting on a hung peer forever (reliability
//! notes, "NCCL timeouts and the watchdog": PyTorch's ProcessGroupNCCL and XLA do the same).
//!
//! Some NCCL calls block the calling thread before anything reaches a stream: communicator
//! set-up waits for every rank, and the first collective connects to its peers (NCCL connects
//! lazily). No event covers those, so a [`StallGuard`] thread watches them: if one has not
//! returned by its deadline, the guard runs its action (in production: print what hung and
//! abort the process — a thread stuck inside NCCL cannot be unwound, and the coordinator
//! restarts a worker that died), like PyTorch's `TORCH_NCCL_ENABLE_MONITORING`.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a device collective belongs to, for error messages: the training step (when the caller
/// knows it) and what is being moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpLabel {
    pub step: Option<u64>,
    pub what: &'static str,
}

impl OpLabel {
    /// `what` of training step `step` (e.g. `OpLabel::at_step(12, "gradients")`).
    pub fn at_step(step: u64, what: &'static str) -> Self {
        OpLabel { step: Some(step), what }
    }

    /// `what`, outside any step the caller knows of.
    pub fn unstepped(what: &'static str) -> Self {
        OpLabel { step: None, what }
    }
}

impl fmt::Display for OpLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.step, self.what.is_empty()) {
            (Some(step), false) => write!(f, "step {step}, {}", self.what),
            (Some(step), true) => write!(f, "step {step}"),
            (None, false) => f.write_str(self.what),
            (None, true) => f.write_str("no step"),
        }
    }
}

/// The state of the event recorded after the collective.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventState {
    /// The stream has not reached the event yet.
    Pending,
    /// Everything before the event, the collective included, has finished.
    Complete,
    /// Querying the event failed (a CUDA error of an earlier launch, a lost device).
    Failed(String),
}

/// Why a collective is abandoned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortReason {
    /// Not complete within the deadline: a peer stopped participating, or a GPU hung.
    Deadline { waited: Duration },
    /// NCCL reported an asynchronous error on the communicator (names it).
    AsyncError(String),
    /// CUDA reported an error while the collective was waited on.
    Cuda(String),
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::Deadline { waited } => write!(f, "not complete after {waited:?}"),
            AbortReason::AsyncError(e) => write!(f, "NCCL asynchronous error: {e}"),
            AbortReason::Cuda(e) => write!(f, "CUDA error: {e}"),
        }
    }
}

/// What to do after one observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Keep polling (after [`poll_interval`]).
    Continue,
    /// The collective finished; its output may be read.
    Done,
    /// Abort the communicator and fail the rank.
    Abort(AbortReason),
}

/// One poll of a device collective: waited `elapsed` of `timeout`, the event's state, NCCL's
/// asynchronous error (`None` when there is none).
///
/// Errors win over completion: an asynchronous error means the communicator is broken, and an
/// event that completed on a broken communicator may hold garbage (NCCL aborts its kernels).
/// Completion wins over the deadline: a result that arrived is used even if polling was late.
pub fn decide(elapsed: Duration, timeout: Duration, event: &EventState, async_error: Option<&str>) -> Verdict {
    if let Some(error) = async_error {
        return Verdict::Abort(AbortReason::AsyncError(error.to_string()));
    }
    match event {
        EventState::Failed(error) => Verdict::Abort(AbortReason::Cuda(error.clone())),
        EventState::Complete => Verdict::Done,
        EventState::Pending if elapsed >= timeout => Verdict::Abort(AbortReason::Deadline { waited: elapsed }),
        EventState::Pending => Verdict::Continue,
    }
}

/// How long to sleep before the next poll, having waited `elapsed`: nothing (a yield) for the
/// first 100 µs, since most collectives of a step finish within microseconds to milliseconds
/// and each sleep adds its length to the step; then an eighth of the time waited, between
/// 20 µs and 2 ms, so a long collective costs a few hundred cheap queries per second and a hung
/// one is noticed within 2 ms of its deadline.
pub fn poll_interval(elapsed: Duration) -> Duration {
    if elapsed < Duration::from_micros(100) {
        Duration::ZERO
    } else {
        (elapsed / 8).clamp(Duration::from_micros(20), Duration::from_millis(2))
    }
}

/// NCCL's meaning of an `ncclResult_t` value (read as an integer: the bindings are NCCL 2.30's,
/// the library may be older or newer); `None` for success and "in progress".
pub fn nccl_result_name(code: u32) -> Option<String> {
    let name = match code {
        0 | 7 => return None,
        1 => "unhandled CUDA error (ncclUnhandledCudaError)",
        2 => "system error, e.g. a socket or memory failure (ncclSystemError)",
        3 => "internal error (ncclInternalError)",
        4 => "invalid argument (ncclInvalidArgument)",
        5 => "invalid usage (ncclInvalidUsage)",
        6 => "remote error: a peer failed or closed its connection (ncclRemoteError)",
        8 => "timeout (ncclTimeout, NCCL ≥ 2.30)",
        other => return Some(format!("unknown NCCL result {other}")),
    };
    Some(name.to_string())
}

/// The next capacity of a reusable staging buffer holding `current` values that must hold
/// `needed`: unchanged when it fits, else the larger of `needed` and 1.5 × `current`, so sizes
/// that creep up by a little do not reallocate every call.
pub fn grown_capacity(current: usize, needed: usize) -> usize {
    if needed <= current { current } else { needed.max(current.saturating_add(current / 2)) }
}

/// What the guard thread is watching.
#[derive(Debug)]
struct Armed {
    ticket: u64,
    deadline: Instant,
    what: String,
}

#[derive(Debug, Default)]
struct GuardState {
    armed: Option<Armed>,
    next_ticket: u64,
    shutdown: bool,
}

type Shared = Arc<(Mutex<GuardState>, Condvar)>;

/// A thread that runs an action when a host-blocking call does not return by its deadline
/// (see the module docs). [`StallGuard::watch`] arms it for one call; dropping the returned
/// [`Watch`] disarms it.
pub struct StallGuard {
    shared: Shared,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for StallGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StallGuard").finish_non_exhaustive()
    }
}

/// An armed [`StallGuard`]; disarms it when dropped.
#[derive(Debug)]
#[must_use = "the guard is disarmed as soon as the Watch is dropped"]
pub struct Watch<'a> {
    guard: &'a StallGuard,
    ticket: u64,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let (lock, cvar) = &*self.guard.shared;
        let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
        if state.armed.as_ref().is_some_and(|a| a.ticket == self.ticket) {
            state.armed = None;
            cvar.notify_all();
        }
    }
}

impl StallGuard {
    /// Starts the guard thread; `on_stall` receives the description of the call that hung.
    pub fn new(on_stall: impl Fn(&str) + Send + 'static) -> std::io::Result<Self> {
        let shared: Shared = Arc::new((Mutex::new(GuardState::default()), Condvar::new()));
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("nccl-stall-guard".into())
            .spawn(move || guard_loop(&theirs, &on_stall))?;
        Ok(StallGuard { shared, thread: Some(thread) })
    }

    /// The production guard: prints what hung (stderr and the log) and aborts the process.
    pub fn aborting() -> std::io::Result<Self> {
        StallGuard::new(|what| {
            let message = format!("{what}; aborting the process (a thread blocked inside NCCL cannot be unwound)");
            tracing::error!("{message}");
            eprintln!("error: {message}");
            std::process::abort();
        })
    }

    /// Arms the guard for a call that should return within `timeout`; `what` names it (op,
    /// step, rank) for the action.
    pub fn watch(&self, timeout: Duration, what: String) -> Watch<'_> {
        let (lock, cvar) = &*self.shared;
        let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        let deadline =
            Instant::now().checked_add(timeout).unwrap_or_else(|| Instant::now() + Duration::from_secs(1 << 40));
        state.armed = Some(Armed { ticket, deadline, what });
        cvar.notify_all();
        Watch { guard: self, ticket }
    }
}

impl Drop for StallGuard {
    fn drop(&mut self) {
        {
            let (lock, cvar) = &*self.shared;
            let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
            state.shutdown = true;
            cvar.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn guard_loop(shared: &Shared, on_stall: &dyn Fn(&str)) {
    let (lock, cvar) = &**shared;
    let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        if state.shutdown {
            return;
        }
        let now = Instant::now();
        match &state.armed {
            None => state = cvar.wait(state).unwrap_or_else(PoisonError::into_inner),
            Some(armed) if now >= armed.deadline => {
                let what = state.armed.take().map(|a| a.what).unwrap_or_default();
                drop(state);
                on_stall(&what);
                state = lock.lock().unwrap_or_else(PoisonError::into_inner);
            }
            Some(armed) => {
                let wait = armed.deadline - now;
                state = cvar.wait_timeout(state, wait).unwrap_or_else(PoisonError::into_inner).0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn completion_ends_the_wait_and_pending_continues_until_the_deadline() {
        assert_eq!(decide(Duration::ZERO, T, &EventState::Complete, None), Verdict::Done);
        assert_eq!(decide(Duration::from_secs(9), T, &EventState::Pending, None), Verdict::Continue);
        assert_eq!(
            decide(Duration::from_secs(10), T, &EventState::Pending, None),
            Verdict::Abort(AbortReason::Deadline { waited: Duration::from_secs(10) })
        );
        // A result that arrived is used even when the poll came late.
        assert_eq!(decide(Duration::from_secs(11), T, &EventState::Complete, None), Verdict::Done);
    }

    #[test]
    fn errors_abort_even_when_the_event_completed() {
        let v = decide(Duration::ZERO, T, &EventState::Complete, Some("remote error"));
        assert_eq!(v, Verdict::Abort(AbortReason::AsyncError("remote error".into())));
        let v = decide(Duration::ZERO, T, &EventState::Failed("CUDA_ERROR_LAUNCH_FAILED".into()), None);
        assert_eq!(v, Verdict::Abort(AbortReason::Cuda("CUDA_ERROR_LAUNCH_FAILED".into())));
        // The async error names the cause better than the event's failure: it wins.
        let v = decide(Duration::ZERO, T, &EventState::Failed("x".into()), Some("system error"));
        assert!(matches!(v, Verdict::Abort(AbortReason::AsyncError(_))), "{v:?}");
        assert_eq!(
            AbortReason::Deadline { waited: Duration::from_millis(1500) }.to_string(),
            "not complete after 1.5s"
        );
    }

    #[test]
    fn polling_starts_hot_then_backs_off_to_at_most_2_ms() {
        assert_eq!(poll_interval(Duration::ZERO), Duration::ZERO);
        assert_eq!(poll_interval(Duration::from_micros(99)), Duration::ZERO);
        assert_eq!(poll_interval(Duration::from_micros(100)), Duration::from_micros(20));
        assert_eq!(poll_interval(Duration::from_millis(4)), Duration::from_micros(500));
        assert_eq!(poll_interval(Duration::from_secs(60)), Duration::from_millis(2));
        let mut last = Duration::ZERO;
        for us in (0..100_000).step_by(997) {
            let p = poll_interval(Duration::from_micros(us));
            assert!(p >= last && p <= Duration::from_millis(2), "{us} µs: {p:?}");
            last = p;
        }
    }

    #[test]
    fn nccl_results_are_named_and_unknown_ones_do_not_panic() {
        assert_eq!(nccl_result_name(0), None);
        assert_eq!(nccl_result_name(7), None, "in progress is not an error");
        assert!(nccl_result_name(6).unwrap().contains("peer"));
        assert!(nccl_result_name(2).unwrap().contains("ncclSystemError"));
        assert_eq!(nccl_result_name(4242).unwrap(), "unknown NCCL result 4242");
    }

    #[test]
    fn labels_name_the_step_and_what_moves() {
        assert_eq!(OpLabel::at_step(12, "gradients").to_string(), "step 12, gradients");
        assert_eq!(OpLabel::unstepped("host-staged buffer").to_string(), "host-staged buffer");
        assert_eq!(OpLabel::at_step(3, "").to_string(), "step 3");
        assert_eq!(OpLabel::default().to_string(), "no step");
    }

    #[test]
    fn staging_buffers_grow_geometrically_and_never_shrink() {
        assert_eq!(grown_capacity(0, 10), 10);
        assert_eq!(grown_capacity(100, 10), 100);
        assert_eq!(grown_capacity(100, 101), 150);
        assert_eq!(grown_capacity(100, 1000), 1000);
        assert_eq!(grown_capacity(usize::MAX, usize::MAX), usize::MAX);
        assert_eq!(grown_capacity(usize::MAX - 1, usize::MAX), usize::MAX);
    }

    #[test]
    fn device_errors_name_the_op_the_step_and_the_rank() {
        use crate::{CollectiveError, Op};
        let label = OpLabel::at_step(12, "gradients");
        let e = CollectiveError::DeviceTimeout {
            op: Op::AllReduce,
            label,
            seq: 40,
            rank: 3,
            waited: Duration::from_secs(60),
        };
        assert_eq!(
            e.to_string(),
            "NCCL all_reduce #40 (step 12, gradients) on rank 3: not complete after 60s; communicator aborted (a peer \
             stopped participating, or a GPU hung)"
        );
        let reason = "NCCL asynchronous error: remote error; communicator aborted".to_string();
        let e = CollectiveError::DeviceFailed { op: Op::AllGather, label, seq: 41, rank: 0, reason };
        assert!(
            e.to_string().starts_with("NCCL all_gather #41 (step 12, gradients) on rank 0: NCCL asynchronous"),
            "{e}"
        );
    }

    fn recording_guard() -> (StallGuard, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let guard = StallGuard::new(move |what| sink.lock().unwrap().push(what.to_string())).unwrap();
        (guard, seen)
    }

    fn wait_for(seen: &Mutex<Vec<String>>, n: usize) -> Vec<String> {
        let start = Instant::now();
        while seen.lock().unwrap().len() < n && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        seen.lock().unwrap().clone()
    }

    #[test]
    fn the_stall_guard_fires_once_for_a_call_that_outlives_its_deadline() {
        let (guard, seen) = recording_guard();
        let watch = guard.watch(Duration::from_millis(20), "ncclCommInitRank on rank 1".into());
        let fired = wait_for(&seen, 1);
        assert_eq!(fired, ["ncclCommInitRank on rank 1"]);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(seen.lock().unwrap().len(), 1, "fires once per watch");
        drop(watch);
    }

    #[test]
    fn the_stall_guard_stays_quiet_for_calls_that_return_in_time() {
        let (guard, seen) = recording_guard();
        for i in 0..50 {
            let _watch = guard.watch(Duration::from_millis(200), format!("call {i}"));
        }
        // A later, longer watch replaces nothing that already returned.
        let watch = guard.watch(Duration::from_millis(30), "the slow one".into());
        assert_eq!(wait_for(&seen, 1), ["the slow one"]);
        drop(watch);
        drop(guard); // joins the thread
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}
