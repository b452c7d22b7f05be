//! NCCL (cudarc, loaded at run time) behind the watchdog of [`crate::watchdog`].
//!
//! - [`NcclComm`]: one communicator on its own CUDA stream; all-reduce and all-gather of f32
//!   values at raw device pointers (burn tensors' memory: voxbridge-train's `nccl_device`), each
//!   waited on under a deadline that aborts the communicator and names op, step and rank.
//! - [`NcclCollective`]: the [`Collective`] trait over NCCL for host buffers, with a
//!   [`TcpRing`] alongside for the bootstrap (rank 0's NCCL unique id is broadcast over it),
//!   byte broadcasts, barriers and sequence numbers. Each call copies host → pinned staging →
//!   device, runs the collective and copies back, all enqueued on the communicator's stream
//!   before one deadline-bounded wait; the pinned and device staging buffers persist and grow
//!   (by half again, [`crate::watchdog::grown_capacity`]) instead of being allocated per call.
//!
//! Built in CI (`--features nccl`, no GPU needed to compile: cudarc loads libcuda and libnccl
//! when first used); run only where a GPU is lent (`scripts/gpu-check.sh`).

#![allow(unsafe_code)]

mod comm;

use std::time::Duration;

pub use comm::NcclComm;
use cudarc::driver::{CudaSlice, DevicePtrMut, PinnedHostSlice};

use crate::watchdog::{OpLabel, grown_capacity};
use crate::{Collective, CollectiveError, Op, Result, TcpRing};

/// Deadline of NCCL set-up and of each collective until [`Collective::set_timeout`]: every rank
/// must have joined by then (torchtitan's initialisation timeout).
pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(300);

/// Persistent staging buffers of [`NcclCollective`]: pinned host memory (so the copies are
/// asynchronous and covered by the watchdog) and device memory, `capacity` f32 values each.
struct Staging {
    host: PinnedHostSlice<f32>,
    device: CudaSlice<f32>,
}

impl Staging {
    fn capacity(&self) -> usize {
        self.host.len().min(self.device.len())
    }
}

pub struct NcclCollective {
    control: TcpRing,
    comm: NcclComm,
    staging: Option<Staging>,
}

impl std::fmt::Debug for NcclCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclCollective")
            .field("control", &self.control)
            .field("comm", &self.comm)
            .field("staged", &self.staging.as_ref().map(Staging::capacity))
            .finish()
    }
}

impl NcclCollective {
    /// Joins the NCCL communicator of the ring's ranks on CUDA device `device`, with
    /// [`DEFAULT_INIT_TIMEOUT`] for the set-up and the first collectives.
    pub fn new(control: TcpRing, device: usize) -> Result<Self> {
        NcclCollective::with_timeout(control, device, DEFAULT_INIT_TIMEOUT)
    }

    /// As [`new`](Self::new), with `timeout` for the set-up and each collective.
    pub fn with_timeout(mut control: TcpRing, device: usize, timeout: Duration) -> Result<Self> {
        let comm = NcclComm::new(&mut control, device, timeout)?;
        Ok(NcclCollective { control, comm, staging: None })
    }

    /// The device communicator (for raw-pointer collectives on the same ranks).
    pub fn comm(&mut self) -> &mut NcclComm {
        &mut self.comm
    }

    /// Copies `values` in at offset `at` (in values), runs `collective` on the device buffer
    /// (given its address), copies `out_len` values back from offset 0, and waits once for all
    /// of it; returns the values copied back.
    fn staged(
        &mut self,
        op: Op,
        values: &[f32],
        at: usize,
        out_len: usize,
        collective: impl FnOnce(&mut NcclComm, u64, &OpLabel) -> Result<u64>,
    ) -> Result<&[f32]> {
        let label = OpLabel::unstepped("host-staged buffer");
        let rank = self.comm.rank();
        let fail = |reason: String| CollectiveError::DeviceFailed { op, label, seq: 0, rank, reason };
        let end =
            at.checked_add(values.len()).ok_or_else(|| fail(format!("{} values at {at} overflow", values.len())))?;
        let staging = ensure_staging(&mut self.staging, &self.comm, end.max(out_len)).map_err(fail)?;
        let stream = self.comm.stream().clone();
        // The pinned buffer's own event is never recorded (the copies below are raw driver
        // calls) and the previous call's copies were seen complete by its watchdog: no wait.
        let host = staging.host.as_mut_slice().map_err(|e| fail(format!("pinned staging buffer: {e:?}")))?;
        host[at..end].copy_from_slice(values);
        let device = staging.device.device_ptr_mut(&stream).0;
        let bytes = std::mem::size_of::<f32>() as u64;
        // SAFETY: `host` is pinned memory of ≥ `end` values, untouched until the wait in
        // `collective` returned; `device` holds as many; the copy is on the communicator's
        // stream, so the collective enqueued after it reads the copied values.
        unsafe {
            cudarc::driver::result::memcpy_htod_async(device + at as u64 * bytes, &host[at..end], stream.cu_stream())
        }
        .map_err(|e| fail(format!("host to device copy: {e:?}")))?;
        let seq = collective(&mut self.comm, device, &label)?;
        // SAFETY: as above; the copy back is ordered after the collective on the same stream.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut host[..out_len], device, stream.cu_stream()) }
            .map_err(|e| fail(format!("device to host copy: {e:?}")))?;
        self.comm.wait(op, &label, seq)?;
        Ok(&host[..out_len])
    }
}

/// Staging buffers of at least `needed` values in `slot` (replaced, larger, when smaller).
fn ensure_staging<'a>(
    slot: &'a mut Option<Staging>,
    comm: &NcclComm,
    needed: usize,
) -> std::result::Result<&'a mut Staging, String> {
    let current = slot.as_ref().map_or(0, Staging::capacity);
    if needed > current || slot.is_none() {
        let capacity = grown_capacity(current, needed).max(1);
        *slot = None; // free the old buffers first
        let alloc = |what: &str, e: cudarc::driver::DriverError| {
            format!("allocating {what} staging for {capacity} f32 values: {e:?}")
        };
        // SAFETY: uninitialised f32 buffers whose elements are written before they are read
        // (host values are copied in before each use, device values are copied from them).
        // Flags 0: plain pinned memory, readable from the CPU at full speed (cudarc's default,
        // write-combined, is slow to read back).
        let host = unsafe { comm.context().alloc_pinned_with_flags::<f32>(capacity, 0) }
            .map_err(|e| alloc("pinned host", e))?;
        // SAFETY: as above.
        let device = unsafe { comm.stream().alloc::<f32>(capacity) }.map_err(|e| alloc("device", e))?;
        *slot = Some(Staging { host, device });
    }
    slot.as_mut().ok_or_else(|| "staging buffers missing".to_string())
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.control.rank()
    }

    fn world_size(&self) -> usize {
        self.control.world_size()
    }

    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<()> {
        let n = data.len();
        if n == 0 {
            return Ok(());
        }
        let out = self.staged(Op::AllReduce, data, 0, n, |comm, device, label| {
            let seq = comm.begin(Op::AllReduce, label, &[device], n)?;
            // SAFETY: the staging buffer holds ≥ n values, written by the copy enqueued before
            // on the same stream; nothing else uses it.
            unsafe { comm.enqueue_all_reduce(device, n, label, seq)? };
            Ok(seq)
        })?;
        data.copy_from_slice(out);
        Ok(())
    }

    fn all_gather(&mut self, local: &[f32]) -> Result<Vec<f32>> {
        let (n, world, rank) = (local.len(), self.world_size(), self.rank());
        let total = n
            .checked_mul(world)
            .ok_or_else(|| CollectiveError::Backend(format!("NCCL all_gather: {n} values × {world} ranks overflow")))?;
        if total == 0 {
            return Ok(Vec::new());
        }
        // In place: this rank's values sit at its slot of the output.
        let out = self.staged(Op::AllGather, local, rank * n, total, |comm, device, label| {
            let seq = comm.begin(Op::AllGather, label, &[device], n)?;
            let send = device + (rank * n * std::mem::size_of::<f32>()) as u64;
            // SAFETY: the buffer holds `total` values; `send` is this rank's slot of it (NCCL's
            // in-place all-gather), written by the copy enqueued before on the same stream.
            unsafe { comm.enqueue_all_gather(send, device, n, label, seq)? };
            Ok(seq)
        })?;
        Ok(out.to_vec())
    }

    fn broadcast(&mut self, data: &mut Vec<u8>, root: usize) -> Result<()> {
        self.control.broadcast(data, root)
    }

    fn barrier(&mut self) -> Result<()> {
        self.control.barrier()
    }

    fn set_timeout(&mut self, timeout: Duration) {
        self.control.set_timeout(timeout);
        self.comm.set_timeout(timeout);
    }

    fn next_seq(&self) -> u64 {
        self.control.next_seq()
    }

    /// A sub-ring of the control ring, then a new NCCL communicator over it (its unique id
    /// travels over the sub-ring), with this one's deadline.
    fn split(&mut self, color: u64) -> Result<Box<dyn Collective>> {
        let control = self.control.split_ring(color)?;
        Ok(Box::new(NcclCollective::with_timeout(control, self.comm.device(), self.comm.timeout())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Solo;

    /// Without a GPU (CI) the set-up fails with an error naming the library it could not load
    /// and the names cudarc tried, instead of cudarc's panic at first use; with one, it works.
    #[test]
    fn set_up_without_cuda_libraries_is_an_error_that_names_them() {
        match NcclComm::new(&mut Solo::default(), 0, Duration::from_secs(5)) {
            Ok(comm) => assert_eq!((comm.rank(), comm.world_size()), (0, 1)),
            Err(CollectiveError::Setup(message)) => {
                assert!(message.contains("not found: none of ["), "{message}");
                assert!(message.contains("libcuda") || message.contains("libnccl"), "{message}");
                assert!(message.contains("libnccl.so") || message.contains("libcuda.so"), "{message}");
            }
            Err(other) => panic!("expected a set-up error, got {other}"),
        }
    }
}
