//! Mixed precision for the MindEye2 model, the way `torch.autocast(dtype=torch.bfloat16)` does it:
//! matrix products in bf16, everything else in f32, f32 master weights.
//!
//! burn 0.21 has no autocast (`docs/design/gpu-engine.md` §2), so the model routes every matrix
//! product through this module: [`linear`], [`matmul`] and [`conv2d`] read the thread's
//! [`ComputeDtype`] (set for a scope by an [`Autocast`] guard; [`ComputeDtype::F32`] outside any)
//! and compute accordingly. Parameters stay f32 `Param`s and AdamW is untouched: the casts are
//! differentiable (`float_cast`'s backward casts the gradient back to the input's dtype), so every
//! parameter's gradient arrives as f32.
//!
//! Which op runs in which dtype under [`ComputeDtype::Bf16`]:
//! - bf16 operands, f32 accumulation, bf16 result cast to f32 — the matrix products, where the
//!   GPU's tensor cores are and where autodiff saves its inputs (bf16 halves that memory):
//!   every `Linear` (ridge, mixer MLPs, `backbone_linear`, `clip_proj`, `blin1`, the VAE
//!   attention's and the prior's projections, the time MLP) with its **bias added in f32**; the
//!   attention products `q·kᵀ` and `attn·v` (VAE mid block and prior) with both operands cast;
//!   every `Conv2d` (decoder 3×3 and 1×1, maps projector 1×1), bias added in f32. Their backward
//!   products run in bf16 too (the casts' backward rounds the incoming f32 gradient to bf16).
//! - f32 — softmax (with its scale and the relative position bias), LayerNorm, GroupNorm, the
//!   prior's gain LayerNorm and l2-norm, GELU/SiLU/ReLU, rotary, residual adds, dropout:
//!   reductions and exponentials need f32's 24-bit significand, and elementwise ops gain nothing.
//! - f32 — the losses (SoftCLIP, BiMixCo, soft contrastive, L1, MSE), their similarity matmuls
//!   included (see `losses.rs`: logits are cosines scaled by 1/τ ≈ 170).
//! - f32 — master weights, gradients, AdamW moments.
//!
//! On the tiny model (`tests/mixed_precision.rs`) bf16 moves the outputs by 0.3–5 % of their
//! scale (the prior's cosine-similarity attention, logits up to ±16, is the most sensitive) and
//! the total loss by 0.16 %.
//!
//! Why bf16 and not fp16: MindEye2's fp16 runs produce NaN losses because fp16's largest value is
//! 65504 (and its smallest normal 6e-5): logits, attention scores and gradient sums overflow or
//! flush. bf16 has f32's 8-bit exponent (range ~1e-38 to 3.4e38) with an 8-bit significand, so
//! nothing that is finite in f32 overflows in bf16; only precision is lost (relative rounding ≤
//! 2⁻⁸ per value), and no loss scaling is needed.
//!
//! Mixing dtypes is never allowed to happen implicitly: cubecl does not check operand dtypes
//! (an f32 tensor added to a bf16 one silently computes garbage), so every cast lives in this
//! module, both operands are always cast together, and each helper returns f32.
//!
//! [`ComputeDtype::Bf16Emulated`] is for backends without bf16 arithmetic (wgpu: WGSL has no
//! bf16). Operands stay f32 but are rounded to bf16's 8-bit significand by [`round_to_bf16`], the
//! product is rounded again (as a bf16 matmul stores its result), so the forward pass sees bf16's
//! rounding; the backward pass is the straight-through f32 one (gradient of the rounding = 1),
//! i.e. it does not emulate the bf16 rounding of the gradients that the real `Bf16` backward has.

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;

use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{DType, FloatDType, Tensor, backend::Backend};

/// The dtype the matrix products of a forward pass compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputeDtype {
    /// Everything f32: exactly the computation without mixed precision.
    #[default]
    F32,
    /// Matrix products in bf16 on a backend with bf16 arithmetic (CUDA, Flex).
    Bf16,
    /// bf16 rounding of matrix-product operands and results, computed in f32 (wgpu).
    Bf16Emulated,
}

impl ComputeDtype {
    /// `fp32`, `bf16` or `bf16-emulated`.
    pub fn as_str(self) -> &'static str {
        match self {
            ComputeDtype::F32 => "fp32",
            ComputeDtype::Bf16 => "bf16",
            ComputeDtype::Bf16Emulated => "bf16-emulated",
        }
    }

    /// Whether matrix products see bf16 rounding (native or emulated).
    pub fn is_bf16(self) -> bool {
        self != ComputeDtype::F32
    }
}

impl fmt::Display for ComputeDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The compute dtype for a run on `device`: [`ComputeDtype::F32`] unless bf16 is requested;
/// then [`ComputeDtype::Bf16`] where the backend has bf16 storage and arithmetic
/// (`Backend::supports_dtype(device, DType::BF16)`: CUDA, Flex) and
/// [`ComputeDtype::Bf16Emulated`] where it does not (wgpu, whose WGSL has no bf16).
pub fn resolve<B: Backend>(requested_bf16: bool, device: &B::Device) -> ComputeDtype {
    if !requested_bf16 {
        ComputeDtype::F32
    } else if B::supports_dtype(device, DType::BF16) {
        ComputeDtype::Bf16
    } else {
        ComputeDtype::Bf16Emulated
    }
}

thread_local! {
    /// The compute dtypes of the entered [`Autocast`] scopes of this thread, innermost last.
    static SCOPES: RefCell<Vec<ComputeDtype>> = const { RefCell::new(Vec::new()) };
}

/// The compute dtype of this thread: the innermost entered [`Autocast`], else
/// [`ComputeDtype::F32`].
pub fn current() -> ComputeDtype {
    SCOPES.with(|s| s.borrow().last().copied().unwrap_or_default())
}

/// A scope in which this thread's matrix products compute in a given dtype, like
/// `with torch.autocast(...)`: `let _guard = Autocast::enter(ComputeDtype::Bf16);`. Dropping the
/// guard restores the state from before [`Autocast::enter`]; scopes nest. Dropping an outer guard
/// first also ends the scopes entered inside it (a later drop of those is then a no-op).
///
/// The state is per thread (the guard is neither `Send` nor `Sync`): enter it on the thread that
/// runs the forward pass. The backward pass needs no scope: the casts are in the graph.
#[must_use = "the scope ends when the guard is dropped"]
#[derive(Debug)]
pub struct Autocast {
    /// Scopes on this thread's stack once this one was entered.
    depth: usize,
    _per_thread: PhantomData<*const ()>,
}

impl Autocast {
    /// Makes `dtype` this thread's compute dtype until the guard is dropped.
    pub fn enter(dtype: ComputeDtype) -> Self {
        let depth = SCOPES.with(|s| {
            let mut s = s.borrow_mut();
            s.push(dtype);
            s.len()
        });
        Autocast { depth, _per_thread: PhantomData }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        SCOPES.with(|s| s.borrow_mut().truncate(self.depth - 1));
    }
}

/// Runs `f` with `dtype` as this thread's compute dtype.
pub fn autocast<R>(dtype: ComputeDtype, f: impl FnOnce() -> R) -> R {
    let _guard = Autocast::enter(dtype);
    f()
}

/// Veltkamp's splitting constant for f32 (24-bit significand) → 8-bit high part: 2¹⁶ (+ 1).
const SPLIT: f64 = 65536.0;

/// `x` (f32) rounded to bf16's 8 significant bits, still f32, with gradient 1 (straight through).
///
/// Veltkamp splitting: `c = 65537·x`, `hi = c − (c − x)`; in IEEE f32 arithmetic (round to
/// nearest even at every step) `hi` is `x` rounded to nearest at 8 significant bits. `c` is
/// computed as `65536·x + x` (the product is exact), so a compiler contracting a multiply-add
/// into an FMA gets the same `c`; it must not reassociate `c − (c − x)` (no fast-math), which would
/// make this the identity. Measured against `half::bf16::from_f32` (round to nearest, ties to
/// even) on Flex (`precision_tests.rs`): bit-equal on all 609,280 probed normal values (every
/// sign/exponent/bf16-significand pattern × 10 low halves, among them 60,928 exact ties, which
/// go to even) below |x| = 2¹²⁸/65537 ≈ 5.19e33; from there `c` overflows and the result is NaN
/// (inf − inf), where bf16 would still hold values up to 3.39e38; NaN stays NaN, ±inf becomes
/// NaN. Subnormals (Flex keeps them) agree in only 1,212 of 2,558 probes: the split rounds to 8
/// bits of x's own magnitude, bf16's subnormals have a fixed quantum 2⁻¹³³. Neither range occurs
/// in activations or weights. The gradient of `c − (c − x)` is exactly the incoming gradient
/// (the two paths through `c` cancel exactly): a differentiable straight-through rounding.
///
/// # Panics
/// If `x` is not f32 (the constant is for f32's 24-bit significand).
pub fn round_to_bf16<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    assert_eq!(x.dtype(), DType::F32, "round_to_bf16 rounds f32 tensors");
    let c = x.clone().mul_scalar(SPLIT) + x.clone();
    let d = c.clone() - x;
    c - d
}

fn to_compute<B: Backend, const D: usize>(mode: ComputeDtype, x: Tensor<B, D>) -> Tensor<B, D> {
    match mode {
        ComputeDtype::F32 => x,
        ComputeDtype::Bf16 => x.cast(FloatDType::BF16),
        ComputeDtype::Bf16Emulated => round_to_bf16(x),
    }
}

/// A product's result back to f32: a bf16 result is cast; an emulated one is rounded as a bf16
/// matmul would store it.
fn from_compute<B: Backend, const D: usize>(mode: ComputeDtype, y: Tensor<B, D>) -> Tensor<B, D> {
    match mode {
        ComputeDtype::F32 => y,
        ComputeDtype::Bf16 => y.cast(FloatDType::F32),
        ComputeDtype::Bf16Emulated => round_to_bf16(y),
    }
}

fn add_bias_f32<B: Backend, const D: usize>(y: Tensor<B, D>, bias: Tensor<B, 1>, channel_dim: usize) -> Tensor<B, D> {
    assert_eq!(bias.dtype(), DType::F32, "mixed precision needs f32 master weights (bias is {:?})", bias.dtype());
    let mut shape = [1usize; D];
    shape[channel_dim] = bias.dims()[0];
    y + bias.reshape(shape)
}

/// `layer.forward(x)` in the current compute dtype: `x [.., d_in] → [.., d_out]`, f32.
///
/// The leading axes are flattened into one 2-D product `[rows, d_in]·[d_in, d_out]`, as torch's
/// `F.linear` does: burn's `Linear::forward` on a 3-D input runs one product per sample (the
/// weight packed each time) and sums a `[B, d_in, d_out]` weight gradient afterwards; in bf16 the
/// 2-D product also accumulates the weight gradient in f32 rather than summing bf16 partials.
/// Operands are cast to the compute dtype (none in f32) and the bias is added in f32.
pub fn linear<B: Backend, const D: usize>(layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let mode = current();
    if D <= 2 && mode == ComputeDtype::F32 {
        return layer.forward(x);
    }
    let mut dims = x.dims();
    let weight = layer.weight.val(); // [d_in, d_out]
    let [d_in, d_out] = weight.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let x = to_compute(mode, x).reshape([rows, d_in]);
    let y = from_compute(mode, x.matmul(to_compute(mode, weight)));
    dims[D - 1] = d_out;
    let y = y.reshape(dims);
    match &layer.bias {
        // f32 (or f64 in the float64 parity tests): the bias in the weights' own dtype.
        Some(bias) if mode == ComputeDtype::F32 => y + bias.val().unsqueeze(),
        Some(bias) => add_bias_f32(y, bias.val(), D - 1),
        None => y,
    }
}

/// `a.matmul(b)` in the current compute dtype (both operands cast), f32 result.
pub fn matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    let mode = current();
    if mode == ComputeDtype::F32 {
        return a.matmul(b);
    }
    from_compute(mode, to_compute(mode, a).matmul(to_compute(mode, b)))
}

/// `layer.forward(x)` in the current compute dtype: `[B, C_in, H, W] → [B, C_out, H', W']`, f32.
///
/// `F32`: exactly `Conv2d::forward`. Otherwise input and weight are cast, the convolution runs
/// without bias, and the bias is added in f32. Padding as `Conv2d::forward` computes it.
pub fn conv2d<B: Backend>(layer: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let mode = current();
    if mode == ComputeDtype::F32 {
        return layer.forward(x);
    }
    let [_, _, height, width] = x.dims();
    let ((top, bottom), (left, right)) = match &layer.padding {
        PaddingConfig2d::Valid => ((0, 0), (0, 0)),
        PaddingConfig2d::Same => (
            same_padding(layer.kernel_size[0], layer.stride[0], height),
            same_padding(layer.kernel_size[1], layer.stride[1], width),
        ),
        PaddingConfig2d::Explicit(top, left, bottom, right) => ((*top, *bottom), (*left, *right)),
    };
    // burn's asymmetric padding (`Tensor::pad` inside `module::conv2d`) builds its zeros in the
    // default dtype: on a bf16 input Flex panics with a dtype mismatch (cubecl would not check).
    // So any padding that is not symmetric is applied here, in f32, before the cast (0 is exact
    // in bf16), and the convolution itself gets symmetric padding only.
    let (x, padding) = if top == bottom && left == right {
        (x, [top, left])
    } else {
        (x.pad((left, right, top, bottom), PadMode::Constant(0.0)), [0, 0])
    };
    let options = ConvOptions::new(layer.stride, padding, layer.dilation, layer.groups);
    let y = burn::tensor::module::conv2d(to_compute(mode, x), to_compute(mode, layer.weight.val()), None, options);
    let y = from_compute(mode, y);
    match &layer.bias {
        Some(bias) => add_bias_f32(y, bias.val(), 1),
        None => y,
    }
}

/// burn-nn's "same" padding (private there): `(start, end)`, the odd pixel at the end.
fn same_padding(kernel: usize, stride: usize, size: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = if out > 0 { ((out - 1) * stride + kernel).saturating_sub(size) } else { 0 };
    (total / 2, total - total / 2)
}

#[cfg(test)]
#[path = "precision_tests.rs"]
mod tests;
