//! Parity of the MindEye1 family with the original code (MedARC-AI/fMRI-reconstruction-NSD),
//! against `tests/reference/mindeye1-tiny`: voxel2clip and its intermediates, the prior network
//! with MindEye1's image-embedding scale, the training objective of both phases (BiMixCo and
//! SoftCLIP) with every parameter's gradient, the low-level model and its objective, and the
//! checkpoints read from `last.pth` / `lowlevel_last.pth`. `--nocapture` prints the worst errors.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use common::families::{
    ME1, bools, compare_named_grads, gradient_scale, host, lowlevel_config, lowlevel_objective, me1_config, me1_model,
    me1_objective, tensor, usizes,
};
use common::{assert_close, assert_close_scalar, load_json, load_safetensors, reference_dir};
use voxbridge_model::losses::{MixcoDraw, mixco_nce, soft_clip_loss, soft_cont_loss};
use voxbridge_model::mindeye1::lowlevel::{Voxel2Sd, Voxel2SdConfig};
use voxbridge_model::mindeye1::{MindEye1, MindEye1Config, Voxel2Clip};
use voxbridge_model::prior::{CondKeep, PriorNetwork, timesteps_tensor};
use voxbridge_model::tensors::{HostTensor, TensorMap};

type B = Flex;
type AD = Autodiff<Flex>;

const REF: &str = ME1;
/// Single-pass outputs and float32 gradients, relative to the reference tensor's max |value|.
const RTOL: f32 = 1e-5;

fn model_map() -> TensorMap {
    load_safetensors(REF, "model.safetensors")
}

/// The reference's tiny architecture, read from its checkpoint.
fn tiny_config() -> MindEye1Config {
    let config = me1_config();
    assert_eq!((config.voxels, config.hidden, config.blocks), (37, 32, 2));
    assert_eq!((config.clip_tokens, config.clip_dim, config.projector_hidden), (5, 16, 24));
    let prior = config.prior.as_ref().unwrap();
    assert_eq!((prior.dim, prior.depth, prior.heads, prior.dim_head, prior.rotary_dim), (16, 2, 2, 8, 8));
    config
}

fn model<B: burn::tensor::backend::Backend>() -> MindEye1<B> {
    me1_model()
}

/// Prints and asserts `max|a − b| ≤ rtol · max|b|`.
fn check(what: &str, actual: &HostTensor, expected: &HostTensor, rtol: f32) {
    let scale = expected.data.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = actual.data.iter().zip(&expected.data).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("{what:<48} worst rel err {:.3e}", worst / scale);
    assert_close(what, actual, expected, rtol);
}

#[test]
fn the_architecture_is_inferred_from_last_pth_and_its_weights_equal_the_safetensors() {
    let path = reference_dir(REF).join("last.pth");
    let pth = TensorMap::from_pytorch_file(&path, Some("model_state_dict")).unwrap();
    assert_eq!(MindEye1Config::infer(&pth).unwrap(), tiny_config());
    let st = model_map();
    for (key, want) in st.iter() {
        assert_eq!(pth.get(key).unwrap(), want, "{key}");
    }
    let counts: std::collections::BTreeMap<String, u64> = tiny_config().param_counts().into_iter().collect();
    let json = load_json(REF, "config.json");
    assert_eq!(counts["voxel2clip"], json["num_params_voxel2clip"].as_u64().unwrap());
    assert_eq!(counts["net"], json["num_params_prior_net"].as_u64().unwrap());
    assert_eq!(counts["total"], json["num_params_diffusion_prior"].as_u64().unwrap());
}

#[test]
fn voxel2clip_and_its_intermediates_match() {
    let outputs = load_safetensors(REF, "outputs.safetensors");
    let voxels = tensor::<B, 2>(&load_safetensors(REF, "inputs.safetensors"), "voxels");
    let net: Voxel2Clip<B> = model::<B>().voxel2clip;
    let (lin0, blocks, lin1_in) = net.trunk(voxels.clone());
    check("v2c.lin0_out", &host(lin0), outputs.get("v2c.lin0_out").unwrap(), RTOL);
    for (i, out) in blocks.into_iter().enumerate() {
        check(&format!("v2c.mlp.{i}.out"), &host(out), outputs.get(&format!("v2c.mlp.{i}.out")).unwrap(), RTOL);
    }
    check("v2c.lin1_in", &host(lin1_in), outputs.get("v2c.lin1_in").unwrap(), RTOL);
    let out = net.forward(voxels);
    check("v2c.clip_voxels", &host(out.clip_voxels.reshape([5, 80])), outputs.get("v2c.clip_voxels").unwrap(), RTOL);
    check("v2c.clip_voxels_proj", &host(out.clip_voxels_proj), outputs.get("v2c.clip_voxels_proj").unwrap(), RTOL);
}

#[test]
fn the_prior_network_and_its_loss_with_the_image_embed_scale_match() {
    let r = load_safetensors(REF, "prior.safetensors");
    let json = load_json(REF, "prior.json");
    let config = tiny_config();
    let scale = config.image_embed_scale();
    assert_eq!(scale, json["image_embed_scale"].as_f64().unwrap());
    let prior = model::<B>().prior.unwrap();
    let net: &PriorNetwork<B> = &prior.net;
    let t = timesteps_tensor::<B>(&usizes(r.get("net.t").unwrap()), &Default::default());
    let (x_t, brain) = (tensor::<B, 3>(&r, "net.x_t"), tensor::<B, 3>(&r, "net.brain_embed"));
    let out = net.forward(x_t.clone(), t.clone(), brain.clone(), &CondKeep::all(5));
    check("net.out", &host(out), r.get("net.out").unwrap(), RTOL);
    let keep = CondKeep {
        brain: bools(r.get("net.brain_keep_mask").unwrap()),
        image: bools(r.get("net.image_keep_mask").unwrap()),
    };
    check(
        "net.out_masked",
        &host(net.forward(x_t.clone(), t.clone(), brain.clone(), &keep)),
        r.get("net.out_masked").unwrap(),
        RTOL,
    );
    check(
        "net.out_all_null",
        &host(net.forward(x_t.clone(), t.clone(), brain.clone(), &CondKeep::none(5))),
        r.get("net.out_all_null").unwrap(),
        RTOL,
    );
    check(
        "net.out_cond_scale3.5",
        &host(net.forward_with_cond_scale(x_t, t, brain, 3.5)),
        r.get("net.out_cond_scale3.5").unwrap(),
        RTOL,
    );

    // p_losses on image_embed × scale, the way BrainDiffusionPrior.forward calls it.
    let x0 = tensor::<B, 3>(&r, "loss.image_embed").mul_scalar(scale);
    let (brain, noise) = (tensor::<B, 3>(&r, "loss.brain_embed"), tensor::<B, 3>(&r, "loss.noise"));
    let lt = usizes(r.get("loss.t").unwrap());
    check("loss.x_t", &host(prior.q_sample(x0.clone(), &lt, noise.clone())), r.get("loss.x_t").unwrap(), RTOL);
    let masked = CondKeep { brain: vec![true, false, true, false, true], image: vec![true, true, false, false, true] };
    for (name, keep, pred_key, loss_key) in [
        ("masked", masked, "loss.pred_masked", "loss_masked"),
        ("no_drop", CondKeep::all(5), "loss.pred_no_drop", "loss_no_drop"),
        ("all_dropped", CondKeep::none(5), "loss.pred_all_dropped", "loss_all_dropped"),
    ] {
        let (pred, loss) = prior.p_losses(x0.clone(), &lt, brain.clone(), noise.clone(), &keep);
        check(&format!("p_losses {name} pred"), &host(pred.clone()), r.get(pred_key).unwrap(), RTOL);
        if name == "masked" {
            check("loss.aligned_masked", &host(pred.div_scalar(scale)), r.get("loss.aligned_masked").unwrap(), RTOL);
        }
        let want = json["p_losses"][loss_key].as_f64().unwrap();
        assert_close_scalar(&format!("p_losses {name}"), loss.into_scalar() as f64, want, 1e-5);
    }
}

fn objective_matches(phase: &str) {
    let tl = load_safetensors(REF, "total_loss.safetensors");
    let json = load_json(REF, "total_loss.json");
    let got = me1_objective::<AD>(phase);
    check(&format!("{phase}.clip_voxels"), &got.clip_voxels, tl.get(&format!("{phase}.clip_voxels")).unwrap(), RTOL);
    let proj = tl.get(&format!("{phase}.clip_voxels_proj")).unwrap();
    check(&format!("{phase}.clip_voxels_proj"), &got.clip_voxels_proj, proj, RTOL);
    let aligned = tl.get(&format!("{phase}.aligned_clip_voxels")).unwrap();
    check(&format!("{phase}.aligned_clip_voxels"), &got.aligned_clip_voxels, aligned, RTOL);
    let want = &json[phase];
    assert_close_scalar(&format!("{phase} loss_nce"), got.loss_nce, want["loss_nce"].as_f64().unwrap(), 1e-5);
    assert_close_scalar(&format!("{phase} loss_prior"), got.loss_prior, want["loss_prior"].as_f64().unwrap(), 1e-5);
    assert_close_scalar(&format!("{phase} total"), got.total, want["total"].as_f64().unwrap(), 1e-5);
    // float32 against float32: the worst gradient entry is ~4e-6 of its tensor's scale.
    let prefix = format!("{phase}.grad.");
    let compared = compare_named_grads(phase, &got.grads, &tl, &prefix, RTOL, 0.0);
    common::assert_every_gradient_compared(REF, "total_loss.safetensors", &prefix, &compared);
}

#[test]
fn the_bimixco_objective_and_every_gradient_match() {
    objective_matches("bimixco");
}

#[test]
fn the_softclip_objective_and_every_gradient_match() {
    objective_matches("softclip");
}

/// The tiny low-level sizes; inferring them fails, naming the group count to give.
fn tiny_lowlevel_config() -> Voxel2SdConfig {
    let err = Voxel2SdConfig::infer(&load_safetensors(REF, "lowlevel.safetensors")).unwrap_err().to_string();
    assert!(err.contains("norm_num_groups"), "{err}");
    lowlevel_config()
}

#[test]
fn the_lowlevel_model_matches_and_reads_lowlevel_last_pth() {
    let config = tiny_lowlevel_config();
    let json = load_json(REF, "config.json");
    let counts: std::collections::BTreeMap<String, u64> = config.param_counts().into_iter().collect();
    assert_eq!(counts["total"], json["num_params_lowlevel"].as_u64().unwrap());
    let st = load_safetensors(REF, "lowlevel.safetensors");
    config.check_keys(&st).unwrap();
    let pth =
        TensorMap::from_pytorch_file(&reference_dir(REF).join("lowlevel_last.pth"), Some("model_state_dict")).unwrap();
    for (key, want) in st.iter() {
        assert_eq!(pth.get(key).unwrap(), want, "{key}");
    }
    let outputs = load_safetensors(REF, "outputs.safetensors");
    let model = Voxel2Sd::<B>::from_tensors(&pth, &config, &Default::default()).unwrap();
    let out = model.forward(tensor::<B, 2>(&load_safetensors(REF, "inputs.safetensors"), "voxels"));
    check("ll.norm_out", &host(out.map), outputs.get("ll.norm_out").unwrap(), RTOL);
    check("ll.upsampler_out", &host(out.latent), outputs.get("ll.upsampler_out").unwrap(), RTOL);
    check("ll.transformer_feats", &host(out.features), outputs.get("ll.transformer_feats").unwrap(), RTOL);
}

#[test]
fn the_lowlevel_objective_and_every_gradient_match() {
    let r = load_safetensors(REF, "lowlevel_loss.safetensors");
    let want = &load_json(REF, "lowlevel_loss.json")["f32"];
    let (l1, cont, total, grads) = lowlevel_objective::<AD>();
    assert_close_scalar("l1_loss", l1, want["l1_loss"].as_f64().unwrap(), 1e-5);
    assert_close_scalar("cont_loss", cont, want["cont_loss"].as_f64().unwrap(), 1e-5);
    assert_close_scalar("total", total, want["total"].as_f64().unwrap(), 1e-5);
    // The attention keys' bias has gradient 0 in exact arithmetic (softmax ignores a constant
    // per query): float noise of ~3e-10 on both sides. Tensors whose own scale is below 1e-3 of
    // the file's largest gradient are compared against that floor instead.
    let floor = 1e-3 * gradient_scale(&r, "grad.");
    let compared = compare_named_grads("low-level", &grads, &r, "grad.", RTOL, floor);
    common::assert_every_gradient_compared(REF, "lowlevel_loss.safetensors", "grad.", &compared);
}

#[test]
fn the_released_architecture_has_the_released_counts_and_builds_small() {
    // A tiny MindEye1 built from scratch runs end to end (shapes), and the released sizes count
    // exactly what param_counts_full.json says (checked in the unit tests).
    let mut config = MindEye1Config::released(11);
    config.hidden = 8;
    config.clip_tokens = 3;
    config.clip_dim = 8;
    config.projector_hidden = 6;
    config.prior = Some(voxbridge_model::prior::PriorConfig::mindeye2(8, 3, 1, 4));
    assert!(config.problems().is_empty(), "{:?}", config.problems());
    let model = MindEye1::<B>::init(&config, &Default::default());
    let voxels = Tensor::<B, 2>::from_data(TensorData::new(vec![0.1f32; 22], [2, 11]), &Default::default());
    let out = model.voxel2clip.forward(voxels);
    assert_eq!(out.clip_voxels.dims(), [2, 3, 8]);
    assert_eq!(out.clip_voxels_proj.dims(), [2, 3, 8]);
}

#[test]
fn mindeye1s_loss_helpers_match() {
    // utils.py of MindEye1 on fixed inputs (loss_inputs.safetensors, losses.json).
    let r = load_safetensors(REF, "loss_inputs.safetensors");
    let json = load_json(REF, "losses.json");
    let scalar = |t: Tensor<B, 1>| t.into_scalar() as f64;
    let (p, t) = (tensor::<B, 2>(&r, "softclip.preds"), tensor::<B, 2>(&r, "softclip.targs"));
    for (temp, key) in [(0.004, "temp=0.004"), (0.0075, "temp=0.0075"), (0.006, "temp=0.006"), (0.125, "temp=0.125")] {
        let want = json["soft_clip_loss"][key].as_f64().unwrap();
        assert_close_scalar(
            &format!("soft_clip {key}"),
            scalar(soft_clip_loss(p.clone(), t.clone(), temp)),
            want,
            1e-5,
        );
    }
    let anneal = voxbridge_model::losses::cosine_anneal(0.004, 0.0075, 161);
    check("cosine_anneal", &HostTensor::new(vec![161], anneal), r.get("cosine_anneal_0.004_0.0075_161").unwrap(), 1e-6);

    let draw = MixcoDraw {
        perm: usizes(r.get("mixco.perm").unwrap()),
        betas: r.get("mixco.betas").unwrap().data.clone(),
        select: bools(r.get("mixco.select").unwrap()),
    };
    let mixed = voxbridge_model::losses::mixco_voxels(tensor::<B, 2>(&r, "mixco.voxels_in"), &draw);
    check("mixco.voxels_out", &host(mixed), r.get("mixco.voxels_out").unwrap(), 1e-6);
    let (p, t) = (tensor::<B, 2>(&r, "mixco.preds"), tensor::<B, 2>(&r, "mixco.targs"));
    let m = &json["mixco"];
    let nce = |temp, draw: Option<&MixcoDraw>, both| scalar(mixco_nce(p.clone(), t.clone(), temp, draw, both));
    assert_close_scalar(
        "mixco 0.006",
        nce(0.006, Some(&draw), true),
        m["mixco_nce_temp0.006_bidirectional"].as_f64().unwrap(),
        1e-5,
    );
    assert_close_scalar(
        "mixco 0.1",
        nce(0.1, Some(&draw), true),
        m["mixco_nce_temp0.1_bidirectional"].as_f64().unwrap(),
        1e-5,
    );
    assert_close_scalar(
        "mixco one way",
        nce(0.006, Some(&draw), false),
        m["mixco_nce_temp0.006_one_direction"].as_f64().unwrap(),
        1e-5,
    );
    assert_close_scalar(
        "infonce",
        nce(0.006, None, true),
        m["infonce_perm_None_temp0.006 (validation)"].as_f64().unwrap(),
        1e-5,
    );
    let fixed = MixcoDraw {
        perm: usizes(r.get("mixco_fixedpoint.perm").unwrap()),
        betas: r.get("mixco_fixedpoint.betas").unwrap().data.clone(),
        select: bools(r.get("mixco_fixedpoint.select").unwrap()),
    };
    let want = json["mixco_fixedpoint"]["mixco_nce_temp0.006_bidirectional"].as_f64().unwrap();
    assert_close_scalar("mixco fixed points", nce(0.006, Some(&fixed), true), want, 1e-5);

    let (s, te, ta) = (
        tensor::<B, 2>(&r, "softcont.student"),
        tensor::<B, 2>(&r, "softcont.teacher"),
        tensor::<B, 2>(&r, "softcont.teacher_aug"),
    );
    for (temp, key) in [(0.075, "temp=0.075"), (0.125, "temp=0.125")] {
        let got = scalar(soft_cont_loss(s.clone(), te.clone(), ta.clone(), temp));
        assert_close_scalar(&format!("soft_cont {key}"), got, json["soft_cont_loss"][key].as_f64().unwrap(), 1e-5);
    }
}

#[test]
fn released_counts_equal_param_counts_full_json() {
    let json = load_json(REF, "param_counts_full.json");
    let me1 = &json["mindeye1_subj01_vd_prior"]["counts"];
    let counts: std::collections::BTreeMap<String, u64> =
        MindEye1Config::released(15724).param_counts().into_iter().collect();
    for (ours, theirs) in [
        ("voxel2clip.lin0", "voxel2clip.lin0"),
        ("voxel2clip.mlp", "voxel2clip.mlp"),
        ("voxel2clip.lin1", "voxel2clip.lin1"),
        ("voxel2clip.projector", "voxel2clip.projector"),
        ("voxel2clip", "voxel2clip (total)"),
        ("net", "net (total, prior transformer)"),
        ("total", "diffusion_prior (total = checkpoint model: net + voxel2clip)"),
    ] {
        assert_eq!(counts[ours], me1[theirs][0].as_u64().unwrap(), "{ours}");
    }
    assert_eq!(
        counts["total.trainable"],
        me1["diffusion_prior (total = checkpoint model: net + voxel2clip)"][1].as_u64().unwrap()
    );
    let low = &json["mindeye1_subj01_lowlevel_4x_cont"]["counts"];
    let counts: std::collections::BTreeMap<String, u64> =
        Voxel2SdConfig::released(15724).param_counts().into_iter().collect();
    for name in ["lin0", "mlp", "lin1", "norm", "upsampler", "maps_projector"] {
        assert_eq!(counts[&format!("voxel2sd.{name}")], low[format!("voxel2sd.{name}")][0].as_u64().unwrap(), "{name}");
    }
    assert_eq!(counts["total"], low["voxel2sd (total)"][0].as_u64().unwrap());
    for (subject, per) in json["per_subject"].as_object().unwrap() {
        let voxels = per["voxels"].as_u64().unwrap() as usize;
        let me1: std::collections::BTreeMap<String, u64> =
            MindEye1Config::released(voxels).param_counts().into_iter().collect();
        assert_eq!(me1["total"], per["diffusion_prior_total"].as_u64().unwrap(), "{subject}");
        assert_eq!(me1["voxel2clip"], per["voxel2clip"].as_u64().unwrap(), "{subject}");
        let low: std::collections::BTreeMap<String, u64> =
            Voxel2SdConfig::released(voxels).param_counts().into_iter().collect();
        assert_eq!(low["total"], per["voxel2sd_lowlevel"].as_u64().unwrap(), "{subject}");
    }
}

#[test]
fn the_ddpm_chain_matches_step_by_step_from_the_recorded_draws() {
    let r = load_safetensors(REF, "prior.safetensors");
    let prior = model::<B>().prior.unwrap();
    let brain = tensor::<B, 3>(&r, "ddpm.brain_embed");
    let draws = r.get("ddpm.noise_draws").unwrap();
    let per = draws.data.len() / draws.shape[0];
    let draw_at = |k: usize| {
        HostTensor::new(draws.shape[1..].to_vec(), draws.data[k * per..(k + 1) * per].to_vec())
            .to_tensor::<B, 3>(&Default::default())
    };
    let slice = |key: &str, k: usize| {
        let t = r.get(key).unwrap();
        let n = t.data.len() / t.shape[0];
        HostTensor::new(t.shape[1..].to_vec(), t.data[k * n..(k + 1) * n].to_vec())
    };
    let times = usizes(r.get("ddpm.step_t").unwrap());
    assert_eq!(times, (0..100).rev().collect::<Vec<_>>());
    // Each step from the reference's own input: the step's arithmetic, 1e-5.
    for (k, &t) in times.iter().enumerate() {
        let x_in = slice("ddpm.step_x_in", k).to_tensor::<B, 3>(&Default::default());
        let (pred, x_out) = prior.ddpm_step(x_in, brain.clone(), t, 1.0, draw_at(k + 1));
        check(&format!("ddpm step t={t} pred_x0"), &host(pred), &slice("ddpm.step_pred_x0", k), RTOL);
        check(&format!("ddpm step t={t} x_out"), &host(x_out), &slice("ddpm.step_x_out", k), RTOL);
    }
    // The whole chain from the same draws: each step agrees to ≤ 2.1e-6 (above), and 100 steps
    // through the network compound it: the end is 3.2e-4 of scale from the float32 chain and
    // 3.0e-4 from the float64 one (the reference's own float32 and float64 runs, whose per-step
    // difference is ~10× smaller, end 3.7e-5 apart). Checked at 1e-3.
    let mut k = 0;
    let sample = prior.sample_ddpm(brain, 1.0, me1_config().image_embed_scale(), &mut |_| {
        k += 1;
        draw_at(k - 1)
    });
    check("ddpm.sample vs float64", &host(sample.clone()), r.get("ddpm.sample_f64_same_draws").unwrap(), 1e-3);
    check("ddpm.sample", &host(sample), r.get("ddpm.sample").unwrap(), 1e-3);
}
