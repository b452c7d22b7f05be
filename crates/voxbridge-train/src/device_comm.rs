//! Collectives on tensors, where the tensors live. A data-parallel step moves two kinds of data
//! between ranks: the shared gradients (one flat buffer, summed) and the contrastive losses'
//! embeddings (gathered). [`DeviceCollective`] is that interface; [`HostStaged`] implements it
//! for any backend by one device→host copy, the TCP ring and one host→device copy per call;
//! the NCCL implementation (feature `nccl`, `crate::nccl_device`) works on CUDA device memory
//! without host staging.
//!
//! Gradients are flattened into buckets of at most [`DeviceCollective::max_bucket`] values
//! (lavapipe's storage buffers hold at most 128 MiB; CUDA's allocator pages a quarter of the
//! card), so a step makes one call per bucket: one for every model but the released one.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use voxbridge_collective::Collective;

use crate::error::CommError;

/// 32 Mi f32 values (128 MiB): the largest buffer every wgpu adapter binds (lavapipe's limit).
pub const HOST_STAGED_BUCKET: usize = 32 << 20;

/// All-reduce and all-gather of flat f32 tensors of backend `B` over a group of ranks.
pub trait DeviceCollective<B: Backend> {
    /// The most values one call takes; longer buffers are split by the caller.
    fn max_bucket(&self) -> usize;
    /// `flat` `[n]` summed element-wise over every rank of `group` (the ranks' communicator;
    /// implementations with a device communicator of their own use it only for naming).
    fn all_reduce_sum(&mut self, flat: Tensor<B, 1>, group: &mut dyn Collective) -> Result<Tensor<B, 1>, CommError>;
    /// Every rank's `local` `[n]` (all the same length), concatenated in rank order: `[world·n]`.
    fn all_gather(&mut self, local: Tensor<B, 1>, group: &mut dyn Collective) -> Result<Tensor<B, 1>, CommError>;
}

/// Through host memory: one device→host copy, the group's own (TCP) collective, one
/// host→device copy. On the CPU backend the copies are memcpys.
#[derive(Debug, Clone, Copy)]
pub struct HostStaged {
    pub max_bucket: usize,
}

impl Default for HostStaged {
    fn default() -> Self {
        HostStaged { max_bucket: HOST_STAGED_BUCKET }
    }
}

fn to_host<B: Backend>(t: Tensor<B, 1>) -> Vec<f32> {
    let data = t.into_data();
    match data.dtype {
        burn::tensor::DType::F32 => data.into_vec::<f32>().unwrap_or_default(),
        _ => data.convert::<f32>().into_vec::<f32>().unwrap_or_default(),
    }
}

impl<B: Backend> DeviceCollective<B> for HostStaged {
    fn max_bucket(&self) -> usize {
        self.max_bucket
    }

    fn all_reduce_sum(&mut self, flat: Tensor<B, 1>, group: &mut dyn Collective) -> Result<Tensor<B, 1>, CommError> {
        let device = flat.device();
        let mut host = to_host(flat);
        group.all_reduce_sum(&mut host)?;
        let n = host.len();
        Ok(Tensor::from_data(TensorData::new(host, [n]), &device))
    }

    fn all_gather(&mut self, local: Tensor<B, 1>, group: &mut dyn Collective) -> Result<Tensor<B, 1>, CommError> {
        let device = local.device();
        let all = group.all_gather(&to_host(local))?;
        let n = all.len();
        Ok(Tensor::from_data(TensorData::new(all, [n]), &device))
    }
}
