//! Shared helpers for the parity tests against `tests/reference/` (tensors computed with the
//! original PyTorch code). Tolerance convention: `max|a − b| ≤ rtol · max(max|b|, floor)`.
#![allow(dead_code)]

pub mod families;
pub mod tiny;

use std::collections::BTreeSet;

use voxbridge_model::tensors::{HostTensor, TensorMap};

pub use voxbridge_e2e::reference_dir;

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

const F64_FAMILIES: &str =
    "parity_families_f64::mindeye1_and_mind_reader_gradients_match_the_float64_references_in_float64";
const MR_GRADS: &str = "parity_mindreader::every_gradient_of_the_three_training_losses_matches";

/// Every gradient the reference data holds, and the test that compares it: `(folder, file, key
/// prefix, test)`. `parity_gradient_coverage` checks that this list covers every gradient of every
/// reference file; each test checks that it compares every gradient of its scope.
pub const GRADIENT_CHECKS: [(&str, &str, &str, &str); 18] = [
    (
        "mindeye2-tiny",
        "grads_softclip.safetensors",
        "",
        "parity_backbone::softclip_gradients_match_the_float32_reference_in_float32",
    ),
    (
        "mindeye2-tiny",
        "grad_ridge0_weight_softclip.npy",
        "",
        "parity_backbone::softclip_gradients_match_the_float32_reference_in_float32",
    ),
    (
        "mindeye2-tiny",
        "grads_softclip_f64.safetensors",
        "",
        "parity_grads_f64::softclip_gradients_match_the_float64_reference_in_float64",
    ),
    (
        "mindeye2-tiny",
        "total_loss.safetensors",
        "grad.ridge.",
        "mindeye2_model::total_objective_and_its_ridge_and_backbone_gradients_match",
    ),
    (
        "mindeye2-tiny",
        "total_loss.safetensors",
        "grad.backbone.",
        "mindeye2_model::total_objective_and_its_ridge_and_backbone_gradients_match",
    ),
    (
        "mindeye2-tiny",
        "total_loss.safetensors",
        "grad.diffusion_prior.",
        "parity_prior::prior_gradients_of_the_training_objective",
    ),
    (
        "mindeye1-tiny",
        "total_loss.safetensors",
        "bimixco.grad.",
        "parity_mindeye1::the_bimixco_objective_and_every_gradient_match",
    ),
    (
        "mindeye1-tiny",
        "total_loss.safetensors",
        "softclip.grad.",
        "parity_mindeye1::the_softclip_objective_and_every_gradient_match",
    ),
    (
        "mindeye1-tiny",
        "lowlevel_loss.safetensors",
        "grad.",
        "parity_mindeye1::the_lowlevel_objective_and_every_gradient_match",
    ),
    ("mindeye1-tiny", "total_loss_f64.safetensors", "bimixco.grad.", F64_FAMILIES),
    ("mindeye1-tiny", "total_loss_f64.safetensors", "softclip.grad.", F64_FAMILIES),
    ("mindeye1-tiny", "lowlevel_loss_f64.safetensors", "grad.", F64_FAMILIES),
    ("mindreader-tiny", "grads.safetensors", "mse_cos.grad.", MR_GRADS),
    ("mindreader-tiny", "grads.safetensors", "contrastive.grad.", MR_GRADS),
    ("mindreader-tiny", "grads.safetensors", "mse_cos_contrastive.grad.", MR_GRADS),
    ("mindreader-tiny", "grads_f64.safetensors", "mse_cos.grad.", F64_FAMILIES),
    ("mindreader-tiny", "grads_f64.safetensors", "contrastive.grad.", F64_FAMILIES),
    ("mindreader-tiny", "grads_f64.safetensors", "mse_cos_contrastive.grad.", F64_FAMILIES),
];

/// The names of the gradients a reference file holds: every key of a file whose name starts with
/// `grad` but the loss values beside them (`*.loss`; an `.npy` holds one tensor, named `""`),
/// else the keys that start with `grad.` or contain `.grad.`. Other files hold none.
pub fn reference_gradient_names(dir: &str, file: &str) -> BTreeSet<String> {
    let all = file.starts_with("grad");
    if file.ends_with(".npy") {
        return if all { BTreeSet::from([String::new()]) } else { BTreeSet::new() };
    }
    if !file.ends_with(".safetensors") {
        return BTreeSet::new();
    }
    load_safetensors(dir, file)
        .keys()
        .filter(|k| if all { !k.ends_with(".loss") } else { k.starts_with("grad.") || k.contains(".grad.") })
        .map(str::to_string)
        .collect()
}

/// Asserts that `compared`, the keys of `dir/file` a test compared, are exactly the reference's
/// gradients that start with `prefix`; the message names each one left out.
#[track_caller]
pub fn assert_every_gradient_compared(dir: &str, file: &str, prefix: &str, compared: &BTreeSet<String>) {
    assert!(
        GRADIENT_CHECKS.iter().any(|&(d, f, p, _)| (d, f, p) == (dir, file, prefix)),
        "{dir}/{file} {prefix:?} is not listed in GRADIENT_CHECKS"
    );
    let want: BTreeSet<String> =
        reference_gradient_names(dir, file).into_iter().filter(|k| k.starts_with(prefix)).collect();
    let missing: Vec<&String> = want.difference(compared).collect();
    let extra: Vec<&String> = compared.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{dir}/{file}: reference gradients under {prefix:?} not compared: {missing:?}; compared but not in the \
         reference: {extra:?}"
    );
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

/// PyTorch's CPU `torch.randn(n, generator=torch.Generator().manual_seed(seed))` for float32,
/// `n ≥ 16` (mt19937 → 24-bit uniforms → Box–Muller in blocks of 16, the last 16 redrawn when
/// `n` is not a multiple of 16, as ATen's `normal_fill` does). Used for reference inputs the reference folder describes but does not
/// store. Transcendentals may differ from PyTorch's by an ulp; that is far inside 1e-5.
pub fn torch_randn(seed: u64, n: usize) -> Vec<f32> {
    assert!(n >= 16, "PyTorch takes another path below 16 values");
    let mut mt = [0u32; 624];
    mt[0] = seed as u32;
    for i in 1..624 {
        mt[i] = 1_812_433_253u32.wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_add(i as u32);
    }
    let mut index = 624;
    let mut next = move || {
        if index >= 624 {
            for i in 0..624 {
                let y = (mt[i] & 0x8000_0000) | (mt[(i + 1) % 624] & 0x7fff_ffff);
                mt[i] = mt[(i + 397) % 624] ^ (y >> 1) ^ if y & 1 == 1 { 0x9908_b0df } else { 0 };
            }
            index = 0;
        }
        let mut y = mt[index];
        index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    };
    let mut uniform = move || ((next() & 0x00ff_ffff) as f64 / (1u64 << 24) as f64) as f32;
    let box_muller = |block: &mut [f32]| {
        for j in 0..8 {
            let u1 = 1.0f32 - block[j];
            let u2 = block[j + 8];
            let radius = (-2.0f32 * u1.ln()).sqrt();
            let theta = (2.0 * std::f64::consts::PI * u2 as f64) as f32;
            block[j] = radius * theta.cos();
            block[j + 8] = radius * theta.sin();
        }
    };
    let mut data: Vec<f32> = (0..n).map(|_| uniform()).collect();
    for block in data.chunks_exact_mut(16) {
        box_muller(block);
    }
    if !n.is_multiple_of(16) {
        let tail = &mut data[n - 16..];
        tail.iter_mut().for_each(|x| *x = uniform());
        box_muller(tail);
    }
    data
}
