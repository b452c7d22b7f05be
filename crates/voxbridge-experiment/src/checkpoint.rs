//! The trained model in a run directory: `checkpoint/model.safetensors` (burn module paths) and
//! `checkpoint/model.json` (the architecture and the NSD subject of each ridge). Files are written
//! under a temporary name and renamed, so a crash never leaves a half-written checkpoint behind.
//! Object-storage checkpoints with optimizer state and resume build on this (issue 6).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use voxbridge_model::{MindEye2, MindEye2Config};

pub const CHECKPOINT_DIR: &str = "checkpoint";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const MODEL_FILE: &str = "model.json";

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

/// Writes `<run_dir>/checkpoint/`.
pub fn save<B: Backend>(run_dir: &Path, model: &MindEye2<B>, card: &ModelCard) -> anyhow::Result<PathBuf> {
    let dir = run_dir.join(CHECKPOINT_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut store = SafetensorsStore::from_bytes(None);
    model.save_into(&mut store).map_err(|e| anyhow::anyhow!("serialising the model: {e}"))?;
    let bytes = store.get_bytes().map_err(|e| anyhow::anyhow!("serialising the model: {e}"))?;
    write_atomically(&dir.join(WEIGHTS_FILE), &bytes)?;
    write_atomically(&dir.join(MODEL_FILE), serde_json::to_string_pretty(card)?.as_bytes())?;
    Ok(dir)
}

/// Reads a checkpoint saved by [`save`]; `location` is a run directory or its `checkpoint/`.
pub fn load<B: Backend>(location: &Path, device: &B::Device) -> anyhow::Result<(MindEye2<B>, ModelCard)> {
    let dir = if location.join(MODEL_FILE).exists() { location.to_path_buf() } else { location.join(CHECKPOINT_DIR) };
    let card_path = dir.join(MODEL_FILE);
    let text = std::fs::read_to_string(&card_path).with_context(|| {
        format!("cannot read {} (is {} a run directory with a checkpoint?)", card_path.display(), location.display())
    })?;
    let card: ModelCard = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a voxbridge model card", card_path.display()))?;
    let problems = card.architecture.problems();
    if !problems.is_empty() {
        bail!("{}: {}", card_path.display(), problems.join("; "));
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&weights_path).with_context(|| format!("cannot read {}", weights_path.display()))?;
    let mut model = MindEye2::<B>::init(&card.architecture, device);
    let result = model
        .load_from(&mut SafetensorsStore::from_bytes(Some(bytes)))
        .map_err(|e| anyhow::anyhow!("{}: {e}", weights_path.display()))?;
    if !result.missing.is_empty() || !result.errors.is_empty() {
        let missing: Vec<&str> = result.missing.iter().map(|(p, _)| p.as_str()).take(5).collect();
        bail!(
            "{} does not fit its model.json: {} tensors missing (first: {missing:?}), {} errors (first: {:?})",
            weights_path.display(),
            result.missing.len(),
            result.errors.len(),
            result.errors.first().map(|e| e.to_string())
        );
    }
    Ok((model, card))
}

/// Writes `bytes` to `path` through a sibling temporary file and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("{}.partial", path.extension().and_then(|e| e.to_str()).unwrap_or("out")));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
}
