//! [`CheckpointStore`]: save (stage, then commit), discover, read with verification, delete.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions};
use sha2::{Digest, Sha256};
use voxbridge_objstore::{BlockingStore, Upload};

use crate::fault::FaultyStore;
use crate::layout::{COMMIT_FILE, COMMIT_FORMAT, CheckpointId, CommitRecord, DAMAGED_FILE, FileRecord};
use crate::{CheckpointError, Result};

/// Files above this size go out as a multipart upload of fixed-size parts.
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
/// Parts in flight at once; with the part being filled, the upload holds at most
/// `(MAX_PARTS_IN_FLIGHT + 1) × part_size` bytes beyond the caller's copy of the file.
pub const MAX_PARTS_IN_FLIGHT: usize = 2;

/// One checkpoint as a listing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointListing {
    pub id: CheckpointId,
    pub committed: bool,
    /// A [`DAMAGED_FILE`] note lies beside the marker: its files failed verification.
    pub damaged: bool,
    /// `(file name, bytes)` of every visible object under the checkpoint's prefix.
    pub objects: Vec<(String, u64)>,
}

impl CheckpointListing {
    pub fn bytes(&self) -> u64 {
        self.objects.iter().map(|(_, b)| b).sum()
    }
}

/// A root location holding a run's checkpoints, with blocking calls (the trainer is synchronous;
/// do not call these from inside an async task).
#[derive(Clone)]
pub struct CheckpointStore {
    store: BlockingStore,
    root: Path,
    url: String,
    part_size: usize,
    /// The root's directory when it is on local disk (empty checkpoint directories are removed
    /// after a delete; object stores have no directories).
    local_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointStore({})", self.url)
    }
}

impl CheckpointStore {
    /// Opens a root given as a local path or a URL (`s3://`, `gs://`, `file://`, `memory://`).
    /// Credentials and endpoints come from the `AWS_*` / `GOOGLE_*` environment variables. Local
    /// directories are written with fsync (file and directory), so a commit is durable when the
    /// call returns. `VOXBRIDGE_FAULT` injects a fault (see [`crate::fault`]).
    pub fn open(location: &str) -> Result<Self> {
        let url = voxbridge_objstore::location_url(location)
            .map_err(|message| CheckpointError::Invalid { location: location.to_string(), message })?;
        let err = |message: String| CheckpointError::Invalid { location: url.to_string(), message };
        let (store, root) = voxbridge_objstore::open(&url).map_err(err)?;
        let store: Arc<dyn ObjectStore> =
            if url.scheme() == "file" { Arc::new(LocalFileSystem::new().with_fsync(true)) } else { Arc::from(store) };
        let store = match FaultyStore::from_env(store.clone()).map_err(err)? {
            Some(faulty) => Arc::new(faulty) as Arc<dyn ObjectStore>,
            None => store,
        };
        let mut opened = Self::with_store(store, root, url.as_str())?;
        if url.scheme() == "file" {
            opened.local_dir = url.to_file_path().ok();
        }
        Ok(opened)
    }

    /// A root on a store built by the caller (tests wrap stores in [`FaultyStore`]).
    pub fn with_store(store: Arc<dyn ObjectStore>, root: Path, url: &str) -> Result<Self> {
        let store = BlockingStore::new(store)
            .map_err(|message| CheckpointError::Invalid { location: url.to_string(), message })?;
        Ok(CheckpointStore {
            store,
            root,
            url: url.trim_end_matches('/').to_string(),
            part_size: DEFAULT_PART_SIZE,
            local_dir: None,
        })
    }

    /// Multipart part size (S3 wants at least 5 MiB for all but the last part).
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(1);
        self
    }

    /// The root URL without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `<root URL>/<checkpoint dir>`, for messages and `--resume <url>`.
    pub fn location(&self, id: CheckpointId) -> String {
        format!("{}/{}", self.url, id.dir_name())
    }

    fn path(&self, id: CheckpointId, file: &str) -> Path {
        self.root.clone().join(id.dir_name()).join(file)
    }

    fn store_err(&self, what: String, operation: &'static str) -> impl Fn(object_store::Error) -> CheckpointError {
        move |source| CheckpointError::Store { location: what.clone(), operation, source }
    }

    /// Every checkpoint under the root, committed or not, oldest first. Objects that are not
    /// inside a `step-…-gen-…` prefix are ignored.
    pub fn list(&self) -> Result<Vec<CheckpointListing>> {
        let root_parts = self.root.parts().count();
        let objects = match self.store.list(Some(&self.root)) {
            Ok(objects) => objects,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(self.store_err(self.url.clone(), "list")(e)),
        };
        let mut by_id: BTreeMap<CheckpointId, CheckpointListing> = BTreeMap::new();
        for meta in objects {
            let parts: Vec<String> = meta.location.parts().skip(root_parts).map(|p| p.as_ref().to_string()).collect();
            let [dir, file] = parts.as_slice() else { continue };
            let Some(id) = CheckpointId::parse(dir) else { continue };
            let entry = by_id.entry(id).or_insert_with(|| CheckpointListing {
                id,
                committed: false,
                damaged: false,
                objects: Vec::new(),
            });
            entry.committed |= file == COMMIT_FILE;
            entry.damaged |= file == DAMAGED_FILE;
            entry.objects.push((file.clone(), meta.size));
        }
        let mut listings: Vec<CheckpointListing> = by_id.into_values().collect();
        for l in &mut listings {
            l.objects.sort();
        }
        Ok(listings)
    }

    /// The newest committed checkpoint (largest step, then generation).
    pub fn latest_committed(&self) -> Result<Option<CheckpointId>> {
        Ok(self.list()?.into_iter().filter(|l| l.committed).map(|l| l.id).max())
    }

    /// One more than the largest generation seen under the root (committed or not), so a new
    /// process never writes into a prefix an earlier process may still be writing.
    pub fn next_generation(&self) -> Result<u32> {
        Ok(self.list()?.iter().map(|l| l.id.generation + 1).max().unwrap_or(0))
    }

    /// Stages `files` under the checkpoint's prefix, then writes the `COMMIT` marker with
    /// `PutMode::Create`. On any error the marker is not written, so the checkpoint does not
    /// exist; a marker already present is [`CheckpointError::AlreadyCommitted`].
    pub fn save(&self, id: CheckpointId, files: &[(&str, Bytes)], metadata: serde_json::Value) -> Result<CommitRecord> {
        let mut records = Vec::with_capacity(files.len());
        for (name, content) in files {
            if *name == COMMIT_FILE || name.contains('/') || name.is_empty() {
                return Err(CheckpointError::Invalid {
                    location: self.location(id),
                    message: format!("`{name}` is not a valid checkpoint file name"),
                });
            }
            self.put_file(id, name, content.clone())?;
            records.push(FileRecord::of(name, content));
        }
        let record = CommitRecord { format: COMMIT_FORMAT, id, files: records, metadata };
        let marker = serde_json::to_vec_pretty(&record).map_err(|e| CheckpointError::Invalid {
            location: self.location(id),
            message: format!("metadata is not serialisable: {e}"),
        })?;
        let path = self.path(id, COMMIT_FILE);
        let what = format!("{}/{COMMIT_FILE}", self.location(id));
        let options = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(&path, Bytes::from(marker), options) {
            Ok(_) => Ok(record),
            Err(object_store::Error::AlreadyExists { .. }) => {
                Err(CheckpointError::AlreadyCommitted { location: self.location(id) })
            }
            Err(e) => Err(self.store_err(what, "commit")(e)),
        }
    }

    /// One staged file: a single put, or fixed-size parts with at most
    /// [`MAX_PARTS_IN_FLIGHT`] in flight (aborted on error, so no partial object is left).
    fn put_file(&self, id: CheckpointId, name: &str, content: Bytes) -> Result<()> {
        let upload =
            Upload { single_put_max: self.part_size, part_size: self.part_size, parts_in_flight: MAX_PARTS_IN_FLIGHT };
        self.store
            .put(&self.path(id, name), content, upload)
            .map_err(self.store_err(format!("{}/{name}", self.location(id)), "write"))
    }

    /// The marker of a committed checkpoint; [`CheckpointError::NotCommitted`] without one.
    pub fn commit_record(&self, id: CheckpointId) -> Result<CommitRecord> {
        let what = format!("{}/{COMMIT_FILE}", self.location(id));
        let bytes = match self.store.get(&self.path(id, COMMIT_FILE)) {
            Ok(bytes) => bytes,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(CheckpointError::NotCommitted { location: self.location(id) });
            }
            Err(e) => return Err(self.store_err(what.clone(), "read")(e)),
        };
        let record: CommitRecord = serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Corrupt {
            location: what.clone(),
            message: format!("not a commit marker: {e}"),
        })?;
        if record.id != id {
            return Err(CheckpointError::Corrupt {
                location: what,
                message: format!("the marker names {} but lies under {}", record.id, id),
            });
        }
        Ok(record)
    }

    /// A file of a committed checkpoint, checked against the marker's size and sha256.
    pub fn read(&self, record: &CommitRecord, name: &str) -> Result<Bytes> {
        let id = record.id;
        let what = format!("{}/{name}", self.location(id));
        let Some(expected) = record.file(name) else {
            return Err(CheckpointError::Corrupt {
                location: what,
                message: format!(
                    "no such file in this checkpoint (it has: {})",
                    record.files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            });
        };
        let bytes = self.store.get(&self.path(id, name)).map_err(self.store_err(what.clone(), "read"))?;
        let sha = hex::encode(Sha256::digest(&bytes));
        if bytes.len() as u64 != expected.bytes || sha != expected.sha256 {
            return Err(CheckpointError::Corrupt {
                location: what,
                message: format!(
                    "{} bytes with sha256 {sha}, but the commit marker records {} bytes with sha256 {}",
                    bytes.len(),
                    expected.bytes,
                    expected.sha256
                ),
            });
        }
        Ok(bytes)
    }

    /// Reads every file of a committed checkpoint and checks it against the marker; the
    /// failures, one per damaged or unreadable file (empty: intact).
    pub fn verify(&self, record: &CommitRecord) -> Vec<CheckpointError> {
        record.files.iter().filter_map(|f| self.read(record, &f.name).err()).collect()
    }

    /// Records beside the marker that this checkpoint is damaged (`why`: the failures). The
    /// checkpoint itself is left as it is, for inspection.
    pub fn mark_damaged(&self, id: CheckpointId, why: &str) -> Result<()> {
        let what = format!("{}/{DAMAGED_FILE}", self.location(id));
        // A single PUT whatever its size: the note is small, and fault injection counts puts.
        self.store
            .put_opts(&self.path(id, DAMAGED_FILE), Bytes::from(format!("{why}\n").into_bytes()), PutOptions::default())
            .map(|_| ())
            .map_err(self.store_err(what, "write"))
    }

    /// Deletes a checkpoint: the marker first (so a half-deleted checkpoint is not committed),
    /// then its other objects.
    pub fn delete(&self, id: CheckpointId) -> Result<()> {
        let listing = self.list()?.into_iter().find(|l| l.id == id);
        let Some(listing) = listing else { return Ok(()) };
        let mut names: Vec<&str> = listing.objects.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_by_key(|n| *n != COMMIT_FILE);
        for name in names {
            match self.store.delete(&self.path(id, name)) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.store_err(format!("{}/{name}", self.location(id)), "delete")(e)),
            }
        }
        if let Some(dir) = &self.local_dir {
            // Only if empty: a file someone put there is not ours to remove.
            let _ = std::fs::remove_dir(dir.join(id.dir_name()));
        }
        Ok(())
    }
}

/// What a user's checkpoint location names.
#[derive(Debug)]
pub enum Located {
    /// A root of checkpoints (resume picks the newest committed one).
    Root(CheckpointStore),
    /// One checkpoint (`…/step-…-gen-…`) under its root.
    One(CheckpointStore, CheckpointId),
}

/// Opens `location` as a checkpoint root, or as one checkpoint when its last segment is a
/// checkpoint directory name.
pub fn locate(location: &str) -> Result<Located> {
    let trimmed = location.trim_end_matches('/');
    if let Some((parent, last)) = trimmed.rsplit_once('/')
        && let Some(id) = CheckpointId::parse(last)
    {
        return Ok(Located::One(CheckpointStore::open(parent)?, id));
    }
    Ok(Located::Root(CheckpointStore::open(trimmed)?))
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    pub(crate) fn memory() -> CheckpointStore {
        CheckpointStore::with_store(Arc::new(InMemory::new()), Path::from("runs/a/checkpoints"), "memory:///runs/a")
            .unwrap()
    }

    fn id(step: u64, generation: u32) -> CheckpointId {
        CheckpointId { step, generation }
    }

    #[test]
    fn save_list_read_round_trip() {
        let store = memory();
        let files = [("model.safetensors", Bytes::from_static(b"weights")), ("state.json", Bytes::from_static(b"{}"))];
        let record = store.save(id(3, 0), &files, serde_json::json!({"loss": 1.5})).unwrap();
        assert_eq!(record.total_bytes(), 9);
        let listing = store.list().unwrap();
        assert_eq!(listing.len(), 1);
        assert!(listing[0].committed);
        assert_eq!(
            listing[0].objects.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["COMMIT", "model.safetensors", "state.json"]
        );
        let again = store.commit_record(id(3, 0)).unwrap();
        assert_eq!(again, record);
        assert_eq!(store.read(&again, "model.safetensors").unwrap(), Bytes::from_static(b"weights"));
        assert_eq!(store.latest_committed().unwrap(), Some(id(3, 0)));
        assert_eq!(store.next_generation().unwrap(), 1);
    }

    #[test]
    fn a_second_commit_of_the_same_checkpoint_is_refused() {
        let store = memory();
        store.save(id(1, 0), &[("a", Bytes::from_static(b"1"))], serde_json::Value::Null).unwrap();
        let err = store.save(id(1, 0), &[("a", Bytes::from_static(b"2"))], serde_json::Value::Null).unwrap_err();
        assert!(matches!(err, CheckpointError::AlreadyCommitted { .. }), "{err}");
    }

    #[test]
    fn staged_files_without_a_marker_are_not_a_checkpoint() {
        let store = memory();
        store.save(id(1, 0), &[("a", Bytes::from_static(b"1"))], serde_json::Value::Null).unwrap();
        store.put_file(id(2, 0), "a", Bytes::from_static(b"2")).unwrap();
        assert_eq!(store.latest_committed().unwrap(), Some(id(1, 0)));
        assert!(!store.list().unwrap()[1].committed);
        let err = store.commit_record(id(2, 0)).unwrap_err();
        assert!(err.to_string().contains("step-000000002-gen-000: not committed"), "{err}");
    }

    #[test]
    fn a_changed_file_fails_its_checksum_naming_it() {
        let store = memory();
        let record = store.save(id(1, 0), &[("a", Bytes::from_static(b"1234"))], serde_json::Value::Null).unwrap();
        store.put_file(id(1, 0), "a", Bytes::from_static(b"1235")).unwrap();
        let err = store.read(&record, "a").unwrap_err().to_string();
        assert!(err.contains("step-000000001-gen-000/a") && err.contains("sha256"), "{err}");
        let err = store.read(&record, "b").unwrap_err().to_string();
        assert!(err.contains("no such file") && err.contains("it has: a"), "{err}");
    }

    #[test]
    fn large_files_go_out_in_parts_and_read_back_whole() {
        let store = memory().with_part_size(1000);
        let big: Vec<u8> = (0..10_500u32).map(|i| (i % 251) as u8).collect();
        let record = store.save(id(5, 1), &[("big", Bytes::from(big.clone()))], serde_json::Value::Null).unwrap();
        assert_eq!(store.read(&record, "big").unwrap().as_ref(), big.as_slice());
    }

    #[test]
    fn delete_removes_the_marker_and_every_file() {
        let store = memory();
        store.save(id(1, 0), &[("a", Bytes::from_static(b"1"))], serde_json::Value::Null).unwrap();
        store.save(id(2, 0), &[("a", Bytes::from_static(b"2"))], serde_json::Value::Null).unwrap();
        store.delete(id(1, 0)).unwrap();
        assert_eq!(store.list().unwrap().iter().map(|l| l.id).collect::<Vec<_>>(), [id(2, 0)]);
        store.delete(id(7, 0)).unwrap();
    }

    #[test]
    fn local_directories_work_through_the_same_api() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ckpts");
        let store = CheckpointStore::open(root.to_str().unwrap()).unwrap();
        assert_eq!(store.list().unwrap(), [], "a missing root has no checkpoints");
        store.save(id(4, 0), &[("a", Bytes::from_static(b"x"))], serde_json::json!({})).unwrap();
        assert!(root.join("step-000000004-gen-000/COMMIT").is_file());
        let Located::One(again, found) = locate(&format!("{}/step-000000004-gen-000/", root.display())).unwrap() else {
            panic!("a checkpoint directory locates one checkpoint")
        };
        assert_eq!(found, id(4, 0));
        assert_eq!(again.read(&again.commit_record(found).unwrap(), "a").unwrap(), Bytes::from_static(b"x"));
        assert!(matches!(locate(root.to_str().unwrap()).unwrap(), Located::Root(_)));
    }
}
