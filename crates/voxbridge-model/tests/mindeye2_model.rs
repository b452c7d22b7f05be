//! The whole model: architecture inference from MindEye2 checkpoints, parameter counts from the
//! config, a full forward pass, and the Train.ipynb objective's gradients through ridge and
//! backbone (the prior's own gradients are checked in parity_prior.rs).

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use common::tiny::{DIR, GradCollector, assert_grad_close, backbone_keys, float32_tolerance, tiny_config, voxels};
use common::{assert_close, assert_close_scalar, load_json, load_safetensors};
use voxbridge_model::losses::{LossTerms, LossWeights, l2_normalize, soft_clip_loss};
use voxbridge_model::prior::{CondKeep, PriorConfig};
use voxbridge_model::tensors::{HostTensor, LoadError, TensorMap};
use voxbridge_model::{MindEye2, MindEye2Config, NSD_VOXELS};

#[test]
fn architecture_is_inferred_from_the_reference_checkpoints() {
    let config = MindEye2Config::infer(&load_safetensors(DIR, "model.safetensors")).unwrap();
    let mut want = tiny_config();
    let cfg = load_json(DIR, "config.json");
    want.prior = Some(PriorConfig::mindeye2(16, 4, 2, 8));
    assert_eq!(config, want);
    assert_eq!(config.prior.as_ref().unwrap().heads, cfg["prior_heads"].as_u64().unwrap() as usize);

    let blurry = MindEye2Config::infer(&load_safetensors("mindeye2-tiny-blurry", "model.safetensors")).unwrap();
    assert!(blurry.low_level.is_some(), "the blurry checkpoint has the low-level branch");
    assert_eq!(blurry.voxels, vec![37, 29, 41]);
}

#[test]
fn param_counts_match_the_reference() {
    // Tiny: config.json counts model.parameters() (rotary freqs once, no buffers).
    let config = MindEye2Config::infer(&load_safetensors(DIR, "model.safetensors")).unwrap();
    let counts = config.param_counts();
    let want = load_json(DIR, "config.json")["num_params_main_model"].as_u64().unwrap();
    assert_eq!(counts.total().0, want);
    // burn's own count of the built model: everything but the (regenerated) rotary freqs.
    let model = MindEye2::<Flex>::init(&config, &Default::default());
    assert_eq!(model.num_params() as u64, counts.total().1);

    // Released sizes (param_counts_full.json).
    let full = load_json(DIR, "param_counts_full.json");
    let released = MindEye2Config::released(NSD_VOXELS.to_vec());
    let counts = released.param_counts();
    let pair = |section: &str, key: &str| {
        let v = &full[section][key];
        (v[0].as_u64().unwrap(), v[1].as_u64().unwrap())
    };
    assert_eq!(
        counts.total_for([0]),
        pair("full_h4096_blurry_subj1", "FULL fine-tune model, subject 1 (ridge+backbone+prior)")
    );
    assert_eq!(counts.total_for(1..8), pair("pretrain_excl_subj1_h4096_blurry", "total"));
    assert_eq!(counts.backbone_total(), pair("full_h4096_blurry_subj1", "backbone (total)").0);
    for (s, v) in counts.ridge.iter().enumerate() {
        assert_eq!(*v, full["ridge_per_subject_h4096"][format!("subj{}", s + 1)].as_u64().unwrap());
    }
    let mut low = MindEye2Config::released(vec![NSD_VOXELS[0]]);
    low.hidden = 1024;
    low.low_level = None;
    assert_eq!(low.param_counts().total(), pair("lowcompute_h1024_noblurry_subj1", "total"));
    let mut no_blur = MindEye2Config::released(vec![NSD_VOXELS[0]]);
    no_blur.low_level = None;
    assert_eq!(no_blur.param_counts().total(), pair("full_h4096_noblurry_subj1", "total"));
}

#[test]
fn a_shape_that_fits_no_architecture_names_the_key() {
    let weights = load_safetensors(DIR, "model.safetensors");

    let mut bad = weights.clone();
    bad.insert("backbone.backbone_linear.weight", HostTensor::new(vec![63, 32], vec![0.0; 63 * 32]));
    let err = MindEye2Config::infer(&bad).unwrap_err().to_string();
    assert!(err.contains("backbone.backbone_linear.weight") && err.contains("63"), "{err}");

    let mut bad = weights.clone();
    bad.insert("ridge.linears.1.weight", HostTensor::new(vec![31, 29], vec![0.0; 31 * 29]));
    let err = MindEye2Config::infer(&bad).unwrap_err().to_string();
    assert!(err.contains("ridge.linears.1.weight"), "{err}");

    let mut bad = weights.clone();
    bad.insert("backbone.extra_head.weight", HostTensor::new(vec![2], vec![0.0; 2]));
    let err = MindEye2Config::infer(&bad).unwrap_err().to_string();
    assert!(err.contains("backbone.extra_head.weight"), "{err}");

    let mut bad = weights;
    bad.insert("optimizer.step", HostTensor::new(vec![1], vec![0.0]));
    assert!(matches!(MindEye2Config::infer(&bad), Err(LoadError::Architecture { .. })));
}

#[test]
fn full_model_forward_matches_the_blurry_reference() {
    let weights = load_safetensors("mindeye2-tiny-blurry", "model.safetensors");
    let config = MindEye2Config::infer(&weights).unwrap();
    let device = Default::default();
    let model = MindEye2::<Flex>::from_tensors(&weights, &config, &device).unwrap();
    let inputs = load_safetensors(DIR, "inputs.safetensors");
    let outputs = load_safetensors(DIR, "outputs.safetensors");
    let blurry = load_safetensors("mindeye2-tiny-blurry", "outputs_blurry.safetensors");
    for s in 0..3 {
        let out = model.forward(s, voxels::<Flex>(&inputs, s, &device));
        let low = out.low_level.unwrap();
        let want = |m: &TensorMap, k: &str| m.get(&format!("subj{s}.{k}")).unwrap().clone();
        assert_close("clip_voxels", &HostTensor::from_tensor(out.clip_voxels), &want(&outputs, "clip_voxels"), 1e-5);
        assert_close(
            "blurry_latent",
            &HostTensor::from_tensor(low.blurry_latent),
            &want(&blurry, "blurry_latent"),
            1e-5,
        );
        assert_close("b_aux", &HostTensor::from_tensor(low.blurry_features), &want(&blurry, "b_aux"), 1e-5);
    }
}

#[test]
fn total_objective_and_its_ridge_and_backbone_gradients_match() {
    type B = Autodiff<Flex>;
    let device = Default::default();
    let weights = load_safetensors(DIR, "model.safetensors");
    let config = MindEye2Config::infer(&weights).unwrap();
    let mut model = MindEye2::<B>::from_tensors(&weights, &config, &device).unwrap();
    model = model.without_dropout();
    let reference = load_safetensors(DIR, "total_loss.safetensors");
    let prior_ref = load_safetensors(DIR, "prior.safetensors");
    let json = load_json(DIR, "total_loss.json");

    let inputs = load_safetensors(DIR, "inputs.safetensors");
    let out = model.forward(0, voxels::<B>(&inputs, 0, &device));
    let target = reference.get("input.clip_target").unwrap().to_tensor::<B, 3>(&device);
    let noise = prior_ref.get("loss.noise").unwrap().to_tensor::<B, 3>(&device);
    let t: Vec<usize> = prior_ref.get("loss.t").unwrap().data.iter().map(|&v| v as usize).collect();
    let prior = model.prior.as_ref().unwrap();
    let (_, prior_loss) = prior.p_losses(target.clone(), &t, out.backbone.clone(), noise, &CondKeep::all(5));
    let clip = soft_clip_loss(
        l2_normalize(out.clip_voxels.flatten::<2>(1, 2)),
        l2_normalize(target.flatten::<2>(1, 2)),
        0.006,
    );
    let terms = LossTerms { prior: Some(prior_loss.clone()), clip: clip.clone(), blur_l1: None, blur_cont: None };
    let total = terms.total(&LossWeights::default());
    let scalar = |t: &burn::tensor::Tensor<B, 1>| HostTensor::from_tensor(t.clone()).data[0] as f64;
    assert_close_scalar("loss_prior", scalar(&prior_loss), json["loss_prior"].as_f64().unwrap(), 1e-5);
    assert_close_scalar("loss_clip", scalar(&clip), json["loss_clip_softclip_temp0.006"].as_f64().unwrap(), 1e-5);
    assert_close_scalar("total", scalar(&total), json["total"].as_f64().unwrap(), 1e-5);

    let grads = total.backward();
    let mut collect = GradCollector::<B> { grads: &grads, out: Vec::new() };
    model.ridge.visit(&mut collect);
    model.backbone.visit(&mut collect);
    let mut compared = std::collections::BTreeSet::new();
    for ((key, transposed), grad) in backbone_keys(&config).into_iter().zip(collect.out) {
        let Ok(want) = reference.get(&format!("grad.{key}")) else { continue };
        let got = grad.unwrap_or_else(|| HostTensor::new(want.shape.clone(), vec![0.0; want.data.len()]));
        let got = if transposed { common::tiny::transpose(got) } else { got };
        // The LayerNorm(1)-affected entries at their float32 noise level (see float32_tolerance).
        assert_grad_close(&format!("grad {key}"), &got, want, float32_tolerance(&key));
        compared.insert(format!("grad.{key}"));
    }
    for prefix in ["grad.ridge.", "grad.backbone."] {
        let scope = compared.iter().filter(|k| k.starts_with(prefix)).cloned().collect();
        common::assert_every_gradient_compared(DIR, "total_loss.safetensors", prefix, &scope);
    }
}

#[test]
fn invalid_branch_configs_are_reported_not_panicked_on() {
    let mut config = MindEye2Config::released(vec![100]);
    config.prior.as_mut().unwrap().dim_head = 0;
    config.low_level.as_mut().unwrap().norm_num_groups = 7;
    let problems = config.problems();
    assert!(problems.iter().any(|p| p.starts_with("prior:")), "{problems:?}");
    assert!(problems.iter().any(|p| p.starts_with("low_level:")), "{problems:?}");
    assert!(MindEye2Config::released(vec![100]).problems().is_empty());
}

#[test]
fn fine_tuning_replaces_every_ridge_and_keeps_the_rest() {
    use voxbridge_model::RidgeBiasInit;
    let weights = load_safetensors(DIR, "model.safetensors");
    let config = MindEye2Config::infer(&weights).unwrap();
    let device = Default::default();
    let pretrained = || MindEye2::<Flex>::from_tensors(&weights, &config, &device).unwrap();
    let subject0_bias = weights.get("ridge.linears.0.bias").unwrap().clone();

    let copied = pretrained().for_new_subject(50, RidgeBiasInit::CopyFirstPretrainedSubject, &device);
    assert_eq!(copied.ridge.subjects(), 1);
    assert_eq!(copied.ridge.linear(0).unwrap().weight.dims(), [50, 32]);
    let bias = HostTensor::from_tensor(copied.ridge.linear(0).unwrap().bias.as_ref().unwrap().val());
    assert_eq!(bias, subject0_bias, "the released code keeps subject 0's bias");

    let fresh = pretrained().for_new_subject(50, RidgeBiasInit::Fresh, &device);
    let bias = HostTensor::from_tensor(fresh.ridge.linear(0).unwrap().bias.as_ref().unwrap().val());
    assert_ne!(bias, subject0_bias);
    assert!(bias.data.iter().all(|b| b.abs() <= 1.0 / 50f32.sqrt()), "PyTorch's U(±1/√fan_in)");

    // Backbone untouched: the same ridge output gives the same CLIP embedding.
    let x = burn::tensor::Tensor::<Flex, 2>::random([2, 32], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let a = HostTensor::from_tensor(pretrained().backbone.forward(x.clone()).clip_voxels);
    let b = HostTensor::from_tensor(fresh.backbone.forward(x).clip_voxels);
    assert_eq!(a, b);
    assert!(fresh.prior.is_some());
}
