//! The MindEye1 and Mind Reader objectives and gradients computed in float64 against the
//! references' float64 re-runs (`total_loss_f64`, `lowlevel_loss_f64`, `grads_f64`): the clean
//! check of the arithmetic, free of float32 accumulation noise. Its own test process because it
//! switches the device's default float type to float64.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, IntDType};
use common::families::{
    ME1, MR, MR_LOSSES, compare_named_grads, gradient_scale, lowlevel_objective, me1_objective, mr_objective,
};
use common::{assert_close_scalar, load_json, load_safetensors};

type AD = Autodiff<Flex>;

/// float64 against float64, both rounded to float32 on the way out (measured worst 1.2e-7).
const RTOL: f32 = 1e-6;
/// MindEye1's objective runs through the diffusion prior, whose schedule coefficients and rotary
/// tables are float32 constants on every backend (measured worst 2.3e-6).
const RTOL_PRIOR: f32 = 1e-5;

#[test]
fn mindeye1_and_mind_reader_gradients_match_the_float64_references_in_float64() {
    burn::tensor::set_default_dtypes::<AD>(&Default::default(), DType::F64, IntDType::I64).unwrap();

    let tl = load_safetensors(ME1, "total_loss_f64.safetensors");
    let json = load_json(ME1, "total_loss.json");
    for phase in ["bimixco", "softclip"] {
        let got = me1_objective::<AD>(phase);
        assert_close_scalar(
            &format!("{phase} total (f64)"),
            got.total,
            json[phase]["f64"]["total"].as_f64().unwrap(),
            2e-7,
        );
        let prefix = format!("{phase}.grad.");
        let compared = compare_named_grads(&format!("{phase} f64"), &got.grads, &tl, &prefix, RTOL_PRIOR, 0.0);
        common::assert_every_gradient_compared(ME1, "total_loss_f64.safetensors", &prefix, &compared);
    }

    let r = load_safetensors(ME1, "lowlevel_loss_f64.safetensors");
    let (_, _, total, grads) = lowlevel_objective::<AD>();
    let want = load_json(ME1, "lowlevel_loss.json")["f64"]["total"].as_f64().unwrap();
    assert_close_scalar("low-level total (f64)", total, want, 2e-7);
    let floor = 1e-3 * gradient_scale(&r, "grad.");
    let compared = compare_named_grads("low-level f64", &grads, &r, "grad.", RTOL, floor);
    common::assert_every_gradient_compared(ME1, "lowlevel_loss_f64.safetensors", "grad.", &compared);

    let g = load_safetensors(MR, "grads_f64.safetensors");
    let json = load_json(MR, "grads.json");
    for (name, loss) in MR_LOSSES {
        let (value, grads) = mr_objective::<AD>(loss);
        assert_close_scalar(&format!("{name} (f64)"), value, json[name]["float64"].as_f64().unwrap(), 2e-7);
        let prefix = format!("{name}.grad.");
        let compared = compare_named_grads(&format!("{name} f64"), &grads, &g, &prefix, RTOL, 0.0);
        common::assert_every_gradient_compared(MR, "grads_f64.safetensors", &prefix, &compared);
    }
}
