//! Typed values of command-line options: each a closed set of spellings (clap lists them when
//! a value is wrong) or a parser, mapped to the library's types.

use clap::ValueEnum;
use voxbridge_experiment::ResumeFrom;

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
