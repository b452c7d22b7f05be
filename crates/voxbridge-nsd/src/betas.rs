//! The betas file (`betas_all_subj0X_fp32_renorm.hdf5`): dataset `betas`, one row per global
//! trial, one column per voxel. Read through the system's libhdf5, loaded at run time
//! ([`crate::hdf5`]), a row range at a time: the whole array of a subject is ~1.9 GB.

use std::path::Path;

use crate::{ImportError, hdf5};

/// The dataset holding the betas.
pub const DATASET: &str = "betas";

pub struct Betas {
    file: String,
    dataset: hdf5::Dataset,
    pub rows: usize,
    pub voxels: usize,
}

impl std::fmt::Debug for Betas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Betas")
            .field("file", &self.file)
            .field("rows", &self.rows)
            .field("voxels", &self.voxels)
            .finish()
    }
}

impl Betas {
    pub fn open(path: &Path) -> Result<Self, ImportError> {
        let file = path.display().to_string();
        let err = |message: String| ImportError::new(&file, message);
        let h5 = hdf5::File::open(path).map_err(|e| err(e.opening("NSD's HDF5 betas")))?;
        let dataset = h5.dataset(DATASET).map_err(|_| {
            let names = h5.member_names();
            err(format!("no dataset `{DATASET}` (the file has {names:?})"))
        })?;
        let shape = dataset.shape();
        let [rows, voxels] = shape[..] else {
            return Err(err(format!("dataset `{DATASET}` has shape {shape:?}; expected [trials, voxels]")));
        };
        let held = dataset.element_type().map_err(|e| err(format!("dataset `{DATASET}`: {e}")))?;
        if !held.is_f32_or_f64() {
            return Err(err(format!("dataset `{DATASET}` holds {held}, not float32/float64 betas")));
        }
        Ok(Betas { file, dataset, rows, voxels })
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    /// Rows `range`, row-major `[range.len(), voxels]` (converted to f32 by libhdf5).
    pub fn read_rows(&self, range: std::ops::Range<usize>) -> Result<Vec<f32>, ImportError> {
        self.dataset.read_rows_f32(range.clone()).map_err(|e| {
            ImportError::new(&self.file, format!("reading rows {}..{} of `{DATASET}`: {e}", range.start, range.end))
        })
    }
}
