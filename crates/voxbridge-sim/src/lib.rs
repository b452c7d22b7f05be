//! The simulated NSD: NSD's layout (subjects, sessions, 750-trial sessions, shared test images
//! seen 3 times, per-session z-scored single-trial betas) with a known ground truth.
//!
//! Generative model, in short (details in [`truth`], [`brain`], [`design`]):
//! image latent z → targets (CLIP tokens, low-level latent, captions, and low-level teacher
//! features with augmented views where the preset has them) by fixed nonlinear maps;
//! z → shared features f(z) → each subject's own random mixing → voxels, plus per-session drift
//! and single-trial noise at a per-voxel noise-ceiling SNR (`small`/`nsd-scale`: ncsnr ~
//! U(0.03, 0.3), 3-repeat noise ceiling 0.3–21%, mean ≈ 8%; `tiny`: U(0.1, 0.6)), part of it
//! representational (correlated along the signal directions, so information-limiting), then
//! per-session voxel-wise z-scoring as in NSD's preprocessing.
//!
//! Pretraining can help a new subject because f is common to all subjects; it cannot make the
//! new subject's mapping free because each subject's mixing is independent.

pub mod brain;
pub mod design;
pub mod oracle;
pub mod rng;
pub mod spec;
pub mod truth;

use std::collections::HashSet;

use thiserror::Error;
use voxbridge_data::manifest::{Generator, SubjectInfo, TargetsInfo};
use voxbridge_data::{DataError, DatasetWriter, Manifest, SCHEMA_VERSION, Storage, TargetRows, TrialRows};

pub use oracle::{OracleReport, SubjectOracle};
pub use spec::SimSpec;

use crate::brain::SubjectBrain;
use crate::design::{Catalogue, subject_design};
use crate::oracle::OracleAccumulator;
use crate::truth::GroundTruth;

pub const NORMALISATION: &str = "per-session voxel-wise z-score over all trials of the session \
    (shared test trials included; population sd), as in MindEye2's released renorm betas; \
    do not normalise again";

#[derive(Debug, Error)]
pub enum SimError {
    #[error("invalid simulation parameters: {0}")]
    Spec(String),
    #[error(transparent)]
    Data(#[from] DataError),
}

#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// Dataset name; default `sim-<preset>-seed<seed>`.
    pub name: Option<String>,
    /// Compute the ideal decoder's retrieval accuracy.
    pub oracle: bool,
}

/// What the simulator reports while it works.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    Session { subject: u8, session: u16, sessions: u16 },
    Targets { written: usize, total: usize },
}

#[derive(Debug)]
pub struct Simulated {
    pub manifest: Manifest,
    pub oracle: Option<OracleReport>,
}

pub fn default_name(spec: &SimSpec, seed: u64) -> String {
    format!("sim-{}-seed{seed}", spec.preset)
}

/// Generates the dataset into `out`, shard by shard (memory is bounded by one shard), and writes
/// its manifest last.
pub fn simulate(
    spec: &SimSpec,
    seed: u64,
    out: Storage,
    options: &SimOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Simulated, SimError> {
    spec.validate().map_err(SimError::Spec)?;
    let truth = GroundTruth::new(spec, seed);
    let catalogue = Catalogue::new(spec, seed);
    let mut writer = DatasetWriter::new(out);
    let mut subjects = Vec::new();
    let mut oracles = Vec::new();

    for (index, subject) in spec.subjects.iter().enumerate() {
        let brain = SubjectBrain::new(spec, subject, &truth, seed);
        let design = subject_design(spec, index, &catalogue, seed);
        let mut oracle = options.oracle.then(|| OracleAccumulator::new(&catalogue.test_ids, subject.voxels));
        for (s, trials) in design.chunks(spec.trials_per_session).enumerate() {
            let session = s as u16 + 1;
            let data = brain.session(spec, trials, session, &truth, seed);
            if let Some(acc) = oracle.as_mut() {
                for (row, response) in &data.test_clean {
                    acc.add(trials[*row].image_id, response);
                }
            }
            let rows = TrialRows {
                voxel_count: subject.voxels,
                subject: vec![subject.subject; trials.len()],
                session: vec![session; trials.len()],
                run: trials.iter().map(|t| t.run).collect(),
                trial: trials.iter().map(|t| t.trial).collect(),
                global_trial: trials.iter().map(|t| t.global_trial).collect(),
                image_id: trials.iter().map(|t| t.image_id).collect(),
                is_test: trials.iter().map(|t| t.is_test).collect(),
                repeat: trials.iter().map(|t| t.repeat).collect(),
                voxels: data.zscored,
            };
            let path = voxbridge_data::trials_path(subject.subject, session);
            writer.write_trials(&path, subject.subject, session, &rows, spec.trial_rows_per_group)?;
            progress(Progress::Session { subject: subject.subject, session, sessions: subject.sessions });
        }
        if let Some(acc) = oracle {
            oracles.push(acc.finish(&brain, &truth, seed ^ subject.subject as u64));
        }
        subjects.push(SubjectInfo {
            subject: subject.subject,
            voxels: subject.voxels,
            sessions: subject.sessions,
            trials: design.len(),
            test_images: catalogue.test_ids.len(),
            missing_trials: 0,
        });
    }

    // Targets, in image-id order, a bounded number of images per file.
    let test: HashSet<u32> = catalogue.test_ids.iter().copied().collect();
    let total = catalogue.total_images;
    for (part, start) in (0..total).step_by(spec.targets_per_file).enumerate() {
        let end = (start + spec.targets_per_file).min(total);
        let mut rows = TargetRows::new(spec.shapes);
        for id in start as u32..end as u32 {
            let z = truth.latent(id);
            rows.image_id.push(id);
            rows.is_test.push(test.contains(&id));
            rows.clip_tokens.extend(truth.clip_tokens(&z));
            rows.lowlevel.extend(truth.lowlevel(&z));
            rows.captions.extend(truth.captions(id, &z));
            rows.teacher.extend(truth.teacher(&z).unwrap_or_default());
            rows.teacher_aug.extend(truth.teacher_aug(id, &z).unwrap_or_default());
        }
        writer.write_targets(&voxbridge_data::targets_path(part), &rows, spec.target_rows_per_group)?;
        progress(Progress::Targets { written: end, total });
    }

    let oracle = options.oracle.then(|| OracleReport::new(oracles));
    let manifest = Manifest {
        name: options.name.clone().unwrap_or_else(|| default_name(spec, seed)),
        schema_version: SCHEMA_VERSION,
        root: None,
        normalisation: NORMALISATION.into(),
        trials_per_session: spec.trials_per_session,
        generator: Generator {
            name: "voxbridge-sim".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            preset: Some(spec.preset.clone()),
            seed: Some(seed),
            params: toml::Table::try_from(spec).map_err(|e| SimError::Spec(e.to_string()))?,
        },
        targets: TargetsInfo { shapes: spec.shapes, images: total, test_images: catalogue.test_ids.len() },
        subjects,
        files: Vec::new(),
        oracle: match &oracle {
            Some(report) => Some(toml::Table::try_from(report).map_err(|e| SimError::Spec(e.to_string()))?),
            None => None,
        },
    };
    let manifest = writer.finish(manifest)?;
    Ok(Simulated { manifest, oracle })
}
