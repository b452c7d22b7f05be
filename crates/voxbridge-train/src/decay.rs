//! MindEye2's AdamW parameter groups (Train.ipynb "Setup optimizer"; spec §2.2 \[QUIRK\]): every
//! ridge parameter is decayed (biases too); in the backbone and the prior a parameter is exempt
//! when its state-dict name contains `bias` (the intended `LayerNorm.weight` exemption never
//! matches the real names, so LayerNorm / GroupNorm gains and DALLE2's `g` are decayed, and
//! `rel_pos_bias.relative_attention_bias.weight` is exempt because its name contains "bias").

/// One of Train.ipynb's five optimizer groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecayGroup {
    Ridge,
    BackboneDecay,
    BackboneNoDecay,
    PriorDecay,
    PriorNoDecay,
}

impl DecayGroup {
    /// Weight decay of the group (1e-2 or 0).
    pub fn weight_decay(self) -> f64 {
        match self {
            DecayGroup::Ridge | DecayGroup::BackboneDecay | DecayGroup::PriorDecay => 1e-2,
            DecayGroup::BackboneNoDecay | DecayGroup::PriorNoDecay => 0.0,
        }
    }
}

/// The group of a parameter by its MindEye2 state-dict name, or `None` for a name outside the
/// model (`ridge.`, `backbone.`, `diffusion_prior.`).
pub fn decay_group(name: &str) -> Option<DecayGroup> {
    const NO_DECAY: [&str; 3] = ["bias", "LayerNorm.bias", "LayerNorm.weight"];
    let exempt = NO_DECAY.iter().any(|n| name.contains(n));
    if name.starts_with("ridge.") {
        Some(DecayGroup::Ridge)
    } else if name.starts_with("backbone.") {
        Some(if exempt { DecayGroup::BackboneNoDecay } else { DecayGroup::BackboneDecay })
    } else if name.starts_with("diffusion_prior.") {
        Some(if exempt { DecayGroup::PriorNoDecay } else { DecayGroup::PriorDecay })
    } else {
        None
    }
}

/// The same rule for voxbridge's burn module paths (`ridge.linears.0.bias`,
/// `backbone.mixer_blocks1.0.norm.beta`, `prior.net.transformer.rel_pos_bias.weight`, …): ridge
/// parameters decay; elsewhere a parameter is exempt when its original name contains "bias" —
/// burn's `bias` fields, and LayerNorm/GroupNorm `beta` (PyTorch's `.bias`).
pub fn mindeye2_weight_decay(burn_path: &str) -> f64 {
    if burn_path.starts_with("ridge.") {
        return DecayGroup::Ridge.weight_decay();
    }
    let exempt = burn_path.contains("bias") || burn_path.rsplit('.').next() == Some("beta");
    if exempt { 0.0 } else { 1e-2 }
}

#[cfg(test)]
mod tests {
    use super::DecayGroup::*;
    use super::*;

    #[test]
    fn groups_follow_the_released_code_quirks() {
        let cases = [
            ("ridge.linears.0.weight", Ridge),
            ("ridge.linears.0.bias", Ridge), // biases of the ridge are decayed
            ("backbone.backbone_linear.weight", BackboneDecay),
            ("backbone.backbone_linear.bias", BackboneNoDecay),
            ("backbone.mixer_blocks1.0.0.weight", BackboneDecay), // a LayerNorm gain: decayed
            ("backbone.clip_proj.0.weight", BackboneDecay),
            ("backbone.bnorm.weight", BackboneDecay), // GroupNorm gain: decayed
            ("backbone.bnorm.bias", BackboneNoDecay),
            ("diffusion_prior.net.causal_transformer.layers.0.0.norm.g", PriorDecay),
            ("diffusion_prior.net.causal_transformer.layers.0.0.to_q.weight", PriorDecay),
            ("diffusion_prior.net.causal_transformer.rel_pos_bias.relative_attention_bias.weight", PriorNoDecay),
            ("diffusion_prior.net.learned_query", PriorDecay),
        ];
        for (name, want) in cases {
            assert_eq!(decay_group(name), Some(want), "{name}");
        }
        assert_eq!(decay_group("optimizer.state"), None);
        assert_eq!(Ridge.weight_decay(), 1e-2);
        assert_eq!(PriorNoDecay.weight_decay(), 0.0);
    }
}
