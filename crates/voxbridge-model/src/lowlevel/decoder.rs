//! The VAE-style decoder of diffusers 0.23 (`diffusers.models.vae.Decoder` with
//! `UpDecoderBlock2D` up blocks), which MindEye2 uses as `bupsampler` (spec §1.2).
//!
//! Structure (written from the diffusers 0.23 behaviour, checked against the key names and
//! shapes of the MindEye2 reference state dict):
//!
//! ```text
//! conv_in     Conv3x3(in_channels -> top)                          top = block_out_channels.last()
//! mid_block   resnets.0 (top -> top), attentions.0 (1 head, width top), resnets.1 (top -> top)
//! up_blocks.i for i in 0..n, channels c_i = block_out_channels reversed:
//!             resnets.0 (c_{i-1} -> c_i), resnets.1..=layers_per_block (c_i -> c_i),
//!             upsamplers.0.conv: nearest 2x + Conv3x3(c_i -> c_i), except on the last block
//! conv_norm_out GroupNorm(norm_num_groups, block_out_channels[0]) -> SiLU
//! conv_out    Conv3x3(block_out_channels[0] -> out_channels)
//! ```
//!
//! Every GroupNorm in the decoder uses `norm_num_groups` groups and eps 1e-6 (diffusers passes
//! `resnet_eps=1e-6` to every block). The attention head width is `block_out_channels.last()`
//! (diffusers passes `attention_head_dim=block_out_channels[-1]`), so there is always one head.
//! The decoder's ResNet dropout is 0 and its output scale factors are 1, so neither appears here.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Tensor, backend::Backend};

use crate::precision;
use crate::tensors::{LoadError, TensorMap};

/// Sizes of a diffusers `Decoder` made of `UpDecoderBlock2D`s.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    /// Channels of the input map (`in_channels`).
    pub in_channels: usize,
    /// Channels of the output map (`out_channels`).
    pub out_channels: usize,
    /// diffusers `block_out_channels`, smallest first; the decoder walks them in reverse.
    pub block_out_channels: Vec<usize>,
    /// diffusers `layers_per_block`; each up block holds `layers_per_block + 1` ResNet blocks.
    pub layers_per_block: usize,
    /// Groups of every GroupNorm in the decoder.
    pub norm_num_groups: usize,
    /// Epsilon of every GroupNorm in the decoder (1e-6 in diffusers).
    pub norm_eps: f64,
}

impl DecoderConfig {
    /// Why these sizes cannot build a decoder, if they cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.block_out_channels.is_empty() {
            return Err("decoder block_out_channels is empty".into());
        }
        if self.in_channels == 0 || self.out_channels == 0 {
            return Err("decoder in_channels and out_channels must be positive".into());
        }
        if self.norm_num_groups == 0 {
            return Err("decoder norm_num_groups must be positive".into());
        }
        for &c in &self.block_out_channels {
            if c == 0 || c % self.norm_num_groups != 0 {
                return Err(format!(
                    "decoder block channel count {c} is not a positive multiple of norm_num_groups {}",
                    self.norm_num_groups
                ));
            }
        }
        let widest = self.block_out_channels.iter().chain([&self.in_channels, &self.out_channels]).max().copied();
        if widest.and_then(|c| c.checked_mul(c)).and_then(|v| v.checked_mul(9)).is_none() {
            return Err("decoder channel counts overflow".into());
        }
        if self.block_out_channels.len() > 16 {
            return Err(format!(
                "decoder with {} up blocks is not supported (at most 16)",
                self.block_out_channels.len()
            ));
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 {
            return Err(format!("decoder norm_eps must be positive, got {}", self.norm_eps));
        }
        Ok(())
    }

    /// Spatial upsampling factor: 2 per up block except the last.
    pub fn upsample_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// Every parameter as (name relative to the decoder, PyTorch shape), in state-dict naming.
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut s = ShapeList::default();
        let top = self.block_out_channels.last().copied().unwrap_or(0);
        s.conv("conv_in", self.in_channels, top, 3, true);
        s.resnet("mid_block.resnets.0", top, top);
        s.group_norm("mid_block.attentions.0.group_norm", top);
        for name in ["to_q", "to_k", "to_v", "to_out.0"] {
            s.linear(&format!("mid_block.attentions.0.{name}"), top, top);
        }
        s.resnet("mid_block.resnets.1", top, top);
        let n = self.block_out_channels.len();
        let mut prev = top;
        for (i, &c) in self.block_out_channels.iter().rev().enumerate() {
            for j in 0..=self.layers_per_block {
                s.resnet(&format!("up_blocks.{i}.resnets.{j}"), if j == 0 { prev } else { c }, c);
            }
            if i + 1 < n {
                s.conv(&format!("up_blocks.{i}.upsamplers.0.conv"), c, c, 3, true);
            }
            prev = c;
        }
        let bottom = self.block_out_channels.first().copied().unwrap_or(0);
        s.group_norm("conv_norm_out", bottom);
        s.conv("conv_out", bottom, self.out_channels, 3, true);
        s.0
    }

    /// Number of parameters, from the sizes alone.
    pub fn num_params(&self) -> u64 {
        count(&self.param_shapes())
    }

    /// A freshly initialised decoder (PyTorch-like default init: uniform ±1/sqrt(fan_in) for
    /// convolutions and linears, GroupNorm weight 1 and bias 0).
    ///
    /// # Panics
    /// If [`validate`](Self::validate) fails.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Decoder<B> {
        if let Err(e) = self.validate() {
            panic!("invalid decoder config: {e}");
        }
        let gn = |c| GroupNormConfig::new(self.norm_num_groups, c).with_epsilon(self.norm_eps).init(device);
        let conv = |ci, co, k| init_conv(ci, co, k, true, device);
        let resnet = |ci, co| ResnetBlock {
            norm1: gn(ci),
            conv1: conv(ci, co, 3),
            norm2: gn(co),
            conv2: conv(co, co, 3),
            conv_shortcut: (ci != co).then(|| conv(ci, co, 1)),
        };
        let top = self.top_channels();
        let n = self.block_out_channels.len();
        let mut prev = top;
        let mut up_blocks = Vec::with_capacity(n);
        for (i, &c) in self.block_out_channels.iter().rev().enumerate() {
            let resnets = (0..=self.layers_per_block).map(|j| resnet(if j == 0 { prev } else { c }, c)).collect();
            up_blocks.push(UpDecoderBlock { resnets, upsampler: (i + 1 < n).then(|| conv(c, c, 3)) });
            prev = c;
        }
        let linear = || LinearConfig::new(top, top).init(device);
        Decoder {
            conv_in: conv(self.in_channels, top, 3),
            mid_block: MidBlock {
                resnet0: resnet(top, top),
                attention: SpatialSelfAttention {
                    group_norm: gn(top),
                    to_q: linear(),
                    to_k: linear(),
                    to_v: linear(),
                    to_out: linear(),
                },
                resnet1: resnet(top, top),
            },
            up_blocks,
            conv_norm_out: gn(self.block_out_channels[0]),
            conv_out: conv(self.block_out_channels[0], self.out_channels, 3),
        }
    }

    /// The decoder from a state dict; `prefix` ends with a dot (e.g. `backbone.bupsampler.`).
    /// Every tensor is checked against the shape these sizes require. The mid-block attention
    /// may use diffusers 0.13's names (`query`, `key`, `value`, `proj_attn`) or later ones.
    pub fn load<B: Backend>(&self, map: &TensorMap, prefix: &str, device: &B::Device) -> Result<Decoder<B>, LoadError> {
        self.validate()
            .map_err(|message| LoadError::Architecture { source_name: map.source_name().to_string(), message })?;
        let groups = self.norm_num_groups;
        let eps = self.norm_eps;
        let key = |name: &str| format!("{prefix}{name}");
        let resnet = |name: &str, ci: usize, co: usize| -> Result<ResnetBlock<B>, LoadError> {
            Ok(ResnetBlock {
                norm1: load_group_norm(map, &key(&format!("{name}.norm1")), groups, ci, eps, device)?,
                conv1: load_conv(map, &key(&format!("{name}.conv1")), ci, co, 3, true, device)?,
                norm2: load_group_norm(map, &key(&format!("{name}.norm2")), groups, co, eps, device)?,
                conv2: load_conv(map, &key(&format!("{name}.conv2")), co, co, 3, true, device)?,
                conv_shortcut: if ci != co {
                    Some(load_conv(map, &key(&format!("{name}.conv_shortcut")), ci, co, 1, true, device)?)
                } else {
                    None
                },
            })
        };
        let top = self.top_channels();
        // diffusers ≥ 0.15 names the attention's linears to_q/to_k/to_v/to_out.0; 0.13 (MindEye1's
        // checkpoints) query/key/value/proj_attn, with the same shapes and meaning.
        let legacy = map.contains(&key("mid_block.attentions.0.query.weight"));
        let attn = |name: &str, legacy_name: &str| {
            let name = if legacy { legacy_name } else { name };
            load_linear(map, &key(&format!("mid_block.attentions.0.{name}")), top, top, device)
        };
        let mid_block = MidBlock {
            resnet0: resnet("mid_block.resnets.0", top, top)?,
            attention: SpatialSelfAttention {
                group_norm: load_group_norm(map, &key("mid_block.attentions.0.group_norm"), groups, top, eps, device)?,
                to_q: attn("to_q", "query")?,
                to_k: attn("to_k", "key")?,
                to_v: attn("to_v", "value")?,
                to_out: attn("to_out.0", "proj_attn")?,
            },
            resnet1: resnet("mid_block.resnets.1", top, top)?,
        };
        let n = self.block_out_channels.len();
        let mut prev = top;
        let mut up_blocks = Vec::with_capacity(n);
        for (i, &c) in self.block_out_channels.iter().rev().enumerate() {
            let resnets = (0..=self.layers_per_block)
                .map(|j| resnet(&format!("up_blocks.{i}.resnets.{j}"), if j == 0 { prev } else { c }, c))
                .collect::<Result<Vec<_>, _>>()?;
            let upsampler = if i + 1 < n {
                Some(load_conv(map, &key(&format!("up_blocks.{i}.upsamplers.0.conv")), c, c, 3, true, device)?)
            } else {
                None
            };
            up_blocks.push(UpDecoderBlock { resnets, upsampler });
            prev = c;
        }
        let bottom = self.block_out_channels[0];
        Ok(Decoder {
            conv_in: load_conv(map, &key("conv_in"), self.in_channels, top, 3, true, device)?,
            mid_block,
            up_blocks,
            conv_norm_out: load_group_norm(map, &key("conv_norm_out"), groups, bottom, eps, device)?,
            conv_out: load_conv(map, &key("conv_out"), bottom, self.out_channels, 3, true, device)?,
        })
    }

    fn top_channels(&self) -> usize {
        self.block_out_channels.last().copied().unwrap_or(0)
    }
}

/// diffusers `Decoder` (see the module docs for the structure).
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub mid_block: MidBlock<B>,
    pub up_blocks: Vec<UpDecoderBlock<B>>,
    pub conv_norm_out: GroupNorm<B>,
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> Decoder<B> {
    /// `z`: `[B, in_channels, H, W]` -> `[B, out_channels, H·f, W·f]`, f = 2^(blocks−1).
    pub fn forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = precision::conv2d(&self.conv_in, z); // [B, top, H, W]
        x = self.mid_block.forward(x); // [B, top, H, W]
        for block in &self.up_blocks {
            x = block.forward(x); // [B, c_i, 2H, 2W] (same size after the last block)
        }
        let x = silu(self.conv_norm_out.forward(x)); // [B, block_out_channels[0], H·f, W·f]
        precision::conv2d(&self.conv_out, x) // [B, out_channels, H·f, W·f]
    }
}

/// diffusers `UNetMidBlock2D` without time embedding: ResNet, self-attention, ResNet.
#[derive(Module, Debug)]
pub struct MidBlock<B: Backend> {
    pub resnet0: ResnetBlock<B>,
    pub attention: SpatialSelfAttention<B>,
    pub resnet1: ResnetBlock<B>,
}

impl<B: Backend> MidBlock<B> {
    /// `[B, C, H, W]` -> `[B, C, H, W]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.resnet0.forward(x);
        let x = self.attention.forward(x);
        self.resnet1.forward(x)
    }
}

/// diffusers `UpDecoderBlock2D`: ResNet blocks, then (except on the last block) nearest 2x
/// upsampling followed by a 3x3 convolution.
#[derive(Module, Debug)]
pub struct UpDecoderBlock<B: Backend> {
    pub resnets: Vec<ResnetBlock<B>>,
    /// `upsamplers.0.conv`.
    pub upsampler: Option<Conv2d<B>>,
}

impl<B: Backend> UpDecoderBlock<B> {
    /// `[B, C_in, H, W]` -> `[B, C_out, 2H, 2W]` (or `[B, C_out, H, W]` without upsampler).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = x;
        for resnet in &self.resnets {
            x = resnet.forward(x);
        }
        match &self.upsampler {
            Some(conv) => precision::conv2d(conv, upsample_nearest2x(x)),
            None => x,
        }
    }
}

/// diffusers `ResnetBlock2D` (pre-norm, no time embedding, dropout 0, output scale 1):
/// `skip(x) + conv2(SiLU(GN2(conv1(SiLU(GN1(x))))))`, with `skip` a 1x1 convolution when the
/// channel count changes and the identity otherwise.
#[derive(Module, Debug)]
pub struct ResnetBlock<B: Backend> {
    pub norm1: GroupNorm<B>,
    pub conv1: Conv2d<B>,
    pub norm2: GroupNorm<B>,
    pub conv2: Conv2d<B>,
    pub conv_shortcut: Option<Conv2d<B>>,
}

impl<B: Backend> ResnetBlock<B> {
    /// `[B, C_in, H, W]` -> `[B, C_out, H, W]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = precision::conv2d(&self.conv1, silu(self.norm1.forward(x.clone())));
        let h = precision::conv2d(&self.conv2, silu(self.norm2.forward(h)));
        let skip = match &self.conv_shortcut {
            Some(conv) => precision::conv2d(conv, x),
            None => x,
        };
        skip + h
    }
}

/// diffusers `Attention` as built for the VAE mid block: GroupNorm over the map, single-head
/// scaled dot-product self-attention over the H·W positions (scale 1/sqrt(C)), output
/// projection, residual add.
#[derive(Module, Debug)]
pub struct SpatialSelfAttention<B: Backend> {
    pub group_norm: GroupNorm<B>,
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    /// `to_out.0` (`to_out.1` is a dropout with p = 0).
    pub to_out: Linear<B>,
}

impl<B: Backend> SpatialSelfAttention<B> {
    /// `[B, C, H, W]` -> `[B, C, H, W]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let tokens = self.group_norm.forward(x.clone()).reshape([b, c, h * w]).swap_dims(1, 2); // [B, HW, C]
        let q = precision::linear(&self.to_q, tokens.clone()); // [B, HW, C]
        let k = precision::linear(&self.to_k, tokens.clone()); // [B, HW, C]
        let v = precision::linear(&self.to_v, tokens); // [B, HW, C]
        let scores = precision::matmul(q, k.swap_dims(1, 2)).mul_scalar(1.0 / (c as f64).sqrt()); // [B, HW, HW]
        let attended = precision::matmul(softmax(scores, 2), v); // [B, HW, C]
        let out = precision::linear(&self.to_out, attended).swap_dims(1, 2).reshape([b, c, h, w]); // [B, C, H, W]
        out + x
    }
}

/// Nearest-neighbour 2x upsampling, `[B, C, H, W]` -> `[B, C, 2H, 2W]`: output pixel (i, j)
/// copies input pixel (i/2, j/2), which is what `F.interpolate(scale_factor=2, mode="nearest")`
/// does. Written with reshape/expand so that it is exact on every backend.
pub fn upsample_nearest2x<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1]).expand([b, c, h, 2, w, 2]).reshape([b, c, 2 * h, 2 * w])
}

/// Parameter-shape bookkeeping in PyTorch layout and naming.
#[derive(Default)]
pub(crate) struct ShapeList(pub(crate) Vec<(String, Vec<usize>)>);

impl ShapeList {
    pub(crate) fn push(&mut self, name: String, shape: Vec<usize>) {
        self.0.push((name, shape));
    }

    pub(crate) fn conv(&mut self, name: &str, c_in: usize, c_out: usize, k: usize, bias: bool) {
        self.push(format!("{name}.weight"), vec![c_out, c_in, k, k]);
        if bias {
            self.push(format!("{name}.bias"), vec![c_out]);
        }
    }

    pub(crate) fn group_norm(&mut self, name: &str, channels: usize) {
        self.push(format!("{name}.weight"), vec![channels]);
        self.push(format!("{name}.bias"), vec![channels]);
    }

    pub(crate) fn linear(&mut self, name: &str, d_in: usize, d_out: usize) {
        self.push(format!("{name}.weight"), vec![d_out, d_in]);
        self.push(format!("{name}.bias"), vec![d_out]);
    }

    fn resnet(&mut self, name: &str, c_in: usize, c_out: usize) {
        self.group_norm(&format!("{name}.norm1"), c_in);
        self.conv(&format!("{name}.conv1"), c_in, c_out, 3, true);
        self.group_norm(&format!("{name}.norm2"), c_out);
        self.conv(&format!("{name}.conv2"), c_out, c_out, 3, true);
        if c_in != c_out {
            self.conv(&format!("{name}.conv_shortcut"), c_in, c_out, 1, true);
        }
    }
}

/// Total element count of a shape list.
pub(crate) fn count(shapes: &[(String, Vec<usize>)]) -> u64 {
    shapes.iter().map(|(_, s)| s.iter().map(|&d| d as u64).product::<u64>()).sum()
}

/// A stride-1 convolution with "same" padding for odd kernels, PyTorch-like init.
pub(crate) fn init_conv<B: Backend>(c_in: usize, c_out: usize, k: usize, bias: bool, device: &B::Device) -> Conv2d<B> {
    let p = k / 2;
    Conv2dConfig::new([c_in, c_out], [k, k])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(bias)
        .init(device)
}

/// A stride-1 `k`x`k` convolution (padding k/2) from `{key}.weight` `[c_out, c_in, k, k]` and,
/// when `bias`, `{key}.bias` `[c_out]`.
pub(crate) fn load_conv<B: Backend>(
    map: &TensorMap,
    key: &str,
    c_in: usize,
    c_out: usize,
    k: usize,
    bias: bool,
    device: &B::Device,
) -> Result<Conv2d<B>, LoadError> {
    let p = k / 2;
    Ok(Conv2d {
        weight: map.param(&format!("{key}.weight"), [c_out, c_in, k, k], device)?,
        bias: if bias { Some(map.param(&format!("{key}.bias"), [c_out], device)?) } else { None },
        stride: [1, 1],
        kernel_size: [k, k],
        dilation: [1, 1],
        groups: 1,
        padding: PaddingConfig2d::Explicit(p, p, p, p),
    })
}

/// An affine GroupNorm from `{key}.weight` and `{key}.bias`, both `[channels]`.
pub(crate) fn load_group_norm<B: Backend>(
    map: &TensorMap,
    key: &str,
    groups: usize,
    channels: usize,
    eps: f64,
    device: &B::Device,
) -> Result<GroupNorm<B>, LoadError> {
    Ok(GroupNorm {
        gamma: Some(map.param(&format!("{key}.weight"), [channels], device)?),
        beta: Some(map.param(&format!("{key}.bias"), [channels], device)?),
        num_groups: groups,
        num_channels: channels,
        epsilon: eps,
        affine: true,
    })
}

/// An `nn.Linear` with bias from `{key}.weight` `[d_out, d_in]` and `{key}.bias` `[d_out]`.
pub(crate) fn load_linear<B: Backend>(
    map: &TensorMap,
    key: &str,
    d_in: usize,
    d_out: usize,
    device: &B::Device,
) -> Result<Linear<B>, LoadError> {
    Ok(Linear {
        weight: map.linear_weight(&format!("{key}.weight"), d_in, d_out, device)?,
        bias: Some(map.param(&format!("{key}.bias"), [d_out], device)?),
    })
}
