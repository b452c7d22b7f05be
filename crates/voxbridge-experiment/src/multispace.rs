//! `voxbridge ridge --spaces clip,caption,latent`: the multi-space ridge of one subject (the
//! MindDiffuser-style pipeline): one closed-form fit per feature space from the same voxels, λ
//! chosen per space by cross-validation over the training sessions, each space scored on the
//! shared test images with its own measure: retrieval top-1 for CLIP tokens (MindEye2's
//! protocol), the mean per-image Pearson correlation for the low-level latent, the mean cosine to
//! the image's mean caption embedding for captions.

use anyhow::bail;
use serde::Serialize;
use voxbridge_data::{Dataset, Sessions, TargetKind};
use voxbridge_ridge::{DEFAULT_ALPHAS, FeatureSpace, Folds, fit_spaces};

/// Leave-sessions-out folds at most.
const MAX_FOLDS: usize = 5;

/// A feature space `--spaces` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Space {
    Clip,
    Caption,
    Latent,
}

impl Space {
    pub const ALL: [Space; 3] = [Space::Clip, Space::Caption, Space::Latent];

    pub fn name(self) -> &'static str {
        match self {
            Space::Clip => "clip",
            Space::Caption => "caption",
            Space::Latent => "latent",
        }
    }

    fn kind(self) -> TargetKind {
        match self {
            Space::Clip => TargetKind::ClipTokens,
            Space::Caption => TargetKind::CaptionMean,
            Space::Latent => TargetKind::LowLevel,
        }
    }

    /// What the space's score measures.
    pub fn measure(self) -> &'static str {
        match self {
            Space::Clip => "image top-1 (MindEye2's protocol)",
            Space::Caption => "cosine to the caption mean",
            Space::Latent => "Pearson r per image",
        }
    }
}

/// `clip`, `caption` or `latent`.
pub fn parse_space(text: &str) -> Result<Space, String> {
    Space::ALL
        .into_iter()
        .find(|s| s.name() == text)
        .ok_or_else(|| format!("`{text}` is not a feature space; expected one of clip, caption, latent"))
}

/// One space's fit and score.
#[derive(Debug, Clone, Serialize)]
pub struct SpaceScore {
    pub space: Space,
    pub width: usize,
    /// The alpha chosen (λ = alpha · rows) and every alpha's cross-validated MSE.
    pub alpha: f64,
    pub cv_mse: Vec<(f64, f64)>,
    /// The space's measure on the test images (see [`Space::measure`]).
    pub score: f64,
    /// For CLIP, the brain-direction top-1 too, and the candidates per trial.
    pub brain_top1: Option<f64>,
    pub ways: Option<usize>,
}

/// The fits of one subject.
#[derive(Debug, Clone, Serialize)]
pub struct MultiSpaceResult {
    pub subject: u8,
    pub sessions: Vec<u16>,
    pub train_trials: usize,
    pub test_images: usize,
    /// How λ was chosen: `leave-sessions-out (k folds)` or `contiguous blocks (k)`.
    pub folds: String,
    pub spaces: Vec<SpaceScore>,
}

/// Fits every space of `spaces` from `subject`'s first `sessions` and scores them.
pub fn multi_space_ridge(
    dataset: &Dataset,
    subject: u8,
    sessions: Sessions,
    spaces: &[Space],
    seed: u64,
) -> anyhow::Result<MultiSpaceResult> {
    if spaces.is_empty() {
        bail!("--spaces: name at least one feature space");
    }
    let trials = dataset.load_subject(subject, sessions)?;
    let targets = dataset.load_targets(Some(&trials.image_ids()))?;
    let arrays =
        spaces.iter().map(|s| trials.decoding_arrays(&targets, s.kind(), None)).collect::<Result<Vec<_>, _>>()?;
    let first = &arrays[0];
    let n = trials.train.len();
    let labels: Vec<u32> = trials.train.session.iter().map(|&s| u32::from(s)).collect();
    let folds = Folds::by_session(&labels, MAX_FOLDS);
    let folds_text = match &folds {
        Folds::Groups { labels, max } => {
            let mut distinct = labels.clone();
            distinct.sort_unstable();
            distinct.dedup();
            format!("leave-sessions-out ({} folds)", distinct.len().min(*max))
        }
        Folds::Blocks(k) => format!("contiguous blocks ({k}) within the one session"),
    };
    let feature_spaces: Vec<FeatureSpace<'_>> = spaces
        .iter()
        .zip(&arrays)
        .map(|(s, a)| FeatureSpace { name: s.name(), y: &a.train_y, width: a.outputs })
        .collect();
    let fits = fit_spaces(&first.train_x, n, first.inputs, &feature_spaces, &folds, &DEFAULT_ALPHAS)?;
    let mut scores = Vec::with_capacity(spaces.len());
    for ((space, a), fit) in spaces.iter().zip(&arrays).zip(fits) {
        let predicted = fit.ridge.predict(&a.test_x)?;
        let (score, brain_top1, ways) = match space {
            Space::Clip => {
                let matrix = voxbridge_eval::ScoreMatrix::cosine(&predicted, &a.test_y, a.outputs);
                let r = voxbridge_eval::top1_retrieval(
                    &matrix,
                    voxbridge_eval::MINDEYE2_WAYS,
                    voxbridge_eval::MINDEYE2_LOOPS,
                    seed,
                );
                (r.image_top1.mean, Some(r.brain_top1.mean), Some(r.ways))
            }
            Space::Caption => (mean_row(&predicted, &a.test_y, a.outputs, cosine), None, None),
            Space::Latent => (mean_row(&predicted, &a.test_y, a.outputs, pearson), None, None),
        };
        scores.push(SpaceScore {
            space: *space,
            width: a.outputs,
            alpha: fit.alpha,
            cv_mse: fit.cv,
            score,
            brain_top1,
            ways,
        });
    }
    Ok(MultiSpaceResult {
        subject,
        sessions: trials.sessions_used.clone(),
        train_trials: n,
        test_images: first.test_images.len(),
        folds: folds_text,
        spaces: scores,
    })
}

/// [`multi_space_ridge`] on the dataset of `manifest` (path or URL).
pub fn multi_space_ridge_of(
    manifest: &str,
    subject: u8,
    sessions: Sessions,
    spaces: &[Space],
    seed: u64,
) -> anyhow::Result<MultiSpaceResult> {
    multi_space_ridge(&Dataset::open(manifest)?, subject, sessions, spaces, seed)
}

/// The mean over rows of `measure(predicted row, true row)`.
fn mean_row(predicted: &[f32], truth: &[f32], width: usize, measure: fn(&[f32], &[f32]) -> f64) -> f64 {
    let rows = predicted.len() / width.max(1);
    if rows == 0 {
        return f64::NAN;
    }
    predicted.chunks(width).zip(truth.chunks(width)).map(|(p, t)| measure(p, t)).sum::<f64>() / rows as f64
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if na > 0.0 && nb > 0.0 { dot / (na * nb) } else { 0.0 }
}

fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().map(|&x| f64::from(x)).sum::<f64>() / n, b.iter().map(|&x| f64::from(x)).sum::<f64>() / n);
    let centred_a: Vec<f32> = a.iter().map(|&x| (f64::from(x) - ma) as f32).collect();
    let centred_b: Vec<f32> = b.iter().map(|&x| (f64::from(x) - mb) as f32).collect();
    cosine(&centred_a, &centred_b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_parse_by_name_and_measures_are_what_they_say() {
        assert_eq!(parse_space("latent"), Ok(Space::Latent));
        assert!(parse_space("text").unwrap_err().contains("clip, caption, latent"));
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - 0.5f64.sqrt()).abs() < 1e-12);
        assert!((mean_row(&[1.0, 0.0, 0.0, 1.0], &[1.0, 0.0, 1.0, 0.0], 2, cosine) - 0.5).abs() < 1e-12);
    }
}
