//! Import of the real NSD as MindEye2 released it (spec §3) into voxbridge's shards: the betas
//! (`betas_all_subj0X_fp32_renorm.hdf5`, dataset `betas`), the behaviour rows of the webdataset
//! tars (`wds/subj0X/train/{session}.tar`, `wds/subj0X/new_test/0.tar`, member
//! `sample%09d.behav.npy`), and precomputed per-image targets keyed by the 73k index. Writes the
//! simulator's format — trial shards per session, target shards, the manifest last — so the
//! imported data trains and evaluates through the same path.

pub mod behav;
pub mod betas;
pub mod completeness;
pub mod fixtures;
pub mod hdf5;
pub mod import;
pub mod targets;

pub use voxbridge_arrays::npy;

pub use import::{ImportOptions, ImportSummary, Normalisation, import_subject};

/// Voxels of the nsdgeneral mask of subjects 1–8 (spec §1.1).
pub const NSD_VOXELS: [usize; 8] = [15724, 14278, 15226, 13153, 13039, 17907, 12682, 14386];

/// An input that cannot be imported: the file (and member or row) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ImportError {
    pub file: String,
    pub message: String,
}

impl ImportError {
    pub fn new(file: &str, message: impl Into<String>) -> Self {
        ImportError { file: file.to_string(), message: message.into() }
    }
}
