//! From a dataset to the in-memory inputs of training and evaluation: one ridge per training
//! subject (in `data.train_subjects` order), single training trials of the chosen sessions,
//! single test trials of every session, and the CLIP targets by row (with the low-level branch:
//! the VAE latents and, when the dataset has them, the teacher features of its soft contrastive
//! term — without them the term is off, which is logged once).

use std::collections::{BTreeMap, HashSet};

use anyhow::{Context, bail};
use voxbridge_config::{DataConfig, SessionSelection};
use voxbridge_data::{Dataset, Sessions};
use voxbridge_model::MindEye2Config;
use voxbridge_train::{ClipTargets, SubjectSamples, TeacherTargets, TestTrials, TrainData};

/// Everything a run reads.
#[derive(Debug, Clone)]
pub struct ExperimentInputs {
    pub train: TrainData,
    /// Test trials of each evaluation subject, keyed by NSD subject number.
    pub tests: BTreeMap<u8, TestTrials>,
    /// Voxel count of each ridge, in ridge order.
    pub voxels: Vec<usize>,
    /// Sessions each training subject's trials come from.
    pub sessions_used: BTreeMap<u8, Vec<u16>>,
    /// Trials per session in the dataset (for the nominal epoch length).
    pub trials_per_session: usize,
}

impl ExperimentInputs {
    /// Training trials over the subjects loaded.
    pub fn train_trials(&self) -> usize {
        self.train.subjects.iter().map(SubjectSamples::len).sum()
    }
}

/// Which subjects' trials a process loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadScope {
    /// Ridge indices (positions in `data.train_subjects`) whose training trials to load; `None`
    /// loads every training subject.
    pub train: Option<Vec<usize>>,
    /// Load the evaluation subjects' test trials.
    pub tests: bool,
}

impl LoadScope {
    /// Everything: a single process.
    pub fn all() -> Self {
        LoadScope { train: None, tests: true }
    }
}

/// Loads `data` from `dataset` (with the VAE latents and any teacher features when `lowlevel`).
/// Evaluation subjects must be training subjects (they need a ridge). Only the subjects in
/// `scope` are read (a rank of a data-parallel run reads its own); voxel counts and sessions of
/// the others come from the manifest. A scoped load keeps only the targets of the images its trials show.
pub fn load(
    dataset: &Dataset,
    data: &DataConfig,
    lowlevel: bool,
    scope: &LoadScope,
) -> anyhow::Result<ExperimentInputs> {
    for s in &data.eval_subjects {
        if !data.train_subjects.contains(s) {
            bail!(
                "data.eval_subjects: subject {s} is not among data.train_subjects {:?}, so the model has no \
                 ridge for it",
                data.train_subjects
            );
        }
    }
    let sessions = match data.sessions {
        SessionSelection::All => Sessions::All,
        SessionSelection::First(n) => {
            Sessions::First(u16::try_from(n).context("data.sessions: more sessions than any dataset has")?)
        }
    };
    let mut loaded = Vec::new();
    let mut voxels = Vec::new();
    let mut sessions_used = BTreeMap::new();
    for (ridge, &subject) in data.train_subjects.iter().enumerate() {
        let train = scope.train.as_ref().is_none_or(|r| r.contains(&ridge));
        let test = scope.tests && data.eval_subjects.contains(&subject);
        if train || test {
            let trials = dataset.load_subject(subject, sessions)?;
            voxels.push(trials.voxel_count);
            sessions_used.insert(subject, trials.sessions_used.clone());
            loaded.push((ridge, trials, train, test));
        } else {
            let (count, used) = dataset.plan_subject(subject, sessions)?;
            voxels.push(count);
            sessions_used.insert(subject, used);
        }
    }
    let images: Option<HashSet<u32>> = scope.train.is_some().then(|| {
        loaded
            .iter()
            .flat_map(|(_, t, train, test)| {
                let train_ids = if *train { t.train.image_id.as_slice() } else { &[] };
                let test_ids = if *test { t.test.image_id.as_slice() } else { &[] };
                train_ids.iter().chain(test_ids).copied()
            })
            .collect()
    });
    let mut targets = dataset.load_targets(images.as_ref())?;
    let shapes = targets.rows.shapes;
    let [tokens, dim] = shapes.clip_tokens;
    let teacher = match (lowlevel, shapes.teacher) {
        (true, Some([positions, width])) => Some(TeacherTargets {
            positions,
            width,
            augs: shapes.teacher_augs,
            clean: std::mem::take(&mut targets.rows.teacher),
            aug: std::mem::take(&mut targets.rows.teacher_aug),
        }),
        (true, None) => {
            tracing::warn!(
                dataset = %dataset.opened().origin,
                "the dataset has no low-level teacher features: the low-level branch trains its L1 only, \
                 the soft contrastive term is off"
            );
            None
        }
        (false, _) => None,
    };
    let clip = ClipTargets {
        tokens,
        dim,
        values: targets.rows.clip_tokens.clone(),
        lowlevel: lowlevel.then(|| (shapes.lowlevel, targets.rows.lowlevel.clone())),
        teacher,
    };
    let row_of = |image: u32| {
        targets.row(image).with_context(|| format!("image {image} has no target in {}", dataset.opened().origin))
    };

    let mut subjects = Vec::new();
    let mut tests = BTreeMap::new();
    for (ridge, trials, train, test) in loaded {
        let subject = trials.subject;
        if test {
            let test_rows = trials.test.image_id.iter().map(|&i| row_of(i)).collect::<anyhow::Result<Vec<_>>>()?;
            tests.insert(
                subject,
                TestTrials {
                    ridge,
                    voxel_count: trials.voxel_count,
                    voxels: trials.test.voxels.clone(),
                    image_ids: trials.test.image_id.clone(),
                    target_rows: test_rows,
                },
            );
        }
        if train {
            let target_rows = trials.train.image_id.iter().map(|&i| row_of(i)).collect::<anyhow::Result<Vec<_>>>()?;
            subjects.push(SubjectSamples {
                ridge,
                subject,
                voxel_count: trials.voxel_count,
                voxels: trials.train.voxels,
                target_rows,
            });
        }
    }
    let manifest = dataset.manifest();
    let trials_per_session = manifest
        .subjects
        .first()
        .map(|s| {
            let rows: u64 = manifest.trial_files(s.subject).iter().map(|f| f.rows).sum();
            (rows / u64::from(s.sessions.max(1))) as usize
        })
        .unwrap_or(750);
    Ok(ExperimentInputs {
        train: TrainData { subjects, targets: clip },
        tests,
        voxels,
        sessions_used,
        trials_per_session,
    })
}

/// Only what evaluation needs: the test trials of `eval` subjects (each must have a ridge in
/// `ridge_subjects`, the model's subject order) and the CLIP targets.
pub fn load_tests(
    dataset: &Dataset,
    ridge_subjects: &[u8],
    eval: &[u8],
) -> anyhow::Result<(BTreeMap<u8, TestTrials>, ClipTargets)> {
    let targets = dataset.load_targets(None)?;
    let [tokens, dim] = targets.rows.shapes.clip_tokens;
    let mut tests = BTreeMap::new();
    for &subject in eval {
        let ridge = ridge_subjects.iter().position(|&s| s == subject).with_context(|| {
            format!("subject {subject} has no ridge in this model (its subjects are {ridge_subjects:?})")
        })?;
        let trials = dataset.load_subject(subject, Sessions::First(1))?;
        let target_rows = trials
            .test
            .image_id
            .iter()
            .map(|&i| targets.row(i).with_context(|| format!("image {i} has no target")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        tests.insert(
            subject,
            TestTrials {
                ridge,
                voxel_count: trials.voxel_count,
                voxels: trials.test.voxels,
                image_ids: trials.test.image_id,
                target_rows,
            },
        );
    }
    Ok((tests, ClipTargets { tokens, dim, values: targets.rows.clip_tokens, lowlevel: None, teacher: None }))
}

/// A fresh model's maps projector takes the width of the dataset's teacher features (the way
/// its decoder takes the latent's size): 512 for MindEye2's ConvNeXt teacher, smaller for a
/// simulated preset's. Without teacher features (or the branch) nothing changes.
pub fn fit_projector_to_teacher(architecture: &mut MindEye2Config, inputs: &ExperimentInputs) {
    if let (Some(low), Some(teacher)) = (architecture.low_level.as_mut(), &inputs.train.targets.teacher) {
        low.projector_width = teacher.width;
    }
}

/// The model's low-level features must match the teacher's `[positions, width]` (a pretrained
/// or resumed model keeps its own projector).
pub fn check_teacher_fits(architecture: &MindEye2Config, inputs: &ExperimentInputs) -> anyhow::Result<()> {
    if let (Some(low), Some(t)) = (&architecture.low_level, &inputs.train.targets.teacher) {
        let model = [low.map_size * low.map_size, low.projector_width];
        if model != [t.positions, t.width] {
            bail!(
                "the dataset's low-level teacher features are [{}, {}] per image but the model's low-level branch \
                 makes [{}, {}] (its s×s map positions × maps projector width)",
                t.positions,
                t.width,
                model[0],
                model[1]
            );
        }
    }
    Ok(())
}
