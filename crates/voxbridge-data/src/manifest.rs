//! The manifest: one TOML file that lists every shard of a dataset with its checksum, size, row
//! counts and place (subject, session), plus how the data was made. A dataset is complete only
//! once its manifest exists; writers put it last.

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::schema::{SCHEMA_VERSION, TargetShapes};
use crate::storage::{Storage, location_url};

/// The file name a dataset's own copy of its manifest has under its root.
pub const MANIFEST_FILE: &str = "manifest.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub schema_version: u32,
    /// Where the files are. Absent: the directory holding the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// How the voxels were normalised, in words.
    pub normalisation: String,
    pub trials_per_session: usize,
    pub generator: Generator,
    pub targets: TargetsInfo,
    pub subjects: Vec<SubjectInfo>,
    pub files: Vec<FileEntry>,
    /// Ideal-decoder retrieval, when the generator knows the ground truth (`--oracle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oracle: Option<toml::Table>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generator {
    /// `voxbridge-sim` or `import-nsd`.
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Every parameter of the generator, so the dataset can be made again.
    #[serde(default)]
    pub params: toml::Table,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetsInfo {
    #[serde(flatten)]
    pub shapes: TargetShapes,
    pub images: usize,
    pub test_images: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectInfo {
    /// 1-based NSD subject.
    pub subject: u8,
    pub voxels: usize,
    pub sessions: u16,
    pub trials: usize,
    pub test_images: usize,
    /// Trials of the source the import dropped (`import-nsd --allow-missing-trials`: betas rows
    /// without a behaviour row); absent when none were.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub missing_trials: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    Trials,
    Targets,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative to the root, `/`-separated.
    pub path: String,
    pub kind: FileKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u16>,
    pub bytes: u64,
    pub sha256: String,
    pub rows: u64,
    /// Rows in each row group, in order.
    pub row_groups: Vec<u64>,
}

impl Manifest {
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a manifest always serialises")
    }

    /// Parses and checks a manifest's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| DataError::Manifest {
            file: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        manifest.check(origin)?;
        Ok(manifest)
    }

    fn check(&self, origin: &str) -> Result<()> {
        let fail = |message: String| Err(DataError::Manifest { file: origin.to_string(), message });
        if self.schema_version != SCHEMA_VERSION {
            return fail(format!(
                "schema_version {} is not supported (this voxbridge reads version {SCHEMA_VERSION})",
                self.schema_version
            ));
        }
        if let Some(problem) = self.targets.shapes.teacher_problem() {
            return fail(format!("[targets]: {problem}"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, f) in self.files.iter().enumerate() {
            if !seen.insert(f.path.as_str()) {
                return fail(format!("files[{i}]: path `{}` is listed twice", f.path));
            }
            if f.path.starts_with('/') || f.path.split('/').any(|p| p == "..") {
                return fail(format!("files[{i}]: path `{}` must be relative, without `..`", f.path));
            }
            if f.row_groups.iter().sum::<u64>() != f.rows {
                return fail(format!(
                    "files[{i}] `{}`: row_groups add up to {}, rows = {}",
                    f.path,
                    f.row_groups.iter().sum::<u64>(),
                    f.rows
                ));
            }
            if f.kind == FileKind::Trials {
                let (Some(s), Some(session)) = (f.subject, f.session) else {
                    return fail(format!("files[{i}] `{}`: a trials file needs subject and session", f.path));
                };
                let Some(info) = self.subject(s) else {
                    return fail(format!("files[{i}] `{}`: subject {s} is not in [[subjects]]", f.path));
                };
                if session == 0 || session > info.sessions {
                    return fail(format!(
                        "files[{i}] `{}`: session {session} is outside 1..={} for subject {s}",
                        f.path, info.sessions
                    ));
                }
            }
        }
        self.check_coverage(origin)
    }

    /// Every subject has exactly one trials file per session and the row counts add up, so a
    /// loader can trust `sessions`/`trials` without opening the shards.
    fn check_coverage(&self, origin: &str) -> Result<()> {
        let fail = |message: String| Err(DataError::Manifest { file: origin.to_string(), message });
        let mut subjects_seen = std::collections::HashSet::new();
        for info in &self.subjects {
            let s = info.subject;
            if !subjects_seen.insert(s) {
                return fail(format!("subject {s} is listed twice in [[subjects]]"));
            }
            if info.voxels == 0 || info.sessions == 0 {
                return fail(format!("subject {s}: voxels and sessions must be positive"));
            }
            let mut per_session = vec![0usize; info.sessions as usize];
            let mut rows = 0u64;
            for f in self.files.iter().filter(|f| f.kind == FileKind::Trials && f.subject == Some(s)) {
                let session = f.session.unwrap_or(0) as usize;
                per_session[session - 1] += 1;
                rows += f.rows;
            }
            if let Some(k) = per_session.iter().position(|&n| n != 1) {
                return fail(format!(
                    "subject {s} session {}: {} trials files listed, expected exactly 1",
                    k + 1,
                    per_session[k]
                ));
            }
            if rows != info.trials as u64 {
                return fail(format!("subject {s}: trials files hold {rows} rows, [[subjects]] says {}", info.trials));
            }
        }
        let target_rows: u64 = self.files.iter().filter(|f| f.kind == FileKind::Targets).map(|f| f.rows).sum();
        if target_rows != self.targets.images as u64 {
            return fail(format!(
                "targets files hold {target_rows} rows, [targets] says images = {}",
                self.targets.images
            ));
        }
        if self.targets.test_images > self.targets.images {
            return fail(format!(
                "[targets] test_images = {} exceeds images = {}",
                self.targets.test_images, self.targets.images
            ));
        }
        Ok(())
    }

    pub fn subject(&self, subject: u8) -> Option<&SubjectInfo> {
        self.subjects.iter().find(|s| s.subject == subject)
    }

    /// The trials files of one subject, in session order.
    pub fn trial_files(&self, subject: u8) -> Vec<&FileEntry> {
        let mut files: Vec<_> =
            self.files.iter().filter(|f| f.kind == FileKind::Trials && f.subject == Some(subject)).collect();
        files.sort_by_key(|f| f.session);
        files
    }

    pub fn target_files(&self) -> Vec<&FileEntry> {
        self.files.iter().filter(|f| f.kind == FileKind::Targets).collect()
    }
}

/// A manifest together with the storage its files live in.
#[derive(Debug, Clone)]
pub struct OpenedManifest {
    pub manifest: Manifest,
    /// Where the manifest was read from, for messages.
    pub origin: String,
    pub root: Storage,
}

/// Reads a manifest from a path or URL and opens its root (the manifest's `root`, or the
/// directory holding it).
pub fn open_manifest(location: &str) -> Result<OpenedManifest> {
    let url = location_url(location)?;
    let origin = url.to_string();
    let (dir, name) = match origin.rsplit_once('/') {
        Some((dir, name)) if !name.is_empty() => (dir.to_string(), name.to_string()),
        _ => {
            return Err(DataError::Manifest {
                file: origin.clone(),
                message: "a manifest location must name a file".into(),
            });
        }
    };
    let dir_storage = Storage::open(&dir)?;
    let bytes = dir_storage.get(&name).map_err(|e| match e {
        DataError::Missing { file } => DataError::Manifest { file, message: "not found".into() },
        other => other,
    })?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| DataError::Manifest { file: origin.clone(), message: "not UTF-8 text".into() })?;
    let manifest = Manifest::parse(text, &origin)?;
    let root = match &manifest.root {
        Some(root) => Storage::open(root)?,
        None => dir_storage,
    };
    Ok(OpenedManifest { manifest, origin, root })
}
