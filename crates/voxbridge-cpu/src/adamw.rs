//! AdamW's update of one parameter as one parallel pass, in place where the buffers are unique.

use burn::backend::Flex;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use rayon::prelude::*;
use voxbridge_train::adamw::{Coefficients, Update};

use num_traits::AsPrimitive;

use crate::{GRAIN, Real, contiguous};

/// `[param, m, v]` after one update, or the update back for dtypes other than f32 / f64.
pub(crate) fn update(update: Update<Flex>, c: &Coefficients) -> Result<[Tensor<Flex, 1>; 3], Box<Update<Flex>>> {
    let dtypes = [&update.param, &update.grad, &update.m, &update.v].map(|t| t.dtype());
    match dtypes {
        [DType::F32, DType::F32, DType::F32, DType::F32] => Ok(update_typed::<f32>(update, c)),
        [DType::F64, DType::F64, DType::F64, DType::F64] => Ok(update_typed::<f64>(update, c)),
        _ => Err(Box::new(update)),
    }
}

/// The same operations as `voxbridge_train::adamw::composed_update`, in the same order, each
/// scalar rounded to `T` as burn's scalar ops round it: the results are bit-identical.
fn update_typed<T: Real>(update: Update<Flex>, c: &Coefficients) -> [Tensor<Flex, 1>; 3]
where
    f64: AsPrimitive<T>,
{
    let Update { param, grad, m, v } = update;
    let [mut param, mut m, mut v, grad] = [param, m, v, grad].map(contiguous);
    let [decay, b1, one_minus_b1, b2, one_minus_b2, bias2_sqrt, eps, step] =
        [c.decay, c.beta1, 1.0 - c.beta1, c.beta2, 1.0 - c.beta2, c.bias2_sqrt, c.eps, c.step_size]
            .map(AsPrimitive::<T>::as_);
    let g = grad.storage::<T>();
    param
        .storage_mut::<T>()
        .par_chunks_mut(GRAIN)
        .zip(m.storage_mut::<T>().par_chunks_mut(GRAIN))
        .zip(v.storage_mut::<T>().par_chunks_mut(GRAIN))
        .zip(g.par_chunks(GRAIN))
        .for_each(|(((p, m), v), g)| {
            for j in 0..p.len() {
                let decayed = p[j] * decay;
                m[j] = m[j] * b1 + g[j] * one_minus_b1;
                v[j] = v[j] * b2 + g[j] * g[j] * one_minus_b2;
                let denom = v[j].sqrt() / bias2_sqrt + eps;
                p[j] = decayed - m[j] / denom * step;
            }
        });
    [param, m, v].map(|t| Tensor::from_primitive(TensorPrimitive::Float(t)))
}
