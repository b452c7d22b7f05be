//! After training: the whole model gathered on rank 0, its final evaluation, the saved model,
//! the plots and `report.json` (written last: its presence means the run finished).

use std::collections::BTreeMap;

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use voxbridge_collective::Collective;
use voxbridge_config::ExperimentConfig;
use voxbridge_train::distributed::gather_model;
use voxbridge_train::evaluate;

use crate::checkpoint::{self, ModelCard, write_atomically};
use crate::observer::eval_options;
use crate::options::Rank;
use crate::plots;
use crate::prepare::Prepared;
use crate::report::{RunReport, RunSummary};
use crate::training::Trained;

/// Gathers, evaluates and saves the trained model, and writes the report.
pub(crate) fn finish<B: AutodiffBackend>(
    config: &ExperimentConfig,
    rank: &Rank,
    prepared: Prepared,
    trained: Trained<B>,
    train_trials: usize,
    collective: Option<&mut (dyn Collective + '_)>,
) -> anyhow::Result<RunSummary> {
    let Prepared { placement, inputs, plan, .. } = prepared;
    let Trained { mut model, observed, started_at, architecture, init_from } = trained;
    if let Some(c) = collective
        && rank.is_shared()
        && let Some(whole) = gather_model(&model, c, &placement).map_err(anyhow::Error::msg)?
    {
        model = whole; // on rank 0: every subject's ridge, for the evaluation and the saved model
    }
    let train_seconds = started_at.elapsed().as_secs_f64() + observed.resumed_seconds;
    let steps = observed.steps;

    let model = model.valid();
    let options_eval = eval_options(config, true);
    let mut evaluation = BTreeMap::new();
    for (&subject, test) in inputs.tests.iter().filter(|_| rank.is_primary()) {
        let result = evaluate(&model, test, &inputs.train.targets, &options_eval);
        tracing::info!(
            subject,
            image_top1 = result.retrieval.image_top1.mean,
            brain_top1 = result.retrieval.brain_top1.mean,
            "final {}-way retrieval",
            result.retrieval.ways
        );
        evaluation.insert(subject, result);
    }
    let card =
        ModelCard { architecture, subjects: config.data.train_subjects.clone(), run: config.name.clone(), steps };
    if rank.is_primary() {
        checkpoint::save(&rank.dir, &model, &card)?;
    }

    let batch = plan.per_subject * config.data.train_subjects.len();
    let report = RunReport {
        name: config.name.clone(),
        config_hash: config.config_hash(),
        train_subjects: config.data.train_subjects.clone(),
        sessions_used: inputs.sessions_used.clone(),
        train_trials,
        init_from,
        parameters: model.num_params() as u64,
        steps,
        train_seconds,
        ms_per_step: 1e3 * train_seconds / steps.max(1) as f64,
        samples_per_second: (steps as usize * batch) as f64 / train_seconds.max(1e-9),
        final_loss: observed.last_loss,
        plan,
        evaluation,
        epochs: observed.epochs,
    };
    plots::run_plots(&rank.dir, &report, &observed.step_losses)?;
    write_atomically(&rank.dir.report(), serde_json::to_string_pretty(&report)?.as_bytes())?;
    Ok(RunSummary { dir: rank.dir.path().to_path_buf(), report, reused: false })
}
