//! Loading MindEye2 checkpoints: original key names (`diffusion_prior.net.*`), shape inference.

use burn::nn::Linear;
use burn::tensor::backend::Backend;

use super::PriorConfig;
use super::diffusion::DiffusionPrior;
use super::layers::{Attention, CausalTransformer, FeedForward, GainLayerNorm, RelPosBias, TransformerLayer};
use super::network::{PriorNetwork, TimeMlp};
use crate::tensors::{HostTensor, LoadError, TensorMap};

/// Relative key names (under the network prefix) of the time MLP's three linears.
const TIME_MLP: [&str; 3] = ["to_time_embeds.0.1.net.0.0", "to_time_embeds.0.1.net.1.0", "to_time_embeds.0.1.net.2"];

fn layer_key(l: usize, rest: &str) -> String {
    format!("causal_transformer.layers.{l}.{rest}")
}

impl PriorConfig {
    /// Every tensor key (relative to the network prefix) with its PyTorch shape, in checkpoint
    /// layout. Rotary `freqs` (one per layer, optional when loading) are listed separately by
    /// [`PriorConfig::rotary_keys`].
    pub fn expected_keys(&self) -> Vec<(String, Vec<usize>)> {
        let (d, th, dh, inner, ffi) =
            (self.dim, self.time_hidden_dim(), self.dim_head, self.inner_dim(), self.ff_inner_dim());
        let mut keys = vec![
            (format!("{}.weight", TIME_MLP[0]), vec![th, d]),
            (format!("{}.bias", TIME_MLP[0]), vec![th]),
            (format!("{}.weight", TIME_MLP[1]), vec![th, th]),
            (format!("{}.bias", TIME_MLP[1]), vec![th]),
            (format!("{}.weight", TIME_MLP[2]), vec![d, th]),
            (format!("{}.bias", TIME_MLP[2]), vec![d]),
            ("learned_query".into(), vec![self.num_tokens, d]),
            ("null_brain_embeds".into(), vec![self.num_tokens, d]),
            ("null_image_embed".into(), vec![self.num_tokens, d]),
            (
                "causal_transformer.rel_pos_bias.relative_attention_bias.weight".into(),
                vec![self.relpos_num_buckets, self.heads],
            ),
        ];
        for l in 0..self.depth {
            keys.extend([
                (layer_key(l, "0.norm.g"), vec![d]),
                (layer_key(l, "0.null_kv"), vec![2, dh]),
                (layer_key(l, "0.to_q.weight"), vec![inner, d]),
                (layer_key(l, "0.to_kv.weight"), vec![2 * dh, d]),
                (layer_key(l, "0.to_out.0.weight"), vec![d, inner]),
                (layer_key(l, "0.to_out.1.g"), vec![d]),
                (layer_key(l, "1.0.g"), vec![d]),
                (layer_key(l, "1.1.weight"), vec![2 * ffi, d]),
                (layer_key(l, "1.5.weight"), vec![d, ffi]),
            ]);
        }
        keys.push(("causal_transformer.norm.g".into(), vec![d]));
        keys.push(("causal_transformer.project_out.weight".into(), vec![d, d]));
        keys
    }

    /// The per-layer rotary `freqs` keys (relative to the network prefix), shape `[rotary_dim / 2]`.
    pub fn rotary_keys(&self) -> Vec<(String, Vec<usize>)> {
        (0..self.depth).map(|l| (layer_key(l, "0.rotary_emb.freqs"), vec![self.rotary_dim / 2])).collect()
    }

    /// Infers the sizes of a checkpoint's prior under `prefix` (e.g. `"diffusion_prior.net."`):
    /// `dim` and `num_tokens` from `learned_query`, `depth` from the layer keys, `dim_head` from
    /// `null_kv`, `heads` from `to_q`, `ff_mult` from the feed-forward output projection,
    /// `relpos_num_buckets` from the bias table, `rotary_dim` from `freqs` (else `min(32,
    /// dim_head)`) and `timesteps` from the sibling `noise_scheduler.betas` when present; the rest
    /// keep the released defaults. Every expected tensor is then checked, so a missing key or an
    /// inconsistent shape is an error naming the key.
    pub fn infer(map: &TensorMap, prefix: &str) -> Result<PriorConfig, LoadError> {
        let src = map.source_name().to_string();
        let key = |rest: &str| format!("{prefix}{rest}");
        let rank = |k: &str, r: usize| -> Result<&HostTensor, LoadError> {
            let t = map.get(k)?;
            if t.shape.len() != r {
                return Err(LoadError::Tensor {
                    source_name: src.clone(),
                    key: k.to_string(),
                    message: format!("expected rank {r}, found shape {:?}", t.shape),
                });
            }
            Ok(t)
        };
        let lq = rank(&key("learned_query"), 2)?;
        let (num_tokens, dim) = (lq.shape[0], lq.shape[1]);
        let depth = (0..).take_while(|&l| map.contains(&key(&layer_key(l, "0.to_q.weight")))).count();
        if depth == 0 {
            return Err(LoadError::Missing { source_name: src, key: key(&layer_key(0, "0.to_q.weight")) });
        }
        // `width` read from `key` must be a whole multiple of `unit`.
        let multiple = |key: String, width: usize, unit: usize, what: String| {
            if unit == 0 || !width.is_multiple_of(unit) {
                return Err(LoadError::Tensor { source_name: src.clone(), key, message: what });
            }
            Ok(())
        };
        let null_kv_key = key(&layer_key(0, "0.null_kv"));
        let dim_head = rank(&null_kv_key, 2)?.shape[1];
        let to_q_key = key(&layer_key(0, "0.to_q.weight"));
        let inner = rank(&to_q_key, 2)?.shape[0];
        let why = format!("output width {inner} is not a multiple of dim_head {dim_head} (from null_kv)");
        multiple(to_q_key, inner, dim_head, why)?;
        let ff_key = key(&layer_key(0, "1.5.weight"));
        let ffi = rank(&ff_key, 2)?.shape[1];
        multiple(ff_key, ffi, dim, format!("inner width {ffi} is not a multiple of dim {dim}"))?;
        let rel = rank(&key("causal_transformer.rel_pos_bias.relative_attention_bias.weight"), 2)?;
        let freqs_key = key(&layer_key(0, "0.rotary_emb.freqs"));
        let rotary_dim = match map.get(&freqs_key) {
            Ok(t) => 2 * t.shape.iter().product::<usize>(),
            Err(_) => dim_head.min(32),
        };
        let mut config = PriorConfig::mindeye2(dim, num_tokens, depth, dim_head);
        config.heads = inner / dim_head;
        config.ff_mult = ffi / dim;
        config.relpos_num_buckets = rel.shape[0];
        config.rotary_dim = rotary_dim;
        if let Some(parent) = prefix.strip_suffix("net.")
            && let Ok(betas) = map.get(&format!("{parent}noise_scheduler.betas"))
        {
            config.timesteps = betas.data.len();
        }
        config
            .validate()
            .map_err(|message| LoadError::Architecture { source_name: map.source_name().into(), message })?;
        config.check_keys(map, prefix)?;
        Ok(config)
    }

    /// Checks every expected tensor exists under `prefix` with the expected shape (rotary `freqs`
    /// only when present).
    pub fn check_keys(&self, map: &TensorMap, prefix: &str) -> Result<(), LoadError> {
        for (k, shape) in self.expected_keys() {
            map.get_shaped(&format!("{prefix}{k}"), &shape)?;
        }
        for (k, shape) in self.rotary_keys() {
            let k = format!("{prefix}{k}");
            if map.contains(&k) {
                map.get_shaped(&k, &shape)?;
            }
        }
        Ok(())
    }
}

fn linear<B: Backend>(
    map: &TensorMap,
    key: &str,
    d_in: usize,
    d_out: usize,
    bias: bool,
    device: &B::Device,
) -> Result<Linear<B>, LoadError> {
    Ok(Linear {
        weight: map.linear_weight::<B>(&format!("{key}.weight"), d_in, d_out, device)?,
        bias: if bias { Some(map.param::<B, 1>(&format!("{key}.bias"), [d_out], device)?) } else { None },
    })
}

fn gain<B: Backend>(
    map: &TensorMap,
    key: &str,
    d: usize,
    stable: bool,
    device: &B::Device,
) -> Result<GainLayerNorm<B>, LoadError> {
    Ok(GainLayerNorm { g: map.param::<B, 1>(key, [d], device)?, stable })
}

impl<B: Backend> PriorNetwork<B> {
    /// Builds the network from MindEye2's key names under `prefix` (`"diffusion_prior.net."` in a
    /// Train.ipynb checkpoint). Rotary `freqs` are regenerated from the config (their stored
    /// copies are accepted and shape-checked, not read); the schedule buffers are ignored.
    pub fn from_tensors(
        map: &TensorMap,
        prefix: &str,
        config: &PriorConfig,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        config
            .validate()
            .map_err(|message| LoadError::Architecture { source_name: map.source_name().into(), message })?;
        config.check_keys(map, prefix)?;
        let p = |rest: &str| format!("{prefix}{rest}");
        let (d, th, dh, inner, ffi) =
            (config.dim, config.time_hidden_dim(), config.dim_head, config.inner_dim(), config.ff_inner_dim());
        let time_mlp = TimeMlp {
            layer0: linear(map, &p(TIME_MLP[0]), d, th, true, device)?,
            layer1: linear(map, &p(TIME_MLP[1]), th, th, true, device)?,
            layer2: linear(map, &p(TIME_MLP[2]), th, d, true, device)?,
        };
        let tokens = [config.num_tokens, d];
        let mut layers = Vec::with_capacity(config.depth);
        for l in 0..config.depth {
            let lk = |rest: &str| p(&layer_key(l, rest));
            layers.push(TransformerLayer {
                attn: Attention {
                    norm: gain(map, &lk("0.norm.g"), d, false, device)?,
                    to_q: linear(map, &lk("0.to_q"), d, inner, false, device)?,
                    to_kv: linear(map, &lk("0.to_kv"), d, 2 * dh, false, device)?,
                    null_kv: map.param::<B, 2>(&lk("0.null_kv"), [2, dh], device)?,
                    to_out: linear(map, &lk("0.to_out.0"), inner, d, false, device)?,
                    out_norm: gain(map, &lk("0.to_out.1.g"), d, false, device)?,
                    heads: config.heads,
                    dim_head: dh,
                    cosine_sim_scale: config.cosine_sim_scale,
                },
                ff: FeedForward {
                    norm: gain(map, &lk("1.0.g"), d, false, device)?,
                    proj_in: linear(map, &lk("1.1"), d, 2 * ffi, false, device)?,
                    proj_out: linear(map, &lk("1.5"), ffi, d, false, device)?,
                },
            });
        }
        let rel_key = p("causal_transformer.rel_pos_bias.relative_attention_bias.weight");
        Ok(PriorNetwork {
            time_mlp,
            learned_query: map.param::<B, 2>(&p("learned_query"), tokens, device)?,
            null_brain_embeds: map.param::<B, 2>(&p("null_brain_embeds"), tokens, device)?,
            null_image_embed: map.param::<B, 2>(&p("null_image_embed"), tokens, device)?,
            transformer: CausalTransformer {
                rel_pos_bias: RelPosBias {
                    weight: map.param::<B, 2>(&rel_key, [config.relpos_num_buckets, config.heads], device)?,
                    num_buckets: config.relpos_num_buckets,
                    max_distance: config.relpos_max_distance,
                },
                layers,
                norm: gain(map, &p("causal_transformer.norm.g"), d, true, device)?,
                project_out: linear(map, &p("causal_transformer.project_out"), d, d, false, device)?,
                rotary_freqs: config.rotary_freqs(),
            },
            config: config.clone(),
        })
    }
}

impl<B: Backend> DiffusionPrior<B> {
    /// The prior of a MindEye2 checkpoint: network under `{prefix}net.` (`prefix` is
    /// `"diffusion_prior."` in Train.ipynb checkpoints); the schedule is regenerated.
    pub fn from_tensors(
        map: &TensorMap,
        prefix: &str,
        config: &PriorConfig,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        Ok(Self::new(PriorNetwork::from_tensors(map, &format!("{prefix}net."), config, device)?))
    }
}
