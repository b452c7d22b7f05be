//! The ridge baseline on a dataset: one subject, its first N sessions, decoded to CLIP tokens and
//! scored with MindEye2's retrieval protocol.

use serde::Serialize;
use voxbridge_data::{Dataset, Sessions, TargetKind};
use voxbridge_eval::Retrieval;
use voxbridge_ridge::{DEFAULT_ALPHAS, ridge_retrieval};

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

pub fn run(args: &crate::args::RidgeArgs) -> anyhow::Result<()> {
    let sessions = match args.sessions.as_str() {
        "all" => Sessions::All,
        n => {
            Sessions::First(n.parse().map_err(|_| anyhow::anyhow!("--sessions must be a number or `all`, got `{n}`"))?)
        }
    };
    let dataset = Dataset::open(&args.data)?;
    let r = ridge_baseline(&dataset, args.subject, sessions, args.seed)?;
    println!(
        "subject {} sessions {:?}: {} training trials, {} test images, alpha {}: {}-way top-1 image {}, brain {} (chance {:.4})",
        r.subject,
        r.sessions,
        r.train_trials,
        r.test_images,
        r.alpha,
        r.retrieval.ways,
        crate::accuracy(&r.retrieval.image_top1, r.retrieval.loops),
        crate::accuracy(&r.retrieval.brain_top1, r.retrieval.loops),
        r.retrieval.chance
    );
    Ok(())
}
