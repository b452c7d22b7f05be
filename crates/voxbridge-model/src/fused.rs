//! The prior's memory-heavy blocks as single autodiff ops with hand-written backward passes: the
//! attention core `softmax(q·kᵀ + bias)·v`, SwiGLU `a · silu(g)` and the gain-only LayerNorm.
//!
//! Why: composed from burn's primitive ops, autodiff keeps every intermediate of these blocks
//! until backward. For the released prior at batch 63 that is the attention matrices
//! `[B, H, N, N + 1]` three times per layer (softmax's shifted input and `exp`, the probabilities
//! as a matmul operand), SwiGLU's four `[B, N, F]` tensors and three copies of each LayerNorm's
//! input — 47 GiB of the 7-subject pretraining step's 114 GiB (`voxbridge params --memory`). The
//! fused ops keep only their inputs and recompute the rest in backward (what FlashAttention's
//! backward does), so one layer's attention matrices are alive at a time. They also run as a few
//! dense tensor ops instead of dozens of small autodiff nodes on strided views.
//!
//! **Numerics** are those of the composed ops up to float rounding (`fused_tests.rs` compares
//! outputs and every gradient with the composition): the same products in the same compute dtype
//! ([`crate::precision`]: bf16 operands where the run is bf16, the upstream gradient rounded to
//! bf16 as the casts' backward does; straight-through f32 backward where bf16 is emulated),
//! softmax and SwiGLU in f32.
//!
//! **Dispatch.** burn selects op implementations by backend type, through traits; the model is
//! generic over any `B: Backend`. Rather than a voxbridge backend trait on every generic of the
//! workspace, the backend-specific implementation is registered once per backend type by whoever
//! knows the concrete type (the engine: [`install_autodiff`]`::<Flex>()`), and [`attention`] and
//! [`swiglu`] look it up by type ([`crate::kernels`]). A backend without a registration (inference, or a test
//! that did not install) gets the composed ops — the same function with the same numerics, only
//! with autodiff's memory. The implementation itself is generic over the inner backend: it is
//! written in burn tensor ops, so CPU, wgpu and CUDA share it.

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive, backend::Backend};

use crate::kernels;
use crate::precision::{self, ComputeDtype};

/// `softmax(q·kᵀ + bias)·v` with multi-query heads folded into rows.
///
/// Shapes: `q [B, H·n, dh]` (head-major rows), `k`, `v` `[B, K, dh]` (one head shared by all
/// query heads), `bias [H, n, K]` → `[B, H·n, dh]`. Products in the thread's compute dtype
/// ([`precision::current`]), softmax in f32.
pub fn attention<B: Backend>(q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>, bias: Tensor<B, 3>) -> Tensor<B, 3> {
    let mode = precision::current();
    match lookup::<B>() {
        Some(kernels) => (kernels.attention)(mode, q, k, v, bias),
        None => attention_forward(mode, q, k, v, bias),
    }
}

/// SwiGLU: `hidden [B, n, 2F]` = `[a, g]` along the last axis → `a · silu(g)` `[B, n, F]`.
pub fn swiglu<B: Backend>(hidden: Tensor<B, 3>) -> Tensor<B, 3> {
    match lookup::<B>() {
        Some(kernels) => (kernels.swiglu)(hidden),
        None => swiglu_forward(hidden),
    }
}

/// DALLE2's gain-only LayerNorm over the last axis: `x [rows, D]`, `gain [D]` →
/// `(x − mean) / √(var + eps) · gain` (biased variance), in f32.
pub fn gain_layer_norm<B: Backend>(x: Tensor<B, 2>, gain: Tensor<B, 1>, eps: f64) -> Tensor<B, 2> {
    match lookup::<B>() {
        Some(kernels) => (kernels.gain_layer_norm)(x, gain, eps),
        None => gain_layer_norm_forward(x, gain, eps),
    }
}

/// Registers the fused autodiff implementations for `Autodiff<I, C>` (idempotent). Until this
/// is called for a backend, [`attention`] and [`swiglu`] compose burn's ops there.
pub fn install_autodiff<I: Backend, C: CheckpointStrategy>() {
    let table = Kernels::<Autodiff<I, C>> {
        attention: attention_autodiff::<I, C>,
        swiglu: swiglu_autodiff::<I, C>,
        gain_layer_norm: gain_layer_norm_autodiff::<I, C>,
    };
    kernels::register(table);
}

/// Whether [`install_autodiff`] was called for `B` (reported by `bench train`).
pub fn is_installed<B: Backend>() -> bool {
    lookup::<B>().is_some()
}

/// Hand-written element-wise kernels of the fused ops on an inner backend `I`, for backends
/// where one loop over memory beats composing tensor ops (burn-flex: SwiGLU's backward is ten
/// passes over `[rows, F]` as tensor ops, one as a loop). Registered by the crate that owns the
/// backend-specific code (`voxbridge-cpu` for burn-flex) with [`install_inner`]. A kernel returns
/// `None` for an input it does not handle (another dtype), and the composed math runs instead.
pub struct InnerKernels<I: Backend> {
    /// `hidden [rows, 2F]` → `a · silu(g)` `[rows, F]`.
    pub swiglu_forward: fn(&Tensor<I, 2>) -> Option<Tensor<I, 2>>,
    /// `(hidden [rows, 2F], grad [rows, F])` → `d hidden [rows, 2F]`.
    pub swiglu_backward: fn(&Tensor<I, 2>, &Tensor<I, 2>) -> Option<Tensor<I, 2>>,
}

impl<I: Backend> Clone for InnerKernels<I> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<I: Backend> Copy for InnerKernels<I> {}

/// Registers `kernels` for the inner backend `I` (replacing any earlier registration).
pub fn install_inner<I: Backend>(table: InnerKernels<I>) {
    kernels::register(table);
}

/// `(mode, q, k, v, bias) -> out`, as [`attention`].
type AttentionFn<B> = fn(ComputeDtype, Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) -> Tensor<B, 3>;

/// The fused implementations for one backend type.
struct Kernels<B: Backend> {
    attention: AttentionFn<B>,
    swiglu: fn(Tensor<B, 3>) -> Tensor<B, 3>,
    gain_layer_norm: fn(Tensor<B, 2>, Tensor<B, 1>, f64) -> Tensor<B, 2>,
}

impl<B: Backend> Clone for Kernels<B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for Kernels<B> {}

fn lookup<B: Backend>() -> Option<Kernels<B>> {
    kernels::lookup::<Kernels<B>>()
}

fn lookup_inner<I: Backend>() -> Option<InnerKernels<I>> {
    kernels::lookup::<InnerKernels<I>>()
}

// ---- the math, on any backend -------------------------------------------------------------

/// A forward product `a·b` in `mode` (as [`precision::matmul`]), f32 result.
fn product<B: Backend>(mode: ComputeDtype, a: Tensor<B, 3>, b: Tensor<B, 3>) -> Tensor<B, 3> {
    precision::autocast(mode, || precision::matmul(a, b))
}

/// Which factor of a backward product is the upstream gradient.
#[derive(Clone, Copy)]
enum Grad {
    Left,
    Right,
}

/// A backward product of an upstream gradient and a saved forward operand, as autodiff computes
/// it through the casts of [`precision::matmul`]: bf16 rounds both (the cast's backward casts
/// the gradient) and casts the result to f32; emulated bf16 rounds only the operand (its
/// rounding is straight-through); f32 is the plain product.
fn backward_product<B: Backend>(mode: ComputeDtype, a: Tensor<B, 3>, b: Tensor<B, 3>, grad: Grad) -> Tensor<B, 3> {
    match (mode, grad) {
        (ComputeDtype::Bf16Emulated, Grad::Left) => a.matmul(precision::round_to_bf16(b)),
        (ComputeDtype::Bf16Emulated, Grad::Right) => precision::round_to_bf16(a).matmul(b),
        _ => product(mode, a, b),
    }
}

// Element-wise work below runs on 2-D views (`[rows, columns]`, broadcasting a row or a column):
// reshaping a contiguous tensor, or a column slice of one, to 2-D is free on every backend, and
// burn-flex runs 2-D strided and broadcast operands through a row-wise kernel where higher ranks
// fall back to a scalar index walk.

/// Softmax probabilities `[B, H·n, K]` of `q·kᵀ + bias`.
fn attention_probs<B: Backend>(
    mode: ComputeDtype,
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    bias: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let [b, rows, _] = q.dims();
    let [h, n, keys] = bias.dims();
    debug_assert_eq!(rows, h * n, "q rows must be heads × queries");
    // The bias [H, n, K] broadcast over the batch: one row of H·n·K added to each sample's scores.
    let sim = product(mode, q, k.swap_dims(1, 2)).reshape([b, rows * keys]) + bias.reshape([1, rows * keys]);
    softmax(sim.reshape([b * rows, keys]), 1).reshape([b, rows, keys])
}

fn attention_forward<B: Backend>(
    mode: ComputeDtype,
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    bias: Tensor<B, 3>,
) -> Tensor<B, 3> {
    product(mode, attention_probs(mode, q, k, bias), v)
}

/// Gradients of [`attention_forward`] for upstream `grad [B, H·n, dh]`: `(dq, dk, dv, dbias)`.
/// Recomputes the probabilities `P`; `dS = P ∘ (dP − Σ_keys dP ∘ P)` is softmax's backward.
fn attention_backward<B: Backend>(
    mode: ComputeDtype,
    [q, k, v, bias]: [Tensor<B, 3>; 4],
    grad: Tensor<B, 3>,
) -> [Tensor<B, 3>; 4] {
    let [b, rows, _] = q.dims();
    let [h, n, keys] = bias.dims();
    let probs = attention_probs(mode, q.clone(), k.clone(), bias);
    let dv = backward_product(mode, probs.clone().swap_dims(1, 2), grad.clone(), Grad::Right);
    let dprobs = backward_product(mode, grad, v.swap_dims(1, 2), Grad::Left);
    let (probs, dprobs) = (probs.reshape([b * rows, keys]), dprobs.reshape([b * rows, keys]));
    let row_dot = (dprobs.clone() * probs.clone()).sum_dim(1);
    let dsim = (probs * (dprobs - row_dot)).reshape([b, rows, keys]);
    let dbias = dsim.clone().reshape([b, rows * keys]).sum_dim(0).reshape([h, n, keys]);
    let dq = backward_product(mode, dsim.clone(), k, Grad::Left);
    let dk = backward_product(mode, dsim.swap_dims(1, 2), q, Grad::Left);
    debug_assert_eq!(dq.dims()[1], rows);
    [dq, dk, dv, dbias]
}

fn swiglu_forward<B: Backend>(hidden: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, n, two_f] = hidden.dims();
    let kernel = lookup_inner::<B>().map(|k| k.swiglu_forward);
    if let Some(out) = kernel.and_then(|forward| forward(&hidden.clone().reshape([b * n, two_f]))) {
        return out.reshape([b, n, two_f / 2]);
    }
    let (value, gate) = swiglu_halves(hidden);
    (value * burn::tensor::activation::silu(gate)).reshape([b, n, two_f / 2])
}

/// `d hidden = [dout · silu(g), dout · a · σ(g)(1 + g(1 − σ(g)))]`.
fn swiglu_backward<B: Backend>(hidden: Tensor<B, 3>, grad: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, n, two_f] = hidden.dims();
    let grad = grad.reshape([b * n, two_f / 2]);
    let kernel = lookup_inner::<B>().map(|k| k.swiglu_backward);
    if let Some(dhidden) = kernel.and_then(|backward| backward(&hidden.clone().reshape([b * n, two_f]), &grad)) {
        return dhidden.reshape([b, n, two_f]);
    }
    let (value, gate) = swiglu_halves(hidden);
    let sig = sigmoid(gate.clone());
    let silu = gate.clone() * sig.clone();
    let dsilu = sig.clone() * (gate * (sig.neg() + 1.0) + 1.0);
    let dvalue = grad.clone() * silu;
    let dgate = grad * value * dsilu;
    Tensor::cat(vec![dvalue, dgate], 1).reshape([b, n, two_f])
}

/// The value and gate halves of SwiGLU's input `[B, n, 2F]` as 2-D views `[B·n, F]`.
fn swiglu_halves<B: Backend>(hidden: Tensor<B, 3>) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let [b, n, two_f] = hidden.dims();
    let f = two_f / 2;
    let hidden = hidden.reshape([b * n, two_f]);
    (hidden.clone().narrow(1, 0, f), hidden.narrow(1, f, f))
}

/// `x̂ = (x − mean) · rstd`, `rstd = 1 / √(var + eps)` per row: `(x̂, rstd [rows, 1])`.
fn normalize<B: Backend>(x: Tensor<B, 2>, eps: f64) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let (var, mean) = x.clone().var_mean_bias(1);
    let rstd = (var + eps).sqrt().recip();
    ((x - mean) * rstd.clone(), rstd)
}

fn gain_layer_norm_forward<B: Backend>(x: Tensor<B, 2>, gain: Tensor<B, 1>, eps: f64) -> Tensor<B, 2> {
    normalize(x, eps).0 * gain.unsqueeze::<2>()
}

/// `dx = rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ ∘ x̂))` with `dx̂ = dy ∘ gain`; `dgain = Σ_rows dy ∘ x̂`.
fn gain_layer_norm_backward<B: Backend>(
    x: Tensor<B, 2>,
    gain: Tensor<B, 1>,
    eps: f64,
    grad: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 1>) {
    let (xhat, rstd) = normalize(x, eps);
    let dgain = (grad.clone() * xhat.clone()).sum_dim(0).squeeze_dim::<1>(0);
    let dxhat = grad * gain.unsqueeze::<2>();
    let mean_dxhat = dxhat.clone().mean_dim(1);
    let mean_dxhat_xhat = (dxhat.clone() * xhat.clone()).mean_dim(1);
    let dx = (dxhat - mean_dxhat - xhat * mean_dxhat_xhat) * rstd;
    (dx, dgain)
}

// ---- the autodiff ops -------------------------------------------------------------------

fn inner<I: Backend, const D: usize>(primitive: FloatTensor<I>) -> Tensor<I, D> {
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

fn primitive<I: Backend, const D: usize>(tensor: Tensor<I, D>) -> FloatTensor<I> {
    tensor.into_primitive().tensor()
}

fn attention_autodiff<I: Backend, C: CheckpointStrategy>(
    mode: ComputeDtype,
    q: Tensor<Autodiff<I, C>, 3>,
    k: Tensor<Autodiff<I, C>, 3>,
    v: Tensor<Autodiff<I, C>, 3>,
    bias: Tensor<Autodiff<I, C>, 3>,
) -> Tensor<Autodiff<I, C>, 3> {
    #[derive(Debug)]
    struct AttentionBackward;

    impl<I: Backend> Backward<I, 4> for AttentionBackward {
        type State = ([NodeId; 4], ComputeDtype);

        fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
            let (ids, mode) = ops.state;
            let grad = inner::<I, 3>(grads.consume::<I>(&ops.node));
            let inputs = ids.map(|id| inner::<I, 3>(checkpointer.retrieve_node_output(id)));
            let input_grads = attention_backward(mode, inputs, grad);
            for (parent, g) in ops.parents.into_iter().zip(input_grads) {
                if let Some(node) = parent {
                    grads.register::<I>(node.id, primitive(g));
                }
            }
        }
    }

    let [q, k, v, bias] = [q, k, v, bias].map(primitive);
    let forward = |[q, k, v, bias]: [FloatTensor<I>; 4]| {
        primitive(attention_forward::<I>(mode, inner(q), inner(k), inner(v), inner(bias)))
    };
    let nodes = [q.node.clone(), k.node.clone(), v.node.clone(), bias.node.clone()];
    let out = match AttentionBackward.prepare::<C>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let ids = [prep.checkpoint(&q), prep.checkpoint(&k), prep.checkpoint(&v), prep.checkpoint(&bias)];
            let out = forward([q.primitive, k.primitive, v.primitive, bias.primitive]);
            prep.finish((ids, mode), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward([q.primitive, k.primitive, v.primitive, bias.primitive])),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

fn swiglu_autodiff<I: Backend, C: CheckpointStrategy>(hidden: Tensor<Autodiff<I, C>, 3>) -> Tensor<Autodiff<I, C>, 3> {
    #[derive(Debug)]
    struct SwigluBackward;

    impl<I: Backend> Backward<I, 1> for SwigluBackward {
        type State = NodeId;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
            let grad = inner::<I, 3>(grads.consume::<I>(&ops.node));
            let [parent] = ops.parents;
            if let Some(node) = parent {
                let hidden = inner::<I, 3>(checkpointer.retrieve_node_output(ops.state));
                grads.register::<I>(node.id, primitive(swiglu_backward(hidden, grad)));
            }
        }
    }

    let hidden = primitive(hidden);
    let out = match SwigluBackward.prepare::<C>([hidden.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let id = prep.checkpoint(&hidden);
            prep.finish(id, primitive(swiglu_forward::<I>(inner(hidden.primitive))))
        }
        OpsKind::UnTracked(prep) => prep.finish(primitive(swiglu_forward::<I>(inner(hidden.primitive)))),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

fn gain_layer_norm_autodiff<I: Backend, C: CheckpointStrategy>(
    x: Tensor<Autodiff<I, C>, 2>,
    gain: Tensor<Autodiff<I, C>, 1>,
    eps: f64,
) -> Tensor<Autodiff<I, C>, 2> {
    #[derive(Debug)]
    struct GainLayerNormBackward;

    impl<I: Backend> Backward<I, 2> for GainLayerNormBackward {
        type State = (NodeId, NodeId, f64);

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
            let (x_id, gain_id, eps) = ops.state;
            let grad = inner::<I, 2>(grads.consume::<I>(&ops.node));
            let x = inner::<I, 2>(checkpointer.retrieve_node_output(x_id));
            let gain = inner::<I, 1>(checkpointer.retrieve_node_output(gain_id));
            let (dx, dgain) = gain_layer_norm_backward(x, gain, eps, grad);
            let [x_parent, gain_parent] = ops.parents;
            if let Some(node) = x_parent {
                grads.register::<I>(node.id, primitive(dx));
            }
            if let Some(node) = gain_parent {
                grads.register::<I>(node.id, primitive(dgain));
            }
        }
    }

    let (x, gain) = (primitive(x), primitive(gain));
    let forward = |x, gain| primitive(gain_layer_norm_forward::<I>(inner(x), inner(gain), eps));
    let out = match GainLayerNormBackward.prepare::<C>([x.node.clone(), gain.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let state = (prep.checkpoint(&x), prep.checkpoint(&gain), eps);
            prep.finish(state, forward(x.primitive, gain.primitive))
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive, gain.primitive)),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[cfg(test)]
#[path = "fused_tests.rs"]
mod tests;
