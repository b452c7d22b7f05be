//! Where datasets live: a local directory or an object-store URL (`s3://`, `gs://`, `file://`,
//! `memory://`), all through `object_store`. Credentials and endpoints come from the usual
//! environment variables (`AWS_*`, `GOOGLE_*`), so a moto server or MinIO works by setting
//! `AWS_ENDPOINT` and `AWS_ALLOW_HTTP=true`.
//!
//! The simulator, verifier and loader are synchronous code, so [`Storage`] offers blocking calls
//! (through [`voxbridge_objstore::BlockingStore`], which has its own small runtime). Do not call
//! them from inside an async task.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use url::Url;
use voxbridge_objstore::{BlockingStore, Upload};

use crate::error::{DataError, Result};

/// Objects above 32 MiB are uploaded in 16 MiB parts, so S3's single-PUT limit never applies.
const UPLOAD: Upload = Upload { single_put_max: 32 << 20, part_size: 16 << 20, parts_in_flight: usize::MAX };

/// A root location plus a handle to its store.
#[derive(Clone)]
pub struct Storage {
    store: BlockingStore,
    prefix: Path,
    url: Url,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({})", self.url)
    }
}

/// Turns a user-given location (path or URL) into a URL. Relative paths are made absolute.
pub fn location_url(location: &str) -> Result<Url> {
    voxbridge_objstore::location_url(location)
        .map_err(|message| DataError::Storage { location: location.to_string(), message })
}

impl Storage {
    /// Opens the location as a root directory. Nothing is created until something is written
    /// (local writes create their parent directories).
    pub fn open(location: &str) -> Result<Self> {
        let url = location_url(location)?;
        Self::open_url(url)
    }

    pub fn open_url(url: Url) -> Result<Self> {
        let err = |message: String| DataError::Storage { location: url.to_string(), message };
        let (store, prefix) = voxbridge_objstore::open(&url).map_err(err)?;
        let store = BlockingStore::new(Arc::from(store)).map_err(err)?;
        Ok(Self { store, prefix, url })
    }

    /// The root URL, without a trailing slash.
    pub fn url(&self) -> String {
        self.url.as_str().trim_end_matches('/').to_string()
    }

    /// The full name of a file under the root, for messages.
    pub fn display(&self, relative: &str) -> String {
        format!("{}/{}", self.url(), relative)
    }

    fn path(&self, relative: &str) -> Path {
        let mut parts: Vec<String> = self.prefix.parts().map(|p| p.as_ref().to_string()).collect();
        parts.extend(relative.split('/').filter(|s| !s.is_empty()).map(str::to_string));
        Path::from_iter(parts)
    }

    /// Writes a whole object. Each store makes the object visible only once it is complete
    /// (local: temp file + rename; S3/GCS: a single PUT or a completed multipart upload).
    pub fn put(&self, relative: &str, bytes: Bytes) -> Result<()> {
        self.store
            .put(&self.path(relative), bytes, UPLOAD)
            .map_err(|e| DataError::Storage { location: self.display(relative), message: format!("write failed: {e}") })
    }

    /// Reads a whole object; a missing object is [`DataError::Missing`].
    pub fn get(&self, relative: &str) -> Result<Bytes> {
        self.store.get(&self.path(relative)).map_err(|e| self.failed(relative, "read", e))
    }

    /// Size in bytes, or [`DataError::Missing`].
    pub fn size(&self, relative: &str) -> Result<u64> {
        Ok(self.store.head(&self.path(relative)).map_err(|e| self.failed(relative, "stat", e))?.size)
    }

    pub fn exists(&self, relative: &str) -> Result<bool> {
        match self.size(relative) {
            Ok(_) => Ok(true),
            Err(DataError::Missing { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A failed read or stat of `relative`: [`DataError::Missing`] when there is no such object.
    fn failed(&self, relative: &str, operation: &str, error: object_store::Error) -> DataError {
        match error {
            object_store::Error::NotFound { .. } => DataError::Missing { file: self.display(relative) },
            e => DataError::Storage { location: self.display(relative), message: format!("{operation} failed: {e}") },
        }
    }
}
