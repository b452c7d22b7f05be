//! Shared helpers for the parity tests against `../shared/reference/` (tensors computed with the
//! original PyTorch code). Tolerance convention: `max|a − b| ≤ rtol · max(max|b|, floor)`.
#![allow(dead_code)]

use std::path::PathBuf;

use voxbridge_model::tensors::{HostTensor, TensorMap};

/// `shared/reference/<name>`, found from the workspace root (`VOXBRIDGE_REFERENCE` overrides).
pub fn reference_dir(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("VOXBRIDGE_REFERENCE") {
        return PathBuf::from(dir).join(name);
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [manifest.join("../../../shared/reference"), manifest.join("../../shared/reference")];
    for c in &candidates {
        if c.join(name).is_dir() {
            return c.join(name);
        }
    }
    panic!("reference folder {name} not found (tried {candidates:?}); set VOXBRIDGE_REFERENCE");
}

pub fn load_safetensors(dir: &str, file: &str) -> TensorMap {
    let path = reference_dir(dir).join(file);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    TensorMap::from_safetensors(&bytes, &path.display().to_string()).unwrap()
}

pub fn load_json(dir: &str, file: &str) -> serde_json::Value {
    let path = reference_dir(dir).join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Asserts `actual` equals `expected` in shape and within `rtol` of the reference's scale.
pub fn assert_close(what: &str, actual: &HostTensor, expected: &HostTensor, rtol: f32) {
    assert_eq!(actual.shape, expected.shape, "{what}: shape");
    let scale = expected.data.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let (mut worst, mut at) = (0f32, 0usize);
    for (i, (a, b)) in actual.data.iter().zip(&expected.data).enumerate() {
        let d = (a - b).abs();
        if d > worst || d.is_nan() {
            worst = d;
            at = i;
        }
    }
    assert!(
        worst <= rtol * scale,
        "{what}: max |diff| {worst:e} at flat index {at} (got {}, want {}) exceeds {rtol:e} x scale {scale:e}",
        actual.data[at],
        expected.data[at]
    );
}

/// Scalar version: `|a − b| ≤ rtol · |b|`.
pub fn assert_close_scalar(what: &str, actual: f64, expected: f64, rtol: f64) {
    assert!(
        (actual - expected).abs() <= rtol * expected.abs().max(1e-12),
        "{what}: got {actual}, want {expected} (rtol {rtol:e})"
    );
}
