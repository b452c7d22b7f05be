//! Fault injection for checkpoint drills: a store wrapper that fails, or kills the whole process
//! with SIGKILL, at the k-th put (0-based, counting single puts and multipart uploads started).
//!
//! Set `VOXBRIDGE_FAULT=fail-put:K` or `VOXBRIDGE_FAULT=kill-put:K` to arm it in any command that
//! opens a [`CheckpointStore`](crate::CheckpointStore) with `open`; tests build it directly.
//! The same variable names the trainer's drills (`kill-after-step:N`, …), which the trainer
//! parses; [`signal_self`] is how both sides crash or stop this process.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult,
};

pub const FAULT_ENV: &str = "VOXBRIDGE_FAULT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// The put returns an error (a full disk, a refused request).
    Fail,
    /// The process is killed with SIGKILL before the put reaches the store.
    Kill,
}

/// A fault of the checkpoint store: at the `at`-th put (0-based), `action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutFault {
    pub action: FaultAction,
    pub at: u64,
}

/// Parses `fail-put:K` or `kill-put:K`. `Ok(None)`: a spec of another kind (a drill of the
/// trainer, which checks it).
pub fn parse_put_fault(spec: &str) -> Result<Option<PutFault>, String> {
    let (kind, at) = spec.split_once(':').unwrap_or((spec, ""));
    let action = match kind {
        "fail-put" => FaultAction::Fail,
        "kill-put" => FaultAction::Kill,
        _ => return Ok(None),
    };
    let at = at.trim().parse().map_err(|_| format!("{FAULT_ENV}={spec:?}: expected fail-put:K or kill-put:K"))?;
    Ok(Some(PutFault { action, at }))
}

/// The store fault `VOXBRIDGE_FAULT` asks for, if any.
pub fn put_fault_from_env() -> Result<Option<PutFault>, String> {
    match std::env::var(FAULT_ENV) {
        Ok(spec) if !spec.is_empty() => parse_put_fault(&spec),
        _ => Ok(None),
    }
}

/// Sending a fault-injection signal to this process failed.
#[derive(Debug, thiserror::Error)]
#[error("fault injection: cannot send SIG{signal} to this process: {reason}")]
pub struct SignalError {
    pub signal: String,
    pub reason: String,
}

/// SIGKILL to this process (no destructors, no flushing: a crash as the OS sees it). Returns only
/// when the signal cannot be sent.
pub fn kill_self(why: &str) -> Result<std::convert::Infallible, SignalError> {
    signal_self("KILL", why)?;
    // POSIX: an unblockable signal a process sends itself is delivered before kill() returns.
    unreachable!("SIGKILL was sent to this process and it still runs")
}

/// Sends `signal` (`KILL`, `STOP`, `TERM`: the name without `SIG`) to this process, through the
/// kill(2) system call (no external program).
pub fn signal_self(signal: &str, why: &str) -> Result<(), SignalError> {
    let error = |reason: String| SignalError { signal: signal.to_string(), reason };
    let sig: nix::sys::signal::Signal =
        format!("SIG{signal}").parse().map_err(|_| error("not a signal name".to_string()))?;
    eprintln!("fault injection: SIG{signal} ({why})");
    nix::sys::signal::kill(nix::unistd::Pid::this(), sig).map_err(|e| error(e.to_string()))
}

/// Wraps a store; the `at`-th put (and only it) triggers `action`.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    action: FaultAction,
    at: u64,
    puts: AtomicU64,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>, action: FaultAction, at: u64) -> Self {
        FaultyStore { inner, action, at, puts: AtomicU64::new(0) }
    }

    /// The wrapper `VOXBRIDGE_FAULT` asks for, if it is set.
    pub fn from_env(inner: Arc<dyn ObjectStore>) -> Result<Option<Self>, String> {
        match put_fault_from_env()? {
            Some(PutFault { action, at }) => {
                tracing::warn!(?action, at, "fault injection armed on the checkpoint store");
                Ok(Some(FaultyStore::new(inner, action, at)))
            }
            None => Ok(None),
        }
    }

    /// Puts seen so far.
    pub fn puts(&self) -> u64 {
        self.puts.load(Ordering::SeqCst)
    }

    fn before_put(&self, location: &Path) -> object_store::Result<()> {
        let k = self.puts.fetch_add(1, Ordering::SeqCst);
        if k != self.at {
            return Ok(());
        }
        match self.action {
            FaultAction::Fail => Err(object_store::Error::Generic {
                store: "FaultyStore",
                source: format!("injected failure at put {k} ({location})").into(),
            }),
            FaultAction::Kill => {
                let Err(e) = kill_self(&format!("at put {k}, {location}"));
                Err(object_store::Error::Generic { store: "FaultyStore", source: Box::new(e) })
            }
        }
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({:?} at put {}, {})", self.action, self.at, self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.before_put(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.before_put(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use object_store::memory::InMemory;

    use super::*;
    use crate::{CheckpointId, CheckpointStore};

    #[test]
    fn put_specs_parse_and_other_kinds_are_left_to_the_trainer() {
        assert_eq!(parse_put_fault("kill-put:3"), Ok(Some(PutFault { action: FaultAction::Kill, at: 3 })));
        assert_eq!(parse_put_fault("fail-put:0"), Ok(Some(PutFault { action: FaultAction::Fail, at: 0 })));
        assert_eq!(parse_put_fault("kill-after-step:12"), Ok(None));
        assert_eq!(parse_put_fault("kill:3"), Ok(None));
        let err = parse_put_fault("fail-put:x").unwrap_err();
        assert!(err.contains("expected fail-put:K or kill-put:K"), "{err}");
        assert!(parse_put_fault("kill-put:1:2").is_err());
    }

    /// Crash anywhere (failure variant): for every put k of one save, the save fails, the
    /// previous checkpoint stays the newest committed one, and it loads with matching checksums.
    #[test]
    fn a_save_failing_at_any_put_leaves_the_previous_checkpoint_loadable() {
        let files: Vec<(String, Bytes)> =
            (0..4).map(|i| (format!("file{i}"), Bytes::from(vec![i as u8; 3000]))).collect();
        let refs: Vec<(&str, Bytes)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
        let first = CheckpointId { step: 10, generation: 0 };
        let second = CheckpointId { step: 20, generation: 0 };
        // 4 files, each a multipart upload of 2 parts (one put each), plus the marker: 5 puts.
        let puts_per_save = 5;
        for k in 0..puts_per_save {
            let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
            let faulty = Arc::new(FaultyStore::new(memory, FaultAction::Fail, puts_per_save + k));
            let store = CheckpointStore::with_store(faulty.clone(), Path::from("ckpt"), "memory:///ckpt")
                .unwrap()
                .with_part_size(2500);
            let written = store.save(first, &refs, serde_json::json!({"step": 10})).unwrap();
            assert_eq!(faulty.puts(), puts_per_save);
            let err = store.save(second, &refs, serde_json::json!({"step": 20})).unwrap_err();
            assert!(err.to_string().contains("injected failure"), "put {k}: {err}");
            assert_eq!(store.latest_committed().unwrap(), Some(first), "put {k}");
            let record = store.commit_record(first).unwrap();
            assert_eq!(record, written);
            for (name, bytes) in &files {
                assert_eq!(&store.read(&record, name).unwrap(), bytes, "put {k}: {name}");
            }
        }
    }
}
