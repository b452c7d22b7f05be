//! What one MindEye2 training step costs, from the sizes alone (nothing is allocated, no device
//! is needed): the per-GPU memory of a data-parallel step ([`estimate_memory`], behind
//! `voxbridge params --memory`) and the model FLOPs ([`train_step_flops`], which `voxbridge bench
//! train` divides by the step time).
//!
//! # The memory model
//!
//! Data parallel without ZeRO: every shared (non-ridge) parameter is replicated on every GPU;
//! a GPU holds only the ridges of its own subjects (voxbridge places whole subjects, or parts of
//! one subject's share, on each rank). Per GPU:
//!
//! * **resident all step**: the f32 master weights of everything it holds, and AdamW's two f32
//!   moments for every parameter that gets a gradient. The released backbone's
//!   `mixer_blocks1` never reach an output (spec §1.2), get no gradient and so no moments.
//! * **phase 1, end of forward / start of backward**: what autodiff saved for backward (counted
//!   op by op, see `saved`), the bf16 casts of the weights (each matmul casts its weight on the
//!   fly and autodiff keeps the cast as the matmul's saved operand — counted here, not as a
//!   separate "compute copy"), the backward pass's temporaries (3 × the largest saved f32
//!   tensor: a gradient and two products of an op's backward; or, if larger, the 4 attention
//!   matrices `[rows, H, N, N + 1]` the prior's fused attention recomputes for one layer), and the
//!   gradients of the parts whose backward runs first (prior, low-level branch) while their
//!   saved tensors are still being released. The other gradients are not added here: burn
//!   frees each saved tensor once its backward step has run, and `clip_proj`, `backbone_linear`
//!   and the ridges (≈ 90 % of the parameters) are differentiated after everything the prior
//!   saved has been freed.
//! * **phase 2, gradients → AdamW**: every f32 gradient, plus the larger of AdamW's temporaries
//!   (voxbridge's unfused update allocates two tensors the size of the parameter it updates:
//!   `g·(1 − β1)` and `m / (√v̂ + ε)`) and, with more than one GPU, the flat f32 buffer of the
//!   shared gradients that one all-reduce sums.
//! * **peak** = resident + max(phase 1, phase 2); the **total** adds a workspace margin of 10 %
//!   of the peak for allocator fragmentation and pool rounding (cubecl's memory pools round
//!   allocations up to page sizes).
//!
//! Sizes are bytes; reports print GiB (2³⁰ bytes) and state capacities in GB (10⁹ bytes, what a
//! card's "80 GB" means: 74.5 GiB).

mod flops;
mod saved;

use std::fmt;
use std::str::FromStr;

use crate::config::{BackboneMode, MindEye2Config};
use crate::lowlevel::LowLevelConfig;

pub use flops::{StepFlops, train_step_flops};

/// 80 GB (H100 / A100-80GB), in bytes: the default capacity of a report.
pub const DEFAULT_CAPACITY_BYTES: u64 = 80_000_000_000;
/// Share of the peak added for allocator fragmentation and pool rounding.
pub const WORKSPACE_MARGIN: f64 = 0.10;
/// Bytes in a GiB.
pub const GIB: f64 = (1u64 << 30) as f64;

/// The dtype matmuls and convolutions run in. Master weights, gradients, AdamW moments,
/// softmax, norms and losses are f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputeDtype {
    F32,
    #[default]
    Bf16,
}

impl ComputeDtype {
    /// Bytes of one element.
    pub fn bytes(self) -> u64 {
        match self {
            ComputeDtype::F32 => 4,
            ComputeDtype::Bf16 => 2,
        }
    }

    /// The spelling of `--precision` and `[compute] precision`.
    pub fn name(self) -> &'static str {
        match self {
            ComputeDtype::F32 => "fp32",
            ComputeDtype::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for ComputeDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ComputeDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" | "f32" => Ok(ComputeDtype::F32),
            "bf16" => Ok(ComputeDtype::Bf16),
            other => Err(format!("unknown precision `{other}`: expected `fp32` or `bf16`")),
        }
    }
}

/// What one GPU of a data-parallel run holds and computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The ridges this GPU holds and trains: indices into the config's `voxels`.
    pub subjects_per_gpu: Vec<usize>,
    /// Rows of the global batch this GPU runs forward and backward on (its subjects' shares,
    /// split evenly between them).
    pub batch_per_gpu: usize,
    /// Rows of the global batch: the contrastive losses span it (all-gathered on every GPU).
    pub global_batch: usize,
    /// Data-parallel ranks; above 1 the shared gradients are flattened for one all-reduce.
    pub gpus: usize,
    pub compute: ComputeDtype,
    /// How the prior's attention, SwiGLU and LayerNorms are differentiated.
    pub prior_ops: PriorOps,
}

/// How autodiff differentiates the prior's attention core, SwiGLU and gain LayerNorms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PriorOps {
    /// voxbridge's training runs: one op each (`crate::fused`), keeping only their inputs;
    /// backward recomputes one layer's attention matrices at a time.
    #[default]
    Fused,
    /// burn's autodiff over the composed tensor ops (for comparison: what the fused ops save).
    Composed,
}

impl MemoryPlan {
    /// One GPU holding every ridge of `config` and the whole batch.
    pub fn one_gpu(config: &MindEye2Config, batch: usize, compute: ComputeDtype) -> Self {
        MemoryPlan {
            subjects_per_gpu: (0..config.voxels.len()).collect(),
            batch_per_gpu: batch,
            global_batch: batch,
            gpus: 1,
            compute,
            prior_ops: PriorOps::Fused,
        }
    }
}

/// One GPU's memory for one training step, in bytes, by what holds it (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryEstimate {
    pub plan: MemoryPlan,
    /// Parameters held (shared + this GPU's ridges).
    pub params_held: u64,
    /// Parameters that get a gradient and AdamW moments.
    pub params_trained: u64,
    /// f32 master weights.
    pub weights: u64,
    /// AdamW `m` and `v`, f32.
    pub moments: u64,
    /// Tensors autodiff keeps for backward, by part of the model.
    pub saved: Vec<(String, u64)>,
    /// The bf16 casts of the weights that matmuls keep for backward (0 in fp32).
    pub weight_casts: u64,
    /// Temporaries of the backward pass.
    pub backward_temporaries: u64,
    /// Gradients of the prior and the low-level branch (differentiated first).
    pub early_gradients: u64,
    /// Every f32 gradient.
    pub gradients: u64,
    /// The largest trained parameter tensor: its name and element count.
    pub largest_param: (String, u64),
    /// AdamW's temporaries while it updates the largest parameter.
    pub optimizer_temporaries: u64,
    /// The flat f32 gradient buffer of one all-reduce (0 on one GPU).
    pub allreduce_buffer: u64,
}

impl MemoryEstimate {
    /// Weights and moments.
    pub fn resident(&self) -> u64 {
        self.weights + self.moments
    }

    /// Everything autodiff saved.
    pub fn saved_total(&self) -> u64 {
        self.saved.iter().map(|(_, b)| b).sum()
    }

    /// End of forward / start of backward, on top of the resident bytes.
    pub fn activation_phase(&self) -> u64 {
        self.saved_total() + self.weight_casts + self.backward_temporaries + self.early_gradients
    }

    /// Gradient synchronisation and the optimizer step, on top of the resident bytes.
    pub fn gradient_phase(&self) -> u64 {
        self.gradients + self.optimizer_temporaries.max(self.allreduce_buffer)
    }

    /// The step's peak without the margin.
    pub fn peak(&self) -> u64 {
        self.resident() + self.activation_phase().max(self.gradient_phase())
    }

    /// The workspace margin ([`WORKSPACE_MARGIN`] of the peak).
    pub fn margin(&self) -> u64 {
        (self.peak() as f64 * WORKSPACE_MARGIN).round() as u64
    }

    /// What the GPU needs: peak + margin.
    pub fn total(&self) -> u64 {
        self.peak() + self.margin()
    }

    /// Whether the total fits `capacity_bytes` of device memory.
    pub fn fits(&self, capacity_bytes: u64) -> bool {
        self.total() <= capacity_bytes
    }

    /// The table: each line in GiB, the phases, the total, the capacity and FITS / DOES NOT FIT
    /// with the headroom.
    pub fn report(&self, capacity_bytes: u64) -> String {
        use fmt::Write;
        let gib = |b: u64| b as f64 / GIB;
        let mut out = String::new();
        let mut line = |label: &str, bytes: u64| match label {
            "" => writeln!(out, "  {:<66} {:>8}", "", "GiB").expect("write"),
            _ => writeln!(out, "  {label:<66} {:>8.2}", gib(bytes)).expect("write"),
        };
        let c = self.plan.compute;
        line("", 0);
        line("resident all step", self.resident());
        line(&format!("  weights, f32 master copy ({} parameters)", group(self.params_held)), self.weights);
        line(&format!("  AdamW moments m and v, f32 ({} trained)", group(self.params_trained)), self.moments);
        line("phase 1: end of forward, start of backward", self.activation_phase());
        for (name, bytes) in &self.saved {
            line(&format!("  saved: {name}"), *bytes);
        }
        let casts = match c {
            ComputeDtype::Bf16 => "  bf16 weight casts kept by the matmuls",
            ComputeDtype::F32 => "  weight casts (none in fp32: matmuls keep the weights)",
        };
        line(casts, self.weight_casts);
        line("  backward temporaries (3 × largest saved, or attention recompute)", self.backward_temporaries);
        line("  gradients of the prior and low-level branch (backward first)", self.early_gradients);
        line("phase 2: gradients, all-reduce, AdamW", self.gradient_phase());
        line("  gradients, f32", self.gradients);
        let (name, n) = &self.largest_param;
        line(&format!("  AdamW temporaries, 2 × {name} ({})", group(*n)), self.optimizer_temporaries);
        let allreduce = if self.plan.gpus > 1 {
            "  flat shared-gradient buffer of the all-reduce (not with AdamW)"
        } else {
            "  flat shared-gradient buffer of the all-reduce (1 GPU: none)"
        };
        line(allreduce, self.allreduce_buffer);
        line("peak = resident + max(phase 1, phase 2)", self.peak());
        line(
            &format!("workspace margin, {:.0} % of the peak (fragmentation)", WORKSPACE_MARGIN * 100.0),
            self.margin(),
        );
        let total = self.total();
        writeln!(out, "  {:<66} {:>8.2} GiB = {:.1} GB", "TOTAL per GPU", gib(total), total as f64 / 1e9)
            .expect("write");
        let headroom = capacity_bytes as f64 - total as f64;
        let verdict = if self.fits(capacity_bytes) { "FITS" } else { "DOES NOT FIT" };
        let (word, amount) = if headroom >= 0.0 { ("headroom", headroom) } else { ("short by", -headroom) };
        writeln!(
            out,
            "  capacity {:.0} GB = {:.2} GiB: {verdict} ({word} {:.2} GiB = {:.1} GB)",
            capacity_bytes as f64 / 1e9,
            capacity_bytes as f64 / GIB,
            amount / GIB,
            amount / 1e9
        )
        .expect("write");
        out
    }
}

impl fmt::Display for MemoryEstimate {
    /// The report against an 80 GB card.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.report(DEFAULT_CAPACITY_BYTES))
    }
}

/// `1234567` → `1,234,567` (parameter counts in reports).
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One GPU's memory for one training step of `config` under `plan` (see the module docs).
/// `plan.subjects_per_gpu` must index `config.voxels`.
pub fn estimate_memory(config: &MindEye2Config, plan: &MemoryPlan) -> MemoryEstimate {
    let c = plan.compute;
    let (rows, global) = (plan.batch_per_gpu as u64, plan.global_batch as u64);
    let h = config.hidden as u64;
    let (t, d) = (config.clip_tokens as u64, config.clip_dim as u64);
    let counts = config.param_counts();
    let held_ridges = &plan.subjects_per_gpu;
    let ridge_params: u64 = held_ridges.iter().map(|&s| counts.ridge[s]).sum();
    let backbone = |name: &str| counts.backbone.iter().find(|(n, _)| n == name).map_or(0, |(_, n)| *n);
    let (prior_all, prior_trained) = counts.prior.unwrap_or((0, 0));
    let low_level_params = config.low_level.as_ref().map_or(0, LowLevelConfig::num_params);
    let untrained_mixers = match config.backbone_mode {
        BackboneMode::Released => backbone("backbone.mixer_blocks1"),
        BackboneMode::CorrectedResidual => 0,
    };
    let shared_held = counts.backbone_total() + prior_all;
    let shared_trained = counts.backbone_total() - untrained_mixers + prior_trained;
    let params_held = shared_held + ridge_params;
    let params_trained = shared_trained + ridge_params;

    // Saved for backward. Voxels: this GPU's rows split evenly between its subjects.
    let subjects = held_ridges.len().max(1) as u64;
    let voxel_sum: u64 = held_ridges.iter().map(|&s| config.voxels[s] as u64).sum();
    let voxels = rows * voxel_sum / subjects;
    let mut saved = Vec::new();
    let mut push = |name: String, s: saved::Saved| saved.push((name, s.bytes(c)));
    let n = config.prior.as_ref().map_or(0, |p| p.seq_len() as u64);
    if let Some(p) = &config.prior {
        let ops = plan.prior_ops;
        let saved = saved::prior_ends(p, ops) + saved::prior_layer(p, ops).times(p.depth as u64);
        let how = match ops {
            PriorOps::Fused => "fused ops",
            PriorOps::Composed => "composed",
        };
        push(format!("prior, {} layers over [{rows}, {n}, {d}], {how}", p.depth), saved.times(rows));
    }
    let s = saved::backbone(config, voxel_sum / subjects).times(rows);
    push(format!("ridge, mixers, backbone_linear input [{rows}, {h}]"), s);
    push(format!("clip_proj over [{rows}, {t}, {d}]"), saved::clip_proj(config).times(rows));
    if let Some(low) = &config.low_level {
        push("low-level branch (blin1, decoder, maps projector)".into(), saved::low_level(low).times(rows));
    }
    push(format!("losses (CLIP embeddings, {global} gathered targets, …)"), saved::losses(config, rows, global));
    saved.push(("batch on the device (voxels, targets, noise, …)".into(), 4 * saved::inputs(config, rows, voxels)));

    // The largest single f32 tensor the backward pass works on.
    let mut largest = vec![rows * t * d, global * t * d];
    if let Some(p) = &config.prior {
        largest.push(rows * n * 2 * p.ff_inner_dim() as u64);
        if plan.prior_ops == PriorOps::Composed {
            largest.push(rows * saved::prior_attention_matrix(p));
        }
    }
    if let Some(low) = &config.low_level {
        largest.push((global * (low.map_size * low.map_size) as u64).pow(2));
    }
    // The fused attention's backward recomputes one layer's matrices: probabilities, their
    // gradient, the product feeding the row sums, the score gradient (and bf16 casts of two):
    // at most 4 f32 matrices live at once.
    let attention_recompute = match (&config.prior, plan.prior_ops) {
        (Some(p), PriorOps::Fused) => 4 * 4 * rows * saved::prior_attention_matrix(p),
        _ => 0,
    };
    let backward_temporaries = (3 * 4 * largest.into_iter().max().unwrap_or(0)).max(attention_recompute);

    let weight_casts = match c {
        ComputeDtype::F32 => 0,
        ComputeDtype::Bf16 => c.bytes() * matmul_weights(config, held_ridges),
    };
    let largest_param = largest_param(config, held_ridges);
    MemoryEstimate {
        plan: plan.clone(),
        params_held,
        params_trained,
        weights: 4 * params_held,
        moments: 2 * 4 * params_trained,
        saved,
        weight_casts,
        backward_temporaries,
        early_gradients: 4 * (prior_trained + low_level_params),
        gradients: 4 * params_trained,
        optimizer_temporaries: 2 * 4 * largest_param.1,
        largest_param,
        allreduce_buffer: if plan.gpus > 1 { 4 * shared_trained } else { 0 },
    }
}

/// Weights that run through a matmul or convolution in a step (biases, gains, embeddings and
/// the dead released `mixer_blocks1` are not cast).
fn matmul_weights(config: &MindEye2Config, ridges: &[usize]) -> u64 {
    let h = config.hidden as u64;
    let (d, out) = (config.clip_dim as u64, config.out_dim() as u64);
    let seq = MindEye2Config::SEQ_LEN as u64;
    let mut n: u64 = ridges.iter().map(|&s| config.voxels[s] as u64 * h).sum();
    n += config.blocks as u64 * 2 * seq * seq + h * seq * out + 3 * d * d;
    if config.backbone_mode == BackboneMode::CorrectedResidual {
        n += config.blocks as u64 * 2 * h * h;
    }
    if let Some(low) = &config.low_level {
        let (c, w) = (low.map_channels as u64, low.projector_width as u64);
        // The decoder's few norms and biases (well under 1 % of it) are included.
        n += h * low.map_len() as u64 + c * w + 2 * w * w + low.decoder().num_params();
    }
    if let Some(p) = &config.prior {
        let (pd, th, inner) = (p.dim as u64, p.time_hidden_dim() as u64, p.inner_dim() as u64);
        let (dh, ff) = (p.dim_head as u64, p.ff_inner_dim() as u64);
        let layer = pd * inner + pd * 2 * dh + inner * pd + pd * 2 * ff + ff * pd;
        n += pd * th + th * th + th * pd + p.depth as u64 * layer + pd * pd;
    }
    n
}

/// The largest trained parameter tensor (name, elements): AdamW's temporaries are its size.
fn largest_param(config: &MindEye2Config, ridges: &[usize]) -> (String, u64) {
    let h = config.hidden as u64;
    let mut candidates = vec![
        ("backbone_linear.weight".to_string(), h * MindEye2Config::SEQ_LEN as u64 * config.out_dim() as u64),
        ("clip_proj weight".to_string(), (config.clip_dim * config.clip_dim) as u64),
    ];
    for &s in ridges {
        candidates.push((format!("ridge {s} weight"), config.voxels[s] as u64 * h));
    }
    if config.backbone_mode == BackboneMode::CorrectedResidual && config.blocks > 0 {
        candidates.push(("mixer weight".to_string(), h * h));
    }
    if let Some(low) = &config.low_level {
        candidates.push(("blin1.weight".to_string(), h * low.map_len() as u64));
    }
    if let Some(p) = &config.prior {
        candidates.push(("prior ff proj_in weight".to_string(), (p.dim * 2 * p.ff_inner_dim()) as u64));
    }
    candidates.into_iter().max_by_key(|(_, n)| *n).unwrap_or_default()
}

/// One layer of the low-level branch's diffusers decoder, for counting FLOPs and saved tensors:
/// `area` is the spatial size (H·W) the layer works at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecoderOp {
    Conv {
        c_in: u64,
        c_out: u64,
        k: u64,
        area: u64,
    },
    /// GroupNorm then SiLU over `c` channels.
    NormSilu {
        c: u64,
        area: u64,
    },
    /// The mid block's single-head self-attention over `area` positions of width `c`.
    Attention {
        c: u64,
        area: u64,
    },
}

/// The decoder's layers in forward order (see `lowlevel::decoder`): `conv_in`; mid block
/// (ResNet, attention, ResNet); up blocks from the widest (`layers_per_block + 1` ResNets, then
/// 2× upsampling and a 3×3 convolution except on the last); `conv_norm_out` + SiLU; `conv_out`.
fn decoder_ops(low: &LowLevelConfig) -> Vec<DecoderOp> {
    use DecoderOp::{Attention, Conv, NormSilu};
    let mut ops = Vec::new();
    let mut area = (low.map_size * low.map_size) as u64;
    let channels: Vec<u64> = low.block_out_channels.iter().rev().map(|&c| c as u64).collect();
    let top = channels.first().copied().unwrap_or(0);
    let resnet = |ops: &mut Vec<DecoderOp>, c_in: u64, c_out: u64, area: u64| {
        ops.extend([NormSilu { c: c_in, area }, Conv { c_in, c_out, k: 3, area }]);
        ops.extend([NormSilu { c: c_out, area }, Conv { c_in: c_out, c_out, k: 3, area }]);
        if c_in != c_out {
            ops.push(Conv { c_in, c_out, k: 1, area });
        }
    };
    ops.push(Conv { c_in: low.map_channels as u64, c_out: top, k: 3, area });
    resnet(&mut ops, top, top, area);
    ops.push(Attention { c: top, area });
    resnet(&mut ops, top, top, area);
    let mut prev = top;
    for (i, &c) in channels.iter().enumerate() {
        for j in 0..=low.layers_per_block {
            resnet(&mut ops, if j == 0 { prev } else { c }, c, area);
        }
        if i + 1 < channels.len() {
            area *= 4;
            ops.push(Conv { c_in: c, c_out: c, k: 3, area });
        }
        prev = c;
    }
    let bottom = channels.last().copied().unwrap_or(0);
    ops.push(NormSilu { c: bottom, area });
    ops.push(Conv { c_in: bottom, c_out: low.latent_channels as u64, k: 3, area });
    ops
}

#[cfg(test)]
mod tests;
