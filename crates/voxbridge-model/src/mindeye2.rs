//! The whole MindEye2 model (Train.ipynb's `MindEyeModule`: `ridge`, `backbone`,
//! `diffusion_prior`), its import from MindEye2 checkpoints with the architecture inferred from
//! the tensors, and its parameter counts computed from the config alone.

use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};

use crate::backbone::Backbone;
use crate::config::MindEye2Config;
use crate::lowlevel::{LowLevel, LowLevelConfig, LowLevelOutput};
use crate::prior::{DiffusionPrior, PriorConfig};
use crate::ridge::SubjectRidge;
use crate::tensors::{LoadError, TensorMap};

/// Key prefixes of a MindEye2 `model_state_dict`.
pub const RIDGE_PREFIX: &str = "ridge.";
pub const BACKBONE_PREFIX: &str = "backbone.";
pub const PRIOR_PREFIX: &str = "diffusion_prior.";

#[derive(Module, Debug)]
pub struct MindEye2<B: Backend> {
    pub ridge: SubjectRidge<B>,
    pub backbone: Backbone<B>,
    /// Lives inside `BrainNetwork` in the original (keys `backbone.blin1`, …).
    pub low_level: Option<LowLevel<B>>,
    pub prior: Option<DiffusionPrior<B>>,
}

/// How [`MindEye2::for_new_subject`] initialises the new ridge's bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RidgeBiasInit {
    /// Train.ipynb pops only `ridge.linears.0.weight` before loading, so the new subject's bias
    /// starts as the first pretraining subject's (spec §2.4 [QUIRK]). The default, for parity
    /// with the paper's fine-tunes.
    #[default]
    CopyFirstPretrainedSubject,
    /// PyTorch's default `nn.Linear` bias init, U(±1/√voxels).
    Fresh,
}

/// One forward pass of the brain side (the prior is run separately: training needs its loss,
/// inference its samples).
#[derive(Debug, Clone)]
pub struct MindEye2Output<B: Backend> {
    /// `[B, hidden]`: the ridge output.
    pub ridge_out: Tensor<B, 2>,
    /// `[B, tokens, dim]`: conditions the prior.
    pub backbone: Tensor<B, 3>,
    /// `[B, tokens, dim]`: the retrieval embedding.
    pub clip_voxels: Tensor<B, 3>,
    /// The low-level branch's latent `[B, 4, 28, 28]` and features `[B, 49, 512]`.
    pub low_level: Option<LowLevelOutput<B>>,
}

impl<B: Backend> MindEye2<B> {
    /// Fresh weights for `config` (which should have passed [`MindEye2Config::problems`]).
    pub fn init(config: &MindEye2Config, device: &B::Device) -> Self {
        MindEye2 {
            ridge: SubjectRidge::init(&config.voxels, config.hidden, device),
            backbone: Backbone::init(config, device),
            low_level: config.low_level.as_ref().map(|c| c.init(device)),
            prior: config.prior.as_ref().map(|c| DiffusionPrior::new(c.init(device))),
        }
    }

    /// Weights from a MindEye2 state dict with the original key names.
    pub fn from_tensors(map: &TensorMap, config: &MindEye2Config, device: &B::Device) -> Result<Self, LoadError> {
        Ok(MindEye2 {
            ridge: SubjectRidge::from_tensors(map, RIDGE_PREFIX, &config.voxels, config.hidden, device)?,
            backbone: Backbone::from_tensors(map, BACKBONE_PREFIX, config, device)?,
            low_level: match &config.low_level {
                Some(c) => Some(LowLevel::from_tensors(map, BACKBONE_PREFIX, c, device)?),
                None => None,
            },
            prior: match &config.prior {
                Some(c) => Some(DiffusionPrior::from_tensors(map, PRIOR_PREFIX, c, device)?),
                None => None,
            },
        })
    }

    /// The same model with dropout off: PyTorch `eval()` semantics for gradients (burn applies
    /// dropout whenever autodiff is on). Conditioning dropout of the prior is chosen per call.
    pub fn without_dropout(mut self) -> Self {
        self.backbone = self.backbone.without_dropout();
        if let Some(low) = self.low_level.as_mut() {
            low.bdropout = burn::nn::DropoutConfig::new(0.0).init();
        }
        self
    }

    /// The model to fine-tune a new subject from a pretrained one (spec §2.4): every pretrained
    /// ridge is dropped and one fresh `Linear(voxels → hidden)` takes their place; backbone,
    /// low-level branch and prior are kept. `bias` chooses the new ridge's bias: the released
    /// code's accident (subject 0's pretrained bias survives `load_ckpt`) or PyTorch's fresh init.
    pub fn for_new_subject(self, voxels: usize, bias: RidgeBiasInit, device: &B::Device) -> Self {
        let hidden = self
            .backbone
            .mixer_blocks1
            .first()
            .map_or_else(|| self.ridge.linear(0).map_or(0, |l| l.weight.dims()[1]), |b| b.fc1.weight.dims()[0]);
        let mut ridge = SubjectRidge::init(&[voxels], hidden, device);
        if bias == RidgeBiasInit::CopyFirstPretrainedSubject
            && let Some(old) = self.ridge.linear(0).and_then(|l| l.bias.clone())
            && let Some(new) = ridge.linears[0].as_mut()
        {
            new.bias = Some(burn::module::Param::from_tensor(old.val().detach()));
        }
        MindEye2 { ridge, ..self }
    }

    /// Voxels `[B, V_s]` of subject index `subject` → backbone, CLIP embedding, low-level outputs.
    pub fn forward(&self, subject: usize, voxels: Tensor<B, 2>) -> MindEye2Output<B> {
        let ridge_out = self.ridge.forward(subject, voxels); // [B, hidden]
        let out = self.backbone.forward(ridge_out.clone());
        let low_level = self.low_level.as_ref().map(|l| l.forward(out.mixer_out.clone()));
        MindEye2Output { ridge_out, backbone: out.backbone, clip_voxels: out.clip_voxels, low_level }
    }
}

impl MindEye2Config {
    /// The architecture of a MindEye2 state dict, read from its key names and tensor shapes:
    /// subjects and their voxel counts (`ridge.linears.{s}.weight`), hidden size, number of
    /// blocks, tokens × dim (`backbone_linear` and `clip_proj`), the low-level branch and the prior
    /// when present. A shape that fits no architecture is an error naming the key.
    pub fn infer(map: &TensorMap) -> Result<MindEye2Config, LoadError> {
        let src = map.source_name().to_string();
        let arch = |message: String| LoadError::Architecture { source_name: src.clone(), message };
        let shape_of = |key: &str, rank: usize| -> Result<Vec<usize>, LoadError> {
            let t = map.get(key)?;
            if t.shape.len() != rank {
                return Err(arch(format!("`{key}` has shape {:?}, expected rank {rank}", t.shape)));
            }
            Ok(t.shape.clone())
        };

        for key in map.keys() {
            let known = [RIDGE_PREFIX, BACKBONE_PREFIX, PRIOR_PREFIX].iter().any(|p| key.starts_with(p));
            if !known {
                return Err(arch(format!(
                    "`{key}` belongs to no MindEye2 module (ridge., backbone., diffusion_prior.)"
                )));
            }
            if let Some(rest) = key.strip_prefix(BACKBONE_PREFIX) {
                let module = rest.split('.').next().unwrap_or_default();
                const BACKBONE_MODULES: [&str; 8] = [
                    "mixer_blocks1",
                    "mixer_blocks2",
                    "backbone_linear",
                    "clip_proj",
                    "blin1",
                    "bnorm",
                    "bupsampler",
                    "b_maps_projector",
                ];
                if !BACKBONE_MODULES.contains(&module) {
                    return Err(arch(format!("`{key}`: `{module}` is not a module of MindEye2's backbone")));
                }
            }
        }

        // Subjects: ridge.linears.0, 1, … without gaps.
        let mut voxels = Vec::new();
        let mut hidden = None;
        while map.contains(&format!("{RIDGE_PREFIX}linears.{}.weight", voxels.len())) {
            let key = format!("{RIDGE_PREFIX}linears.{}.weight", voxels.len());
            let [h, v] = shape_of(&key, 2)?[..] else { unreachable!("rank checked") };
            match hidden {
                None => hidden = Some(h),
                Some(h0) if h0 != h => {
                    return Err(arch(format!("`{key}` maps to width {h}, but subject 0's ridge maps to {h0}")));
                }
                Some(_) => {}
            }
            voxels.push(v);
        }
        let hidden = hidden.ok_or_else(|| arch("no `ridge.linears.0.weight`: not a MindEye2 state dict".into()))?;
        if let Some(stray) = map.keys().find(|k| {
            k.strip_prefix(&format!("{RIDGE_PREFIX}linears."))
                .and_then(|r| r.split('.').next()?.parse::<usize>().ok())
                .is_some_and(|s| s >= voxels.len())
        }) {
            return Err(arch(format!("`{stray}` belongs to a subject after a missing ridge weight")));
        }

        let mut blocks = 0;
        while map.contains(&format!("{BACKBONE_PREFIX}mixer_blocks1.{blocks}.0.weight")) {
            blocks += 1;
        }
        let key2 = format!("{BACKBONE_PREFIX}mixer_blocks2.{blocks}.0.weight");
        if map.contains(&key2)
            || (blocks > 0 && !map.contains(&format!("{BACKBONE_PREFIX}mixer_blocks2.{}.0.weight", blocks - 1)))
        {
            return Err(arch(format!("mixer_blocks1 has {blocks} blocks but mixer_blocks2 does not match (`{key2}`)")));
        }
        let seq_key = format!("{BACKBONE_PREFIX}mixer_blocks2.0.0.weight");
        if blocks > 0 && shape_of(&seq_key, 1)? != [MindEye2Config::SEQ_LEN] {
            return Err(arch(format!("`{seq_key}`: only seq_len = 1 (MindEye2's) is supported")));
        }

        let linear_key = format!("{BACKBONE_PREFIX}backbone_linear.weight");
        let [out_dim, linear_in] = shape_of(&linear_key, 2)?[..] else { unreachable!("rank checked") };
        if linear_in != hidden * MindEye2Config::SEQ_LEN {
            return Err(arch(format!("`{linear_key}` takes width {linear_in}, the ridge gives {hidden}")));
        }
        let proj_key = format!("{BACKBONE_PREFIX}clip_proj.0.weight");
        let [clip_dim] = shape_of(&proj_key, 1)?[..] else { unreachable!("rank checked") };
        if clip_dim == 0 || !out_dim.is_multiple_of(clip_dim) {
            return Err(arch(format!(
                "`{linear_key}` outputs {out_dim} values, not a whole number of {clip_dim}-wide tokens (`{proj_key}`)"
            )));
        }

        let low_level = LowLevelConfig::infer(map, BACKBONE_PREFIX)?;
        let prior_net = format!("{PRIOR_PREFIX}net.");
        let has_prior = map.keys().any(|k| k.starts_with(&prior_net));
        let prior = if has_prior { Some(PriorConfig::infer(map, &prior_net)?) } else { None };

        let config = MindEye2Config {
            voxels,
            hidden,
            blocks,
            clip_tokens: out_dim / clip_dim,
            clip_dim,
            dropout: 0.15,
            backbone_mode: Default::default(),
            low_level,
            prior,
        };
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(arch(problems.join("; ")));
        }
        Ok(config)
    }

    /// Parameters per submodule, computed from the sizes alone (nothing is allocated), named as
    /// in MindEye2's state dict. Subject lines are `ridge.linears.{s}`.
    pub fn param_counts(&self) -> ParamCounts {
        let h = self.hidden as u64;
        let seq = MindEye2Config::SEQ_LEN as u64;
        let (d, out) = (self.clip_dim as u64, self.out_dim() as u64);
        let mixer = |w: u64| self.blocks as u64 * (2 * w + 2 * (w * w + w));
        let ridge: Vec<u64> = self.voxels.iter().map(|&v| v as u64 * h + h).collect();
        let mut backbone = vec![
            ("backbone.mixer_blocks1".to_string(), mixer(h)),
            ("backbone.mixer_blocks2".to_string(), mixer(seq)),
            ("backbone.backbone_linear".to_string(), h * seq * out + out),
            ("backbone.clip_proj".to_string(), 3 * (2 * d + d * d + d)),
        ];
        if let Some(low) = &self.low_level {
            backbone.extend(low.param_counts());
        }
        let prior = self.prior.as_ref().map(|p| (p.num_params(), p.num_trainable_params()));
        ParamCounts { ridge, backbone, prior }
    }
}

/// Parameter counts of a MindEye2 config.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamCounts {
    /// One ridge per subject, in subject-index order.
    pub ridge: Vec<u64>,
    /// Backbone submodules (the low-level branch's included), by state-dict name.
    pub backbone: Vec<(String, u64)>,
    /// The prior's (all, trainable) counts; the difference is the shared rotary frequencies.
    pub prior: Option<(u64, u64)>,
}

impl ParamCounts {
    pub fn backbone_total(&self) -> u64 {
        self.backbone.iter().map(|(_, n)| n).sum()
    }

    /// (all, trainable) parameters of a model holding the ridges of `subjects` (indices).
    pub fn total_for(&self, subjects: impl IntoIterator<Item = usize>) -> (u64, u64) {
        let ridge: u64 = subjects.into_iter().map(|s| self.ridge[s]).sum();
        let (prior_all, prior_trainable) = self.prior.unwrap_or((0, 0));
        let shared = ridge + self.backbone_total();
        (shared + prior_all, shared + prior_trainable)
    }

    /// (all, trainable) for every subject's ridge.
    pub fn total(&self) -> (u64, u64) {
        self.total_for(0..self.ridge.len())
    }
}
