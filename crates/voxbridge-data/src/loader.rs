//! The loader training and evaluation use: open a manifest (path or URL), pick subjects and each
//! subject's first N sessions, split train/test, average test repeats, look targets up by image.
//! Every byte is checked against the manifest before it is decoded.
//!
//! Split: training trials are the non-test trials of the chosen sessions; test trials are the
//! shared-test trials of **all** the subject's sessions, as MindEye2 evaluates every model on the
//! full `new_test` set whatever number of training sessions it used.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::error::{DataError, Result};
use crate::manifest::{Manifest, OpenedManifest, open_manifest};
use crate::shard::{TargetRows, TrialRows, decode_targets, decode_trials};
use crate::verify::fetch_verified;

/// Which sessions of a subject to train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sessions {
    All,
    /// The first N sessions in chronological order (N = 1 is MindEye2's "1 hour").
    First(u16),
}

/// One subject's trials, split.
#[derive(Debug, Clone)]
pub struct SubjectTrials {
    pub subject: u8,
    pub voxel_count: usize,
    /// Sessions the training trials come from.
    pub sessions_used: Vec<u16>,
    /// Single trials, never averaged (MindEye2 trains on single trials).
    pub train: TrialRows,
    /// Single trials of the shared test images, from every session.
    pub test: TrialRows,
}

/// Test trials averaged over repeats: one row per image, ordered by image id.
#[derive(Debug, Clone, PartialEq)]
pub struct AveragedTrials {
    pub voxel_count: usize,
    pub image_id: Vec<u32>,
    /// How many single trials went into each row.
    pub repeats: Vec<u8>,
    /// `[images, voxel_count]`.
    pub voxels: Vec<f32>,
}

impl AveragedTrials {
    pub fn voxels_of(&self, row: usize) -> &[f32] {
        &self.voxels[row * self.voxel_count..(row + 1) * self.voxel_count]
    }
}

/// Averages the rows of each image (in f64, then rounded once).
pub fn average_repeats(trials: &TrialRows) -> AveragedTrials {
    let v = trials.voxel_count;
    let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (row, &image) in trials.image_id.iter().enumerate() {
        groups.entry(image).or_default().push(row);
    }
    let mut out = AveragedTrials {
        voxel_count: v,
        image_id: Vec::new(),
        repeats: Vec::new(),
        voxels: Vec::with_capacity(groups.len() * v),
    };
    let mut acc = vec![0f64; v];
    for (image, rows) in groups {
        acc.iter_mut().for_each(|a| *a = 0.0);
        for &r in &rows {
            for (a, &x) in acc.iter_mut().zip(trials.voxels_of(r)) {
                *a += x as f64;
            }
        }
        let n = rows.len() as f64;
        out.voxels.extend(acc.iter().map(|a| (a / n) as f32));
        out.image_id.push(image);
        out.repeats.push(rows.len().min(u8::MAX as usize) as u8);
    }
    out
}

/// Per-image targets with an index by image id.
#[derive(Debug, Clone)]
pub struct Targets {
    pub rows: TargetRows,
    index: HashMap<u32, usize>,
}

impl Targets {
    pub fn row(&self, image_id: u32) -> Option<usize> {
        self.index.get(&image_id).copied()
    }

    pub fn clip(&self, row: usize) -> &[f32] {
        let n = self.rows.shapes.clip_len();
        &self.rows.clip_tokens[row * n..(row + 1) * n]
    }

    pub fn lowlevel(&self, row: usize) -> &[f32] {
        let n = self.rows.shapes.lowlevel_len();
        &self.rows.lowlevel[row * n..(row + 1) * n]
    }

    pub fn captions(&self, row: usize) -> &[f32] {
        let n = self.rows.shapes.captions_len();
        &self.rows.captions[row * n..(row + 1) * n]
    }

    /// The clean-image teacher features of `row`, `[positions·width]` (empty without them).
    pub fn teacher(&self, row: usize) -> &[f32] {
        let n = self.rows.shapes.teacher_len();
        &self.rows.teacher[row * n..(row + 1) * n]
    }

    /// The augmented teacher views of `row`, `[augs·positions·width]` (empty without them).
    pub fn teacher_aug(&self, row: usize) -> &[f32] {
        let n = self.rows.shapes.teacher_aug_len();
        &self.rows.teacher_aug[row * n..(row + 1) * n]
    }

    /// Gathers the CLIP targets of `images`, `[images, tokens·dim]`; unknown ids are an error.
    pub fn gather_clip(&self, images: &[u32]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(images.len() * self.rows.shapes.clip_len());
        for &image in images {
            let row = self.row(image).ok_or_else(|| DataError::Selection(format!("image {image} has no target")))?;
            out.extend_from_slice(self.clip(row));
        }
        Ok(out)
    }
}

/// An opened dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    opened: OpenedManifest,
}

impl Dataset {
    pub fn open(manifest_location: &str) -> Result<Self> {
        Ok(Self { opened: open_manifest(manifest_location)? })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.opened.manifest
    }

    pub fn opened(&self) -> &OpenedManifest {
        &self.opened
    }

    /// What [`Dataset::load_subject`] would load, from the manifest alone (no file is read):
    /// the subject's voxel count and the sessions its training trials would come from.
    pub fn plan_subject(&self, subject: u8, sessions: Sessions) -> Result<(usize, Vec<u16>)> {
        let (info, limit) = self.selection(subject, sessions)?;
        let used = self
            .opened
            .manifest
            .trial_files(subject)
            .iter()
            .map(|f| f.session.unwrap_or_default())
            .filter(|&s| s <= limit)
            .collect();
        Ok((info.voxels, used))
    }

    /// The subject's manifest entry and the last session to train on.
    fn selection(&self, subject: u8, sessions: Sessions) -> Result<(&crate::manifest::SubjectInfo, u16)> {
        let manifest = &self.opened.manifest;
        let info = manifest.subject(subject).ok_or_else(|| {
            let have: Vec<u8> = manifest.subjects.iter().map(|s| s.subject).collect();
            DataError::Selection(format!(
                "subject {subject} is not in {} (it has subjects {have:?})",
                self.opened.origin
            ))
        })?;
        let limit = match sessions {
            Sessions::All => u16::MAX,
            Sessions::First(0) => return Err(DataError::Selection("sessions must be at least 1".into())),
            Sessions::First(n) if n > info.sessions => {
                return Err(DataError::Selection(format!(
                    "subject {subject} has {} sessions; {n} were asked for",
                    info.sessions
                )));
            }
            Sessions::First(n) => n,
        };
        Ok((info, limit))
    }

    /// Loads one subject: training trials of the chosen sessions, test trials of all sessions.
    pub fn load_subject(&self, subject: u8, sessions: Sessions) -> Result<SubjectTrials> {
        let (info, limit) = self.selection(subject, sessions)?;
        let files = self.opened.manifest.trial_files(subject);
        let mut train = TrialRows::new(info.voxels);
        let mut test = TrialRows::new(info.voxels);
        let mut sessions_used = Vec::new();
        for entry in files {
            let session = entry.session.unwrap_or_default();
            let file = self.opened.root.display(&entry.path);
            let bytes = fetch_verified(&self.opened.root, entry)?;
            let (rows, _) = decode_trials(&file, bytes, info.voxels)?;
            if rows.subject.iter().any(|&s| s != subject) || rows.session.iter().any(|&s| s != session) {
                return Err(DataError::Content {
                    file,
                    message: format!("rows do not all belong to subject {subject}, session {session}"),
                });
            }
            if rows.len() as u64 != entry.rows {
                return Err(DataError::Content {
                    file,
                    message: format!("{} rows, the manifest says {}", rows.len(), entry.rows),
                });
            }
            test.extend(rows.filter(|r| rows.is_test[r]));
            if session <= limit {
                sessions_used.push(session);
                train.extend(rows.filter(|r| !rows.is_test[r]));
            }
        }
        Ok(SubjectTrials { subject, voxel_count: info.voxels, sessions_used, train, test })
    }

    /// Loads the targets of `images` (all targets when `None`).
    pub fn load_targets(&self, images: Option<&HashSet<u32>>) -> Result<Targets> {
        let targets = self.load_targets_held(images)?;
        if let Some(missing) = images.and_then(|keep| keep.iter().find(|id| !targets.index.contains_key(id))) {
            return Err(DataError::Selection(format!("image {missing} has no target in {}", self.opened.origin)));
        }
        Ok(targets)
    }

    /// The targets of those of `images` (all when `None`) the dataset holds; an image it
    /// does not hold is left out, not an error (an import adding images asks this).
    pub fn load_targets_held(&self, images: Option<&HashSet<u32>>) -> Result<Targets> {
        let manifest = &self.opened.manifest;
        let mut rows = TargetRows::new(manifest.targets.shapes);
        for entry in manifest.target_files() {
            let file = self.opened.root.display(&entry.path);
            let bytes = fetch_verified(&self.opened.root, entry)?;
            let (part, _) = decode_targets(&file, bytes, &manifest.targets.shapes)?;
            match images {
                None => rows.extend(part),
                Some(keep) => {
                    for r in (0..part.len()).filter(|&r| keep.contains(&part.image_id[r])) {
                        rows.push_row(&part, r);
                    }
                }
            }
        }
        let mut index = HashMap::with_capacity(rows.len());
        for (r, &id) in rows.image_id.iter().enumerate() {
            if index.insert(id, r).is_some() {
                return Err(DataError::Selection(format!("image {id} has two target rows in {}", self.opened.origin)));
            }
        }
        Ok(Targets { rows, index })
    }
}

/// Which target a decoder is fitted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    ClipTokens,
    LowLevel,
    /// The mean of an image's caption embeddings.
    CaptionMean,
}

/// Dense arrays for a decoder: single training trials, repeat-averaged test images.
#[derive(Debug, Clone)]
pub struct DecodingArrays {
    pub inputs: usize,
    pub outputs: usize,
    /// `[train_rows, inputs]`, `[train_rows, outputs]`.
    pub train_x: Vec<f32>,
    pub train_y: Vec<f32>,
    /// `[test_images, inputs]`, `[test_images, outputs]`, image ids in `test_images`.
    pub test_x: Vec<f32>,
    pub test_y: Vec<f32>,
    pub test_images: Vec<u32>,
}

impl Targets {
    fn target_of(&self, kind: TargetKind, image: u32) -> Result<Vec<f32>> {
        let row = self.row(image).ok_or_else(|| DataError::Selection(format!("image {image} has no target")))?;
        Ok(match kind {
            TargetKind::ClipTokens => self.clip(row).to_vec(),
            TargetKind::LowLevel => self.lowlevel(row).to_vec(),
            TargetKind::CaptionMean => {
                let [n, dim] = self.rows.shapes.captions;
                let caps = self.captions(row);
                (0..dim).map(|d| (0..n).map(|c| caps[c * dim + d]).sum::<f32>() / n as f32).collect()
            }
        })
    }
}

impl SubjectTrials {
    /// Builds decoder arrays, keeping only the first `voxels` voxels when given (to apply one
    /// subject's decoder to another subject of a different size).
    pub fn decoding_arrays(
        &self,
        targets: &Targets,
        kind: TargetKind,
        voxels: Option<usize>,
    ) -> Result<DecodingArrays> {
        let v = voxels.unwrap_or(self.voxel_count).min(self.voxel_count);
        let take = |row: &[f32]| row[..v].to_vec();
        let mut train_x = Vec::with_capacity(self.train.len() * v);
        let mut train_y = Vec::new();
        for r in 0..self.train.len() {
            train_x.extend(take(self.train.voxels_of(r)));
            train_y.extend(targets.target_of(kind, self.train.image_id[r])?);
        }
        let averaged = average_repeats(&self.test);
        let mut test_x = Vec::with_capacity(averaged.image_id.len() * v);
        let mut test_y = Vec::new();
        for (r, &image) in averaged.image_id.iter().enumerate() {
            test_x.extend(take(averaged.voxels_of(r)));
            test_y.extend(targets.target_of(kind, image)?);
        }
        let outputs = if averaged.image_id.is_empty() { 0 } else { test_y.len() / averaged.image_id.len() };
        Ok(DecodingArrays { inputs: v, outputs, train_x, train_y, test_x, test_y, test_images: averaged.image_id })
    }

    /// The order of the training trials in `epoch`: a pure function of (seed, epoch, subject), so
    /// a resumed or repeated run sees the same batches.
    pub fn train_order(&self, seed: u64, epoch: u64) -> Vec<usize> {
        voxbridge_seed::epoch_order(self.train.len(), seed, epoch, self.subject as u64)
    }

    /// Image ids this subject's trials refer to.
    pub fn image_ids(&self) -> HashSet<u32> {
        self.train.image_id.iter().chain(&self.test.image_id).copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averaging_groups_by_image_in_id_order() {
        let mut t = TrialRows::new(2);
        for (image, v) in [(9u32, [1.0f32, 2.0]), (4, [10.0, 10.0]), (9, [3.0, 4.0]), (9, [5.0, 0.0])] {
            t.subject.push(1);
            t.session.push(1);
            t.run.push(1);
            t.trial.push(1);
            t.global_trial.push(0);
            t.image_id.push(image);
            t.is_test.push(true);
            t.repeat.push(0);
            t.voxels.extend(v);
        }
        let a = average_repeats(&t);
        assert_eq!(a.image_id, vec![4, 9]);
        assert_eq!(a.repeats, vec![1, 3]);
        assert_eq!(a.voxels, vec![10.0, 10.0, 3.0, 2.0]);
    }
}
