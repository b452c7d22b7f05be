//! One error type for everything that reads or writes a dataset. Every variant names the file
//! (its URL or path) so a user can act on it.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum DataError {
    #[error("{location}: {message}")]
    Storage { location: String, message: String },

    #[error("{file}: missing (listed in the manifest but not found in storage)")]
    Missing { file: String },

    #[error("{file}: size is {actual} bytes, the manifest says {expected} (truncated or replaced?)")]
    Size { file: String, expected: u64, actual: u64 },

    #[error("{file}: sha256 is {actual}, the manifest says {expected} (corrupted or replaced)")]
    Checksum { file: String, expected: String, actual: String },

    #[error("{file}: not a readable Parquet file: {message}")]
    Footer { file: String, message: String },

    #[error("{file}: schema mismatch: {message}")]
    Schema { file: String, message: String },

    #[error("{file}: row group {row_group}: {message}")]
    RowGroup { file: String, row_group: usize, message: String },

    #[error("{file}: {message}")]
    Content { file: String, message: String },

    #[error("manifest {file}: {message}")]
    Manifest { file: String, message: String },

    #[error("{0}")]
    Selection(String),
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
