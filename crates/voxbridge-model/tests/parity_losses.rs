//! Parity of MindEye2's losses (spec §2.1, `src/utils.py`) with the original PyTorch code:
//! `tests/reference/mindeye2-tiny` `loss_inputs.safetensors` + `losses.json` and
//! `total_loss.safetensors` + `total_loss.json`. Gradients are checked against central finite
//! differences of an independent float64 host implementation.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData, backend::Backend};
use common::{assert_close, assert_close_scalar, load_json, load_safetensors};
use serde_json::Value;
use voxbridge_model::losses::{
    LossTerms, LossWeights, MixcoDraw, cosine_anneal, l1_loss, l2_normalize, mixco_labels, mixco_nce, mixco_voxels,
    mse_loss, soft_clip_loss, soft_cont_loss,
};
use voxbridge_model::tensors::{HostTensor, TensorMap};

type B = Flex;
type AD = Autodiff<Flex>;

const REF: &str = "mindeye2-tiny";
const RTOL: f64 = 1e-5;
const GRAD_RTOL: f64 = 1e-3;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn loss_inputs() -> TensorMap {
    load_safetensors(REF, "loss_inputs.safetensors")
}

fn losses_json() -> Value {
    load_json(REF, "losses.json")
}

fn json_f64(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for key in path {
        cur = &cur[*key];
    }
    cur.as_f64().unwrap_or_else(|| panic!("losses json: {path:?} is not a number: {cur}"))
}

fn tensor2<Bk: Backend>(map: &TensorMap, key: &str) -> Tensor<Bk, 2> {
    map.get(key).unwrap().to_tensor::<Bk, 2>(&Default::default())
}

fn scalar<Bk: Backend>(t: Tensor<Bk, 1>) -> f64 {
    let host = HostTensor::from_tensor(t);
    assert_eq!(host.data.len(), 1, "loss is not a scalar");
    host.data[0] as f64
}

fn rel(actual: f64, expected: f64) -> f64 {
    (actual - expected).abs() / expected.abs().max(1e-12)
}

/// Checks one scalar against the reference, prints it, and returns its relative error.
fn check_scalar(what: &str, actual: f64, expected: f64, rtol: f64) -> f64 {
    let err = rel(actual, expected);
    println!("{what:<52} got {actual:<22} want {expected:<22} rel err {err:.3e}");
    assert_close_scalar(what, actual, expected, rtol);
    err
}

/// max|a − b| / max|b|, printed, then asserted with the shared helper.
fn check_tensor(what: &str, actual: &HostTensor, expected: &HostTensor, rtol: f64) -> f64 {
    let scale = expected.data.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6) as f64;
    let worst = actual.data.iter().zip(&expected.data).fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));
    println!("{what:<52} max rel err {:.3e}", worst / scale);
    assert_close(what, actual, expected, rtol as f32);
    worst / scale
}

/// A [`MixcoDraw`] from `{prefix}.perm` (int64 → f32), `{prefix}.betas`, `{prefix}.select` (0/1).
/// Not validated: the multi-subject draw is deliberately not a permutation of `0..8`.
fn draw_from(map: &TensorMap, prefix: &str) -> MixcoDraw {
    let perm = map.get(&format!("{prefix}.perm")).unwrap();
    let betas = map.get(&format!("{prefix}.betas")).unwrap();
    let select = map.get(&format!("{prefix}.select")).unwrap();
    let draw = MixcoDraw {
        perm: perm
            .data
            .iter()
            .map(|&p| {
                assert!(p >= 0.0 && p.fract() == 0.0, "{prefix}.perm holds {p}");
                p as usize
            })
            .collect(),
        betas: betas.data.clone(),
        select: select
            .data
            .iter()
            .map(|&s| {
                assert!(s == 0.0 || s == 1.0, "{prefix}.select holds {s}");
                s == 1.0
            })
            .collect(),
    };
    assert_eq!(draw.betas.len(), draw.perm.len(), "{prefix}: betas length");
    assert_eq!(draw.select.len(), draw.perm.len(), "{prefix}: select length");
    draw
}

/// The draw as `losses.json` lists it must equal the stored tensors.
fn assert_draw_matches_json(draw: &MixcoDraw, section: &Value, betas_key: &str) {
    let perm: Vec<usize> = section["perm"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let betas: Vec<f32> = section[betas_key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let select: Vec<bool> = section["select"].as_array().unwrap().iter().map(|v| v.as_bool().unwrap()).collect();
    assert_eq!(draw.perm, perm, "perm vs json");
    assert_eq!(draw.betas, betas, "betas vs json");
    assert_eq!(draw.select, select, "select vs json");
}

fn to_f64(t: &HostTensor) -> Vec<f64> {
    t.data.iter().map(|&v| v as f64).collect()
}

// ---------------------------------------------------------------------------------------------
// Independent float64 host implementations (for the finite differences and as a cross-check)
// ---------------------------------------------------------------------------------------------

/// `a·bᵀ / temp` for row-major `a: [n, d]`, `b: [m, d]`.
fn host_logits(a: &[f64], b: &[f64], d: usize, temp: f64) -> Vec<f64> {
    let (n, m) = (a.len() / d, b.len() / d);
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            out[i * m + j] = (0..d).map(|k| a[i * d + k] * b[j * d + k]).sum::<f64>() / temp;
        }
    }
    out
}

fn host_transpose(x: &[f64], n: usize, m: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            out[j * n + i] = x[i * m + j];
        }
    }
    out
}

fn host_softmax_rows(x: &[f64], m: usize) -> Vec<f64> {
    x.chunks(m)
        .flat_map(|row| {
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
            row.iter().map(move |v| (v - max).exp() / sum).collect::<Vec<_>>()
        })
        .collect()
}

/// `mean_i −Σ_j labels_ij · log_softmax(logits_i)_j`.
fn host_soft_ce(logits: &[f64], labels: &[f64], m: usize) -> f64 {
    let n = logits.len() / m;
    let mut total = 0.0;
    for (row, lab) in logits.chunks(m).zip(labels.chunks(m)) {
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        total -= row.iter().zip(lab).map(|(v, l)| l * (v - lse)).sum::<f64>();
    }
    total / n as f64
}

fn host_soft_clip(preds: &[f64], targs: &[f64], d: usize, temp: f64) -> f64 {
    let n = preds.len() / d;
    let labels = host_softmax_rows(&host_logits(targs, targs, d, temp), n);
    let logits = host_logits(preds, targs, d, temp);
    let forward = host_soft_ce(&logits, &labels, n);
    let backward = host_soft_ce(&host_transpose(&logits, n, n), &labels, n);
    (forward + backward) / 2.0
}

/// `utils.mixco_nce` labels written out as the README describes them: `diag(β)`, then `1 − β_i`
/// at `[i, perm_i]` (overwriting the diagonal at fixed points).
fn host_mixco_labels(draw: &MixcoDraw) -> Vec<f64> {
    let n = draw.perm.len();
    let mut labels = vec![0.0; n * n];
    for i in 0..n {
        labels[i * n + i] = draw.betas[i] as f64;
    }
    for i in 0..n {
        labels[i * n + draw.perm[i]] = 1.0 - draw.betas[i] as f64;
    }
    labels
}

fn host_mixco_nce(preds: &[f64], targs: &[f64], d: usize, temp: f64, draw: Option<&MixcoDraw>, bidi: bool) -> f64 {
    let n = preds.len() / d;
    let labels = match draw {
        Some(draw) => host_mixco_labels(draw),
        None => (0..n * n).map(|k| if k / n == k % n { 1.0 } else { 0.0 }).collect(),
    };
    let logits = host_logits(preds, targs, d, temp);
    let forward = host_soft_ce(&logits, &labels, n);
    if !bidi {
        return forward;
    }
    let backward = host_soft_ce(&host_transpose(&logits, n, n), &host_transpose(&labels, n, n), n);
    (forward + backward) / 2.0
}

/// Central finite difference of `f` at every entry of `x` (float64, step `h`).
fn central_difference(x: &[f64], h: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut probe = x.to_vec();
    (0..x.len())
        .map(|k| {
            probe[k] = x[k] + h;
            let up = f(&probe);
            probe[k] = x[k] - h;
            let down = f(&probe);
            probe[k] = x[k];
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// Compares an autodiff gradient with a finite difference: `max|ad − fd| ≤ rtol · max|fd|`, plus
/// every entry listed in `spot` within `rtol` of its own size (or of the scale, if tiny).
fn compare_gradient(what: &str, ad: &HostTensor, fd: &[f64], spot: &[usize], rtol: f64) -> f64 {
    assert_eq!(ad.data.len(), fd.len(), "{what}: gradient size");
    let scale = fd.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(scale > 1e-6, "{what}: finite-difference gradient is zero");
    let (mut worst, mut at) = (0f64, 0usize);
    for (k, (a, f)) in ad.data.iter().zip(fd).enumerate() {
        let d = (*a as f64 - f).abs();
        if d > worst || d.is_nan() {
            worst = d;
            at = k;
        }
    }
    println!("{what:<52} max |ad − fd| / max|fd| {:.3e} (scale {scale:.3e})", worst / scale);
    assert!(
        worst <= rtol * scale,
        "{what}: entry {at}: autodiff {} vs finite difference {} (scale {scale:e})",
        ad.data[at],
        fd[at]
    );
    for &k in spot {
        let (a, f) = (ad.data[k] as f64, fd[k]);
        assert!(
            (a - f).abs() <= rtol * f.abs().max(1e-2 * scale),
            "{what}: spot entry {k}: autodiff {a} vs finite difference {f}"
        );
    }
    worst / scale
}

fn ad_leaf(host: &HostTensor) -> Tensor<AD, 2> {
    host.to_tensor::<AD, 2>(&Default::default()).require_grad()
}

// ---------------------------------------------------------------------------------------------
// 1. SoftCLIP
// ---------------------------------------------------------------------------------------------

#[test]
fn soft_clip_loss_matches_reference_at_every_temperature() {
    let inputs = loss_inputs();
    let json = losses_json();
    let preds_host = inputs.get("softclip.preds").unwrap();
    let targs_host = inputs.get("softclip.targs").unwrap();
    assert_eq!(preds_host.shape, [8, 20]);
    let section = json["soft_clip_loss"].as_object().unwrap();
    let mut temps = Vec::new();
    let mut worst = 0f64;
    for (key, value) in section {
        let Some(temp) = key.strip_prefix("temp=") else { continue };
        let temp: f64 = temp.parse().unwrap();
        temps.push(temp);
        let want = value.as_f64().unwrap();
        let got =
            scalar(soft_clip_loss::<B>(tensor2(&inputs, "softclip.preds"), tensor2(&inputs, "softclip.targs"), temp));
        worst = worst.max(check_scalar(&format!("soft_clip_loss temp={temp}"), got, want, RTOL));
        // The float64 host version (used for the finite differences) agrees as well.
        let host = host_soft_clip(&to_f64(preds_host), &to_f64(targs_host), 20, temp);
        assert_close_scalar(&format!("host f64 soft_clip_loss temp={temp}"), host, want, RTOL);
    }
    temps.sort_by(f64::total_cmp);
    assert_eq!(temps, [0.004, 0.006, 0.0075, 0.125, 0.5], "temperatures in losses.json");
    println!("soft_clip_loss worst rel err {worst:.3e}");
}

#[test]
fn l2_normalize_keeps_unit_rows_and_normalises_others() {
    let inputs = loss_inputs();
    // The reference inputs are already row-l2-normalised: a fixed point.
    for key in ["softclip.preds", "softclip.targs", "softcont.student"] {
        let x = inputs.get(key).unwrap();
        let got = HostTensor::from_tensor(l2_normalize::<B>(tensor2(&inputs, key)));
        check_tensor(&format!("l2_normalize({key})"), &got, x, 1e-6);
    }
    // A hand example, with an all-zero row kept at zero by the eps.
    let x = HostTensor::new(vec![3, 2], vec![3.0, 4.0, -0.5, 0.0, 0.0, 0.0]);
    let got = HostTensor::from_tensor(l2_normalize::<B>(x.to_tensor(&Default::default())));
    check_tensor(
        "l2_normalize hand example",
        &got,
        &HostTensor::new(vec![3, 2], vec![0.6, 0.8, -1.0, 0.0, 0.0, 0.0]),
        1e-6,
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Temperature schedule
// ---------------------------------------------------------------------------------------------

#[test]
fn cosine_anneal_matches_reference_schedule() {
    let inputs = loss_inputs();
    let json = losses_json();
    let got = cosine_anneal(0.004, 0.0075, 101);
    assert_eq!(got.len() as u64, json["cosine_anneal"]["len"].as_u64().unwrap());
    let want = inputs.get("cosine_anneal_0.004_0.0075_101").unwrap();
    let err = check_tensor("cosine_anneal(0.004, 0.0075, 101)", &HostTensor::new(vec![101], got.clone()), want, RTOL);
    // Element-wise relative error too (every value is ~0.004..0.0075, so this is as strict).
    let elementwise = got.iter().zip(&want.data).map(|(a, b)| rel(*a as f64, *b as f64)).fold(0f64, f64::max);
    println!("cosine_anneal worst element-wise rel err {elementwise:.3e} (vs scale {err:.3e})");
    assert!(elementwise <= RTOL, "cosine_anneal element-wise rel err {elementwise:e}");
    for (name, range) in [("first5", 0..5), ("last5", 96..101)] {
        let list = json["cosine_anneal"][name].as_array().unwrap();
        assert_eq!(list.len(), 5);
        for (v, i) in list.iter().zip(range) {
            check_scalar(&format!("cosine_anneal[{i}] ({name})"), got[i] as f64, v.as_f64().unwrap(), RTOL);
        }
    }
    // PyTorch evaluates the schedule in float32 (ours in float64, then rounded), so single values
    // may differ by an ulp (e.g. index 0: 0.0040000002 vs 0.0039999997); the ends are exact up to that.
    assert_close_scalar("schedule start", got[0] as f64, 0.004, 1e-6);
    assert_close_scalar("schedule end", got[100] as f64, 0.0075, 1e-6);
    // Degenerate lengths do not panic.
    assert_eq!(cosine_anneal(0.004, 0.0075, 0), Vec::<f32>::new());
    assert_eq!(cosine_anneal(0.004, 0.0075, 1), vec![0.004f32]);
}

// ---------------------------------------------------------------------------------------------
// 3. BiMixCo voxel mixing
// ---------------------------------------------------------------------------------------------

#[test]
fn mixco_voxels_reproduces_reference_mixing() {
    let inputs = loss_inputs();
    let json = losses_json();
    let draw = draw_from(&inputs, "mixco");
    draw.validate().unwrap();
    assert_draw_matches_json(&draw, &json["mixco"], "betas_after_mixco");
    // `utils.mixco` returns β = 1 on unselected rows.
    for (b, s) in draw.betas.iter().zip(&draw.select) {
        assert!(*s || *b == 1.0, "unselected row with beta {b}");
    }
    let vin = inputs.get("mixco.voxels_in").unwrap();
    let vout = inputs.get("mixco.voxels_out").unwrap();
    assert_eq!(vin.shape, [8, 1, 11]);
    // `[:, 0]`: the middle axis has size 1, so it is a reshape.
    let vin = HostTensor::new(vec![8, 11], vin.data.clone());
    let vout = HostTensor::new(vec![8, 11], vout.data.clone());
    let got = HostTensor::from_tensor(mixco_voxels::<B>(vin.to_tensor(&Default::default()), &draw));
    check_tensor("mixco_voxels vs mixco.voxels_out", &got, &vout, RTOL);
    // Unselected rows are copied exactly.
    for (i, s) in draw.select.iter().enumerate() {
        if !s {
            assert_eq!(got.data[i * 11..(i + 1) * 11], vin.data[i * 11..(i + 1) * 11], "unselected row {i} changed");
        }
    }
    // A selection flag is honoured even if a caller passes β ≠ 1 on an unselected row.
    let mut sloppy = draw.clone();
    for (b, s) in sloppy.betas.iter_mut().zip(&sloppy.select) {
        if !s {
            *b = 0.25;
        }
    }
    let got = HostTensor::from_tensor(mixco_voxels::<B>(vin.to_tensor(&Default::default()), &sloppy));
    check_tensor("mixco_voxels ignores betas of unselected rows", &got, &vout, RTOL);
}

// ---------------------------------------------------------------------------------------------
// 4. BiMixCo NCE
// ---------------------------------------------------------------------------------------------

fn nce(inputs: &TensorMap, temp: f64, draw: Option<&MixcoDraw>, bidi: bool) -> f64 {
    scalar(mixco_nce::<B>(tensor2(inputs, "mixco.preds"), tensor2(inputs, "mixco.targs"), temp, draw, bidi))
}

fn host_nce(inputs: &TensorMap, temp: f64, draw: Option<&MixcoDraw>, bidi: bool) -> f64 {
    let p = to_f64(inputs.get("mixco.preds").unwrap());
    let t = to_f64(inputs.get("mixco.targs").unwrap());
    host_mixco_nce(&p, &t, 20, temp, draw, bidi)
}

#[test]
fn mixco_nce_matches_reference_values() {
    let inputs = loss_inputs();
    let json = losses_json();
    let draw = draw_from(&inputs, "mixco");
    let m = &json["mixco"];
    let cases: [(&str, f64, Option<&MixcoDraw>, bool); 4] = [
        ("mixco_nce_temp0.006_bidirectional", 0.006, Some(&draw), true),
        ("mixco_nce_temp0.1_bidirectional", 0.1, Some(&draw), true),
        ("mixco_nce_temp0.006_unidirectional", 0.006, Some(&draw), false),
        ("nce_no_mix_temp0.006", 0.006, None, true),
    ];
    let mut worst = 0f64;
    for (key, temp, d, bidi) in cases {
        let want = json_f64(m, &[key]);
        worst = worst.max(check_scalar(&format!("mixco {key}"), nce(&inputs, temp, d, bidi), want, RTOL));
        assert_close_scalar(&format!("host f64 {key}"), host_nce(&inputs, temp, d, bidi), want, RTOL);
    }
    // The one-directional no-draw path (no reference value) agrees with the float64 host version.
    let uni = nce(&inputs, 0.006, None, false);
    assert_close_scalar("plain InfoNCE unidirectional vs host", uni, host_nce(&inputs, 0.006, None, false), RTOL);
    println!("mixco_nce worst rel err {worst:.3e}");
}

#[test]
fn mixco_nce_fixed_points_follow_the_label_quirk() {
    let inputs = loss_inputs();
    let json = losses_json();
    let section = &json["mixco_fixedpoint"];
    let draw = draw_from(&inputs, "mixco_fixedpoint");
    draw.validate().unwrap();
    assert_draw_matches_json(&draw, section, "betas");
    assert_eq!((draw.perm[0], draw.select[0]), (0, true), "row 0 is a selected fixed point");
    assert_eq!((draw.perm[3], draw.select[3]), (3, false), "row 3 is an unselected fixed point");

    let n = 8;
    let labels = mixco_labels(&draw);
    assert_eq!(labels.len(), n * n);
    let row = |i: usize| &labels[i * n..(i + 1) * n];
    // Row 0 (selected, perm[0]=0): only 1 − β = 0.3 on the diagonal.
    assert_eq!(row(0)[0], 1.0 - draw.betas[0]);
    assert!((row(0)[0] - 0.3).abs() < 1e-6, "row 0 diagonal {}", row(0)[0]);
    assert!(row(0)[1..].iter().all(|&v| v == 0.0), "row 0 off-diagonal {:?}", row(0));
    // Row 3 (unselected, perm[3]=3): all zero.
    assert!(row(3).iter().all(|&v| v == 0.0), "row 3 {:?}", row(3));
    // Any other row: β on the diagonal, 1 − β at the partner (0 for unselected rows), sum 1.
    for i in (0..n).filter(|&i| draw.perm[i] != i) {
        let r = row(i);
        assert_eq!(r[i], draw.betas[i], "row {i} diagonal");
        assert_eq!(r[draw.perm[i]], 1.0 - draw.betas[i], "row {i} partner");
        assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-6, "row {i} sums to {}", r.iter().sum::<f32>());
    }
    // Same matrix as the independent host construction.
    let host = host_mixco_labels(&draw);
    assert!(labels.iter().zip(&host).all(|(a, b)| (*a as f64 - b).abs() < 1e-7), "labels vs host");

    let want = json_f64(section, &["mixco_nce_temp0.006_bidirectional"]);
    let got = nce(&inputs, 0.006, Some(&draw), true);
    check_scalar("mixco_fixedpoint temp0.006 bidirectional", got, want, RTOL);
    assert_close_scalar("host f64 mixco_fixedpoint", host_nce(&inputs, 0.006, Some(&draw), true), want, RTOL);

    // The quirk matters: keeping β on the diagonal of row 0 and 1 on row 3 gives another value.
    let mut fixed = host_mixco_labels(&draw);
    fixed[0] = 1.0;
    fixed[3 * n + 3] = 1.0;
    let p = to_f64(inputs.get("mixco.preds").unwrap());
    let t = to_f64(inputs.get("mixco.targs").unwrap());
    let logits = host_logits(&p, &t, 20, 0.006);
    let corrected = (host_soft_ce(&logits, &fixed, n)
        + host_soft_ce(&host_transpose(&logits, n, n), &host_transpose(&fixed, n, n), n))
        / 2.0;
    assert!(rel(corrected, want) > 1e-3, "reference does not distinguish the quirk ({corrected} vs {want})");
}

#[test]
fn mixco_nce_multi_subject_perms_are_not_offset() {
    let inputs = loss_inputs();
    let json = losses_json();
    let section = &json["mixco_multisubj"];
    let draw = draw_from(&inputs, "mixco_multisubj");
    assert_draw_matches_json(&draw, section, "betas");

    // The two 4-sample subject draws, each local to 0..4.
    let half = |r: std::ops::Range<usize>| MixcoDraw {
        perm: draw.perm[r.clone()].to_vec(),
        betas: draw.betas[r.clone()].to_vec(),
        select: draw.select[r].to_vec(),
    };
    let (a, b) = (half(0..4), half(4..8));
    a.validate().unwrap();
    b.validate().unwrap();
    let quirky = MixcoDraw::concat(&[a.clone(), b.clone()], false);
    assert_eq!(quirky, draw, "concat without offsets reproduces the stored concatenation");
    assert!(quirky.perm[4..].iter().all(|&p| p < 4), "second block points into the first");
    let offset = MixcoDraw::concat(&[a, b], true);
    assert_eq!(offset.perm[..4], draw.perm[..4]);
    assert_eq!(offset.perm[4..].iter().map(|p| p - 4).collect::<Vec<_>>(), draw.perm[4..]);
    assert_eq!((offset.betas.as_slice(), offset.select.as_slice()), (draw.betas.as_slice(), draw.select.as_slice()));
    offset.validate().unwrap();
    // The un-offset perm is not a permutation of 0..8 (it repeats 0..4), so validate rejects it —
    // which is why the training path must not validate the concatenated draw.
    assert!(quirky.validate().is_err());

    let want = json_f64(section, &["mixco_nce_temp0.006_bidirectional"]);
    let got = nce(&inputs, 0.006, Some(&quirky), true);
    check_scalar("mixco_multisubj temp0.006 bidirectional", got, want, RTOL);
    assert_close_scalar("host f64 mixco_multisubj", host_nce(&inputs, 0.006, Some(&quirky), true), want, RTOL);
    // The corrected (offset) labels give a different value: the reference pins the quirk down.
    let corrected = nce(&inputs, 0.006, Some(&offset), true);
    assert!(rel(corrected, want) > 1e-3, "offset perms give {corrected}, reference {want}");
}

// ---------------------------------------------------------------------------------------------
// 5. Soft contrastive loss (low-level branch)
// ---------------------------------------------------------------------------------------------

#[test]
fn soft_cont_loss_matches_reference() {
    let inputs = loss_inputs();
    let json = losses_json();
    assert_eq!(inputs.get("softcont.student").unwrap().shape, [12, 9]);
    let mut worst = 0f64;
    for temp in [0.2, 0.125] {
        let want = json_f64(&json, &["soft_cont_loss", &format!("temp={temp}")]);
        let got = scalar(soft_cont_loss::<B>(
            tensor2(&inputs, "softcont.student"),
            tensor2(&inputs, "softcont.teacher"),
            tensor2(&inputs, "softcont.teacher_aug"),
            temp,
        ));
        worst = worst.max(check_scalar(&format!("soft_cont_loss temp={temp}"), got, want, RTOL));
    }
    println!("soft_cont_loss worst rel err {worst:.3e}");
}

// ---------------------------------------------------------------------------------------------
// 6. The total objective
// ---------------------------------------------------------------------------------------------

#[test]
fn total_objective_matches_reference() {
    let json = load_json(REF, "total_loss.json");
    let outputs = load_safetensors(REF, "outputs.safetensors");
    let tl = load_safetensors(REF, "total_loss.safetensors");
    let device = Default::default();

    let clip_voxels = outputs.get("subj0.clip_voxels").unwrap();
    let clip_target = tl.get("input.clip_target").unwrap();
    assert_eq!(clip_voxels.shape, [5, 4, 16]);
    assert_eq!(clip_target.shape, [5, 4, 16]);
    let preds = l2_normalize(clip_voxels.to_tensor::<B, 3>(&device).flatten::<2>(1, 2));
    let targets = l2_normalize(clip_target.to_tensor::<B, 3>(&device).flatten::<2>(1, 2));
    let clip = soft_clip_loss(preds, targets, 0.006);
    let clip_value = scalar(clip.clone());
    let mut worst = check_scalar(
        "loss_clip_softclip_temp0.006",
        clip_value,
        json["loss_clip_softclip_temp0.006"].as_f64().unwrap(),
        RTOL,
    );

    // The prior term is MSE(prior's x0 prediction, raw clip_target).
    let want_prior = json["loss_prior"].as_f64().unwrap();
    let prior_mse = mse_loss(
        tl.get("input.prior_pred").unwrap().to_tensor::<B, 3>(&device),
        clip_target.to_tensor::<B, 3>(&device),
    );
    worst =
        worst.max(check_scalar("loss_prior = mse_loss(prior_pred, clip_target)", scalar(prior_mse), want_prior, RTOL));

    let weights = LossWeights::default();
    assert_eq!((weights.prior, weights.clip, weights.blur, weights.blur_aux), (30.0, 1.0, 0.5, 0.1));
    let prior = Tensor::<B, 1>::from_data(TensorData::new(vec![want_prior as f32], [1]), &device);
    let terms = LossTerms { prior: Some(prior), clip: clip.clone(), blur_l1: None, blur_cont: None };
    let total = scalar(terms.total(&weights));
    worst = worst.max(check_scalar("total = 30 loss_prior + loss_clip", total, json["total"].as_f64().unwrap(), RTOL));
    println!("total objective worst rel err {worst:.3e}");

    // The blur terms enter as 0.5·(L1 + 0.1·L_cont); without a prior only clip remains.
    let one = |v: f32| Tensor::<B, 1>::from_data(TensorData::new(vec![v], [1]), &device);
    let all = LossTerms { prior: Some(one(2.0)), clip: one(3.0), blur_l1: Some(one(5.0)), blur_cont: Some(one(7.0)) };
    assert_close_scalar(
        "total with every term",
        scalar(all.total(&weights)),
        30.0 * 2.0 + 3.0 + 0.5 * (5.0 + 0.7),
        1e-6,
    );
    let l1_only = LossTerms { prior: None, clip: one(3.0), blur_l1: Some(one(5.0)), blur_cont: None };
    assert_close_scalar("total clip + l1", scalar(l1_only.total(&weights)), 3.0 + 2.5, 1e-6);
    let cont_only = LossTerms { prior: None, clip: one(3.0), blur_l1: None, blur_cont: Some(one(7.0)) };
    assert_close_scalar("total clip + cont", scalar(cont_only.total(&weights)), 3.0 + 0.35, 1e-6);
    let clip_only = LossTerms::<B> { prior: None, clip: one(3.0), blur_l1: None, blur_cont: None };
    assert_close_scalar("total clip only", scalar(clip_only.total(&weights)), 3.0, 1e-6);
}

#[test]
fn l1_and_mse_hand_examples() {
    let device = Default::default();
    let a = HostTensor::new(vec![2, 3], vec![1.0, -2.0, 0.5, 4.0, 0.0, -1.0]).to_tensor::<B, 2>(&device);
    let b = HostTensor::new(vec![2, 3], vec![0.0, 1.0, 0.5, 2.0, -3.0, -1.0]).to_tensor::<B, 2>(&device);
    // diffs 1, -3, 0, 2, 3, 0
    assert_close_scalar("l1_loss", scalar(l1_loss(a.clone(), b.clone())), 9.0 / 6.0, 1e-6);
    assert_close_scalar("mse_loss", scalar(mse_loss(a, b)), 23.0 / 6.0, 1e-6);
}

// ---------------------------------------------------------------------------------------------
// 7. Gradients (autodiff vs float64 central differences)
// ---------------------------------------------------------------------------------------------

/// A small deterministic input with rows of varied norm (not normalised on purpose).
fn small_matrix(n: usize, d: usize, seed: u64) -> HostTensor {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let data = (0..n * d)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    HostTensor::new(vec![n, d], data)
}

#[test]
fn soft_clip_loss_gradient_matches_finite_difference() {
    let inputs = loss_inputs();
    let cases = [
        (
            "reference 8x20, temp 0.006",
            inputs.get("softclip.preds").unwrap().clone(),
            inputs.get("softclip.targs").unwrap().clone(),
            0.006,
        ),
        (
            "reference 8x20, temp 0.125",
            inputs.get("softclip.preds").unwrap().clone(),
            inputs.get("softclip.targs").unwrap().clone(),
            0.125,
        ),
        ("small 4x6, temp 0.5", small_matrix(4, 6, 1), small_matrix(4, 6, 2), 0.5),
    ];
    let mut worst = 0f64;
    for (what, preds, targs, temp) in cases {
        let d = preds.shape[1];
        let p = ad_leaf(&preds);
        let t = targs.to_tensor::<AD, 2>(&Default::default());
        let loss = soft_clip_loss(p.clone(), t, temp);
        let value = scalar(loss.clone());
        let grads = loss.backward();
        let ad = HostTensor::from_tensor(p.grad(&grads).unwrap());
        assert_eq!(ad.shape, preds.shape);
        let (p64, t64) = (to_f64(&preds), to_f64(&targs));
        assert_close_scalar(&format!("{what}: value vs host"), value, host_soft_clip(&p64, &t64, d, temp), RTOL);
        let fd = central_difference(&p64, 1e-6, |x| host_soft_clip(x, &t64, d, temp));
        let spot = [0, d + 3, 2 * d + 5, preds.data.len() - 1];
        worst = worst.max(compare_gradient(&format!("d soft_clip / d preds ({what})"), &ad, &fd, &spot, GRAD_RTOL));
    }
    println!("soft_clip_loss gradient worst rel err {worst:.3e}");
}

/// (label, preds, targets, temperature, draw, bidirectional).
type NceGradCase<'a> = (&'a str, &'a HostTensor, &'a HostTensor, f64, Option<&'a MixcoDraw>, bool);

#[test]
fn mixco_nce_gradient_matches_finite_difference() {
    let inputs = loss_inputs();
    let preds = inputs.get("mixco.preds").unwrap().clone();
    let targs = inputs.get("mixco.targs").unwrap().clone();
    let mixco = draw_from(&inputs, "mixco");
    let fixed = draw_from(&inputs, "mixco_fixedpoint");
    let multi = draw_from(&inputs, "mixco_multisubj");
    let small_draw =
        MixcoDraw { perm: vec![2, 0, 1, 3], betas: vec![0.3, 1.0, 0.8, 0.6], select: vec![true, false, true, true] };
    let cases: [NceGradCase<'_>; 6] = [
        ("mixco, 0.006, bidirectional", &preds, &targs, 0.006, Some(&mixco), true),
        ("mixco, 0.1, unidirectional", &preds, &targs, 0.1, Some(&mixco), false),
        ("fixed points, 0.006, bidirectional", &preds, &targs, 0.006, Some(&fixed), true),
        ("multi-subject, 0.006, bidirectional", &preds, &targs, 0.006, Some(&multi), true),
        ("plain InfoNCE, 0.1", &preds, &targs, 0.1, None, true),
        ("small 4x6, 0.5, bidirectional", &small_matrix(4, 6, 3), &small_matrix(4, 6, 4), 0.5, Some(&small_draw), true),
    ];
    let mut worst = 0f64;
    for (what, preds, targs, temp, draw, bidi) in cases {
        let d = preds.shape[1];
        let p = ad_leaf(preds);
        let t = targs.to_tensor::<AD, 2>(&Default::default());
        let loss = mixco_nce(p.clone(), t, temp, draw, bidi);
        let value = scalar(loss.clone());
        let grads = loss.backward();
        let ad = HostTensor::from_tensor(p.grad(&grads).unwrap());
        let (p64, t64) = (to_f64(preds), to_f64(targs));
        assert_close_scalar(
            &format!("{what}: value vs host"),
            value,
            host_mixco_nce(&p64, &t64, d, temp, draw, bidi),
            RTOL,
        );
        let fd = central_difference(&p64, 1e-6, |x| host_mixco_nce(x, &t64, d, temp, draw, bidi));
        let spot = [0, d + 3, 3 * d + 1, preds.data.len() - 1];
        worst = worst.max(compare_gradient(&format!("d mixco_nce / d preds ({what})"), &ad, &fd, &spot, GRAD_RTOL));
    }
    println!("mixco_nce gradient worst rel err {worst:.3e}");
}

// ---------------------------------------------------------------------------------------------
// 8. MixcoDraw::validate
// ---------------------------------------------------------------------------------------------

#[test]
fn mixco_draw_validate_rejects_bad_draws() {
    let ok = MixcoDraw { perm: vec![2, 0, 1], betas: vec![0.5, 1.0, 0.2], select: vec![true, false, true] };
    assert_eq!(ok.validate(), Ok(()));
    assert_eq!(MixcoDraw { perm: vec![], betas: vec![], select: vec![] }.validate(), Ok(()));

    let repeated = MixcoDraw { perm: vec![0, 0, 1], ..ok.clone() };
    let err = repeated.validate().unwrap_err();
    println!("repeated index: {err}");
    assert!(err.contains("not a permutation"), "{err}");

    let out_of_range = MixcoDraw { perm: vec![0, 3, 1], ..ok.clone() };
    let err = out_of_range.validate().unwrap_err();
    println!("out of range: {err}");
    assert!(err.contains("not a permutation") && err.contains("0..3"), "{err}");

    let short_betas = MixcoDraw { betas: vec![0.5, 1.0], ..ok.clone() };
    let err = short_betas.validate().unwrap_err();
    println!("short betas: {err}");
    assert!(err.contains("lengths differ") && err.contains("3, 2, 3"), "{err}");

    let long_select = MixcoDraw { select: vec![true, false, true, false], ..ok.clone() };
    let err = long_select.validate().unwrap_err();
    println!("long select: {err}");
    assert!(err.contains("lengths differ") && err.contains("3, 3, 4"), "{err}");

    let short_perm = MixcoDraw { perm: vec![1, 0], ..ok };
    let err = short_perm.validate().unwrap_err();
    assert!(err.contains("lengths differ"), "{err}");

    // The stored reference draws are valid.
    let inputs = loss_inputs();
    for prefix in ["mixco", "mixco_fixedpoint"] {
        draw_from(&inputs, prefix).validate().unwrap();
    }
}
