//! [`ShardComm`]: the [`StepComm`] of one rank of a data-parallel run over a [`Collective`].
//! The rank trains its rows of the global batch ([`Placement`]) and holds only its subjects'
//! ridges; the global batch's embeddings are gathered for the contrastive losses, shared
//! gradients summed over all ranks and each split subject's ridge gradients over its owners (a
//! split-off communicator).

use std::collections::HashMap;
use std::ops::Range;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use voxbridge_collective::Collective;
use voxbridge_model::MindEye2;
use voxbridge_model::losses::LossWeights;
use voxbridge_placement::{Layout, Placement};

use crate::adamw::{AdamW, ParamMoments};
use crate::comm::{StepComm, WholeState};
use crate::error::CommError;
use crate::ridge_wire::{gather_ridges, ridge_subject};
use crate::sampler::{BalancedStreams, Stream};
use crate::step::StepReport;

/// [`StepComm`] of one rank of a [`Placement`].
pub struct ShardComm<'a> {
    collective: &'a mut dyn Collective,
    placement: Placement,
    /// This rank's rows of the global batch.
    layout: Layout,
    /// The owner ranks of the subject this rank shares with others: its ridge gradients are
    /// summed over them.
    group: Option<(usize, Box<dyn Collective>)>,
    /// Deadline of every collective after the first step (which keeps the longer start-up one).
    step_timeout: Option<std::time::Duration>,
}

impl std::fmt::Debug for ShardComm<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardComm")
            .field("placement", &self.placement)
            .field("group", &self.group.as_ref().map(|(s, _)| s))
            .finish()
    }
}

impl<'a> ShardComm<'a> {
    /// Joins this rank's owner group (a collective of all ranks: every rank must call it).
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
        Ok(ShardComm { collective, placement, layout, group, step_timeout: None })
    }

    /// After the first step's gradient sync, every collective gets `timeout`.
    pub fn with_step_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.step_timeout = Some(timeout);
        self
    }

    fn global_rows(&self) -> usize {
        self.layout.shares.iter().sum()
    }

    /// Every rank's `rows × width` values, concatenated in global row order. Ranks may hold
    /// different numbers of rows: each pads to the largest, the padding is dropped after the
    /// all-gather.
    fn gather_rows(&mut self, mut local: Vec<f32>, width: usize) -> Result<Vec<f32>, CommError> {
        let world = self.collective.world_size();
        let most = (0..world).map(|r| self.placement.rows_of(r)).max().unwrap_or(0);
        local.resize(most * width, 0.0);
        let all = self.collective.all_gather(&local)?;
        let mut out = Vec::with_capacity(self.global_rows() * width);
        for r in 0..world {
            let start = r * most * width;
            out.extend_from_slice(&all[start..start + self.placement.rows_of(r) * width]);
        }
        Ok(out)
    }
}

/// Burn paths of per-subject parameters: trained by their subject's owner ranks alone.
fn is_per_subject(path: &str) -> bool {
    path.starts_with("ridge.")
}

impl<B: AutodiffBackend> StepComm<B> for ShardComm<'_> {
    fn layout(&self, _held: &[usize]) -> Layout {
        self.layout.clone()
    }

    fn rank_key(&self) -> u64 {
        voxbridge_seed::rank_key(self.layout.row_start())
    }

    fn among_all_rows(&mut self, local: Tensor<B, 2>) -> Result<Tensor<B, 2>, CommError> {
        let (start, total) = (self.layout.row_start(), self.global_rows());
        let [n, width] = local.dims();
        let device = local.device();
        let all = self.gather_rows(host_values(local.clone().detach()), width)?;
        let constant = |values: &[f32], rows: usize| {
            Tensor::<B, 2>::from_data(TensorData::new(values.to_vec(), [rows, width]), &device)
        };
        let mut parts = Vec::with_capacity(3);
        if start > 0 {
            parts.push(constant(&all[..start * width], start));
        }
        parts.push(local);
        if total > start + n {
            parts.push(constant(&all[(start + n) * width..], total - start - n));
        }
        Ok(Tensor::cat(parts, 0))
    }

    fn all_rows(&mut self, local: Tensor<B, 2>) -> Result<Tensor<B, 2>, CommError> {
        let width = local.dims()[1];
        let device = local.device();
        let all = self.gather_rows(host_values(local), width)?;
        Ok(Tensor::<B, 2>::from_data(TensorData::new(all, [self.global_rows(), width]), &device))
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
        sum_gradients(model, &mut grads, &shared, &mut *self.collective)?;
        // The split subject's ridge: summed over its owners only.
        if let Some((subject, group)) = self.group.as_mut() {
            let own = |path: &str| ridge_subject(path) == Some(*subject);
            sum_gradients(model, &mut grads, &own, &mut **group)?;
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

fn host_values<B: AutodiffBackend>(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default()
}

/// Sums the gradients of the parameters whose paths `select` picks over `collective`, in one
/// flat buffer (visiting order is the same on every rank: same architecture).
fn sum_gradients<B: AutodiffBackend>(
    model: &MindEye2<B>,
    grads: &mut GradientsParams,
    select: &dyn Fn(&str) -> bool,
    collective: &mut dyn Collective,
) -> Result<(), CommError> {
    let mut flat = Flatten::<B> { grads, select, path: Vec::new(), buffer: Vec::new(), slots: HashMap::new() };
    model.visit(&mut flat);
    let Flatten { grads, mut buffer, slots, .. } = flat;
    collective.all_reduce_sum(&mut buffer)?;
    model.visit(&mut Restore::<B> { grads, buffer: &buffer, slots: &slots });
    Ok(())
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

/// Where each selected gradient sits in the flat buffer: range, shape, device.
type Slots<B> =
    HashMap<ParamId, (Range<usize>, Vec<usize>, burn::tensor::Device<<B as AutodiffBackend>::InnerBackend>)>;

/// Moves the gradients of the selected parameters into one buffer, in visiting order.
struct Flatten<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    select: &'a dyn Fn(&str) -> bool,
    path: Vec<String>,
    buffer: Vec<f32>,
    slots: Slots<B>,
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
        let (shape, device) = (grad.dims().to_vec(), grad.device());
        let values = grad.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
        let range = self.buffer.len()..self.buffer.len() + values.len();
        self.buffer.extend_from_slice(&values);
        self.slots.insert(param.id, (range, shape, device));
    }
}

/// Puts the summed gradients back.
struct Restore<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    buffer: &'a [f32],
    slots: &'a Slots<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Restore<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some((range, shape, device)) = self.slots.get(&param.id) else { return };
        let data = TensorData::new(self.buffer[range.clone()].to_vec(), shape.clone());
        self.grads.register::<B::InnerBackend, D>(param.id, Tensor::from_data(data, device));
    }
}
