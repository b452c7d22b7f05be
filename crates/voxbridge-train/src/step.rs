//! One MindEye2 training step, written out: draw the step's randomness, forward, losses,
//! backward, gradient synchronisation, optimizer step. Everything random comes from
//! `(seed, step)`, so a run is reproducible and every rank of a distributed run can draw the
//! same numbers.

use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution, StandardNormal};
use voxbridge_data::sampler::mix64;
use voxbridge_model::MindEye2;
use voxbridge_model::losses::{
    LossTerms, LossWeights, MixcoDraw, l1_loss, l2_normalize, mixco_nce, mixco_voxels, soft_clip_loss,
};

use crate::adamw::AdamW;

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
}

/// Why a step stopped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("step {step}: loss `{term}` is {value} (not finite); stopping before the optimizer step")]
pub struct NonFiniteLoss {
    pub step: u64,
    pub term: &'static str,
    pub value: f64,
}

/// Forward, backward, `sync_gradients` (identity on one process; the all-reduce in a distributed
/// run), AdamW with this step's learning rate and β1 and `weight_decay(burn path)` per parameter
/// (usually [`mindeye2_weight_decay`](crate::mindeye2_weight_decay)).
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
    sync_gradients: &mut dyn FnMut(GradientsParams) -> GradientsParams,
) -> Result<(MindEye2<B>, StepReport), NonFiniteLoss> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let device = batch.subjects.first().map(|s| s.voxels.device()).unwrap_or_default();
    // Dropout draws from the backend's generator: reseeding it every step makes step s's masks
    // a function of (seed, s) alone, which is what an exact resume needs.
    B::seed(&device, mix64(seed ^ mix64(step)));

    // 1. Inputs: BiMixCo mixes each subject's voxels with a partner from the same subject.
    let mut draws = Vec::new();
    let mut ridge_outs = Vec::new();
    let mut targets = Vec::new();
    let mut blur_targets = Vec::new();
    for share in batch.subjects {
        let b = share.voxels.dims()[0];
        let voxels = match phase {
            ContrastivePhase::BiMixCo { .. } => {
                let draw = mixco_draw(b, &mut rng);
                let mixed = mixco_voxels(share.voxels, &draw);
                draws.push(draw);
                mixed
            }
            ContrastivePhase::SoftClip { .. } => share.voxels,
        };
        ridge_outs.push(model.ridge.forward(share.subject, voxels)); // [b, h]
        targets.push(share.clip_target); // [b, T, D]
        blur_targets.extend(share.blur_target); // [b, C, H, W]
    }
    let clip_target = Tensor::cat(targets, 0); // [B, T, D]
    let draw = (!draws.is_empty()).then(|| MixcoDraw::concat(&draws, false));
    let batch_size = clip_target.dims()[0];

    // 2. Forward through the shared backbone.
    let out = model.backbone.forward(Tensor::cat(ridge_outs, 0)); // [B, T, D] ×2

    // 3. Losses.
    let preds = l2_normalize(out.clip_voxels.flatten::<2>(1, 2));
    let targs = l2_normalize(clip_target.clone().flatten::<2>(1, 2));
    let clip = match phase {
        ContrastivePhase::BiMixCo { temperature } => mixco_nce(preds, targs, temperature, draw.as_ref(), true),
        ContrastivePhase::SoftClip { temperature } => soft_clip_loss(preds, targs, temperature),
    };
    let prior = model.prior.as_ref().map(|prior| {
        let t: Vec<usize> = (0..batch_size).map(|_| rng.random_range(0..prior.schedule.timesteps)).collect();
        let [b, tokens, dim] = clip_target.dims();
        let noise: Vec<f32> = (0..b * tokens * dim).map(|_| StandardNormal.sample(&mut rng)).collect();
        let noise = Tensor::<B, 3>::from_data(TensorData::new(noise, [b, tokens, dim]), &device);
        let mut uniform = || rng.random::<f64>();
        prior.p_losses_sampled(clip_target.clone(), &t, out.backbone.clone(), noise, &mut uniform).1
    });
    // Low-level L1 against the VAE latents, mixed like the voxels during BiMixCo — with the
    // concatenated, un-offset perms, as released (spec §2.1 [QUIRK]). The ConvNeXt soft
    // contrastive term needs teacher features voxbridge does not have; it is left out.
    let blur_l1 = match (&model.low_level, blur_targets.is_empty()) {
        (Some(low), false) => {
            let target = Tensor::cat(blur_targets, 0); // [B, C, H, W]
            let target = match &draw {
                Some(draw) => {
                    let shape = target.dims();
                    mixco_voxels(target.flatten::<2>(1, 3), draw).reshape(shape)
                }
                None => target,
            };
            Some(l1_loss(low.forward(out.mixer_out.clone()).blurry_latent, target))
        }
        _ => None,
    };
    let terms = LossTerms { prior, clip, blur_l1, blur_cont: None };
    let total = terms.total(weights);
    let scalar =
        |t: &Tensor<B, 1>| t.clone().into_data().convert::<f64>().to_vec::<f64>().map(|v| v[0]).unwrap_or(f64::NAN);
    let report = StepReport {
        total: scalar(&total),
        clip: scalar(&terms.clip),
        prior: terms.prior.as_ref().map(scalar),
        blur: terms.blur_l1.as_ref().map(scalar),
    };
    let checked =
        [("total", Some(report.total)), ("clip", Some(report.clip)), ("prior", report.prior), ("blur", report.blur)];
    for (term, value) in checked {
        if let Some(value) = value
            && !value.is_finite()
        {
            return Err(NonFiniteLoss { step, term, value });
        }
    }

    // 4. Backward, gradient sync, optimizer step.
    let grads = GradientsParams::from_grads(total.backward(), &model);
    let grads = sync_gradients(grads);
    let model = optim.step(model, grads, lr, beta1, weight_decay);
    Ok((model, report))
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
