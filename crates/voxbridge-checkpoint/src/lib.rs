//! Checkpoints in object storage (S3, GCS, a local directory, memory) through `object_store`.
//!
//! A checkpoint is a set of named files under `<root>/step-SSSSSSSSS-gen-GGG/`. A save stages
//! every file first, then writes a small `COMMIT` object **last**, with `PutMode::Create`; it
//! lists every file's size and sha256. A checkpoint without its marker does not exist for resume,
//! and every load checks sizes and checksums against the marker. Nothing is ever renamed (on
//! object stores a rename is copy + delete, not atomic). The generation in the name separates the
//! writers of successive restarts: a re-save of step S after a restart goes to a new prefix, and a
//! late writer of an old generation can never commit over a new one's files.
//!
//! This crate knows bytes and names only; what the files hold is the trainer's business.
//! [`retention`] decides what to delete as a pure function; [`fault`] wraps a store to fail or
//! kill the process at a chosen put (tests and drills).

pub mod fault;
mod layout;
pub mod retention;
mod store;

pub use layout::{COMMIT_FILE, CheckpointId, CommitRecord, DAMAGED_FILE, FileRecord};
pub use store::{CheckpointListing, CheckpointStore, DEFAULT_PART_SIZE, Located, MAX_PARTS_IN_FLIGHT, locate};

use thiserror::Error;

/// Everything that can go wrong; every message names the object or location.
#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("{location}: {operation} failed: {source}")]
    Store {
        location: String,
        operation: &'static str,
        #[source]
        source: object_store::Error,
    },
    #[error("{location}: {message}")]
    Corrupt { location: String, message: String },
    #[error("{location}: not committed (no {COMMIT_FILE} marker); an unfinished save is not a checkpoint")]
    NotCommitted { location: String },
    #[error("{location}: already committed by another save (generation clash); refusing to overwrite")]
    AlreadyCommitted { location: String },
    #[error("{location}: {message}")]
    Invalid { location: String, message: String },
}

impl CheckpointError {
    /// The stored bytes are wrong — a size or checksum that disagrees with the marker, an
    /// unreadable marker, a listed file that is gone — as opposed to a store that failed to
    /// answer (which may work on a retry).
    pub fn is_damage(&self) -> bool {
        match self {
            CheckpointError::Corrupt { .. } => true,
            CheckpointError::Store { source, .. } => matches!(source, object_store::Error::NotFound { .. }),
            _ => false,
        }
    }
}

pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;
