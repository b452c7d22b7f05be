//! MindEye1's separate low-level model, `Voxel2StableDiffusionModel(ups_mode='4x', use_cont=True)`
//! of `src/models.py`, trained by `train_autoencoder.py` as its own experiment:
//!
//! ```text
//! voxels (B, V)
//!   lin0      Linear(V, h, no bias) -> LayerNorm -> SiLU -> Dropout(0.5)      (B, h)
//!   mlp[i]    Linear(h, h, no bias) -> LayerNorm -> SiLU -> Dropout(0.25), + x (B, h)
//!   lin1      Linear(h, C·s·s, no bias), reshaped                             (B, C, s, s)
//!   norm      GroupNorm(1, C)                                                 = the map
//!   upsampler diffusers Decoder(C -> 4, blocks [64, 128, 256], 1 layer, 32 groups) on the map
//!                                                                             (B, 4, 4s, 4s)
//!   maps_projector on the map: Conv1x1(C->P) GN(1) ReLU Conv1x1(P->P) GN(1) ReLU Conv1x1(P->P, bias)
//!                                                                             (B, s·s, P)
//! ```
//!
//! Released: h 4096, 4 blocks, C 64, s 16 (a 4 × 64 × 64 SD-VAE latent), P 512. Keys are the
//! original ones (`lin0.*`, `mlp.*`, `lin1.weight`, `norm.*`, `upsampler.*` in diffusers 0.13
//! naming, `maps_projector.*`).

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use crate::backbone::layer_norm;
use crate::lowlevel::{
    Decoder, DecoderConfig, MapsProjector, ShapeList, count, dims, init_conv, load_conv, load_group_norm,
};
use crate::precision;
use crate::tensors::{LoadError, TensorMap};

/// Sizes of a MindEye1 low-level model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Voxel2SdConfig {
    /// Voxels of the one subject.
    pub voxels: usize,
    /// Width h of the residual MLP (4096).
    pub hidden: usize,
    /// Residual blocks (4).
    pub blocks: usize,
    /// Channels C of the map `lin1` produces (64).
    pub map_channels: usize,
    /// Side s of that map (16 in the `4x` mode).
    pub map_size: usize,
    /// Channels of the predicted latent (4).
    pub latent_channels: usize,
    /// Decoder `block_out_channels`, smallest first ([64, 128, 256]).
    pub block_out_channels: Vec<usize>,
    /// Decoder `layers_per_block` (1).
    pub layers_per_block: usize,
    /// Groups of the decoder's GroupNorms (32, diffusers' default; a state dict does not record it).
    pub norm_num_groups: usize,
    /// Width P of the contrastive maps projector (512).
    pub projector_width: usize,
    /// Dropout after the input layer (0.5).
    #[serde(default = "default_dropout_input")]
    pub dropout_input: f64,
    /// Dropout in each residual block (0.25).
    #[serde(default = "default_dropout_blocks")]
    pub dropout_blocks: f64,
}

fn default_dropout_input() -> f64 {
    0.5
}

fn default_dropout_blocks() -> f64 {
    0.25
}

/// GroupNorm epsilon of `norm` and the projector (PyTorch's default).
const NORM_EPS: f64 = 1e-5;
/// GroupNorm epsilon inside the diffusers decoder.
const DECODER_NORM_EPS: f64 = 1e-6;
/// Groups assumed when reading a state dict (diffusers' default, the released model's).
const DEFAULT_GROUPS: usize = 32;

impl Voxel2SdConfig {
    /// The released `4x` model with the contrastive projector, for `voxels` voxels.
    pub fn released(voxels: usize) -> Self {
        Voxel2SdConfig {
            voxels,
            hidden: 4096,
            blocks: 4,
            map_channels: 64,
            map_size: 16,
            latent_channels: 4,
            block_out_channels: vec![64, 128, 256],
            layers_per_block: 1,
            norm_num_groups: DEFAULT_GROUPS,
            projector_width: 512,
            dropout_input: default_dropout_input(),
            dropout_blocks: default_dropout_blocks(),
        }
    }

    /// The `upsampler`'s sizes.
    pub fn decoder(&self) -> DecoderConfig {
        DecoderConfig {
            in_channels: self.map_channels,
            out_channels: self.latent_channels,
            block_out_channels: self.block_out_channels.clone(),
            layers_per_block: self.layers_per_block,
            norm_num_groups: self.norm_num_groups,
            norm_eps: DECODER_NORM_EPS,
        }
    }

    /// Side of the predicted latent: `map_size · 2^(blocks − 1)`.
    pub fn latent_size(&self) -> usize {
        self.map_size * self.decoder().upsample_factor()
    }

    /// Every problem with the sizes, in words; empty when the model can be built.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, value) in [
            ("voxels", self.voxels),
            ("hidden", self.hidden),
            ("map_channels", self.map_channels),
            ("map_size", self.map_size),
            ("projector_width", self.projector_width),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be positive"));
            }
        }
        if let Err(e) = self.decoder().validate() {
            problems.push(e);
        }
        for (name, p) in [("dropout_input", self.dropout_input), ("dropout_blocks", self.dropout_blocks)] {
            if !(0.0..1.0).contains(&p) {
                problems.push(format!("{name} {p} must be in [0, 1)"));
            }
        }
        problems
    }

    /// Every parameter (original name, PyTorch shape).
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (v, h, c, p) = (self.voxels, self.hidden, self.map_channels, self.projector_width);
        let mut s = ShapeList::default();
        let no_bias_linear = |s: &mut ShapeList, name: &str, d_in: usize, d_out: usize| {
            s.push(format!("{name}.weight"), vec![d_out, d_in]);
        };
        no_bias_linear(&mut s, "lin0.0", v, h);
        s.group_norm("lin0.1", h);
        for i in 0..self.blocks {
            no_bias_linear(&mut s, &format!("mlp.{i}.0"), h, h);
            s.group_norm(&format!("mlp.{i}.1"), h);
        }
        no_bias_linear(&mut s, "lin1", h, c * self.map_size * self.map_size);
        s.group_norm("norm", c);
        for (name, shape) in self.decoder().param_shapes() {
            s.push(format!("upsampler.{name}"), shape);
        }
        s.conv("maps_projector.0", c, p, 1, false);
        s.group_norm("maps_projector.1", p);
        s.conv("maps_projector.3", p, p, 1, false);
        s.group_norm("maps_projector.4", p);
        s.conv("maps_projector.6", p, p, 1, true);
        s.0
    }

    /// Counts per module as the reference names them (`voxel2sd.lin0`, `.mlp`, `.lin1`, `.norm`,
    /// `.upsampler`, `.maps_projector`) and `total`.
    pub fn param_counts(&self) -> Vec<(String, u64)> {
        let shapes = self.param_shapes();
        let mut counts: Vec<(String, u64)> = ["lin0", "mlp", "lin1", "norm", "upsampler", "maps_projector"]
            .iter()
            .map(|m| {
                let prefix = format!("{m}.");
                let own: Vec<_> = shapes.iter().filter(|(n, _)| n.starts_with(&prefix)).cloned().collect();
                (format!("voxel2sd.{m}"), count(&own))
            })
            .collect();
        counts.push(("total".to_string(), count(&shapes)));
        counts
    }

    /// The sizes of a `Voxel2StableDiffusionModel` state dict. The decoder's GroupNorm group count
    /// is not in a state dict: 32 is assumed (the released model's), and a model whose channel
    /// counts are not multiples of 32 needs its sizes given (`--model`).
    pub fn infer(map: &TensorMap) -> Result<Voxel2SdConfig, LoadError> {
        let src = || map.source_name().to_string();
        let bad = |key: &str, message: String| LoadError::Tensor { source_name: src(), key: key.to_string(), message };
        let shape = |key: &str| map.get(key).map(|t| t.shape.clone());
        let [hidden, voxels] = dims::<2>(map, "lin0.0.weight")?;
        let blocks = (0..).take_while(|i| map.contains(&format!("mlp.{i}.0.weight"))).count();
        let map_channels = shape("norm.weight")?.first().copied().unwrap_or(0);
        let lin1_out = shape("lin1.weight")?.first().copied().unwrap_or(0);
        let area = lin1_out.checked_div(map_channels).unwrap_or(0);
        let map_size = (1..=area).find(|s| s * s >= area).unwrap_or(0);
        if map_size == 0 || map_size * map_size * map_channels != lin1_out {
            return Err(bad("lin1.weight", format!("{lin1_out} outputs are not {map_channels} square maps (norm)")));
        }
        let conv1 = |i: usize, j: usize| format!("upsampler.up_blocks.{i}.resnets.{j}.conv1.weight");
        let n_blocks = (0..).take_while(|&i| map.contains(&conv1(i, 0))).count();
        if n_blocks == 0 {
            map.get(&conv1(0, 0))?;
        }
        let mut block_out_channels =
            (0..n_blocks).map(|i| shape(&conv1(i, 0)).map(|s| s[0])).collect::<Result<Vec<_>, _>>()?;
        block_out_channels.reverse();
        let layers_per_block = (0..).take_while(|&j| map.contains(&conv1(0, j))).count() - 1;
        let latent_channels = shape("upsampler.conv_out.weight")?.first().copied().unwrap_or(0);
        let projector_width = shape("maps_projector.0.weight")?.first().copied().unwrap_or(0);
        if let Some(&c) = block_out_channels.iter().find(|&&c| c % DEFAULT_GROUPS != 0) {
            return Err(LoadError::Architecture {
                source_name: src(),
                message: format!(
                    "the decoder has {c} channels, not a multiple of the {DEFAULT_GROUPS} GroupNorm groups assumed \
                     when a state dict does not say: give the sizes in a model file (`--model`, with \
                     norm_num_groups)"
                ),
            });
        }
        let config = Voxel2SdConfig {
            voxels,
            hidden,
            blocks,
            map_channels,
            map_size,
            latent_channels,
            block_out_channels,
            layers_per_block,
            norm_num_groups: DEFAULT_GROUPS,
            projector_width,
            dropout_input: default_dropout_input(),
            dropout_blocks: default_dropout_blocks(),
        };
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(LoadError::Architecture { source_name: src(), message: problems.join("; ") });
        }
        config.check_keys(map)?;
        Ok(config)
    }

    /// Every expected tensor, present with its shape (the attention's linears under either
    /// diffusers naming).
    pub fn check_keys(&self, map: &TensorMap) -> Result<(), LoadError> {
        let legacy = map.contains("upsampler.mid_block.attentions.0.query.weight");
        for (name, shape) in self.param_shapes() {
            let name = if legacy {
                name.replace(".to_q.", ".query.")
                    .replace(".to_k.", ".key.")
                    .replace(".to_v.", ".value.")
                    .replace(".to_out.0.", ".proj_attn.")
            } else {
                name
            };
            map.get_shaped(&name, &shape)?;
        }
        Ok(())
    }
}

/// Linear (no bias) → LayerNorm → SiLU → Dropout.
#[derive(Module, Debug)]
pub struct SiluBlock<B: Backend> {
    pub linear: Linear<B>,
    pub norm: LayerNorm<B>,
    pub dropout: Dropout,
}

impl<B: Backend> SiluBlock<B> {
    fn init(d_in: usize, d_out: usize, dropout: f64, device: &B::Device) -> Self {
        SiluBlock {
            linear: LinearConfig::new(d_in, d_out).with_bias(false).init(device),
            norm: LayerNormConfig::new(d_out).init(device),
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    fn load(
        map: &TensorMap,
        p: &str,
        d_in: usize,
        d_out: usize,
        dropout: f64,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        Ok(SiluBlock {
            linear: Linear { weight: map.linear_weight(&format!("{p}0.weight"), d_in, d_out, device)?, bias: None },
            norm: layer_norm(map, &format!("{p}1."), d_out, device)?,
            dropout: DropoutConfig::new(dropout).init(),
        })
    }

    /// `[B, d_in]` → `[B, d_out]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.dropout.forward(silu(self.norm.forward(precision::linear(&self.linear, x))))
    }
}

/// `Voxel2StableDiffusionModel` (see the module docs).
#[derive(Module, Debug)]
pub struct Voxel2Sd<B: Backend> {
    pub lin0: SiluBlock<B>,
    pub mlp: Vec<SiluBlock<B>>,
    pub lin1: Linear<B>,
    pub norm: GroupNorm<B>,
    pub upsampler: Decoder<B>,
    pub maps_projector: MapsProjector<B>,
    pub map_channels: usize,
    pub map_size: usize,
}

/// What [`Voxel2Sd::forward`] returns.
#[derive(Debug, Clone)]
pub struct Voxel2SdOutput<B: Backend> {
    /// The normalised map, `[B, C, s, s]`.
    pub map: Tensor<B, 4>,
    /// The predicted latent, `[B, 4, 4s, 4s]` (`upsampler_out`).
    pub latent: Tensor<B, 4>,
    /// The contrastive features, `[B, s·s, P]` (`transformer_feats`).
    pub features: Tensor<B, 3>,
}

impl<B: Backend> Voxel2Sd<B> {
    /// Freshly initialised, PyTorch-style.
    ///
    /// # Panics
    /// If the sizes cannot build a model ([`Voxel2SdConfig::problems`]).
    pub fn init(config: &Voxel2SdConfig, device: &B::Device) -> Self {
        let problems = config.problems();
        assert!(problems.is_empty(), "MindEye1 low-level model: {}", problems.join("; "));
        let (h, c, p) = (config.hidden, config.map_channels, config.projector_width);
        let gn1 = |ch| GroupNormConfig::new(1, ch).with_epsilon(NORM_EPS).init(device);
        Voxel2Sd {
            lin0: SiluBlock::init(config.voxels, h, config.dropout_input, device),
            mlp: (0..config.blocks).map(|_| SiluBlock::init(h, h, config.dropout_blocks, device)).collect(),
            lin1: LinearConfig::new(h, c * config.map_size * config.map_size).with_bias(false).init(device),
            norm: gn1(c),
            upsampler: config.decoder().init(device),
            maps_projector: MapsProjector {
                conv0: init_conv(c, p, 1, false, device),
                norm1: gn1(p),
                conv3: init_conv(p, p, 1, false, device),
                norm4: gn1(p),
                conv6: init_conv(p, p, 1, true, device),
            },
            map_channels: c,
            map_size: config.map_size,
        }
    }

    /// From the original state dict (keys without a prefix).
    pub fn from_tensors(map: &TensorMap, config: &Voxel2SdConfig, device: &B::Device) -> Result<Self, LoadError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(LoadError::Architecture {
                source_name: map.source_name().to_string(),
                message: problems.join("; "),
            });
        }
        let (h, c, p) = (config.hidden, config.map_channels, config.projector_width);
        Ok(Voxel2Sd {
            lin0: SiluBlock::load(map, "lin0.", config.voxels, h, config.dropout_input, device)?,
            mlp: (0..config.blocks)
                .map(|i| SiluBlock::load(map, &format!("mlp.{i}."), h, h, config.dropout_blocks, device))
                .collect::<Result<_, _>>()?,
            lin1: Linear {
                weight: map.linear_weight("lin1.weight", h, c * config.map_size * config.map_size, device)?,
                bias: None,
            },
            norm: load_group_norm(map, "norm", 1, c, NORM_EPS, device)?,
            upsampler: config.decoder().load(map, "upsampler.", device)?,
            maps_projector: MapsProjector {
                conv0: load_conv(map, "maps_projector.0", c, p, 1, false, device)?,
                norm1: load_group_norm(map, "maps_projector.1", 1, p, NORM_EPS, device)?,
                conv3: load_conv(map, "maps_projector.3", p, p, 1, false, device)?,
                norm4: load_group_norm(map, "maps_projector.4", 1, p, NORM_EPS, device)?,
                conv6: load_conv(map, "maps_projector.6", p, p, 1, true, device)?,
            },
            map_channels: c,
            map_size: config.map_size,
        })
    }

    /// The same model with dropout off.
    pub fn without_dropout(mut self) -> Self {
        for block in std::iter::once(&mut self.lin0).chain(self.mlp.iter_mut()) {
            block.dropout = DropoutConfig::new(0.0).init();
        }
        self
    }

    /// Voxels `[B, V]` → the map, the predicted latent and the contrastive features.
    pub fn forward(&self, voxels: Tensor<B, 2>) -> Voxel2SdOutput<B> {
        let mut x = self.lin0.forward(voxels);
        for block in &self.mlp {
            x = block.forward(x.clone()) + x;
        }
        let batch = x.dims()[0];
        let map = precision::linear(&self.lin1, x).reshape([batch, self.map_channels, self.map_size, self.map_size]);
        let map = self.norm.forward(map); // [B, C, s, s]
        let latent = self.upsampler.forward(map.clone()); // [B, 4, 4s, 4s]
        let features = self.maps_projector.forward(map.clone()); // [B, s·s, P]
        Voxel2SdOutput { map, latent, features }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_counts_match_the_original() {
        // ../shared/reference/mindeye1-tiny/param_counts_full.json, subject 1 (and 2, 5, 7 totals).
        let counts: std::collections::BTreeMap<String, u64> =
            Voxel2SdConfig::released(15724).param_counts().into_iter().collect();
        assert_eq!(counts["voxel2sd.lin0"], 64_413_696);
        assert_eq!(counts["voxel2sd.mlp"], 67_141_632);
        assert_eq!(counts["voxel2sd.lin1"], 67_108_864);
        assert_eq!(counts["voxel2sd.norm"], 128);
        assert_eq!(counts["voxel2sd.upsampler"], 6_841_668);
        assert_eq!(counts["voxel2sd.maps_projector"], 559_616);
        assert_eq!(counts["total"], 206_065_604);
        for (voxels, total) in [(14278, 200_142_788), (13039, 195_067_844), (12682, 193_605_572)] {
            let counts: std::collections::BTreeMap<String, u64> =
                Voxel2SdConfig::released(voxels).param_counts().into_iter().collect();
            assert_eq!(counts["total"], total, "{voxels} voxels");
        }
        assert_eq!(Voxel2SdConfig::released(10).latent_size(), 64);
    }
}
