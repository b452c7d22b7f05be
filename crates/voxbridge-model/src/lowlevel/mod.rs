//! MindEye2's low-level ("blurry") branch of `BrainNetwork` (spec §1.2, §1.3b).
//!
//! From the flattened backbone mixer output `x` `(B, h)` (the tensor that also enters
//! `backbone_linear`):
//!
//! ```text
//! blin1            Linear(h -> 64·7·7) -> Dropout(0.3) -> reshape (B, 64, 7, 7)
//! bnorm            GroupNorm(1 group, 64, eps 1e-5)                          = the feature map
//! bupsampler       diffusers Decoder(64 -> 4, blocks [32, 64, 128], 1 layer/block, 32 groups,
//!                  eps 1e-6) on the map                                       -> (B, 4, 28, 28)
//! b_maps_projector on the map: Conv1x1(64->512, no bias) -> GN(1, 512) -> ReLU
//!                  -> Conv1x1(512->512, no bias) -> GN(1, 512) -> ReLU -> Conv1x1(512->512, bias)
//!                  -> (B, 512, 7, 7), flattened over the grid and transposed  -> (B, 49, 512)
//! ```
//!
//! The 4×28×28 output is the predicted SD-VAE latent of the 224 px image; the (B, 49, 512)
//! features are matched against the ConvNeXt teacher. Checkpoint keys are MindEye2's
//! (`backbone.blin1.*`, `backbone.bnorm.*`, `backbone.bupsampler.*`, `backbone.b_maps_projector.*`).

mod decoder;

use std::collections::HashSet;

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Dropout, DropoutConfig, GroupNorm, GroupNormConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

pub use decoder::{
    Decoder, DecoderConfig, MidBlock, ResnetBlock, SpatialSelfAttention, UpDecoderBlock, upsample_nearest2x,
};
pub(crate) use decoder::{ShapeList, count, init_conv, load_conv, load_group_norm, load_linear};

use crate::precision;
use crate::tensors::{LoadError, TensorMap};

/// The submodules of the branch, in MindEye2's naming and in `param_counts` order.
const SUBMODULES: [&str; 4] = ["blin1", "bnorm", "b_maps_projector", "bupsampler"];

/// GroupNorm groups assumed by [`LowLevelConfig::infer`]: a state dict does not record it, and
/// MindEye2 (diffusers' default) uses 32.
const DEFAULT_NORM_NUM_GROUPS: usize = 32;

/// Sizes of the low-level branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LowLevelConfig {
    /// Width h of the backbone mixer output that feeds `blin1` (4096 in the released model).
    pub hidden: usize,
    /// Channels of the feature map (64).
    pub map_channels: usize,
    /// Side of the square feature map (7).
    pub map_size: usize,
    /// Channels of the predicted latent (4, the SD-VAE latent).
    pub latent_channels: usize,
    /// Side of the predicted latent (28); must equal `map_size · 2^(blocks − 1)`.
    pub latent_size: usize,
    /// Decoder `block_out_channels`, smallest first ([32, 64, 128]).
    pub block_out_channels: Vec<usize>,
    /// Decoder `layers_per_block` (1).
    pub layers_per_block: usize,
    /// Groups of every GroupNorm in the decoder (32).
    pub norm_num_groups: usize,
    /// Width of the maps projector (512).
    pub projector_width: usize,
    /// Dropout after `blin1` (0.3); active only on an autodiff backend, like burn's `Dropout`.
    pub dropout: f64,
    /// Epsilon of `bnorm` and of the projector's GroupNorms (PyTorch default 1e-5).
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Epsilon of the decoder's GroupNorms (diffusers 1e-6).
    #[serde(default = "default_decoder_norm_eps")]
    pub decoder_norm_eps: f64,
}

fn default_norm_eps() -> f64 {
    1e-5
}

fn default_decoder_norm_eps() -> f64 {
    1e-6
}

impl LowLevelConfig {
    /// MindEye2's branch (the sizes are fixed in `BrainNetwork`) for backbone width `hidden`.
    pub fn mindeye2(hidden: usize) -> Self {
        Self {
            hidden,
            map_channels: 64,
            map_size: 7,
            latent_channels: 4,
            latent_size: 28,
            block_out_channels: vec![32, 64, 128],
            layers_per_block: 1,
            norm_num_groups: 32,
            projector_width: 512,
            dropout: 0.3,
            norm_eps: default_norm_eps(),
            decoder_norm_eps: default_decoder_norm_eps(),
        }
    }

    /// The `bupsampler` decoder's sizes.
    pub fn decoder(&self) -> DecoderConfig {
        DecoderConfig {
            in_channels: self.map_channels,
            out_channels: self.latent_channels,
            block_out_channels: self.block_out_channels.clone(),
            layers_per_block: self.layers_per_block,
            norm_num_groups: self.norm_num_groups,
            norm_eps: self.decoder_norm_eps,
        }
    }

    /// `blin1` output width: `map_channels · map_size²` (3136).
    pub fn map_len(&self) -> usize {
        self.map_channels * self.map_size * self.map_size
    }

    /// Why these sizes cannot build the branch, if they cannot.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("hidden", self.hidden),
            ("map_channels", self.map_channels),
            ("map_size", self.map_size),
            ("latent_channels", self.latent_channels),
            ("projector_width", self.projector_width),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("low-level config: {name} must be positive"));
            }
        }
        let sizes_fit = self
            .map_channels
            .checked_mul(self.map_size)
            .and_then(|v| v.checked_mul(self.map_size))
            .and_then(|v| v.checked_mul(self.hidden))
            .is_some()
            && self.projector_width.checked_mul(self.projector_width).is_some();
        if !sizes_fit {
            return Err("low-level config: sizes overflow".into());
        }
        self.decoder().validate().map_err(|e| format!("low-level config: {e}"))?;
        let expected = self.map_size.checked_mul(self.decoder().upsample_factor());
        if expected != Some(self.latent_size) {
            return Err(format!(
                "low-level config: latent_size {} does not match map_size {} upsampled by {} decoder blocks",
                self.latent_size,
                self.map_size,
                self.block_out_channels.len()
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("low-level config: dropout {} is not in [0, 1)", self.dropout));
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 {
            return Err(format!("low-level config: norm_eps must be positive, got {}", self.norm_eps));
        }
        Ok(())
    }

    /// Every parameter as (name relative to the branch prefix, PyTorch shape), e.g.
    /// `("blin1.weight", [3136, h])`, in MindEye2's state-dict naming.
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (c, w) = (self.map_channels, self.projector_width);
        let mut s = ShapeList::default();
        s.linear("blin1", self.hidden, self.map_len());
        s.group_norm("bnorm", c);
        s.conv("b_maps_projector.0", c, w, 1, false);
        s.group_norm("b_maps_projector.1", w);
        s.conv("b_maps_projector.3", w, w, 1, false);
        s.group_norm("b_maps_projector.4", w);
        s.conv("b_maps_projector.6", w, w, 1, true);
        for (name, shape) in self.decoder().param_shapes() {
            s.push(format!("bupsampler.{name}"), shape);
        }
        s.0
    }

    /// Parameter counts per submodule, computed from the sizes (nothing is allocated). Names as
    /// in `mindeye2-tiny/param_counts_full.json`: `backbone.blin1`, `backbone.bnorm`,
    /// `backbone.b_maps_projector`, `backbone.bupsampler`. At h = 4096 these are 12,848,192,
    /// 128, 559,616 and 1,750,692.
    pub fn param_counts(&self) -> Vec<(String, u64)> {
        let shapes = self.param_shapes();
        SUBMODULES
            .iter()
            .map(|&sub| {
                let prefix = format!("{sub}.");
                let own: Vec<_> = shapes.iter().filter(|(n, _)| n.starts_with(&prefix)).cloned().collect();
                (format!("backbone.{sub}"), count(&own))
            })
            .collect()
    }

    /// Total parameter count of the branch.
    pub fn num_params(&self) -> u64 {
        count(&self.param_shapes())
    }

    /// The branch's sizes read from a state dict under `prefix` (e.g. `"backbone."`).
    ///
    /// `Ok(None)` when there is no `{prefix}blin1.weight` (a model trained without
    /// `blurry_recon`). Everything is read from tensor shapes except what a state dict does not
    /// record: the GroupNorm group count (assumed 32, MindEye2's), the dropout (0.3) and the
    /// epsilons (1e-5 / 1e-6). Every tensor the sizes require is checked to exist with the right
    /// shape, and any other tensor under the branch's submodules is an error naming it.
    pub fn infer(map: &TensorMap, prefix: &str) -> Result<Option<Self>, LoadError> {
        let key = |name: &str| format!("{prefix}{name}");
        let blin1_key = key("blin1.weight");
        if !map.contains(&blin1_key) {
            return Ok(None);
        }
        let bad = |key: &str, message: String| LoadError::Tensor {
            source_name: map.source_name().to_string(),
            key: key.to_string(),
            message,
        };
        let [map_len, hidden] = dims::<2>(map, &blin1_key)?;
        let bnorm_key = key("bnorm.weight");
        let [channels] = dims::<1>(map, &bnorm_key)?;
        if channels == 0 || map_len % channels != 0 {
            return Err(bad(&blin1_key, format!("{map_len} outputs do not split into {channels} channels (bnorm)")));
        }
        let area = map_len / channels;
        let side = (1..=area).find(|s| s * s >= area).unwrap_or(0);
        if side * side != area {
            return Err(bad(&blin1_key, format!("{map_len} outputs are not {channels} square maps")));
        }
        let proj_key = key("b_maps_projector.0.weight");
        let [width, ..] = dims::<4>(map, &proj_key)?;

        let conv1 = |i: usize, j: usize| key(&format!("bupsampler.up_blocks.{i}.resnets.{j}.conv1.weight"));
        let n_blocks = (0..).take_while(|&i| map.contains(&conv1(i, 0))).count();
        if n_blocks == 0 {
            map.get(&conv1(0, 0))?;
        }
        let mut block_out_channels = Vec::with_capacity(n_blocks);
        for i in 0..n_blocks {
            let [c, ..] = dims::<4>(map, &conv1(i, 0))?;
            block_out_channels.push(c);
        }
        block_out_channels.reverse();
        let n_resnets = (0..).take_while(|&j| map.contains(&conv1(0, j))).count();
        let [latent_channels, ..] = dims::<4>(map, &key("bupsampler.conv_out.weight"))?;
        let latent_size = u32::try_from(n_blocks - 1)
            .ok()
            .and_then(|e| 2usize.checked_pow(e))
            .and_then(|f| f.checked_mul(side))
            .ok_or_else(|| bad(&conv1(n_blocks - 1, 0), format!("{n_blocks} decoder up blocks are too many")))?;

        let config = Self {
            hidden,
            map_channels: channels,
            map_size: side,
            latent_channels,
            latent_size,
            block_out_channels,
            layers_per_block: n_resnets - 1,
            norm_num_groups: DEFAULT_NORM_NUM_GROUPS,
            projector_width: width,
            dropout: 0.3,
            norm_eps: default_norm_eps(),
            decoder_norm_eps: default_decoder_norm_eps(),
        };
        config.validate().map_err(|message| LoadError::Architecture {
            source_name: map.source_name().to_string(),
            message: format!("sizes read under `{prefix}` fit no low-level branch: {message}"),
        })?;
        let shapes = config.param_shapes();
        for (name, shape) in &shapes {
            map.get_shaped(&key(name), shape)?;
        }
        let expected: HashSet<String> = shapes.into_iter().map(|(n, _)| key(&n)).collect();
        let branch: Vec<String> = SUBMODULES.iter().map(|s| key(&format!("{s}."))).collect();
        if let Some(stray) =
            map.keys().find(|k| branch.iter().any(|b| k.starts_with(b.as_str())) && !expected.contains(*k))
        {
            return Err(bad(stray, "unexpected tensor: fits no part of the inferred low-level branch".into()));
        }
        Ok(Some(config))
    }

    /// A freshly initialised branch (PyTorch-like defaults: uniform ±1/sqrt(fan_in) weights and
    /// biases, GroupNorm weight 1 and bias 0).
    ///
    /// # Panics
    /// If [`validate`](Self::validate) fails.
    pub fn init<B: Backend>(&self, device: &B::Device) -> LowLevel<B> {
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
        let (c, w) = (self.map_channels, self.projector_width);
        let gn1 = |ch| GroupNormConfig::new(1, ch).with_epsilon(self.norm_eps).init(device);
        LowLevel {
            blin1: LinearConfig::new(self.hidden, self.map_len()).init(device),
            bdropout: DropoutConfig::new(self.dropout).init(),
            bnorm: gn1(c),
            bupsampler: self.decoder().init(device),
            b_maps_projector: MapsProjector {
                conv0: init_conv(c, w, 1, false, device),
                norm1: gn1(w),
                conv3: init_conv(w, w, 1, false, device),
                norm4: gn1(w),
                conv6: init_conv(w, w, 1, true, device),
            },
            map_channels: c,
            map_size: self.map_size,
        }
    }
}

/// Shape `[N]` of a rank-`N` tensor, or an error naming the key.
pub(crate) fn dims<const N: usize>(map: &TensorMap, key: &str) -> Result<[usize; N], LoadError> {
    let t = map.get(key)?;
    <[usize; N]>::try_from(t.shape.as_slice()).map_err(|_| LoadError::Tensor {
        source_name: map.source_name().to_string(),
        key: key.to_string(),
        message: format!("expected a rank-{N} tensor, found shape {:?}", t.shape),
    })
}

/// MindEye2's low-level branch (see the module docs).
#[derive(Module, Debug)]
pub struct LowLevel<B: Backend> {
    /// `Linear(h -> C·s·s)`.
    pub blin1: Linear<B>,
    /// Dropout after `blin1` (MindEye2's `bdropout`).
    pub bdropout: Dropout,
    /// `GroupNorm(1, C)`.
    pub bnorm: GroupNorm<B>,
    /// diffusers `Decoder`, `(B, C, s, s)` -> `(B, 4, 28, 28)`.
    pub bupsampler: Decoder<B>,
    /// 1x1-conv projector, `(B, C, s, s)` -> `(B, s·s, W)`.
    pub b_maps_projector: MapsProjector<B>,
    map_channels: usize,
    map_size: usize,
}

/// Outputs of [`LowLevel::forward`]; sizes for the MindEye2 config.
#[derive(Debug, Clone)]
pub struct LowLevelOutput<B: Backend> {
    /// `blin1` output before dropout, `[B, 3136]`.
    pub blin1_out: Tensor<B, 2>,
    /// Feature map after dropout, reshape and `bnorm`, `[B, 64, 7, 7]`.
    pub bnorm_out: Tensor<B, 4>,
    /// `bupsampler` output, the predicted SD-VAE latent, `[B, 4, 28, 28]`.
    pub blurry_latent: Tensor<B, 4>,
    /// `b_maps_projector` output with the 49 grid positions first, `[B, 49, 512]` (`b_aux`).
    pub blurry_features: Tensor<B, 3>,
}

impl<B: Backend> LowLevel<B> {
    /// The branch from a state dict: `prefix` is prepended to MindEye2's names (use
    /// `"backbone."` for a MindEye2 checkpoint). Every tensor is checked against `config`.
    pub fn from_tensors(
        map: &TensorMap,
        prefix: &str,
        config: &LowLevelConfig,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        config
            .validate()
            .map_err(|message| LoadError::Architecture { source_name: map.source_name().to_string(), message })?;
        let key = |name: &str| format!("{prefix}{name}");
        let (c, w, eps) = (config.map_channels, config.projector_width, config.norm_eps);
        Ok(Self {
            blin1: load_linear(map, &key("blin1"), config.hidden, config.map_len(), device)?,
            bdropout: DropoutConfig::new(config.dropout).init(),
            bnorm: load_group_norm(map, &key("bnorm"), 1, c, eps, device)?,
            bupsampler: config.decoder().load(map, &key("bupsampler."), device)?,
            b_maps_projector: MapsProjector {
                conv0: load_conv(map, &key("b_maps_projector.0"), c, w, 1, false, device)?,
                norm1: load_group_norm(map, &key("b_maps_projector.1"), 1, w, eps, device)?,
                conv3: load_conv(map, &key("b_maps_projector.3"), w, w, 1, false, device)?,
                norm4: load_group_norm(map, &key("b_maps_projector.4"), 1, w, eps, device)?,
                conv6: load_conv(map, &key("b_maps_projector.6"), w, w, 1, true, device)?,
            },
            map_channels: c,
            map_size: config.map_size,
        })
    }

    /// `mixer_out`: the flattened backbone mixer output `[B, h]` (the input of
    /// `backbone_linear`). Dropout is applied only on an autodiff backend.
    pub fn forward(&self, mixer_out: Tensor<B, 2>) -> LowLevelOutput<B> {
        let batch = mixer_out.dims()[0];
        let blin1_out = precision::linear(&self.blin1, mixer_out); // [B, C·s·s]
        let map =
            self.bdropout.forward(blin1_out.clone()).reshape([batch, self.map_channels, self.map_size, self.map_size]); // [B, C, s, s]
        let bnorm_out = self.bnorm.forward(map); // [B, C, s, s]
        let blurry_latent = self.bupsampler.forward(bnorm_out.clone()); // [B, 4, 28, 28]
        let blurry_features = self.b_maps_projector.forward(bnorm_out.clone()); // [B, s·s, W]
        LowLevelOutput { blin1_out, bnorm_out, blurry_latent, blurry_features }
    }
}

/// MindEye2's `b_maps_projector` (an `nn.Sequential`; fields are named after its indices):
/// Conv1x1(C->W, no bias), GN(1, W), ReLU, Conv1x1(W->W, no bias), GN(1, W), ReLU,
/// Conv1x1(W->W, bias); then flattened over the grid with the positions first.
#[derive(Module, Debug)]
pub struct MapsProjector<B: Backend> {
    pub conv0: Conv2d<B>,
    pub norm1: GroupNorm<B>,
    pub conv3: Conv2d<B>,
    pub norm4: GroupNorm<B>,
    pub conv6: Conv2d<B>,
}

impl<B: Backend> MapsProjector<B> {
    /// `[B, C, s, s]` -> `[B, s·s, W]` (row-major over the grid: position = row·s + column).
    pub fn forward(&self, map: Tensor<B, 4>) -> Tensor<B, 3> {
        let x = relu(self.norm1.forward(precision::conv2d(&self.conv0, map))); // [B, W, s, s]
        let x = relu(self.norm4.forward(precision::conv2d(&self.conv3, x))); // [B, W, s, s]
        let x = precision::conv2d(&self.conv6, x); // [B, W, s, s]
        let [b, w, h, v] = x.dims();
        x.reshape([b, w, h * v]).swap_dims(1, 2) // [B, s·s, W]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::module::Module;
    use burn::tensor::Distribution;
    use burn::tensor::module::interpolate;
    use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

    #[test]
    fn released_param_counts() {
        let counts = LowLevelConfig::mindeye2(4096).param_counts();
        let expected = [
            ("backbone.blin1", 12_848_192),
            ("backbone.bnorm", 128),
            ("backbone.b_maps_projector", 559_616),
            ("backbone.bupsampler", 1_750_692),
        ];
        let expected: Vec<(String, u64)> = expected.iter().map(|(n, c)| (n.to_string(), *c)).collect();
        assert_eq!(counts, expected);
        assert_eq!(LowLevelConfig::mindeye2(4096).num_params(), 12_848_192 + 128 + 559_616 + 1_750_692);
    }

    #[test]
    fn init_matches_analytic_count() {
        let device = Default::default();
        let config = LowLevelConfig::mindeye2(32);
        let model = config.init::<Flex>(&device);
        assert_eq!(model.num_params() as u64, config.num_params());
        let out = model.forward(Tensor::<Flex, 2>::random([2, 32], Distribution::Default, &device));
        assert_eq!(out.blin1_out.dims(), [2, 3136]);
        assert_eq!(out.bnorm_out.dims(), [2, 64, 7, 7]);
        assert_eq!(out.blurry_latent.dims(), [2, 4, 28, 28]);
        assert_eq!(out.blurry_features.dims(), [2, 49, 512]);
    }

    #[test]
    fn config_serde_round_trip_and_validation() {
        let config = LowLevelConfig::mindeye2(4096);
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<LowLevelConfig>(&json).unwrap(), config);
        assert!(serde_json::from_str::<LowLevelConfig>(&json.replace("\"hidden\"", "\"hiden\"")).is_err());
        let mut bad = config.clone();
        bad.latent_size = 32;
        assert!(bad.validate().unwrap_err().contains("latent_size"));
        let mut bad = config;
        bad.block_out_channels = vec![32, 48, 128];
        assert!(bad.validate().unwrap_err().contains("48"));
    }

    #[test]
    fn nearest_upsample_matches_interpolate_and_index_rule() {
        let device = Default::default();
        let x = Tensor::<Flex, 4>::random([2, 3, 5, 7], Distribution::Default, &device);
        let ours = upsample_nearest2x(x.clone());
        let burn_nearest = interpolate(x.clone(), [10, 14], InterpolateOptions::new(InterpolateMode::Nearest));
        assert_eq!(ours.to_data(), burn_nearest.to_data());
        let src = x.to_data().to_vec::<f32>().unwrap();
        let up = ours.to_data().to_vec::<f32>().unwrap();
        for bc in 0..6 {
            for i in 0..10 {
                for j in 0..14 {
                    assert_eq!(up[(bc * 10 + i) * 14 + j], src[(bc * 5 + i / 2) * 7 + j / 2]);
                }
            }
        }
    }
}
