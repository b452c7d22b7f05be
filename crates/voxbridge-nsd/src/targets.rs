//! Precomputed per-image targets, keyed by the NSD 73k image index: arrays `image_id` `[N]`,
//! `clip_tokens` `[N, T, D]` (OpenCLIP bigG: 256×1664), and optionally `lowlevel` `[N, C, H, W]`
//! (SD VAE: 4×28×28), `captions` `[N, K, E]` and the low-level teacher, `convnext` `[N, P, W]`
//! (ConvNeXt-XL VICRegL maps of the clean image: 49×512) with `convnext_aug` `[N, A, P, W]` (the
//! same of A fixed augmentations; the two come together). One `.safetensors` file, one HDF5 file
//! (`.h5`/`.hdf5`, a dataset per array) or a directory of `<name>.npy` files.
//! (`tools/nsd_targets.py` computes them from the images.)

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use voxbridge_data::{TargetRows, TargetShapes};

use crate::{ImportError, hdf5, npy};

/// The arrays a targets file may hold, in this order.
const NAMES: [&str; 6] = ["image_id", "clip_tokens", "lowlevel", "captions", "convnext", "convnext_aug"];

/// Where one array's rows are: its shape, and how to read row `r` as `f32`.
#[derive(Debug)]
struct Array {
    name: &'static str,
    shape: Vec<usize>,
    source: Source,
}

/// Rows are read on demand, so a file of all 73k images (≈125 GB of bigG tokens) is never
/// held in memory: only the rows of the images a subject saw are.
#[derive(Debug)]
enum Source {
    /// Little-endian elements laid out row after row from `data_offset` (`.npy`, safetensors).
    Bytes { file: File, data_offset: u64, row_len: usize, dtype: Dtype },
    /// An HDF5 dataset; libhdf5 converts to f32.
    Hdf5(hdf5::Dataset),
}

#[derive(Debug, Clone)]
enum Dtype {
    Npy(String),
    Safetensors(safetensors::Dtype),
}

impl Dtype {
    /// Little-endian elements as `f32`.
    fn decode(&self, bytes: &[u8]) -> Result<Vec<f32>, String> {
        match self {
            Dtype::Npy(descr) => npy::decode_f32(descr, bytes),
            Dtype::Safetensors(d) => voxbridge_arrays::safetensors_f32(*d, bytes),
        }
    }
}

impl Array {
    fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    /// Every element (for the small `image_id`).
    fn read_all(&self) -> Result<Vec<f32>, String> {
        match &self.source {
            Source::Bytes { file, data_offset, row_len, dtype } => {
                let mut bytes = vec![0; row_len * self.rows()];
                file.read_exact_at(&mut bytes, *data_offset).map_err(|e| format!("reading `{}`: {e}", self.name))?;
                dtype.decode(&bytes)
            }
            Source::Hdf5(dataset) => dataset.read_f32().map_err(|e| format!("reading dataset `{}`: {e}", self.name)),
        }
    }

    /// Row `r`, appended to `out`.
    fn read_row(&self, r: usize, out: &mut Vec<f32>) -> Result<(), String> {
        match &self.source {
            Source::Bytes { file, data_offset, row_len, dtype } => {
                let mut bytes = vec![0; *row_len];
                file.read_exact_at(&mut bytes, data_offset + (r * row_len) as u64)
                    .map_err(|e| format!("reading row {r} of `{}`: {e}", self.name))?;
                out.extend(dtype.decode(&bytes)?);
            }
            Source::Hdf5(dataset) => {
                let row = dataset
                    .read_rows_f32(r..r + 1)
                    .map_err(|e| format!("reading row {r} of dataset `{}`: {e}", self.name))?;
                out.extend(row);
            }
        }
        Ok(())
    }
}

/// The targets of a file, by image; rows are read when selected.
#[derive(Debug)]
pub struct Targets {
    pub file: String,
    pub shapes: TargetShapes,
    /// Row of each image.
    pub index: HashMap<u32, usize>,
    clip: Array,
    lowlevel: Option<Array>,
    captions: Option<Array>,
    /// `convnext` and `convnext_aug`, when the file has them.
    teacher: Option<(Array, Array)>,
}

impl Targets {
    /// Targets of `images` (image, is_test), in that order; an image without a target is an
    /// error naming it.
    pub fn select(&self, images: &[(u32, bool)]) -> Result<TargetRows, ImportError> {
        let mut out = TargetRows::new(self.shapes);
        for &(image, is_test) in images {
            let Some(&r) = self.index.get(&image) else {
                return Err(ImportError::new(&self.file, format!("image {image} (73k index) has no target")));
            };
            out.image_id.push(image);
            out.is_test.push(is_test);
            let err = |e: String| ImportError::new(&self.file, e);
            self.clip.read_row(r, &mut out.clip_tokens).map_err(err)?;
            if let Some(a) = &self.lowlevel {
                a.read_row(r, &mut out.lowlevel).map_err(err)?;
            }
            if let Some(a) = &self.captions {
                a.read_row(r, &mut out.captions).map_err(err)?;
            }
            if let Some((clean, aug)) = &self.teacher {
                clean.read_row(r, &mut out.teacher).map_err(err)?;
                aug.read_row(r, &mut out.teacher_aug).map_err(err)?;
            }
        }
        Ok(out)
    }
}

/// Opens a targets file or directory (format by extension): reads the image ids and every
/// array's shape; rows are read by [`Targets::select`].
pub fn open(path: &Path) -> Result<Targets, ImportError> {
    let file = path.display().to_string();
    let err = |message: String| ImportError::new(&file, message);
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mut arrays: HashMap<&'static str, Array> = HashMap::new();
    if path.is_dir() {
        for name in NAMES {
            let f = path.join(format!("{name}.npy"));
            if f.exists() {
                arrays.insert(name, open_npy(&f, name).map_err(|e| err(format!("{name}.npy: {e}")))?);
            }
        }
    } else if ext == "safetensors" {
        arrays = open_safetensors(path).map_err(err)?;
    } else if ext == "h5" || ext == "hdf5" {
        let h5 = hdf5::File::open(path).map_err(|e| err(e.opening("HDF5 targets")))?;
        for name in NAMES {
            if let Ok(ds) = h5.dataset(name) {
                arrays.insert(name, Array { name, shape: ds.shape().to_vec(), source: Source::Hdf5(ds) });
            }
        }
        let images = arrays.get("image_id").and_then(|a| a.shape.first().copied()).unwrap_or(0);
        check_finished(&h5, images, arrays.contains_key("convnext")).map_err(err)?;
    } else {
        return Err(err("targets must be a .safetensors file, an .h5/.hdf5 file or a directory of .npy files".into()));
    }
    assemble(arrays, &file)
}

/// `tools/nsd_targets.py` writes every array at full size up front and counts the rows it has
/// computed in the attributes `rows_done` (tokens, latents, captions) and `convnext_rows_done`;
/// the rows after them are zeros, not targets. A file whose count is short of `images` is
/// refused (files without the attributes were not written by the script and are taken whole).
fn check_finished(h5: &hdf5::File, images: usize, teacher: bool) -> Result<(), String> {
    let counts = [("rows_done", true), ("convnext_rows_done", teacher)];
    for (attr, applies) in counts {
        if !applies || !h5.has_attr(attr).map_err(|e| format!("cannot list its attributes: {e}"))? {
            continue;
        }
        let done = h5.attr_i64(attr).map_err(|e| format!("attribute `{attr}` is not a row count: {e}"))?;
        if usize::try_from(done).map_or(true, |d| d < images) {
            return Err(format!(
                "attribute `{attr}` = {done} of {images} images: tools/nsd_targets.py has not finished this \
                 file (the rows after it are zeros, not targets); run it again to resume"
            ));
        }
    }
    Ok(())
}

fn open_npy(path: &Path, name: &'static str) -> Result<Array, String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut prefix = vec![0; npy::Header::PREFIX.min(len as usize)];
    file.read_exact_at(&mut prefix, 0).map_err(|e| e.to_string())?;
    let mut head = vec![0; npy::Header::total_len(&prefix)?.min(len as usize)];
    file.read_exact_at(&mut head, 0).map_err(|e| e.to_string())?;
    let header = npy::Header::parse(&head)?;
    let expected = (header.data_offset + header.data_len()) as u64;
    if len != expected {
        return Err(format!(
            "{len} bytes for shape {:?} of {} (expected {expected}; truncated?)",
            header.shape, header.descr
        ));
    }
    let source = Source::Bytes {
        file,
        data_offset: header.data_offset as u64,
        row_len: header.row_len(),
        dtype: Dtype::Npy(header.descr.clone()),
    };
    Ok(Array { name, shape: header.shape, source })
}

/// A safetensors header entry.
#[derive(serde::Deserialize)]
struct TensorInfo {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

fn open_safetensors(path: &Path) -> Result<HashMap<&'static str, Array>, String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut n = [0; 8];
    file.read_exact_at(&mut n, 0).map_err(|e| format!("not safetensors: {e}"))?;
    let n = u64::from_le_bytes(n);
    if n.saturating_add(8) > len || n > 100 << 20 {
        return Err(format!("not safetensors: a header of {n} bytes in a file of {len}"));
    }
    let mut header = vec![0; n as usize];
    file.read_exact_at(&mut header, 8).map_err(|e| format!("not safetensors: {e}"))?;
    let mut entries: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| format!("not safetensors: the header is not JSON: {e}"))?;
    entries.remove("__metadata__");
    let data_start = 8 + n;
    let mut arrays = HashMap::new();
    for name in NAMES {
        let Some(value) = entries.remove(name) else { continue };
        let info: TensorInfo =
            serde_json::from_value(value).map_err(|e| format!("tensor `{name}`: unreadable header entry: {e}"))?;
        let (begin, end) = info.data_offsets;
        let count: usize = info.shape.iter().product();
        // Whole-byte dtypes only (the sub-byte ones cannot be read a row at a time).
        let item = info.dtype.bitsize() / 8;
        if item == 0 || !info.dtype.bitsize().is_multiple_of(8) {
            return Err(format!("tensor `{name}`: dtype {:?} is not supported", info.dtype));
        }
        if end < begin || data_start + end as u64 > len || end - begin != count * item {
            return Err(format!(
                "tensor `{name}`: offsets {begin}..{end} do not hold shape {:?} of {:?} in a file of {len} bytes (truncated?)",
                info.shape, info.dtype
            ));
        }
        let row_len = info.shape.iter().skip(1).product::<usize>() * item;
        let source = Source::Bytes {
            file: file.try_clone().map_err(|e| e.to_string())?,
            data_offset: data_start + begin as u64,
            row_len,
            dtype: Dtype::Safetensors(info.dtype),
        };
        arrays.insert(name, Array { name, shape: info.shape, source });
    }
    Ok(arrays)
}

/// Checks the arrays' shapes against each other and reads the image ids.
fn assemble(mut arrays: HashMap<&'static str, Array>, file: &str) -> Result<Targets, ImportError> {
    let err = |message: String| ImportError::new(file, message);
    let ids = arrays.remove("image_id").ok_or_else(|| err("no `image_id` array".into()))?;
    let clip = arrays.remove("clip_tokens").ok_or_else(|| err("no `clip_tokens` array".into()))?;
    if ids.shape.len() != 1 {
        return Err(err(format!("`image_id` has shape {:?}; expected [N]", ids.shape)));
    }
    let n = ids.rows();
    let check = |a: &Array, rank: usize| -> Result<Vec<usize>, ImportError> {
        if a.shape.len() != rank || a.shape[0] != n {
            return Err(err(format!(
                "`{}` has shape {:?}; expected {rank} dimensions with {n} rows (one per image_id)",
                a.name, a.shape
            )));
        }
        Ok(a.shape[1..].to_vec())
    };
    let clip_dims = check(&clip, 3)?;
    let lowlevel = arrays.remove("lowlevel");
    let captions = arrays.remove("captions");
    let low_dims = lowlevel.as_ref().map(|a| check(a, 4)).transpose()?;
    let cap_dims = captions.as_ref().map(|a| check(a, 3)).transpose()?;
    let teacher = match (arrays.remove("convnext"), arrays.remove("convnext_aug")) {
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            return Err(err(
                "`convnext` and `convnext_aug` (the low-level teacher) come together; one is missing".into()
            ));
        }
        (Some(clean), Some(aug)) => {
            let (c, a) = (check(&clean, 3)?, check(&aug, 4)?);
            if a[1..] != c[..] || a[0] == 0 {
                return Err(err(format!(
                    "`convnext_aug` has shape {:?}; expected [N, views ≥ 1, {}, {}] like `convnext` {:?}",
                    aug.shape, c[0], c[1], clean.shape
                )));
            }
            Some((clean, aug, [c[0], c[1]], a[0]))
        }
    };
    let shapes = TargetShapes {
        clip_tokens: [clip_dims[0], clip_dims[1]],
        lowlevel: low_dims.map_or([0, 0, 0], |d| [d[0], d[1], d[2]]),
        captions: cap_dims.map_or([0, 0], |d| [d[0], d[1]]),
        teacher: teacher.as_ref().map(|t| t.2),
        teacher_augs: teacher.as_ref().map_or(0, |t| t.3),
    };
    if let Some(problem) = shapes.teacher_problem() {
        return Err(err(problem));
    }
    let teacher = teacher.map(|(clean, aug, _, _)| (clean, aug));
    let id_values = ids.read_all().map_err(err)?;
    let mut index = HashMap::with_capacity(n);
    for (row, &id) in id_values.iter().enumerate() {
        if id < 0.0 || id.fract() != 0.0 || id >= 16_777_216.0 {
            return Err(err(format!("image_id row {row}: {id} is not a 73k image index")));
        }
        if index.insert(id as u32, row).is_some() {
            return Err(err(format!("image_id row {row}: image {id} appears twice")));
        }
    }
    Ok(Targets { file: file.to_string(), shapes, index, clip, lowlevel, captions, teacher })
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: usize = 6;

    /// Image ids 100, 110, …; value (image, k) = image + k/1000.
    fn values(shape: &[usize]) -> Vec<f32> {
        let per: usize = shape[1..].iter().product();
        (0..N).flat_map(|r| (0..per).map(move |k| (100 + 10 * r) as f32 + k as f32 / 1000.0)).collect()
    }

    fn ids() -> Vec<f32> {
        (0..N).map(|r| (100 + 10 * r) as f32).collect()
    }

    /// Images 150 then 120: rows 5 and 2, in that order, from any format.
    fn check(path: &Path) {
        let targets = open(path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(targets.shapes.clip_tokens, [2, 3]);
        assert_eq!(targets.shapes.lowlevel, [1, 2, 2]);
        let rows = targets.select(&[(150, true), (120, false)]).unwrap();
        assert_eq!(rows.image_id, [150, 120]);
        assert_eq!(rows.is_test, [true, false]);
        let expect = |image: f32, n: usize| (0..n).map(move |k| image + k as f32 / 1000.0);
        let clip: Vec<f32> = expect(150.0, 6).chain(expect(120.0, 6)).collect();
        let low: Vec<f32> = expect(150.0, 4).chain(expect(120.0, 4)).collect();
        for (a, b) in rows.clip_tokens.iter().zip(&clip) {
            assert!((a - b).abs() < 0.05, "{:?} vs {clip:?}", rows.clip_tokens);
        }
        assert_eq!(rows.lowlevel, low);
        assert_eq!((targets.shapes.teacher, targets.shapes.teacher_augs), (Some([2, 3]), 2));
        let teacher: Vec<f32> = expect(150.0, 6).chain(expect(120.0, 6)).collect();
        let teacher_aug: Vec<f32> = expect(150.0, 12).chain(expect(120.0, 12)).collect();
        assert_eq!(rows.teacher, teacher);
        assert_eq!(rows.teacher_aug, teacher_aug);
        let err = targets.select(&[(999, false)]).unwrap_err().to_string();
        assert!(err.contains("image 999 (73k index) has no target"), "{err}");
    }

    #[test]
    fn npy_safetensors_and_hdf5_targets_read_the_selected_rows() {
        let dir = tempfile::tempdir().unwrap();
        let (clip, low) = ([N, 2, 3], [N, 1, 2, 2]);
        // The low-level teacher: [N, 2 positions, 3 wide] and 2 augmented views of it.
        let (cnx, cnx_aug) = ([N, 2, 3], [N, 2, 2, 3]);

        let npy_dir = dir.path().join("npy");
        std::fs::create_dir_all(&npy_dir).unwrap();
        let ids64: Vec<f64> = ids().iter().map(|&v| f64::from(v)).collect();
        std::fs::write(npy_dir.join("image_id.npy"), npy::write_f64(&[N], &ids64)).unwrap();
        std::fs::write(npy_dir.join("clip_tokens.npy"), npy::write_f32(&clip, &values(&clip))).unwrap();
        std::fs::write(npy_dir.join("lowlevel.npy"), npy::write_f32(&low, &values(&low))).unwrap();
        std::fs::write(npy_dir.join("convnext.npy"), npy::write_f32(&cnx, &values(&cnx))).unwrap();
        std::fs::write(npy_dir.join("convnext_aug.npy"), npy::write_f32(&cnx_aug, &values(&cnx_aug))).unwrap();
        check(&npy_dir);

        // safetensors: ids as int64, tokens as float16 (as a bigG export may hold them).
        let id_bytes: Vec<u8> = ids().iter().flat_map(|&v| (v as i64).to_le_bytes()).collect();
        let clip_bytes: Vec<u8> = values(&clip).iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
        let low_bytes: Vec<u8> = values(&low).iter().flat_map(|v| v.to_le_bytes()).collect();
        let f32_bytes = |shape: &[usize]| values(shape).iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        let (cnx_bytes, cnx_aug_bytes) = (f32_bytes(&cnx), f32_bytes(&cnx_aug));
        use safetensors::{Dtype, tensor::TensorView};
        let tensors = [
            ("image_id", TensorView::new(Dtype::I64, vec![N], &id_bytes).unwrap()),
            ("clip_tokens", TensorView::new(Dtype::F16, clip.to_vec(), &clip_bytes).unwrap()),
            ("lowlevel", TensorView::new(Dtype::F32, low.to_vec(), &low_bytes).unwrap()),
            ("convnext", TensorView::new(Dtype::F32, cnx.to_vec(), &cnx_bytes).unwrap()),
            ("convnext_aug", TensorView::new(Dtype::F32, cnx_aug.to_vec(), &cnx_aug_bytes).unwrap()),
        ];
        let st = dir.path().join("targets.safetensors");
        safetensors::serialize_to_file(tensors, None, &st).unwrap();
        check(&st);

        let h5 = dir.path().join("targets.h5");
        let file = hdf5::File::create(&h5).unwrap();
        // int64 ids, as tools/nsd_targets.py writes them.
        let ids_i64: Vec<i64> = ids().iter().map(|&v| v as i64).collect();
        file.create_dataset("image_id", &[N], &ids_i64).unwrap();
        file.create_dataset("clip_tokens", &clip, &values(&clip)).unwrap();
        file.create_dataset("lowlevel", &low, &values(&low)).unwrap();
        file.create_dataset("convnext", &cnx, &values(&cnx)).unwrap();
        file.create_dataset("convnext_aug", &cnx_aug, &values(&cnx_aug)).unwrap();
        file.set_attr_i64("rows_done", N as i64).unwrap();
        file.set_attr_i64("convnext_rows_done", N as i64 - 1).unwrap();
        drop(file);
        // An unfinished ConvNeXt pass: its count is short, the last row is zeros.
        let e = open(&h5).unwrap_err().to_string();
        assert!(e.contains("targets.h5") && e.contains(&format!("`convnext_rows_done` = {} of {N}", N - 1)), "{e}");
        hdf5::File::open_rw(&h5).unwrap().set_attr_i64("convnext_rows_done", N as i64).unwrap();
        check(&h5);

        // The teacher's two arrays come together, with matching shapes.
        std::fs::remove_file(npy_dir.join("convnext_aug.npy")).unwrap();
        let err = open(&npy_dir).unwrap_err().to_string();
        assert!(err.contains("`convnext` and `convnext_aug`"), "{err}");
        std::fs::write(npy_dir.join("convnext_aug.npy"), npy::write_f32(&[N, 2, 3, 3], &values(&[N, 2, 3, 3])))
            .unwrap();
        let err = open(&npy_dir).unwrap_err().to_string();
        assert!(err.contains("`convnext_aug` has shape"), "{err}");
        // Without either, the targets carry no teacher (its term is then off in training).
        std::fs::remove_file(npy_dir.join("convnext_aug.npy")).unwrap();
        std::fs::remove_file(npy_dir.join("convnext.npy")).unwrap();
        let plain = open(&npy_dir).unwrap();
        assert_eq!((plain.shapes.teacher, plain.shapes.teacher_augs), (None, 0));
        assert!(plain.select(&[(150, true)]).unwrap().teacher.is_empty());

        // A cut-off .npy is named, not read past its end.
        let bytes = std::fs::read(npy_dir.join("clip_tokens.npy")).unwrap();
        std::fs::write(npy_dir.join("clip_tokens.npy"), &bytes[..bytes.len() - 4]).unwrap();
        let err = open(&npy_dir).unwrap_err().to_string();
        assert!(err.contains("clip_tokens.npy") && err.contains("truncated"), "{err}");
    }
}
