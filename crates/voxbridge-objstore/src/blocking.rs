//! [`BlockingStore`]: an `object_store` store with blocking calls, for the synchronous code that
//! reads and writes datasets and checkpoints. Each handle runs the store's futures on a small
//! runtime of its own, so its calls must not be made from inside an async task. Errors are the
//! store's own; callers name the object in their error types.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, PutOptions, PutPayload, PutResult, Result, WriteMultipart,
};

/// How [`BlockingStore::put`] uploads a whole object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upload {
    /// Objects up to this many bytes go out in a single PUT; larger ones as a multipart upload
    /// (S3 refuses single PUTs above 5 GiB).
    pub single_put_max: usize,
    /// Bytes of every part but the last (S3 wants at least 5 MiB).
    pub part_size: usize,
    /// Parts uploading at once before the next one waits (`usize::MAX`: no limit).
    pub parts_in_flight: usize,
}

/// A store and the runtime its calls block on.
#[derive(Clone)]
pub struct BlockingStore {
    store: Arc<dyn ObjectStore>,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for BlockingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlockingStore({})", self.store)
    }
}

impl BlockingStore {
    /// Wraps `store`, starting the runtime its calls run on.
    pub fn new(store: Arc<dyn ObjectStore>) -> std::result::Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start IO runtime: {e}"))?;
        Ok(Self { store, runtime: Arc::new(runtime) })
    }

    /// Writes a whole object as `upload` says. Each store makes it visible only once complete
    /// (local: temporary file + rename; S3/GCS: a single PUT or a completed multipart upload);
    /// a multipart upload that fails while waiting for capacity is aborted, so no part is left.
    pub fn put(&self, path: &Path, content: Bytes, upload: Upload) -> Result<()> {
        self.runtime.block_on(async {
            if content.len() <= upload.single_put_max {
                self.store.put(path, PutPayload::from(content)).await?;
                return Ok(());
            }
            let part_size = upload.part_size.max(1);
            let mut writer = WriteMultipart::new_with_chunk_size(self.store.put_multipart(path).await?, part_size);
            for start in (0..content.len()).step_by(part_size) {
                if let Err(e) = writer.wait_for_capacity(upload.parts_in_flight).await {
                    let _ = writer.abort().await;
                    return Err(e);
                }
                writer.put(content.slice(start..(start + part_size).min(content.len())));
            }
            writer.finish().await?;
            Ok(())
        })
    }

    /// One PUT with `options` (e.g. `PutMode::Create`: only when no object is there).
    pub fn put_opts(&self, path: &Path, content: Bytes, options: PutOptions) -> Result<PutResult> {
        self.runtime.block_on(self.store.put_opts(path, PutPayload::from(content), options))
    }

    /// A whole object; a missing one is `object_store::Error::NotFound`.
    pub fn get(&self, path: &Path) -> Result<Bytes> {
        self.runtime.block_on(async { self.store.get(path).await?.bytes().await })
    }

    /// An object's metadata (its size); a missing one is `object_store::Error::NotFound`.
    pub fn head(&self, path: &Path) -> Result<ObjectMeta> {
        self.runtime.block_on(self.store.head(path))
    }

    /// Every object under `prefix` (the whole store with none), in the store's order.
    pub fn list(&self, prefix: Option<&Path>) -> Result<Vec<ObjectMeta>> {
        self.runtime.block_on(self.store.list(prefix).try_collect())
    }

    /// Deletes an object; a missing one is `object_store::Error::NotFound` on some stores.
    pub fn delete(&self, path: &Path) -> Result<()> {
        self.runtime.block_on(self.store.delete(path))
    }
}

#[cfg(test)]
mod tests {
    use object_store::PutMode;
    use object_store::memory::InMemory;

    use super::*;

    fn memory() -> BlockingStore {
        BlockingStore::new(Arc::new(InMemory::new())).unwrap()
    }

    #[test]
    fn small_and_multipart_objects_read_back_whole() {
        let store = memory();
        let upload = Upload { single_put_max: 1000, part_size: 1000, parts_in_flight: 2 };
        store.put(&Path::from("a/small"), Bytes::from_static(b"tiny"), upload).unwrap();
        let big: Vec<u8> = (0..10_500u32).map(|i| (i % 251) as u8).collect();
        store.put(&Path::from("a/big"), Bytes::from(big.clone()), upload).unwrap();
        let unlimited = Upload { parts_in_flight: usize::MAX, ..upload };
        store.put(&Path::from("a/big2"), Bytes::from(big.clone()), unlimited).unwrap();
        assert_eq!(store.get(&Path::from("a/small")).unwrap().as_ref(), b"tiny");
        assert_eq!(store.get(&Path::from("a/big")).unwrap().as_ref(), big.as_slice());
        assert_eq!(store.get(&Path::from("a/big2")).unwrap().as_ref(), big.as_slice());
        assert_eq!(store.head(&Path::from("a/big")).unwrap().size, 10_500);
        let mut names: Vec<String> =
            store.list(Some(&Path::from("a"))).unwrap().into_iter().map(|m| m.location.to_string()).collect();
        names.sort();
        assert_eq!(names, ["a/big", "a/big2", "a/small"]);
    }

    #[test]
    fn missing_objects_and_create_clashes_are_the_stores_errors() {
        let store = memory();
        let path = Path::from("x/COMMIT");
        assert!(matches!(store.get(&path), Err(object_store::Error::NotFound { .. })));
        assert!(matches!(store.head(&path), Err(object_store::Error::NotFound { .. })));
        let create = || PutOptions { mode: PutMode::Create, ..Default::default() };
        store.put_opts(&path, Bytes::from_static(b"1"), create()).unwrap();
        let again = store.put_opts(&path, Bytes::from_static(b"2"), create());
        assert!(matches!(again, Err(object_store::Error::AlreadyExists { .. })), "{again:?}");
        store.delete(&path).unwrap();
        assert!(store.list(None).unwrap().is_empty());
    }
}
