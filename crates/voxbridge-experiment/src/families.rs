//! The model families beside MindEye2 in model files and checkpoints: MindEye1 (voxel2clip and
//! its prior), MindEye1's separate low-level model, and Mind Reader's Conv1D mapper.
//!
//! A model file names its family in a top-level `family` key (`mindeye2` when absent, so every
//! MindEye2 file stays valid); the rest of the file is that family's sizes, unknown keys rejected
//! with line and column. An original checkpoint's family is recognised from its key names.

use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, bail};
use burn::tensor::backend::Backend;
use serde::de::DeserializeOwned;
use voxbridge_model::MindEye2Config;
use voxbridge_model::budget::group;
use voxbridge_model::mindeye1::lowlevel::{Voxel2Sd, Voxel2SdConfig};
use voxbridge_model::mindeye1::{MindEye1Config, VOXEL2CLIP, Voxel2Clip};
use voxbridge_model::mindreader::{MindReader, MindReaderConfig, pad_voxels};
use voxbridge_model::tensors::{HostTensor, TensorMap};

/// An architecture of any family, as a model file or a checkpoint describes it.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelFile {
    MindEye2(MindEye2Config),
    MindEye1(MindEye1Config),
    MindEye1LowLevel(Voxel2SdConfig),
    MindReader(MindReaderConfig),
}

/// The `family` values a model file may name.
pub const MODEL_FILE_FAMILIES: [&str; 4] = ["mindeye2", "mindeye1", "mindeye1-lowlevel", "mindreader"];

impl ModelFile {
    /// The family's name in model files.
    pub fn family(&self) -> &'static str {
        match self {
            ModelFile::MindEye2(_) => "mindeye2",
            ModelFile::MindEye1(_) => "mindeye1",
            ModelFile::MindEye1LowLevel(_) => "mindeye1-lowlevel",
            ModelFile::MindReader(_) => "mindreader",
        }
    }

    /// Reads a model file (see the module docs).
    pub fn load(path: &Path) -> anyhow::Result<ModelFile> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// [`ModelFile::load`] on text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<ModelFile> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {}", e.to_string().trim_end()))?;
        let family = match table.get("family") {
            None => "mindeye2",
            Some(toml::Value::String(f)) => f.as_str(),
            Some(other) => bail!("{origin}: `family` must be a string, found {other}"),
        };
        // The family line is blanked (not removed) so that errors keep their line numbers.
        let sizes = blank_top_level_key(text, "family");
        let problems;
        let file = match family {
            "mindeye2" => {
                let c: MindEye2Config = parse_sizes(&sizes, origin)?;
                problems = c.problems();
                ModelFile::MindEye2(c)
            }
            "mindeye1" => {
                let c: MindEye1Config = parse_sizes(&sizes, origin)?;
                problems = c.problems();
                ModelFile::MindEye1(c)
            }
            "mindeye1-lowlevel" => {
                let c: Voxel2SdConfig = parse_sizes(&sizes, origin)?;
                problems = c.problems();
                ModelFile::MindEye1LowLevel(c)
            }
            "mindreader" => {
                let c: MindReaderConfig = parse_sizes(&sizes, origin)?;
                problems = c.problems();
                ModelFile::MindReader(c)
            }
            other => bail!(
                "{origin}: family `{other}` has no model file; expected one of {}",
                MODEL_FILE_FAMILIES.join(", ")
            ),
        };
        if !problems.is_empty() {
            bail!("{origin}: {}", problems.join("; "));
        }
        Ok(file)
    }

    /// The family and sizes of an original checkpoint, from its key names: `voxel2clip.*`
    /// (MindEye1's `last.pth`), `lin0.*` with `upsampler.*` (`lowlevel_last.pth`), `encoder.*`
    /// with `fc.*` (Mind Reader's `model.pth`), else MindEye2.
    pub fn infer(weights: &TensorMap) -> anyhow::Result<ModelFile> {
        Ok(if weights.contains(&format!("{VOXEL2CLIP}lin0.0.weight")) {
            ModelFile::MindEye1(MindEye1Config::infer(weights)?)
        } else if weights.contains("lin0.0.weight") && weights.contains("upsampler.conv_in.weight") {
            ModelFile::MindEye1LowLevel(Voxel2SdConfig::infer(weights)?)
        } else if weights.contains("encoder.0.0.weight") && weights.contains("fc.1.weight") {
            ModelFile::MindReader(MindReaderConfig::infer(weights)?)
        } else {
            ModelFile::MindEye2(MindEye2Config::infer(weights)?)
        })
    }
}

fn parse_sizes<T: DeserializeOwned>(text: &str, origin: &str) -> anyhow::Result<T> {
    toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {}", e.to_string().trim_end()))
}

/// `text` with the line that sets top-level `key` (before any `[table]`) made empty.
fn blank_top_level_key(text: &str, key: &str) -> String {
    let mut in_root = true;
    text.lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with('[') {
                in_root = false;
            }
            let sets_key = trimmed.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='));
            if in_root && sets_key { "" } else { line }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The parameter table of `voxbridge params` for the families beside MindEye2: every module,
/// then the totals (all parameters, and the trainable ones where they differ).
pub fn family_params_report(file: &ModelFile) -> String {
    let mut out = String::new();
    let mut line = |name: &str, n: u64| writeln!(out, "{name:<52} {:>15}", group(n)).expect("string write");
    match file {
        ModelFile::MindEye1(c) => {
            let counts: std::collections::BTreeMap<String, u64> = c.param_counts().into_iter().collect();
            for name in ["voxel2clip.lin0", "voxel2clip.mlp", "voxel2clip.lin1", "voxel2clip.projector"] {
                line(name, counts[name]);
            }
            line("voxel2clip (total)", counts["voxel2clip"]);
            if let Some(prior) = &c.prior {
                for (name, n) in prior.param_counts() {
                    if name.starts_with("layer.") {
                        line(&format!("net.{name} (each layer)"), n);
                    } else if !name.starts_with("total") {
                        line(&format!("net.{name}"), n);
                    }
                }
                line("net (total, prior transformer)", counts["net"]);
            }
            writeln!(
                out,
                "{:<52} {:>15}  ({} trainable)",
                "TOTAL (voxel2clip + net, the checkpoint's model)",
                group(counts["total"]),
                group(counts["total.trainable"])
            )
            .expect("string write");
        }
        ModelFile::MindEye1LowLevel(c) => {
            for (name, n) in c.param_counts() {
                line(if name == "total" { "TOTAL (voxel2sd)" } else { &name }, n);
            }
        }
        ModelFile::MindReader(c) => {
            for (name, n) in c.param_counts() {
                line(if name == "total" { "TOTAL" } else { &name }, n);
            }
        }
        ModelFile::MindEye2(c) => out += &crate::model_file::params_report(c),
    }
    out
}

/// One paragraph describing a family's architecture (printed when it was inferred).
pub fn describe_family(file: &ModelFile) -> String {
    match file {
        ModelFile::MindEye2(c) => crate::model_file::describe(c),
        ModelFile::MindEye1(c) => format!(
            "  MindEye1: {} voxels, hidden {}, {} residual blocks, CLIP tokens {} × {}, projector {}\n  \
             diffusion prior: {}\n",
            c.voxels,
            c.hidden,
            c.blocks,
            c.clip_tokens,
            c.clip_dim,
            c.projector_hidden,
            c.prior
                .as_ref()
                .map_or("off".to_string(), |p| format!("depth {}, {} heads of size {}", p.depth, p.heads, p.dim_head))
        ),
        ModelFile::MindEye1LowLevel(c) => format!(
            "  MindEye1 low-level model: {} voxels, hidden {}, {} residual blocks, map {} × {}², decoder {:?} \
             ({} groups), latent {} × {}²\n",
            c.voxels,
            c.hidden,
            c.blocks,
            c.map_channels,
            c.map_size,
            c.block_out_channels,
            c.norm_num_groups,
            c.latent_channels,
            c.latent_size()
        ),
        ModelFile::MindReader(c) => format!(
            "  Mind Reader: input length {} ({} voxels padded), {} channels, {} residual blocks, head {}, CLIP {}\n",
            c.signal_len, c.voxels, c.hidden, c.resnet_blocks, c.fc_hidden, c.clip_dim
        ),
    }
}

/// Runs a MindEye1, MindEye1 low-level or Mind Reader model read from `weights` on `voxels`
/// `[N, V]` and returns its outputs under the original code's names: `clip_voxels` `[N, T·D]` and
/// `clip_voxels_proj` `[N, T, D]`; `upsampler_out` and `transformer_feats`; `y_pred` `[N, E]`.
/// Mind Reader takes the zero-padded vector the original feeds (`[N, L]`), or unpadded voxels,
/// which are padded as the original pads them.
pub fn predict_family<B: Backend>(
    weights: &TensorMap,
    file: &ModelFile,
    voxels: &HostTensor,
    device: &B::Device,
) -> anyhow::Result<Vec<(String, HostTensor)>> {
    let columns = voxels.shape[1];
    let expect_columns = |want: usize| -> anyhow::Result<()> {
        if columns != want {
            bail!("{columns} voxels per row, but the model takes {want}");
        }
        Ok(())
    };
    Ok(match file {
        ModelFile::MindEye1(c) => {
            expect_columns(c.voxels)?;
            // The prior is read only when it is sampled (`predict --prior-steps`).
            let net = Voxel2Clip::<B>::from_tensors(weights, VOXEL2CLIP, c, device)?;
            let out = net.forward(voxels.to_tensor::<B, 2>(device));
            let n = voxels.shape[0];
            vec![
                ("clip_voxels".into(), HostTensor::from_tensor(out.clip_voxels.reshape([n, c.out_dim()]))),
                ("clip_voxels_proj".into(), HostTensor::from_tensor(out.clip_voxels_proj)),
            ]
        }
        ModelFile::MindEye1LowLevel(c) => {
            expect_columns(c.voxels)?;
            let model = Voxel2Sd::<B>::from_tensors(weights, c, device)?;
            let out = model.forward(voxels.to_tensor::<B, 2>(device));
            vec![
                ("upsampler_out".into(), HostTensor::from_tensor(out.latent)),
                ("transformer_feats".into(), HostTensor::from_tensor(out.features)),
            ]
        }
        ModelFile::MindReader(c) => {
            let padded = if columns == c.signal_len {
                voxels.clone()
            } else if columns < c.signal_len {
                let mut sized = c.clone();
                sized.voxels = columns;
                let data = voxels.data.chunks(columns).flat_map(|row| pad_voxels(row, &sized)).collect();
                HostTensor::new(vec![voxels.shape[0], c.signal_len], data)
            } else {
                bail!("{columns} values per row do not fit the model's input length {}", c.signal_len);
            };
            let model = MindReader::<B>::from_tensors(weights, c, device)?;
            vec![("y_pred".into(), HostTensor::from_tensor(model.forward(padded.to_tensor::<B, 2>(device))))]
        }
        ModelFile::MindEye2(_) => bail!("MindEye2 checkpoints are predicted by `predict` itself"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_file_names_its_family_and_mindeye2_is_the_default() {
        let me1 = "# MindEye1\nfamily = \"mindreader\"\nsignal_len = 64\nvoxels = 59\nclip_dim = 16\nhidden = 8\n\
                   fc_hidden = 12\nresnet_blocks = 4\n";
        let file = ModelFile::parse(me1, "m.toml").unwrap();
        assert_eq!(file.family(), "mindreader");
        let err = ModelFile::parse(&me1.replace("hidden = 8", "hiden = 8"), "m.toml").unwrap_err().to_string();
        assert!(err.contains("m.toml") && err.contains("line 6") && err.contains("hiden"), "{err}");
        let err = ModelFile::parse("family = \"mindeye3\"\n", "m.toml").unwrap_err().to_string();
        assert!(err.contains("mindeye3") && err.contains("mindeye1-lowlevel"), "{err}");
        let err = ModelFile::parse("family = 3\n", "m.toml").unwrap_err().to_string();
        assert!(err.contains("must be a string"), "{err}");
    }

    #[test]
    fn only_the_top_level_family_line_is_blanked() {
        let text = "family = \"x\"\nfamily_note = 1\n[t]\nfamily = \"y\"\n";
        assert_eq!(blank_top_level_key(text, "family"), "\nfamily_note = 1\n[t]\nfamily = \"y\"");
    }
}
