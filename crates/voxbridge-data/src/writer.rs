//! Writes a dataset: shards first, the manifest last, so a dataset without its manifest is
//! incomplete by construction and nothing reads it.

use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::manifest::{FileEntry, FileKind, MANIFEST_FILE, Manifest};
use crate::shard::{EncodedShard, TargetRows, TrialRows, encode_targets, encode_trials};
use crate::storage::Storage;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Collects the file entries of a dataset while its shards are written.
#[derive(Debug)]
pub struct DatasetWriter {
    root: Storage,
    files: Vec<FileEntry>,
}

impl DatasetWriter {
    pub fn new(root: Storage) -> Self {
        Self { root, files: Vec::new() }
    }

    /// A writer that adds to a dataset whose manifest lists `files` (they stay listed; the
    /// new manifest replaces the old one only in `finish`).
    pub fn extending(root: Storage, files: Vec<FileEntry>) -> Self {
        Self { root, files }
    }

    pub fn root(&self) -> &Storage {
        &self.root
    }

    fn store(
        &mut self,
        path: &str,
        kind: FileKind,
        subject: Option<u8>,
        session: Option<u16>,
        shard: EncodedShard,
    ) -> Result<&FileEntry> {
        let entry = FileEntry {
            path: path.to_string(),
            kind,
            subject,
            session,
            bytes: shard.bytes.len() as u64,
            sha256: sha256_hex(&shard.bytes),
            rows: shard.rows,
            row_groups: shard.row_groups,
        };
        self.root.put(path, shard.bytes)?;
        self.files.push(entry);
        Ok(self.files.last().expect("just pushed"))
    }

    /// Writes one subject's session of trials.
    pub fn write_trials(
        &mut self,
        path: &str,
        subject: u8,
        session: u16,
        rows: &TrialRows,
        rows_per_group: usize,
    ) -> Result<&FileEntry> {
        let shard = encode_trials(rows, rows_per_group);
        self.store(path, FileKind::Trials, Some(subject), Some(session), shard)
    }

    pub fn write_targets(&mut self, path: &str, rows: &TargetRows, rows_per_group: usize) -> Result<&FileEntry> {
        let shard = encode_targets(rows, rows_per_group);
        self.store(path, FileKind::Targets, None, None, shard)
    }

    /// Fills in the file list and writes `manifest.toml` under the root, last.
    pub fn finish(self, mut manifest: Manifest) -> Result<Manifest> {
        manifest.files = self.files;
        manifest.root = None;
        self.root.put(MANIFEST_FILE, manifest.to_toml().into())?;
        Ok(manifest)
    }
}
