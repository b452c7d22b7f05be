//! `--device wgpu` end to end, on whatever Vulkan adapter the machine has (Mesa's lavapipe in
//! CI: `scripts/test.sh` installs it). Built only with this crate's `wgpu` feature, which the
//! test command turns on together with the binaries' own.
//!
//! Tolerances, and why (measured on lavapipe, Mesa 22.3.6):
//! - Forward outputs against the PyTorch reference: 1e-4 of the output's scale (CPU: 1e-5).
//!   cubecl's matmuls tile and reduce in another order than the CPU's gemm, and its `exp`/`tanh`
//!   (GELU, SiLU, softmax) are the shader compiler's approximations; measured ≤ 2e-6 relative.
//! - Training losses, 20 steps, wgpu vs CPU: 5e-4 relative per step (measured: 3.8e-5 at
//!   worst, growing from 0 at step 0). Initial weights, batches, BiMixCo draws and prior noise
//!   are identical (drawn on the host) and dropout is off; what remains is float rounding
//!   (above) — GELU's backward deviates ~1e-3 relative elementwise on wgpu — amplified by
//!   AdamW's division by √v on near-zero gradients, growing with the steps.
//! - bf16 (emulated by rounding on wgpu, which has no bf16 arithmetic) vs fp32: every loss
//!   finite, and within 5% of fp32's per step over 20 steps (bf16 keeps 8 significant bits:
//!   2^-9 relative per rounding, accumulated in f32).
#![cfg(feature = "wgpu")]

use std::path::{Path, PathBuf};

use voxbridge_e2e::{SimDataset, assert_success, describe, stdout, step_losses, voxbridge};

/// A 2-subject MindEye2 experiment on `tiny`, 20 steps, dropout off (backends draw other
/// dropout masks), the prior on, evaluation small.
fn experiment(dir: &Path, data: &SimDataset, extra: &str) -> PathBuf {
    let text = format!(
        "name = \"wgpu\"\n[data]\nmanifest = {:?}\ntrain_subjects = [2, 3]\n\
         [train]\nseed = 3\nbatch_size = 8\nepochs = 4\nmax_steps = 20\nsamples_per_epoch = 40\nmixup_pct = 0.25\n\
         [model]\nhidden = 32\nblocks = 1\nprior_depth = 1\nprior_dim_head = 16\ndropout = 0.0\n\
         [eval]\nloops = 3\nprior_steps = 0\n{extra}",
        data.manifest_str()
    );
    let path = dir.join("wgpu.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn train(exp: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args: Vec<&std::ffi::OsStr> = vec!["train".as_ref(), exp.as_os_str(), "--out".as_ref(), out.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    voxbridge(&args)
}

/// The largest per-step relative difference of the two runs' losses (all three columns).
fn worst_relative(a: &[[f64; 3]], b: &[[f64; 3]]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| (0..3).map(move |k| (x[k] - y[k]).abs() / x[k].abs().max(1e-6)))
        .fold(0.0, f64::max)
}

#[test]
fn training_on_wgpu_matches_the_cpu_run() {
    let data = SimDataset::tiny(4);
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), &data, "");
    let (cpu, gpu) = (dir.path().join("cpu"), dir.path().join("wgpu"));
    assert_success(&train(&exp, &cpu, &[]));
    let out = train(&exp, &gpu, &["--device", "wgpu"]);
    assert_success(&out);
    let (a, b) = (step_losses(&cpu), step_losses(&gpu));
    assert_eq!(a.len(), 20);
    let worst = worst_relative(&a, &b);
    eprintln!("wgpu vs cpu, 20 steps: worst relative loss difference {worst:.2e}");
    assert!(worst <= 5e-4, "wgpu vs cpu: {worst:e}\ncpu {a:?}\nwgpu {b:?}");
    let config = std::fs::read_to_string(gpu.join("config.toml")).unwrap();
    assert!(config.contains("device = \"wgpu\""), "the resolved config records the device:\n{config}");
}

#[test]
fn two_wgpu_workers_train_what_one_wgpu_process_trains() {
    let data = SimDataset::tiny(5);
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), &data, "[compute]\ndevice = \"wgpu\"\n");
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    assert_success(&train(&exp, &one, &[]));
    let out = train(&exp, &two, &["--workers", "2"]);
    assert_success(&out);
    let worst = worst_relative(&step_losses(&one), &step_losses(&two));
    eprintln!("2 wgpu workers vs 1 wgpu process: worst relative loss difference {worst:.2e}");
    // Same backend on both sides: the data-parallel sums only reorder float additions.
    assert!(worst <= 1e-4, "{worst:e}\n{}", describe(&out));
}

#[test]
fn bf16_on_wgpu_is_finite_and_close_to_fp32() {
    let data = SimDataset::tiny(6);
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), &data, "[compute]\ndevice = \"wgpu\"\n");
    let (fp32, bf16) = (dir.path().join("fp32"), dir.path().join("bf16"));
    assert_success(&train(&exp, &fp32, &[]));
    assert_success(&train(&exp, &bf16, &["--precision", "bf16"]));
    let (a, b) = (step_losses(&fp32), step_losses(&bf16));
    assert!(b.iter().flatten().all(|v| v.is_finite()), "bf16 losses {b:?}");
    let worst = worst_relative(&a, &b);
    eprintln!("bf16 vs fp32 on wgpu, 20 steps: worst relative loss difference {worst:.2e}");
    assert!(worst <= 5e-2, "bf16 vs fp32: {worst:e}\nfp32 {a:?}\nbf16 {b:?}");
    assert!(worst > 0.0, "bf16 changed nothing: the precision never reached the matmuls");
}

#[test]
fn bench_train_on_wgpu_prints_throughput_flops_and_memory() {
    // The tiny experiment's model: P1 takes ~13 s a step on lavapipe.
    let data = SimDataset::tiny(7);
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), &data, "");
    let json = dir.path().join("bench.json");
    let out = voxbridge(&[
        "bench",
        "train",
        "--device",
        "wgpu",
        "--config",
        exp.to_str().unwrap(),
        "--steps",
        "2",
        "--warmup",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_success(&out);
    let table = stdout(&out);
    assert!(table.contains("TFLOP/s") && table.contains("peak GiB"), "{table}");
    let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let r = &results[0];
    assert_eq!(r["device"], "wgpu");
    assert!(r["median_ms"].as_f64().unwrap() > 0.0);
    assert!(r["achieved_tflops"].as_f64().unwrap() > 0.0);
    assert!(r["memory"]["peak"].as_u64().unwrap() > 0, "cubecl reports its pools: {r}");
}
