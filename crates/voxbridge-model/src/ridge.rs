//! The per-subject "ridge": one `Linear(voxels_s → hidden)` with bias per subject (spec §1.1).
//! Only the name says ridge — it is trained with AdamW weight decay, not solved in closed form.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Tensor, backend::Backend};

use crate::tensors::{LoadError, TensorMap};

#[derive(Module, Debug)]
pub struct SubjectRidge<B: Backend> {
    /// `linears[s]` maps subject s's voxels to the shared hidden width.
    pub linears: Vec<Linear<B>>,
}

impl<B: Backend> SubjectRidge<B> {
    /// Fresh weights, PyTorch's `nn.Linear` initialisation (U(±1/√fan_in)).
    pub fn init(voxels: &[usize], hidden: usize, device: &B::Device) -> Self {
        let linears = voxels.iter().map(|&v| LinearConfig::new(v, hidden).init(device)).collect();
        SubjectRidge { linears }
    }

    /// `ridge.linears.{s}.weight` `[hidden, V_s]` and `.bias` `[hidden]`.
    pub fn from_tensors(
        map: &TensorMap,
        prefix: &str,
        voxels: &[usize],
        hidden: usize,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        let linears = voxels
            .iter()
            .enumerate()
            .map(|(s, &v)| {
                Ok(Linear {
                    weight: map.linear_weight(&format!("{prefix}linears.{s}.weight"), v, hidden, device)?,
                    bias: Some(map.param(&format!("{prefix}linears.{s}.bias"), [hidden], device)?),
                })
            })
            .collect::<Result<_, LoadError>>()?;
        Ok(SubjectRidge { linears })
    }

    pub fn subjects(&self) -> usize {
        self.linears.len()
    }

    /// `voxels [B, V_s]` of subject index `subject` → `[B, hidden]`.
    ///
    /// Panics when `subject` is out of range: callers index subjects they built the model for.
    pub fn forward(&self, subject: usize, voxels: Tensor<B, 2>) -> Tensor<B, 2> {
        self.linears[subject].forward(voxels)
    }
}
