//! [`ShardComm`]: the [`StepComm`] of one rank of a data-parallel run over a [`Collective`].
//! The rank trains its rows of the global batch ([`Placement`]) and holds only its subjects'
//! ridges; the global batch's embeddings are gathered for the contrastive losses, shared
//! gradients summed over all ranks and each split subject's ridge gradients over its owners (a
//! split-off communicator).
//!
//! Data movement per step, where the tensors live ([`DeviceCollective`]): the shared gradients
//! are flattened on the device into buckets of at most `max_bucket` values, in the model's
//! visiting order (identical on every rank: same architecture), one all-reduce per bucket, and
//! split back as views; the contrastive embeddings are all-gathered as one flat tensor each.
//! A split subject's ridge gradients (one `[hidden, voxels]` matrix) go over the owners'
//! sub-communicator through host memory.

use std::collections::HashMap;
use std::ops::Range;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use voxbridge_collective::Collective;
use voxbridge_model::MindEye2;
use voxbridge_model::losses::LossWeights;
use voxbridge_placement::{Layout, Placement};

use crate::adamw::{AdamW, ParamMoments};
use crate::comm::{StepComm, WholeState};
use crate::device_comm::{DeviceCollective, HostStaged};
use crate::error::CommError;
use crate::ridge_wire::{gather_ridges, ridge_subject};
use crate::sampler::{BalancedStreams, Stream};
use crate::step::StepReport;

/// [`StepComm`] of one rank of a [`Placement`].
pub struct ShardComm<'a, B: AutodiffBackend> {
    collective: &'a mut dyn Collective,
    /// How tensors reach the other ranks: through host memory, or NCCL on the device.
    device_comm: Box<dyn DeviceCollective<B::InnerBackend> + 'a>,
    placement: Placement,
    /// This rank's rows of the global batch.
    layout: Layout,
    /// The owner ranks of the subject this rank shares with others: its ridge gradients are
    /// summed over them.
    group: Option<(usize, Box<dyn Collective>)>,
    /// Deadline of every collective after the first step (which keeps the longer start-up one).
    step_timeout: Option<std::time::Duration>,
}

impl<B: AutodiffBackend> std::fmt::Debug for ShardComm<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardComm")
            .field("placement", &self.placement)
            .field("group", &self.group.as_ref().map(|(s, _)| s))
            .finish()
    }
}

impl<'a, B: AutodiffBackend> ShardComm<'a, B> {
    /// Joins this rank's owner group (a collective of all ranks: every rank must call it).
    /// Tensors travel through host memory; see [`with_device_comm`](Self::with_device_comm).
    pub fn new(collective: &'a mut dyn Collective, placement: Placement) -> Result<Self, CommError> {
        let (rank, world) = (collective.rank(), collective.world_size());
        if placement.world() != world {
            return Err(CommError::WorldMismatch { placement: placement.world(), world });
        }
        let split = placement.split_subject(rank);
        // Ranks sharing no subject get a color of their own (a group of one, never used).
        let subjects = placement.shares().len();
        let color = split.map_or((subjects + rank) as u64, |s| s as u64);
        let group = collective.split(color).map_err(|error| CommError::OwnerGroups { error })?;
        let group = split.map(|s| (s, group));
        let layout = placement.layout(rank);
        Ok(ShardComm {
            collective,
            device_comm: Box::new(HostStaged::default()),
            placement,
            layout,
            group,
            step_timeout: None,
        })
    }

    /// Moves gradients and embeddings with `device_comm` (NCCL on CUDA) instead of through host
    /// memory.
    pub fn with_device_comm(mut self, device_comm: Box<dyn DeviceCollective<B::InnerBackend> + 'a>) -> Self {
        self.device_comm = device_comm;
        self
    }

    /// After the first step's gradient sync, every collective gets `timeout`.
    pub fn with_step_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.step_timeout = Some(timeout);
        self
    }

    fn global_rows(&self) -> usize {
        self.layout.shares.iter().sum()
    }

    /// Every rank's `rows × width` values `[rows, width]`, concatenated in global row order,
    /// as a constant on the device. Ranks may hold different numbers of rows: each pads to the
    /// largest, the padding is dropped after the all-gather.
    fn gather_rows(&mut self, local: Tensor<B, 2>) -> Result<Tensor<B::InnerBackend, 2>, CommError> {
        let world = self.collective.world_size();
        let most = (0..world).map(|r| self.placement.rows_of(r)).max().unwrap_or(0);
        let [rows, width] = local.dims();
        let local = local.detach().inner();
        let device = local.device();
        let mut flat = local.reshape([rows * width]);
        if most > rows {
            flat = Tensor::cat(vec![flat, Tensor::zeros([(most - rows) * width], &device)], 0);
        }
        let all = self.device_comm.all_gather(flat, &mut *self.collective)?.reshape([world * most, width]);
        let parts: Vec<_> = (0..world).map(|r| all.clone().narrow(0, r * most, self.placement.rows_of(r))).collect();
        Ok(Tensor::cat(parts, 0))
    }
}

/// Burn paths of per-subject parameters: trained by their subject's owner ranks alone.
fn is_per_subject(path: &str) -> bool {
    path.starts_with("ridge.")
}

impl<B: AutodiffBackend> StepComm<B> for ShardComm<'_, B> {
    fn layout(&self, _held: &[usize]) -> Layout {
        self.layout.clone()
    }

    fn rank_key(&self) -> u64 {
        voxbridge_seed::rank_key(self.layout.row_start())
    }

    fn among_all_rows(&mut self, local: Tensor<B, 2>) -> Result<Tensor<B, 2>, CommError> {
        let (start, total) = (self.layout.row_start(), self.global_rows());
        let n = local.dims()[0];
        let all = self.gather_rows(local.clone())?;
        let mut parts = Vec::with_capacity(3);
        if start > 0 {
            parts.push(Tensor::from_inner(all.clone().narrow(0, 0, start)));
        }
        parts.push(local);
        if total > start + n {
            parts.push(Tensor::from_inner(all.narrow(0, start + n, total - start - n)));
        }
        Ok(Tensor::cat(parts, 0))
    }

    fn all_rows(&mut self, local: Tensor<B, 2>) -> Result<Tensor<B, 2>, CommError> {
        Ok(Tensor::from_inner(self.gather_rows(local)?))
    }

    fn per_sample_share(&self, loss: Tensor<B, 1>) -> Tensor<B, 1> {
        let row_share = self.layout.local_rows() as f64 / self.global_rows().max(1) as f64;
        loss * row_share
    }

    fn reduce_report(&mut self, mut report: StepReport, weights: &LossWeights) -> Result<StepReport, CommError> {
        let mut parts = [report.prior.unwrap_or(0.0) as f32, report.blur.unwrap_or(0.0) as f32];
        self.collective.all_reduce_sum(&mut parts)?;
        report.prior = report.prior.map(|_| f64::from(parts[0]));
        report.blur = report.blur.map(|_| f64::from(parts[1]));
        report.total = report.weighted_total(weights);
        Ok(report)
    }

    fn sum(&mut self, values: &mut [f32]) -> Result<(), CommError> {
        Ok(self.collective.all_reduce_sum(values)?)
    }

    fn sync_gradients(
        &mut self,
        model: &MindEye2<B>,
        mut grads: GradientsParams,
    ) -> Result<GradientsParams, CommError> {
        // Shared parameters: summed over every rank.
        let shared = |path: &str| !is_per_subject(path);
        sum_gradients(model, &mut grads, &shared, &mut *self.device_comm, &mut *self.collective)?;
        // The split subject's ridge: summed over its owners only.
        if let Some((subject, group)) = self.group.as_mut() {
            let own = |path: &str| ridge_subject(path) == Some(*subject);
            sum_gradients(model, &mut grads, &own, &mut HostStaged::default(), &mut **group)?;
        }
        if let Some(timeout) = self.step_timeout.take() {
            self.collective.set_timeout(timeout);
            if let Some((_, group)) = self.group.as_mut() {
                group.set_timeout(timeout);
            }
        }
        Ok(grads)
    }

    fn whole_state(
        &mut self,
        model: &MindEye2<B>,
        optim: &AdamW<B>,
        streams: &BalancedStreams,
    ) -> Result<Option<WholeState<B>>, CommError> {
        // The writer needs every moment; the other ranks only their ridges' (to send).
        let exported = if self.collective.rank() == 0 {
            optim.export(model)
        } else {
            optim.export_matching(model, &|path| ridge_subject(path).is_some())
        };
        let gathered = gather_ridges(model, &exported, &mut *self.collective, &self.placement)?;
        let streams = broadcast_streams(streams, &mut *self.collective, &self.placement)?;
        let Some((whole, ridge_moments)) = gathered else { return Ok(None) };
        // Shared parameters' moments are the same on every rank; the ridges' came from owners.
        let mut moments: Vec<ParamMoments> =
            exported.into_iter().filter(|m| ridge_subject(&m.path).is_none()).collect();
        moments.extend(ridge_moments);
        Ok(Some(WholeState { model: whole, moments, streams }))
    }

    fn is_writer(&self) -> bool {
        self.collective.rank() == 0
    }
}

/// Sums the gradients of the parameters whose paths `select` picks over `group`: flattened on
/// the device in visiting order (the same on every rank: same architecture) into buckets of at
/// most `device_comm.max_bucket()` values, one all-reduce per bucket, split back as views.
fn sum_gradients<B: AutodiffBackend>(
    model: &MindEye2<B>,
    grads: &mut GradientsParams,
    select: &dyn Fn(&str) -> bool,
    device_comm: &mut dyn DeviceCollective<B::InnerBackend>,
    group: &mut dyn Collective,
) -> Result<(), CommError> {
    let mut flat = Flatten::<B> { grads, select, path: Vec::new(), parts: Vec::new() };
    model.visit(&mut flat);
    let Flatten { grads, parts, .. } = flat;
    let mut slots = HashMap::new();
    for bucket in buckets(&parts.iter().map(|p| p.len).collect::<Vec<_>>(), device_comm.max_bucket()) {
        let pieces: Vec<_> = parts[bucket.clone()].iter().map(|p| p.values.clone()).collect();
        let summed = device_comm.all_reduce_sum(Tensor::cat(pieces, 0), group)?;
        let mut offset = 0;
        for part in &parts[bucket] {
            slots.insert(part.id, (summed.clone().narrow(0, offset, part.len), part.shape.clone()));
            offset += part.len;
        }
    }
    model.visit(&mut Restore::<B> { grads, slots });
    Ok(())
}

/// Consecutive runs of `lens` whose sums stay within `max` (a longer single entry gets a run of
/// its own): the buckets of one all-reduce each.
fn buckets(lens: &[usize], max: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, &len) in lens.iter().enumerate() {
        if i > start && size + len > max {
            out.push(start..i);
            (start, size) = (i, 0);
        }
        size += len;
    }
    if start < lens.len() {
        out.push(start..lens.len());
    }
    out
}

/// Each subject's sample stream from its first owner, in subject order (every owner of a split
/// subject holds the same stream).
fn broadcast_streams(
    streams: &BalancedStreams,
    collective: &mut dyn Collective,
    placement: &Placement,
) -> Result<Vec<Stream>, CommError> {
    let rank = collective.rank();
    let mut all = Vec::new();
    for root in 0..collective.world_size() {
        let firsts: Vec<usize> =
            placement.subjects_of(root).into_iter().filter(|&s| placement.owners(s)[0] == root).collect();
        if firsts.is_empty() {
            continue;
        }
        let mut bytes = Vec::new();
        if root == rank {
            // This rank's streams are its subjects', in order.
            let mine = placement.subjects_of(rank);
            let chosen: Vec<&Stream> =
                mine.iter().zip(streams.state()).filter(|(s, _)| firsts.contains(s)).map(|(_, st)| st).collect();
            bytes = serde_json::to_vec(&chosen).map_err(|error| CommError::Streams { root, error })?;
        }
        collective.broadcast(&mut bytes, root)?;
        let part: Vec<Stream> = serde_json::from_slice(&bytes).map_err(|error| CommError::Streams { root, error })?;
        all.extend(part);
    }
    Ok(all)
}

/// One selected gradient, flattened (a view on the device).
struct FlatPart<B: AutodiffBackend> {
    id: ParamId,
    values: Tensor<B::InnerBackend, 1>,
    len: usize,
    shape: Vec<usize>,
}

/// Takes the gradients of the selected parameters out of `grads`, flattened, in visiting order.
struct Flatten<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    select: &'a dyn Fn(&str) -> bool,
    path: Vec<String>,
    parts: Vec<FlatPart<B>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !(self.select)(&self.path.join(".")) {
            return;
        }
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) else { return };
        let shape = grad.dims().to_vec();
        let len = shape.iter().product();
        self.parts.push(FlatPart { id: param.id, values: grad.reshape([len]), len, shape });
    }
}

/// Puts the summed gradients back, reshaped to their parameters' shapes.
struct Restore<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    slots: HashMap<ParamId, (Tensor<B::InnerBackend, 1>, Vec<usize>)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Restore<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some((flat, shape)) = self.slots.remove(&param.id) else { return };
        let shape: [usize; D] = shape.try_into().expect("a parameter's gradient has the parameter's rank");
        self.grads.register::<B::InnerBackend, D>(param.id, flat.reshape(shape));
    }
}

#[cfg(test)]
mod tests {
    use super::buckets;

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // the expected lists of buckets are ranges
    fn buckets_keep_order_and_stay_within_the_limit() {
        assert_eq!(buckets(&[3, 3, 3, 3], 6), [0..2, 2..4]);
        assert_eq!(buckets(&[3, 10, 1, 1], 6), [0..1, 1..2, 2..4], "an oversized gradient gets a bucket of its own");
        assert_eq!(buckets(&[5], 6), [0..1]);
        assert_eq!(buckets(&[], 6), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(buckets(&[1, 2, 3], usize::MAX), [0..3], "one all-reduce when everything fits");
    }
}
