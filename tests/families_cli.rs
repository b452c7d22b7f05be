//! End-to-end tests of `voxbridge params` and `voxbridge predict` for the families beside
//! MindEye2, against the PyTorch references (`tests/reference/mindeye1-tiny`,
//! `tests/reference/mindreader-tiny`): released parameter counts from the model files, and the
//! original checkpoints (`last.pth`, `lowlevel_last.pth`, `model.pth`) predicted with no
//! `--subject`, their family recognised from the key names.

use std::path::Path;

use voxbridge_e2e::{assert_exit, assert_success, reference_dir as reference, stderr, voxbridge, workspace_root};
use voxbridge_model::tensors::{HostTensor, TensorMap};

fn load(path: &Path) -> TensorMap {
    TensorMap::from_safetensors(&std::fs::read(path).expect("read safetensors"), &path.display().to_string())
        .expect("parse safetensors")
}

/// `[rows, cols]` float32 `.npy`.
fn write_npy(path: &Path, t: &HostTensor) {
    std::fs::write(path, voxbridge_arrays::npy::write_f32(&t.shape, &t.data)).expect("write npy");
}

fn assert_close(what: &str, got: &HostTensor, want: &HostTensor) {
    assert_eq!(got.shape, want.shape, "{what}: shape");
    let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = got.data.iter().zip(&want.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("{what}: max |diff| {worst:.2e} of scale {scale:.2e}");
    assert!(worst <= 1e-5 * scale, "{what}: max |diff| {worst:e} > 1e-5 × {scale:e}");
}

fn params(model: &str) -> String {
    let path = workspace_root().join("experiments/models").join(model);
    assert_success(&voxbridge(&["params", "--model", path.to_str().unwrap()]))
}

/// A row of the table: `name`, padding, then `count` (and whatever follows it).
fn assert_row(table: &str, name: &str, count: &str) {
    let found = table.lines().any(|line| {
        line.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') && rest.trim_start().starts_with(count))
    });
    assert!(found, "no row `{name} … {count}` in\n{table}");
}

#[test]
fn params_prints_the_released_counts_of_every_family() {
    // ../shared/reference/*/param_counts_full.json
    let me1 = params("mindeye1-released.toml");
    assert_row(&me1, "voxel2clip.lin0", "64,417,792");
    assert_row(&me1, "voxel2clip.mlp", "67,158,016");
    assert_row(&me1, "voxel2clip.lin1", "808,649,472");
    assert_row(&me1, "voxel2clip.projector", "7,354,624");
    assert_row(&me1, "voxel2clip (total)", "947,579,904");
    assert_row(&me1, "net.to_time_embeds", "4,722,432");
    assert_row(&me1, "net (total, prior transformer)", "56,055,184");
    assert_row(&me1, "TOTAL (voxel2clip + net, the checkpoint's model)", "1,003,635,088  (1,003,635,072 trainable)");
    let low = params("mindeye1-lowlevel-released.toml");
    assert_row(&low, "voxel2sd.upsampler", "6,841,668");
    assert_row(&low, "voxel2sd.maps_projector", "559,616");
    assert_row(&low, "TOTAL (voxel2sd)", "206,065,604");
    let mr = params("mindreader-released.toml");
    assert_row(&mr, "encoder", "149,056");
    assert_row(&mr, "fc", "1,007,873");
    assert_row(&mr, "TOTAL", "1,156,929");
    let path = workspace_root().join("experiments/models/mindreader-released.toml");
    let err = assert_exit(&voxbridge(&["params", "--model", path.to_str().unwrap(), "--memory", "--batch", "8"]), 1);
    assert!(err.contains("--memory estimates MindEye2 models"), "{err}");
}

/// `predict` on `checkpoint` with `--voxels` from `voxels`; returns the outputs and stderr.
fn predict(checkpoint: &Path, voxels: &HostTensor, extra: &[&str]) -> (TensorMap, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (npy, out) = (dir.path().join("x.npy"), dir.path().join("o.safetensors"));
    write_npy(&npy, voxels);
    let mut args = vec!["predict", "--checkpoint", checkpoint.to_str().unwrap(), "--voxels", npy.to_str().unwrap()];
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(extra);
    let output = voxbridge(&args);
    assert_success(&output);
    (load(&out), stderr(&output))
}

#[test]
fn predict_reproduces_mindeye1_from_last_pth() {
    let dir = reference("mindeye1-tiny");
    let voxels = load(&dir.join("inputs.safetensors")).get("voxels").unwrap().clone();
    let want = load(&dir.join("outputs.safetensors"));
    let (got, err) = predict(&dir.join("last.pth"), &voxels, &[]);
    assert!(err.contains("(mindeye1)") && err.contains("37 voxels, hidden 32"), "{err}");
    assert_close("clip_voxels", got.get("clip_voxels").unwrap(), want.get("v2c.clip_voxels").unwrap());
    assert_close("clip_voxels_proj", got.get("clip_voxels_proj").unwrap(), want.get("v2c.clip_voxels_proj").unwrap());

    // MindEye1's reconstruction path: full DDPM over the prior's 100 steps, reproducible by seed.
    let sample = |seed: &str| predict(&dir.join("last.pth"), &voxels, &["--prior-steps", "100", "--seed", seed]).0;
    let (a, b, c) = (sample("3"), sample("3"), sample("4"));
    let a = a.get("prior_samples").unwrap();
    assert_eq!(a.shape, vec![5, 5, 16]);
    assert!(a.data.iter().all(|v| v.is_finite()));
    assert_eq!(a, b.get("prior_samples").unwrap());
    assert_ne!(a, c.get("prior_samples").unwrap());
    let scratch = tempfile::tempdir().expect("temp dir");
    let npy = scratch.path().join("x.npy");
    write_npy(&npy, &voxels);
    let (ckpt, out) = (dir.join("last.pth"), scratch.path().join("o.safetensors"));
    let args = [
        "predict",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--voxels",
        npy.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--prior-steps",
        "20",
    ];
    let err = assert_exit(&voxbridge(&args), 1);
    assert!(err.contains("full DDPM, --prior-steps 100"), "{err}");
}

#[test]
fn predict_reproduces_the_mindeye1_lowlevel_model_from_lowlevel_last_pth() {
    let dir = reference("mindeye1-tiny");
    let voxels = load(&dir.join("inputs.safetensors")).get("voxels").unwrap().clone();
    let want = load(&dir.join("outputs.safetensors"));
    let scratch = tempfile::tempdir().expect("temp dir");
    // A state dict does not record GroupNorm groups: the tiny model's 4 need a model file.
    let npy = scratch.path().join("x.npy");
    write_npy(&npy, &voxels);
    let ckpt = dir.join("lowlevel_last.pth");
    let out = scratch.path().join("o.safetensors");
    let args = [
        "predict",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--voxels",
        npy.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let err = assert_exit(&voxbridge(&args), 1);
    assert!(err.contains("norm_num_groups") && err.contains("--model"), "{err}");
    assert!(!out.exists());
    let model = scratch.path().join("tiny.toml");
    std::fs::write(
        &model,
        "family = \"mindeye1-lowlevel\"\nvoxels = 37\nhidden = 24\nblocks = 2\nmap_channels = 8\nmap_size = 4\n\
         latent_channels = 4\nblock_out_channels = [8, 8, 16]\nlayers_per_block = 1\nnorm_num_groups = 4\n\
         projector_width = 12\n",
    )
    .unwrap();
    let (got, _) = predict(&ckpt, &voxels, &["--model", model.to_str().unwrap()]);
    assert_close("upsampler_out", got.get("upsampler_out").unwrap(), want.get("ll.upsampler_out").unwrap());
    assert_close("transformer_feats", got.get("transformer_feats").unwrap(), want.get("ll.transformer_feats").unwrap());
}

#[test]
fn predict_reproduces_mind_reader_from_model_pth_padded_or_not() {
    let dir = reference("mindreader-tiny");
    let inputs = load(&dir.join("inputs.safetensors"));
    let fmri = inputs.get("fmri").unwrap();
    let want = load(&dir.join("outputs.safetensors"));
    let (got, err) = predict(&dir.join("model.pth"), fmri, &[]);
    assert!(err.contains("(mindreader)") && err.contains("input length 64"), "{err}");
    assert_close("y_pred", got.get("y_pred").unwrap(), want.get("y_pred").unwrap());
    // The 59 voxels without their padding (2 zeros left, 3 right) give the same prediction.
    let data: Vec<f32> = fmri.data.chunks(64).flat_map(|row| row[2..61].to_vec()).collect();
    let (got, _) = predict(&dir.join("model.pth"), &HostTensor::new(vec![6, 59], data), &[]);
    assert_close("y_pred (unpadded input)", got.get("y_pred").unwrap(), want.get("y_pred").unwrap());
}

#[test]
fn predict_names_a_wrong_voxel_count() {
    let dir = reference("mindeye1-tiny");
    let scratch = tempfile::tempdir().expect("temp dir");
    let npy = scratch.path().join("x.npy");
    write_npy(&npy, &HostTensor::new(vec![2, 5], vec![0.5; 10]));
    let out = scratch.path().join("o.safetensors");
    let ckpt = dir.join("last.pth");
    let args = [
        "predict",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--voxels",
        npy.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let err = assert_exit(&voxbridge(&args), 1);
    assert!(err.contains("5 voxels per row, but the model takes 37") && err.contains("x.npy"), "{err}");
    assert!(!out.exists());
}

#[test]
fn retrieve_finds_each_prediction_among_a_pool_and_reuses_the_saved_index() {
    let dir = reference("mindeye1-tiny");
    let voxels = load(&dir.join("inputs.safetensors")).get("voxels").unwrap().clone();
    let proj = load(&dir.join("outputs.safetensors")).get("v2c.clip_voxels_proj").unwrap().clone();
    // 3,000 pool embeddings of width 5 × 16: pseudo-random, with row 1000 + q a slightly
    // perturbed copy of query q's reference output.
    let (n, width) = (3_000, 80);
    let mut state = 12345u64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let mut pool: Vec<f32> = (0..n * width).map(|_| next()).collect();
    for q in 0..5 {
        for d in 0..width {
            pool[(1000 + q) * width + d] = proj.data[q * width + d] * (1.0 + 0.01 * next());
        }
    }
    let scratch = tempfile::tempdir().expect("temp dir");
    let (npy, pool_npy, out) =
        (scratch.path().join("x.npy"), scratch.path().join("pool.npy"), scratch.path().join("hits.json"));
    write_npy(&npy, &voxels);
    write_npy(&pool_npy, &HostTensor::new(vec![n, width], pool.clone()));
    let ckpt = dir.join("last.pth");
    let args = |pool: &Path| {
        vec![
            "retrieve".to_string(),
            "--checkpoint".into(),
            ckpt.display().to_string(),
            "--voxels".into(),
            npy.display().to_string(),
            "--pool".into(),
            pool.display().to_string(),
            "--k".into(),
            "10".into(),
            "--exact".into(),
            "--out".into(),
            out.display().to_string(),
        ]
    };
    let run = |pool: &Path| voxbridge(&args(pool).iter().map(String::as_str).collect::<Vec<_>>());
    let first = run(&pool_npy);
    let stdout = assert_success(&first);
    let err = stderr(&first);
    assert!(err.contains("built in") && err.contains("3000 embeddings of width 80"), "{err}");
    assert!(err.contains("recall@10 against exact search: 1.0000"), "{err}");
    assert!(err.contains("ms per 1,000 queries"), "{err}");
    for q in 0..5 {
        assert!(stdout.contains(&format!("query {q}: {}:", 1000 + q)), "query {q} in\n{stdout}");
    }
    assert!(scratch.path().join("pool.npy.hnsw/index.json").is_file());
    let hits: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(hits["embedding"], "clip_voxels_proj");
    assert_eq!(hits["hits"][2][0]["index"], 1002);

    let second = run(&pool_npy);
    assert_success(&second);
    assert!(stderr(&second).contains("(reused)"), "{}", stderr(&second));

    // The same index folder with another pool is refused, naming what to do.
    pool[0] += 1.0;
    let other = scratch.path().join("other.npy");
    write_npy(&other, &HostTensor::new(vec![n, width], pool));
    let mut a = args(&other);
    a.extend(["--index".to_string(), scratch.path().join("pool.npy.hnsw").display().to_string()]);
    let err = assert_exit(&voxbridge(&a.iter().map(String::as_str).collect::<Vec<_>>()), 1);
    assert!(err.contains("another pool") && err.contains("delete the folder"), "{err}");
}

#[test]
fn ridge_fits_three_feature_spaces_with_lambda_per_space_chosen_over_sessions() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let data = scratch.path().join("sim");
    assert_success(&voxbridge(&[
        "data",
        "simulate",
        "--out",
        data.to_str().unwrap(),
        "--preset",
        "tiny",
        "--seed",
        "0",
    ]));
    let manifest = data.join("manifest.toml");
    let json = scratch.path().join("spaces.json");
    let (m, j) = (manifest.to_str().unwrap(), json.to_str().unwrap());
    let out = assert_success(&voxbridge(&[
        "ridge",
        "--data",
        m,
        "--subject",
        "1",
        "--spaces",
        "clip,caption,latent",
        "--json",
        j,
    ]));
    assert!(out.contains("λ per space by leave-sessions-out"), "{out}");
    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let spaces = result["spaces"].as_array().unwrap();
    assert_eq!(spaces.iter().map(|s| s["space"].as_str().unwrap()).collect::<Vec<_>>(), ["clip", "caption", "latent"]);
    for s in spaces {
        // Every alpha of the grid was cross-validated; the chosen one has the least error.
        let cv = s["cv_mse"].as_array().unwrap();
        assert_eq!(cv.len(), 6);
        let best = cv.iter().min_by(|a, b| a[1].as_f64().unwrap().total_cmp(&b[1].as_f64().unwrap())).unwrap();
        assert_eq!(best[0], s["alpha"]);
        // The simulated targets are decodable: well above chance (1/30 top-1, 0 correlation).
        assert!(s["score"].as_f64().unwrap() > 0.3, "{s}");
    }
    // One session: λ chosen on contiguous blocks of its trials.
    let out =
        assert_success(&voxbridge(&["ridge", "--data", m, "--subject", "1", "--sessions", "1", "--spaces", "latent"]));
    assert!(out.contains("contiguous blocks (5) within the one session"), "{out}");
    let err = assert_exit(&voxbridge(&["ridge", "--data", m, "--spaces", "text"]), 2);
    assert!(err.contains("clip, caption, latent"), "{err}");
}
