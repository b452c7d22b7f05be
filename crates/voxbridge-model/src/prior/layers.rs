//! The prior's transformer (DALLE2 `CausalTransformer` as MindEye2's `FlaggedCausalTransformer`,
//! non-causal): gain-only LayerNorm, multi-query cosine-sim attention with rotary embedding, a
//! learned null key/value and a T5 relative position bias, SwiGLU feed-forward.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use super::LAYER_NORM_EPS;
use crate::{fused, precision};

/// DALLE2 `LayerNorm`: gain only (no bias), biased variance, eps 1e-5. The `stable` variant
/// first divides the input by its (detached, signed) maximum over the last axis.
#[derive(Module, Debug)]
pub struct GainLayerNorm<B: Backend> {
    /// Gain `g`, `[D]`.
    pub g: Param<Tensor<B, 1>>,
    pub stable: bool,
}

impl<B: Backend> GainLayerNorm<B> {
    /// `[..., D] -> [..., D]`, normalised over the last axis.
    pub fn forward<const R: usize>(&self, x: Tensor<B, R>) -> Tensor<B, R> {
        let x = if self.stable {
            let max = x.clone().max_dim(R - 1).detach();
            x / max
        } else {
            x
        };
        // One fused op over the rows (`fused`: keeps only x for backward).
        let dims = x.dims();
        let rows = dims[..R - 1].iter().product::<usize>();
        fused::gain_layer_norm(x.reshape([rows, dims[R - 1]]), self.g.val(), LAYER_NORM_EPS).reshape(dims)
    }
}

/// T5 relative position bias (one-sided buckets), `nn.Embedding(num_buckets, heads)`.
#[derive(Module, Debug)]
pub struct RelPosBias<B: Backend> {
    /// `relative_attention_bias.weight`, `[num_buckets, H]`.
    pub weight: Param<Tensor<B, 2>>,
    pub num_buckets: usize,
    pub max_distance: usize,
}

impl<B: Backend> RelPosBias<B> {
    /// Bucket of query position `i` against key position `j`: `n = max(i - j, 0)`; `n` itself below
    /// `num_buckets / 2`, otherwise log-spaced up to `max_distance` (float32 arithmetic and
    /// truncation as in the original), capped at `num_buckets - 1`.
    pub fn bucket(i: usize, j: usize, num_buckets: usize, max_distance: usize) -> usize {
        let n = i.saturating_sub(j);
        let max_exact = num_buckets / 2;
        if n < max_exact {
            return n;
        }
        let log_ratio = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
        let large = ((n as f32 / max_exact as f32).ln() / log_ratio * (num_buckets - max_exact) as f32) as usize;
        (max_exact + large).min(num_buckets - 1)
    }

    /// The bias for `i` queries against `j` keys: `[H, i, j]`, `out[h, a, b] = weight[bucket(a, b), h]`.
    pub fn forward(&self, i: usize, j: usize) -> Tensor<B, 3> {
        let weight = self.weight.val();
        let device = weight.device();
        let heads = weight.dims()[1];
        let buckets: Vec<i64> = (0..i)
            .flat_map(|a| (0..j).map(move |b| (a, b)))
            .map(|(a, b)| Self::bucket(a, b, self.num_buckets, self.max_distance) as i64)
            .collect();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(buckets, [i * j]), &device);
        weight.select(0, index).reshape([i, j, heads]).permute([2, 0, 1])
    }
}

/// Rotary tables for positions `0..n`: `(cos, sin)`, each `[n, rotary_dim]` with every frequency
/// repeated for its interleaved pair (`[f0, f0, f1, f1, ...]`). Angles are `pos * freq` in float32.
pub fn rotary_tables<B: Backend>(freqs: &[f32], n: usize, device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let r = 2 * freqs.len();
    let mut cos = Vec::with_capacity(n * r);
    let mut sin = Vec::with_capacity(n * r);
    for pos in 0..n {
        for &f in freqs {
            let angle = pos as f32 * f;
            let (s, c) = angle.sin_cos();
            cos.extend([c, c]);
            sin.extend([s, s]);
        }
    }
    (Tensor::from_data(TensorData::new(cos, [n, r]), device), Tensor::from_data(TensorData::new(sin, [n, r]), device))
}

/// Rotates the first `rotary_dim` features of `x` (`[M, n, d]`, positions along axis 1) in
/// interleaved pairs: `out[2i] = x[2i] cos - x[2i+1] sin`, `out[2i+1] = x[2i+1] cos + x[2i] sin`;
/// the remaining features pass through. `cos`/`sin` come from [`rotary_tables`].
pub fn apply_rotary<B: Backend>(x: Tensor<B, 3>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Tensor<B, 3> {
    let [m, n, d] = x.dims();
    let r = cos.dims()[1];
    if r == 0 {
        return x;
    }
    let x_rot = x.clone().narrow(2, 0, r);
    let pairs = x_rot.clone().reshape([m, n, r / 2, 2]);
    let even = pairs.clone().narrow(3, 0, 1);
    let odd = pairs.narrow(3, 1, 1);
    let half_rotated = Tensor::cat(vec![odd.neg(), even], 3).reshape([m, n * r]);
    // As 2-D [m, n·r] rows times one broadcast row (burn-flex's fast broadcast path; free views).
    let (cos, sin) = (cos.clone().reshape([1, n * r]), sin.clone().reshape([1, n * r]));
    let rotated = (x_rot.reshape([m, n * r]) * cos + half_rotated * sin).reshape([m, n, r]);
    if r == d { rotated } else { Tensor::cat(vec![rotated, x.narrow(2, r, d - r)], 2) }
}

/// DALLE2 `Attention` (cosine-sim, multi-query, learned null key/value, rotary).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Pre-norm (`norm.g`).
    pub norm: GainLayerNorm<B>,
    /// `to_q`: `D -> H * dim_head`, no bias.
    pub to_q: Linear<B>,
    /// `to_kv`: `D -> 2 * dim_head` (one K/V head shared by all query heads), no bias.
    pub to_kv: Linear<B>,
    /// `null_kv`: `[2, dim_head]` (row 0 key, row 1 value), prepended after rotary.
    pub null_kv: Param<Tensor<B, 2>>,
    /// `to_out.0`: `H * dim_head -> D`, no bias.
    pub to_out: Linear<B>,
    /// `to_out.1`: gain-only LayerNorm after the projection.
    pub out_norm: GainLayerNorm<B>,
    pub heads: usize,
    pub dim_head: usize,
    pub cosine_sim_scale: f64,
}

impl<B: Backend> Attention<B> {
    /// `x`: `[B, n, D]`, `bias`: `[H, n, n + 1]` (column 0 is the null key), rotary tables `[n, r]`
    /// -> `[B, n, D]` (before the residual add).
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        bias: &Tensor<B, 3>,
        cos: &Tensor<B, 2>,
        sin: &Tensor<B, 2>,
    ) -> Tensor<B, 3> {
        let [b, n, _] = x.dims();
        let (h, dh) = (self.heads, self.dim_head);
        let x = self.norm.forward(x);
        // q: [B, n, H*dh] -> [B, H, n, dh], scaled before rotary and l2norm (the factor cancels)
        let q = precision::linear(&self.to_q, x.clone())
            .reshape([b, n, h, dh])
            .swap_dims(1, 2)
            .mul_scalar(self.cosine_sim_scale);
        let kv = precision::linear(&self.to_kv, x);
        let k = kv.clone().narrow(2, 0, dh);
        let v = kv.narrow(2, dh, dh);
        let q = apply_rotary(q.reshape([b * h, n, dh]), cos, sin);
        let k = apply_rotary(k, cos, sin);
        // learned null key / value, never rotated: [B, n + 1, dh]
        let null_kv = self.null_kv.val();
        let null_k = null_kv.clone().narrow(0, 0, 1).unsqueeze::<3>().expand([b, 1, dh]);
        let null_v = null_kv.narrow(0, 1, 1).unsqueeze::<3>().expand([b, 1, dh]);
        let k = Tensor::cat(vec![null_k, k], 1);
        let v = Tensor::cat(vec![null_v, v], 1);
        let root_scale = self.cosine_sim_scale.sqrt();
        let q = l2norm(q).mul_scalar(root_scale).reshape([b, h * n, dh]);
        let k = l2norm(k).mul_scalar(root_scale);
        // softmax(q·kᵀ + bias)·v: [B, H*n, dh] -> [B, n, H*dh] (one op: see `fused`)
        let out =
            fused::attention(q, k, v, bias.clone()).reshape([b, h, n, dh]).swap_dims(1, 2).reshape([b, n, h * dh]);
        self.out_norm.forward(precision::linear(&self.to_out, out))
    }
}

/// `F.normalize(x, dim=-1)`: `x / max(||x||, 1e-12)`.
fn l2norm<B: Backend, const R: usize>(x: Tensor<B, R>) -> Tensor<B, R> {
    let norm = x.clone().square().sum_dim(R - 1).sqrt().clamp_min(1e-12);
    x / norm
}

/// DALLE2 `FeedForward`: LayerNorm -> Linear(D, 2F) -> SwiGLU (`x * silu(gate)`, x = first half)
/// -> Linear(F, D), no biases.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    /// `.0.g`.
    pub norm: GainLayerNorm<B>,
    /// `.1`: `D -> 2 * F`.
    pub proj_in: Linear<B>,
    /// `.5`: `F -> D`.
    pub proj_out: Linear<B>,
}

impl<B: Backend> FeedForward<B> {
    /// `[B, n, D] -> [B, n, D]` (before the residual add).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let hidden = precision::linear(&self.proj_in, self.norm.forward(x));
        precision::linear(&self.proj_out, fused::swiglu(hidden))
    }
}

/// One layer: `x = attn(x) + x; x = ff(x) + x`.
#[derive(Module, Debug)]
pub struct TransformerLayer<B: Backend> {
    pub attn: Attention<B>,
    pub ff: FeedForward<B>,
}

/// The transformer: layers, then the stable LayerNorm and `project_out`.
#[derive(Module, Debug)]
pub struct CausalTransformer<B: Backend> {
    pub rel_pos_bias: RelPosBias<B>,
    pub layers: Vec<TransformerLayer<B>>,
    /// `norm` (stable variant).
    pub norm: GainLayerNorm<B>,
    /// `project_out`: `D -> D`, no bias.
    pub project_out: Linear<B>,
    /// Rotary inverse frequencies shared by every layer (`rotary_emb.freqs`, not trained).
    #[module(skip)]
    pub rotary_freqs: Vec<f32>,
}

/// Sub-block outputs of one layer, before their residual adds (`[B, N, D]` each).
#[derive(Debug, Clone)]
pub struct LayerTrace<B: Backend> {
    pub attn_out: Tensor<B, 3>,
    pub ff_out: Tensor<B, 3>,
}

impl<B: Backend> CausalTransformer<B> {
    /// `[B, n, D] -> [B, n, D]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_inner(x, None).0
    }

    /// The forward pass; with `trace`, each layer's sub-block outputs are pushed to it. Also
    /// returns the attention bias `[H, n, n + 1]`.
    pub fn forward_inner(
        &self,
        x: Tensor<B, 3>,
        mut trace: Option<&mut Vec<LayerTrace<B>>>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let n = x.dims()[1];
        let device = x.device();
        let bias = self.rel_pos_bias.forward(n, n + 1);
        let (cos, sin) = rotary_tables::<B>(&self.rotary_freqs, n, &device);
        let mut x = x;
        for layer in &self.layers {
            let attn_out = layer.attn.forward(x.clone(), &bias, &cos, &sin);
            x = attn_out.clone() + x;
            let ff_out = layer.ff.forward(x.clone());
            x = ff_out.clone() + x;
            if let Some(t) = trace.as_deref_mut() {
                t.push(LayerTrace { attn_out, ff_out });
            }
        }
        (precision::linear(&self.project_out, self.norm.forward(x)), bias)
    }
}
