//! MindEye2's diffusion prior (spec §1.3, §1.3b): DALLE2's `DiffusionPrior` around MindEye2's
//! `PriorNetwork` / `FlaggedCausalTransformer`, in burn, numerically equal to the original code.
//!
//! * [`PriorConfig`]: every size, the released defaults, analytic parameter counts, and shape
//!   inference from a checkpoint ([`PriorConfig::infer`]).
//! * [`NoiseSchedule`]: DALLE2's cosine schedule and the buffers its `NoiseScheduler` registers.
//! * [`PriorNetwork`]: time embedding, conditioning dropout and the transformer; the prediction is
//!   the clean image embedding x0 (`predict_x_start=True`).
//! * [`DiffusionPrior`]: `q_sample`, the training loss `p_losses`, and the DDIM sampler used at
//!   inference (`p_sample_loop(..., timesteps=20)`), with every Gaussian draw supplied by the caller.
//!
//! Shapes: `B` batch, `T` = `num_tokens` image tokens, `D` = `dim`, `N` = `2T + 1` transformer
//! tokens (`[brain (T), time (1), noisy image (T)]`), `H` = heads.

mod diffusion;
mod import;
mod layers;
mod network;
mod schedule;

use serde::{Deserialize, Serialize};

pub use diffusion::{DdimStep, DiffusionPrior, ddim_time_pairs};
pub use layers::{Attention, CausalTransformer, FeedForward, GainLayerNorm, LayerTrace, RelPosBias, TransformerLayer};
pub use network::{CondKeep, PriorNetwork, PriorTrace, TimeMlp, timesteps_tensor};
pub use schedule::NoiseSchedule;

/// Hidden width of the time MLP relative to `dim` (DALLE2 `MLP(expansion_factor=2.)`).
pub const TIME_MLP_EXPANSION: usize = 2;
/// DALLE2 `LayerNorm` epsilon in float32.
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// Every size of the prior. Serialised with `deny_unknown_fields` so a typo in a config file is an
/// error, not a silently ignored key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorConfig {
    /// Token width D (the CLIP embedding width, 1664 for OpenCLIP bigG).
    pub dim: usize,
    /// Number of transformer layers.
    pub depth: usize,
    /// Width of one attention head (also the width of the single shared K/V head).
    pub dim_head: usize,
    /// Number of query heads.
    pub heads: usize,
    /// Image tokens T (also the number of brain tokens).
    pub num_tokens: usize,
    /// Diffusion steps of the noise schedule.
    pub timesteps: usize,
    /// Training-time probability of dropping the brain and (independently) the image conditioning.
    pub cond_drop_prob: f64,
    /// Feed-forward inner width = `ff_mult * dim` (SwiGLU, so the first projection is twice that).
    pub ff_mult: usize,
    /// Features of each head that get rotary position embedding (`min(32, dim_head)`).
    pub rotary_dim: usize,
    /// T5 relative position bias buckets.
    pub relpos_num_buckets: usize,
    /// T5 relative position bias maximum distance.
    pub relpos_max_distance: usize,
    /// Cosine-similarity attention temperature (q and k are l2-normalised, each scaled by its root).
    pub cosine_sim_scale: f64,
}

impl PriorConfig {
    /// The configuration Train.ipynb builds: `PriorNetwork(dim, depth, dim_head, heads=dim/dim_head,
    /// num_tokens, learned_query_mode="pos_emb")` inside `BrainDiffusionPrior(timesteps=100,
    /// cond_drop_prob=0.2)`. Released: `mindeye2(1664, 256, 6, 52)`. `heads` is `dim / dim_head`
    /// rounded down (0 if `dim_head` is 0; [`PriorConfig::validate`] rejects that).
    pub fn mindeye2(dim: usize, num_tokens: usize, depth: usize, dim_head: usize) -> Self {
        Self {
            dim,
            depth,
            dim_head,
            heads: dim.checked_div(dim_head).unwrap_or(0),
            num_tokens,
            timesteps: 100,
            cond_drop_prob: 0.2,
            ff_mult: 4,
            rotary_dim: dim_head.min(32),
            relpos_num_buckets: 32,
            relpos_max_distance: 128,
            cosine_sim_scale: 16.0,
        }
    }

    /// The released full-size prior (dim 1664, 256 tokens, depth 6, dim_head 52, 32 heads).
    pub fn released() -> Self {
        Self::mindeye2(1664, 256, 6, 52)
    }

    /// Checks the sizes are usable; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("dim", self.dim),
            ("depth", self.depth),
            ("dim_head", self.dim_head),
            ("heads", self.heads),
            ("num_tokens", self.num_tokens),
            ("timesteps", self.timesteps),
            ("ff_mult", self.ff_mult),
            ("relpos_num_buckets", self.relpos_num_buckets),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("prior config: {name} must be positive"));
            }
        }
        if !self.dim.is_multiple_of(2) || self.dim < 4 {
            return Err(format!(
                "prior config: dim {} must be even and at least 4 (sinusoidal time embedding)",
                self.dim
            ));
        }
        if !self.rotary_dim.is_multiple_of(2) || self.rotary_dim > self.dim_head {
            return Err(format!(
                "prior config: rotary_dim {} must be even and at most dim_head {}",
                self.rotary_dim, self.dim_head
            ));
        }
        if self.relpos_num_buckets < 2 || self.relpos_max_distance <= self.relpos_num_buckets / 2 {
            return Err(format!(
                "prior config: relpos_num_buckets {} / relpos_max_distance {} leave no log-spaced buckets",
                self.relpos_num_buckets, self.relpos_max_distance
            ));
        }
        if !(0.0..=1.0).contains(&self.cond_drop_prob) {
            return Err(format!("prior config: cond_drop_prob {} outside [0, 1]", self.cond_drop_prob));
        }
        if self.cosine_sim_scale.is_nan() || self.cosine_sim_scale <= 0.0 {
            return Err(format!("prior config: cosine_sim_scale {} must be positive", self.cosine_sim_scale));
        }
        Ok(())
    }

    /// Query width `heads * dim_head` (the `to_q` output and `to_out` input).
    pub fn inner_dim(&self) -> usize {
        self.heads * self.dim_head
    }

    /// Feed-forward inner width `ff_mult * dim`.
    pub fn ff_inner_dim(&self) -> usize {
        self.ff_mult * self.dim
    }

    /// Time-MLP hidden width `2 * dim`.
    pub fn time_hidden_dim(&self) -> usize {
        TIME_MLP_EXPANSION * self.dim
    }

    /// Transformer sequence length `2 * num_tokens + 1`.
    pub fn seq_len(&self) -> usize {
        2 * self.num_tokens + 1
    }

    /// Rotary inverse frequencies `1 / 10000^(2i / rotary_dim)`, `i < rotary_dim / 2`, computed in
    /// float32 the way `rotary-embedding-torch` builds its `freqs` parameter.
    pub fn rotary_freqs(&self) -> Vec<f32> {
        let r = self.rotary_dim as f32;
        (0..self.rotary_dim / 2).map(|i| 1.0 / 10000f32.powf((2 * i) as f32 / r)).collect()
    }

    /// Parameter counts by submodule, computed from the sizes alone (nothing is allocated).
    ///
    /// Names (values for the released config in brackets): `to_time_embeds` (22,159,488),
    /// `learned_query`, `null_brain_embeds`, `null_image_embed` (425,984 each), `rel_pos_bias`
    /// (1,024), `layer.attn` (one layer's attention without the shared rotary, 5,714,280),
    /// `layer.ff` (one layer's feed-forward, 33,228,416), `rotary_freqs` (16, non-trainable,
    /// shared by all layers), `layers` (all layers, rotary counted once, 233,656,192),
    /// `layers.trainable` (233,656,176), `norm` (1,664), `project_out` (2,768,896), `total`
    /// (259,865,216) and `total.trainable` (259,865,200).
    pub fn param_counts(&self) -> Vec<(String, u64)> {
        let u = |v: usize| v as u64;
        let (d, h) = (u(self.dim), u(self.time_hidden_dim()));
        let time = d * h + h + h * h + h + h * d + d;
        let tokens = u(self.num_tokens) * d;
        let rel = u(self.relpos_num_buckets) * u(self.heads);
        let (inner, dh) = (u(self.inner_dim()), u(self.dim_head));
        let attn = d + d * inner + d * 2 * dh + 2 * dh + inner * d + d;
        let ffi = u(self.ff_inner_dim());
        let ff = d + d * 2 * ffi + ffi * d;
        let rotary = u(self.rotary_dim / 2);
        let layers_trainable = u(self.depth) * (attn + ff);
        let (norm, project_out) = (d, d * d);
        let trainable = time + 3 * tokens + rel + layers_trainable + norm + project_out;
        [
            ("to_time_embeds", time),
            ("learned_query", tokens),
            ("null_brain_embeds", tokens),
            ("null_image_embed", tokens),
            ("rel_pos_bias", rel),
            ("layer.attn", attn),
            ("layer.ff", ff),
            ("rotary_freqs", rotary),
            ("layers", layers_trainable + rotary),
            ("layers.trainable", layers_trainable),
            ("norm", norm),
            ("project_out", project_out),
            ("total", trainable + rotary),
            ("total.trainable", trainable),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// All parameters including the (non-trainable) rotary frequencies, counted once.
    pub fn num_params(&self) -> u64 {
        self.count("total")
    }

    /// Trainable parameters (everything except the rotary frequencies).
    pub fn num_trainable_params(&self) -> u64 {
        self.count("total.trainable")
    }

    fn count(&self, name: &str) -> u64 {
        self.param_counts().into_iter().find(|(k, _)| k == name).map_or(0, |(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_param_counts_match_the_reference() {
        let c = PriorConfig::released();
        assert_eq!(c.heads, 32);
        assert_eq!(c.rotary_dim, 32);
        let counts: std::collections::BTreeMap<String, u64> = c.param_counts().into_iter().collect();
        assert_eq!(counts["to_time_embeds"], 22_159_488);
        assert_eq!(counts["learned_query"], 425_984);
        assert_eq!(counts["null_brain_embeds"], 425_984);
        assert_eq!(counts["null_image_embed"], 425_984);
        assert_eq!(counts["rel_pos_bias"], 1_024);
        assert_eq!(counts["layer.attn"], 5_714_280);
        assert_eq!(counts["layer.ff"], 33_228_416);
        assert_eq!(counts["rotary_freqs"], 16);
        assert_eq!(counts["layers"], 233_656_192);
        assert_eq!(counts["layers.trainable"], 233_656_176);
        assert_eq!(counts["norm"], 1_664);
        assert_eq!(counts["project_out"], 2_768_896);
        assert_eq!(counts["total"], 259_865_216);
        assert_eq!(counts["total.trainable"], 259_865_200);
        assert_eq!(c.num_params(), 259_865_216);
        assert_eq!(c.num_trainable_params(), 259_865_200);
    }

    #[test]
    fn tiny_param_count() {
        // dim 16, 4 tokens, depth 2, dim_head 8 (2 heads): the public reference model's prior.
        let c = PriorConfig::mindeye2(16, 4, 2, 8);
        assert_eq!(c.heads, 2);
        assert_eq!(c.rotary_dim, 8);
        // time 2128 + 3*64 + rel 64 + 2*(816 + 3088) + rotary 4 + norm 16 + proj 256
        assert_eq!(c.num_params(), 10_468);
        assert_eq!(c.num_trainable_params(), 10_464);
    }

    #[test]
    fn config_rejects_unknown_fields_and_round_trips() {
        let c = PriorConfig::mindeye2(16, 4, 2, 8);
        let json = serde_json::to_string(&c).unwrap();
        let back: PriorConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        let bad = json.replacen("\"depth\"", "\"depht\"", 1);
        assert!(serde_json::from_str::<PriorConfig>(&bad).is_err());
        assert!(c.validate().is_ok());
        assert!(PriorConfig { rotary_dim: 10, ..c }.validate().is_err());
    }
}
