//! The demo's three runs on a simulated NSD: pretrain on subjects 2–8, fine-tune subject 1 on its
//! first session from that model, and as the control train subject 1 on the same session from
//! scratch with the same budget (same epochs, batch, steps and schedule).
//!
//! The experiments are written as TOML and read through the normal config path, so each run
//! directory holds a config that `voxbridge train` would accept as it is.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use voxbridge_config::{BackboneKind, ExperimentConfig, parse_experiment};
use voxbridge_train::Evaluation;

use crate::plots::{LinePlot, Series};
use crate::run::{ResumeFrom, RunOptions, RunSummary, run_experiment};

/// The demo's report, beside its runs under `--out`.
pub const DEMO_REPORT: &str = "report.json";
/// The fine-tune against scratch figure, beside the report.
pub const DEMO_PLOT: &str = "finetune_vs_scratch.png";

/// Sizes of the demo; [`DemoPlan::small`] is what `voxbridge demo` runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoPlan {
    pub pretrain_epochs: u32,
    pub pretrain_samples_per_epoch: u32,
    pub pretrain_batch: u32,
    pub finetune_epochs: u32,
    pub finetune_batch: u32,
    pub hidden: u32,
    pub blocks: u32,
    /// `released` (dead MLPs: the shared backbone is linear) or `corrected-residual`.
    pub backbone: BackboneKind,
    pub prior_depth: u32,
    pub prior_dim_head: u32,
    pub eval_every: u32,
}

impl DemoPlan {
    /// Fits in a few minutes on 2 CPU cores with the `small` preset. The backbone is MindEye2's
    /// with the residual MLPs working (`corrected-residual`): as released, the MLP outputs are
    /// dead and the shared backbone is linear, which leaves pretraining little to share on this
    /// simulator (measured gaps over scratch of 9–21 points over three seeds, against 20+ with
    /// the MLPs working; see the README).
    pub fn small() -> Self {
        DemoPlan {
            pretrain_epochs: 10,
            pretrain_samples_per_epoch: 11_200,
            pretrain_batch: 56,
            finetune_epochs: 20,
            finetune_batch: 24,
            hidden: 256,
            blocks: 2,
            backbone: BackboneKind::CorrectedResidual,
            prior_depth: 1,
            prior_dim_head: 32,
            eval_every: 2,
        }
    }

    /// Seconds on the `tiny` preset, for tests.
    pub fn tiny() -> Self {
        DemoPlan {
            pretrain_epochs: 2,
            pretrain_samples_per_epoch: 280,
            pretrain_batch: 14,
            finetune_epochs: 2,
            finetune_batch: 8,
            hidden: 32,
            blocks: 1,
            backbone: BackboneKind::CorrectedResidual,
            prior_depth: 1,
            prior_dim_head: 16,
            eval_every: 1,
        }
    }

    /// The plan for a preset: [`DemoPlan::tiny`] on `tiny`, else [`DemoPlan::small`].
    pub fn for_preset(preset: &str) -> Self {
        if preset == "tiny" { DemoPlan::tiny() } else { DemoPlan::small() }
    }

    /// The three experiments, reading `manifest`, pretraining into `pretrain_dir`.
    pub fn experiments(&self, manifest: &str, pretrain_dir: &Path, seed: u64) -> anyhow::Result<[ExperimentConfig; 3]> {
        let model = format!(
            "[model]\nhidden = {}\nblocks = {}\nbackbone = \"{}\"\nprior_depth = {}\nprior_dim_head = {}\n\
             [eval]\nevery_epochs = {}\n",
            self.hidden,
            self.blocks,
            self.backbone.as_str(),
            self.prior_depth,
            self.prior_dim_head,
            self.eval_every
        );
        let data = |subjects: &str, sessions: &str| {
            format!("[data]\nmanifest = {manifest:?}\ntrain_subjects = {subjects}\nsessions = {sessions}\n")
        };
        let pretrain = format!(
            "name = \"demo-pretrain-subjects2-8\"\n{}[train]\nseed = {seed}\nepochs = {}\nbatch_size = {}\n\
             samples_per_epoch = {}\n{model}",
            data("[2, 3, 4, 5, 6, 7, 8]", "\"all\""),
            self.pretrain_epochs,
            self.pretrain_batch,
            self.pretrain_samples_per_epoch
        );
        let pretrained = pretrain_dir.to_str().context("the output directory must be valid UTF-8")?;
        let finetune = |name: &str, init: &str| {
            format!(
                "name = \"{name}\"\n{}[train]\nseed = {seed}\nepochs = {}\nbatch_size = {}\n{init}{model}",
                data("[1]", "1"),
                self.finetune_epochs,
                self.finetune_batch
            )
        };
        let parse = |text: String, origin: &str| -> anyhow::Result<ExperimentConfig> {
            Ok(parse_experiment(&text, origin)?.validate(origin, Some(&text))?)
        };
        Ok([
            parse(pretrain, "demo pretraining")?,
            parse(
                finetune("demo-finetune-subject1-1session", &format!("init_from = {pretrained:?}\n")),
                "demo fine-tune",
            )?,
            parse(finetune("demo-scratch-subject1-1session", ""), "demo scratch")?,
        ])
    }
}

/// The demo's three finished runs.
#[derive(Debug, Clone)]
pub struct DemoRuns {
    pub pretrain: RunSummary,
    pub finetune: RunSummary,
    pub scratch: RunSummary,
}

impl DemoRuns {
    pub fn finetune_eval(&self) -> Option<&Evaluation> {
        self.finetune.report.evaluation_of(1)
    }

    pub fn scratch_eval(&self) -> Option<&Evaluation> {
        self.scratch.report.evaluation_of(1)
    }
}

/// Runs the three experiments under `out/runs/` and draws `out/finetune_vs_scratch.png`.
pub fn run_demo(
    plan: &DemoPlan,
    manifest: &str,
    out: &Path,
    seed: u64,
    progress: bool,
    compute: crate::options::ComputeChoice,
) -> anyhow::Result<DemoRuns> {
    let runs = out.join("runs");
    let dir = |c: &ExperimentConfig| -> PathBuf { runs.join(&c.name) };
    let pretrain_dir = runs.join("demo-pretrain-subjects2-8");
    let [pre, fine, scratch] = plan.experiments(manifest, &pretrain_dir, seed)?;
    let go = |c: &ExperimentConfig| {
        run_experiment(c, &RunOptions { progress, resume: ResumeFrom::Auto, compute, ..RunOptions::new(dir(c)) })
    };
    let pretrain = go(&pre)?;
    let finetune = go(&fine)?;
    let scratch = go(&scratch)?;
    let curve = |s: &RunSummary| -> Vec<(f64, f64)> {
        s.report.epochs.iter().filter_map(|e| e.image_top1.map(|v| ((e.epoch + 1) as f64, v))).collect()
    };
    let chance = finetune.report.evaluation_of(1).map_or(0.0, |e| e.retrieval.chance);
    LinePlot {
        title: "Subject 1, one session: pretrained on subjects 2-8 vs. from scratch",
        x_label: "fine-tuning epoch",
        y_label: "top-1 image retrieval",
        series: vec![
            Series { label: "pretrained + fine-tuned".into(), points: curve(&finetune), markers: true },
            Series { label: "from scratch".into(), points: curve(&scratch), markers: true },
        ],
        reference: Some(("chance", chance)),
        y_range: Some((0.0, 1.0)),
    }
    .draw(&out.join(DEMO_PLOT))?;
    Ok(DemoRuns { pretrain, finetune, scratch })
}
