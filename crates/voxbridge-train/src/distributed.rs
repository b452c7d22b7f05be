//! Data-parallel steps over a [`Collective`]: the global batch's rows placed on ranks
//! ([`Placement`]), each subject's ridge held and trained only by its owner ranks, the global
//! batch's embeddings gathered for the contrastive loss, shared gradients summed over all
//! ranks and each ridge's over its owners (a split-off communicator).

use std::collections::HashMap;
use std::ops::Range;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::nn::Linear;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use voxbridge_collective::Collective;
use voxbridge_model::MindEye2;

use voxbridge_data::sampler::{BalancedStreams, Stream};

use crate::adamw::{AdamW, ParamMoments};
use crate::step::{Layout, Piece, StepComm, WholeState};

/// Which rows of the global batch (`per_subject` rows of each subject, in subject order) each
/// rank trains. With no more ranks than subjects, every rank takes a contiguous run of whole
/// subjects (the first `subjects % world` one more); with more ranks than subjects, every
/// subject's share is split over a contiguous group of owner ranks (the first
/// `world % subjects` subjects get one more owner), each owner taking a contiguous part of the
/// share. A rank's rows are always contiguous in the global batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    per_subject: usize,
    subjects: usize,
    ranks: Vec<Vec<Piece>>,
}

impl Placement {
    pub fn new(subjects: usize, world: usize, per_subject: usize) -> Result<Self, String> {
        if world == 0 || subjects == 0 {
            return Err(format!("cannot place {subjects} subject(s) on {world} rank(s)"));
        }
        // `n` items in `parts` contiguous runs, the first `n % parts` one longer.
        let run = |n: usize, parts: usize, i: usize| {
            let (base, extra) = (n / parts, n % parts);
            let start = i * base + i.min(extra);
            start..start + base + usize::from(i < extra)
        };
        let ranks = if world <= subjects {
            (0..world)
                .map(|r| run(subjects, world, r).map(|subject| Piece { subject, rows: 0..per_subject }).collect())
                .collect()
        } else {
            let mut ranks = Vec::with_capacity(world);
            let (base, extra) = (world / subjects, world % subjects);
            for subject in 0..subjects {
                let owners = base + usize::from(subject < extra);
                if per_subject < owners {
                    return Err(format!(
                        "subject {subject}'s share of {per_subject} rows per batch cannot be split over {owners} \
                         ranks ({world} ranks for {subjects} subjects): raise train.batch_size or use fewer workers"
                    ));
                }
                ranks.extend((0..owners).map(|i| vec![Piece { subject, rows: run(per_subject, owners, i) }]));
            }
            ranks
        };
        Ok(Placement { per_subject, subjects, ranks })
    }

    pub fn world(&self) -> usize {
        self.ranks.len()
    }

    /// Rows of every share of the global batch.
    pub fn shares(&self) -> Vec<usize> {
        vec![self.per_subject; self.subjects]
    }

    pub fn pieces(&self, rank: usize) -> &[Piece] {
        &self.ranks[rank]
    }

    /// The subjects whose ridges `rank` holds, ascending.
    pub fn subjects_of(&self, rank: usize) -> Vec<usize> {
        self.ranks[rank].iter().map(|p| p.subject).collect()
    }

    /// The ranks holding `subject`'s ridge, ascending (never empty).
    pub fn owners(&self, subject: usize) -> Vec<usize> {
        (0..self.world()).filter(|&r| self.ranks[r].iter().any(|p| p.subject == subject)).collect()
    }

    pub fn rows_of(&self, rank: usize) -> usize {
        self.ranks[rank].iter().map(|p| p.rows.len()).sum()
    }

    /// The subject `rank` shares with other owners, if any (at most one by construction).
    pub fn split_subject(&self, rank: usize) -> Option<usize> {
        self.subjects_of(rank).into_iter().find(|&s| self.owners(s).len() > 1)
    }

    pub fn layout(&self, rank: usize) -> Layout {
        Layout { shares: self.shares(), pieces: self.ranks[rank].clone() }
    }
}

/// [`StepComm`] of one rank of a [`Placement`].
pub struct ShardComm<'a> {
    collective: &'a mut dyn Collective,
    placement: Placement,
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
    pub fn new(collective: &'a mut dyn Collective, placement: Placement) -> Result<Self, String> {
        let (rank, world) = (collective.rank(), collective.world_size());
        if placement.world() != world {
            return Err(format!("a placement for {} ranks on a world of {world}", placement.world()));
        }
        let split = placement.split_subject(rank);
        // Ranks sharing no subject get a color of their own (a group of one, never used).
        let color = split.map_or((placement.subjects + rank) as u64, |s| s as u64);
        let group = collective.split(color).map_err(|e| format!("forming the owner groups: {e}"))?;
        let group = split.map(|s| (s, group));
        Ok(ShardComm { collective, placement, group, step_timeout: None })
    }

    /// After the first step's gradient sync, every collective gets `timeout`.
    pub fn with_step_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.step_timeout = Some(timeout);
        self
    }
}

/// Burn paths of per-subject parameters: trained by their subject's owner ranks alone.
fn is_per_subject(path: &str) -> bool {
    path.starts_with("ridge.")
}

/// The subject index of a `ridge.linears.<k>.…` path.
fn ridge_subject(path: &str) -> Option<usize> {
    path.strip_prefix("ridge.linears.")?.split('.').next()?.parse().ok()
}

impl<B: AutodiffBackend> StepComm<B> for ShardComm<'_> {
    fn layout(&self) -> Option<Layout> {
        Some(self.placement.layout(self.collective.rank()))
    }

    /// Ranks may hold different numbers of rows: each pads to the largest, the padding is
    /// dropped after the all-gather.
    fn gather_rows(&mut self, mut local: Vec<f32>, width: usize) -> Result<Vec<f32>, String> {
        let world = self.collective.world_size();
        let most = (0..world).map(|r| self.placement.rows_of(r)).max().unwrap_or(0);
        local.resize(most * width, 0.0);
        let all = self.collective.all_gather(&local).map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(self.placement.shares().iter().sum::<usize>() * width);
        for r in 0..world {
            let start = r * most * width;
            out.extend_from_slice(&all[start..start + self.placement.rows_of(r) * width]);
        }
        Ok(out)
    }

    fn sum(&mut self, values: &mut [f32]) -> Result<(), String> {
        self.collective.all_reduce_sum(values).map_err(|e| e.to_string())
    }

    fn sync_gradients(&mut self, model: &MindEye2<B>, mut grads: GradientsParams) -> Result<GradientsParams, String> {
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
    ) -> Result<Option<WholeState<B>>, String> {
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

/// Sums the gradients of the parameters whose paths `select` picks over `collective`, in one
/// flat buffer (visiting order is the same on every rank: same architecture).
fn sum_gradients<B: AutodiffBackend>(
    model: &MindEye2<B>,
    grads: &mut GradientsParams,
    select: &dyn Fn(&str) -> bool,
    collective: &mut dyn Collective,
) -> Result<(), String> {
    let mut flat = Flatten::<B> { grads, select, path: Vec::new(), buffer: Vec::new(), slots: HashMap::new() };
    model.visit(&mut flat);
    let Flatten { grads, mut buffer, slots, .. } = flat;
    collective.all_reduce_sum(&mut buffer).map_err(|e| e.to_string())?;
    model.visit(&mut Restore::<B> { grads, buffer: &buffer, slots: &slots });
    Ok(())
}

/// Each subject's sample stream from its first owner, in subject order (every owner of a split
/// subject holds the same stream).
fn broadcast_streams(
    streams: &BalancedStreams,
    collective: &mut dyn Collective,
    placement: &Placement,
) -> Result<Vec<Stream>, String> {
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
            bytes = serde_json::to_vec(&chosen).map_err(|e| e.to_string())?;
        }
        collective.broadcast(&mut bytes, root).map_err(|e| e.to_string())?;
        let part: Vec<Stream> = serde_json::from_slice(&bytes).map_err(|e| format!("streams of rank {root}: {e}"))?;
        all.extend(part);
    }
    Ok(all)
}

/// The model with every subject's ridge, on the writer (rank 0; `None` elsewhere): each ridge
/// is broadcast from its first owner (for the final evaluation and the saved model).
pub fn gather_model<B: AutodiffBackend>(
    model: &MindEye2<B>,
    collective: &mut dyn Collective,
    placement: &Placement,
) -> Result<Option<MindEye2<B>>, String> {
    Ok(gather_ridges(model, &[], collective, placement)?.map(|(m, _)| m))
}

/// The model with every subject's ridge, and those ridges' AdamW moments.
type WholeRidges<B> = (MindEye2<B>, Vec<ParamMoments>);

/// Every subject's ridge (with its AdamW moments, those of `exported` under its path) from its
/// first owner, assembled on rank 0. The other ranks pass the bytes along the ring and drop them.
fn gather_ridges<B: AutodiffBackend>(
    model: &MindEye2<B>,
    exported: &[ParamMoments],
    collective: &mut dyn Collective,
    placement: &Placement,
) -> Result<Option<WholeRidges<B>>, String> {
    let rank = collective.rank();
    let device = model.backbone.backbone_linear.weight.device();
    let mut whole = (rank == 0).then(|| model.clone());
    let mut moments = Vec::new();
    for subject in 0..placement.subjects {
        let root = placement.owners(subject)[0];
        let mut bytes = Vec::new();
        if root == rank {
            let linear =
                model.ridge.linear(subject).ok_or_else(|| format!("rank {rank} lacks subject {subject}'s ridge"))?;
            let prefix = format!("ridge.linears.{subject}.");
            bytes = encode_ridge(linear, exported.iter().filter(|m| m.path.starts_with(&prefix)));
        }
        collective.broadcast(&mut bytes, root).map_err(|e| e.to_string())?;
        let Some(whole) = whole.as_mut() else { continue };
        let mut ridge = decode_ridge(&bytes).map_err(|e| format!("subject {subject}'s ridge from rank {root}: {e}"))?;
        let ridge_moments = std::mem::take(&mut ridge.moments);
        if whole.ridge.linear(subject).is_none() {
            whole.ridge.linears[subject] = Some(ridge.linear::<B>(&device));
        }
        moments.extend(ridge_moments.into_iter().map(|mut m| {
            m.path = format!("ridge.linears.{subject}.{}", m.path);
            m
        }));
    }
    Ok(whole.map(|w| (w, moments)))
}

/// A ridge on the wire: weight `[V, hidden]`, bias `[hidden]`, then the moments of those of
/// them that have any. Little-endian: `u64` counts, then `f32` values.
fn encode_ridge<'m, B: AutodiffBackend>(
    linear: &Linear<B>,
    moments: impl Iterator<Item = &'m ParamMoments>,
) -> Vec<u8> {
    let host = |t: Tensor<B, 2>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
    let weight = host(linear.weight.val());
    let [inputs, hidden] = linear.weight.dims();
    let bias = linear.bias.as_ref().map(|b| host(b.val().unsqueeze::<2>())).unwrap_or_default();
    let mut out = Vec::with_capacity(4 * (weight.len() + bias.len()) + 64);
    let put_u64 = |out: &mut Vec<u8>, v: u64| out.extend_from_slice(&v.to_le_bytes());
    let put_values = |out: &mut Vec<u8>, values: &[f32]| {
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    };
    put_u64(&mut out, inputs as u64);
    put_u64(&mut out, hidden as u64);
    put_u64(&mut out, bias.len() as u64);
    put_values(&mut out, &weight);
    put_values(&mut out, &bias);
    let moments: Vec<&ParamMoments> = moments.collect();
    put_u64(&mut out, moments.len() as u64);
    for m in moments {
        let leaf = m.path.rsplit('.').next().unwrap_or("");
        put_u64(&mut out, u64::from(leaf == "bias"));
        put_u64(&mut out, m.steps as u64);
        put_values(&mut out, &m.exp_avg);
        put_values(&mut out, &m.exp_avg_sq);
    }
    out
}

struct DecodedRidge {
    shape: [usize; 2],
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    /// Paths relative to the ridge (`weight`, `bias`).
    moments: Vec<ParamMoments>,
}

impl DecodedRidge {
    fn linear<B: AutodiffBackend>(self, device: &B::Device) -> Linear<B> {
        let weight = Tensor::<B, 2>::from_data(TensorData::new(self.weight, self.shape), device);
        let bias = self.bias.map(|b| {
            let n = b.len();
            Param::from_tensor(Tensor::<B, 1>::from_data(TensorData::new(b, [n]), device))
        });
        Linear { weight: Param::from_tensor(weight), bias }
    }
}

/// Reads [`encode_ridge`]'s format, with the byte offset in errors.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let part = self
            .bytes
            .get(self.at..self.at + n)
            .ok_or_else(|| format!("truncated at byte {} of {}", self.at, self.bytes.len()))?;
        self.at += n;
        Ok(part)
    }

    fn count(&mut self) -> Result<usize, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as usize)
    }

    fn values(&mut self, n: usize) -> Result<Vec<f32>, String> {
        Ok(self.take(4 * n)?.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

fn decode_ridge(bytes: &[u8]) -> Result<DecodedRidge, String> {
    let mut r = Reader { bytes, at: 0 };
    let (inputs, hidden, bias_len) = (r.count()?, r.count()?, r.count()?);
    let weight = r.values(inputs * hidden)?;
    let bias = if bias_len > 0 { Some(r.values(bias_len)?) } else { None };
    let count = r.count()?;
    let mut moments = Vec::with_capacity(count);
    for _ in 0..count {
        let is_bias = r.count()? == 1;
        let steps = r.count()? as i32;
        let (path, shape) = if is_bias { ("bias", vec![bias_len]) } else { ("weight", vec![inputs, hidden]) };
        let n: usize = shape.iter().product();
        let (exp_avg, exp_avg_sq) = (r.values(n)?, r.values(n)?);
        moments.push(ParamMoments { path: path.into(), shape, exp_avg, exp_avg_sq, steps });
    }
    if r.at != bytes.len() {
        return Err(format!("{} bytes left over", bytes.len() - r.at));
    }
    Ok(DecodedRidge { shape: [inputs, hidden], weight, bias, moments })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(p: &Placement) -> Vec<Vec<(usize, Range<usize>)>> {
        (0..p.world()).map(|r| p.pieces(r).iter().map(|x| (x.subject, x.rows.clone())).collect()).collect()
    }

    #[test]
    fn no_more_ranks_than_subjects_gives_contiguous_whole_subjects() {
        let p = Placement::new(7, 3, 6).unwrap();
        assert_eq!(p.subjects_of(0), [0, 1, 2]);
        assert_eq!(p.subjects_of(1), [3, 4]);
        assert_eq!(p.subjects_of(2), [5, 6]);
        assert!(pieces(&p).iter().flatten().all(|(_, rows)| *rows == (0..6)));
        assert_eq!(Placement::new(3, 1, 4).unwrap().subjects_of(0), [0, 1, 2]);
        assert!((0..7).all(|s| p.owners(s).len() == 1 && p.split_subject(p.owners(s)[0]).is_none()));
    }

    #[test]
    fn more_ranks_than_subjects_split_shares_over_owner_groups() {
        // 8 GPUs for 7 subjects: subject 0 on ranks 0–1 (3 rows each), the others alone.
        let p = Placement::new(7, 8, 6).unwrap();
        assert_eq!(pieces(&p)[0], [(0, 0..3)]);
        assert_eq!(pieces(&p)[1], [(0, 3..6)]);
        assert_eq!(pieces(&p)[7], [(6, 0..6)]);
        assert_eq!(p.owners(0), [0, 1]);
        assert_eq!((p.split_subject(0), p.split_subject(1), p.split_subject(2)), (Some(0), Some(0), None));
        // Fine-tuning one subject on 3 workers: rows 8, 8, 8 of 24.
        let p = Placement::new(1, 3, 24).unwrap();
        assert_eq!(pieces(&p), [vec![(0, 0..8)], vec![(0, 8..16)], vec![(0, 16..24)]]);
        assert_eq!(p.layout(1).row_start(), 8);
        // Rows stay contiguous and cover the global batch exactly once.
        for (subjects, world, per) in [(2, 5, 4), (3, 7, 5), (7, 16, 6)] {
            let p = Placement::new(subjects, world, per).unwrap();
            let mut next = 0;
            for r in 0..world {
                let layout = p.layout(r);
                assert_eq!(layout.row_start(), next, "{subjects}/{world}/{per} rank {r}");
                next += layout.local_rows();
                assert!(layout.local_rows() > 0);
            }
            assert_eq!(next, subjects * per);
        }
    }

    #[test]
    fn a_share_smaller_than_its_owner_group_is_refused_naming_the_batch_size() {
        let err = Placement::new(1, 4, 3).unwrap_err();
        assert!(err.contains("3 rows per batch cannot be split over 4 ranks"), "{err}");
        assert!(err.contains("train.batch_size"), "{err}");
    }
}
