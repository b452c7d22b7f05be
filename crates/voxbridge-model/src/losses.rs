//! MindEye2's losses (spec §2.1, `src/utils.py`), quirks included.
//!
//! Contrastive losses take row vectors that the caller has flattened (`[B, tokens·dim]`) and,
//! where MindEye2 does, l2-normalised ([`l2_normalize`]).
//!
//! Mixed precision: everything here stays f32, the similarity matmuls included (plain `matmul`,
//! not `precision::matmul`), although `torch.autocast` would run those in bf16. The logits are
//! cosines scaled by 1/τ (τ ≈ 0.004–0.0075 for SoftCLIP): bf16's 2⁻⁸ relative rounding of a
//! cosine near 1 becomes an error of ~0.5 in a logit, comparable to the logit gaps the loss
//! learns from; and issue 20 asks for f32 losses. The matmuls are `[B, T·D] × [T·D, B]`, cheap
//! next to the model's.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

/// Rows scaled to unit l2 norm (`F.normalize(x, dim=-1)`, eps 1e-12).
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// Cross entropy of row-wise logits against soft labels (rows of `labels` need not sum to 1):
/// `mean_i −Σ_j labels_ij · log_softmax(logits_i)_j`.
fn soft_cross_entropy<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 2>) -> Tensor<B, 1> {
    (log_softmax(logits, 1) * labels).sum_dim(1).mean().neg()
}

/// SoftCLIP: logits `P·Tᵀ/τ`, soft labels `softmax(T·Tᵀ/τ)`, averaged over both directions.
/// `preds`, `targets`: `[B, N]`. Returns a 1-element tensor.
pub fn soft_clip_loss<B: Backend>(preds: Tensor<B, 2>, targets: Tensor<B, 2>, temperature: f64) -> Tensor<B, 1> {
    let target_sim = targets.clone().matmul(targets.clone().transpose()) / temperature;
    let logits = preds.matmul(targets.transpose()) / temperature;
    let labels = softmax(target_sim, 1);
    let forward = soft_cross_entropy(logits.clone(), labels.clone());
    let backward = soft_cross_entropy(logits.transpose(), labels);
    (forward + backward) / 2.0
}

/// One BiMixCo draw for a batch of `n` samples: partner permutation, mixing weights, selection.
#[derive(Debug, Clone, PartialEq)]
pub struct MixcoDraw {
    /// Partner of each row (a full permutation; local to the subject's block).
    pub perm: Vec<usize>,
    /// Weight of each row's own sample; 1 for unselected rows (as `utils.mixco` returns them).
    pub betas: Vec<f32>,
    /// Whether each row was mixed.
    pub select: Vec<bool>,
}

impl MixcoDraw {
    /// Checks the three vectors agree in length and `perm` is a permutation.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.perm.len();
        if self.betas.len() != n || self.select.len() != n {
            return Err(format!(
                "perm, betas, select lengths differ: {n}, {}, {}",
                self.betas.len(),
                self.select.len()
            ));
        }
        let mut seen = vec![false; n];
        for &p in &self.perm {
            if p >= n || std::mem::replace(&mut seen[p], true) {
                return Err(format!("perm {:?} is not a permutation of 0..{n}", self.perm));
            }
        }
        Ok(())
    }

    /// Concatenates per-subject draws the way Train.ipynb does: betas and selections are
    /// stacked, but the **perms are not offset** by the block start (spec §2.1 [QUIRK]), so every
    /// later subject's partners point into the first subject's rows. `offset_perms = true` gives
    /// the corrected version (each block's partners inside its own block).
    pub fn concat(draws: &[MixcoDraw], offset_perms: bool) -> MixcoDraw {
        let mut out = MixcoDraw { perm: Vec::new(), betas: Vec::new(), select: Vec::new() };
        for d in draws {
            let offset = if offset_perms { out.perm.len() } else { 0 };
            out.perm.extend(d.perm.iter().map(|p| p + offset));
            out.betas.extend(&d.betas);
            out.select.extend(&d.select);
        }
        out
    }
}

/// Mixes voxels `[B, V]` with a draw: selected rows become `β·v + (1−β)·v[perm]`, others stay.
pub fn mixco_voxels<B: Backend>(voxels: Tensor<B, 2>, draw: &MixcoDraw) -> Tensor<B, 2> {
    let device = voxels.device();
    let n = draw.perm.len();
    let perm =
        Tensor::<B, 1, Int>::from_data(TensorData::new(draw.perm.iter().map(|&p| p as i64).collect(), [n]), &device);
    let partners = voxels.clone().select(0, perm);
    // Effective per-row weight: β where selected, 1 elsewhere (identical to `draw.betas`, which
    // `mixco` already set to 1 on unselected rows, but not trusting the caller on that).
    let w: Vec<f32> = draw.betas.iter().zip(&draw.select).map(|(&b, &s)| if s { b } else { 1.0 }).collect();
    let w = Tensor::<B, 1>::from_data(TensorData::new(w, [n]), &device).unsqueeze_dim::<2>(1);
    voxels * w.clone() + partners * (w.neg() + 1.0)
}

/// The BiMixCo label matrix: `diag(β)`, then `1 − β_i` written at `[i, perm_i]` — which
/// overwrites the diagonal when `perm_i == i` (spec §2.1 [QUIRK], reproduced).
pub fn mixco_labels(draw: &MixcoDraw) -> Vec<f32> {
    let n = draw.perm.len();
    let mut probs = vec![0.0f32; n * n];
    for i in 0..n {
        probs[i * n + i] = draw.betas[i];
    }
    for i in 0..n {
        probs[i * n + draw.perm[i]] = 1.0 - draw.betas[i];
    }
    probs
}

/// BiMixCo's NCE (`utils.mixco_nce`): logits `P·Tᵀ/τ` against [`mixco_labels`]; bidirectional
/// averages the row-wise and the column-wise (transposed labels) cross entropies. With no draw it
/// is plain InfoNCE with the identity as labels.
pub fn mixco_nce<B: Backend>(
    preds: Tensor<B, 2>,
    targets: Tensor<B, 2>,
    temperature: f64,
    draw: Option<&MixcoDraw>,
    bidirectional: bool,
) -> Tensor<B, 1> {
    let n = preds.dims()[0];
    let device = preds.device();
    let logits = preds.matmul(targets.transpose()) / temperature;
    let labels = match draw {
        Some(draw) => Tensor::<B, 2>::from_data(TensorData::new(mixco_labels(draw), [n, n]), &device),
        None => Tensor::<B, 2>::eye(n, &device),
    };
    let forward = soft_cross_entropy(logits.clone(), labels.clone());
    if !bidirectional {
        return forward;
    }
    let backward = soft_cross_entropy(logits.transpose(), labels.transpose());
    (forward + backward) / 2.0
}

/// The low-level branch's soft contrastive loss (`utils.soft_cont_loss`): student rows against
/// the augmented teacher, soft labels from teacher·teacher_augᵀ, both directions. `[N, F]` each.
pub fn soft_cont_loss<B: Backend>(
    student: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    teacher_aug: Tensor<B, 2>,
    temperature: f64,
) -> Tensor<B, 1> {
    let teacher_teacher = teacher.clone().matmul(teacher_aug.clone().transpose()) / temperature;
    let teacher_teacher_t = teacher_aug.clone().matmul(teacher.transpose()) / temperature;
    let student_teacher = student.clone().matmul(teacher_aug.clone().transpose()) / temperature;
    let student_teacher_t = teacher_aug.matmul(student.transpose()) / temperature;
    let forward = soft_cross_entropy(student_teacher, softmax(teacher_teacher, 1));
    let backward = soft_cross_entropy(student_teacher_t, softmax(teacher_teacher_t, 1));
    (forward + backward) / 2.0
}

/// Mean absolute error (the low-level latent loss, `L1Loss` with mean reduction).
pub fn l1_loss<B: Backend, const D: usize>(pred: Tensor<B, D>, target: Tensor<B, D>) -> Tensor<B, 1> {
    (pred - target).abs().mean()
}

/// Mean squared error (the prior loss).
pub fn mse_loss<B: Backend, const D: usize>(pred: Tensor<B, D>, target: Tensor<B, D>) -> Tensor<B, 1> {
    (pred - target).powi_scalar(2).mean()
}

/// `utils.cosine_anneal(start, end, steps)`: `end + (start − end)/2 · (1 + cos(π·i/(steps−1)))`,
/// in float32 as the original returns it. MindEye2's SoftCLIP temperature schedule is
/// `cosine_anneal(0.004, 0.0075, epochs − mixup_epochs)`.
pub fn cosine_anneal(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let last = steps.saturating_sub(1).max(1) as f64;
    (0..steps)
        .map(|i| {
            let t = i as f64 / last;
            (end + (start - end) / 2.0 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
        })
        .collect()
}

/// Weights of the Train.ipynb objective: `prior·L_prior + clip·L_clip + blur·(L1 + aux·L_cont)`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossWeights {
    pub prior: f64,
    pub clip: f64,
    pub blur: f64,
    pub blur_aux: f64,
}

impl Default for LossWeights {
    /// `--prior_scale=30 --clip_scale=1 --blur_scale=.5`, and 0.1 on the soft contrastive term.
    fn default() -> Self {
        LossWeights { prior: 30.0, clip: 1.0, blur: 0.5, blur_aux: 0.1 }
    }
}

/// The loss terms of one step; absent terms (no prior, no low-level branch) are `None`.
#[derive(Debug, Clone)]
pub struct LossTerms<B: Backend> {
    pub prior: Option<Tensor<B, 1>>,
    pub clip: Tensor<B, 1>,
    pub blur_l1: Option<Tensor<B, 1>>,
    pub blur_cont: Option<Tensor<B, 1>>,
}

impl<B: Backend> LossTerms<B> {
    /// The weighted total.
    pub fn total(&self, w: &LossWeights) -> Tensor<B, 1> {
        let mut total = self.clip.clone() * w.clip;
        if let Some(prior) = &self.prior {
            total = total + prior.clone() * w.prior;
        }
        let blur = match (&self.blur_l1, &self.blur_cont) {
            (Some(l1), Some(cont)) => Some(l1.clone() + cont.clone() * w.blur_aux),
            (Some(l1), None) => Some(l1.clone()),
            (None, Some(cont)) => Some(cont.clone() * w.blur_aux),
            (None, None) => None,
        };
        if let Some(blur) = blur {
            total = total + blur * w.blur;
        }
        total
    }
}
