//! Ridge + backbone + CLIP projector against `mindeye2-tiny` (forward outputs per subject, the
//! mixer blocks' raw outputs, and the SoftCLIP gradients of every parameter).

mod common;

use burn::backend::{Autodiff, Flex};
use burn::tensor::Tensor;
use common::tiny::{DIR, compare_grads, float32_tolerance, load, softclip_grads, tiny_config, voxels};
use common::{assert_close, load_safetensors};
use voxbridge_model::tensors::{HostTensor, TensorMap};
use voxbridge_model::{Backbone, BackboneMode};

fn check_forward(weights: &TensorMap, what: &str) {
    type B = Flex;
    let device = Default::default();
    let (ridge, backbone) = load::<B>(weights, &device);
    let inputs = load_safetensors(DIR, "inputs.safetensors");
    let outputs = load_safetensors(DIR, "outputs.safetensors");
    for s in 0..3 {
        let ridge_out = ridge.forward(s, voxels::<B>(&inputs, s, &device));
        let out = backbone.forward(ridge_out.clone());
        let want = |k: &str| outputs.get(&format!("subj{s}.{k}")).unwrap();
        let ridge_3d = HostTensor::from_tensor(ridge_out.clone().unsqueeze_dim::<3>(1));
        assert_close(&format!("{what} subj{s} ridge_out"), &ridge_3d, want("ridge_out"), 1e-5);
        assert_close(
            &format!("{what} subj{s} mixer_out"),
            &HostTensor::from_tensor(out.mixer_out),
            want("mixer_out"),
            1e-5,
        );
        assert_close(
            &format!("{what} subj{s} backbone"),
            &HostTensor::from_tensor(out.backbone),
            want("backbone"),
            1e-5,
        );
        assert_close(
            &format!("{what} subj{s} clip_voxels"),
            &HostTensor::from_tensor(out.clip_voxels),
            want("clip_voxels"),
            1e-5,
        );
        let (outs1, outs2) = backbone.mixer_trace(ridge_out);
        for (i, (o1, o2)) in outs1.into_iter().zip(outs2).enumerate() {
            let k1 = format!("mixer_blocks1.{i}.out");
            let k2 = format!("mixer_blocks2.{i}.out");
            assert_close(&format!("{what} subj{s} {k1}"), &HostTensor::from_tensor(o1), want(&k1), 1e-5);
            assert_close(&format!("{what} subj{s} {k2}"), &HostTensor::from_tensor(o2), want(&k2), 1e-5);
        }
    }
}

#[test]
fn forward_matches_reference_from_safetensors() {
    check_forward(&load_safetensors(DIR, "model.safetensors"), "safetensors");
}

#[test]
fn forward_matches_reference_from_pth() {
    let path = common::reference_dir(DIR).join("last.pth");
    let bytes = std::fs::read(&path).unwrap();
    let weights = TensorMap::from_pytorch(&bytes, Some("model_state_dict"), "last.pth").unwrap();
    check_forward(&weights, "pth");
}

#[test]
fn released_backbone_is_linear_in_the_ridge_output() {
    // spec §1.2: mixer_out − ridge_out is the same constant for every input.
    type B = Flex;
    let device = Default::default();
    let (_, backbone) = load::<B>(&load_safetensors(DIR, "model.safetensors"), &device);
    let a = Tensor::<B, 2>::random([3, 32], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let b = a.clone() * 3.0 + 1.0;
    let da = backbone.mixer(a.clone()) - a;
    let db = backbone.mixer(b.clone()) - b;
    let diff: f32 = (da - db).abs().max().into_scalar();
    assert!(diff < 1e-5, "mixer offset depends on the input: {diff}");
}

#[test]
fn corrected_residual_backbone_uses_the_mlps() {
    type B = Flex;
    let device = Default::default();
    let weights = load_safetensors(DIR, "model.safetensors");
    let mut config = tiny_config();
    let released = Backbone::<B>::from_tensors(&weights, "backbone.", &config, &device).unwrap();
    config.backbone_mode = BackboneMode::CorrectedResidual;
    let corrected = Backbone::<B>::from_tensors(&weights, "backbone.", &config, &device).unwrap();
    let x = Tensor::<B, 2>::random([4, 32], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let (block1_outs, _) = released.mixer_trace(x.clone());
    let gap: f32 = (corrected.mixer(x.clone()) - released.mixer(x)).abs().max().into_scalar();
    assert!(gap > 1e-3, "the corrected backbone ignored its MLPs (gap {gap})");
    assert!(!block1_outs.is_empty());
}

#[test]
fn softclip_gradients_match_the_float32_reference_in_float32() {
    let grads = softclip_grads::<Autodiff<Flex>>();
    let reference = load_safetensors(DIR, "grads_softclip.safetensors");
    let compared = compare_grads("f32", grads.clone(), &reference, float32_tolerance);
    common::assert_every_gradient_compared(DIR, "grads_softclip.safetensors", "", &compared);
    // The ridge gradient carries PyTorch's float32 noise (~1e-4 absolute on values ~10): the
    // README's suggested absolute tolerance.
    let npy = common::reference_dir(DIR).join("grad_ridge0_weight_softclip.npy");
    let want = HostTensor::from_npy(&std::fs::read(&npy).unwrap(), "grad_ridge0_weight_softclip.npy").unwrap();
    let got = grads.iter().find(|(k, _)| k == "ridge.linears.0.weight").unwrap().1.clone().unwrap();
    assert_eq!(got.shape, want.shape);
    let worst = got.data.iter().zip(&want.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 2e-4, "ridge gradient differs from PyTorch float32 by {worst}");
    let npy_compared = std::collections::BTreeSet::from([String::new()]);
    common::assert_every_gradient_compared(DIR, "grad_ridge0_weight_softclip.npy", "", &npy_compared);
}

#[test]
fn regenerated_torch_randn_matches_the_stored_inputs() {
    // inputs.safetensors: subj0 voxels are the first draw of torch.Generator().manual_seed(2024).
    let inputs = load_safetensors(DIR, "inputs.safetensors");
    let want = inputs.get("subj0.voxels").unwrap();
    let got = HostTensor::new(want.shape.clone(), common::torch_randn(2024, want.data.len()));
    assert_close("torch_randn(2024)", &got, want, 1e-5);
}
