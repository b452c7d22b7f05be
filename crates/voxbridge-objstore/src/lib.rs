//! One way, for datasets and checkpoints alike, from a user-given location to an
//! `object_store` store: local paths (relative ones made absolute) become `file://` URLs;
//! `s3://`, `gs://` and `file://` URLs are taken as they are. Credentials and
//! endpoints come from the `AWS_*` / `GOOGLE_*` environment variables, so a moto server or
//! MinIO works by setting `AWS_ENDPOINT` and `AWS_ALLOW_HTTP=true`. Errors are messages; the
//! callers wrap them with the location in their own error types. [`BlockingStore`] gives the
//! store blocking calls (get, put — in parts when large —, head, list, delete) for the
//! synchronous dataset and checkpoint code.

mod blocking;

pub use blocking::{BlockingStore, Upload};

use object_store::ObjectStore;
use object_store::path::Path;
use url::Url;

/// A path or URL → URL; relative paths become absolute `file://` URLs.
pub fn location_url(location: &str) -> Result<Url, String> {
    if location.contains("://") {
        return Url::parse(location).map_err(|e| format!("not a valid URL: {e}"));
    }
    let path = std::path::Path::new(location);
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| format!("cannot resolve a relative path: {e}"))?.join(path)
    };
    Url::from_file_path(&absolute).map_err(|_| "cannot turn this path into a file URL".to_string())
}

/// The store behind `url` and the root path inside it, configured from the environment.
pub fn open(url: &Url) -> Result<(Box<dyn ObjectStore>, Path), String> {
    let options = std::env::vars().filter_map(|(k, v)| {
        let k = k.to_ascii_lowercase();
        (k.starts_with("aws_") || k.starts_with("google_")).then_some((k, v))
    });
    object_store::parse_url_opts(url, options).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_absolute_file_urls_and_urls_stay() {
        let url = location_url("some/dir").unwrap();
        assert_eq!(url.scheme(), "file");
        assert!(url.path().ends_with("/some/dir"), "{url}");
        assert_eq!(location_url("s3://bucket/prefix").unwrap().as_str(), "s3://bucket/prefix");
        assert!(location_url("s3://[bad").unwrap_err().contains("not a valid URL"));
        let (_, root) = open(&location_url("/data/runs/a").unwrap()).unwrap();
        assert_eq!(root.as_ref(), "data/runs/a");
    }
}
