//! [`NcclComm`]: one NCCL communicator (created once per generation) on its own CUDA stream,
//! whose collectives take raw device pointers and are waited on under a deadline.
//!
//! The communicator is created with `ncclCommInitRank` through cudarc's `result` layer and its
//! raw `ncclComm_t` kept here: cudarc's safe `Comm` hides the handle (no abort from outside) and
//! panics in `Drop` when the abort fails. Each collective is enqueued on the communicator's
//! stream, an event is recorded after it, and the calling thread polls the event and
//! `ncclCommGetAsyncError` ([`crate::watchdog::decide`]) until it completes, fails or passes its
//! deadline; then the communicator is aborted, marked dead (later calls fail at once) and the
//! error names the operation, its label (step) and the rank. Calls that block the host inside
//! NCCL (set-up, the lazy connection of the first collective, the abort itself) run under a
//! [`StallGuard`] that aborts the process when they overrun.

use std::ffi::{c_char, c_void};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaEvent, CudaStream};
use cudarc::nccl::result;
use cudarc::nccl::sys::{self, ncclComm_t, ncclDataType_t, ncclRedOp_t};

use crate::watchdog::{AbortReason, EventState, OpLabel, StallGuard, Verdict, decide, nccl_result_name, poll_interval};
use crate::{Collective, CollectiveError, Op, Result};

/// Extra time the [`StallGuard`] allows a host-blocking NCCL call beyond the collective
/// deadline, so the event-based watchdog (which returns an error instead of aborting the
/// process) always gets the first chance.
const STALL_GRACE: Duration = Duration::from_secs(10);

/// Bytes of an NCCL unique id (`ncclUniqueId::internal`).
const UNIQUE_ID_BYTES: usize = 128;

/// The NCCL error code's name (cudarc's `NcclError` prints no detail of its own).
fn nccl_error(e: &result::NcclError) -> String {
    format!("{:?}", e.0)
}

/// Where cudarc looks for `lib` (its dynamic loading tries these names in order).
fn candidates(lib: &str) -> String {
    let mut names = cudarc::get_lib_name_candidates(lib);
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names.join(", ")
}

/// Fails (instead of cudarc's panic at first use) when the CUDA driver or NCCL cannot be loaded.
fn check_libraries() -> Result<()> {
    // SAFETY: both only try to dlopen the libraries' candidate names (running their
    // initialisers, which is what loading them for use would do anyway).
    let (driver, nccl) = unsafe { (cudarc::driver::sys::is_culib_present(), sys::is_culib_present()) };
    let missing = |lib: &str, what: &str| {
        CollectiveError::Setup(format!(
            "{what} not found: none of [{}] loads from the library search path (LD_LIBRARY_PATH, ldconfig); \
             voxbridge-gpu's prepare_cuda_libraries (or scripts/gpu-check.sh) links the versioned library \
             under these names",
            candidates(lib)
        ))
    };
    if !driver {
        return Err(missing("cuda", "the CUDA driver library (libcuda)"));
    }
    if !nccl {
        return Err(missing("nccl", "NCCL (libnccl)"));
    }
    Ok(())
}

/// One rank's NCCL communicator; see the module docs.
pub struct NcclComm {
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Recorded after each collective and polled.
    event: CudaEvent,
    /// Null once aborted.
    comm: ncclComm_t,
    rank: usize,
    world: usize,
    device: usize,
    timeout: Duration,
    /// Device collectives issued so far (errors name the one that failed).
    seq: u64,
    /// Why the communicator was aborted; every later call fails with it.
    dead: Option<String>,
    guard: StallGuard,
}

// SAFETY: an NCCL communicator may be used from any host thread as long as calls on it do not
// overlap; every call goes through `&mut self`, so they cannot. The CUDA handles are `Send`.
unsafe impl Send for NcclComm {}

impl std::fmt::Debug for NcclComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclComm")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("device", &self.device)
            .field("timeout", &self.timeout)
            .field("seq", &self.seq)
            .field("dead", &self.dead)
            .finish_non_exhaustive()
    }
}

impl NcclComm {
    /// Joins the NCCL communicator of `control`'s ranks on CUDA device `device`: rank 0 makes
    /// the unique id and broadcasts it over `control` (a collective of `control`: every rank
    /// must call it). `timeout` bounds the set-up (every rank must join within it; pass the
    /// long first-step timeout) and, until [`set_timeout`](Self::set_timeout), each collective.
    ///
    /// The CUDA context is the device's primary context (`CudaContext::new` retains it), the
    /// one burn's cubecl uses, so device pointers of burn tensors are valid here.
    pub fn new(control: &mut dyn Collective, device: usize, timeout: Duration) -> Result<Self> {
        let (rank, world) = (control.rank(), control.world_size());
        let setup =
            |what: String| CollectiveError::Setup(format!("NCCL on rank {rank} of {world}, cuda:{device}: {what}"));
        let nranks = i32::try_from(world).map_err(|_| setup(format!("{world} ranks exceed NCCL's limit")))?;
        let nrank = i32::try_from(rank).map_err(|_| setup(format!("rank {rank} exceeds NCCL's limit")))?;
        check_libraries()?;
        let context = CudaContext::new(device).map_err(|e| setup(format!("CUDA device {device}: {e:?}")))?;
        let stream = context.new_stream().map_err(|e| setup(format!("new CUDA stream: {e:?}")))?;
        let event = context.new_event(None).map_err(|e| setup(format!("new CUDA event: {e:?}")))?;
        let guard = StallGuard::aborting().map_err(|e| setup(format!("starting the stall guard thread: {e}")))?;

        let mut id = if rank == 0 {
            let id = result::get_uniqueid().map_err(|e| setup(format!("ncclGetUniqueId: {}", nccl_error(&e))))?;
            id.internal.iter().map(|&c| c as u8).collect()
        } else {
            Vec::new()
        };
        control.broadcast(&mut id, 0)?;
        if id.len() != UNIQUE_ID_BYTES {
            return Err(setup(format!("NCCL unique id of {} bytes from rank 0, expected {UNIQUE_ID_BYTES}", id.len())));
        }
        let mut internal = [0 as c_char; UNIQUE_ID_BYTES];
        for (d, s) in internal.iter_mut().zip(&id) {
            *d = *s as c_char;
        }
        let unique = sys::ncclUniqueId { internal };

        // NCCL's init uses the calling thread's current device: make it this one.
        context.bind_to_thread().map_err(|e| setup(format!("binding the CUDA context: {e:?}")))?;
        let mut comm: ncclComm_t = std::ptr::null_mut();
        {
            let what =
                format!("ncclCommInitRank on rank {rank} of {world} (cuda:{device}) did not return within {timeout:?}");
            let _watch = guard.watch(timeout + STALL_GRACE, what);
            // SAFETY: `comm` is a valid out-pointer; the id came from ncclGetUniqueId on rank 0;
            // rank < nranks (the control ring's numbering).
            unsafe { result::comm_init_rank(&mut comm, nranks, unique, nrank) }
                .map_err(|e| setup(format!("ncclCommInitRank: {}", nccl_error(&e))))?;
        }
        if comm.is_null() {
            return Err(setup("ncclCommInitRank returned no communicator".into()));
        }
        tracing::debug!("NCCL communicator: rank {rank} of {world} on cuda:{device}");
        Ok(NcclComm { context, stream, event, comm, rank, world, device, timeout, seq: 0, dead: None, guard })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world
    }

    /// The CUDA device ordinal.
    pub fn device(&self) -> usize {
        self.device
    }

    /// Deadline of each following collective.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The stream the collectives run on (for staging copies that must be ordered with them).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.context
    }

    /// Why the communicator was aborted, if it was.
    pub fn dead(&self) -> Option<&str> {
        self.dead.as_deref()
    }

    /// Sums `len` f32 values at device address `ptr` over every rank, in place, and waits for
    /// the result (deadline: [`timeout`](Self::timeout)).
    ///
    /// # Safety
    /// `ptr` must address `len` f32 values of device memory in this communicator's CUDA context,
    /// written by work that has completed (or is ordered before this stream), that nothing
    /// reads or writes until this returns.
    pub unsafe fn all_reduce_sum_f32(&mut self, ptr: u64, len: usize, label: &OpLabel) -> Result<()> {
        let seq = self.begin(Op::AllReduce, label, &[ptr], len)?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the caller guarantees `ptr` holds `len` f32 values; in place (send = recv) is
        // NCCL's documented in-place all-reduce.
        unsafe { self.enqueue_all_reduce(ptr, len, label, seq)? };
        self.wait(Op::AllReduce, label, seq)
    }

    /// Every rank's `len_per_rank` f32 values at `send`, concatenated in rank order into
    /// `recv` (`world × len_per_rank` values); waits for the result.
    ///
    /// # Safety
    /// `send` must address `len_per_rank` and `recv` `world × len_per_rank` f32 values of
    /// device memory in this communicator's context, either disjoint or with `send` equal to
    /// `recv + rank × len_per_rank` (NCCL's in-place all-gather); written by completed work;
    /// untouched by anything else until this returns.
    pub unsafe fn all_gather_f32(&mut self, send: u64, recv: u64, len_per_rank: usize, label: &OpLabel) -> Result<()> {
        let seq = self.begin(Op::AllGather, label, &[send, recv], len_per_rank)?;
        if len_per_rank == 0 {
            return Ok(());
        }
        // SAFETY: sizes and placement are the caller's contract above.
        unsafe { self.enqueue_all_gather(send, recv, len_per_rank, label, seq)? };
        self.wait(Op::AllGather, label, seq)
    }

    /// Checks the communicator is usable and the arguments sane; numbers the operation.
    pub(crate) fn begin(&mut self, op: Op, label: &OpLabel, ptrs: &[u64], len: usize) -> Result<u64> {
        let seq = self.seq;
        self.seq += 1;
        if let Some(reason) = &self.dead {
            let reason = format!("communicator aborted earlier ({reason}); restart the generation");
            return Err(CollectiveError::DeviceFailed { op, label: *label, seq, rank: self.rank, reason });
        }
        if len > 0 && ptrs.contains(&0) {
            let reason = "null device pointer".to_string();
            return Err(CollectiveError::DeviceFailed { op, label: *label, seq, rank: self.rank, reason });
        }
        Ok(seq)
    }

    /// Enqueues the in-place all-reduce (a staging path then adds its copies before waiting).
    ///
    /// # Safety
    /// As [`all_reduce_sum_f32`](Self::all_reduce_sum_f32), except that the buffer may be
    /// written by earlier work on this communicator's stream.
    pub(crate) unsafe fn enqueue_all_reduce(&mut self, ptr: u64, len: usize, label: &OpLabel, seq: u64) -> Result<()> {
        let (comm, stream) = (self.comm, self.stream.cu_stream() as sys::cudaStream_t);
        self.enqueue(Op::AllReduce, label, seq, || {
            // SAFETY: see the function's contract; `comm` is live (checked by `begin`) and
            // `stream` belongs to its context.
            unsafe {
                result::all_reduce(
                    ptr as *const c_void,
                    ptr as *mut c_void,
                    len,
                    ncclDataType_t::ncclFloat32,
                    ncclRedOp_t::ncclSum,
                    comm,
                    stream,
                )
            }
        })
    }

    /// Enqueues the all-gather.
    ///
    /// # Safety
    /// As [`all_gather_f32`](Self::all_gather_f32), except that the buffers may be written by
    /// earlier work on this communicator's stream.
    pub(crate) unsafe fn enqueue_all_gather(
        &mut self,
        send: u64,
        recv: u64,
        len_per_rank: usize,
        label: &OpLabel,
        seq: u64,
    ) -> Result<()> {
        let (comm, stream) = (self.comm, self.stream.cu_stream() as sys::cudaStream_t);
        self.enqueue(Op::AllGather, label, seq, || {
            // SAFETY: see the function's contract; `comm` is live and `stream` is its context's.
            unsafe {
                result::all_gather(
                    send as *const c_void,
                    recv as *mut c_void,
                    len_per_rank,
                    ncclDataType_t::ncclFloat32,
                    comm,
                    stream,
                )
            }
        })
    }

    /// Runs one host-side NCCL enqueue under the stall guard (the first collective connects to
    /// the peers and can block); an error aborts the communicator.
    fn enqueue(
        &mut self,
        op: Op,
        label: &OpLabel,
        seq: u64,
        call: impl FnOnce() -> std::result::Result<result::NcclStatus, result::NcclError>,
    ) -> Result<()> {
        self.context.bind_to_thread().map_err(|e| self.fail(op, label, seq, AbortReason::Cuda(format!("{e:?}"))))?;
        let outcome = {
            let what = format!(
                "NCCL {op} #{seq} ({label}) on rank {} of {}: enqueueing did not return within {:?}",
                self.rank,
                self.world,
                self.timeout + STALL_GRACE
            );
            let _watch = self.guard.watch(self.timeout + STALL_GRACE, what);
            call()
        };
        match outcome {
            Ok(_) => Ok(()),
            Err(e) => {
                let reason = nccl_result_name(e.0 as u32).unwrap_or_else(|| nccl_error(&e));
                Err(self.fail(op, label, seq, AbortReason::AsyncError(format!("{reason} (returned by the call)"))))
            }
        }
    }

    /// Waits for everything enqueued on the stream so far, under the deadline.
    pub(crate) fn wait(&mut self, op: Op, label: &OpLabel, seq: u64) -> Result<()> {
        if let Err(e) = self.event.record(&self.stream) {
            return Err(self.fail(op, label, seq, AbortReason::Cuda(format!("recording the completion event: {e:?}"))));
        }
        let start = Instant::now();
        loop {
            let event = match self.event.try_is_complete() {
                Ok(true) => EventState::Complete,
                Ok(false) => EventState::Pending,
                Err(e) => EventState::Failed(format!("{e:?}")),
            };
            let async_error = self.async_error();
            let elapsed = start.elapsed();
            match decide(elapsed, self.timeout, &event, async_error.as_deref()) {
                Verdict::Done => return Ok(()),
                Verdict::Continue => match poll_interval(elapsed) {
                    Duration::ZERO => std::thread::yield_now(),
                    pause => std::thread::sleep(pause),
                },
                Verdict::Abort(reason) => return Err(self.fail(op, label, seq, reason)),
            }
        }
    }

    /// NCCL's asynchronous error on the communicator, if any (named).
    fn async_error(&self) -> Option<String> {
        if self.comm.is_null() {
            return Some("communicator already aborted".into());
        }
        let mut code: u32 = 0;
        // SAFETY: `comm` is live. NCCL writes one `ncclResult_t` (a C enum: 4 bytes) through the
        // pointer; it points at a u32, read as an integer, so a value these bindings (NCCL 2.30)
        // do not list cannot make an invalid Rust enum.
        let rc = unsafe { sys::ncclCommGetAsyncError(self.comm, (&mut code as *mut u32).cast()) };
        if rc != sys::ncclResult_t::ncclSuccess {
            return Some(format!("ncclCommGetAsyncError failed: {rc:?}"));
        }
        nccl_result_name(code)
    }

    /// Aborts the communicator (once), marks it dead and builds the rank's error.
    fn fail(&mut self, op: Op, label: &OpLabel, seq: u64, reason: AbortReason) -> CollectiveError {
        let rank = self.rank;
        let error = match &reason {
            AbortReason::Deadline { waited } => {
                CollectiveError::DeviceTimeout { op, label: *label, seq, rank, waited: *waited }
            }
            other => CollectiveError::DeviceFailed {
                op,
                label: *label,
                seq,
                rank,
                reason: format!("{other}; communicator aborted"),
            },
        };
        tracing::error!("{error}");
        self.abort(&format!("NCCL {op} #{seq} ({label}): {reason}"));
        error
    }

    /// `ncclCommAbort` (guarded: it can hang on a wedged GPU) and never again.
    fn abort(&mut self, why: &str) {
        if self.dead.is_none() {
            self.dead = Some(why.to_string());
        }
        let comm = std::mem::replace(&mut self.comm, std::ptr::null_mut());
        if comm.is_null() {
            return;
        }
        let what = format!("ncclCommAbort on rank {} after: {why}", self.rank);
        let _watch = self.guard.watch(self.timeout.max(Duration::from_secs(30)) + STALL_GRACE, what);
        // SAFETY: `comm` came from ncclCommInitRank and is aborted exactly once (nulled above).
        if let Err(e) = unsafe { result::comm_abort(comm) } {
            tracing::warn!("ncclCommAbort on rank {}: {}", self.rank, nccl_error(&e));
        }
    }
}

impl Drop for NcclComm {
    /// Aborts rather than destroys: `ncclCommDestroy` may wait on peers that are gone (PyTorch's
    /// wrapper does the same), and every collective of this communicator was waited for.
    fn drop(&mut self) {
        self.abort("dropped");
    }
}
