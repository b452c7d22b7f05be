//! MindEye1 (spec §8; MedARC-AI/fMRI-reconstruction-NSD `src/models.py`), one subject per model:
//!
//! ```text
//! voxel2clip (BrainNetwork)   voxels (B, V)
//!   lin0      Linear(V, h) -> LayerNorm -> GELU -> Dropout(0.5)            (B, h)
//!   mlp[i]    Linear(h, h) -> LayerNorm -> GELU -> Dropout(0.15), + x      (B, h), i < blocks
//!   lin1      Linear(h, T·D)                                               (B, T·D) = clip_voxels
//!   projector per token: LN(D) GELU Linear(D, P) LN GELU Linear(P, P) LN GELU Linear(P, D)
//!                                                                          (B, T, D) = clip_voxels_proj
//! diffusion prior             DALLE2's prior network (the same as MindEye2's, [`crate::prior`]) on
//!                             clip_voxels viewed (B, T, D); training target x0 = image tokens ×
//!                             `image_embed_scale` = √D (MindEye2 drops that scale)
//! ```
//!
//! Released (the default `--hidden` path of Train_MindEye.py): h 4096, 4 blocks, 257 × 768 tokens
//! (Versatile Diffusion's image space), projector width 2048, prior depth 6 with 12 heads of 64.
//! The separate low-level model (`Voxel2StableDiffusionModel`) is [`lowlevel`].
//!
//! Checkpoint keys are the original ones: `voxel2clip.*`, `net.*` (the prior network) and the
//! `noise_scheduler.*` buffers, which are recomputed and not read.

pub mod lowlevel;

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use crate::backbone::{ClipProjector, layer_norm, linear};
use crate::lowlevel::dims;
use crate::precision;
use crate::prior::{DiffusionPrior, PriorConfig};
use crate::tensors::{LoadError, TensorMap};

/// Key prefix of the voxel-to-CLIP network in a MindEye1 checkpoint.
pub const VOXEL2CLIP: &str = "voxel2clip.";
/// Key prefix of the prior network in a MindEye1 checkpoint (`BrainDiffusionPrior.net`).
pub const PRIOR_NET: &str = "net.";

/// Every size of a MindEye1 model (`BrainNetwork` + `BrainDiffusionPrior`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MindEye1Config {
    /// Voxels of the one subject (15,724 for NSD subject 1).
    pub voxels: usize,
    /// Width h of the residual MLP (4096).
    pub hidden: usize,
    /// Residual blocks (4).
    pub blocks: usize,
    /// CLIP tokens per image (257 for Versatile Diffusion's ViT-L/14 hidden states).
    pub clip_tokens: usize,
    /// Width of each token (768).
    pub clip_dim: usize,
    /// Hidden width of the retrieval projector (2048, a literal in the original).
    pub projector_hidden: usize,
    /// Dropout after the input layer (0.5).
    #[serde(default = "default_dropout_input")]
    pub dropout_input: f64,
    /// Dropout in each residual block (0.15).
    #[serde(default = "default_dropout_blocks")]
    pub dropout_blocks: f64,
    /// The diffusion prior; absent for a voxel2clip-only model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior: Option<PriorConfig>,
}

fn default_dropout_input() -> f64 {
    0.5
}

fn default_dropout_blocks() -> f64 {
    0.15
}

impl MindEye1Config {
    /// The released subject-1 model for a subject with `voxels` voxels.
    pub fn released(voxels: usize) -> Self {
        let (tokens, dim) = (257, 768);
        MindEye1Config {
            voxels,
            hidden: 4096,
            blocks: 4,
            clip_tokens: tokens,
            clip_dim: dim,
            projector_hidden: 2048,
            dropout_input: default_dropout_input(),
            dropout_blocks: default_dropout_blocks(),
            prior: Some(PriorConfig::mindeye2(dim, tokens, 6, 64)),
        }
    }

    /// Width of `lin1`'s output, `clip_tokens × clip_dim`.
    pub fn out_dim(&self) -> usize {
        self.clip_tokens * self.clip_dim
    }

    /// DALLE2's default `image_embed_scale`, `√clip_dim`: MindEye1 trains the prior on targets
    /// multiplied by it and divides its predictions by it.
    pub fn image_embed_scale(&self) -> f64 {
        (self.clip_dim as f64).sqrt()
    }

    /// Every problem with the sizes, in words; empty when the model can be built.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, value) in [
            ("voxels", self.voxels),
            ("hidden", self.hidden),
            ("clip_tokens", self.clip_tokens),
            ("clip_dim", self.clip_dim),
            ("projector_hidden", self.projector_hidden),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be positive"));
            }
        }
        for (name, p) in [("dropout_input", self.dropout_input), ("dropout_blocks", self.dropout_blocks)] {
            if !(0.0..1.0).contains(&p) {
                problems.push(format!("{name} {p} must be in [0, 1)"));
            }
        }
        if let Some(prior) = &self.prior {
            if let Err(e) = prior.validate() {
                problems.push(format!("prior: {e}"));
            }
            if (prior.dim, prior.num_tokens) != (self.clip_dim, self.clip_tokens) {
                problems.push(format!(
                    "prior: dim {} × {} tokens must equal the CLIP tokens {} × {}",
                    prior.dim, prior.num_tokens, self.clip_dim, self.clip_tokens
                ));
            }
        }
        problems
    }

    /// Parameter counts by module, the way `param_counts_full.json` of the reference splits them:
    /// `voxel2clip.lin0`, `voxel2clip.mlp`, `voxel2clip.lin1`, `voxel2clip.projector`,
    /// `voxel2clip`, then (with a prior) `net` and `net.trainable`, and `total` /
    /// `total.trainable` (the checkpoint's `model_state_dict` without its buffers).
    pub fn param_counts(&self) -> Vec<(String, u64)> {
        let u = |v: usize| v as u64;
        let (v, h, d, p, out) =
            (u(self.voxels), u(self.hidden), u(self.clip_dim), u(self.projector_hidden), u(self.out_dim()));
        let lin0 = v * h + h + 2 * h;
        let mlp = u(self.blocks) * (h * h + h + 2 * h);
        let lin1 = h * out + out;
        let projector = 2 * d + (d * p + p) + 2 * p + (p * p + p) + 2 * p + (p * d + d);
        let voxel2clip = lin0 + mlp + lin1 + projector;
        let mut counts = vec![
            ("voxel2clip.lin0".to_string(), lin0),
            ("voxel2clip.mlp".to_string(), mlp),
            ("voxel2clip.lin1".to_string(), lin1),
            ("voxel2clip.projector".to_string(), projector),
            ("voxel2clip".to_string(), voxel2clip),
        ];
        let (net, net_trainable) = self.prior.as_ref().map_or((0, 0), |p| (p.num_params(), p.num_trainable_params()));
        if self.prior.is_some() {
            counts.push(("net".to_string(), net));
            counts.push(("net.trainable".to_string(), net_trainable));
        }
        counts.push(("total".to_string(), voxel2clip + net));
        counts.push(("total.trainable".to_string(), voxel2clip + net_trainable));
        counts
    }

    /// The sizes of a MindEye1 checkpoint (`voxel2clip.*`, optionally `net.*`): voxels and width
    /// from `lin0`, blocks from the `mlp.{i}` keys, the token width from the projector, the
    /// token count from `lin1`, and the prior's sizes from its own keys. Every expected tensor is
    /// then checked, so a missing key or a wrong shape is an error naming the key.
    pub fn infer(map: &TensorMap) -> Result<MindEye1Config, LoadError> {
        let src = || map.source_name().to_string();
        let shape2 = |key: &str| dims::<2>(map, key);
        let [hidden, voxels] = shape2(&format!("{VOXEL2CLIP}lin0.0.weight"))?;
        let blocks = (0..).take_while(|i| map.contains(&format!("{VOXEL2CLIP}mlp.{i}.0.weight"))).count();
        let [projector_hidden, clip_dim] = shape2(&format!("{VOXEL2CLIP}projector.2.weight"))?;
        let [out, _] = shape2(&format!("{VOXEL2CLIP}lin1.weight"))?;
        if clip_dim == 0 || !out.is_multiple_of(clip_dim) {
            return Err(LoadError::Tensor {
                source_name: src(),
                key: format!("{VOXEL2CLIP}lin1.weight"),
                message: format!("output width {out} is not a multiple of the token width {clip_dim}"),
            });
        }
        let prior = if map.contains(&format!("{PRIOR_NET}learned_query")) {
            Some(PriorConfig::infer(map, PRIOR_NET)?)
        } else {
            None
        };
        let config = MindEye1Config {
            voxels,
            hidden,
            blocks,
            clip_tokens: out / clip_dim,
            clip_dim,
            projector_hidden,
            dropout_input: default_dropout_input(),
            dropout_blocks: default_dropout_blocks(),
            prior,
        };
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(LoadError::Architecture { source_name: src(), message: problems.join("; ") });
        }
        for (key, shape) in config.voxel2clip_keys() {
            map.get_shaped(&key, &shape)?;
        }
        Ok(config)
    }

    /// Every `voxel2clip.*` key with its PyTorch shape.
    pub fn voxel2clip_keys(&self) -> Vec<(String, Vec<usize>)> {
        let (v, h, d, p) = (self.voxels, self.hidden, self.clip_dim, self.projector_hidden);
        let k = |rest: &str| format!("{VOXEL2CLIP}{rest}");
        let mut keys = vec![
            (k("lin0.0.weight"), vec![h, v]),
            (k("lin0.0.bias"), vec![h]),
            (k("lin0.1.weight"), vec![h]),
            (k("lin0.1.bias"), vec![h]),
        ];
        for i in 0..self.blocks {
            keys.extend([
                (k(&format!("mlp.{i}.0.weight")), vec![h, h]),
                (k(&format!("mlp.{i}.0.bias")), vec![h]),
                (k(&format!("mlp.{i}.1.weight")), vec![h]),
                (k(&format!("mlp.{i}.1.bias")), vec![h]),
            ]);
        }
        keys.extend([(k("lin1.weight"), vec![self.out_dim(), h]), (k("lin1.bias"), vec![self.out_dim()])]);
        for (index, width, linear) in [(0, d, Some((2, p))), (3, p, Some((5, p))), (6, p, Some((8, d)))] {
            keys.push((k(&format!("projector.{index}.weight")), vec![width]));
            keys.push((k(&format!("projector.{index}.bias")), vec![width]));
            if let Some((at, out)) = linear {
                keys.push((k(&format!("projector.{at}.weight")), vec![out, width]));
                keys.push((k(&format!("projector.{at}.bias")), vec![out]));
            }
        }
        keys
    }
}

/// Linear → LayerNorm → GELU → Dropout (`lin0` and each `mlp[i]`).
#[derive(Module, Debug)]
pub struct DenseBlock<B: Backend> {
    pub linear: Linear<B>,
    pub norm: LayerNorm<B>,
    pub dropout: Dropout,
}

impl<B: Backend> DenseBlock<B> {
    fn init(d_in: usize, d_out: usize, dropout: f64, device: &B::Device) -> Self {
        DenseBlock {
            linear: LinearConfig::new(d_in, d_out).init(device),
            norm: LayerNormConfig::new(d_out).init(device),
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    /// Keys `{p}0.*` (Linear) and `{p}1.*` (LayerNorm).
    fn from_tensors(
        map: &TensorMap,
        p: &str,
        d_in: usize,
        d_out: usize,
        dropout: f64,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        Ok(DenseBlock {
            linear: linear(map, &format!("{p}0."), d_in, d_out, device)?,
            norm: layer_norm(map, &format!("{p}1."), d_out, device)?,
            dropout: DropoutConfig::new(dropout).init(),
        })
    }

    /// `[B, d_in]` → `[B, d_out]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.dropout.forward(gelu(self.norm.forward(precision::linear(&self.linear, x))))
    }
}

/// `BrainNetwork`: voxels to CLIP tokens and their retrieval projection.
#[derive(Module, Debug)]
pub struct Voxel2Clip<B: Backend> {
    pub lin0: DenseBlock<B>,
    pub mlp: Vec<DenseBlock<B>>,
    pub lin1: Linear<B>,
    pub projector: ClipProjector<B>,
    pub clip_tokens: usize,
    pub clip_dim: usize,
}

/// What [`Voxel2Clip`] returns for a batch.
#[derive(Debug, Clone)]
pub struct Voxel2ClipOutput<B: Backend> {
    /// `lin1`'s output viewed as tokens, `[B, T, D]` (the prior's conditioning).
    pub clip_voxels: Tensor<B, 3>,
    /// The projector's output, `[B, T, D]` (the contrastive loss's input, flattened).
    pub clip_voxels_proj: Tensor<B, 3>,
}

impl<B: Backend> Voxel2Clip<B> {
    /// Freshly initialised, PyTorch-style (uniform ±1/√fan_in linears, unit LayerNorms).
    pub fn init(config: &MindEye1Config, device: &B::Device) -> Self {
        let h = config.hidden;
        Voxel2Clip {
            lin0: DenseBlock::init(config.voxels, h, config.dropout_input, device),
            mlp: (0..config.blocks).map(|_| DenseBlock::init(h, h, config.dropout_blocks, device)).collect(),
            lin1: LinearConfig::new(h, config.out_dim()).init(device),
            projector: ClipProjector::init(config.clip_dim, config.projector_hidden, device),
            clip_tokens: config.clip_tokens,
            clip_dim: config.clip_dim,
        }
    }

    /// From the original keys under `prefix` (`voxel2clip.`).
    pub fn from_tensors(
        map: &TensorMap,
        prefix: &str,
        config: &MindEye1Config,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        let h = config.hidden;
        Ok(Voxel2Clip {
            lin0: DenseBlock::from_tensors(
                map,
                &format!("{prefix}lin0."),
                config.voxels,
                h,
                config.dropout_input,
                device,
            )?,
            mlp: (0..config.blocks)
                .map(|i| {
                    DenseBlock::from_tensors(map, &format!("{prefix}mlp.{i}."), h, h, config.dropout_blocks, device)
                })
                .collect::<Result<_, _>>()?,
            lin1: linear(map, &format!("{prefix}lin1."), h, config.out_dim(), device)?,
            projector: ClipProjector::from_tensors(
                map,
                &format!("{prefix}projector."),
                config.clip_dim,
                config.projector_hidden,
                device,
            )?,
            clip_tokens: config.clip_tokens,
            clip_dim: config.clip_dim,
        })
    }

    /// The same network with dropout off (PyTorch's `eval()` under autodiff).
    pub fn without_dropout(mut self) -> Self {
        for block in std::iter::once(&mut self.lin0).chain(self.mlp.iter_mut()) {
            block.dropout = DropoutConfig::new(0.0).init();
        }
        self
    }

    /// The residual trunk: `lin0`'s output and each block's raw output (before its residual add),
    /// and the tensor entering `lin1`; all `[B, h]`.
    pub fn trunk(&self, voxels: Tensor<B, 2>) -> (Tensor<B, 2>, Vec<Tensor<B, 2>>, Tensor<B, 2>) {
        let lin0_out = self.lin0.forward(voxels);
        let mut x = lin0_out.clone();
        let mut outs = Vec::with_capacity(self.mlp.len());
        for block in &self.mlp {
            let out = block.forward(x.clone());
            outs.push(out.clone());
            x = out + x;
        }
        (lin0_out, outs, x)
    }

    /// Voxels `[B, V]` → tokens and their projection, `[B, T, D]` each.
    pub fn forward(&self, voxels: Tensor<B, 2>) -> Voxel2ClipOutput<B> {
        let (_, _, x) = self.trunk(voxels);
        let batch = x.dims()[0];
        let clip_voxels = precision::linear(&self.lin1, x).reshape([batch, self.clip_tokens, self.clip_dim]);
        let clip_voxels_proj = self.projector.forward(clip_voxels.clone());
        Voxel2ClipOutput { clip_voxels, clip_voxels_proj }
    }
}

/// A MindEye1 model: `voxel2clip` and, when configured, its diffusion prior.
#[derive(Module, Debug)]
pub struct MindEye1<B: Backend> {
    pub voxel2clip: Voxel2Clip<B>,
    pub prior: Option<DiffusionPrior<B>>,
}

impl<B: Backend> MindEye1<B> {
    /// Freshly initialised.
    ///
    /// # Panics
    /// If the prior's sizes are invalid (see [`MindEye1Config::problems`]).
    pub fn init(config: &MindEye1Config, device: &B::Device) -> Self {
        MindEye1 {
            voxel2clip: Voxel2Clip::init(config, device),
            prior: config.prior.as_ref().map(|p| DiffusionPrior::new(p.init(device))),
        }
    }

    /// From an original checkpoint's `model_state_dict` (`voxel2clip.*`, `net.*`).
    pub fn from_tensors(map: &TensorMap, config: &MindEye1Config, device: &B::Device) -> Result<Self, LoadError> {
        let prior = match &config.prior {
            Some(p) => Some(DiffusionPrior::from_tensors(map, "", p, device)?),
            None => None,
        };
        Ok(MindEye1 { voxel2clip: Voxel2Clip::from_tensors(map, VOXEL2CLIP, config, device)?, prior })
    }

    /// The same model with dropout off.
    pub fn without_dropout(self) -> Self {
        MindEye1 { voxel2clip: self.voxel2clip.without_dropout(), prior: self.prior }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_counts_match_the_original() {
        // ../shared/reference/mindeye1-tiny/param_counts_full.json, subject 1.
        let counts: std::collections::BTreeMap<String, u64> =
            MindEye1Config::released(15724).param_counts().into_iter().collect();
        assert_eq!(counts["voxel2clip.lin0"], 64_417_792);
        assert_eq!(counts["voxel2clip.mlp"], 67_158_016);
        assert_eq!(counts["voxel2clip.lin1"], 808_649_472);
        assert_eq!(counts["voxel2clip.projector"], 7_354_624);
        assert_eq!(counts["voxel2clip"], 947_579_904);
        assert_eq!(counts["net"], 56_055_184);
        assert_eq!(counts["net.trainable"], 56_055_168);
        assert_eq!(counts["total"], 1_003_635_088);
        assert_eq!(counts["total.trainable"], 1_003_635_072);
        for (voxels, total) in [(14278, 997_712_272), (13039, 992_637_328), (12682, 991_175_056)] {
            let counts: std::collections::BTreeMap<String, u64> =
                MindEye1Config::released(voxels).param_counts().into_iter().collect();
            assert_eq!(counts["total"], total, "{voxels} voxels");
        }
    }

    #[test]
    fn sizes_that_cannot_build_are_named() {
        let mut c = MindEye1Config::released(100);
        c.hidden = 0;
        c.dropout_input = 1.0;
        if let Some(p) = c.prior.as_mut() {
            p.num_tokens = 3;
        }
        let problems = c.problems().join("; ");
        assert!(problems.contains("hidden must be positive"), "{problems}");
        assert!(problems.contains("dropout_input 1"), "{problems}");
        assert!(problems.contains("prior: dim 768 × 3 tokens"), "{problems}");
    }
}
