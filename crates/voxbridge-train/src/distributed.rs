//! Data-parallel steps over a [`Collective`]: subjects sharded over ranks, the global batch's
//! embeddings gathered for the contrastive loss, shared gradients summed, each subject's ridge
//! trained only on the rank that holds the subject.

use std::collections::HashMap;
use std::ops::Range;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use voxbridge_collective::Collective;
use voxbridge_model::MindEye2;

use voxbridge_data::sampler::{BalancedStreams, Stream};

use crate::adamw::{AdamW, ParamMoments};
use crate::step::{StepComm, WholeState};

/// Subjects (in order) split over `world` ranks as contiguous runs, the first `n % world` ranks
/// taking one more. Every rank gets at least one subject.
pub fn assign_subjects(subjects: usize, world: usize) -> Result<Vec<Range<usize>>, String> {
    if world == 0 || subjects < world {
        return Err(format!(
            "{subjects} training subject(s) cannot be sharded over {world} rank(s): each rank needs a subject of its own"
        ));
    }
    let (base, extra) = (subjects / world, subjects % world);
    let mut start = 0;
    Ok((0..world)
        .map(|r| {
            let n = base + usize::from(r < extra);
            let range = start..start + n;
            start += n;
            range
        })
        .collect())
}

/// [`StepComm`] of one rank: the global batch is `per_subject` rows of every subject, this
/// rank's subjects are `assignment[rank]`.
pub struct ShardComm<'a> {
    collective: &'a mut dyn Collective,
    shares: Vec<usize>,
    assignment: Vec<Range<usize>>,
    /// Deadline of every collective after the first step (which keeps the longer start-up one).
    step_timeout: Option<std::time::Duration>,
}

impl std::fmt::Debug for ShardComm<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardComm").field("shares", &self.shares).field("assignment", &self.assignment).finish()
    }
}

impl<'a> ShardComm<'a> {
    pub fn new(collective: &'a mut dyn Collective, shares: Vec<usize>, assignment: Vec<Range<usize>>) -> Self {
        ShardComm { collective, shares, assignment, step_timeout: None }
    }

    /// After the first step's gradient sync, every collective gets `timeout`.
    pub fn with_step_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.step_timeout = Some(timeout);
        self
    }

    fn rows_of(&self, rank: usize) -> usize {
        self.shares[self.assignment[rank].clone()].iter().sum()
    }
}

/// Burn paths of per-subject parameters: trained by their subject's rank alone.
fn is_per_subject(path: &str) -> bool {
    path.starts_with("ridge.")
}

impl<B: AutodiffBackend> StepComm<B> for ShardComm<'_> {
    fn layout(&self) -> Option<(Vec<usize>, Range<usize>)> {
        Some((self.shares.clone(), self.assignment[self.collective.rank()].clone()))
    }

    /// Ranks may hold different numbers of rows: each pads to the largest, the padding is
    /// dropped after the all-gather.
    fn gather_rows(&mut self, mut local: Vec<f32>, width: usize) -> Result<Vec<f32>, String> {
        let world = self.collective.world_size();
        let most = (0..world).map(|r| self.rows_of(r)).max().unwrap_or(0);
        local.resize(most * width, 0.0);
        let all = self.collective.all_gather(&local).map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(self.shares.iter().sum::<usize>() * width);
        for r in 0..world {
            let start = r * most * width;
            out.extend_from_slice(&all[start..start + self.rows_of(r) * width]);
        }
        Ok(out)
    }

    fn sum(&mut self, values: &mut [f32]) -> Result<(), String> {
        self.collective.all_reduce_sum(values).map_err(|e| e.to_string())
    }

    fn sync_gradients(&mut self, model: &MindEye2<B>, mut grads: GradientsParams) -> Result<GradientsParams, String> {
        let mut flat = Flatten::<B> { grads: &mut grads, path: Vec::new(), buffer: Vec::new(), slots: HashMap::new() };
        model.visit(&mut flat);
        let Flatten { mut buffer, slots, .. } = flat;
        self.collective.all_reduce_sum(&mut buffer).map_err(|e| e.to_string())?;
        let mut restore = Restore::<B> { grads: &mut grads, buffer: &buffer, slots: &slots };
        model.visit(&mut restore);
        if let Some(timeout) = self.step_timeout.take() {
            self.collective.set_timeout(timeout);
        }
        Ok(grads)
    }

    fn whole_state(
        &mut self,
        model: &MindEye2<B>,
        optim: &AdamW<B>,
        streams: &BalancedStreams,
    ) -> Result<WholeState<B>, String> {
        let rank = self.collective.rank();
        let whole = share_subject_weights(model.clone(), &mut *self.collective, &self.assignment)?;
        // Moments: shared parameters' are the same on every rank; each ridge's come from its owner.
        let mine = self.assignment[rank].clone();
        let local = optim.export(model);
        let mut moments: Vec<ParamMoments> =
            local.iter().filter(|m| ridge_subject(&m.path).is_none()).cloned().collect();
        let mut sites = Vec::new();
        model.visit(&mut RidgeSites::<B> { path: Vec::new(), sites: &mut sites, _b: std::marker::PhantomData });
        let mut flat = Vec::new();
        for (path, shape) in &sites {
            let n: usize = shape.iter().product();
            let own =
                local.iter().find(|m| &m.path == path && mine.contains(&ridge_subject(path).unwrap_or(usize::MAX)));
            match own {
                Some(m) => {
                    flat.extend_from_slice(&m.exp_avg);
                    flat.extend_from_slice(&m.exp_avg_sq);
                    flat.push(m.steps as f32);
                }
                None => flat.extend(std::iter::repeat_n(0.0, 2 * n + 1)),
            }
        }
        self.collective.all_reduce_sum(&mut flat).map_err(|e| e.to_string())?;
        let mut offset = 0;
        for (path, shape) in sites {
            let n: usize = shape.iter().product();
            let steps = flat[offset + 2 * n] as i32;
            if steps > 0 {
                moments.push(ParamMoments {
                    path,
                    shape,
                    exp_avg: flat[offset..offset + n].to_vec(),
                    exp_avg_sq: flat[offset + n..offset + 2 * n].to_vec(),
                    steps,
                });
            }
            offset += 2 * n + 1;
        }
        // Streams: each rank broadcasts its subjects' positions and orders in turn.
        let mut all_streams = Vec::new();
        for root in 0..self.collective.world_size() {
            let mut bytes =
                if root == rank { serde_json::to_vec(streams.state()).map_err(|e| e.to_string())? } else { Vec::new() };
            self.collective.broadcast(&mut bytes, root).map_err(|e| e.to_string())?;
            let part: Vec<Stream> =
                serde_json::from_slice(&bytes).map_err(|e| format!("streams of rank {root}: {e}"))?;
            all_streams.extend(part);
        }
        Ok(WholeState { model: whole, moments, streams: all_streams })
    }

    fn is_writer(&self) -> bool {
        self.collective.rank() == 0
    }
}

/// Path and shape of every ridge parameter, in module order.
struct RidgeSites<'a, B> {
    path: Vec<String>,
    sites: &'a mut Vec<(String, Vec<usize>)>,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for RidgeSites<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let path = self.path.join(".");
        if ridge_subject(&path).is_some() {
            self.sites.push((path, param.val().dims().to_vec()));
        }
    }
}

/// Where each shared gradient sits in the flat buffer: range, shape, device.
type Slots<B> =
    HashMap<ParamId, (Range<usize>, Vec<usize>, burn::tensor::Device<<B as AutodiffBackend>::InnerBackend>)>;

/// Moves the gradients of shared parameters into one buffer, in visiting order (the same on
/// every rank: same architecture).
struct Flatten<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
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
        if is_per_subject(&self.path.join(".")) {
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

/// Gives every rank every subject's trained ridge: each rank trained only its own subjects'
/// ridges, so the owner's values are summed with zeros from the others. Afterwards every rank
/// holds the model one process would have trained (for evaluation and saving).
pub fn share_subject_weights<B: AutodiffBackend>(
    model: MindEye2<B>,
    collective: &mut dyn Collective,
    assignment: &[Range<usize>],
) -> Result<MindEye2<B>, String> {
    let mine = assignment.get(collective.rank()).cloned().unwrap_or(0..0);
    let mut gather = SubjectValues::<B> { path: Vec::new(), mine, values: Vec::new(), _b: std::marker::PhantomData };
    model.visit(&mut gather);
    let mut flat: Vec<f32> = gather.values.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    collective.all_reduce_sum(&mut flat).map_err(|e| e.to_string())?;
    let mut offset = 0;
    let mut by_path = HashMap::new();
    for (path, v) in gather.values {
        by_path.insert(path, flat[offset..offset + v.len()].to_vec());
        offset += v.len();
    }
    Ok(model.map(&mut SetValues::<B> { path: Vec::new(), values: by_path, _b: std::marker::PhantomData }))
}

/// The subject index of a `ridge.linears.<k>.…` path.
fn ridge_subject(path: &str) -> Option<usize> {
    path.strip_prefix("ridge.linears.")?.split('.').next()?.parse().ok()
}

struct SubjectValues<B> {
    path: Vec<String>,
    mine: Range<usize>,
    values: Vec<(String, Vec<f32>)>,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SubjectValues<B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let path = self.path.join(".");
        let Some(subject) = ridge_subject(&path) else { return };
        let mut values = param.val().into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
        if !self.mine.contains(&subject) {
            values.iter_mut().for_each(|v| *v = 0.0);
        }
        self.values.push((path, values));
    }
}

struct SetValues<B> {
    path: Vec<String>,
    values: HashMap<String, Vec<f32>>,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for SetValues<B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some(values) = self.values.remove(&self.path.join(".")) else { return param };
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let shape = tensor.dims();
        let mut updated = Tensor::<B, D>::from_data(TensorData::new(values, shape), &tensor.device());
        if require_grad {
            updated = updated.require_grad();
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_split_contiguously_with_the_remainder_first() {
        assert_eq!(assign_subjects(7, 2).unwrap(), [0..4, 4..7]);
        assert_eq!(assign_subjects(7, 3).unwrap(), [0..3, 3..5, 5..7]);
        assert_eq!(assign_subjects(2, 2).unwrap(), [0..1, 1..2]);
        assert_eq!(assign_subjects(3, 1).unwrap(), vec![0..3]);
        let err = assign_subjects(1, 2).unwrap_err();
        assert!(err.contains("each rank needs a subject"), "{err}");
    }
}
