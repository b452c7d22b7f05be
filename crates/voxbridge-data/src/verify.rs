//! `voxbridge data verify`: every file listed in a manifest exists, has the recorded size and
//! sha256, opens as Parquet with the expected schema, and has the recorded row groups. All files
//! are checked; every problem is reported with the file (and row group) it concerns.

use bytes::Bytes;

use crate::error::{DataError, Result};
use crate::manifest::{FileEntry, FileKind, Manifest, OpenedManifest};
use crate::shard::{decode_targets, decode_trials};
use crate::storage::Storage;
use crate::writer::sha256_hex;

/// Reads a listed file and checks its size and checksum before anything decodes it.
pub fn fetch_verified(root: &Storage, entry: &FileEntry) -> Result<Bytes> {
    let file = root.display(&entry.path);
    let bytes = root.get(&entry.path)?;
    if bytes.len() as u64 != entry.bytes {
        return Err(DataError::Size { file, expected: entry.bytes, actual: bytes.len() as u64 });
    }
    let actual = sha256_hex(&bytes);
    if actual != entry.sha256 {
        return Err(DataError::Checksum { file, expected: entry.sha256.clone(), actual });
    }
    Ok(bytes)
}

/// Decodes a verified file and checks its row groups and place against the manifest.
fn check_contents(manifest: &Manifest, file: &str, entry: &FileEntry, bytes: Bytes) -> Result<()> {
    let groups = match entry.kind {
        FileKind::Trials => {
            let subject = entry.subject.unwrap_or_default();
            let voxels = manifest.subject(subject).map(|s| s.voxels).unwrap_or_default();
            let (rows, groups) = decode_trials(file, bytes, voxels)?;
            if let Some(r) = rows.subject.iter().position(|&s| Some(s) != entry.subject) {
                return Err(DataError::Content {
                    file: file.into(),
                    message: format!("row {r} has subject {}, the manifest says {subject}", rows.subject[r]),
                });
            }
            if let Some(r) = rows.session.iter().position(|&s| Some(s) != entry.session) {
                return Err(DataError::Content {
                    file: file.into(),
                    message: format!("row {r} has session {}, the manifest says {:?}", rows.session[r], entry.session),
                });
            }
            groups
        }
        FileKind::Targets => decode_targets(file, bytes, &manifest.targets.shapes)?.1,
    };
    if groups != entry.row_groups {
        let at = groups
            .iter()
            .zip(&entry.row_groups)
            .position(|(a, b)| a != b)
            .unwrap_or(groups.len().min(entry.row_groups.len()));
        return Err(DataError::RowGroup {
            file: file.into(),
            row_group: at,
            message: format!(
                "the file has {} row groups with rows {:?}; the manifest lists {:?}",
                groups.len(),
                groups,
                entry.row_groups
            ),
        });
    }
    Ok(())
}

/// Checks one file completely.
pub fn verify_file(opened: &OpenedManifest, entry: &FileEntry) -> Result<()> {
    let file = opened.root.display(&entry.path);
    let size = opened.root.size(&entry.path)?;
    if size != entry.bytes {
        return Err(DataError::Size { file, expected: entry.bytes, actual: size });
    }
    let bytes = fetch_verified(&opened.root, entry)?;
    check_contents(&opened.manifest, &file, entry, bytes)
}

/// Outcome of verifying a whole dataset.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub files_ok: usize,
    pub bytes_ok: u64,
    pub problems: Vec<DataError>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies every file, calling `progress(done, total)` after each.
pub fn verify(opened: &OpenedManifest, mut progress: impl FnMut(usize, usize)) -> VerifyReport {
    let mut report = VerifyReport::default();
    let total = opened.manifest.files.len();
    for (i, entry) in opened.manifest.files.iter().enumerate() {
        match verify_file(opened, entry) {
            Ok(()) => {
                report.files_ok += 1;
                report.bytes_ok += entry.bytes;
            }
            Err(e) => report.problems.push(e),
        }
        progress(i + 1, total);
    }
    report
}
