use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, NoCheckpointing};
use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor};

use super::*;

type Ad = Autodiff<Flex>;

fn random(shape: [usize; 3], scale: f64) -> Tensor<Ad, 3> {
    Tensor::from_inner(Tensor::<Flex, 3>::random(shape, Distribution::Normal(0.0, scale), &Default::default()))
}

fn max_abs_diff(a: Tensor<Flex, 3>, b: Tensor<Flex, 3>) -> f32 {
    (a - b).abs().max().into_scalar()
}

fn max_abs(a: Tensor<Flex, 3>) -> f32 {
    a.abs().max().into_scalar()
}

/// Output and input gradients of `f` under `loss = Σ f(inputs) ∘ weight`.
fn value_and_grads<const N: usize>(
    inputs: &[Tensor<Ad, 3>; N],
    weight: &Tensor<Ad, 3>,
    f: impl Fn([Tensor<Ad, 3>; N]) -> Tensor<Ad, 3>,
) -> (Tensor<Flex, 3>, [Tensor<Flex, 3>; N]) {
    let tracked = inputs.clone().map(|t| t.detach().require_grad());
    let out = f(tracked.clone());
    let grads = (out.clone() * weight.clone()).sum().backward();
    (out.inner(), tracked.map(|t| t.grad(&grads).expect("every input is tracked")))
}

/// Fused against composed: outputs and every gradient agree to `tolerance` of their scale.
fn assert_same<const N: usize>(
    what: &str,
    inputs: [Tensor<Ad, 3>; N],
    out_shape: [usize; 3],
    tolerance: f32,
    composed: impl Fn([Tensor<Ad, 3>; N]) -> Tensor<Ad, 3>,
    fused: impl Fn([Tensor<Ad, 3>; N]) -> Tensor<Ad, 3>,
) {
    let weight = random(out_shape, 1.0);
    let (out_c, grads_c) = value_and_grads(&inputs, &weight, composed);
    let (out_f, grads_f) = value_and_grads(&inputs, &weight, fused);
    let scale = max_abs(out_c.clone());
    let diff = max_abs_diff(out_c, out_f);
    assert!(diff <= tolerance * scale, "{what}: output differs by {diff} (scale {scale})");
    for (i, (c, f)) in grads_c.into_iter().zip(grads_f).enumerate() {
        let scale = max_abs(c.clone());
        let diff = max_abs_diff(c, f);
        assert!(scale > 0.0, "{what}: gradient {i} is zero");
        assert!(diff <= tolerance * scale, "{what}: gradient {i} differs by {diff} (scale {scale})");
    }
}

fn attention_inputs() -> [Tensor<Ad, 3>; 4] {
    // B = 2, H = 3 heads, n = 5 queries, K = n + 1 keys (null key first), dh = 4; logits up to
    // ~±10 like the prior's cosine-sim scale.
    let (b, h, n, dh) = (2, 3, 5, 4);
    [random([b, h * n, dh], 1.5), random([b, n + 1, dh], 1.5), random([b, n + 1, dh], 1.0), random([h, n, n + 1], 1.0)]
}

fn check_attention(mode: ComputeDtype, tolerance: f32) {
    let [b, rows, dh] = attention_inputs()[0].dims();
    assert_same(
        &format!("attention ({mode})"),
        attention_inputs(),
        [b, rows, dh],
        tolerance,
        |[q, k, v, bias]| attention_forward(mode, q, k, v, bias),
        |[q, k, v, bias]| attention_autodiff::<Flex, NoCheckpointing>(mode, q, k, v, bias),
    );
}

#[test]
fn fused_attention_matches_the_composed_ops_in_f32() {
    check_attention(ComputeDtype::F32, 1e-5);
}

#[test]
fn fused_attention_matches_the_composed_ops_in_bf16() {
    // The same bf16 roundings of the same operands: only the f32 softmax backward's summation
    // order differs, but an f32 difference in dP can flip one bf16 rounding of dS.
    check_attention(ComputeDtype::Bf16, 1e-2);
}

#[test]
fn fused_attention_matches_the_composed_ops_with_emulated_bf16() {
    check_attention(ComputeDtype::Bf16Emulated, 1e-5);
}

#[test]
fn fused_swiglu_matches_the_composed_ops() {
    let hidden = random([2, 5, 12], 2.0);
    assert_same(
        "swiglu",
        [hidden],
        [2, 5, 6],
        1e-6,
        |[h]| swiglu_forward(h),
        |[h]| swiglu_autodiff::<Flex, NoCheckpointing>(h),
    );
}

#[test]
fn untracked_inputs_run_the_forward_only() {
    let [q, k, v, bias] = attention_inputs();
    let fused =
        attention_autodiff::<Flex, NoCheckpointing>(ComputeDtype::F32, q.clone(), k.clone(), v.clone(), bias.clone());
    let composed = attention_forward(ComputeDtype::F32, q, k, v, bias);
    assert!(!fused.is_require_grad());
    assert!(max_abs_diff(fused.inner(), composed.inner()) < 1e-5);
}

#[test]
fn dispatch_uses_the_fused_ops_only_where_installed() {
    // A backend type no other test installs, so the test owns its registry entry.
    type Balanced = Autodiff<Flex, BalancedCheckpointing>;
    assert!(!is_installed::<Balanced>());
    install_autodiff::<Flex, BalancedCheckpointing>();
    assert!(is_installed::<Balanced>());
    assert!(!is_installed::<Flex>(), "the plain backend keeps the composed ops");
    let hidden = Tensor::<Balanced, 3>::random([1, 2, 4], Distribution::Default, &Default::default()).require_grad();
    let out = swiglu(hidden.clone());
    let grads = out.sum().backward();
    assert_eq!(hidden.grad(&grads).map(|g| g.dims()), Some([1, 2, 4]));
}

#[test]
fn fused_gain_layer_norm_matches_the_composed_ops() {
    // Rows of [rows, D] with a per-row offset, as the residual stream has; a non-trivial gain.
    let x = random([1, 6, 16], 3.0).reshape([6, 16]) + 5.0;
    let gain = random([1, 1, 16], 1.0).reshape([16]) + 1.0;
    // assert_same works on rank-3 tensors: carry x as [1, 6, 16] and the gain as [1, 1, 16].
    let inputs = [x.reshape([1, 6, 16]), gain.reshape([1, 1, 16])];
    let unpack = |[x, g]: [Tensor<Ad, 3>; 2]| (x.reshape([6, 16]), g.reshape([16]));
    assert_same(
        "gain layer norm",
        inputs,
        [1, 6, 16],
        1e-5,
        |t| {
            let (x, g) = unpack(t);
            gain_layer_norm_forward(x, g, 1e-5).reshape([1, 6, 16])
        },
        |t| {
            let (x, g) = unpack(t);
            gain_layer_norm_autodiff::<Flex, NoCheckpointing>(x, g, 1e-5).reshape([1, 6, 16])
        },
    );
}
