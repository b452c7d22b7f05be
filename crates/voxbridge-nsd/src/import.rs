//! One subject's import: every input is read and checked before the first shard is written;
//! trial shards (one per session), then target shards, then the manifest, last. With
//! `append`, the subject is added to a dataset an earlier import wrote: its shards stay, the
//! images it already has keep their shards, and the new manifest (old files + new ones)
//! replaces the old one in a single put at the end, so a failed append leaves it as it was.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use voxbridge_data::manifest::{Generator, SubjectInfo, TargetsInfo};
use voxbridge_data::{Dataset, DatasetWriter, MANIFEST_FILE, Manifest, SCHEMA_VERSION, Storage, TrialRows};

use crate::ImportError;
use crate::behav::{BehavRow, read_tar};
use crate::betas::Betas;
use crate::completeness::{MissingTrials, RowPlace, missing_trials};

/// How the betas are normalised on import (spec §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalisation {
    /// The released "renorm" betas are already z-scored per session: written as they are.
    AsReleased,
    /// Raw betas, z-scored voxel-wise over all trials of each session (the released notebook).
    PerSession,
    /// Raw betas, z-scored with the mean and std of the training (non-shared1000) trials of
    /// all sessions, applied to every trial (the paper).
    TrainSet,
}

impl Normalisation {
    pub fn describe(self) -> &'static str {
        match self {
            Normalisation::AsReleased => {
                "as released: MindEye2's renorm betas, already z-scored voxel-wise per session; not normalised again"
            }
            Normalisation::PerSession => "per-session voxel-wise z-score over all trials of the session (notebook)",
            Normalisation::TrainSet => {
                "voxel-wise z-score with the mean/std of all training (non-shared1000) trials, applied to every trial (paper)"
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub subject: u8,
    pub betas: PathBuf,
    /// `wds/` or `wds/subj0X/`: holds `train/*.tar` and `new_test/0.tar`.
    pub wds: PathBuf,
    pub targets: PathBuf,
    pub out: String,
    /// Expected voxel count (default: the subject's nsdgeneral count).
    pub voxels: Option<usize>,
    pub normalisation: Normalisation,
    pub name: Option<String>,
    /// Images per target shard.
    pub targets_per_file: usize,
    /// Add the subject to the dataset already at `out` (written by an earlier import).
    pub append: bool,
    /// Import the trials the tars hold even when some betas rows have no behaviour row (a
    /// damaged tar); the count dropped is recorded in the manifest. Off: such an import is
    /// refused.
    pub allow_missing_trials: bool,
}

/// The generator name import-nsd writes in manifests (and requires of a dataset it extends).
pub const GENERATOR: &str = "voxbridge data import-nsd";

#[derive(Debug, Clone)]
pub struct ImportSummary {
    pub manifest: Manifest,
    pub trials: usize,
    pub sessions: usize,
    /// Betas rows without a behaviour row, dropped (only with `allow_missing_trials`).
    pub missing: MissingTrials,
}

/// A behaviour row and where it came from.
struct Located {
    row: BehavRow,
    file: String,
    key: String,
}

/// Imports one subject into `options.out`.
pub fn import_subject(options: &ImportOptions) -> Result<ImportSummary, ImportError> {
    let subject = options.subject;
    if !(1..=8).contains(&subject) {
        return Err(ImportError::new("--subject", format!("{subject} is not an NSD subject (1–8)")));
    }
    let out = Storage::open(&options.out).map_err(|e| ImportError::new(&options.out, e.to_string()))?;
    let existing = existing_dataset(&out, options)?;

    // 1. Betas and the subject's voxel count.
    let betas = Betas::open(&options.betas)?;
    let expected = options.voxels.unwrap_or(crate::NSD_VOXELS[usize::from(subject) - 1]);
    if betas.voxels != expected {
        return Err(ImportError::new(
            betas.file(),
            format!(
                "dataset `betas` has {} voxels per row but subject {subject} has {expected}{}",
                betas.voxels,
                if options.voxels.is_some() {
                    " (--voxels)"
                } else {
                    " in nsdgeneral (pass --voxels for another mask)"
                }
            ),
        ));
    }

    // 2. Behaviour rows of every tar, checked against the subject and the betas.
    let rows = behaviour_rows(&wds_dir(&options.wds, subject), subject, &betas)?;
    let missing = missing_trials(
        &rows
            .iter()
            .map(|l| RowPlace { session: l.row.session, global_trial: l.row.global_trial, file: &l.file })
            .collect::<Vec<_>>(),
        betas.rows,
    );
    if !missing.is_empty() {
        if !options.allow_missing_trials {
            return Err(ImportError::new(
                &wds_dir(&options.wds, subject).display().to_string(),
                format!(
                    "{} of the {} trials in {} have no behaviour row: {}. NSD sessions hold every trial, so a \
                     damaged or incomplete tar is likely; nothing was written. Pass --allow-missing-trials to \
                     import the trials that are there (the count dropped is recorded in the manifest)",
                    missing.total(),
                    betas.rows,
                    betas.file(),
                    missing.describe()
                ),
            ));
        }
        tracing::warn!(
            subject,
            dropped = missing.total(),
            "--allow-missing-trials: importing without {} trials: {}",
            missing.total(),
            missing.describe()
        );
    }

    // 3. Targets: every image shown needs one (rows are read only when shards are written).
    let targets = crate::targets::open(&options.targets)?;
    let targets_file = options.targets.display().to_string();
    if let Some(dataset) = &existing {
        let held = dataset.manifest().targets.shapes;
        if held != targets.shapes {
            return Err(ImportError::new(
                &targets_file,
                format!(
                    "targets of shapes {:?} but the dataset at {} holds {:?}",
                    targets.shapes,
                    dataset.opened().origin,
                    held
                ),
            ));
        }
    }
    for l in &rows {
        if !targets.index.contains_key(&l.row.image) {
            return Err(ImportError::new(
                &targets_file,
                format!(
                    "image {} (shown in {} member {}, global trial {}) has no target",
                    l.row.image, l.file, l.key, l.row.global_trial
                ),
            ));
        }
    }

    // 4. Sessions, repeats, normalisation statistics.
    let mut sessions: BTreeMap<u16, Vec<&Located>> = BTreeMap::new();
    for l in &rows {
        sessions.entry(l.row.session).or_default().push(l);
    }
    for trials in sessions.values_mut() {
        trials.sort_by_key(|l| l.row.global_trial);
    }
    let mut seen: HashMap<u32, u8> = HashMap::new();
    let mut repeat_of: HashMap<u32, u8> = HashMap::new();
    let mut by_global: Vec<&Located> = rows.iter().collect();
    by_global.sort_by_key(|l| l.row.global_trial);
    for l in &by_global {
        let n = seen.entry(l.row.image).or_insert(0);
        repeat_of.insert(l.row.global_trial, *n);
        *n = n.saturating_add(1);
    }
    let voxels = betas.voxels;
    let train_stats = match options.normalisation {
        Normalisation::TrainSet => {
            let mut acc = Moments::new(voxels);
            for trials in sessions.values() {
                let (values, at) = session_betas(&betas, trials)?;
                for (l, offset) in trials.iter().zip(at) {
                    if !l.row.shared1000 {
                        acc.add(&values[offset * voxels..(offset + 1) * voxels]);
                    }
                }
            }
            Some(acc.finish())
        }
        _ => None,
    };

    // 5. Trial shards, one per session.
    let mut writer = match &existing {
        Some(dataset) => DatasetWriter::extending(out, dataset.manifest().files.clone()),
        None => DatasetWriter::new(out),
    };
    let mut trials_written = 0;
    let mut per_session = 0;
    for (&session, trials) in &sessions {
        let (values, at) = session_betas(&betas, trials)?;
        let mut voxels_out = Vec::with_capacity(trials.len() * voxels);
        for offset in at {
            voxels_out.extend_from_slice(&values[offset * voxels..(offset + 1) * voxels]);
        }
        match (options.normalisation, &train_stats) {
            (Normalisation::PerSession, _) => {
                let mut acc = Moments::new(voxels);
                voxels_out.chunks_exact(voxels).for_each(|r| acc.add(r));
                acc.finish().apply(&mut voxels_out);
            }
            (Normalisation::TrainSet, Some(stats)) => stats.apply(&mut voxels_out),
            _ => {}
        }
        let rows = TrialRows {
            voxel_count: voxels,
            subject: vec![subject; trials.len()],
            session: vec![session; trials.len()],
            run: trials.iter().map(|l| l.row.run).collect(),
            trial: trials.iter().map(|l| l.row.trial).collect(),
            global_trial: trials.iter().map(|l| l.row.global_trial).collect(),
            image_id: trials.iter().map(|l| l.row.image).collect(),
            is_test: trials.iter().map(|l| l.row.shared1000).collect(),
            repeat: trials.iter().map(|l| repeat_of[&l.row.global_trial]).collect(),
            voxels: voxels_out,
        };
        let path = voxbridge_data::trials_path(subject, session);
        let shown = writer.root().display(&path);
        writer
            .write_trials(&path, subject, session, &rows, 250)
            .map_err(|e| ImportError::new(&shown, e.to_string()))?;
        trials_written += trials.len();
        per_session = per_session.max(trials.len());
    }

    // 6. Target shards: the images shown that the dataset does not hold yet, in image order.
    let test_images: HashSet<u32> = rows.iter().filter(|l| l.row.shared1000).map(|l| l.row.image).collect();
    let shown: HashSet<u32> = rows.iter().map(|l| l.row.image).collect();
    let held = match &existing {
        Some(dataset) => images_held(dataset, &shown, &targets)?,
        None => HashSet::new(),
    };
    let mut images: Vec<u32> = shown.difference(&held).copied().collect();
    images.sort_unstable();
    let first_part = existing.as_ref().map_or(0, |d| next_target_part(d.manifest()));
    for (i, chunk) in images.chunks(options.targets_per_file.max(1)).enumerate() {
        let keyed: Vec<(u32, bool)> = chunk.iter().map(|&i| (i, test_images.contains(&i))).collect();
        let target_rows = targets.select(&keyed)?;
        let path = voxbridge_data::targets_path(first_part + i);
        let shown = writer.root().display(&path);
        writer.write_targets(&path, &target_rows, 256).map_err(|e| ImportError::new(&shown, e.to_string()))?;
    }

    // 7. The manifest, last.
    let mut inputs = toml::Table::new();
    inputs.insert("betas".into(), file_name(&options.betas).into());
    inputs.insert("wds".into(), file_name(&options.wds).into());
    inputs.insert("targets".into(), file_name(&options.targets).into());
    let new_test = images.iter().filter(|i| test_images.contains(i)).count();
    let subject_info = SubjectInfo {
        subject,
        voxels,
        sessions: sessions.len() as u16,
        trials: trials_written,
        test_images: test_images.len(),
        missing_trials: missing.total(),
    };
    let mut manifest = match existing {
        Some(dataset) => {
            let mut manifest = dataset.manifest().clone();
            manifest.targets.images += images.len();
            manifest.targets.test_images += new_test;
            manifest.trials_per_session = manifest.trials_per_session.max(per_session);
            manifest
        }
        None => Manifest {
            name: options.name.clone().unwrap_or_else(|| format!("nsd-subj{subject:02}")),
            schema_version: SCHEMA_VERSION,
            root: None,
            normalisation: options.normalisation.describe().into(),
            trials_per_session: per_session,
            generator: Generator {
                name: GENERATOR.into(),
                version: env!("CARGO_PKG_VERSION").into(),
                preset: None,
                seed: None,
                params: toml::Table::new(),
            },
            targets: TargetsInfo { shapes: targets.shapes, images: images.len(), test_images: new_test },
            subjects: Vec::new(),
            files: Vec::new(),
            oracle: None,
        },
    };
    if let Some(name) = &options.name {
        manifest.name = name.clone();
    }
    // Each subject's inputs, so the dataset can be made again.
    manifest.generator.params.insert(format!("subj{subject:02}"), inputs.into());
    manifest.subjects.push(subject_info);
    manifest.subjects.sort_by_key(|s| s.subject);
    let manifest = writer.finish(manifest).map_err(|e| ImportError::new(&options.out, e.to_string()))?;
    Ok(ImportSummary { manifest, trials: trials_written, sessions: sessions.len(), missing })
}

/// The dataset already at `out`, when there is one and `--append` asks to extend it; every
/// reason it cannot take this subject is an error naming its manifest.
fn existing_dataset(out: &Storage, options: &ImportOptions) -> Result<Option<Dataset>, ImportError> {
    let manifest_at = out.display(MANIFEST_FILE);
    if !out.exists(MANIFEST_FILE).map_err(|e| ImportError::new(&options.out, e.to_string()))? {
        return Ok(None);
    }
    let subject = options.subject;
    if !options.append {
        return Err(ImportError::new(
            &manifest_at,
            format!("already holds a dataset; pass --append to add subject {subject} to it, or choose another --out"),
        ));
    }
    let dataset = Dataset::open(&manifest_at).map_err(|e| ImportError::new(&manifest_at, e.to_string()))?;
    let manifest = dataset.manifest();
    let refuse = |message: String| Err(ImportError::new(&manifest_at, message));
    if manifest.generator.name != GENERATOR {
        return refuse(format!(
            "was written by `{}`; --append extends datasets of `{GENERATOR}` only",
            manifest.generator.name
        ));
    }
    if let Some(root) = &manifest.root {
        return refuse(format!("its files live under root = {root:?}; --append writes beside the manifest only"));
    }
    if manifest.subject(subject).is_some() {
        return refuse(format!("already holds subject {subject}"));
    }
    let wanted = options.normalisation.describe();
    if manifest.normalisation != wanted {
        return refuse(format!(
            "holds betas normalised as \"{}\"; this import would be \"{wanted}\" (--normalisation)",
            manifest.normalisation
        ));
    }
    Ok(Some(dataset))
}

/// The images of `shown` the dataset already holds; each must have the same target in the
/// file being imported (targets from another model or preprocessing would mix silently).
fn images_held(
    dataset: &Dataset,
    shown: &HashSet<u32>,
    targets: &crate::targets::Targets,
) -> Result<HashSet<u32>, ImportError> {
    let origin = &dataset.opened().origin;
    let held = dataset.load_targets_held(Some(shown)).map_err(|e| ImportError::new(origin, e.to_string()))?;
    let rows = &held.rows;
    let keyed: Vec<(u32, bool)> = rows.image_id.iter().zip(&rows.is_test).map(|(&i, &t)| (i, t)).collect();
    let imported = targets.select(&keyed)?;
    let (c, l, p) = (rows.shapes.clip_len(), rows.shapes.lowlevel_len(), rows.shapes.captions_len());
    for (r, image) in rows.image_id.iter().enumerate() {
        let same = |a: &[f32], b: &[f32], n: usize| a[r * n..(r + 1) * n] == b[r * n..(r + 1) * n];
        if !(same(&rows.clip_tokens, &imported.clip_tokens, c)
            && same(&rows.lowlevel, &imported.lowlevel, l)
            && same(&rows.captions, &imported.captions, p)
            && same(&rows.teacher, &imported.teacher, rows.shapes.teacher_len())
            && same(&rows.teacher_aug, &imported.teacher_aug, rows.shapes.teacher_aug_len()))
        {
            return Err(ImportError::new(
                &targets.file,
                format!(
                    "image {image}: its target differs from the one {origin} already holds \
                     (targets computed with another model or preprocessing?)"
                ),
            ));
        }
    }
    Ok(rows.image_id.iter().copied().collect())
}

/// The first `targets/part-NNNNN.parquet` number after those a manifest lists.
fn next_target_part(manifest: &Manifest) -> usize {
    manifest
        .target_files()
        .iter()
        .filter_map(|f| f.path.strip_prefix("targets/part-")?.strip_suffix(".parquet")?.parse::<usize>().ok())
        .map(|n| n + 1)
        .max()
        .unwrap_or(0)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// `wds/subj0X` when `dir` is the release's `wds/`, else `dir` itself.
fn wds_dir(dir: &Path, subject: u8) -> PathBuf {
    let nested = dir.join(format!("subj{subject:02}"));
    if nested.is_dir() { nested } else { dir.to_path_buf() }
}

/// Every behaviour row of `train/*.tar` (in session-number order) and `new_test/0.tar`.
fn behaviour_rows(dir: &Path, subject: u8, betas: &Betas) -> Result<Vec<Located>, ImportError> {
    let dir_name = dir.display().to_string();
    let train = dir.join("train");
    let mut tars: Vec<(u64, PathBuf)> = std::fs::read_dir(&train)
        .map_err(|e| ImportError::new(&train.display().to_string(), format!("cannot list the training tars: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .filter_map(|p| Some((p.file_stem()?.to_str()?.parse::<u64>().ok()?, p)))
        .collect();
    tars.sort();
    if tars.is_empty() {
        return Err(ImportError::new(&train.display().to_string(), "no `<session>.tar` files"));
    }
    let test = dir.join("new_test").join("0.tar");
    if !test.is_file() {
        return Err(ImportError::new(&dir_name, "no new_test/0.tar (the shared1000 test trials)"));
    }
    let mut rows = Vec::new();
    let mut seen: HashMap<u32, String> = HashMap::new();
    for path in tars.into_iter().map(|(_, p)| p).chain([test]) {
        let file = path.display().to_string();
        for (key, row) in read_tar(&path)? {
            let at = |message: String| ImportError::new(&file, format!("member {key}.behav.npy: {message}"));
            if row.subject != subject {
                return Err(at(format!("subject {} (importing subject {subject})", row.subject)));
            }
            if row.global_trial as usize >= betas.rows {
                return Err(at(format!(
                    "global trial {} points past the betas ({} has {} rows)",
                    row.global_trial,
                    betas.file(),
                    betas.rows
                )));
            }
            if let Some(other) = seen.insert(row.global_trial, format!("{file} member {key}")) {
                return Err(at(format!("global trial {} is also {other}", row.global_trial)));
            }
            rows.push(Located { row, file: file.clone(), key });
        }
    }
    Ok(rows)
}

/// The betas of a session's trials: one contiguous read from the first to the last global
/// trial, and each trial's row in it.
fn session_betas(betas: &Betas, trials: &[&Located]) -> Result<(Vec<f32>, Vec<usize>), ImportError> {
    let first = trials.iter().map(|l| l.row.global_trial as usize).min().unwrap_or(0);
    let last = trials.iter().map(|l| l.row.global_trial as usize).max().unwrap_or(0);
    let values = betas.read_rows(first..last + 1)?;
    Ok((values, trials.iter().map(|l| l.row.global_trial as usize - first).collect()))
}

/// Voxel-wise mean and variance (Welford, in f64).
struct Moments {
    n: f64,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

/// Voxel-wise mean and std.
struct Stats {
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Moments {
    fn new(voxels: usize) -> Self {
        Moments { n: 0.0, mean: vec![0.0; voxels], m2: vec![0.0; voxels] }
    }

    fn add(&mut self, row: &[f32]) {
        self.n += 1.0;
        for ((m, s), &x) in self.mean.iter_mut().zip(&mut self.m2).zip(row) {
            let d = f64::from(x) - *m;
            *m += d / self.n;
            *s += d * (f64::from(x) - *m);
        }
    }

    /// Population std (as `StandardScaler`); a constant voxel keeps std 1.
    fn finish(self) -> Stats {
        let n = self.n.max(1.0);
        let std = self.m2.iter().map(|s| (s / n).sqrt()).map(|s| if s > 0.0 { s as f32 } else { 1.0 }).collect();
        Stats { mean: self.mean.iter().map(|&m| m as f32).collect(), std }
    }
}

impl Stats {
    fn apply(&self, rows: &mut [f32]) {
        for row in rows.chunks_exact_mut(self.mean.len()) {
            for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *x = (*x - m) / s;
            }
        }
    }
}
