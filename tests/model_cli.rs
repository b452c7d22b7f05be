//! End-to-end tests of `voxbridge params` and `voxbridge predict` against the PyTorch reference
//! (`tests/reference/mindeye2-tiny*`): checkpoints load with no model file, the architecture
//! is inferred and printed, and the outputs equal the reference outputs.

use std::path::Path;

use voxbridge_e2e::{assert_exit, assert_success, reference_dir as reference, stderr, voxbridge, workspace_root};
use voxbridge_model::tensors::{HostTensor, TensorMap};

fn load(path: &Path) -> TensorMap {
    TensorMap::from_safetensors(&std::fs::read(path).expect("read safetensors"), &path.display().to_string())
        .expect("parse safetensors")
}

/// `[batch, voxels]` float32 `.npy`.
fn write_npy(path: &Path, rows: usize, cols: usize, data: &[f32]) {
    std::fs::write(path, voxbridge_arrays::npy::write_f32(&[rows, cols], data)).expect("write npy");
}

fn assert_close(what: &str, got: &HostTensor, want: &HostTensor, tolerance: f32) {
    assert_eq!(got.shape, want.shape, "{what}: shape");
    let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = got.data.iter().zip(&want.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("{what}: max |diff| {:.2e} of scale {scale:.2e}", worst);
    assert!(worst <= tolerance * scale, "{what}: max |diff| {worst:e} > {tolerance:e} × {scale:e}");
}

/// Runs `predict` for every subject of a reference folder and compares the named outputs
/// within 1e-5 of each output's scale, on the CPU.
fn predict_matches(folder: &str, outputs_file: &str, compare: &[(&str, &str)]) {
    predict_matches_on("cpu", 1e-5, folder, outputs_file, compare);
}

/// [`predict_matches`] on `device`, within `tolerance` of each output's scale.
fn predict_matches_on(device: &str, tolerance: f32, folder: &str, outputs_file: &str, compare: &[(&str, &str)]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let refdir = reference(folder);
    let inputs = load(&reference("mindeye2-tiny").join("inputs.safetensors"));
    let outputs = load(&refdir.join(outputs_file));
    for s in 0..3 {
        let voxels = inputs.get(&format!("subj{s}.voxels")).expect("voxels");
        let npy = dir.path().join(format!("subj{s}.npy"));
        write_npy(&npy, voxels.shape[0], voxels.shape[2], &voxels.data);
        let out = dir.path().join(format!("subj{s}.safetensors"));
        let output = voxbridge(&[
            "predict",
            "--checkpoint",
            refdir.join("last.pth").to_str().unwrap(),
            "--subject",
            &s.to_string(),
            "--voxels",
            npy.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--device",
            device,
        ]);
        assert_success(&output);
        let err = stderr(&output);
        assert!(err.contains("inferred from") && err.contains("subjects 3 with voxels [37, 29, 41]"), "{err}");
        let got = load(&out);
        for (ours, theirs) in compare {
            let want = outputs.get(&format!("subj{s}.{theirs}")).expect("reference output");
            let what = format!("{device}: {folder} subj{s} {ours}");
            assert_close(&what, got.get(ours).expect("output tensor"), want, tolerance);
        }
    }
}

#[test]
fn predict_reproduces_the_reference_outputs_from_last_pth() {
    predict_matches(
        "mindeye2-tiny",
        "outputs.safetensors",
        &[("backbone", "backbone"), ("clip_voxels", "clip_voxels")],
    );
}

#[test]
fn predict_reproduces_the_low_level_branch_from_last_pth() {
    predict_matches(
        "mindeye2-tiny-blurry",
        "outputs_blurry.safetensors",
        &[("blurry_latent", "blurry_latent"), ("blurry_features", "b_aux")],
    );
}

/// The same reference outputs on wgpu (lavapipe in CI). 1e-4 of scale: cubecl reduces in
/// another order than the CPU's gemm and its shaders' `exp`/`tanh` differ in the last bits (see
/// tests/wgpu_cli.rs).
#[cfg(feature = "wgpu")]
#[test]
fn predict_on_wgpu_reproduces_the_reference_outputs() {
    let both = [("backbone", "backbone"), ("clip_voxels", "clip_voxels")];
    predict_matches_on("wgpu", 1e-4, "mindeye2-tiny", "outputs.safetensors", &both);
    let blurry = [("blurry_latent", "blurry_latent"), ("blurry_features", "b_aux")];
    predict_matches_on("wgpu", 1e-4, "mindeye2-tiny-blurry", "outputs_blurry.safetensors", &blurry);
}

#[test]
fn predict_samples_the_prior_reproducibly_and_rejects_bad_input() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ckpt = reference("mindeye2-tiny").join("model.safetensors");
    let npy = dir.path().join("v.npy");
    write_npy(&npy, 2, 37, &(0..74).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>());
    let run = |out: &str, seed: &str| {
        let out = dir.path().join(out);
        let args =
            ["predict", "--checkpoint", ckpt.to_str().unwrap(), "--subject", "0", "--voxels", npy.to_str().unwrap()];
        let output =
            voxbridge(&[&args[..], &["--out", out.to_str().unwrap(), "--prior-steps", "5", "--seed", seed]].concat());
        assert_success(&output);
        load(&out).get("prior_samples").expect("prior_samples").clone()
    };
    let a = run("a.safetensors", "7");
    assert_eq!(a.shape, vec![2, 4, 16]);
    assert!(a.data.iter().all(|v| v.is_finite()));
    assert_eq!(a, run("b.safetensors", "7"), "same seed, same samples");
    assert_ne!(a, run("c.safetensors", "8"), "another seed, other samples");

    // Subject 1 has 29 voxels, not 37: a clear error, no output file.
    let out = dir.path().join("bad.safetensors");
    let for_subject = |subject: &str| {
        let (ckpt, npy, out) = (ckpt.to_str().unwrap(), npy.to_str().unwrap(), out.to_str().unwrap());
        voxbridge(&["predict", "--checkpoint", ckpt, "--subject", subject, "--voxels", npy, "--out", out])
    };
    let err = assert_exit(&for_subject("1"), 1);
    assert!(err.contains("37 voxels per row, but subject index 1 has 29"), "{err}");
    assert!(!out.exists());
    let output = for_subject("5");
    assert!(assert_exit(&output, 1).contains("subject indices 0..3 only"));
}

#[test]
fn params_prints_the_released_totals() {
    let model = workspace_root().join("experiments/models/mindeye2-released.toml");
    let out = assert_success(&voxbridge(&["params", "--model", model.to_str().unwrap()]));
    for expected in [
        "backbone (total)                               1,903,020,028",
        "diffusion_prior (total)                          259,865,216",
        "one-subject model, subject index 0             2,227,294,844  (2,227,294,828 trainable)",
        "pretraining model without subject index 0      2,575,262,332  (2,575,262,316 trainable)",
        "ridge.linears.0 (15724 voxels)                    64,409,600",
        "backbone.bupsampler                                1,750,692",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in\n{out}");
    }
}

#[test]
fn params_rejects_unknown_keys_with_line_and_column() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = std::fs::read_to_string(workspace_root().join("experiments/models/mindeye2-released.toml")).unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(&path, text.replace("blocks = 4", "blocks = 4\nblokcs = 5")).unwrap();
    let err = assert_exit(&voxbridge(&["params", "--model", path.to_str().unwrap()]), 1);
    assert!(err.contains("m.toml") && err.contains("blokcs") && err.contains("line 7"), "{err}");
}
