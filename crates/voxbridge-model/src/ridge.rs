//! The per-subject "ridge": one `Linear(voxels_s → hidden)` with bias per subject (spec §1.1).
//! Only the name says ridge — it is trained with AdamW weight decay, not solved in closed form.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Tensor, backend::Backend};

use crate::precision;
use crate::tensors::{LoadError, TensorMap};

#[derive(Module, Debug)]
pub struct SubjectRidge<B: Backend> {
    /// `linears[s]` maps subject s's voxels to the shared hidden width. `None` where this
    /// process does not hold subject s (a rank of a data-parallel run holds only the subjects it
    /// trains); the module paths of the others stay `ridge.linears.{s}.…`.
    pub linears: Vec<Option<Linear<B>>>,
}

impl<B: Backend> SubjectRidge<B> {
    /// Fresh weights, PyTorch's `nn.Linear` initialisation (U(±1/√fan_in)).
    pub fn init(voxels: &[usize], hidden: usize, device: &B::Device) -> Self {
        let linears = voxels.iter().map(|&v| Some(LinearConfig::new(v, hidden).init(device))).collect();
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
                Ok(Some(Linear {
                    weight: map.linear_weight(&format!("{prefix}linears.{s}.weight"), v, hidden, device)?,
                    bias: Some(map.param(&format!("{prefix}linears.{s}.bias"), [hidden], device)?),
                }))
            })
            .collect::<Result<_, LoadError>>()?;
        Ok(SubjectRidge { linears })
    }

    /// Subjects of the model, held here or not.
    pub fn subjects(&self) -> usize {
        self.linears.len()
    }

    /// Subject `subject`'s layer, when this process holds it.
    pub fn linear(&self, subject: usize) -> Option<&Linear<B>> {
        self.linears.get(subject).and_then(Option::as_ref)
    }

    /// Subjects whose layers this process holds.
    pub fn held(&self) -> Vec<usize> {
        (0..self.linears.len()).filter(|&s| self.linears[s].is_some()).collect()
    }

    /// Drops the layers of every subject not in `keep` (their memory is freed).
    pub fn keep_only(mut self, keep: &[usize]) -> Self {
        for (s, linear) in self.linears.iter_mut().enumerate() {
            if !keep.contains(&s) {
                *linear = None;
            }
        }
        self
    }

    /// `voxels [B, V_s]` of subject index `subject` → `[B, hidden]`.
    ///
    /// Panics when `subject` is out of range or not held here: callers index subjects they
    /// built the model for.
    pub fn forward(&self, subject: usize, voxels: Tensor<B, 2>) -> Tensor<B, 2> {
        match self.linear(subject) {
            Some(linear) => precision::linear(linear, voxels),
            None => panic!("subject {subject}'s ridge is not held by this process (held: {:?})", self.held()),
        }
    }
}
