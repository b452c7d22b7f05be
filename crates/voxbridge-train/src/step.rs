//! One MindEye2 training step, written out: draw the step's randomness, forward, losses,
//! backward, gradient synchronisation, optimizer step. Everything random comes from
//! `(seed, step)`, so a run is reproducible and every rank of a distributed run can draw the
//! same numbers.

use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution, StandardNormal};
use voxbridge_data::sampler::{BalancedStreams, mix64};
use voxbridge_model::MindEye2;
use voxbridge_model::losses::{
    LossTerms, LossWeights, MixcoDraw, l1_loss, l2_normalize, mixco_nce, mixco_voxels, soft_clip_loss, soft_cont_loss,
};
use voxbridge_model::prior::CondKeep;

use crate::adamw::AdamW;

/// Temperature of the low-level soft contrastive term (`utils.soft_cont_loss(..., temp=0.2)`).
pub const BLUR_CONT_TEMPERATURE: f64 = 0.2;

/// Keys the stream the augmented teacher views are picked from.
const TEACHER_STREAM: u64 = 0x7EAC_4E55_A06D_1E55;

/// One subject's share of a batch.
#[derive(Debug, Clone)]
pub struct SubjectBatch<B: AutodiffBackend> {
    /// Index of the subject's ridge in the model.
    pub subject: usize,
    /// `[b, V_s]`.
    pub voxels: Tensor<B, 2>,
    /// CLIP tokens of the images shown, `[b, T, D]`.
    pub clip_target: Tensor<B, 3>,
    /// Low-level (VAE) latents of the images, `[b, C, H, W]`, when the model has the branch.
    pub blur_target: Option<Tensor<B, 4>>,
    /// Teacher features of the images, `[b, 1 + A, P, W]`: the clean image's, then A fixed
    /// augmented views (P positions × W wide, the low-level branch's `[s·s, W]` features), when
    /// the data has them; with the low-level branch they train its soft contrastive term.
    pub teacher: Option<Tensor<B, 4>>,
}

/// A batch: equal shares per subject, in subject order (spec §2.3).
#[derive(Debug, Clone)]
pub struct Batch<B: AutodiffBackend> {
    pub subjects: Vec<SubjectBatch<B>>,
}

/// Which contrastive loss this epoch uses (BiMixCo for the first third of training).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ContrastivePhase {
    /// Voxels mixed within each subject; labels from the draw (perms not offset, as released).
    BiMixCo {
        temperature: f64,
    },
    SoftClip {
        temperature: f64,
    },
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    pub total: f64,
    pub clip: f64,
    pub prior: Option<f64>,
    /// L1 of the low-level latent.
    pub blur: Option<f64>,
    /// The low-level soft contrastive term (unweighted), when the batch has teacher features.
    pub blur_cont: Option<f64>,
}

/// Why a step stopped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("step {step}: loss `{term}` is {value} (not finite); stopping before the optimizer step")]
pub struct NonFiniteLoss {
    pub step: u64,
    pub term: &'static str,
    pub value: f64,
}

/// Why a step failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    NonFinite(#[from] NonFiniteLoss),
    /// Talking to the other ranks failed (timeout, desync, a peer gone).
    #[error("step {step}: {message}")]
    Comm { step: u64, message: String },
    /// The batch does not fit the model (teacher features of another size than the branch's).
    #[error("step {step}: {message}")]
    Data { step: u64, message: String },
}

/// A rank's part of one subject's share of the global batch: rows `rows` of share `subject`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Position of the share in the global batch (the subject's ridge index).
    pub subject: usize,
    pub rows: std::ops::Range<usize>,
}

/// Where a rank's rows sit in the global batch: the global batch is the concatenation of the
/// subjects' shares in subject order; a rank holds a contiguous run of rows of it, as pieces —
/// whole shares, or part of one share when a subject is split over several ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Rows of every share of the global batch.
    pub shares: Vec<usize>,
    /// This rank's pieces, in global row order.
    pub pieces: Vec<Piece>,
}

impl Layout {
    /// The whole batch on one process.
    pub fn whole(shares: Vec<usize>) -> Self {
        let pieces = shares.iter().enumerate().map(|(subject, &n)| Piece { subject, rows: 0..n }).collect();
        Layout { shares, pieces }
    }

    /// Global row of this rank's first row.
    pub fn row_start(&self) -> usize {
        self.pieces.first().map_or(0, |p| self.shares[..p.subject].iter().sum::<usize>() + p.rows.start)
    }

    /// Rows this rank holds.
    pub fn local_rows(&self) -> usize {
        self.pieces.iter().map(|p| p.rows.len()).sum()
    }
}

/// How a step reaches the other ranks of a data-parallel run. A single process is [`Alone`].
pub trait StepComm<B: AutodiffBackend> {
    /// This rank's rows of the global batch; `None` for a single process (the batch is the
    /// global batch). The batch a rank passes to [`train_step`] holds its subjects' *whole*
    /// shares (mixing partners may be another rank's rows); the step keeps its pieces.
    fn layout(&self) -> Option<Layout>;
    /// Every rank's `rows × width` values, concatenated in global row order.
    fn gather_rows(&mut self, local: Vec<f32>, width: usize) -> Result<Vec<f32>, String>;
    /// Element-wise sum over ranks.
    fn sum(&mut self, values: &mut [f32]) -> Result<(), String>;
    /// Gradients of the shared parameters summed over all ranks; each ridge's summed over its
    /// subject's owner ranks.
    fn sync_gradients(&mut self, model: &MindEye2<B>, grads: GradientsParams) -> Result<GradientsParams, String>;
    /// The whole run's state as one process would hold it — every subject's ridge, its AdamW
    /// moments and its sample stream from the rank that owns it — on the writer (for
    /// checkpoints); `None` on the other ranks. Every rank must call it at the same step.
    fn whole_state(
        &mut self,
        model: &MindEye2<B>,
        optim: &AdamW<B>,
        streams: &BalancedStreams,
    ) -> Result<Option<WholeState<B>>, String>;
    /// Whether this rank writes checkpoints and the run directory (rank 0).
    fn is_writer(&self) -> bool;
}

/// See [`StepComm::whole_state`].
pub struct WholeState<B: AutodiffBackend> {
    pub model: MindEye2<B>,
    pub moments: Vec<crate::adamw::ParamMoments>,
    pub streams: Vec<voxbridge_data::sampler::Stream>,
}

/// A single process: nothing to exchange.
#[derive(Debug, Default)]
pub struct Alone;

impl<B: AutodiffBackend> StepComm<B> for Alone {
    fn layout(&self) -> Option<Layout> {
        None
    }
    fn gather_rows(&mut self, local: Vec<f32>, _: usize) -> Result<Vec<f32>, String> {
        Ok(local)
    }
    fn sum(&mut self, _: &mut [f32]) -> Result<(), String> {
        Ok(())
    }
    fn sync_gradients(&mut self, _: &MindEye2<B>, grads: GradientsParams) -> Result<GradientsParams, String> {
        Ok(grads)
    }
    fn whole_state(
        &mut self,
        model: &MindEye2<B>,
        optim: &AdamW<B>,
        streams: &BalancedStreams,
    ) -> Result<Option<WholeState<B>>, String> {
        Ok(Some(WholeState { model: model.clone(), moments: optim.export(model), streams: streams.state().to_vec() }))
    }
    fn is_writer(&self) -> bool {
        true
    }
}

/// Forward, losses, backward, gradient synchronisation (nothing on one process; the sum over
/// ranks in a data-parallel run), AdamW with this step's learning rate and β1 and
/// `weight_decay(burn path)` per parameter (usually
/// [`mindeye2_weight_decay`](crate::mindeye2_weight_decay)).
///
/// Data-parallel runs train the model one process would train on the global batch: every random
/// draw is made for the global batch and sliced; the contrastive loss is computed on the
/// gathered embeddings of the whole batch (other ranks' rows as constants), so each rank's
/// backward yields its rows' share of the exact gradient; per-sample losses are scaled by the
/// rank's share of the rows; the shared gradients are summed.
#[allow(clippy::too_many_arguments)]
pub fn train_step<B: AutodiffBackend>(
    model: MindEye2<B>,
    optim: &mut AdamW<B>,
    batch: Batch<B>,
    phase: ContrastivePhase,
    weights: &LossWeights,
    (lr, beta1): (f64, f64),
    (seed, step): (u64, u64),
    weight_decay: &dyn Fn(&str) -> f64,
    comm: &mut dyn StepComm<B>,
) -> Result<(MindEye2<B>, StepReport), StepError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let device = batch.subjects.first().map(|s| s.voxels.device()).unwrap_or_default();
    let comm_err = |message: String| StepError::Comm { step, message };

    // Where this rank's rows sit in the global batch.
    let local_sizes: Vec<usize> = batch.subjects.iter().map(|s| s.voxels.dims()[0]).collect();
    let distributed = comm.layout();
    let layout = distributed.clone().unwrap_or_else(|| Layout::whole(local_sizes.clone()));
    let distributed = distributed.is_some();
    let row_start = layout.row_start();
    // Dropout draws from the backend's generator: reseeding it at every step after the first
    // makes step s's masks a function of (seed, s) alone, which is what an exact resume needs
    // (each rank of a data-parallel run mixes in its first row, so ranks draw different masks).
    // Step 0 keeps the stream the trainer seeded, from which lazily initialised weights are
    // drawn during its forward pass.
    if step > 0 {
        let rank_key = if distributed { mix64(row_start as u64 + 1) } else { 0 };
        B::seed(&device, mix64(seed ^ mix64(step)) ^ rank_key);
    }
    let whole_shares: Vec<usize> = layout.pieces.iter().map(|p| layout.shares[p.subject]).collect();
    if whole_shares != local_sizes {
        return Err(comm_err(format!(
            "the batch holds shares of {local_sizes:?} rows; this rank's pieces {:?} need whole shares of {whole_shares:?}",
            layout.pieces
        )));
    }
    let local_rows = layout.local_rows();
    let global_rows: usize = layout.shares.iter().sum();

    // 1. Inputs: BiMixCo mixes each subject's voxels with a partner from the same subject's
    //    share (which may be another rank's row: every owner holds the whole share). The draws
    //    are made for every share of the global batch, in order.
    let global_draws: Vec<MixcoDraw> = match phase {
        ContrastivePhase::BiMixCo { .. } => layout.shares.iter().map(|&n| mixco_draw(n, &mut rng)).collect(),
        ContrastivePhase::SoftClip { .. } => Vec::new(),
    };
    let mut ridge_outs = Vec::new();
    let mut targets = Vec::new();
    let mut blur_targets = Vec::new();
    let mut teachers = Vec::new();
    for (piece, share) in layout.pieces.iter().zip(batch.subjects) {
        let voxels = match global_draws.get(piece.subject) {
            Some(draw) => mixco_voxels(share.voxels, draw),
            None => share.voxels,
        };
        let (start, len) = (piece.rows.start, piece.rows.len());
        ridge_outs.push(model.ridge.forward(share.subject, voxels.narrow(0, start, len))); // [b, h]
        targets.push(share.clip_target.narrow(0, start, len)); // [b, T, D]
        blur_targets.extend(share.blur_target.map(|t| t.narrow(0, start, len))); // [b, C, H, W]
        teachers.extend(share.teacher.map(|t| t.narrow(0, start, len))); // [b, 1 + A, P, W]
    }
    let clip_target = Tensor::cat(targets, 0); // [b_local, T, D]
    let draw = (!global_draws.is_empty()).then(|| MixcoDraw::concat(&global_draws, false));

    // 2. Forward through the shared backbone.
    let out = model.backbone.forward(Tensor::cat(ridge_outs, 0)); // [b_local, T, D] ×2

    // 3. Losses. The contrastive loss sees the whole global batch [B, T·D].
    let mut preds = l2_normalize(out.clip_voxels.flatten::<2>(1, 2));
    let mut targs = l2_normalize(clip_target.clone().flatten::<2>(1, 2));
    if distributed {
        preds = among_all_rows(comm, preds, row_start, global_rows).map_err(comm_err)?; // [B, T·D]
        targs = all_rows(comm, targs, global_rows).map_err(comm_err)?; // [B, T·D]
    }
    let clip = match phase {
        ContrastivePhase::BiMixCo { temperature } => mixco_nce(preds, targs, temperature, draw.as_ref(), true),
        ContrastivePhase::SoftClip { temperature } => soft_clip_loss(preds, targs, temperature),
    };
    // Per-sample losses: this rank's mean, weighted by its share of the rows, sums to the
    // global mean over ranks.
    let row_share = local_rows as f64 / global_rows.max(1) as f64;
    let prior = model.prior.as_ref().map(|prior| {
        let [_, tokens, dim] = clip_target.dims();
        let t: Vec<usize> = (0..global_rows).map(|_| rng.random_range(0..prior.schedule.timesteps)).collect();
        let noise: Vec<f32> = (0..global_rows * tokens * dim).map(|_| StandardNormal.sample(&mut rng)).collect();
        let p = prior.net.config.cond_drop_prob;
        let keep = CondKeep::sample(global_rows, p, p, &mut || rng.random::<f64>());
        let rows = row_start..row_start + local_rows;
        let noise = noise[rows.start * tokens * dim..rows.end * tokens * dim].to_vec();
        let noise = Tensor::<B, 3>::from_data(TensorData::new(noise, [local_rows, tokens, dim]), &device);
        let keep = CondKeep { brain: keep.brain[rows.clone()].to_vec(), image: keep.image[rows.clone()].to_vec() };
        let loss = prior.p_losses(clip_target.clone(), &t[rows], out.backbone.clone(), noise, &keep).1;
        if distributed { loss * row_share } else { loss }
    });
    // The low-level branch, once, when something trains it.
    let low_out = match &model.low_level {
        Some(low) if !blur_targets.is_empty() || !teachers.is_empty() => Some(low.forward(out.mixer_out.clone())),
        _ => None,
    };
    // Low-level L1 against the VAE latents, mixed like the voxels during BiMixCo — with the
    // concatenated, un-offset perms, as released (spec §2.1 [QUIRK]): a row's partner may be
    // in another subject's share, so a data-parallel rank mixes the gathered global latents
    // and keeps its rows.
    let blur_l1 = match (&low_out, blur_targets.is_empty()) {
        (Some(low_out), false) => {
            let local = Tensor::cat(blur_targets, 0); // [b_local, C, H, W]
            let shape = local.dims();
            let target = match &draw {
                Some(draw) => {
                    let width = shape[1] * shape[2] * shape[3];
                    let flat = local.flatten::<2>(1, 3); // [b_local, C·H·W]
                    let global = if distributed {
                        let values = flat.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
                        let all = comm.gather_rows(values, width).map_err(comm_err)?;
                        Tensor::<B, 2>::from_data(TensorData::new(all, [global_rows, width]), &device)
                    } else {
                        flat
                    };
                    mixco_voxels(global, draw).narrow(0, row_start, local_rows).reshape(shape)
                }
                None => local,
            };
            let loss = l1_loss(low_out.blurry_latent.clone(), target);
            Some(if distributed { loss * row_share } else { loss })
        }
        _ => None,
    };
    // The low-level soft contrastive term (spec §2.1): student = the l2-normalised rows of the
    // branch's features `[B·P, W]`; teachers = the l2-normalised clean teacher rows and those of
    // one augmented view per image, picked for this step. As in Train.ipynb the teachers are
    // each row's own image's, never mixed (BiMixCo mixes only the voxels and the VAE latents).
    // Like the CLIP contrastive loss it spans the whole global batch: a data-parallel rank
    // gathers every rank's rows, its own differentiable.
    let blur_cont = match (&low_out, teachers.is_empty()) {
        (Some(low_out), false) => {
            let local = Tensor::cat(teachers, 0); // [b_local, 1 + A, P, W]
            let [_, views, positions, width] = local.dims();
            let features = low_out.blurry_features.clone(); // [b_local, P', W']
            let [_, model_positions, model_width] = features.dims();
            if (model_positions, model_width) != (positions, width) || views < 2 {
                return Err(StepError::Data {
                    step,
                    message: format!(
                        "teacher features are {views} views of [{positions}, {width}]; the low-level branch makes \
                         [{model_positions}, {model_width}] and needs the clean view plus ≥ 1 augmented one"
                    ),
                });
            }
            let picks = teacher_pick(seed, step, global_rows, views - 1);
            let index = |rows: Vec<i64>| Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [local_rows]), &device);
            let clean = index((0..local_rows).map(|i| (i * views) as i64).collect());
            let aug = index((0..local_rows).map(|i| (i * views + 1 + picks[row_start + i]) as i64).collect());
            let flat = local.reshape([local_rows * views, positions * width]); // [b_local·(1 + A), P·W]
            let rows = local_rows * positions;
            let teacher = l2_normalize(flat.clone().select(0, clean).reshape([rows, width])); // [b_local·P, W]
            let teacher_aug = l2_normalize(flat.select(0, aug).reshape([rows, width])); // [b_local·P, W]
            let student = l2_normalize(features.reshape([rows, width])); // [b_local·P, W]
            let (student, teacher, teacher_aug) = if distributed {
                // Exchanged a sample (P·W values) per row, as the other gathers are.
                let per_sample = |t: Tensor<B, 2>| t.reshape([local_rows, positions * width]);
                let rows_of = |t: Tensor<B, 2>| t.reshape([global_rows * positions, width]); // [B·P, W]
                (
                    rows_of(among_all_rows(comm, per_sample(student), row_start, global_rows).map_err(comm_err)?),
                    rows_of(all_rows(comm, per_sample(teacher), global_rows).map_err(comm_err)?),
                    rows_of(all_rows(comm, per_sample(teacher_aug), global_rows).map_err(comm_err)?),
                )
            } else {
                (student, teacher, teacher_aug)
            };
            Some(soft_cont_loss(student, teacher, teacher_aug, BLUR_CONT_TEMPERATURE))
        }
        _ => None,
    };
    let terms = LossTerms { prior, clip, blur_l1, blur_cont };
    let total = terms.total(weights);
    let scalar =
        |t: &Tensor<B, 1>| t.clone().into_data().convert::<f64>().to_vec::<f64>().map(|v| v[0]).unwrap_or(f64::NAN);
    let mut report = StepReport {
        total: scalar(&total),
        clip: scalar(&terms.clip),
        prior: terms.prior.as_ref().map(scalar),
        blur: terms.blur_l1.as_ref().map(scalar),
        blur_cont: terms.blur_cont.as_ref().map(scalar),
    };
    if distributed {
        // The step's losses as one process would report them: the contrastive losses (CLIP and
        // the low-level soft contrastive term) are already global; the per-sample parts are
        // summed over ranks.
        let mut parts = [report.prior.unwrap_or(0.0) as f32, report.blur.unwrap_or(0.0) as f32];
        comm.sum(&mut parts).map_err(comm_err)?;
        report.prior = report.prior.map(|_| f64::from(parts[0]));
        report.blur = report.blur.map(|_| f64::from(parts[1]));
        report.total = report.clip * weights.clip
            + report.prior.map_or(0.0, |p| p * weights.prior)
            + report.blur.map_or(0.0, |b| b * weights.blur)
            + report.blur_cont.map_or(0.0, |c| c * weights.blur_aux * weights.blur);
    }
    let checked = [
        ("total", Some(report.total)),
        ("clip", Some(report.clip)),
        ("prior", report.prior),
        ("blur", report.blur),
        ("blur_cont", report.blur_cont),
    ];
    for (term, value) in checked {
        if let Some(value) = value
            && !value.is_finite()
        {
            return Err(NonFiniteLoss { step, term, value }.into());
        }
    }

    // 4. Backward, gradient sync, optimizer step.
    let grads = GradientsParams::from_grads(total.backward(), &model);
    let grads = comm.sync_gradients(&model, grads).map_err(comm_err)?;
    let model = optim.step(model, grads, lr, beta1, weight_decay);
    Ok((model, report))
}

/// Which augmented teacher view (`0..augs`) each of the global batch's `rows` uses at `step`:
/// MindEye2 draws a fresh augmentation of every image each step; voxbridge stores `augs` fixed
/// views per image and picks one per row and step. From a stream of its own, so the step's
/// other draws are the same with or without teacher features.
pub fn teacher_pick(seed: u64, step: u64, rows: usize, augs: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(mix64(mix64(seed ^ mix64(step)) ^ TEACHER_STREAM));
    (0..rows).map(|_| rng.random_range(0..augs.max(1))).collect()
}

/// This rank's rows `local` `[n, width]` among every rank's: `[total, width]` in global row
/// order, rows `start..start + n` being `local` itself (differentiable), the others constants.
fn among_all_rows<B: AutodiffBackend>(
    comm: &mut dyn StepComm<B>,
    local: Tensor<B, 2>,
    start: usize,
    total: usize,
) -> Result<Tensor<B, 2>, String> {
    let [n, width] = local.dims();
    let device = local.device();
    let all = comm.gather_rows(host_values(local.clone().detach()), width)?;
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

/// Every rank's rows of `local` `[n, width]`, as one constant `[total, width]`.
fn all_rows<B: AutodiffBackend>(
    comm: &mut dyn StepComm<B>,
    local: Tensor<B, 2>,
    total: usize,
) -> Result<Tensor<B, 2>, String> {
    let width = local.dims()[1];
    let device = local.device();
    let all = comm.gather_rows(host_values(local), width)?;
    Ok(Tensor::<B, 2>::from_data(TensorData::new(all, [total, width]), &device))
}

fn host_values<B: AutodiffBackend>(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default()
}

/// `utils.mixco`'s draw: a random permutation, β ~ Beta(0.15, 0.15), selected with p = 0.5;
/// unselected rows get β = 1.
pub fn mixco_draw(n: usize, rng: &mut ChaCha8Rng) -> MixcoDraw {
    let mut perm: Vec<usize> = (0..n).collect();
    rand::seq::SliceRandom::shuffle(perm.as_mut_slice(), rng);
    let beta = Beta::new(0.15, 0.15).expect("valid Beta parameters");
    let select: Vec<bool> = (0..n).map(|_| rng.random::<f64>() <= 0.5).collect();
    let betas = select.iter().map(|&s| if s { beta.sample(rng) as f32 } else { 1.0 }).collect();
    MixcoDraw { perm, betas, select }
}
