//! The MindEye2 architecture as data: every size of every module, so that the same code builds the
//! tiny reference model, the released 2.2-billion-parameter model and anything in between.

use serde::{Deserialize, Serialize};

use crate::lowlevel::LowLevelConfig;
use crate::prior::PriorConfig;

/// NSD's nsdgeneral voxel counts for subjects 1–8 (spec §1.1).
pub const NSD_VOXELS: [usize; 8] = [15724, 14278, 15226, 13153, 13039, 17907, 12682, 14386];

/// How the residual mixer blocks combine (spec §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BackboneMode {
    /// Exactly the released code: with `seq_len = 1` the token-mixing MLPs' outputs are
    /// overwritten by the residual bookkeeping, so the backbone is linear in the ridge output
    /// (ridge + Σ constants). Needed to load and reproduce released checkpoints.
    #[default]
    Released,
    /// What the code presumably meant: `x = x + mlp1(x)` then `x = x + mlp2(xᵀ)ᵀ`, so the 4
    /// residual MLPs do shape the representation. Not checkpoint-compatible with `released`.
    CorrectedResidual,
}

/// Sizes of a MindEye2 model (the `MindEyeModule` of Train.ipynb).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MindEye2Config {
    /// Voxel count of each subject, in subject-index order (one ridge per subject).
    pub voxels: Vec<usize>,
    /// Width of the ridge output and of the backbone (`hidden_dim`, 4096 released).
    pub hidden: usize,
    /// Number of residual mixer blocks (4 released).
    pub blocks: usize,
    /// CLIP tokens per image (256 for ViT-bigG).
    pub clip_tokens: usize,
    /// Width of each CLIP token (1664 for ViT-bigG).
    pub clip_dim: usize,
    /// Dropout inside the mixer MLPs (active only in training).
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    #[serde(default)]
    pub backbone_mode: BackboneMode,
    /// The low-level (blurry) branch; absent when `blurry_recon` is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_level: Option<LowLevelConfig>,
    /// The diffusion prior; absent when `use_prior` is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior: Option<PriorConfig>,
}

fn default_dropout() -> f64 {
    0.15
}

impl MindEye2Config {
    /// `seq_len` of the released code: the ridge emits one token per sample.
    pub const SEQ_LEN: usize = 1;

    /// The released configuration (hidden 4096, 4 blocks, blurry branch, 256×1664 tokens,
    /// prior depth 6 with head size 52) for the given subjects' voxel counts.
    pub fn released(voxels: Vec<usize>) -> Self {
        let (hidden, tokens, dim) = (4096, 256, 1664);
        MindEye2Config {
            voxels,
            hidden,
            blocks: 4,
            clip_tokens: tokens,
            clip_dim: dim,
            dropout: default_dropout(),
            backbone_mode: BackboneMode::Released,
            low_level: Some(LowLevelConfig::mindeye2(hidden)),
            prior: Some(PriorConfig::mindeye2(dim, tokens, 6, 52)),
        }
    }

    /// Width of `backbone_linear`'s output, `clip_tokens × clip_dim`.
    pub fn out_dim(&self) -> usize {
        self.clip_tokens * self.clip_dim
    }

    /// Every problem with the sizes, in words; empty when the config can be built.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.voxels.is_empty() {
            problems.push("voxels: at least one subject is needed".to_string());
        }
        for (i, &v) in self.voxels.iter().enumerate() {
            if v == 0 {
                problems.push(format!("voxels[{i}]: a subject needs at least one voxel"));
            }
        }
        for (name, value) in [("hidden", self.hidden), ("clip_tokens", self.clip_tokens), ("clip_dim", self.clip_dim)] {
            if value == 0 {
                problems.push(format!("{name} must be positive"));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            problems.push(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        if let Some(low) = &self.low_level {
            if low.hidden != self.hidden {
                problems.push(format!("low_level.hidden {} must equal hidden {}", low.hidden, self.hidden));
            }
            if let Err(e) = low.validate() {
                problems.push(format!("low_level: {e}"));
            }
        }
        if let Some(prior) = &self.prior {
            if let Err(e) = prior.validate() {
                problems.push(format!("prior: {e}"));
            }
            if prior.dim != self.clip_dim {
                problems.push(format!("prior.dim {} must equal clip_dim {}", prior.dim, self.clip_dim));
            }
            if prior.num_tokens != self.clip_tokens {
                problems
                    .push(format!("prior.num_tokens {} must equal clip_tokens {}", prior.num_tokens, self.clip_tokens));
            }
        }
        problems
    }
}
