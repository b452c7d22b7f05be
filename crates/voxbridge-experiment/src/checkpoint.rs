//! The trained model in a run directory: `checkpoint/model.safetensors` (burn module paths) and
//! `checkpoint/model.json` (the architecture and the NSD subject of each ridge). Files are written
//! under a temporary name and renamed, so a crash never leaves a half-written checkpoint behind.
//! The same two files are part of every training checkpoint in object storage; the resume
//! module reads them there, and its `load_model` reads a model from either place.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use voxbridge_config::RunDir;
use voxbridge_model::{MindEye2, MindEye2Config};

pub const CHECKPOINT_DIR: &str = RunDir::MODEL_DIR;
pub const WEIGHTS_FILE: &str = RunDir::WEIGHTS_FILE;
pub const MODEL_FILE: &str = RunDir::MODEL_CARD_FILE;

/// `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    pub architecture: MindEye2Config,
    /// NSD subject number of each ridge, in ridge order.
    pub subjects: Vec<u8>,
    /// Name of the run that trained it.
    pub run: String,
    pub steps: u64,
}

/// Writes `<run>/checkpoint/`.
pub fn save<B: Backend>(run: &RunDir, model: &MindEye2<B>, card: &ModelCard) -> anyhow::Result<PathBuf> {
    let dir = run.model_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_atomically(&run.model_weights(), &model_bytes(model)?)?;
    write_atomically(&run.model_card(), serde_json::to_string_pretty(card)?.as_bytes())?;
    Ok(dir)
}

/// The model's weights as safetensors bytes, keyed by burn module path
/// (`ridge.linears.0.weight`, `backbone.backbone_linear.weight`, …), with the metadata
/// `{"format": "pt"}` that Python loaders expect.
///
/// Deterministic: burn's writer orders its header metadata by a `HashMap`, so the same weights
/// could give different bytes (and checksums) in two processes; the bytes are rewritten with
/// one metadata entry and the safetensors crate's fixed tensor order.
pub fn model_bytes<B: Backend>(model: &MindEye2<B>) -> anyhow::Result<Vec<u8>> {
    let mut store = SafetensorsStore::from_bytes(None);
    model.save_into(&mut store).map_err(|e| anyhow::anyhow!("serialising the model: {e}"))?;
    let bytes = store.get_bytes().map_err(|e| anyhow::anyhow!("serialising the model: {e}"))?;
    let parsed = safetensors::SafeTensors::deserialize(&bytes).context("re-reading burn's safetensors output")?;
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(parsed.tensors(), Some(metadata)).context("serialising the model")
}

/// The folder of a saved model at `location`: `location` itself when it holds `model.json`,
/// else its `checkpoint/` (a run directory); `None` when neither holds one.
pub fn saved_model_dir(location: &Path) -> Option<PathBuf> {
    if location.join(MODEL_FILE).exists() {
        return Some(location.to_path_buf());
    }
    let run = RunDir::new(location);
    run.model_card().exists().then(|| run.model_dir())
}

/// Reads the model saved in `location`: a run directory, or its `checkpoint/`.
pub fn load_saved<B: Backend>(location: &Path, device: &B::Device) -> anyhow::Result<(MindEye2<B>, ModelCard)> {
    let dir = saved_model_dir(location).unwrap_or_else(|| RunDir::new(location).model_dir());
    let card_path = dir.join(MODEL_FILE);
    let text = std::fs::read_to_string(&card_path).with_context(|| {
        format!(
            "cannot read {} (is {} a run directory with a checkpoint, or a checkpoint location?)",
            card_path.display(),
            location.display()
        )
    })?;
    let card = parse_card(text.as_bytes(), &card_path.display().to_string())?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&weights_path).with_context(|| format!("cannot read {}", weights_path.display()))?;
    let model = model_from_bytes(&card, bytes, &weights_path.display().to_string(), device)?;
    Ok((model, card))
}

/// A `model.json` whose architecture is valid; errors name `origin`.
pub fn parse_card(bytes: &[u8], origin: &str) -> anyhow::Result<ModelCard> {
    let card: ModelCard =
        serde_json::from_slice(bytes).with_context(|| format!("{origin} is not a voxbridge model card"))?;
    let problems = card.architecture.problems();
    if !problems.is_empty() {
        bail!("{origin}: {}", problems.join("; "));
    }
    Ok(card)
}

/// The model `card` describes, with the weights in `bytes` (safetensors); errors name `origin`.
pub fn model_from_bytes<B: Backend>(
    card: &ModelCard,
    bytes: Vec<u8>,
    origin: &str,
    device: &B::Device,
) -> anyhow::Result<MindEye2<B>> {
    let mut model = MindEye2::<B>::init(&card.architecture, device);
    let result = model
        .load_from(&mut SafetensorsStore::from_bytes(Some(bytes)))
        .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    if !result.missing.is_empty() || !result.errors.is_empty() {
        let missing: Vec<&str> = result.missing.iter().map(|(p, _)| p.as_str()).take(5).collect();
        bail!(
            "{origin} does not fit its model.json: {} tensors missing (first: {missing:?}), {} errors (first: {:?})",
            result.missing.len(),
            result.errors.len(),
            result.errors.first().map(|e| e.to_string())
        );
    }
    Ok(model)
}

/// Writes `bytes` to `path` through a sibling temporary file and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("{}.partial", path.extension().and_then(|e| e.to_str()).unwrap_or("out")));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use voxbridge_model::{BackboneMode, MindEye2Config};

    use super::*;
    use crate::engine::CpuBackend;

    /// Regression: burn's writer orders header metadata by a `HashMap`, so saving the same
    /// weights twice gave different bytes, and a checkpoint in S3 and one on disk different
    /// checksums.
    #[test]
    fn the_same_weights_always_serialise_to_the_same_bytes() {
        let config = MindEye2Config {
            voxels: vec![12, 9],
            hidden: 8,
            blocks: 1,
            clip_tokens: 2,
            clip_dim: 4,
            dropout: 0.0,
            backbone_mode: BackboneMode::Released,
            low_level: None,
            prior: None,
        };
        let model = MindEye2::<CpuBackend>::init(&config, &Default::default());
        let first = model_bytes(&model).unwrap();
        for _ in 0..8 {
            assert_eq!(model_bytes(&model).unwrap(), first);
        }
        let parsed = safetensors::SafeTensors::read_metadata(&first).unwrap().1;
        assert_eq!(parsed.metadata().as_ref().map(|m| m.get("format").cloned()), Some(Some("pt".to_string())));
        let card = ModelCard { architecture: config, subjects: vec![2, 3], run: "t".into(), steps: 0 };
        let back: MindEye2<CpuBackend> = model_from_bytes(&card, first.clone(), "test", &Default::default()).unwrap();
        assert_eq!(model_bytes(&back).unwrap(), first, "loading and saving again is lossless");
    }
}
