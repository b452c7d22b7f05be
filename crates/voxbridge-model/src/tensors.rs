//! Host-side named tensors read from checkpoint bytes (PyTorch `.pth` or `.safetensors`), and
//! the conversions that turn them into burn parameters.
//!
//! The model crate does no IO: callers read the bytes (file or object store) and hand them here.
//! Every tensor is kept as row-major `f32` with its PyTorch shape; layout changes (the
//! `nn.Linear` transpose) happen in [`linear_weight`] where the parameter is built.

use std::collections::BTreeMap;
use std::io::{Cursor, Write};
use std::path::Path;

use burn::module::Param;
use burn::tensor::{Tensor, TensorData, backend::Backend};

/// Why a checkpoint could not be read or did not fit the model.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{source_name}: not a readable {format} file: {message}")]
    Format { source_name: String, format: &'static str, message: String },
    #[error("{source_name}: missing tensor `{key}`")]
    Missing { source_name: String, key: String },
    #[error("{source_name}: tensor `{key}` has shape {found:?}, expected {expected:?}")]
    Shape { source_name: String, key: String, found: Vec<usize>, expected: Vec<usize> },
    #[error("{source_name}: tensor `{key}`: {message}")]
    Tensor { source_name: String, key: String, message: String },
    #[error("{source_name}: {message}")]
    Architecture { source_name: String, message: String },
}

/// One tensor on the host: PyTorch shape, row-major `f32` values.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    /// Into a burn tensor of rank `D` with the same shape.
    pub fn to_tensor<B: Backend, const D: usize>(&self, device: &B::Device) -> Tensor<B, D> {
        assert_eq!(self.shape.len(), D, "rank mismatch building a tensor");
        Tensor::from_data(TensorData::new(self.data.clone(), self.shape.clone()), device)
    }

    /// A NumPy `.npy` file's bytes (format 1.0–3.0, C order, little-endian float32 or float64).
    pub fn from_npy(bytes: &[u8], source_name: &str) -> Result<Self, LoadError> {
        let bad = |message: String| LoadError::Format { source_name: source_name.to_string(), format: "npy", message };
        let array = voxbridge_arrays::npy::parse(bytes).map_err(bad)?;
        if !matches!(array.descr.as_str(), "<f4" | "<f8") {
            return Err(bad("dtype must be little-endian float32 ('<f4') or float64 ('<f8')".into()));
        }
        Ok(HostTensor { shape: array.shape, data: array.values.into_iter().map(|v| v as f32).collect() })
    }

    /// From a burn tensor (any float dtype), read back to the host.
    pub fn from_tensor<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Self {
        let shape = tensor.dims().to_vec();
        let data = tensor.into_data().convert::<f32>().to_vec::<f32>().expect("f32 after convert");
        Self { shape, data }
    }
}

/// Named tensors from one checkpoint, with the name of where they came from for error messages.
#[derive(Debug, Clone, Default)]
pub struct TensorMap {
    source_name: String,
    tensors: BTreeMap<String, HostTensor>,
}

impl TensorMap {
    pub fn new(source_name: impl Into<String>) -> Self {
        Self { source_name: source_name.into(), tensors: BTreeMap::new() }
    }

    /// Parse a `.safetensors` file's bytes. Float and integer dtypes are converted to `f32`.
    pub fn from_safetensors(bytes: &[u8], source_name: &str) -> Result<Self, LoadError> {
        let format_err = |message: String| LoadError::Format {
            source_name: source_name.to_string(),
            format: "safetensors",
            message,
        };
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format_err(e.to_string()))?;
        let mut map = Self::new(source_name);
        for (name, view) in st.tensors() {
            let data = voxbridge_arrays::safetensors_f32(view.dtype(), view.data()).map_err(|message| {
                LoadError::Tensor { source_name: source_name.to_string(), key: name.clone(), message }
            })?;
            map.insert(name, HostTensor::new(view.shape().to_vec(), data));
        }
        Ok(map)
    }

    /// Read a PyTorch `torch.save` file (zip or legacy pickle) through burn-store's reader.
    /// `top_level_key` selects a nested dict, e.g. `model_state_dict` in MindEye2's `last.pth`.
    pub fn from_pytorch_file(path: &Path, top_level_key: Option<&str>) -> Result<Self, LoadError> {
        let source_name = path.display().to_string();
        let reader = match top_level_key {
            Some(key) => burn_store::pytorch::PytorchReader::with_top_level_key(path, key),
            None => burn_store::pytorch::PytorchReader::new(path),
        }
        .map_err(|e| LoadError::Format {
            source_name: source_name.clone(),
            format: "PyTorch",
            message: e.to_string(),
        })?;
        Self::from_pytorch_reader(reader, &source_name)
    }

    /// The same from bytes (e.g. fetched from object storage). burn-store opens the zip
    /// container only from a path, so zip bytes are spilled to a private temporary file first.
    pub fn from_pytorch(bytes: &[u8], top_level_key: Option<&str>, source_name: &str) -> Result<Self, LoadError> {
        let format_err =
            |message: String| LoadError::Format { source_name: source_name.to_string(), format: "PyTorch", message };
        if !bytes.starts_with(b"PK\x03\x04") {
            let reader = burn_store::pytorch::PytorchReader::from_reader(Cursor::new(bytes), top_level_key)
                .map_err(|e| format_err(e.to_string()))?;
            return Self::from_pytorch_reader(reader, source_name);
        }
        let spill = spill(bytes).map_err(|e| format_err(format!("spilling to a temporary file: {e}")))?;
        let mut map = Self::from_pytorch_file(spill.path(), top_level_key).map_err(|e| match e {
            LoadError::Format { format, message, .. } => {
                LoadError::Format { source_name: source_name.to_string(), format, message }
            }
            other => other,
        })?;
        map.source_name = source_name.to_string();
        Ok(map)
    }

    fn from_pytorch_reader(reader: burn_store::pytorch::PytorchReader, source_name: &str) -> Result<Self, LoadError> {
        let mut map = Self::new(source_name);
        for (name, snapshot) in reader.into_tensors() {
            let tensor_err = |message: String| LoadError::Tensor {
                source_name: source_name.to_string(),
                key: name.clone(),
                message,
            };
            let data = snapshot.to_data().map_err(|e| tensor_err(format!("{e:?}")))?;
            let shape = data.shape.to_vec();
            let values = data.convert::<f32>().to_vec::<f32>().map_err(|e| tensor_err(format!("{e:?}")))?;
            map.insert(name, HostTensor::new(shape, values));
        }
        Ok(map)
    }

    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    pub fn insert(&mut self, key: impl Into<String>, tensor: HostTensor) {
        self.tensors.insert(key.into(), tensor);
    }

    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &HostTensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The tensor named `key`, or an error naming the key and the source.
    pub fn get(&self, key: &str) -> Result<&HostTensor, LoadError> {
        self.tensors
            .get(key)
            .ok_or_else(|| LoadError::Missing { source_name: self.source_name.clone(), key: key.to_string() })
    }

    /// The tensor named `key`, checked to have exactly `expected` shape.
    pub fn get_shaped(&self, key: &str, expected: &[usize]) -> Result<&HostTensor, LoadError> {
        let t = self.get(key)?;
        if t.shape != expected {
            return Err(LoadError::Shape {
                source_name: self.source_name.clone(),
                key: key.to_string(),
                found: t.shape.clone(),
                expected: expected.to_vec(),
            });
        }
        Ok(t)
    }

    /// A float parameter of rank `D` from `key`, checked against `expected` (PyTorch layout).
    pub fn param<B: Backend, const D: usize>(
        &self,
        key: &str,
        expected: [usize; D],
        device: &B::Device,
    ) -> Result<Param<Tensor<B, D>>, LoadError> {
        Ok(Param::from_tensor(self.get_shaped(key, &expected)?.to_tensor(device)))
    }

    /// An `nn.Linear` weight stored `[out, in]` in PyTorch, as burn's `[in, out]`.
    pub fn linear_weight<B: Backend>(
        &self,
        key: &str,
        d_in: usize,
        d_out: usize,
        device: &B::Device,
    ) -> Result<Param<Tensor<B, 2>>, LoadError> {
        let t = self.get_shaped(key, &[d_out, d_in])?;
        Ok(Param::from_tensor(t.to_tensor::<B, 2>(device).transpose()))
    }
}

/// `bytes` in a temporary file, removed when the handle drops (for readers that need a path).
fn spill(bytes: &[u8]) -> std::io::Result<tempfile::NamedTempFile> {
    let mut file = tempfile::Builder::new().prefix("voxbridge-").suffix(".pth").tempfile()?;
    file.write_all(bytes)?;
    file.flush()?;
    Ok(file)
}
