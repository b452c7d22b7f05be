//! The model a run trains: its architecture from `[model]` and the data's sizes
//! ([`mindeye2_config`]), and its first weights — fresh, or a pretrained model with a new ridge
//! for the fine-tuned subject ([`initial_model`]).

use std::path::Path;

use anyhow::{Context, bail};
use burn::module::Module;
use voxbridge_config::{BackboneKind, ExperimentConfig, ModelConfig, NewSubjectBias};
use voxbridge_model::lowlevel::LowLevelConfig;
use voxbridge_model::prior::PriorConfig;
use voxbridge_model::{BackboneMode, MindEye2, MindEye2Config, RidgeBiasInit};

use crate::engine::CpuTrain;
use crate::inputs::{self, ExperimentInputs};
use crate::resume;
use burn::tensor::backend::AutodiffBackend;

/// A fresh model, or the pretrained one with a new ridge for the fine-tuned subject; with the
/// architecture actually trained (the pretrained one when fine-tuning). Weights are drawn on
/// the host (burn's CPU backend, seeded with `train.seed`, every parameter in module order),
/// then moved to `device`: GPU backends draw other random streams, and a run must start from
/// the same weights on every device.
pub(crate) fn initial_model<B: AutodiffBackend>(
    config: &ExperimentConfig,
    inputs: &ExperimentInputs,
    device: &B::Device,
) -> anyhow::Result<(MindEye2<B>, Option<String>, MindEye2Config)> {
    let host = Default::default();
    <CpuTrain as burn::tensor::backend::Backend>::seed(&host, config.train.seed);
    let (model, init_from, architecture) = initial_model_on::<CpuTrain>(config, inputs, &host)?;
    // Every parameter is drawn now, in module order, whatever the worker count: one process
    // and N workers (each touching only its own subjects' ridges in its first step) start
    // from the same weights.
    materialise(&model);
    let card = crate::checkpoint::ModelCard {
        architecture: architecture.clone(),
        subjects: config.data.train_subjects.clone(),
        run: config.name.clone(),
        steps: 0,
    };
    let bytes = crate::checkpoint::model_bytes(&model)?;
    drop(model);
    let model = crate::checkpoint::model_from_bytes::<B>(&card, bytes, "the initial weights", device)?;
    Ok((model, init_from, architecture))
}

fn initial_model_on<B: AutodiffBackend>(
    config: &ExperimentConfig,
    inputs: &ExperimentInputs,
    device: &B::Device,
) -> anyhow::Result<(MindEye2<B>, Option<String>, MindEye2Config)> {
    let Some(from) = &config.train.init_from else {
        let [tokens, dim] = [inputs.train.targets.tokens, inputs.train.targets.dim];
        let mut architecture =
            mindeye2_config(&config.model, inputs.voxels.clone(), tokens, dim, lowlevel_shape(inputs))?;
        inputs::fit_projector_to_teacher(&mut architecture, inputs);
        return Ok((MindEye2::init(&architecture, device), None, architecture));
    };
    let (pretrained, card) =
        resume::load_model::<B>(Path::new(from), device).with_context(|| format!("train.init_from = {from:?}"))?;
    let arch = &card.architecture;
    if (arch.clip_tokens, arch.clip_dim) != (inputs.train.targets.tokens, inputs.train.targets.dim) {
        bail!(
            "train.init_from = {from:?} predicts {}×{} CLIP tokens but the data has {}×{}",
            arch.clip_tokens,
            arch.clip_dim,
            inputs.train.targets.tokens,
            inputs.train.targets.dim
        );
    }
    if arch.hidden != config.model.hidden as usize || arch.blocks != config.model.blocks as usize {
        tracing::warn!(
            "[model] sizes (hidden {}, blocks {}) are ignored: the pretrained model from {from} has hidden {}, blocks {}",
            config.model.hidden,
            config.model.blocks,
            arch.hidden,
            arch.blocks
        );
    }
    let bias = match config.train.new_subject_bias {
        NewSubjectBias::CopyFirstPretrainedSubject => RidgeBiasInit::CopyFirstPretrainedSubject,
        NewSubjectBias::Fresh => RidgeBiasInit::Fresh,
    };
    tracing::info!(from = %from, pretrained_subjects = ?card.subjects, ?bias, "fine-tuning a new subject");
    if card.architecture.low_level.is_some() != config.model.low_level {
        bail!(
            "model.low_level = {} but the pretrained model from {from} {} the low-level branch",
            config.model.low_level,
            if card.architecture.low_level.is_some() { "has" } else { "lacks" }
        );
    }
    let architecture = MindEye2Config { voxels: inputs.voxels.clone(), ..card.architecture.clone() };
    Ok((pretrained.for_new_subject(inputs.voxels[0], bias, device), Some(from.clone()), architecture))
}

fn lowlevel_shape(inputs: &ExperimentInputs) -> Option<[usize; 3]> {
    inputs.train.targets.lowlevel.as_ref().map(|(shape, _)| *shape)
}

/// `[model]` + the data's sizes (CLIP tokens × width; the VAE latent `[C, H, W]` when the
/// low-level branch is on) → the model's architecture; sizes that do not fit name their key.
pub fn mindeye2_config(
    model: &ModelConfig,
    voxels: Vec<usize>,
    tokens: usize,
    dim: usize,
    lowlevel: Option<[usize; 3]>,
) -> anyhow::Result<MindEye2Config> {
    let low_level = match (model.low_level, lowlevel) {
        (false, _) => None,
        (true, None) => bail!("model.low_level = true needs the dataset's low-level latents"),
        (true, Some([c, h, w])) => {
            // MindEye2's decoder upsamples a 7×7 map ×2 per extra block: the latent side must be 7·2^k.
            let blocks = (0..3).find(|k| 7usize << k == h).filter(|_| h == w).with_context(|| {
                format!(
                    "model.low_level: the dataset's latents are {c}×{h}×{w}; the branch makes 7·2^k squares (7, 14, 28)"
                )
            })? + 1;
            let mut l = LowLevelConfig::mindeye2(model.hidden as usize);
            l.latent_channels = c;
            l.latent_size = h;
            l.block_out_channels.truncate(blocks);
            Some(l)
        }
    };
    let prior = if model.prior {
        let head = model.prior_dim_head as usize;
        if !dim.is_multiple_of(head) {
            bail!("model.prior_dim_head = {head} must divide the CLIP token width {dim} of this dataset");
        }
        let mut p = PriorConfig::mindeye2(dim, tokens, model.prior_depth as usize, head);
        p.timesteps = model.prior_timesteps as usize;
        Some(p)
    } else {
        None
    };
    let config = MindEye2Config {
        voxels,
        hidden: model.hidden as usize,
        blocks: model.blocks as usize,
        clip_tokens: tokens,
        clip_dim: dim,
        dropout: model.dropout,
        backbone_mode: match model.backbone {
            BackboneKind::Released => BackboneMode::Released,
            BackboneKind::CorrectedResidual => BackboneMode::CorrectedResidual,
        },
        low_level,
        prior,
    };
    let problems = config.problems();
    if !problems.is_empty() {
        bail!("[model]: {}", problems.join("; "));
    }
    Ok(config)
}

/// Draws every lazily initialised parameter now, in module order.
pub(crate) fn materialise<B: burn::tensor::backend::AutodiffBackend>(model: &MindEye2<B>) {
    struct Touch;
    impl<B: burn::tensor::backend::AutodiffBackend> burn::module::ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<burn::tensor::Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    model.visit(&mut Touch);
}
