//! The model FLOPs of one MindEye2 training step, counted from the sizes alone: what
//! `voxbridge bench train` divides by the step time to print achieved TFLOP/s.
//!
//! Convention (the usual "model FLOPs" one): every matmul and convolution costs `2·m·n·k` in the
//! forward pass and three times that for forward + backward (the backward computes the input
//! and the weight gradients, each as large as the forward). Element-wise work, norms, softmax
//! and the optimizer are not counted: they are memory-bound, not FLOP-bound. Two deliberate
//! simplifications, both well under 0.1 % of the released step: the ridge is counted ×3 although
//! the voxels need no gradient, and the contrastive target–target similarities (no gradient)
//! are counted ×1.

use crate::config::{BackboneMode, MindEye2Config};

use super::{DecoderOp, decoder_ops};

/// Model FLOPs of one training step (forward + backward), by part of the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepFlops {
    /// The subjects' `Linear(V_s → h)`.
    pub ridge: u64,
    /// The residual mixer MLPs that run (released: only the width-1 `mixer_blocks2`).
    pub mixers: u64,
    /// `Linear(h → T·D)`.
    pub backbone_linear: u64,
    /// Three token-wise `Linear(D → D)`.
    pub clip_proj: u64,
    /// `blin1`, the diffusers decoder and the maps projector.
    pub low_level: u64,
    /// Time MLP, the transformer layers (projections, attention scores and mixing, SwiGLU) and
    /// `project_out`.
    pub prior: u64,
    /// The contrastive similarity matrices (SoftCLIP over `[B, T·D]`, the low-level soft
    /// contrastive over `[B·P, W]`).
    pub losses: u64,
}

impl StepFlops {
    /// Every part, named as `voxbridge bench train` prints them.
    pub fn parts(&self) -> [(&'static str, u64); 7] {
        [
            ("ridge", self.ridge),
            ("backbone mixers", self.mixers),
            ("backbone_linear", self.backbone_linear),
            ("clip_proj", self.clip_proj),
            ("low-level", self.low_level),
            ("prior", self.prior),
            ("losses", self.losses),
        ]
    }

    /// FLOPs of the whole step.
    pub fn total(&self) -> u64 {
        self.parts().iter().map(|(_, f)| f).sum()
    }
}

/// Forward + backward = 3 × the forward's matmul FLOPs.
const TRAIN: u64 = 3;

/// `2·m·n·k`: one `[m, k] × [k, n]` matmul.
fn mm(m: u64, n: u64, k: u64) -> u64 {
    2 * m * n * k
}

/// The model FLOPs of one training step on a global batch of `batch` rows (split evenly over
/// `config`'s subjects, as MindEye2's batches are; the ridge term uses their mean voxel count, so
/// it is exact whenever `batch` is a multiple of the subject count). The low-level branch is
/// counted with its soft contrastive term (the data has teacher features) and the contrastive
/// loss as SoftCLIP (the last two thirds of training; BiMixCo skips one `[B, B]` similarity).
pub fn train_step_flops(config: &MindEye2Config, batch: usize) -> StepFlops {
    let b = batch as u64;
    let h = config.hidden as u64;
    let (t, d) = (config.clip_tokens as u64, config.clip_dim as u64);
    let td = t * d;
    let subjects = config.voxels.len().max(1) as u64;
    let voxels: u64 = config.voxels.iter().map(|&v| v as u64).sum();

    let ridge = TRAIN * 2 * b * voxels * h / subjects;
    let width2 = MindEye2Config::SEQ_LEN as u64;
    // mixer_blocks2: two Linear(seq → seq) over the h positions of every row.
    let mut mixers = config.blocks as u64 * 2 * mm(b * h, width2, width2);
    if config.backbone_mode == BackboneMode::CorrectedResidual {
        mixers += config.blocks as u64 * 2 * mm(b, h, h);
    }
    let backbone_linear = TRAIN * mm(b, td, h);
    let clip_proj = TRAIN * 3 * mm(b * t, d, d);
    // SoftCLIP: logits P·Tᵀ (trained) and the soft labels T·Tᵀ (targets only).
    let mut losses = TRAIN * mm(b, b, td) + mm(b, b, td);

    let low_level = config.low_level.as_ref().map_or(0, |low| {
        let (c, s2, w) = (low.map_channels as u64, (low.map_size * low.map_size) as u64, low.projector_width as u64);
        let decoder: u64 = decoder_ops(low)
            .into_iter()
            .map(|op| match op {
                DecoderOp::Conv { c_in, c_out, k, area } => mm(area, c_out, c_in * k * k),
                DecoderOp::NormSilu { .. } => 0,
                // to_q, to_k, to_v, to_out; scores [area, area]; mixing.
                DecoderOp::Attention { c, area } => 4 * mm(area, c, c) + 2 * mm(area, area, c),
            })
            .sum();
        let projector = mm(s2, w, c) + 2 * mm(s2, w, w);
        // Soft contrastive: student·teacher_augᵀ both ways (trained), teacher·teacher_augᵀ
        // both ways (targets only), over M = B·P rows of width W.
        let m = b * s2;
        losses += TRAIN * 2 * mm(m, m, w) + 2 * mm(m, m, w);
        TRAIN * b * (mm(1, low.map_len() as u64, h) + decoder + projector)
    });

    let prior = config.prior.as_ref().map_or(0, |p| {
        let (pd, n) = (p.dim as u64, p.seq_len() as u64);
        let (inner, dh, heads) = (p.inner_dim() as u64, p.dim_head as u64, p.heads as u64);
        let (ff, th) = (p.ff_inner_dim() as u64, p.time_hidden_dim() as u64);
        let time = mm(1, th, pd) + mm(1, th, th) + mm(1, pd, th);
        let attention = mm(n, inner, pd) // to_q
            + mm(n, 2 * dh, pd) // to_kv (one shared K/V head)
            + heads * mm(n, n + 1, dh) // scores against the null key + n keys
            + heads * mm(n, dh, n + 1) // attention-weighted values
            + mm(n, pd, inner); // to_out
        let feed_forward = mm(n, 2 * ff, pd) + mm(n, pd, ff);
        let project_out = mm(n, pd, pd);
        TRAIN * b * (time + p.depth as u64 * (attention + feed_forward) + project_out)
    });

    StepFlops { ridge, mixers: TRAIN * mixers, backbone_linear, clip_proj, low_level, prior, losses }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NSD_VOXELS;
    use crate::prior::PriorConfig;

    /// The budget tests' small config with a prior: dim 4, depth 1, dim_head 2 (2 heads).
    fn small() -> MindEye2Config {
        MindEye2Config { prior: Some(PriorConfig::mindeye2(4, 2, 1, 2)), ..crate::budget::tests::small() }
    }

    #[test]
    fn a_small_step_equals_the_hand_count() {
        let f = train_step_flops(&small(), 2);
        // batch 2 over 2 subjects: one row of 3 voxels, one of 5 → 2·4·(3 + 5) = 64, ×3.
        assert_eq!(f.ridge, 192);
        // mixer_blocks2: 2 Linear(1→1) over 2·4 positions: 2 × 2·8·1·1 = 32, ×3.
        assert_eq!(f.mixers, 96);
        // [2, 4] × [4, 8]: 2·2·8·4 = 128, ×3.
        assert_eq!(f.backbone_linear, 384);
        // 3 × [4, 4] × [4, 4]: 3·2·4·4·4 = 384, ×3.
        assert_eq!(f.clip_proj, 1152);
        // P·Tᵀ: 2·2·2·8 = 64, ×3; T·Tᵀ: 64 → 256.
        assert_eq!(f.losses, 256);
        assert_eq!(f.low_level, 0);
        // Prior, per row: time 2·8·4 + 2·8·8 + 2·4·8 = 256; N = 5 tokens: to_q 2·5·4·4 = 160,
        // to_kv 2·5·4·4 = 160, scores 2 heads × 2·5·6·2 = 240, mixing 240, to_out 160 → 960;
        // SwiGLU 2·5·4·32 + 2·5·16·4 = 1920; project_out 2·5·4·4 = 160.
        // (256 + 960 + 1920 + 160) = 3296 per row, × 2 rows × 3.
        assert_eq!(f.prior, 19_776);
        assert_eq!(f.total(), 192 + 96 + 384 + 1152 + 256 + 19_776);
    }

    #[test]
    fn the_released_step_is_about_19_tflop_and_the_prior_dominates() {
        // The H200 note's ≈ 20 TFLOP (260 M prior parameters × 24 × 513 tokens × 6) counts
        // every prior parameter per token; the time MLP and the embeddings are per sample.
        let config = MindEye2Config::released(vec![NSD_VOXELS[0]]);
        let f = train_step_flops(&config, 24);
        let tflop = f.total() as f64 / 1e12;
        assert!((18.0..21.0).contains(&tflop), "{tflop} TFLOP");
        assert!(f.prior as f64 > 0.9 * f.total() as f64, "{f:?}");
        // backbone_linear: 6 · 24 · 4096 · 425,984 exactly.
        assert_eq!(f.backbone_linear, 6 * 24 * 4096 * 425_984);
        assert_eq!(f.ridge, 6 * 24 * 15_724 * 4096);
    }
}
