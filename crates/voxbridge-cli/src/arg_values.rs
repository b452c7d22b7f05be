//! Typed values of command-line options: each a closed set of spellings (clap lists them when
//! a value is wrong) or a parser, mapped to the library's types.

use clap::{Args, ValueEnum};
use voxbridge_config::{DeviceSpec, Precision};
use voxbridge_experiment::ResumeFrom;

/// `--device` and `--precision`, on every command that computes; they win over the
/// experiment's `[compute]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Args)]
pub struct ComputeArgs {
    /// Where to compute: cpu, cuda, cuda:N or wgpu (overrides `[compute] device`). GPU devices
    /// need a binary built with the `cuda` or `wgpu` feature.
    #[arg(long, value_name = "DEVICE", value_parser = parse_device)]
    pub device: Option<DeviceSpec>,
    /// Matmul precision: fp32, or bf16 (f32 master weights and AdamW moments; f32 softmax,
    /// norms and losses). `tf32` is accepted for fp32: burn's f32 matmuls use TF32 on CUDA.
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
}

impl ComputeArgs {
    pub fn precision(&self) -> Option<Precision> {
        self.precision.map(PrecisionArg::precision)
    }
}

/// `--device`.
pub fn parse_device(text: &str) -> Result<DeviceSpec, String> {
    text.parse()
}

/// `--precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    #[value(alias = "tf32")]
    Fp32,
    Bf16,
}

impl PrecisionArg {
    pub fn precision(self) -> Precision {
        match self {
            PrecisionArg::Fp32 => Precision::Fp32,
            PrecisionArg::Bf16 => Precision::Bf16,
        }
    }
}

/// `--resume`: `auto`, or a checkpoint's path or URL.
pub fn parse_resume(text: &str) -> Result<ResumeFrom, String> {
    Ok(match text {
        "auto" => ResumeFrom::Auto,
        location => ResumeFrom::At(location.to_string()),
    })
}

/// A simulator preset (`data simulate --preset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    Tiny,
    Small,
    NsdScale,
}

impl Preset {
    /// The simulator's name of the preset.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Small => "small",
            Preset::NsdScale => "nsd-scale",
        }
    }
}

/// The presets the demo runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DemoPreset {
    Tiny,
    Small,
}

impl DemoPreset {
    pub fn name(self) -> &'static str {
        match self {
            DemoPreset::Tiny => "tiny",
            DemoPreset::Small => "small",
        }
    }
}

/// How imported betas are z-scored (`data import-nsd --normalisation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Normalisation {
    /// Renorm betas, already z-scored per session.
    AsReleased,
    /// Raw betas, z-scored per session (the notebook).
    PerSession,
    /// Raw betas, z-scored over the training set (the paper).
    TrainSet,
}

impl From<Normalisation> for voxbridge_nsd::Normalisation {
    fn from(n: Normalisation) -> Self {
        match n {
            Normalisation::AsReleased => voxbridge_nsd::Normalisation::AsReleased,
            Normalisation::PerSession => voxbridge_nsd::Normalisation::PerSession,
            Normalisation::TrainSet => voxbridge_nsd::Normalisation::TrainSet,
        }
    }
}

/// A benchmark anchor (notes/perf-anchors.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Anchor {
    #[value(name = "P1")]
    P1,
    #[value(name = "P1-big")]
    P1Big,
}

impl Anchor {
    pub fn name(self) -> &'static str {
        match self {
            Anchor::P1 => "P1",
            Anchor::P1Big => "P1-big",
        }
    }
}
