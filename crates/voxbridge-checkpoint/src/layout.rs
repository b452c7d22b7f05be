//! Names on the store and the `COMMIT` marker's content.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The marker object; written last, with `PutMode::Create`.
pub const COMMIT_FILE: &str = "COMMIT";
/// Written beside `COMMIT` when a committed checkpoint's files failed verification (by
/// `--resume auto`, which then resumes from an older one): says which file and why. A damaged
/// checkpoint is kept for inspection but never resumed from nor counted by retention.
pub const DAMAGED_FILE: &str = "DAMAGED";
/// Version of the marker's JSON layout.
pub const COMMIT_FORMAT: u32 = 1;

/// A checkpoint's identity: the number of optimizer steps taken, and the generation (the count of
/// process starts of the run) that wrote it. Ordered by step, then generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CheckpointId {
    pub step: u64,
    pub generation: u32,
}

impl CheckpointId {
    /// `step-000000123-gen-002`: fixed width, so names sort like ids.
    pub fn dir_name(&self) -> String {
        format!("step-{:09}-gen-{:03}", self.step, self.generation)
    }

    /// The inverse of [`dir_name`](Self::dir_name); `None` for any other name.
    pub fn parse(name: &str) -> Option<Self> {
        let rest = name.strip_prefix("step-")?;
        let (step, generation) = rest.split_once("-gen-")?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(step) || !digits(generation) {
            return None;
        }
        Some(CheckpointId { step: step.parse().ok()?, generation: generation.parse().ok()? })
    }
}

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dir_name())
    }
}

/// One staged file as the marker records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

impl FileRecord {
    pub fn of(name: &str, content: &[u8]) -> Self {
        FileRecord { name: name.to_string(), bytes: content.len() as u64, sha256: hex::encode(Sha256::digest(content)) }
    }
}

/// The `COMMIT` object: the checkpoint's table of contents plus caller metadata (small JSON, for
/// `ckpt ls` without reading the big files). Deterministic: no clocks, so the same state written
/// to two stores gives identical bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitRecord {
    pub format: u32,
    pub id: CheckpointId,
    pub files: Vec<FileRecord>,
    pub metadata: serde_json::Value,
}

impl CommitRecord {
    pub fn file(&self, name: &str) -> Option<&FileRecord> {
        self.files.iter().find(|f| f.name == name)
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_names_round_trip_and_sort_like_ids() {
        let ids = [
            CheckpointId { step: 9, generation: 1 },
            CheckpointId { step: 10, generation: 0 },
            CheckpointId { step: 10, generation: 2 },
        ];
        for id in ids {
            assert_eq!(CheckpointId::parse(&id.dir_name()), Some(id));
        }
        let mut names: Vec<String> = ids.iter().rev().map(CheckpointId::dir_name).collect();
        names.sort();
        assert_eq!(names, ids.iter().map(CheckpointId::dir_name).collect::<Vec<_>>());
    }

    #[test]
    fn other_names_are_not_checkpoints() {
        for name in ["step-1", "step--gen-1", "step-1-gen-", "step-1-gen-x", "latest", "step-1-gen-2#3"] {
            assert_eq!(CheckpointId::parse(name), None, "{name}");
        }
    }
}
