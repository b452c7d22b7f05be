//! The ridge baseline on a dataset (`voxbridge ridge`, and the demo's linear row): one subject,
//! its first N sessions, decoded to CLIP tokens in closed form and scored with MindEye2's
//! retrieval protocol.

use serde::Serialize;
use voxbridge_data::{Dataset, TargetKind};
use voxbridge_eval::Retrieval;
use voxbridge_ridge::{DEFAULT_ALPHAS, ridge_retrieval};

pub use voxbridge_data::Sessions;

/// What the baseline trained on and how it scores.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineResult {
    pub subject: u8,
    pub sessions: Vec<u16>,
    pub train_trials: usize,
    pub test_images: usize,
    pub alpha: f64,
    pub image_top1: f64,
    pub brain_top1: f64,
    pub retrieval: Retrieval,
}

/// Ridge regression of `subject`'s first `sessions` to CLIP tokens (alpha picked from
/// [`DEFAULT_ALPHAS`]), scored on the shared test images.
pub fn ridge_baseline(dataset: &Dataset, subject: u8, sessions: Sessions, seed: u64) -> anyhow::Result<BaselineResult> {
    let trials = dataset.load_subject(subject, sessions)?;
    let targets = dataset.load_targets(Some(&trials.image_ids()))?;
    let a = trials.decoding_arrays(&targets, TargetKind::ClipTokens, None)?;
    let (model, retrieval) =
        ridge_retrieval(&a.train_x, &a.train_y, &a.test_x, &a.test_y, a.inputs, a.outputs, &DEFAULT_ALPHAS, seed)?;
    Ok(BaselineResult {
        subject,
        sessions: trials.sessions_used.clone(),
        train_trials: trials.train.len(),
        test_images: a.test_images.len(),
        alpha: model.alpha,
        image_top1: retrieval.image_top1.mean,
        brain_top1: retrieval.brain_top1.mean,
        retrieval,
    })
}

/// [`ridge_baseline`] on the dataset of `manifest` (path or URL).
pub fn ridge_baseline_of(manifest: &str, subject: u8, sessions: Sessions, seed: u64) -> anyhow::Result<BaselineResult> {
    ridge_baseline(&Dataset::open(manifest)?, subject, sessions, seed)
}

/// `all`, or a number of sessions N (the first N): `--sessions`.
pub fn parse_sessions(text: &str) -> Result<Sessions, String> {
    match text {
        "all" => Ok(Sessions::All),
        n => n.parse().map(Sessions::First).map_err(|_| format!("expected `all` or a number of sessions, got `{n}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_all_or_a_count() {
        assert_eq!(parse_sessions("all"), Ok(Sessions::All));
        assert_eq!(parse_sessions("3"), Ok(Sessions::First(3)));
        let err = parse_sessions("three").unwrap_err();
        assert!(err.contains("`all`") && err.contains("`three`"), "{err}");
    }
}
