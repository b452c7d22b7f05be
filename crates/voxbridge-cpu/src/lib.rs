//! CPU kernels for burn-flex behind `voxbridge_model::fused` and voxbridge-train's AdamW
//! ([`install`]).
//!
//! The fused ops' math (and the optimizer's) is written once in burn tensor ops, generic over
//! the backend, so CPU, wgpu and CUDA share it. On burn-flex each tensor op is a separate single-threaded pass over
//! memory into a freshly allocated buffer: SwiGLU's backward composed that way is ten passes over
//! `[rows, F]` (the largest element-wise tensors of the prior), and AdamW is twelve passes over
//! every parameter. Here each op is one loop, split over rows (or chunks) on rayon's pool (the
//! one burn-flex's matmuls use), reading its operands once; AdamW updates p, m and v in place.
//!
//! Numerics are the composed ops' up to float rounding: the same formulas in the same order,
//! the sigmoid as burn-flex computes it. Tests compare every kernel with the composed math.
//! Only f32 and f64 tensors are handled; for other dtypes a kernel declines and the composed
//! ops run.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Element, Tensor, TensorData, TensorPrimitive};
use num_traits::Float;
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
trait Real: Element + bytemuck::Pod + Float + Send + Sync + 'static {}
impl<T: Element + bytemuck::Pod + Float + Send + Sync + 'static> Real for T {}

/// burn-flex's sigmoid: no overflow of `exp` on either side.
fn sigmoid<T: Real>(x: T) -> T {
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

/// The tensor's storage holding exactly its elements, in order: shared where it already does,
/// copied from a strided or offset view. `storage` / `storage_mut` (copy-on-write where shared)
/// then cover the tensor and nothing else.
fn contiguous<const D: usize>(tensor: Tensor<Flex, D>) -> FlexTensor {
    tensor.into_primitive().tensor().to_contiguous()
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
    let dims = hidden.dims();
    let hidden = contiguous(hidden.clone());
    match hidden.dtype() {
        DType::F32 => Some(swiglu_forward_typed::<f32>(&hidden, dims)),
        DType::F64 => Some(swiglu_forward_typed::<f64>(&hidden, dims)),
        _ => None,
    }
}

fn swiglu_forward_typed<T: Real>(hidden: &FlexTensor, [rows, two_f]: [usize; 2]) -> Tensor<Flex, 2> {
    let f = two_f / 2;
    let mut out = vec![T::zero(); rows * f];
    out.par_chunks_mut(f.max(1))
        .zip(hidden.storage::<T>().par_chunks(two_f.max(1)))
        .with_min_len(rows_per_task(two_f))
        .for_each(|(out, row)| {
            let (value, gate) = row.split_at(f);
            for ((o, &a), &g) in out.iter_mut().zip(value).zip(gate) {
                *o = a * (g * sigmoid(g));
            }
        });
    tensor(out, [rows, f])
}

/// `(hidden [rows, 2F], grad [rows, F])` →
/// `[grad · silu(g), grad · a · σ(g)(1 + g(1 − σ(g)))]` `[rows, 2F]`.
fn swiglu_backward(hidden: &Tensor<Flex, 2>, grad: &Tensor<Flex, 2>) -> Option<Tensor<Flex, 2>> {
    let dims = hidden.dims();
    assert_eq!(grad.dims(), [dims[0], dims[1] / 2], "SwiGLU backward: grad must be [rows, F]");
    let (hidden, grad) = (contiguous(hidden.clone()), contiguous(grad.clone()));
    match (hidden.dtype(), grad.dtype()) {
        (DType::F32, DType::F32) => Some(swiglu_backward_typed::<f32>(&hidden, &grad, dims)),
        (DType::F64, DType::F64) => Some(swiglu_backward_typed::<f64>(&hidden, &grad, dims)),
        _ => None,
    }
}

fn swiglu_backward_typed<T: Real>(
    hidden: &FlexTensor,
    grad: &FlexTensor,
    [rows, two_f]: [usize; 2],
) -> Tensor<Flex, 2> {
    let f = two_f / 2;
    let mut out = vec![T::zero(); rows * two_f];
    out.par_chunks_mut(two_f.max(1))
        .zip(hidden.storage::<T>().par_chunks(two_f.max(1)))
        .zip(grad.storage::<T>().par_chunks(f.max(1)))
        .with_min_len(rows_per_task(two_f))
        .for_each(|((out, row), grad)| {
            let (dvalue, dgate) = out.split_at_mut(f);
            let (value, gate) = row.split_at(f);
            for j in 0..f {
                let (a, g, dy) = (value[j], gate[j], grad[j]);
                let s = sigmoid(g);
                dvalue[j] = dy * (g * s);
                // σ(g)·(g·(1 − σ(g)) + 1), grouped as the composed ops group it.
                let dsilu = s * (g * (T::one() - s) + T::one());
                dgate[j] = dy * a * dsilu;
            }
        });
    tensor(out, [rows, two_f])
}

#[cfg(test)]
mod tests;
