//! [`NcclCollective`]: all-reduce and all-gather of f32 buffers through NCCL (cudarc, loaded
//! at run time), with a [`TcpRing`] alongside for the bootstrap (rank 0's NCCL unique id is
//! broadcast over it), byte broadcasts, barriers and sequence numbers.
//!
//! Buffers are staged through host memory (burn 0.21 exposes no device pointer of its
//! tensors). NCCL calls carry no deadline of their own yet: a hung peer is caught by the TCP
//! ring's deadline at the next control operation and by the coordinator's heartbeats. Built in
//! CI (`--features nccl`); run only where a GPU is lent.

use std::ffi::c_char;
use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::{Comm, Id, ReduceOp};

use crate::{Collective, CollectiveError, Result, TcpRing};

pub struct NcclCollective {
    control: TcpRing,
    stream: Arc<CudaStream>,
    comm: Comm,
    device: usize,
}

impl std::fmt::Debug for NcclCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclCollective").field("control", &self.control).finish()
    }
}

fn backend(what: &str, e: impl std::fmt::Debug) -> CollectiveError {
    CollectiveError::Backend(format!("{what}: {e:?}"))
}

impl NcclCollective {
    /// Joins the NCCL communicator of the ring's ranks on CUDA device `device`.
    pub fn new(mut control: TcpRing, device: usize) -> Result<Self> {
        let context = CudaContext::new(device).map_err(|e| backend(&format!("CUDA device {device}"), e))?;
        let stream = context.default_stream();
        let mut id = if control.rank() == 0 {
            let id = Id::new().map_err(|e| backend("ncclGetUniqueId", e))?;
            id.internal().iter().map(|&c| c as u8).collect()
        } else {
            Vec::new()
        };
        control.broadcast(&mut id, 0)?;
        if id.len() != 128 {
            return Err(CollectiveError::Setup(format!("NCCL unique id of {} bytes, expected 128", id.len())));
        }
        let mut internal = [0 as c_char; 128];
        for (d, s) in internal.iter_mut().zip(&id) {
            *d = *s as c_char;
        }
        let comm = Comm::from_rank(stream.clone(), control.rank(), control.world_size(), Id::uninit(internal))
            .map_err(|e| backend("ncclCommInitRank", e))?;
        Ok(NcclCollective { control, stream, comm, device })
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.control.rank()
    }

    fn world_size(&self) -> usize {
        self.control.world_size()
    }

    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<()> {
        let mut device = self.stream.clone_htod(data).map_err(|e| backend("host to device", e))?;
        self.comm.all_reduce_in_place(&mut device, &ReduceOp::Sum).map_err(|e| backend("ncclAllReduce", e))?;
        let host = self.stream.clone_dtoh(&device).map_err(|e| backend("device to host", e))?;
        data.copy_from_slice(&host);
        Ok(())
    }

    fn all_gather(&mut self, local: &[f32]) -> Result<Vec<f32>> {
        let send = self.stream.clone_htod(local).map_err(|e| backend("host to device", e))?;
        let mut recv = self
            .stream
            .alloc_zeros::<f32>(local.len() * self.world_size())
            .map_err(|e| backend("device allocation", e))?;
        self.comm.all_gather(&send, &mut recv).map_err(|e| backend("ncclAllGather", e))?;
        self.stream.clone_dtoh(&recv).map_err(|e| backend("device to host", e))
    }

    fn broadcast(&mut self, data: &mut Vec<u8>, root: usize) -> Result<()> {
        self.control.broadcast(data, root)
    }

    fn barrier(&mut self) -> Result<()> {
        self.control.barrier()
    }

    fn set_timeout(&mut self, timeout: Duration) {
        self.control.set_timeout(timeout);
    }

    fn next_seq(&self) -> u64 {
        self.control.next_seq()
    }

    /// A sub-ring of the control ring, then a new NCCL communicator over it (its unique id
    /// travels over the sub-ring).
    fn split(&mut self, color: u64) -> Result<Box<dyn Collective>> {
        let control = self.control.split_ring(color)?;
        Ok(Box::new(NcclCollective::new(control, self.device)?))
    }
}
