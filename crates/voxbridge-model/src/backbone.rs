//! MindEye2's `BrainNetwork` (spec §1.2): residual mixer blocks, `backbone_linear` to CLIP tokens,
//! and the token-wise retrieval projector `clip_proj`.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Tensor, backend::Backend};

use crate::config::{BackboneMode, MindEye2Config};
use crate::precision;
use crate::tensors::{LoadError, TensorMap};

/// LayerNorm → Linear → GELU → Dropout → Linear over the last axis of width `width`.
#[derive(Module, Debug)]
pub struct MixerBlock<B: Backend> {
    pub norm: LayerNorm<B>,
    pub fc1: Linear<B>,
    pub dropout: Dropout,
    pub fc2: Linear<B>,
}

impl<B: Backend> MixerBlock<B> {
    fn init(width: usize, dropout: f64, device: &B::Device) -> Self {
        MixerBlock {
            norm: LayerNormConfig::new(width).init(device),
            fc1: LinearConfig::new(width, width).init(device),
            dropout: DropoutConfig::new(dropout).init(),
            fc2: LinearConfig::new(width, width).init(device),
        }
    }

    /// Keys `{p}0.weight/bias` (LayerNorm), `{p}1.0.*` and `{p}1.3.*` (the two Linears).
    fn from_tensors(
        map: &TensorMap,
        p: &str,
        width: usize,
        dropout: f64,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        Ok(MixerBlock {
            norm: layer_norm(map, &format!("{p}0."), width, device)?,
            fc1: linear(map, &format!("{p}1.0."), width, width, device)?,
            dropout: DropoutConfig::new(dropout).init(),
            fc2: linear(map, &format!("{p}1.3."), width, width, device)?,
        })
    }

    /// `[.., width]` → `[.., width]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let x = self.norm.forward(x);
        let x = self.dropout.forward(gelu(precision::linear(&self.fc1, x)));
        precision::linear(&self.fc2, x)
    }
}

/// LN → GELU → Linear, three times, applied to every token: MindEye2's `clip_proj` (D → D
/// throughout) and MindEye1's projector (D → P → P → D).
#[derive(Module, Debug)]
pub struct ClipProjector<B: Backend> {
    pub norms: Vec<LayerNorm<B>>,
    pub linears: Vec<Linear<B>>,
}

impl<B: Backend> ClipProjector<B> {
    /// `(in, out)` of the three linears for token width `dim` and hidden width `hidden`.
    fn widths(dim: usize, hidden: usize) -> [(usize, usize); 3] {
        [(dim, hidden), (hidden, hidden), (hidden, dim)]
    }

    pub(crate) fn init(dim: usize, hidden: usize, device: &B::Device) -> Self {
        let widths = Self::widths(dim, hidden);
        ClipProjector {
            norms: widths.iter().map(|&(i, _)| LayerNormConfig::new(i).init(device)).collect(),
            linears: widths.iter().map(|&(i, o)| LinearConfig::new(i, o).init(device)).collect(),
        }
    }

    /// `nn.Sequential` keys: LayerNorms at 0, 3, 6; Linears at 2, 5, 8 (GELUs carry no weights).
    pub(crate) fn from_tensors(
        map: &TensorMap,
        p: &str,
        dim: usize,
        hidden: usize,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        let (mut norms, mut linears) = (Vec::new(), Vec::new());
        for (layer, (d_in, d_out)) in Self::widths(dim, hidden).into_iter().enumerate() {
            norms.push(layer_norm(map, &format!("{p}{}.", 3 * layer), d_in, device)?);
            linears.push(linear(map, &format!("{p}{}.", 3 * layer + 2), d_in, d_out, device)?);
        }
        Ok(ClipProjector { norms, linears })
    }

    /// `[B, T, D]` → `[B, T, D]`.
    pub fn forward(&self, mut x: Tensor<B, 3>) -> Tensor<B, 3> {
        for (norm, linear) in self.norms.iter().zip(&self.linears) {
            x = precision::linear(linear, gelu(norm.forward(x)));
        }
        x
    }
}

/// The shared backbone. `mixer_blocks2` act over the sequence axis (length 1 in MindEye2).
#[derive(Module, Debug)]
pub struct Backbone<B: Backend> {
    pub mixer_blocks1: Vec<MixerBlock<B>>,
    pub mixer_blocks2: Vec<MixerBlock<B>>,
    pub backbone_linear: Linear<B>,
    pub clip_proj: ClipProjector<B>,
    #[module(skip)]
    pub mode: BackboneMode,
    #[module(skip)]
    pub clip_tokens: usize,
    #[module(skip)]
    pub clip_dim: usize,
}

/// What the backbone returns, and what it computed on the way (for parity checks).
#[derive(Debug, Clone)]
pub struct BackboneOutput<B: Backend> {
    /// `[B, hidden]`: the tensor entering `backbone_linear`.
    pub mixer_out: Tensor<B, 2>,
    /// `[B, tokens, dim]`: conditions the diffusion prior.
    pub backbone: Tensor<B, 3>,
    /// `[B, tokens, dim]`: the retrieval embedding.
    pub clip_voxels: Tensor<B, 3>,
}

impl<B: Backend> Backbone<B> {
    pub fn init(config: &MindEye2Config, device: &B::Device) -> Self {
        let seq = MindEye2Config::SEQ_LEN;
        Backbone {
            mixer_blocks1: (0..config.blocks)
                .map(|_| MixerBlock::init(config.hidden, config.dropout, device))
                .collect(),
            mixer_blocks2: (0..config.blocks).map(|_| MixerBlock::init(seq, config.dropout, device)).collect(),
            backbone_linear: LinearConfig::new(config.hidden * seq, config.out_dim()).init(device),
            clip_proj: ClipProjector::init(config.clip_dim, config.clip_dim, device),
            mode: config.backbone_mode,
            clip_tokens: config.clip_tokens,
            clip_dim: config.clip_dim,
        }
    }

    /// MindEye2 key names under `prefix` (`backbone.`).
    pub fn from_tensors(
        map: &TensorMap,
        prefix: &str,
        config: &MindEye2Config,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        let seq = MindEye2Config::SEQ_LEN;
        let blocks = |name: &str, width: usize| {
            (0..config.blocks)
                .map(|i| MixerBlock::from_tensors(map, &format!("{prefix}{name}.{i}."), width, config.dropout, device))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Backbone {
            mixer_blocks1: blocks("mixer_blocks1", config.hidden)?,
            mixer_blocks2: blocks("mixer_blocks2", seq)?,
            backbone_linear: linear(
                map,
                &format!("{prefix}backbone_linear."),
                config.hidden * seq,
                config.out_dim(),
                device,
            )?,
            clip_proj: ClipProjector::from_tensors(
                map,
                &format!("{prefix}clip_proj."),
                config.clip_dim,
                config.clip_dim,
                device,
            )?,
            mode: config.backbone_mode,
            clip_tokens: config.clip_tokens,
            clip_dim: config.clip_dim,
        })
    }

    /// The same backbone with dropout off, for evaluating gradients exactly as the reference
    /// does (PyTorch `eval()` mode; burn applies dropout whenever autodiff is on).
    pub fn without_dropout(mut self) -> Self {
        for block in self.mixer_blocks1.iter_mut().chain(self.mixer_blocks2.iter_mut()) {
            block.dropout = DropoutConfig::new(0.0).init();
        }
        self
    }

    /// The mixer stage: ridge output `[B, hidden]` → `[B, hidden]`.
    ///
    /// Released: the original keeps two residual streams r1 (`[B,1,h]`) and r2 (`[B,h,1]`); each
    /// block does `x = mlp1(x) + r1; r1 = x; x = mlp2(xᵀ) + r2; r2 = x`. With a sequence of length
    /// 1, `LayerNorm(1)` outputs its bias, so `mlp2` is a constant c_i and the second line
    /// discards `mlp1`'s result: the output is `ridge + Σ c_i`. We compute exactly that — `mlp2`
    /// on the running stream (so its parameters get their true, zero or not, gradients) and no
    /// `mlp1` at all (its output never reaches anything; see [`Self::mixer_trace`]).
    pub fn mixer(&self, ridge_out: Tensor<B, 2>) -> Tensor<B, 2> {
        match self.mode {
            BackboneMode::Released => {
                let mut r2 = ridge_out.unsqueeze_dim::<3>(2); // [B, h, 1]
                for block2 in &self.mixer_blocks2 {
                    r2 = block2.forward(r2.clone()) + r2;
                }
                r2.squeeze_dim::<2>(2)
            }
            BackboneMode::CorrectedResidual => {
                let mut x = ridge_out.unsqueeze_dim::<3>(1); // [B, 1, h]
                for (block1, block2) in self.mixer_blocks1.iter().zip(&self.mixer_blocks2) {
                    x = block1.forward(x.clone()) + x;
                    let t = x.swap_dims(1, 2); // [B, h, 1]
                    x = (block2.forward(t.clone()) + t).swap_dims(1, 2);
                }
                x.squeeze_dim::<2>(1)
            }
        }
    }

    /// The raw outputs of every mixer block as the released code computes them (block1 `[B,1,h]`,
    /// block2 `[B,h,1]`), for checking against the reference; `forward` does not need them.
    pub fn mixer_trace(&self, ridge_out: Tensor<B, 2>) -> (Vec<Tensor<B, 3>>, Vec<Tensor<B, 3>>) {
        let mut x = ridge_out.unsqueeze_dim::<3>(1); // [B, 1, h]
        let (mut r1, mut r2) = (x.clone(), x.clone().swap_dims(1, 2));
        let (mut outs1, mut outs2) = (Vec::new(), Vec::new());
        for (block1, block2) in self.mixer_blocks1.iter().zip(&self.mixer_blocks2) {
            let o1 = block1.forward(x);
            outs1.push(o1.clone());
            x = o1 + r1;
            r1 = x.clone();
            let o2 = block2.forward(x.swap_dims(1, 2));
            outs2.push(o2.clone());
            x = o2 + r2;
            r2 = x.clone();
            x = x.swap_dims(1, 2);
        }
        (outs1, outs2)
    }

    /// Ridge output `[B, hidden]` → mixer output, backbone tokens and retrieval embedding.
    pub fn forward(&self, ridge_out: Tensor<B, 2>) -> BackboneOutput<B> {
        let mixer_out = self.mixer(ridge_out);
        let [batch, _] = mixer_out.dims();
        let backbone = precision::linear(&self.backbone_linear, mixer_out.clone()).reshape([
            batch,
            self.clip_tokens,
            self.clip_dim,
        ]);
        let clip_voxels = self.clip_proj.forward(backbone.clone());
        BackboneOutput { mixer_out, backbone, clip_voxels }
    }
}

/// `nn.LayerNorm(width)` (eps 1e-5) from `{p}weight` and `{p}bias`.
pub(crate) fn layer_norm<B: Backend>(
    map: &TensorMap,
    p: &str,
    width: usize,
    device: &B::Device,
) -> Result<LayerNorm<B>, LoadError> {
    let mut norm = LayerNormConfig::new(width).init(device);
    norm.gamma = map.param(&format!("{p}weight"), [width], device)?;
    norm.beta = Some(map.param(&format!("{p}bias"), [width], device)?);
    Ok(norm)
}

/// `nn.Linear(d_in, d_out)` with bias from `{p}weight` `[out, in]` and `{p}bias`.
pub(crate) fn linear<B: Backend>(
    map: &TensorMap,
    p: &str,
    d_in: usize,
    d_out: usize,
    device: &B::Device,
) -> Result<Linear<B>, LoadError> {
    Ok(Linear {
        weight: map.linear_weight(&format!("{p}weight"), d_in, d_out, device)?,
        bias: Some(map.param(&format!("{p}bias"), [d_out], device)?),
    })
}
