//! What autodiff keeps for backward in one MindEye2 training step, counted op by op as burn
//! 0.21's `Autodiff<B>` (its default `NoCheckpointing` strategy: every state is kept, nothing is
//! recomputed) records them for voxbridge's modules:
//!
//! | op (burn) | keeps |
//! |---|---|
//! | `Linear`, `matmul`, `conv2d` | both operands (the weight is the parameter itself in fp32, a bf16 cast in bf16) |
//! | `nn::LayerNorm`, `nn::GroupNorm` | the centred input and the normalised input (2 × input) |
//! | `GainLayerNorm` (the prior's) | fused (`crate::fused`): its input; composed: `x − mean` twice and the normalised input (3 × input) |
//! | GELU, ReLU, sigmoid, `abs`, `powi`/square, `exp` | their input |
//! | SiLU (`x · sigmoid(x)`) | `x` and `sigmoid(x)` |
//! | `Dropout` | its mask (f32) |
//! | softmax (`exp(x − max) / Σ`) | the shifted input (for `exp`) and `exp` (for the division) |
//! | the prior's attention core and SwiGLU, fused (`crate::fused`) | their inputs (f32); backward recomputes the rest |
//! | `a · b`, `a / b` with both tracked | both; add, sub, reshape, narrow, cat, cast: nothing |
//!
//! Mixed precision as voxbridge does it (`bf16`): every matmul and convolution casts both
//! operands to bf16 and its output back to f32; the casts are what autodiff keeps, so each
//! matmul operand is 2 bytes, and each matmul casts its own copy (two matmuls on one input keep
//! two copies, where fp32 keeps the one buffer). Softmax, norms, activations and losses stay in
//! f32. Counts are per row of the batch unless they say otherwise.

use crate::config::MindEye2Config;
use crate::lowlevel::LowLevelConfig;
use crate::prior::PriorConfig;

use super::{ComputeDtype, DecoderOp, PriorOps, decoder_ops};

/// Elements autodiff keeps for backward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Saved {
    /// Kept in f32 whatever the compute dtype: inputs of norms and activations, softmax, losses.
    pub f32: u64,
    /// Matmul / convolution operands: a cast copy in the compute dtype (bf16), or the f32 tensor
    /// itself.
    pub operand: u64,
    /// Operands that fp32 shares with a buffer already counted (one input to two matmuls, the
    /// voxels of the batch): bf16 keeps a cast copy of each, fp32 nothing more.
    pub operand_copy: u64,
}

impl Saved {
    pub(super) fn bytes(&self, compute: ComputeDtype) -> u64 {
        let copies = match compute {
            ComputeDtype::F32 => 0,
            ComputeDtype::Bf16 => self.operand_copy * compute.bytes(),
        };
        4 * self.f32 + compute.bytes() * self.operand + copies
    }

    pub(super) fn times(self, n: u64) -> Saved {
        Saved { f32: self.f32 * n, operand: self.operand * n, operand_copy: self.operand_copy * n }
    }
}

impl std::ops::Add for Saved {
    type Output = Saved;

    fn add(self, o: Saved) -> Saved {
        Saved {
            f32: self.f32 + o.f32,
            operand: self.operand + o.operand,
            operand_copy: self.operand_copy + o.operand_copy,
        }
    }
}

impl std::iter::Sum for Saved {
    fn sum<I: Iterator<Item = Saved>>(iter: I) -> Saved {
        iter.fold(Saved::default(), |a, b| a + b)
    }
}

fn f32s(n: u64) -> Saved {
    Saved { f32: n, ..Saved::default() }
}

fn operand(n: u64) -> Saved {
    Saved { operand: n, ..Saved::default() }
}

fn operand_copy(n: u64) -> Saved {
    Saved { operand_copy: n, ..Saved::default() }
}

/// burn's `LayerNorm` / `GroupNorm` over `n` values.
fn norm(n: u64) -> Saved {
    f32s(2 * n)
}

/// One MindEye2 mixer block over `n` values of a row: norm, Linear, GELU, dropout, Linear.
fn mixer_block(n: u64) -> Saved {
    norm(n) + operand(n) + f32s(n) + f32s(n) + operand(n)
}

/// Per row: the ridge's input (the voxels of the batch; `voxels` is this GPU's mean per row),
/// the mixer blocks that run, and `backbone_linear`'s input `[h]`.
pub(super) fn backbone(config: &MindEye2Config, voxels: u64) -> Saved {
    let h = config.hidden as u64;
    let blocks = config.blocks as u64;
    // mixer_blocks2 act over a length-1 sequence at each of the h positions: h values a row.
    let mut s = operand_copy(voxels) + mixer_block(h).times(blocks) + operand(h);
    if config.backbone_mode == crate::config::BackboneMode::CorrectedResidual {
        s = s + mixer_block(h).times(blocks);
    }
    s
}

/// Per row: three LayerNorm → GELU → Linear over `[T, D]`.
pub(super) fn clip_proj(config: &MindEye2Config) -> Saved {
    let td = (config.clip_tokens * config.clip_dim) as u64;
    (norm(td) + f32s(td) + operand(td)).times(3)
}

/// Per row: `blin1` (its input is the `backbone_linear` input again), dropout, `bnorm`, the
/// decoder, the maps projector (its input is the decoder's again).
pub(super) fn low_level(low: &LowLevelConfig) -> Saved {
    let map = low.map_len() as u64;
    let grid = (low.map_size * low.map_size) as u64;
    let w = low.projector_width as u64 * grid;
    let decoder: Saved = decoder_ops(low)
        .into_iter()
        .map(|op| match op {
            DecoderOp::Conv { c_in, area, .. } => operand(c_in * area),
            // GroupNorm then SiLU.
            DecoderOp::NormSilu { c, area } => norm(c * area) + f32s(2 * c * area),
            // GroupNorm; q, k, v projections of one token buffer; q, k for the scores;
            // softmax over [area, area]; probabilities and v for the mixing; to_out's input.
            DecoderOp::Attention { c, area } => {
                let x = c * area;
                norm(x)
                    + operand(x)
                    + operand_copy(2 * x)
                    + operand(2 * x)
                    + f32s(2 * area * area)
                    + operand(area * area + x)
                    + operand(x)
            }
        })
        .sum();
    let projector = operand_copy(map) + norm(w) + f32s(w) + operand(w) + norm(w) + f32s(w) + operand(w);
    operand_copy(low.hidden as u64) + f32s(map) + norm(map) + decoder + projector
}

/// Elements of one layer's attention matrices `[H, N, N + 1]` per row.
pub(super) fn prior_attention_matrix(p: &PriorConfig) -> u64 {
    (p.heads * p.seq_len() * (p.seq_len() + 1)) as u64
}

/// The prior's gain-only LayerNorm over `n` values: the fused op keeps its input; composed,
/// `x − mean` twice (variance and output) and the normalised input.
fn gain_norm(n: u64, ops: PriorOps) -> Saved {
    match ops {
        PriorOps::Fused => f32s(n),
        PriorOps::Composed => f32s(3 * n),
    }
}

/// Everything one prior layer keeps per row: the attention's norms and projections, its core
/// (fused: the f32 inputs q, k, v; composed: q, k and v as matmul operands and the attention
/// matrices, softmax's shifted input and `exp` in f32 and the probabilities as an operand), and
/// the feed-forward (SwiGLU fused keeps its input `[N, 2F]`; composed, gate, sigmoid(gate),
/// value and silu(gate), `[N, F]` each).
pub(super) fn prior_layer(p: &PriorConfig, ops: PriorOps) -> Saved {
    let (d, n) = (p.dim as u64, p.seq_len() as u64);
    let nd = n * d;
    let (inner, dh, ff) = (p.inner_dim() as u64, p.dim_head as u64, p.ff_inner_dim() as u64);
    let q = n * inner;
    let k = (n + 1) * dh;
    let a = prior_attention_matrix(p);
    let core = match ops {
        PriorOps::Fused => f32s(q + 2 * k),
        PriorOps::Composed => operand(q + 2 * k) + f32s(2 * a) + operand(a),
    };
    let attention = gain_norm(nd, ops)
        + operand(nd) // to_q
        + operand_copy(nd) // to_kv, same input
        + f32s(q) + f32s(k) // l2norm of rotary q and of k
        + core
        + operand(q) // to_out
        + gain_norm(nd, ops); // the output LayerNorm
    let swiglu = match ops {
        PriorOps::Fused => f32s(2 * n * ff),
        PriorOps::Composed => f32s(4 * n * ff),
    };
    // LayerNorm, proj_in's input, SwiGLU, proj_out's input.
    let feed_forward = gain_norm(nd, ops) + operand(nd) + swiglu + operand(n * ff);
    attention + feed_forward
}

/// What the prior keeps per row outside its layers: the time MLP, and the final (stable)
/// LayerNorm and `project_out` over all N tokens.
pub(super) fn prior_ends(p: &PriorConfig, ops: PriorOps) -> Saved {
    let (d, th) = (p.dim as u64, p.time_hidden_dim() as u64);
    let time = operand(d) + f32s(2 * th) + operand(th) + f32s(2 * th) + operand(th);
    time + gain_norm(p.seq_len() as u64 * d, ops) + operand(p.seq_len() as u64 * d)
}

/// The loss terms on one GPU with `rows` of a global batch of `global` rows: the CLIP
/// embedding (kept by its l2-normalisation), the all-gathered normalised targets (kept by the
/// logits matmul), the `[B, B]` matrices; the prior's MSE difference; with the low-level branch
/// its L1 difference, the student features, and the soft contrastive `[M, M]` matrices over
/// M = global · P rows with the gathered augmented teachers `[M, W]`.
pub(super) fn losses(config: &MindEye2Config, rows: u64, global: u64) -> Saved {
    let td = (config.clip_tokens * config.clip_dim) as u64;
    let mut s = f32s(rows * td + global * td + 4 * global * global);
    if config.prior.is_some() {
        s = s + f32s(rows * td);
    }
    if let Some(low) = &config.low_level {
        let latent = (low.latent_channels * low.latent_size * low.latent_size) as u64;
        let grid = (low.map_size * low.map_size) as u64;
        let w = low.projector_width as u64;
        let m = global * grid;
        s = s + f32s(rows * latent + rows * grid * w + 4 * m * m + m * w);
    }
    s
}

/// Teacher views per image a dataset carries: the clean image and the two fixed augmentations
/// `tools/nsd_targets.py` writes.
pub(super) const TEACHER_VIEWS: u64 = 3;

/// The batch on the device, f32 elements: `voxels` (this GPU's voxel values in all), per row the
/// CLIP targets, the prior's noise, the VAE latent and the teacher views.
pub(super) fn inputs(config: &MindEye2Config, rows: u64, voxels: u64) -> u64 {
    let td = (config.clip_tokens * config.clip_dim) as u64;
    let mut per_row = td;
    if config.prior.is_some() {
        per_row += td;
    }
    if let Some(low) = &config.low_level {
        let latent = (low.latent_channels * low.latent_size * low.latent_size) as u64;
        let teacher = (low.map_size * low.map_size * low.projector_width) as u64 * TEACHER_VIEWS;
        per_row += latent + teacher;
    }
    voxels + rows * per_row
}
