//! Where datasets live: a local directory or an object-store URL (`s3://`, `gs://`, `file://`,
//! `memory://`), all through `object_store`. Credentials and endpoints come from the usual
//! environment variables (`AWS_*`, `GOOGLE_*`), so a moto server or MinIO works by setting
//! `AWS_ENDPOINT` and `AWS_ALLOW_HTTP=true`.
//!
//! The simulator, verifier and loader are synchronous code, so [`Storage`] offers blocking calls
//! backed by its own small runtime. Do not call them from inside an async task.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use url::Url;

use crate::error::{DataError, Result};

/// Objects above this size are uploaded in parts, so S3's single-PUT limit never applies.
const MULTIPART_THRESHOLD: usize = 32 << 20;
const PART_SIZE: usize = 16 << 20;

/// A root location plus a handle to its store.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: Url,
    runtime: Arc<tokio::runtime::Runtime>,
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
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| err(format!("cannot start IO runtime: {e}")))?;
        Ok(Self { store: Arc::from(store), prefix, url, runtime: Arc::new(runtime) })
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
        let path = self.path(relative);
        let err = |e: object_store::Error| DataError::Storage {
            location: self.display(relative),
            message: format!("write failed: {e}"),
        };
        self.runtime.block_on(async {
            if bytes.len() <= MULTIPART_THRESHOLD {
                self.store.put(&path, PutPayload::from(bytes)).await.map_err(err)?;
            } else {
                let upload = self.store.put_multipart(&path).await.map_err(err)?;
                let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
                writer.put(bytes);
                writer.finish().await.map_err(err)?;
            }
            Ok(())
        })
    }

    /// Reads a whole object; a missing object is [`DataError::Missing`].
    pub fn get(&self, relative: &str) -> Result<Bytes> {
        let path = self.path(relative);
        self.runtime.block_on(async {
            match self.store.get(&path).await {
                Ok(result) => result.bytes().await.map_err(|e| DataError::Storage {
                    location: self.display(relative),
                    message: format!("read failed: {e}"),
                }),
                Err(object_store::Error::NotFound { .. }) => Err(DataError::Missing { file: self.display(relative) }),
                Err(e) => {
                    Err(DataError::Storage { location: self.display(relative), message: format!("read failed: {e}") })
                }
            }
        })
    }

    /// Size in bytes, or [`DataError::Missing`].
    pub fn size(&self, relative: &str) -> Result<u64> {
        let path = self.path(relative);
        self.runtime.block_on(async {
            match self.store.head(&path).await {
                Ok(meta) => Ok(meta.size),
                Err(object_store::Error::NotFound { .. }) => Err(DataError::Missing { file: self.display(relative) }),
                Err(e) => {
                    Err(DataError::Storage { location: self.display(relative), message: format!("stat failed: {e}") })
                }
            }
        })
    }

    pub fn exists(&self, relative: &str) -> Result<bool> {
        match self.size(relative) {
            Ok(_) => Ok(true),
            Err(DataError::Missing { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
