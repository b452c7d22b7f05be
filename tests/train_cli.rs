//! `voxbridge train`, `sweep`, `eval` and `demo` on the `tiny` simulated NSD.

use std::path::Path;

use voxbridge_e2e::{SimDataset, assert_success, describe, voxbridge, workspace_root};

/// A small MindEye2 experiment on `manifest`; `extra` is appended to `[train]` (2 epochs unless it
/// sets `epochs`).
fn experiment(name: &str, manifest: &str, subjects: &str, extra: &str) -> String {
    let extra = if extra.contains("epochs =") { extra.to_string() } else { format!("epochs = 2\n{extra}") };
    format!(
        "name = \"{name}\"\n[data]\nmanifest = {manifest:?}\ntrain_subjects = {subjects}\n\
         [train]\nseed = 0\nbatch_size = 8\n{extra}\n\
         [model]\nhidden = 32\nblocks = 1\nprior_depth = 1\nprior_dim_head = 16\n\
         [eval]\nloops = 5\nprior_steps = 4\n"
    )
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Columns `loss`, `clip_loss`, `prior_loss` of a steps.csv, one row per step.
fn losses(csv: &str) -> Vec<[f64; 3]> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (l, c, p) = (col("loss"), col("clip_loss"), col("prior_loss"));
    lines
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            [f[l].parse().unwrap(), f[c].parse().unwrap(), f[p].parse().unwrap()]
        })
        .collect()
}

/// The first 20 steps of a two-subject run on `tiny` (seed 0; 10 BiMixCo steps, then 10 SoftCLIP
/// steps) against stored values: guards the determinism of data order, initialisation, BiMixCo
/// draws, dropout, prior noise, the schedules and the optimizer.
/// Produced by this test with VOXBRIDGE_BLESS=1 (it then writes tests/golden/tiny-first-20-steps.csv
/// and passes); any change to the numbers must be a deliberate re-bless, explained in its commit.
#[test]
fn golden_losses_of_the_first_20_steps_on_tiny() {
    let data = SimDataset::tiny(0);
    let dir = tempfile::tempdir().unwrap();
    let exp = dir.path().join("golden.toml");
    std::fs::write(
        &exp,
        experiment(
            "golden",
            &data.manifest_str(),
            "[2, 3]",
            "epochs = 4\nmixup_pct = 0.25\nmax_steps = 20\nsamples_per_epoch = 80",
        ),
    )
    .unwrap();
    let run = dir.path().join("run");
    assert_success(&voxbridge(&["train".as_ref(), exp.as_os_str(), "--out".as_ref(), run.as_os_str()]));
    let csv = std::fs::read_to_string(run.join("metrics/steps.csv")).unwrap();
    let got = losses(&csv);
    assert_eq!(got.len(), 20, "{csv}");
    assert!(csv.contains(",0,") && csv.contains("bimixco") && csv.contains("softclip"), "{csv}");
    let golden = workspace_root().join("tests/golden/tiny-first-20-steps.csv");
    if std::env::var_os("VOXBRIDGE_BLESS").is_some() {
        std::fs::write(&golden, &csv).unwrap();
    }
    let want = losses(&std::fs::read_to_string(&golden).expect("tests/golden/tiny-first-20-steps.csv"));
    for (step, (g, w)) in got.iter().zip(&want).enumerate() {
        for k in 0..3 {
            let tol = 1e-4 * w[k].abs().max(1e-3);
            assert!((g[k] - w[k]).abs() <= tol, "step {step} column {k}: got {} want {}", g[k], w[k]);
        }
    }
    // A second identical run gives identical losses (same process-independent seeds).
    let run2 = dir.path().join("run2");
    assert_success(&voxbridge(&["train".as_ref(), exp.as_os_str(), "--out".as_ref(), run2.as_os_str()]));
    assert_eq!(losses(&std::fs::read_to_string(run2.join("metrics/steps.csv")).unwrap()), got);
}

#[test]
fn a_2x2_sweep_runs_reports_and_resumes() {
    let data = SimDataset::tiny(1);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.toml"), experiment("base", &data.manifest_str(), "[1]", "")).unwrap();
    let sweep = dir.path().join("sweep.toml");
    std::fs::write(
        &sweep,
        "name = \"grid\"\nbase = \"base.toml\"\n[grid]\n\"data.sessions\" = [1, 2]\n\"train.seed\" = [0, 1]\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let first = voxbridge(&["sweep".as_ref(), sweep.as_os_str(), "--out".as_ref(), out.as_os_str()]);
    let stdout = assert_success(&first);
    let report = read_json(&out.join("sweep.json"));
    let runs = report["runs"].as_array().unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["grid-sessions1-seed0", "grid-sessions1-seed1", "grid-sessions2-seed0", "grid-sessions2-seed1"]);
    for r in runs {
        let dir = Path::new(r["dir"].as_str().unwrap());
        for f in ["config.toml", "report.json", "metrics/steps.csv", "metrics/epochs.csv", "plots/loss.png"] {
            assert!(dir.join(f).is_file(), "{} lacks {f}", dir.display());
        }
        let image = r["image_top1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&image));
        assert_eq!(r["reused"], false);
    }
    assert_eq!(runs[0]["sessions"], 1);
    assert_eq!(runs[2]["sessions"], 2);
    let by = report["by_sessions"].as_object().unwrap();
    assert_eq!(by.keys().collect::<Vec<_>>(), ["1", "2"]);
    assert!(out.join("retrieval_vs_sessions.png").is_file());
    assert!(stdout.contains("grid-sessions2-seed1"), "{stdout}");
    // The resolved config saved with a run reads back as an experiment.
    let saved = std::fs::read_to_string(out.join("grid-sessions2-seed1/config.toml")).unwrap();
    assert!(saved.contains("sessions = 2") && saved.contains("seed = 1"), "{saved}");

    // Running it again reuses every finished run.
    assert_success(&voxbridge(&["sweep".as_ref(), sweep.as_os_str(), "--out".as_ref(), out.as_os_str()]));
    let again = read_json(&out.join("sweep.json"));
    assert!(again["runs"].as_array().unwrap().iter().all(|r| r["reused"] == true));
}

#[test]
fn demo_on_tiny_fine_tunes_evaluates_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let run = voxbridge(&["demo".as_ref(), "--preset".as_ref(), "tiny".as_ref(), "--out".as_ref(), out.as_os_str()]);
    let stdout = assert_success(&run);
    let report = read_json(&out.join("report.json"));
    for key in ["pretrained_1session", "scratch_1session", "oracle"] {
        for metric in ["image_top1", "brain_top1"] {
            let v = report[key][metric].as_f64().unwrap_or_else(|| panic!("{key}.{metric} missing"));
            assert!((0.0..=1.0).contains(&v), "{key}.{metric} = {v}");
        }
    }
    let chance = report["chance"].as_f64().unwrap();
    assert!((chance - 1.0 / 30.0).abs() < 1e-12, "30 test images in tiny: {chance}");
    assert!(out.join("finetune_vs_scratch.png").is_file());
    assert!(stdout.contains("from scratch"), "{stdout}");
    let fine = out.join("runs/demo-finetune-subject1-1session");
    let fine_report = read_json(&fine.join("report.json"));
    assert!(fine_report["init_from"].as_str().unwrap().ends_with("demo-pretrain-subjects2-8"));
    assert_eq!(fine_report["sessions_used"]["subject1"], serde_json::json!([1]));

    // `voxbridge eval` on the fine-tuned run reproduces its final retrieval.
    let json = dir.path().join("eval.json");
    let eval = voxbridge(&[
        "eval".as_ref(),
        fine.as_os_str(),
        "--loops".as_ref(),
        "30".as_ref(),
        "--prior-steps".as_ref(),
        "20".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
    ]);
    let stdout = assert_success(&eval);
    assert!(stdout.contains("Mind Reader batch-"), "{stdout}");
    assert!(stdout.contains("prior samples (20 DDIM steps)"), "{stdout}");
    let evaluated = read_json(&json);
    assert_eq!(
        evaluated["subject1"]["retrieval"]["image_top1"]["mean"],
        fine_report["evaluation"]["subject1"]["retrieval"]["image_top1"]["mean"],
        "{}",
        describe(&eval)
    );

    // `voxbridge predict` exports chosen trials of the run for a reconstruction step.
    let manifest = out.join("data/manifest.toml");
    let export = dir.path().join("export");
    let predicted = voxbridge(&[
        "predict".as_ref(),
        "--checkpoint".as_ref(),
        fine.as_os_str(),
        "--data".as_ref(),
        manifest.as_os_str(),
        "--nsd-subject".as_ref(),
        "1".as_ref(),
        "--images".as_ref(),
        first_test_image(&manifest).as_ref(),
        "--prior-steps".as_ref(),
        "5".as_ref(),
        "--out".as_ref(),
        export.as_os_str(),
    ]);
    assert_success(&predicted);
    let ids = std::fs::read(export.join("image_id.npy")).unwrap();
    assert_eq!(&ids[..6], b"\x93NUMPY");
    for name in ["backbone", "clip_voxels", "prior_samples"] {
        let bytes = std::fs::read(export.join(format!("{name}.npy"))).unwrap();
        let t = voxbridge_model::tensors::HostTensor::from_npy(&bytes, name).unwrap();
        assert_eq!(t.shape[1..], [4, 32], "{name}");
        assert_eq!(t.shape[0], 3, "{name}: one row per trial of the image (3 repeats)");
    }
}

/// The image id of subject 1's first test trial, as `--images` takes it.
fn first_test_image(manifest: &Path) -> String {
    let dataset = voxbridge_data::Dataset::open(manifest.to_str().unwrap()).unwrap();
    let trials = dataset.load_subject(1, voxbridge_data::Sessions::First(1)).unwrap();
    trials.test.image_id[0].to_string()
}

#[test]
fn training_errors_name_the_field_and_keep_finished_runs() {
    let data = SimDataset::tiny(2);
    let dir = tempfile::tempdir().unwrap();
    let exp = dir.path().join("fine.toml");
    std::fs::write(&exp, experiment("fine", &data.manifest_str(), "[1]", "init_from = \"no/such/run\"")).unwrap();
    let out = voxbridge(&["train".as_ref(), exp.as_os_str(), "--out".as_ref(), dir.path().join("r").as_os_str()]);
    let stderr = voxbridge_e2e::assert_exit(&out, 1);
    assert!(stderr.contains("train.init_from") && stderr.contains("no/such/run"), "{stderr}");

    // A finished run is never overwritten by another config.
    let a = dir.path().join("a.toml");
    std::fs::write(&a, experiment("a", &data.manifest_str(), "[1]", "max_steps = 2")).unwrap();
    let run = dir.path().join("run");
    assert_success(&voxbridge(&["train".as_ref(), a.as_os_str(), "--out".as_ref(), run.as_os_str()]));
    let before = std::fs::read(run.join("report.json")).unwrap();
    std::fs::write(&a, experiment("a", &data.manifest_str(), "[1]", "max_steps = 3")).unwrap();
    let again = voxbridge(&["train".as_ref(), a.as_os_str(), "--out".as_ref(), run.as_os_str()]);
    let stderr = voxbridge_e2e::assert_exit(&again, 1);
    assert!(stderr.contains("already holds the finished run `a`"), "{stderr}");
    assert_eq!(std::fs::read(run.join("report.json")).unwrap(), before);
}

/// A device this binary was built without is refused before anything is read or written,
/// naming the cargo feature to build with.
#[cfg(not(feature = "cuda"))]
#[test]
fn a_device_the_binary_lacks_names_the_feature_to_build_with() {
    let data = SimDataset::tiny(0);
    let dir = tempfile::tempdir().unwrap();
    let exp = dir.path().join("gpu.toml");
    std::fs::write(&exp, experiment("gpu", &data.manifest_str(), "[2]", "max_steps = 1")).unwrap();
    let run = dir.path().join("run");
    let out = voxbridge(&[
        "train".as_ref(),
        exp.as_os_str(),
        "--out".as_ref(),
        run.as_os_str(),
        "--device".as_ref(),
        "cuda".as_ref(),
    ]);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = voxbridge_e2e::stderr(&out);
    assert!(err.contains("--device cuda") && err.contains("--features cuda"), "{err}");
    assert!(!run.join("report.json").exists());
    // A bad spelling is a usage error listing the devices.
    let out = voxbridge(&["train".as_ref(), exp.as_os_str(), "--device".as_ref(), "gpu0".as_ref()]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(voxbridge_e2e::stderr(&out).contains("cpu, cuda, cuda:N, wgpu"), "{}", describe(&out));
}
