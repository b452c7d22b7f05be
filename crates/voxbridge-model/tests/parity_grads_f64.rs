//! SoftCLIP gradients computed in float64 against `grads_softclip_f64.safetensors`: the
//! mathematically clean reference (PyTorch's float32 LayerNorm(1) backward is noisy, and float32
//! accumulation limits agreement on gradients that are sums of cancelling terms). This file is its
//! own test process because it switches the device's default float type to float64.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, IntDType};
use common::load_safetensors;
use common::tiny::{DIR, compare_grads, float64_tolerance, softclip_grads};

#[test]
fn softclip_gradients_match_the_float64_reference_in_float64() {
    let grads = {
        burn::tensor::set_default_dtypes::<Autodiff<Flex>>(&Default::default(), DType::F64, IntDType::I64).unwrap();
        softclip_grads::<Autodiff<Flex>>()
    };
    let reference = load_safetensors(DIR, "grads_softclip_f64.safetensors");
    let compared = compare_grads("f64", grads, &reference, float64_tolerance);
    common::assert_every_gradient_compared(DIR, "grads_softclip_f64.safetensors", "", &compared);
}
