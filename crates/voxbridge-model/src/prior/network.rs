//! MindEye2's `PriorNetwork`: continuous-time sinusoidal embedding + MLP, conditioning dropout
//! with learned null embeddings, the `pos_emb` learned query, and the transformer.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Bool, Distribution, Tensor, TensorData, backend::Backend};

use super::PriorConfig;
use super::layers::{
    Attention, CausalTransformer, FeedForward, GainLayerNorm, LayerTrace, RelPosBias, TransformerLayer,
};
use crate::precision;

/// DALLE2 `MLP(D, D, expansion_factor=2, depth=2)`: Linear(D, 2D) + SiLU, Linear(2D, 2D) + SiLU,
/// Linear(2D, D), all with bias (`to_time_embeds.0.1.net.{0.0, 1.0, 2}`).
#[derive(Module, Debug)]
pub struct TimeMlp<B: Backend> {
    pub layer0: Linear<B>,
    pub layer1: Linear<B>,
    pub layer2: Linear<B>,
}

impl<B: Backend> TimeMlp<B> {
    /// `[B, D] -> [B, D]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = silu(precision::linear(&self.layer0, x));
        let x = silu(precision::linear(&self.layer1, x));
        precision::linear(&self.layer2, x)
    }
}

/// Per-sample conditioning keep-masks (`true` = keep the real input, `false` = replace it by the
/// learned null embedding). Drawing them is the caller's business, so runs are reproducible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CondKeep {
    /// Keep the brain tokens (else `null_brain_embeds`), one entry per batch element.
    pub brain: Vec<bool>,
    /// Keep the noisy image tokens (else `null_image_embed`), one entry per batch element.
    pub image: Vec<bool>,
}

impl CondKeep {
    /// Keep everything (no conditioning dropout; sampling's conditional pass).
    pub fn all(batch: usize) -> Self {
        Self { brain: vec![true; batch], image: vec![true; batch] }
    }

    /// Drop everything (the unconditional pass of classifier-free guidance).
    pub fn none(batch: usize) -> Self {
        Self { brain: vec![false; batch], image: vec![false; batch] }
    }

    /// Drop probabilities of exactly 0 or 1 give deterministic masks (as DALLE2's `prob_mask_like`
    /// short-circuits); anything else is `None`.
    pub fn deterministic(batch: usize, brain_drop: f64, image_drop: f64) -> Option<Self> {
        let fixed = |p: f64| match p {
            0.0 => Some(true),
            1.0 => Some(false),
            _ => None,
        };
        Some(Self { brain: vec![fixed(brain_drop)?; batch], image: vec![fixed(image_drop)?; batch] })
    }

    /// DALLE2's `prob_mask_like` with keep probability `1 - drop`: the brain mask first, then the
    /// image mask, each `uniform() < 1 - drop` per sample; probabilities 0 and 1 use no draws.
    /// `uniform` must return values in `[0, 1)`.
    pub fn sample(batch: usize, brain_drop: f64, image_drop: f64, uniform: &mut dyn FnMut() -> f64) -> Self {
        let mut mask = |drop: f64| -> Vec<bool> {
            let keep = 1.0 - drop;
            if keep >= 1.0 {
                vec![true; batch]
            } else if keep <= 0.0 {
                vec![false; batch]
            } else {
                (0..batch).map(|_| uniform() < keep).collect()
            }
        };
        let brain = mask(brain_drop);
        let image = mask(image_drop);
        Self { brain, image }
    }

    /// [`CondKeep::sample`] with a self-contained seeded generator (SplitMix64), reproducible
    /// across platforms and independent of any backend RNG.
    pub fn seeded(batch: usize, brain_drop: f64, image_drop: f64, seed: u64) -> Self {
        let mut generator = voxbridge_seed::SplitMix64::new(seed);
        let mut uniform = move || generator.next_f64();
        Self::sample(batch, brain_drop, image_drop, &mut uniform)
    }

    /// [`CondKeep::sample`] with uniform draws from the backend's RNG (seed it with `B::seed`).
    pub fn random<B: Backend>(batch: usize, brain_drop: f64, image_drop: f64, device: &B::Device) -> Self {
        let draws = Tensor::<B, 1>::random([2 * batch.max(1)], Distribution::Default, device)
            .into_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .unwrap_or_default();
        let mut it = draws.into_iter();
        let mut uniform = move || it.next().unwrap_or(0.0);
        Self::sample(batch, brain_drop, image_drop, &mut uniform)
    }

    fn tensor<B: Backend>(keep: &[bool], shape: [usize; 3], device: &B::Device) -> Tensor<B, 3, Bool> {
        Tensor::<B, 1, Bool>::from_data(TensorData::new(keep.to_vec(), [keep.len()]), device)
            .reshape([shape[0], 1, 1])
            .expand(shape)
    }
}

/// Intermediates of one [`PriorNetwork`] forward pass.
#[derive(Debug, Clone)]
pub struct PriorTrace<B: Backend> {
    /// Sinusoidal time features `[B, D]`.
    pub sinusoidal: Tensor<B, 2>,
    /// Time token `[B, 1, D]`.
    pub time_embed: Tensor<B, 3>,
    /// Transformer input `[B, N, D]`: `[brain, time, x_t + learned_query]` after the null swaps.
    pub tokens_in: Tensor<B, 3>,
    /// Relative position bias `[H, N, N + 1]`.
    pub attn_bias: Tensor<B, 3>,
    /// Per layer: attention and feed-forward outputs before the residual adds.
    pub layers: Vec<LayerTrace<B>>,
    /// Transformer output after the final norm and projection `[B, N, D]`.
    pub transformer_out: Tensor<B, 3>,
    /// Prediction: the last `T` tokens of `transformer_out`, `[B, T, D]`.
    pub out: Tensor<B, 3>,
}

/// MindEye2's `PriorNetwork` (`learned_query_mode="pos_emb"`, continuous time, non-causal).
#[derive(Module, Debug)]
pub struct PriorNetwork<B: Backend> {
    /// `to_time_embeds.0.1` (the sinusoidal part has no parameters).
    pub time_mlp: TimeMlp<B>,
    /// `learned_query` `[T, D]`, added to the (possibly nulled) noisy image tokens.
    pub learned_query: Param<Tensor<B, 2>>,
    /// `null_brain_embeds` `[T, D]`.
    pub null_brain_embeds: Param<Tensor<B, 2>>,
    /// `null_image_embed` `[T, D]`.
    pub null_image_embed: Param<Tensor<B, 2>>,
    /// `causal_transformer`.
    pub transformer: CausalTransformer<B>,
    #[module(skip)]
    pub config: PriorConfig,
}

/// Integer timesteps as the float tensor the network takes (`[B]`).
pub fn timesteps_tensor<B: Backend>(t: &[usize], device: &B::Device) -> Tensor<B, 1> {
    let values: Vec<f32> = t.iter().map(|&v| v as f32).collect();
    Tensor::from_data(TensorData::new(values, [t.len()]), device)
}

impl<B: Backend> PriorNetwork<B> {
    /// Sinusoidal features of (continuous) time `t` `[B]` -> `[B, D]`: with `half = D / 2`,
    /// `freq_k = exp(-ln(10000) k / (half - 1))` (float32), `[sin(t freq), cos(t freq)]`.
    pub fn sinusoidal(&self, t: Tensor<B, 1>) -> Tensor<B, 2> {
        let half = self.config.dim / 2;
        let step = -(10000f64.ln() / (half as f64 - 1.0)) as f32;
        let freqs: Vec<f32> = (0..half).map(|k| (k as f32 * step).exp()).collect();
        let freqs = Tensor::<B, 2>::from_data(TensorData::new(freqs, [1, half]), &t.device());
        let b = t.dims()[0];
        let args = t.reshape([b, 1]) * freqs;
        Tensor::cat(vec![args.clone().sin(), args.cos()], 1)
    }

    /// Predicted x0 `[B, T, D]` from noisy tokens `x_t` `[B, T, D]`, time `t` `[B]` (float; integer
    /// steps cast) and brain tokens `brain` `[B, T, D]`, with explicit conditioning keep-masks.
    pub fn forward(&self, x_t: Tensor<B, 3>, t: Tensor<B, 1>, brain: Tensor<B, 3>, keep: &CondKeep) -> Tensor<B, 3> {
        self.run(x_t, t, brain, keep, false).0
    }

    /// [`PriorNetwork::forward`] returning every intermediate as well.
    pub fn forward_traced(
        &self,
        x_t: Tensor<B, 3>,
        t: Tensor<B, 1>,
        brain: Tensor<B, 3>,
        keep: &CondKeep,
    ) -> PriorTrace<B> {
        let (_, trace) = self.run(x_t, t, brain, keep, true);
        trace.unwrap_or_else(|| unreachable!("traced run returns a trace"))
    }

    /// [`PriorNetwork::forward`] with the whole batch's brain / image conditioning kept or dropped
    /// (drop probability 1 or 0).
    pub fn forward_dropping(
        &self,
        x_t: Tensor<B, 3>,
        t: Tensor<B, 1>,
        brain: Tensor<B, 3>,
        drop_brain: bool,
        drop_image: bool,
    ) -> Tensor<B, 3> {
        let b = x_t.dims()[0];
        let keep = CondKeep { brain: vec![!drop_brain; b], image: vec![!drop_image; b] };
        self.forward(x_t, t, brain, &keep)
    }

    /// Classifier-free guidance: `null + cond_scale * (cond - null)`, where `cond` keeps all
    /// conditioning and `null` drops both; `cond_scale == 1` runs the conditional pass only.
    /// Shapes as [`PriorNetwork::forward`].
    pub fn forward_with_cond_scale(
        &self,
        x_t: Tensor<B, 3>,
        t: Tensor<B, 1>,
        brain: Tensor<B, 3>,
        cond_scale: f64,
    ) -> Tensor<B, 3> {
        let b = x_t.dims()[0];
        let cond = self.forward(x_t.clone(), t.clone(), brain.clone(), &CondKeep::all(b));
        if cond_scale == 1.0 {
            return cond;
        }
        let null = self.forward(x_t, t, brain, &CondKeep::none(b));
        null.clone() + (cond - null).mul_scalar(cond_scale)
    }

    fn run(
        &self,
        x_t: Tensor<B, 3>,
        t: Tensor<B, 1>,
        brain: Tensor<B, 3>,
        keep: &CondKeep,
        traced: bool,
    ) -> (Tensor<B, 3>, Option<PriorTrace<B>>) {
        let [b, tokens, dim] = x_t.dims();
        let device = x_t.device();
        assert_eq!((tokens, dim), (self.config.num_tokens, self.config.dim), "prior: x_t must be [B, num_tokens, dim]");
        assert_eq!(brain.dims(), [b, tokens, dim], "prior: brain must be [B, num_tokens, dim] like x_t");
        assert_eq!(t.dims(), [b], "prior: one timestep per batch element");
        assert!(keep.brain.len() == b && keep.image.len() == b, "prior: keep-masks need one entry per batch element");

        let shape = [b, tokens, dim];
        let null_brain = self.null_brain_embeds.val().unsqueeze::<3>().expand(shape);
        let brain = null_brain.mask_where(CondKeep::tensor::<B>(&keep.brain, shape, &device), brain);
        let null_image = self.null_image_embed.val().unsqueeze::<3>().expand(shape);
        let image = null_image.mask_where(CondKeep::tensor::<B>(&keep.image, shape, &device), x_t);
        let image = image + self.learned_query.val().unsqueeze::<3>();

        let sinusoidal = self.sinusoidal(t);
        let time_embed = self.time_mlp.forward(sinusoidal.clone()).reshape([b, 1, dim]);
        let tokens_in = Tensor::cat(vec![brain, time_embed.clone(), image], 1);
        let n = tokens_in.dims()[1];

        let mut layers = Vec::new();
        let (transformer_out, attn_bias) =
            self.transformer.forward_inner(tokens_in.clone(), if traced { Some(&mut layers) } else { None });
        let out = transformer_out.clone().narrow(1, n - tokens, tokens);
        let trace = traced.then(|| PriorTrace {
            sinusoidal,
            time_embed,
            tokens_in,
            attn_bias,
            layers,
            transformer_out,
            out: out.clone(),
        });
        (out, trace)
    }
}

impl PriorConfig {
    /// A freshly initialised network, PyTorch-style: linear weights and biases
    /// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, gains 1, `learned_query ~ N(0, 1) / sqrt(D)`, null
    /// embeddings, `null_kv` and the relative position bias table `~ N(0, 1)`.
    ///
    /// # Panics
    /// If [`PriorConfig::validate`] fails.
    pub fn init<B: Backend>(&self, device: &B::Device) -> PriorNetwork<B> {
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
        let (d, h, dh) = (self.dim, self.heads, self.dim_head);
        let linear = |i: usize, o: usize, bias: bool| LinearConfig::new(i, o).with_bias(bias).init::<B>(device);
        let normal = |shape: [usize; 2], std: f64| {
            Param::from_tensor(Tensor::<B, 2>::random(shape, Distribution::Normal(0.0, std), device))
        };
        let norm =
            |width: usize, stable: bool| GainLayerNorm { g: Param::from_tensor(Tensor::ones([width], device)), stable };
        let th = self.time_hidden_dim();
        let layers = (0..self.depth)
            .map(|_| TransformerLayer {
                attn: Attention {
                    norm: norm(d, false),
                    to_q: linear(d, h * dh, false),
                    to_kv: linear(d, 2 * dh, false),
                    null_kv: normal([2, dh], 1.0),
                    to_out: linear(h * dh, d, false),
                    out_norm: norm(d, false),
                    heads: h,
                    dim_head: dh,
                    cosine_sim_scale: self.cosine_sim_scale,
                },
                ff: FeedForward {
                    norm: norm(d, false),
                    proj_in: linear(d, 2 * self.ff_inner_dim(), false),
                    proj_out: linear(self.ff_inner_dim(), d, false),
                },
            })
            .collect();
        PriorNetwork {
            time_mlp: TimeMlp {
                layer0: linear(d, th, true),
                layer1: linear(th, th, true),
                layer2: linear(th, d, true),
            },
            learned_query: normal([self.num_tokens, d], (d as f64).powf(-0.5)),
            null_brain_embeds: normal([self.num_tokens, d], 1.0),
            null_image_embed: normal([self.num_tokens, d], 1.0),
            transformer: CausalTransformer {
                rel_pos_bias: RelPosBias {
                    weight: normal([self.relpos_num_buckets, h], 1.0),
                    num_buckets: self.relpos_num_buckets,
                    max_distance: self.relpos_max_distance,
                },
                layers,
                norm: norm(d, true),
                project_out: linear(d, d, false),
                rotary_freqs: self.rotary_freqs(),
            },
            config: self.clone(),
        }
    }
}
