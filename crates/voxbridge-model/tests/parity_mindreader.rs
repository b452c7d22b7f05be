//! Parity of the Mind Reader family with the original code (sklin93/mind-reader `fmri_clip_res`),
//! against `tests/reference/mindreader-tiny`: the mapper and every hooked intermediate, the target
//! processing, each loss, every parameter's gradient for the three training losses, and the
//! `sim_eval` retrieval counts. `--nocapture` prints the worst errors.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::tensor::Tensor;
use common::families::{MR, MR_LOSSES, compare_named_grads, host, mr_config, mr_model, mr_objective, tensor};
use common::{assert_close, assert_close_scalar, load_json, load_safetensors, reference_dir};
use voxbridge_model::mindreader::{
    MindReader, MindReaderConfig, MindReaderLoss, contrastive_loss, mse_cos_loss, pad_voxels, prepare_target,
};
use voxbridge_model::tensors::{HostTensor, TensorMap};

type B = Flex;
type AD = Autodiff<Flex>;

const REF: &str = MR;
const RTOL: f32 = 1e-5;

fn check(what: &str, actual: &HostTensor, expected: &HostTensor, rtol: f32) {
    let scale = expected.data.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = actual.data.iter().zip(&expected.data).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("{what:<48} worst rel err {:.3e}", worst / scale);
    assert_close(what, actual, expected, rtol);
}

/// The tiny configuration, checked against `config.json`.
fn tiny_config() -> MindReaderConfig {
    let config = mr_config();
    assert_eq!(
        (config.signal_len, config.hidden, config.fc_hidden, config.clip_dim, config.resnet_blocks),
        (64, 8, 12, 16, 4)
    );
    let json = load_json(REF, "config.json");
    assert_eq!(config.left_pad() as u64, json["input"]["left_pad"].as_u64().unwrap());
    assert_eq!(config.param_counts().last().unwrap().1, json["num_params"].as_u64().unwrap());
    config
}

fn model<B: burn::tensor::backend::Backend>() -> MindReader<B> {
    mr_model()
}

#[test]
fn model_pth_holds_the_safetensors_weights() {
    let pth = TensorMap::from_pytorch_file(&reference_dir(REF).join("model.pth"), None).unwrap();
    for (key, want) in load_safetensors(REF, "model.safetensors").iter() {
        assert_eq!(pth.get(key).unwrap(), want, "{key}");
    }
}

#[test]
fn padding_and_target_processing_match() {
    let inputs = load_safetensors(REF, "inputs.safetensors");
    let config = tiny_config();
    let fmri = inputs.get("fmri").unwrap();
    let (left, v) = (config.left_pad(), config.voxels);
    for row in fmri.data.chunks(config.signal_len) {
        assert_eq!(pad_voxels(&row[left..left + v], &config), row.to_vec());
    }
    let raw = inputs.get("clip_raw").unwrap();
    let prepared: Vec<f32> = raw.data.chunks(16).flat_map(|row| prepare_target(row, 1.5)).collect();
    check("clip_img", &HostTensor::new(vec![6, 16], prepared), inputs.get("clip_img").unwrap(), 1e-6);
}

#[test]
fn the_mapper_and_its_intermediates_match() {
    let inputs = load_safetensors(REF, "inputs.safetensors");
    let outputs = load_safetensors(REF, "outputs.safetensors");
    let trace = model::<B>().trace(tensor::<B, 2>(&inputs, "fmri"));
    check("encoder.0", &host(trace.stem), outputs.get("encoder.0").unwrap(), RTOL);
    for (i, (branch, out)) in trace.blocks.into_iter().enumerate() {
        let k = i + 1;
        check(
            &format!("encoder.{k}.net_out"),
            &host(branch),
            outputs.get(&format!("encoder.{k}.net_out")).unwrap(),
            RTOL,
        );
        check(&format!("encoder.{k}"), &host(out), outputs.get(&format!("encoder.{k}")).unwrap(), RTOL);
    }
    check("fc_in", &host(trace.encoded.clone().swap_dims(1, 2)), outputs.get("fc_in").unwrap(), RTOL);
    check("encoder.5", &host(trace.encoded), outputs.get("encoder.5").unwrap(), RTOL);
    check("fc_out", &host(trace.fc_out), outputs.get("fc_out").unwrap(), RTOL);
    check("y_pred", &host(trace.y_pred), outputs.get("y_pred").unwrap(), RTOL);
}

#[test]
fn every_loss_matches() {
    let inputs = load_safetensors(REF, "inputs.safetensors");
    let json = load_json(REF, "losses.json");
    let pred = model::<B>().forward(tensor::<B, 2>(&inputs, "fmri"));
    let y = tensor::<B, 2>(&inputs, "clip_img");
    let value = |t: Tensor<B, 1>| t.into_scalar() as f64;
    let want = |key: &str| json[key].as_f64().unwrap_or_else(|| panic!("losses.json: {key}"));
    let cases: [(&str, Tensor<B, 1>); 9] = [
        ("mse_cos (cos_weight 0.6, training loss)", MindReaderLoss::released().compute(pred.clone(), y.clone())),
        ("mse_cos cos_weight_override=0.5", mse_cos_loss(pred.clone(), y.clone(), 0.5)),
        ("mse_cos cos_weight_override=1.0", mse_cos_loss(pred.clone(), y.clone(), 1.0)),
        (
            "contrastive via forward (temperature 0.5, lam = cos_weight 0.6)",
            MindReaderLoss::Contrastive { temperature: 0.5, lam: 0.6 }.compute(pred.clone(), y.clone()),
        ),
        (
            "contrastive via forward, temperature=0 (mean negative cosine)",
            contrastive_loss(pred.clone(), y.clone(), 0.0, 0.6),
        ),
        ("contrastive_loss()(y_pred, y, 0.5) (lam 0.5 default)", contrastive_loss(pred.clone(), y.clone(), 0.5, 0.5)),
        ("contrastive_loss()(y_pred, y, 0.1, 0.5)", contrastive_loss(pred.clone(), y.clone(), 0.1, 0.5)),
        (
            "mse_cos_contrastive via forward (temperature 0.5, cos_weight 0.6, contra_p 0.5)",
            MindReaderLoss::MseCosContrastive { temperature: 0.5, cos_weight: 0.6 }.compute(pred.clone(), y.clone()),
        ),
        (
            "mse_cos_contrastive via forward, temperature 0.2",
            MindReaderLoss::MseCosContrastive { temperature: 0.2, cos_weight: 0.6 }.compute(pred.clone(), y.clone()),
        ),
    ];
    for (key, loss) in cases {
        let (got, expected) = (value(loss), want(key));
        println!("{key:<80} rel err {:.3e}", (got - expected).abs() / expected.abs());
        assert_close_scalar(key, got, expected, 1e-5);
    }
}

#[test]
fn every_gradient_of_the_three_training_losses_matches() {
    let grads_ref = load_safetensors(REF, "grads.safetensors");
    let json = load_json(REF, "grads.json");
    for (name, loss) in MR_LOSSES {
        let (value, grads) = mr_objective::<AD>(loss);
        assert_close_scalar(name, value, json[name]["float32"].as_f64().unwrap(), 1e-5);
        let prefix = format!("{name}.grad.");
        let compared = compare_named_grads(name, &grads, &grads_ref, &prefix, RTOL, 0.0);
        common::assert_every_gradient_compared(REF, "grads.safetensors", &prefix, &compared);
    }
}

#[test]
fn sim_eval_counts_match_the_batch_retrieval() {
    let inputs = load_safetensors(REF, "inputs.safetensors");
    let eval = load_safetensors(REF, "eval.safetensors");
    let json = load_json(REF, "losses.json");
    let ids: Vec<u32> = inputs.get("nsdId").unwrap().data.iter().map(|&v| v as u32).collect();
    let targets = inputs.get("clip_img").unwrap().data.clone();
    let preds = host(model::<B>().forward(tensor::<B, 2>(&inputs, "fmri"))).data;
    let oracle = eval.get("oracle.pred").unwrap().data.clone();
    for (preds, w, key) in [
        (&preds, 1.0, "print_eval cos_weight 1.0"),
        (&preds, 0.5, "print_eval cos_weight 0.5"),
        (&oracle, 1.0, "print_eval oracle preds (eval.safetensors oracle.pred), cos_weight 1.0"),
    ] {
        let (brain_to_image, image_to_brain) =
            voxbridge_eval::mind_reader_batch_retrieval(preds, &targets, &ids, 16, 6, w, 0);
        let counts = &json[key];
        let c1 = counts["c1 (argmax over axis 0: closest clip for each pred)"].as_u64().unwrap() as f64;
        let c2 = counts["c2 (argmax over axis 1: closest pred for each clip)"].as_u64().unwrap() as f64;
        assert_eq!((brain_to_image * 6.0).round(), c1, "{key}: c1");
        assert_eq!((image_to_brain * 6.0).round(), c2, "{key}: c2");
    }
}

#[test]
fn released_counts_equal_param_counts_full_json() {
    let json = load_json(REF, "param_counts_full.json");
    let want = &json["mindreader_fmri_clip_res_subj01"]["counts"];
    let counts: std::collections::BTreeMap<String, u64> =
        MindReaderConfig::released().param_counts().into_iter().collect();
    assert_eq!(counts["encoder"], want["encoder (total)"].as_u64().unwrap());
    assert_eq!(counts["fc"], want["fc (total)"].as_u64().unwrap());
    assert_eq!(counts["total"], want["total"].as_u64().unwrap());
}
