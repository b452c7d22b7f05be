//! One MindEye2 training step, written out: draw the step's randomness, forward, losses,
//! backward, gradient synchronisation, optimizer step. Everything random comes from
//! `(seed, step)` ([`voxbridge_seed`]), so a run is reproducible and every rank of a distributed
//! run can draw the same numbers. What a data-parallel rank does differently sits behind the
//! [`StepComm`] hooks, the identity on one process.

use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution, StandardNormal};
use voxbridge_model::losses::{
    LossTerms, LossWeights, MixcoDraw, l1_loss, l2_normalize, mixco_nce, mixco_voxels, soft_clip_loss, soft_cont_loss,
};
use voxbridge_model::lowlevel::LowLevelOutput;
use voxbridge_model::prior::{CondKeep, DiffusionPrior};
use voxbridge_model::{BackboneOutput, MindEye2};
use voxbridge_placement::Layout;

use crate::adamw::AdamW;
use crate::comm::StepComm;
use crate::error::{BatchError, CommError, NonFiniteLoss, StepError};

/// Temperature of the low-level soft contrastive term (`utils.soft_cont_loss(..., temp=0.2)`).
pub const BLUR_CONT_TEMPERATURE: f64 = 0.2;

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

/// Everything one step needs besides the model, its optimizer, the batch and the other ranks:
/// where the step stands in the run and the rules the run trains with.
#[derive(Clone, Copy)]
pub struct StepContext<'a> {
    /// The run's seed; with `step` it keys every random draw of the step.
    pub seed: u64,
    /// The step's index in the run (0-based): the schedule's position and the draws' counter.
    pub step: u64,
    /// This epoch's contrastive loss and its temperature.
    pub phase: ContrastivePhase,
    /// How the loss terms weigh in the total that is back-propagated.
    pub loss_weights: &'a LossWeights,
    /// AdamW's learning rate at this step (OneCycle).
    pub lr: f64,
    /// AdamW's β1 at this step (OneCycle cycles it as momentum).
    pub beta1: f64,
    /// The weight decay of the parameter at a burn module path (usually
    /// [`mindeye2_weight_decay`](crate::mindeye2_weight_decay), scaled).
    pub weight_decay: &'a dyn Fn(&str) -> f64,
}

impl std::fmt::Debug for StepContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepContext")
            .field("seed", &self.seed)
            .field("step", &self.step)
            .field("phase", &self.phase)
            .field("loss_weights", self.loss_weights)
            .field("lr", &self.lr)
            .field("beta1", &self.beta1)
            .finish_non_exhaustive()
    }
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

impl StepReport {
    /// The values of the step's loss tensors.
    fn read<B: AutodiffBackend>(terms: &LossTerms<B>, total: &Tensor<B, 1>) -> Self {
        let scalar =
            |t: &Tensor<B, 1>| t.clone().into_data().convert::<f64>().to_vec::<f64>().map(|v| v[0]).unwrap_or(f64::NAN);
        StepReport {
            total: scalar(total),
            clip: scalar(&terms.clip),
            prior: terms.prior.as_ref().map(scalar),
            blur: terms.blur_l1.as_ref().map(scalar),
            blur_cont: terms.blur_cont.as_ref().map(scalar),
        }
    }

    /// The total of the reported terms with `weights`, as [`LossTerms::total`] weighs them (for
    /// a report whose terms were summed over ranks).
    pub fn weighted_total(&self, weights: &LossWeights) -> f64 {
        self.clip * weights.clip
            + self.prior.map_or(0.0, |p| p * weights.prior)
            + self.blur.map_or(0.0, |b| b * weights.blur)
            + self.blur_cont.map_or(0.0, |c| c * weights.blur_aux * weights.blur)
    }

    /// An error naming the first term that is NaN or infinite.
    fn check_finite(&self, step: u64) -> Result<(), NonFiniteLoss> {
        let terms = [
            ("total", Some(self.total)),
            ("clip", Some(self.clip)),
            ("prior", self.prior),
            ("blur", self.blur),
            ("blur_cont", self.blur_cont),
        ];
        match terms.into_iter().find_map(|(term, value)| value.filter(|v| !v.is_finite()).map(|v| (term, v))) {
            Some((term, value)) => Err(NonFiniteLoss { step, term, value }),
            None => Ok(()),
        }
    }
}

/// Forward, losses, backward, gradient synchronisation (nothing on one process; the sum over
/// ranks in a data-parallel run, see [`crate::comm`]), AdamW with the context's learning rate,
/// β1 and weight decay.
pub fn train_step<B: AutodiffBackend>(
    model: MindEye2<B>,
    optim: &mut AdamW<B>,
    batch: Batch<B>,
    context: &StepContext<'_>,
    comm: &mut dyn StepComm<B>,
) -> Result<(MindEye2<B>, StepReport), StepError> {
    let step = context.step;
    let comm_error = |error: CommError| StepError::Comm { step, error };
    let device = batch.subjects.first().map(|s| s.voxels.device()).unwrap_or_default();
    // BiMixCo's draws, the prior's noise and condition drops: the same on every rank.
    let mut rng = ChaCha8Rng::seed_from_u64(voxbridge_seed::step_draws(context.seed, step));
    // Dropout draws from the backend's generator: reseeding it at every step after the first
    // makes step s's masks a function of (seed, s) alone, which is what an exact resume needs
    // (ranks of a data-parallel run mix in their rank key, so they draw different masks).
    // Step 0 keeps the stream the trainer seeded, from which lazily initialised weights are
    // drawn during its forward pass.
    if step > 0 {
        B::seed(&device, voxbridge_seed::backend_step(context.seed, step, comm.rank_key()));
    }
    let layout = rank_layout(&batch, comm).map_err(|error| StepError::Batch { step, error })?;

    // 1. Forward over this rank's rows. BiMixCo's draws are made for every share of the
    //    global batch, in order.
    let draws: Vec<MixcoDraw> = match context.phase {
        ContrastivePhase::BiMixCo { .. } => layout.shares.iter().map(|&n| mixco_draw(n, &mut rng)).collect(),
        ContrastivePhase::SoftClip { .. } => Vec::new(),
    };
    let forward = forward_rows(&model, batch, &layout, draws);

    // 2. Losses; the contrastive ones span the whole global batch.
    let terms = losses(&model, forward, context, &mut rng, comm)?;
    let total = terms.total(context.loss_weights);
    let report = StepReport::read(&terms, &total);
    let report = comm.reduce_report(report, context.loss_weights).map_err(comm_error)?;
    report.check_finite(step)?;

    // 3. Backward, gradient sync, optimizer step.
    let grads = GradientsParams::from_grads(total.backward(), &model);
    let grads = comm.sync_gradients(&model, grads).map_err(comm_error)?;
    let model = optim.step(model, grads, context.lr, context.beta1, context.weight_decay);
    Ok((model, report))
}

/// Where this rank's rows sit in the global batch, once the batch is checked to hold the whole
/// shares its pieces are cut from.
fn rank_layout<B: AutodiffBackend>(batch: &Batch<B>, comm: &dyn StepComm<B>) -> Result<Layout, BatchError> {
    let held: Vec<usize> = batch.subjects.iter().map(|s| s.voxels.dims()[0]).collect();
    let layout = comm.layout(&held);
    let needed: Vec<usize> = layout.pieces.iter().map(|p| layout.shares[p.subject]).collect();
    if needed != held {
        return Err(BatchError::Shares { held, pieces: layout.pieces, needed });
    }
    Ok(layout)
}

/// This rank's rows of the global batch: the first, how many, and of how many in all.
#[derive(Debug, Clone, Copy)]
struct Rows {
    start: usize,
    local: usize,
    global: usize,
}

/// The forward pass over this rank's rows, and what the losses compare it with.
struct RankForward<B: AutodiffBackend> {
    rows: Rows,
    out: BackboneOutput<B>,
    /// `[b_local, T, D]`.
    clip_target: Tensor<B, 3>,
    /// `[b, C, H, W]` per piece, when the data has latents.
    blur_targets: Vec<Tensor<B, 4>>,
    /// `[b, 1 + A, P, W]` per piece, when the data has teacher features.
    teachers: Vec<Tensor<B, 4>>,
    /// BiMixCo's draw over the global batch (perms not offset, as released); `None` in SoftCLIP.
    draw: Option<MixcoDraw>,
}

/// Ridges and backbone over this rank's pieces. BiMixCo mixes each subject's voxels with a
/// partner from the same subject's share (which may be another rank's row: every owner holds
/// the whole share).
fn forward_rows<B: AutodiffBackend>(
    model: &MindEye2<B>,
    batch: Batch<B>,
    layout: &Layout,
    draws: Vec<MixcoDraw>,
) -> RankForward<B> {
    let mut ridge_outs = Vec::new();
    let mut targets = Vec::new();
    let mut blur_targets = Vec::new();
    let mut teachers = Vec::new();
    for (piece, share) in layout.pieces.iter().zip(batch.subjects) {
        let voxels = match draws.get(piece.subject) {
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
    let draw = (!draws.is_empty()).then(|| MixcoDraw::concat(&draws, false));
    let out = model.backbone.forward(Tensor::cat(ridge_outs, 0)); // [b_local, T, D] ×2
    let rows = Rows { start: layout.row_start(), local: layout.local_rows(), global: layout.shares.iter().sum() };
    RankForward { rows, out, clip_target, blur_targets, teachers, draw }
}

/// The step's loss terms, in the order their draws and exchanges happen.
fn losses<B: AutodiffBackend>(
    model: &MindEye2<B>,
    forward: RankForward<B>,
    context: &StepContext<'_>,
    rng: &mut ChaCha8Rng,
    comm: &mut dyn StepComm<B>,
) -> Result<LossTerms<B>, StepError> {
    let step = context.step;
    let comm_error = |error: CommError| StepError::Comm { step, error };
    let RankForward { rows, out, clip_target, blur_targets, teachers, draw } = forward;
    // The contrastive loss sees the whole global batch [B, T·D].
    let preds = comm.among_all_rows(l2_normalize(out.clip_voxels.flatten::<2>(1, 2))).map_err(comm_error)?;
    let targs = comm.all_rows(l2_normalize(clip_target.clone().flatten::<2>(1, 2))).map_err(comm_error)?;
    let clip = match context.phase {
        ContrastivePhase::BiMixCo { temperature } => mixco_nce(preds, targs, temperature, draw.as_ref(), true),
        ContrastivePhase::SoftClip { temperature } => soft_clip_loss(preds, targs, temperature),
    };
    let prior = model.prior.as_ref().map(|prior| {
        let loss = prior_loss(prior, clip_target, out.backbone.clone(), rows, rng);
        comm.per_sample_share(loss)
    });
    // The low-level branch, once, when something trains it.
    let low_out = match &model.low_level {
        Some(low) if !blur_targets.is_empty() || !teachers.is_empty() => Some(low.forward(out.mixer_out.clone())),
        _ => None,
    };
    let blur_l1 = match (&low_out, blur_targets.is_empty()) {
        (Some(low_out), false) => {
            let loss = blur_l1_loss(low_out, blur_targets, draw.as_ref(), rows, comm).map_err(comm_error)?;
            Some(comm.per_sample_share(loss))
        }
        _ => None,
    };
    let blur_cont = match (&low_out, teachers.is_empty()) {
        (Some(low_out), false) => Some(blur_cont_loss(low_out, teachers, context, rows, comm)?),
        _ => None,
    };
    Ok(LossTerms { prior, clip, blur_l1, blur_cont })
}

/// The prior's diffusion loss on this rank's rows (this rank's mean): timesteps, noise and
/// condition drops are drawn for the whole global batch, in that order, and sliced.
fn prior_loss<B: AutodiffBackend>(
    prior: &DiffusionPrior<B>,
    clip_target: Tensor<B, 3>,
    brain: Tensor<B, 3>,
    rows: Rows,
    rng: &mut ChaCha8Rng,
) -> Tensor<B, 1> {
    let [_, tokens, dim] = clip_target.dims();
    let t: Vec<usize> = (0..rows.global).map(|_| rng.random_range(0..prior.schedule.timesteps)).collect();
    let noise: Vec<f32> = (0..rows.global * tokens * dim).map(|_| StandardNormal.sample(rng)).collect();
    let p = prior.net.config.cond_drop_prob;
    let keep = CondKeep::sample(rows.global, p, p, &mut || rng.random::<f64>());
    let mine = rows.start..rows.start + rows.local;
    let noise = noise[mine.start * tokens * dim..mine.end * tokens * dim].to_vec();
    let noise = Tensor::<B, 3>::from_data(TensorData::new(noise, [rows.local, tokens, dim]), &clip_target.device());
    let keep = CondKeep { brain: keep.brain[mine.clone()].to_vec(), image: keep.image[mine.clone()].to_vec() };
    prior.p_losses(clip_target, &t[mine], brain, noise, &keep).1
}

/// Low-level L1 against the VAE latents, mixed like the voxels during BiMixCo — with the
/// concatenated, un-offset perms, as released (spec §2.1 [QUIRK]): a row's partner may be in
/// another subject's share, so the latents of the whole global batch are mixed and this rank's
/// rows kept.
fn blur_l1_loss<B: AutodiffBackend>(
    low_out: &LowLevelOutput<B>,
    blur_targets: Vec<Tensor<B, 4>>,
    draw: Option<&MixcoDraw>,
    rows: Rows,
    comm: &mut dyn StepComm<B>,
) -> Result<Tensor<B, 1>, CommError> {
    let local = Tensor::cat(blur_targets, 0); // [b_local, C, H, W]
    let shape = local.dims();
    let target = match draw {
        Some(draw) => {
            let global = comm.all_rows(local.flatten::<2>(1, 3))?; // [B, C·H·W]
            mixco_voxels(global, draw).narrow(0, rows.start, rows.local).reshape(shape)
        }
        None => local,
    };
    Ok(l1_loss(low_out.blurry_latent.clone(), target))
}

/// The low-level soft contrastive term (spec §2.1): student = the l2-normalised rows of the
/// branch's features `[B·P, W]`; teachers = the l2-normalised clean teacher rows and those of
/// one augmented view per image, picked for this step. As in Train.ipynb the teachers are each
/// row's own image's, never mixed (BiMixCo mixes only the voxels and the VAE latents). Like the
/// CLIP contrastive loss it spans the whole global batch, exchanged a sample (P·W values) per
/// row.
fn blur_cont_loss<B: AutodiffBackend>(
    low_out: &LowLevelOutput<B>,
    teachers: Vec<Tensor<B, 4>>,
    context: &StepContext<'_>,
    rows: Rows,
    comm: &mut dyn StepComm<B>,
) -> Result<Tensor<B, 1>, StepError> {
    let step = context.step;
    let comm_error = |error: CommError| StepError::Comm { step, error };
    let local = Tensor::cat(teachers, 0); // [b_local, 1 + A, P, W]
    let [_, views, positions, width] = local.dims();
    let device = local.device();
    let features = low_out.blurry_features.clone(); // [b_local, P', W']
    let [_, model_positions, model_width] = features.dims();
    if (model_positions, model_width) != (positions, width) || views < 2 {
        let error = BatchError::TeacherShape { views, positions, width, model_positions, model_width };
        return Err(StepError::Batch { step, error });
    }
    let picks = teacher_pick(context.seed, step, rows.global, views - 1);
    let b = rows.local;
    let index = |rows: Vec<i64>| Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [b]), &device);
    let clean = index((0..b).map(|i| (i * views) as i64).collect());
    let aug = index((0..b).map(|i| (i * views + 1 + picks[rows.start + i]) as i64).collect());
    let flat = local.reshape([b * views, positions * width]); // [b_local·(1 + A), P·W]
    let local_rows = b * positions;
    let teacher = l2_normalize(flat.clone().select(0, clean).reshape([local_rows, width])); // [b_local·P, W]
    let teacher_aug = l2_normalize(flat.select(0, aug).reshape([local_rows, width])); // [b_local·P, W]
    let student = l2_normalize(features.reshape([local_rows, width])); // [b_local·P, W]
    let per_sample = |t: Tensor<B, 2>| t.reshape([b, positions * width]);
    let rows_of = |t: Tensor<B, 2>| t.reshape([rows.global * positions, width]); // [B·P, W]
    let student = rows_of(comm.among_all_rows(per_sample(student)).map_err(comm_error)?);
    let teacher = rows_of(comm.all_rows(per_sample(teacher)).map_err(comm_error)?);
    let teacher_aug = rows_of(comm.all_rows(per_sample(teacher_aug)).map_err(comm_error)?);
    Ok(soft_cont_loss(student, teacher, teacher_aug, BLUR_CONT_TEMPERATURE))
}

/// Which augmented teacher view (`0..augs`) each of the global batch's `rows` uses at `step`:
/// MindEye2 draws a fresh augmentation of every image each step; voxbridge stores `augs` fixed
/// views per image and picks one per row and step. From a stream of its own
/// ([`voxbridge_seed::teacher_views`]), so the step's other draws are the same with or without
/// teacher features.
pub fn teacher_pick(seed: u64, step: u64, rows: usize, augs: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(voxbridge_seed::teacher_views(seed, step));
    (0..rows).map(|_| rng.random_range(0..augs.max(1))).collect()
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
