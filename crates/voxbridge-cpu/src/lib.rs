//! CPU kernels for burn-flex behind `voxbridge_model::fused` and voxbridge-train's AdamW
//! ([`install`]).
//!
//! The fused ops' math (and the optimizer's) is written once in burn tensor ops, generic over the backend, so CPU,
//! wgpu and CUDA share it. On burn-flex each tensor op is a separate single-threaded pass over
//! memory into a freshly allocated buffer: SwiGLU's backward composed that way is ten passes over
//! `[rows, F]` (the largest element-wise tensors of the prior), and AdamW is twelve passes over
//! every parameter. Here each op is one loop, split over rows (or chunks) on rayon's pool (the
//! one burn-flex's matmuls use), reading its operands once; AdamW updates p, m and v in place.
//!
//! Numerics are the composed ops' up to float rounding: the same formulas in the same order,
//! the sigmoid as burn-flex computes it. Tests compare every kernel with the composed math.
//! Only f32 and f64 tensors are handled; other dtypes return `None` and get the composed ops.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Element, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;
use voxbridge_model::fused::{InnerKernels, install_inner};

/// Registers the kernels for burn-flex (idempotent).
pub fn install() {
    install_inner::<Flex>(InnerKernels { swiglu_forward, swiglu_backward });
    voxbridge_train::adamw::install_update_kernel::<Flex>(voxbridge_train::adamw::UpdateKernel {
        update: adamw::update,
    });
}

mod adamw;

/// Elements per rayon task: below this, splitting costs more than it saves.
const GRAIN: usize = 16 * 1024;

/// The float types the kernels run in.
trait Real: Element + bytemuck::Pod + Send + Sync + PartialOrd {
    fn from_f64(value: f64) -> Self;
    fn sqrt(self) -> Self;
    const ZERO: Self;
    const ONE: Self;
    fn exp(self) -> Self;
    fn add(self, other: Self) -> Self;
    fn sub(self, other: Self) -> Self;
    fn mul(self, other: Self) -> Self;
    fn div(self, other: Self) -> Self;
}

macro_rules! real {
    ($t:ty) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            fn from_f64(value: f64) -> Self {
                value as $t
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn add(self, other: Self) -> Self {
                self + other
            }
            fn sub(self, other: Self) -> Self {
                self - other
            }
            fn mul(self, other: Self) -> Self {
                self * other
            }
            fn div(self, other: Self) -> Self {
                self / other
            }
        }
    };
}
real!(f32);
real!(f64);

/// burn-flex's sigmoid: no overflow of `exp` on either side.
fn sigmoid<T: Real>(x: T) -> T {
    if x >= T::ZERO {
        T::ONE.div(T::ONE.add(x.mul(T::ZERO.sub(T::ONE)).exp()))
    } else {
        let e = x.exp();
        e.div(T::ONE.add(e))
    }
}

/// The contiguous storage of `tensor` (copied only where it is a strided view).
fn contiguous(tensor: &Tensor<Flex, 2>) -> FlexTensor {
    let flex = tensor.clone().into_primitive().tensor();
    if flex.is_contiguous() { flex } else { flex.to_contiguous() }
}

fn elements<T: Real>(tensor: &FlexTensor) -> &[T] {
    tensor.as_slice::<T>().expect("a contiguous tensor of the dispatched dtype")
}

fn tensor<T: Real>(values: Vec<T>, shape: [usize; 2]) -> Tensor<Flex, 2> {
    Tensor::from_primitive(TensorPrimitive::Float(FlexTensor::from_data(TensorData::new(values, shape))))
}

/// Rows per rayon task for rows of `width` elements.
fn rows_per_task(width: usize) -> usize {
    (GRAIN / width.max(1)).max(1)
}

/// `hidden [rows, 2F]` → `a · silu(g)` `[rows, F]`, `a, g` the halves of each row.
fn swiglu_forward(hidden: &Tensor<Flex, 2>) -> Option<Tensor<Flex, 2>> {
    let hidden = contiguous(hidden);
    match hidden.dtype() {
        DType::F32 => Some(swiglu_forward_typed::<f32>(&hidden)),
        DType::F64 => Some(swiglu_forward_typed::<f64>(&hidden)),
        _ => None,
    }
}

fn swiglu_forward_typed<T: Real>(hidden: &FlexTensor) -> Tensor<Flex, 2> {
    let [rows, two_f] = dims2(hidden);
    let f = two_f / 2;
    let mut out = vec![T::ZERO; rows * f];
    out.par_chunks_mut(f.max(1))
        .zip(elements::<T>(hidden).par_chunks(two_f.max(1)))
        .with_min_len(rows_per_task(two_f))
        .for_each(|(out, row)| {
            let (value, gate) = row.split_at(f);
            for ((o, &a), &g) in out.iter_mut().zip(value).zip(gate) {
                *o = a.mul(g.mul(sigmoid(g)));
            }
        });
    tensor(out, [rows, f])
}

/// `(hidden [rows, 2F], grad [rows, F])` →
/// `[grad · silu(g), grad · a · σ(g)(1 + g(1 − σ(g)))]` `[rows, 2F]`.
fn swiglu_backward(hidden: &Tensor<Flex, 2>, grad: &Tensor<Flex, 2>) -> Option<Tensor<Flex, 2>> {
    let (hidden, grad) = (contiguous(hidden), contiguous(grad));
    match (hidden.dtype(), grad.dtype()) {
        (DType::F32, DType::F32) => Some(swiglu_backward_typed::<f32>(&hidden, &grad)),
        (DType::F64, DType::F64) => Some(swiglu_backward_typed::<f64>(&hidden, &grad)),
        _ => None,
    }
}

fn swiglu_backward_typed<T: Real>(hidden: &FlexTensor, grad: &FlexTensor) -> Tensor<Flex, 2> {
    let [rows, two_f] = dims2(hidden);
    let f = two_f / 2;
    assert_eq!(dims2(grad), [rows, f], "SwiGLU backward: grad must be [rows, F]");
    let mut out = vec![T::ZERO; rows * two_f];
    out.par_chunks_mut(two_f.max(1))
        .zip(elements::<T>(hidden).par_chunks(two_f.max(1)))
        .zip(elements::<T>(grad).par_chunks(f.max(1)))
        .with_min_len(rows_per_task(two_f))
        .for_each(|((out, row), grad)| {
            let (dvalue, dgate) = out.split_at_mut(f);
            let (value, gate) = row.split_at(f);
            for j in 0..f {
                let (a, g, dy) = (value[j], gate[j], grad[j]);
                let s = sigmoid(g);
                dvalue[j] = dy.mul(g.mul(s));
                // σ(g)·(g·(1 − σ(g)) + 1), grouped as the composed ops group it.
                let dsilu = s.mul(g.mul(T::ONE.sub(s)).add(T::ONE));
                dgate[j] = dy.mul(a).mul(dsilu);
            }
        });
    tensor(out, [rows, two_f])
}

fn dims2(tensor: &FlexTensor) -> [usize; 2] {
    let shape = tensor.layout().shape();
    [shape[0], shape[1]]
}

#[cfg(test)]
mod tests;
