//! [`NcclDevice`]: [`DeviceCollective`] for burn's CUDA backend (`burn::backend::Cuda`, the
//! inner backend of `Autodiff<Cuda>`) over NCCL on the tensors' own device memory — no host
//! staging.
//!
//! How a tensor reaches NCCL (burn 0.21 / cubecl 0.10 expose no device pointer directly; see
//! docs/design/gpu-engine.md §3): the fusion tensor is resolved to its materialised
//! `CubeTensor` (a clone of the fusion tensor is kept, so fusion keeps the buffer registered
//! and the clone is returned as the result), `client.get_resource(handle)` yields the
//! `CUdeviceptr` with the handle's offset added and pins the allocation while it is held.
//!
//! Ordering (cubecl runs kernels on its own non-blocking per-thread streams, which are not
//! exposed and do not order with NCCL's stream):
//! 1. resolving drains burn's fusion queue (the kernels writing the buffer are launched);
//! 2. `<Cuda as Backend>::sync` waits, on the host, until this thread's cubecl stream has run
//!    them — the buffer is complete;
//! 3. the collective is enqueued on the communicator's own stream and the host waits for its
//!    completion event under the deadline (voxbridge-collective's watchdog);
//! 4. only then is the tensor handed back, so every later burn kernel that reads it is launched
//!    after the collective finished.
//!
//! The all-reduce is in place: the input's buffer is overwritten with the sum and returned. The
//! caller must pass a buffer nothing else reads afterwards — voxbridge-train passes the fresh
//! output of `Tensor::cat` (cubecl's `cat` always allocates its output, even of one part). The
//! all-gather writes into a fresh `Tensor::empty` of `world × n` values.
//!
//! Per step, with G shared gradient values, E embedding values gathered per rank and W ranks:
//! - gradients: the caller's flattening `cat` (one device→device copy of 4·G bytes), one
//!   in-place NCCL all-reduce (ring: each rank sends and receives 2·(W−1)/W · 4·G bytes),
//!   split back as views (no copy); for the released model (G ≈ 2.2 B) that is 8.8 GB copied
//!   on the device and ≈ 17.6 GB sent per rank at W = 8;
//! - embeddings: one all-gather per gathered tensor (sends 4·E, receives 4·(W−1)·E bytes into a
//!   new `[W·E]` tensor);
//! - host: no tensor data at all — pointers, one `sync` per collective and event queries;
//! - one `Cuda::sync` before each collective: burn's queue drains and the GPU idles while the
//!   collective runs (overlapping it with the backward pass would need cubecl's stream).

#![allow(unsafe_code)]

use std::time::Duration;

use burn::backend::Cuda;
use burn::backend::cuda::CudaDevice;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor, TensorPrimitive};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::Runtime;
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_fusion::FusionTensor;
use voxbridge_collective::nccl::NcclComm;
use voxbridge_collective::{Collective, CollectiveError, Op, OpLabel};

use crate::device_comm::DeviceCollective;
use crate::error::CommError;

/// The backend inside `Cuda`'s fusion layer (what fusion tensors resolve to).
type Inner = CubeBackend<CudaRuntime, f32, i32, u8>;
/// `Cuda`'s float tensor primitive.
type Fused = FusionTensor<FusionCubeRuntime<CudaRuntime>>;

/// Bytes of one f32.
const F32_BYTES: u64 = 4;

/// NCCL collectives on CUDA device memory of burn tensors; see the module docs.
#[derive(Debug)]
pub struct NcclDevice {
    comm: NcclComm,
    device: CudaDevice,
    /// Largest tensor burn's allocator can hold on this device, in f32 values.
    max_bucket: usize,
    /// Step named by the next collectives' errors; advanced after each all-reduce (one per step).
    step: u64,
}

impl NcclDevice {
    /// Joins the NCCL communicator of `control`'s ranks on `cuda:device_index` (a collective of
    /// `control`, the TCP control ring: every rank must call it; rank 0's unique id travels over
    /// it). `timeout` bounds the set-up and each collective until
    /// [`set_timeout`](Self::set_timeout): pass the long first-step timeout.
    pub fn new(control: &mut dyn Collective, device_index: usize, timeout: Duration) -> Result<Self, CollectiveError> {
        let comm = NcclComm::new(control, device_index, timeout)?;
        let device = CudaDevice::new(device_index);
        // NCCL takes buffers of any size; burn's CUDA allocator does not: one allocation is at
        // most `max_page_size` (a quarter of the card's memory in cubecl-cuda 0.10); a larger
        // one fails (on wgpu it was seen to poison the device server). So buckets as large as
        // burn allocates: one all-reduce per step for every model whose shared gradients fit a
        // quarter of the card (the released MindEye2's 8.8 GB does on 80 GB), never an
        // allocation failure.
        let max_page = <CudaRuntime as Runtime>::client(&device).properties().memory.max_page_size;
        let max_bucket = usize::try_from(max_page / F32_BYTES).unwrap_or(usize::MAX).max(1);
        Ok(NcclDevice { comm, device, max_bucket, step: 0 })
    }

    /// The step the next collectives belong to (e.g. the resumed step); it then advances by one
    /// after each all-reduce.
    pub fn set_step(&mut self, step: u64) {
        self.step = step;
    }

    /// Deadline of each following collective (the shorter one after the first step).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.comm.set_timeout(timeout);
    }

    /// The communicator (rank, world, why it was aborted).
    pub fn comm(&self) -> &NcclComm {
        &self.comm
    }

    fn label(&self, what: &'static str) -> OpLabel {
        OpLabel::at_step(self.step, what)
    }

    /// An error of this rank's `op` that happened outside NCCL (burn, cubecl, arguments).
    fn error(&self, op: Op, label: OpLabel, reason: String) -> CommError {
        CommError::Collective(CollectiveError::Backend(format!(
            "NCCL {op} ({label}) on rank {}: {reason}",
            self.comm.rank()
        )))
    }

    /// The device collective runs over this communicator's ranks; `group` (the control ring the
    /// caller reduces over) must be the same set, or the ranks would wait on different peers.
    fn check_group(&self, op: Op, label: OpLabel, group: &dyn Collective) -> Result<(), CommError> {
        let (rank, world) = (self.comm.rank(), self.comm.world_size());
        if group.rank() != rank || group.world_size() != world {
            let reason = format!(
                "asked to reduce over rank {} of {} ranks, but the NCCL communicator is rank {rank} of {world} \
                 (a sub-group needs its own communicator)",
                group.rank(),
                group.world_size()
            );
            return Err(self.error(op, label, reason));
        }
        Ok(())
    }

    /// `t` as contiguous f32 on this communicator's device, resolved: the fusion tensor to
    /// return (same buffer) and its materialised form.
    fn resolve(
        &self,
        op: Op,
        label: OpLabel,
        t: Tensor<Cuda, 1>,
    ) -> Result<(Fused, CubeTensor<CudaRuntime>), CommError> {
        let device = t.device();
        if device.index != self.device.index {
            let reason = format!("tensor on cuda:{} but the communicator on cuda:{}", device.index, self.device.index);
            return Err(self.error(op, label, reason));
        }
        let t = if t.dtype() == DType::F32 { t } else { t.cast(FloatDType::F32) };
        let (keep, cube) = resolved(t);
        if cube.is_contiguous() {
            return Ok((keep, cube));
        }
        // A strided view (never the output of a cat): copy it into a fresh contiguous buffer.
        drop(cube);
        let (keep, cube) = resolved(Tensor::cat(vec![Tensor::from_primitive(TensorPrimitive::Float(keep))], 0));
        if !cube.is_contiguous() {
            return Err(self.error(op, label, "burn did not make the buffer contiguous".into()));
        }
        Ok((keep, cube))
    }

    /// The device address of `cube`'s `n` values, and the resource that pins the allocation
    /// (hold it until the collective returned).
    fn pointer(
        &self,
        op: Op,
        label: OpLabel,
        cube: &CubeTensor<CudaRuntime>,
        n: usize,
    ) -> Result<(u64, impl Sized + use<>), CommError> {
        let resource = cube
            .client
            .get_resource(cube.handle.clone())
            .map_err(|e| self.error(op, label, format!("the tensor's device memory: {e:?}")))?;
        let (ptr, size) = (resource.resource().ptr, resource.resource().size);
        let needed = n as u64 * F32_BYTES;
        if size < needed {
            return Err(self.error(op, label, format!("the tensor's buffer holds {size} bytes, {needed} needed")));
        }
        Ok((ptr, resource))
    }

    /// Waits for burn's work on the device so the buffers are complete (ordering step 2).
    fn sync(&self, op: Op, label: OpLabel) -> Result<(), CommError> {
        <Cuda as Backend>::sync(&self.device)
            .map_err(|e| self.error(op, label, format!("waiting for burn's kernels before the collective: {e:?}")))
    }
}

/// Resolves a tensor: the fusion tensor (kept, so fusion keeps its buffer) and its
/// materialised `CubeTensor` (drains the fusion queue).
fn resolved(t: Tensor<Cuda, 1>) -> (Fused, CubeTensor<CudaRuntime>) {
    let keep: Fused = t.into_primitive().tensor();
    let cube = keep.client.clone().resolve_tensor_float::<Inner>(keep.clone());
    (keep, cube)
}

impl DeviceCollective<Cuda> for NcclDevice {
    /// Quarter of the card's memory in f32 values: see [`NcclDevice::new`].
    fn max_bucket(&self) -> usize {
        self.max_bucket
    }

    fn all_reduce_sum(
        &mut self,
        flat: Tensor<Cuda, 1>,
        group: &mut dyn Collective,
    ) -> Result<Tensor<Cuda, 1>, CommError> {
        let (op, label) = (Op::AllReduce, self.label("gradients"));
        self.check_group(op, label, group)?;
        let n = flat.dims()[0];
        if n == 0 {
            return Ok(flat);
        }
        let (keep, cube) = self.resolve(op, label, flat)?;
        let (ptr, pinned) = self.pointer(op, label, &cube, n)?;
        self.sync(op, label)?;
        // SAFETY: `ptr` addresses the `n` f32 values of `cube`'s buffer (checked
        // against the allocation's size), in the device's primary context (the communicator's);
        // burn's kernels writing it have finished (`sync` above); the buffer is this call's
        // (fresh `cat` output, module docs) and nothing touches it until the wait inside returns.
        unsafe { self.comm.all_reduce_sum_f32(ptr, n, &label) }?;
        drop(pinned);
        drop(cube);
        self.step += 1;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(keep)))
    }

    fn all_gather(&mut self, local: Tensor<Cuda, 1>, group: &mut dyn Collective) -> Result<Tensor<Cuda, 1>, CommError> {
        let (op, label) = (Op::AllGather, self.label("embeddings"));
        self.check_group(op, label, group)?;
        let n = local.dims()[0];
        let total = n
            .checked_mul(self.comm.world_size())
            .ok_or_else(|| self.error(op, label, format!("{n} values × {} ranks overflow", self.comm.world_size())))?;
        if total == 0 {
            return Ok(Tensor::empty([0], (&self.device, DType::F32)));
        }
        let (_keep_in, cube_in) = self.resolve(op, label, local)?;
        let out = Tensor::<Cuda, 1>::empty([total], (&self.device, DType::F32));
        let (keep_out, cube_out) = resolved(out);
        let (send, send_pin) = self.pointer(op, label, &cube_in, n)?;
        let (recv, recv_pin) = self.pointer(op, label, &cube_out, total)?;
        self.sync(op, label)?;
        // SAFETY: `send` holds `n` and `recv` `total` f32 values (checked), disjoint (the output
        // is a fresh allocation), in the communicator's context; the input is complete (`sync`
        // above) and the output is written only by this collective before the wait returns.
        unsafe { self.comm.all_gather_f32(send, recv, n, &label) }?;
        drop((send_pin, recv_pin, cube_in, cube_out));
        Ok(Tensor::from_primitive(TensorPrimitive::Float(keep_out)))
    }
}
