//! Each kernel against the composed ops it replaces: burn's autodiff of SwiGLU through
//! `voxbridge_model::fused`, and voxbridge-train's composed AdamW update.

use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::{Autodiff, Flex};
use burn::tensor::activation::silu;
use burn::tensor::{DType, Distribution, ElementConversion, Tensor};
use voxbridge_model::fused;
use voxbridge_train::adamw::{Coefficients, Update, composed_update};

use super::*;

type Ad = Autodiff<Flex>;

fn setup() {
    install();
    fused::install_autodiff::<Flex, NoCheckpointing>();
}

fn max_abs(t: Tensor<Flex, 3>) -> f64 {
    t.abs().max().into_scalar().elem::<f64>()
}

/// `(out, d input)` of `loss = Σ f(x) ∘ w`.
fn value_and_grad(
    x: &Tensor<Flex, 3>,
    w: &Tensor<Flex, 3>,
    f: impl Fn(Tensor<Ad, 3>) -> Tensor<Ad, 3>,
) -> (Tensor<Flex, 3>, Tensor<Flex, 3>) {
    let x = Tensor::<Ad, 3>::from_inner(x.clone()).require_grad();
    let out = f(x.clone());
    let grads = (out.clone() * Tensor::from_inner(w.clone())).sum().backward();
    (out.inner(), x.grad(&grads).expect("x is tracked"))
}

fn composed_swiglu(x: Tensor<Ad, 3>) -> Tensor<Ad, 3> {
    let f = x.dims()[2] / 2;
    x.clone().narrow(2, 0, f) * silu(x.narrow(2, f, f))
}

fn assert_swiglu_matches(dtype: DType, tolerance: f64) {
    setup();
    assert!(voxbridge_model::kernels::lookup::<fused::InnerKernels<Flex>>().is_some());
    let device = Default::default();
    // 2 × 37 rows of width 2·48: more rows than one rayon task takes, gates up to ~±8.
    let x = Tensor::<Flex, 3>::random([2, 37, 96], Distribution::Normal(0.0, 3.0), &device).cast(dtype);
    let w = Tensor::<Flex, 3>::random([2, 37, 48], Distribution::Normal(0.0, 1.0), &device).cast(dtype);
    let (out_c, grad_c) = value_and_grad(&x, &w, composed_swiglu);
    let (out_k, grad_k) = value_and_grad(&x, &w, fused::swiglu);
    assert_eq!(out_k.dtype(), dtype);
    for (what, c, k) in [("output", out_c, out_k), ("gradient", grad_c, grad_k)] {
        let scale = max_abs(c.clone());
        let diff = max_abs(c - k);
        assert!(scale > 0.0, "{what} is zero");
        assert!(diff <= tolerance * scale, "{dtype:?} {what} differs by {diff} (scale {scale})");
    }
}

#[test]
fn swiglu_kernels_match_the_composed_ops_in_f32() {
    // A few f32 roundings apart: the same formulas, burn-flex's sigmoid.
    assert_swiglu_matches(DType::F32, 1e-6);
}

#[test]
fn swiglu_kernels_match_the_composed_ops_in_f64() {
    assert_swiglu_matches(DType::F64, 1e-14);
}

#[test]
fn strided_inputs_are_made_contiguous() {
    let device = Default::default();
    let wide = Tensor::<Flex, 2>::random([5, 12], Distribution::Normal(0.0, 1.0), &device);
    let view = wide.clone().narrow(1, 2, 8);
    let from_view = swiglu_forward(&view).expect("f32 is handled");
    let from_copy = swiglu_forward(&Tensor::from_data(view.to_data(), &device)).expect("f32 is handled");
    assert_eq!(from_view.to_data(), from_copy.to_data());
}

#[test]
fn other_dtypes_are_left_to_the_composed_ops() {
    let x = Tensor::<Flex, 2>::random([3, 8], Distribution::Normal(0.0, 1.0), &Default::default()).cast(DType::F16);
    assert!(swiglu_forward(&x).is_none());
    assert!(swiglu_backward(&x, &x.clone().narrow(1, 0, 4)).is_none());
}

fn adamw_inputs(dtype: DType, n: usize) -> Update<Flex> {
    let device = Default::default();
    let normal = |scale| Tensor::<Flex, 1>::random([n], Distribution::Normal(0.0, scale), &device).cast(dtype);
    Update { param: normal(1.0), grad: normal(0.1), m: normal(0.01), v: normal(0.001).abs() }
}

fn clone_update(u: &Update<Flex>) -> Update<Flex> {
    Update { param: u.param.clone(), grad: u.grad.clone(), m: u.m.clone(), v: u.v.clone() }
}

#[test]
fn adamw_kernel_is_bit_identical_to_the_composed_update() {
    let c = Coefficients {
        decay: 1.0 - 3e-4 * 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        bias2_sqrt: 0.0447,
        eps: 1e-8,
        step_size: 3e-3,
    };
    // More elements than one rayon chunk, and not a multiple of it.
    for dtype in [DType::F32, DType::F64] {
        let inputs = adamw_inputs(dtype, 3 * GRAIN + 17);
        let composed = composed_update(clone_update(&inputs), &c);
        let kernel = adamw::update(inputs, &c).expect("f32 and f64 are handled");
        for (name, a, b) in
            [("param", 0, 0), ("m", 1, 1), ("v", 2, 2)].map(|(n, i, j)| (n, composed[i].clone(), kernel[j].clone()))
        {
            assert_eq!(a.into_data(), b.into_data(), "{dtype:?} {name}");
        }
    }
}

#[test]
fn adamw_kernel_leaves_shared_inputs_untouched() {
    let c = Coefficients { decay: 1.0, beta1: 0.9, beta2: 0.999, bias2_sqrt: 1.0, eps: 1e-8, step_size: 1e-3 };
    let inputs = adamw_inputs(DType::F32, 100);
    let before = clone_update(&inputs);
    let _ = adamw::update(clone_update(&inputs), &c).expect("f32 is handled");
    assert_eq!(inputs.param.into_data(), before.param.into_data());
    assert_eq!(inputs.m.into_data(), before.m.into_data());
}

#[test]
fn adamw_kernel_gives_other_dtypes_back() {
    let c = Coefficients { decay: 1.0, beta1: 0.9, beta2: 0.999, bias2_sqrt: 1.0, eps: 1e-8, step_size: 1e-3 };
    let mut inputs = adamw_inputs(DType::F32, 8);
    inputs.grad = inputs.grad.cast(DType::F16);
    assert!(adamw::update(inputs, &c).is_err());
}
