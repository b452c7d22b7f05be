//! `voxbridge eval`: a trained run's saved model scored with MindEye2's retrieval protocol
//! (plus Mind Reader's batch and the prior's samples) on a dataset's test trials — by default
//! the run's own dataset and evaluation subjects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use voxbridge_config::{ExperimentConfig, RunDir};
use voxbridge_data::Dataset;
use voxbridge_train::{EvalOptions, evaluate};

use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::engine::{BackendTask, Engine};
use crate::report::read_report;
use crate::resume::load_model;

pub use voxbridge_eval::Accuracy;
pub use voxbridge_train::Evaluation;

/// What to evaluate, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalRequest {
    /// A run directory, or its `checkpoint/`.
    pub run: PathBuf,
    /// Data manifest (default: the run's config's).
    pub data: Option<String>,
    /// Subjects (default: those the run's report evaluated, else the model's).
    pub subjects: Option<Vec<u8>>,
    pub ways: usize,
    pub loops: usize,
    /// DDIM steps of the prior's samples (0 skips them).
    pub prior_steps: usize,
    pub seed: u64,
    /// Also write the evaluations as JSON here (keyed `"subject<N>"`).
    pub json: Option<PathBuf>,
    /// Where to compute (`--device`).
    pub device: voxbridge_config::DeviceSpec,
}

/// Evaluates each subject in turn (`each` hears every evaluation as it is made) and returns
/// them by subject.
pub fn evaluate_run(
    request: &EvalRequest,
    each: &mut dyn FnMut(u8, &Evaluation),
) -> anyhow::Result<BTreeMap<u8, Evaluation>> {
    struct Task<'a, 'e>(&'a EvalRequest, &'a mut (dyn FnMut(u8, &Evaluation) + 'e));
    impl BackendTask for Task<'_, '_> {
        type Output = BTreeMap<u8, Evaluation>;
        fn run<A: AutodiffBackend>(self, engine: Engine<A>) -> anyhow::Result<Self::Output> {
            evaluate_run_on::<A::InnerBackend>(self.0, self.1, &engine.device)
        }
    }
    crate::engine::dispatch(request.device, Default::default(), Task(request, each))
}

/// [`evaluate_run`] on the backend `B`.
fn evaluate_run_on<B: Backend>(
    request: &EvalRequest,
    each: &mut dyn FnMut(u8, &Evaluation),
    device: &B::Device,
) -> anyhow::Result<BTreeMap<u8, Evaluation>> {
    let (model, card) = load_model::<B>(&request.run, device)?;
    let run_dir = if RunDir::new(&request.run).model_dir().exists() {
        RunDir::new(&request.run)
    } else {
        RunDir::new(request.run.parent().map(Path::to_path_buf).unwrap_or_default())
    };
    let manifest = match &request.data {
        Some(m) => m.clone(),
        None => match std::fs::read_to_string(run_dir.config()) {
            Ok(text) => {
                let resolved: ExperimentConfig =
                    toml::from_str(&text).with_context(|| format!("{}", run_dir.config().display()))?;
                resolved.data.manifest
            }
            Err(_) => anyhow::bail!("{} has no config.toml; pass --data <manifest>", run_dir.path().display()),
        },
    };
    let subjects = match &request.subjects {
        Some(s) => s.clone(),
        None => match read_report(run_dir.path())? {
            Some(r) => r.evaluation.keys().copied().collect(),
            None => card.subjects.clone(),
        },
    };
    let dataset = Dataset::open(&manifest)?;
    let (tests, targets) = crate::inputs::load_tests(&dataset, &card.subjects, &subjects)?;
    let options = EvalOptions {
        ways: request.ways,
        loops: request.loops,
        seed: request.seed,
        prior_steps: (request.prior_steps > 0).then_some(request.prior_steps),
        ..EvalOptions::default()
    };
    let mut all = BTreeMap::new();
    for (&subject, test) in &tests {
        let e = evaluate(&model, test, &targets, &options);
        each(subject, &e);
        all.insert(subject, e);
    }
    if let Some(path) = &request.json {
        let keyed: BTreeMap<String, &Evaluation> =
            all.iter().map(|(s, e)| (voxbridge_config::subject_key(*s), e)).collect();
        std::fs::write(path, serde_json::to_string_pretty(&keyed)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(all)
}
