//! Precomputed per-image targets, keyed by the NSD 73k image index: arrays `image_id` `[N]`,
//! `clip_tokens` `[N, T, D]` (OpenCLIP bigG: 256×1664), and optionally `lowlevel` `[N, C, H, W]`
//! (SD VAE: 4×28×28) and `captions` `[N, K, E]`. One `.safetensors` file, one HDF5 file
//! (`.h5`/`.hdf5`, a dataset per array) or a directory of `<name>.npy` files.
//! (`tools/nsd_targets.py` computes them from the images.)

use std::collections::HashMap;
use std::path::Path;

use voxbridge_data::{TargetRows, TargetShapes};

use crate::{ImportError, npy};

/// An array as read: shape and values.
type Array = (Vec<usize>, Vec<f32>);

/// All targets of a file, by image.
#[derive(Debug, Clone)]
pub struct Targets {
    pub shapes: TargetShapes,
    /// Row of each image.
    pub index: HashMap<u32, usize>,
    pub rows: TargetRows,
}

impl Targets {
    /// Targets of `images`, in that order; an image without a target is an error naming it.
    pub fn select(&self, images: &[(u32, bool)], file: &str) -> Result<TargetRows, ImportError> {
        let s = &self.shapes;
        let (c, l, p) = (s.clip_len(), s.lowlevel_len(), s.captions_len());
        let mut out = TargetRows::new(*s);
        for &(image, is_test) in images {
            let Some(&r) = self.index.get(&image) else {
                return Err(ImportError::new(file, format!("image {image} (73k index) has no target")));
            };
            out.image_id.push(image);
            out.is_test.push(is_test);
            out.clip_tokens.extend_from_slice(&self.rows.clip_tokens[r * c..(r + 1) * c]);
            out.lowlevel.extend_from_slice(&self.rows.lowlevel[r * l..(r + 1) * l]);
            out.captions.extend_from_slice(&self.rows.captions[r * p..(r + 1) * p]);
        }
        Ok(out)
    }
}

/// Reads a targets file or directory (format by extension).
pub fn read(path: &Path) -> Result<Targets, ImportError> {
    let file = path.display().to_string();
    let err = |message: String| ImportError::new(&file, message);
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mut arrays: HashMap<&'static str, Array> = HashMap::new();
    let names = ["image_id", "clip_tokens", "lowlevel", "captions"];
    if path.is_dir() {
        for name in names {
            let f = path.join(format!("{name}.npy"));
            if f.exists() {
                let bytes = std::fs::read(&f).map_err(|e| err(format!("{name}.npy: {e}")))?;
                let a = npy::parse(&bytes).map_err(|e| err(format!("{name}.npy: {e}")))?;
                arrays.insert(name, (a.shape, a.values.into_iter().map(|v| v as f32).collect()));
            }
        }
    } else if ext == "safetensors" {
        let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| err(format!("not safetensors: {e}")))?;
        for name in names {
            if let Ok(t) = st.tensor(name) {
                let values = voxbridge_arrays::safetensors_f32(t.dtype(), t.data())
                    .map_err(|e| err(format!("tensor `{name}`: {e}")))?;
                arrays.insert(name, (t.shape().to_vec(), values));
            }
        }
    } else if ext == "h5" || ext == "hdf5" {
        let h5 = hdf5::File::open(path).map_err(|e| err(format!("not a readable HDF5 file: {e}")))?;
        for name in names {
            if let Ok(ds) = h5.dataset(name) {
                let values = ds.read_raw::<f32>().map_err(|e| err(format!("dataset `{name}`: {e}")))?;
                arrays.insert(name, (ds.shape(), values));
            }
        }
    } else {
        return Err(err("targets must be a .safetensors file, an .h5/.hdf5 file or a directory of .npy files".into()));
    }
    assemble(arrays, &file)
}

/// Checks the arrays' shapes against each other and builds the rows.
fn assemble(mut arrays: HashMap<&'static str, Array>, file: &str) -> Result<Targets, ImportError> {
    let err = |message: String| ImportError::new(file, message);
    let (id_shape, ids) = arrays.remove("image_id").ok_or_else(|| err("no `image_id` array".into()))?;
    let (clip_shape, clip) = arrays.remove("clip_tokens").ok_or_else(|| err("no `clip_tokens` array".into()))?;
    let n = ids.len();
    if id_shape.len() != 1 {
        return Err(err(format!("`image_id` has shape {id_shape:?}; expected [N]")));
    }
    let rows_of = |name: &str, shape: &[usize], rank: usize| -> Result<Vec<usize>, ImportError> {
        if shape.len() != rank || shape[0] != n {
            return Err(err(format!(
                "`{name}` has shape {shape:?}; expected {rank} dimensions with {n} rows (one per image_id)"
            )));
        }
        Ok(shape[1..].to_vec())
    };
    let clip_dims = rows_of("clip_tokens", &clip_shape, 3)?;
    let low = arrays.remove("lowlevel").map(|(s, v)| rows_of("lowlevel", &s, 4).map(|d| (d, v))).transpose()?;
    let cap = arrays.remove("captions").map(|(s, v)| rows_of("captions", &s, 3).map(|d| (d, v))).transpose()?;
    let shapes = TargetShapes {
        clip_tokens: [clip_dims[0], clip_dims[1]],
        lowlevel: low.as_ref().map_or([0, 0, 0], |(d, _)| [d[0], d[1], d[2]]),
        captions: cap.as_ref().map_or([0, 0], |(d, _)| [d[0], d[1]]),
    };
    let mut index = HashMap::with_capacity(n);
    let mut image_id = Vec::with_capacity(n);
    for (row, &id) in ids.iter().enumerate() {
        if id < 0.0 || id.fract() != 0.0 || id >= 16_777_216.0 {
            return Err(err(format!("image_id row {row}: {id} is not a 73k image index")));
        }
        if index.insert(id as u32, row).is_some() {
            return Err(err(format!("image_id row {row}: image {id} appears twice")));
        }
        image_id.push(id as u32);
    }
    let rows = TargetRows {
        shapes,
        image_id,
        is_test: vec![false; n],
        clip_tokens: clip,
        lowlevel: low.map(|(_, v)| v).unwrap_or_default(),
        captions: cap.map(|(_, v)| v).unwrap_or_default(),
    };
    Ok(Targets { shapes, index, rows })
}
