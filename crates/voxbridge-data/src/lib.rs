//! voxbridge's data layer: Parquet shards of single-trial betas and per-image targets, the
//! manifest that lists them with checksums, verification, and the loader training uses.
//!
//! Files under a dataset root:
//! ```text
//! manifest.toml                        written last; lists every file below
//! trials/subj01/session01.parquet      one per subject and session (schema: [`schema`])
//! targets/part-00000.parquet           per-image targets keyed by image_id
//! ```

pub mod error;
pub mod loader;
pub mod manifest;
pub mod schema;
pub mod shard;
pub mod storage;
pub mod verify;
pub mod writer;

pub use error::{DataError, Result};
pub use loader::{
    AveragedTrials, Dataset, DecodingArrays, Sessions, SubjectTrials, TargetKind, Targets, average_repeats,
};
pub use manifest::{FileEntry, FileKind, MANIFEST_FILE, Manifest, OpenedManifest, open_manifest};
pub use schema::{SCHEMA_VERSION, TargetShapes};
pub use shard::{TargetRows, TrialRows};
pub use storage::Storage;
pub use verify::{VerifyReport, verify};
pub use writer::DatasetWriter;

/// Path of a trials shard under the dataset root.
pub fn trials_path(subject: u8, session: u16) -> String {
    format!("trials/subj{subject:02}/session{session:02}.parquet")
}

/// Path of the i-th targets shard under the dataset root.
pub fn targets_path(part: usize) -> String {
    format!("targets/part-{part:05}.parquet")
}
