//! The `mindeye1-tiny` and `mindreader-tiny` objectives and their gradients by original parameter
//! name, shared by the float32 parity tests and the float64 one (which runs the same code with
//! burn's default float type switched to float64).

use burn::module::Param;
use burn::nn::conv::{Conv1d, Conv2d};
use burn::nn::{GroupNorm, LayerNorm, Linear};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use voxbridge_model::losses::{MixcoDraw, l1_loss, l2_normalize, mixco_nce, soft_clip_loss, soft_cont_loss};
use voxbridge_model::lowlevel::ResnetBlock;
use voxbridge_model::mindeye1::lowlevel::{Voxel2Sd, Voxel2SdConfig};
use voxbridge_model::mindeye1::{MindEye1, MindEye1Config};
use voxbridge_model::mindreader::{MindReader, MindReaderConfig, MindReaderLoss, Pointwise};
use voxbridge_model::prior::CondKeep;
use voxbridge_model::tensors::{HostTensor, TensorMap};

use super::{load_json, load_safetensors, reference_dir};

pub const ME1: &str = "mindeye1-tiny";
pub const MR: &str = "mindreader-tiny";

pub fn tensor<B: Backend, const D: usize>(map: &TensorMap, key: &str) -> Tensor<B, D> {
    map.get(key).unwrap_or_else(|e| panic!("{e}")).to_tensor::<B, D>(&Default::default())
}

pub fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> HostTensor {
    HostTensor::from_tensor(t)
}

pub fn usizes(t: &HostTensor) -> Vec<usize> {
    t.data.iter().map(|&v| v as usize).collect()
}

pub fn bools(t: &HostTensor) -> Vec<bool> {
    t.data.iter().map(|&v| v != 0.0).collect()
}

/// The MindEye1 reference's architecture, read from its checkpoint.
pub fn me1_config() -> MindEye1Config {
    MindEye1Config::infer(&load_safetensors(ME1, "model.safetensors")).unwrap()
}

pub fn me1_model<B: Backend>() -> MindEye1<B> {
    MindEye1::from_tensors(&load_safetensors(ME1, "model.safetensors"), &me1_config(), &Default::default())
        .unwrap()
        .without_dropout()
}

/// One evaluation of Train_MindEye.py's objective in `phase` (`bimixco` or `softclip`).
pub struct Me1Objective {
    pub clip_voxels: HostTensor,
    pub clip_voxels_proj: HostTensor,
    pub aligned_clip_voxels: HostTensor,
    pub loss_nce: f64,
    pub loss_prior: f64,
    pub total: f64,
    /// Every parameter's gradient of `total`, by original name (`voxel2clip.*`, `net.*`).
    pub grads: Vec<(String, HostTensor)>,
}

/// `loss = nce + 30 · prior` on the reference's fixed draws: BiMixCo on the mixed voxels, or
/// SoftCLIP at the annealed temperature of epoch 100, with the prior on targets × √D.
pub fn me1_objective<A: AutodiffBackend>(phase: &str) -> Me1Objective {
    let tl = load_safetensors(ME1, "total_loss.safetensors");
    let json = load_json(ME1, "total_loss.json");
    let model = me1_model::<A>();
    let scale = me1_config().image_embed_scale();
    let voxels = if phase == "bimixco" {
        tensor::<A, 2>(&tl, "input.voxels_mixed")
    } else {
        tensor::<A, 2>(&load_safetensors(ME1, "inputs.safetensors"), "voxels")
    };
    let out = model.voxel2clip.forward(voxels);
    let target = tensor::<A, 3>(&tl, "input.clip_target");
    let keep = CondKeep {
        brain: bools(tl.get("input.brain_keep_mask").unwrap()),
        image: bools(tl.get("input.image_keep_mask").unwrap()),
    };
    let prior = model.prior.as_ref().unwrap();
    let t = usizes(tl.get("input.t").unwrap());
    let noise = tensor::<A, 3>(&tl, "input.noise");
    let (pred, loss_prior) =
        prior.p_losses(target.clone().mul_scalar(scale), &t, out.clip_voxels.clone(), noise, &keep);
    let preds = l2_normalize(out.clip_voxels_proj.clone().flatten::<2>(1, 2));
    let targets = l2_normalize(target.flatten::<2>(1, 2));
    let loss_nce = if phase == "bimixco" {
        let draw = MixcoDraw {
            perm: usizes(tl.get("input.mixco_perm").unwrap()),
            betas: tl.get("input.mixco_betas").unwrap().data.clone(),
            select: bools(tl.get("input.mixco_select").unwrap()),
        };
        mixco_nce(preds, targets, json["inputs"]["mixco_temp"].as_f64().unwrap(), Some(&draw), true)
    } else {
        soft_clip_loss(preds, targets, json["inputs"]["softclip_temp"].as_f64().unwrap())
    };
    let total = loss_nce.clone() + loss_prior.clone().mul_scalar(json["inputs"]["prior_mult"].as_f64().unwrap());
    let scalar = |t: Tensor<A, 1>| host(t).data[0] as f64;
    let (nce_value, prior_value, total_value) = (scalar(loss_nce), scalar(loss_prior), scalar(total.clone()));
    let grads = total.backward();
    Me1Objective {
        clip_voxels: host(out.clip_voxels),
        clip_voxels_proj: host(out.clip_voxels_proj),
        aligned_clip_voxels: host(pred.div_scalar(scale)),
        loss_nce: nce_value,
        loss_prior: prior_value,
        total: total_value,
        grads: me1_grads(&model, &grads),
    }
}

fn p1<A: AutodiffBackend>(p: &Param<Tensor<A, 1>>, g: &A::Gradients) -> HostTensor {
    let n = p.val().dims()[0];
    p.grad(g).map(host).unwrap_or_else(|| HostTensor::new(vec![n], vec![0.0; n]))
}

/// PyTorch records zeros where burn records no gradient (the null embeddings when nothing is
/// dropped).
fn p2<A: AutodiffBackend>(p: &Param<Tensor<A, 2>>, g: &A::Gradients) -> HostTensor {
    let [r, c] = p.val().dims();
    p.grad(g).map(host).unwrap_or_else(|| HostTensor::new(vec![r, c], vec![0.0; r * c]))
}

/// A linear weight's gradient in PyTorch's `[out, in]` layout.
fn w<A: AutodiffBackend>(l: &Linear<A>, g: &A::Gradients) -> HostTensor {
    host(l.weight.grad(g).unwrap().transpose())
}

fn me1_grads<A: AutodiffBackend>(model: &MindEye1<A>, g: &A::Gradients) -> Vec<(String, HostTensor)> {
    let mut out = Vec::new();
    let mut linear = |name: String, l: &Linear<A>| {
        out.push((format!("{name}.weight"), w(l, g)));
        if let Some(b) = &l.bias {
            out.push((format!("{name}.bias"), p1(b, g)));
        }
    };
    let v = &model.voxel2clip;
    linear("voxel2clip.lin0.0".into(), &v.lin0.linear);
    for (i, block) in v.mlp.iter().enumerate() {
        linear(format!("voxel2clip.mlp.{i}.0"), &block.linear);
    }
    linear("voxel2clip.lin1".into(), &v.lin1);
    for (i, l) in v.projector.linears.iter().enumerate() {
        linear(format!("voxel2clip.projector.{}", 3 * i + 2), l);
    }
    let mut norm = |name: String, n: &LayerNorm<A>| {
        out.push((format!("{name}.weight"), p1(&n.gamma, g)));
        out.push((format!("{name}.bias"), p1(n.beta.as_ref().unwrap(), g)));
    };
    norm("voxel2clip.lin0.1".into(), &v.lin0.norm);
    for (i, block) in v.mlp.iter().enumerate() {
        norm(format!("voxel2clip.mlp.{i}.1"), &block.norm);
    }
    for (i, n) in v.projector.norms.iter().enumerate() {
        norm(format!("voxel2clip.projector.{}", 3 * i), n);
    }
    let net = &model.prior.as_ref().unwrap().net;
    let n = |k: &str| format!("net.{k}");
    let time = [
        ("to_time_embeds.0.1.net.0.0", &net.time_mlp.layer0),
        ("to_time_embeds.0.1.net.1.0", &net.time_mlp.layer1),
        ("to_time_embeds.0.1.net.2", &net.time_mlp.layer2),
    ];
    for (key, layer) in time {
        out.push((n(&format!("{key}.weight")), w(layer, g)));
        out.push((n(&format!("{key}.bias")), p1(layer.bias.as_ref().unwrap(), g)));
    }
    out.push((n("learned_query"), p2(&net.learned_query, g)));
    out.push((n("null_brain_embeds"), p2(&net.null_brain_embeds, g)));
    out.push((n("null_image_embed"), p2(&net.null_image_embed, g)));
    let tr = &net.transformer;
    out.push((n("causal_transformer.rel_pos_bias.relative_attention_bias.weight"), p2(&tr.rel_pos_bias.weight, g)));
    out.push((n("causal_transformer.norm.g"), p1(&tr.norm.g, g)));
    out.push((n("causal_transformer.project_out.weight"), w(&tr.project_out, g)));
    for (l, layer) in tr.layers.iter().enumerate() {
        let k = |rest: &str| n(&format!("causal_transformer.layers.{l}.{rest}"));
        out.push((k("0.norm.g"), p1(&layer.attn.norm.g, g)));
        out.push((k("0.to_q.weight"), w(&layer.attn.to_q, g)));
        out.push((k("0.to_kv.weight"), w(&layer.attn.to_kv, g)));
        out.push((k("0.null_kv"), p2(&layer.attn.null_kv, g)));
        out.push((k("0.to_out.0.weight"), w(&layer.attn.to_out, g)));
        out.push((k("0.to_out.1.g"), p1(&layer.attn.out_norm.g, g)));
        out.push((k("1.0.g"), p1(&layer.ff.norm.g, g)));
        out.push((k("1.1.weight"), w(&layer.ff.proj_in, g)));
        out.push((k("1.5.weight"), w(&layer.ff.proj_out, g)));
    }
    out
}

/// The tiny low-level model's sizes: its decoder uses 4 GroupNorm groups, which a state dict does
/// not record, so they are given here (as a user gives them in a model file).
pub fn lowlevel_config() -> Voxel2SdConfig {
    Voxel2SdConfig {
        voxels: 37,
        hidden: 24,
        blocks: 2,
        map_channels: 8,
        map_size: 4,
        latent_channels: 4,
        block_out_channels: vec![8, 8, 16],
        layers_per_block: 1,
        norm_num_groups: 4,
        projector_width: 12,
        dropout_input: 0.5,
        dropout_blocks: 0.25,
    }
}

/// train_autoencoder.py's objective: `l1 / 0.18215 + 0.1 · soft_cont(temp 0.075)`; returns
/// `(l1, cont, total, gradients by original name)`.
pub fn lowlevel_objective<A: AutodiffBackend>() -> (f64, f64, f64, Vec<(String, HostTensor)>) {
    let config = lowlevel_config();
    let r = load_safetensors(ME1, "lowlevel_loss.safetensors");
    let model =
        Voxel2Sd::<A>::from_tensors(&load_safetensors(ME1, "lowlevel.safetensors"), &config, &Default::default())
            .unwrap()
            .without_dropout();
    let out = model.forward(tensor::<A, 2>(&load_safetensors(ME1, "inputs.safetensors"), "voxels"));
    let l1 = l1_loss(out.latent, tensor::<A, 4>(&r, "input.image_enc"));
    let p = config.projector_width;
    let rows = |t: Tensor<A, 3>| {
        let n = t.dims().iter().product::<usize>() / p;
        l2_normalize(t.reshape([n, p]))
    };
    let cont = soft_cont_loss(
        rows(out.features),
        rows(tensor::<A, 3>(&r, "input.cnx_embeds")),
        rows(tensor::<A, 3>(&r, "input.cnx_aug_embeds")),
        0.075,
    );
    let total = l1.clone().div_scalar(0.18215) + cont.clone().mul_scalar(0.1);
    let scalar = |t: Tensor<A, 1>| host(t).data[0] as f64;
    let values = (scalar(l1), scalar(cont), scalar(total.clone()));
    let grads = total.backward();
    (values.0, values.1, values.2, lowlevel_grads(&model, &grads))
}

/// The low-level model's gradients under their original names (diffusers 0.13).
fn lowlevel_grads<A: AutodiffBackend>(m: &Voxel2Sd<A>, g: &A::Gradients) -> Vec<(String, HostTensor)> {
    let mut out = Vec::new();
    let ln = |out: &mut Vec<_>, name: String, n: &LayerNorm<A>| {
        out.push((format!("{name}.weight"), p1(&n.gamma, g)));
        out.push((format!("{name}.bias"), p1(n.beta.as_ref().unwrap(), g)));
    };
    let gn = |out: &mut Vec<_>, name: String, n: &GroupNorm<A>| {
        out.push((format!("{name}.weight"), p1(n.gamma.as_ref().unwrap(), g)));
        out.push((format!("{name}.bias"), p1(n.beta.as_ref().unwrap(), g)));
    };
    let conv = |out: &mut Vec<_>, name: String, c: &Conv2d<A>| {
        out.push((format!("{name}.weight"), host(c.weight.grad(g).unwrap())));
        if let Some(b) = &c.bias {
            out.push((format!("{name}.bias"), p1(b, g)));
        }
    };
    let resnet = |out: &mut Vec<_>, name: String, r: &ResnetBlock<A>| {
        gn(out, format!("{name}.norm1"), &r.norm1);
        conv(out, format!("{name}.conv1"), &r.conv1);
        gn(out, format!("{name}.norm2"), &r.norm2);
        conv(out, format!("{name}.conv2"), &r.conv2);
        if let Some(c) = &r.conv_shortcut {
            conv(out, format!("{name}.conv_shortcut"), c);
        }
    };
    out.push(("lin0.0.weight".to_string(), w(&m.lin0.linear, g)));
    ln(&mut out, "lin0.1".into(), &m.lin0.norm);
    for (i, b) in m.mlp.iter().enumerate() {
        out.push((format!("mlp.{i}.0.weight"), w(&b.linear, g)));
        ln(&mut out, format!("mlp.{i}.1"), &b.norm);
    }
    out.push(("lin1.weight".to_string(), w(&m.lin1, g)));
    gn(&mut out, "norm".into(), &m.norm);
    let mp = &m.maps_projector;
    conv(&mut out, "maps_projector.0".into(), &mp.conv0);
    gn(&mut out, "maps_projector.1".into(), &mp.norm1);
    conv(&mut out, "maps_projector.3".into(), &mp.conv3);
    gn(&mut out, "maps_projector.4".into(), &mp.norm4);
    conv(&mut out, "maps_projector.6".into(), &mp.conv6);
    let d = &m.upsampler;
    conv(&mut out, "upsampler.conv_in".into(), &d.conv_in);
    resnet(&mut out, "upsampler.mid_block.resnets.0".into(), &d.mid_block.resnet0);
    resnet(&mut out, "upsampler.mid_block.resnets.1".into(), &d.mid_block.resnet1);
    let a = &d.mid_block.attention;
    gn(&mut out, "upsampler.mid_block.attentions.0.group_norm".into(), &a.group_norm);
    for (name, l) in [("query", &a.to_q), ("key", &a.to_k), ("value", &a.to_v), ("proj_attn", &a.to_out)] {
        out.push((format!("upsampler.mid_block.attentions.0.{name}.weight"), w(l, g)));
        out.push((format!("upsampler.mid_block.attentions.0.{name}.bias"), p1(l.bias.as_ref().unwrap(), g)));
    }
    for (i, block) in d.up_blocks.iter().enumerate() {
        for (j, r) in block.resnets.iter().enumerate() {
            resnet(&mut out, format!("upsampler.up_blocks.{i}.resnets.{j}"), r);
        }
        if let Some(c) = &block.upsampler {
            conv(&mut out, format!("upsampler.up_blocks.{i}.upsamplers.0.conv"), c);
        }
    }
    gn(&mut out, "upsampler.conv_norm_out".into(), &d.conv_norm_out);
    conv(&mut out, "upsampler.conv_out".into(), &d.conv_out);
    out
}

/// The Mind Reader reference's sizes: from the checkpoint, with the voxel count from
/// `config.json` (a state dict does not record the padding).
pub fn mr_config() -> MindReaderConfig {
    let mut config = MindReaderConfig::infer(&load_safetensors(MR, "model.safetensors")).unwrap();
    config.voxels = load_json(MR, "config.json")["input"]["n_voxels"].as_u64().unwrap() as usize;
    config
}

pub fn mr_model<B: Backend>() -> MindReader<B> {
    let map = TensorMap::from_pytorch_file(&reference_dir(MR).join("model.pth"), None).unwrap();
    MindReader::from_tensors(&map, &mr_config(), &Default::default()).unwrap()
}

/// The three training losses as the original's forward computes them, by `loss_type`.
pub const MR_LOSSES: [(&str, MindReaderLoss); 3] = [
    ("mse_cos", MindReaderLoss::MseCos { cos_weight: 0.6 }),
    // The original's forward passes cos_weight (0.6) as the contrastive loss's λ.
    ("contrastive", MindReaderLoss::Contrastive { temperature: 0.5, lam: 0.6 }),
    ("mse_cos_contrastive", MindReaderLoss::MseCosContrastive { temperature: 0.5, cos_weight: 0.6 }),
];

/// `loss` of the reference batch and its gradients by original name.
pub fn mr_objective<A: AutodiffBackend>(loss: MindReaderLoss) -> (f64, Vec<(String, HostTensor)>) {
    let inputs = load_safetensors(MR, "inputs.safetensors");
    let m = mr_model::<A>();
    let value = loss.compute(m.forward(tensor::<A, 2>(&inputs, "fmri")), tensor::<A, 2>(&inputs, "clip_img"));
    let scalar = host(value.clone()).data[0] as f64;
    let g = value.backward();
    let conv = |name: String, c: &Conv1d<A>| {
        vec![
            (format!("{name}.weight"), host(c.weight.grad(&g).unwrap())),
            (format!("{name}.bias"), p1(c.bias.as_ref().unwrap(), &g)),
        ]
    };
    // Pointwise weights are [out, in]; the original's Conv1d weights [out, in, 1].
    let point = |name: &str, p: &Pointwise<A>| {
        let grad = p.weight.grad(&g).unwrap();
        let [o, i] = grad.dims();
        vec![(format!("{name}.weight"), host(grad.reshape([o, i, 1]))), (format!("{name}.bias"), p1(&p.bias, &g))]
    };
    let mut out = conv("encoder.0.0".into(), &m.stem);
    for (i, block) in m.blocks.iter().enumerate() {
        let k = i + 1;
        out.extend(conv(format!("encoder.{k}.net.0"), &block.conv0));
        out.extend(conv(format!("encoder.{k}.net.2"), &block.conv2));
        out.extend(point(&format!("encoder.{k}.net.4"), &block.conv4));
    }
    out.extend(point(&format!("encoder.{}", m.blocks.len() + 1), &m.to_clip));
    out.extend(point("fc.1", &m.fc1));
    out.extend(point("fc.3", &m.fc3));
    (scalar, out)
}

/// Compares gradients by name against `reference` keys `{prefix}{name}`, each within `rtol` of the
/// larger of its own scale and `floor` (gradients that are zero in exact arithmetic, such as the
/// attention keys' bias, are float noise of ~1e-10 on both sides); returns the keys compared.
pub fn compare_named_grads(
    what: &str,
    grads: &[(String, HostTensor)],
    reference: &TensorMap,
    prefix: &str,
    rtol: f32,
    floor: f32,
) -> std::collections::BTreeSet<String> {
    let mut compared = std::collections::BTreeSet::new();
    let mut worst_overall = 0f32;
    for (name, ours) in grads {
        let key = format!("{prefix}{name}");
        let want = reference.get(&key).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(ours.shape, want.shape, "{what} {key}: shape");
        let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs())).max(floor);
        let worst = ours.data.iter().zip(&want.data).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        worst_overall = worst_overall.max(worst / scale);
        assert!(worst <= rtol * scale, "{what} {key}: max |diff| {worst:e} exceeds {rtol:e} × {scale:e}");
        compared.insert(key);
    }
    println!("{what}: {} gradients, worst rel err {worst_overall:.3e}", grads.len());
    compared
}

/// The largest |value| over every gradient of a reference file under `prefix`.
pub fn gradient_scale(reference: &TensorMap, prefix: &str) -> f32 {
    reference
        .iter()
        .filter(|(k, _)| k.starts_with(prefix) && k.contains("grad."))
        .flat_map(|(_, t)| t.data.iter())
        .fold(0f32, |m, v| m.max(v.abs()))
}
