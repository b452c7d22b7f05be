//! The ready-made experiments for the real NSD (`experiments/nsd/`) stay valid, and the memory
//! figures the READMEs quote stay true. `voxbridge config check` validates an experiment without
//! its data (the manifest is first read by `train`), so this runs in CI where NSD is absent.

use std::path::{Path, PathBuf};

use voxbridge_e2e::{assert_exit, assert_success, voxbridge, workspace_root};

const RELEASED_MODEL: &str = "experiments/models/mindeye2-released.toml";

/// `config check`'s resolved TOML of `file` (its first line is a comment naming the hash).
fn resolved(file: &Path) -> toml::Table {
    let out = assert_success(&voxbridge(&["config".as_ref(), "check".as_ref(), file.as_os_str()]));
    out.parse::<toml::Table>().unwrap_or_else(|e| panic!("{}: resolved config is not TOML: {e}\n{out}", file.display()))
}

fn get<'a>(table: &'a toml::Table, path: &str) -> &'a toml::Value {
    let mut keys = path.split('.');
    let first = keys.next().unwrap_or_default();
    let start = table.get(first).unwrap_or_else(|| panic!("no `{first}` in {table:#?}"));
    keys.fold(start, |v, k| v.get(k).unwrap_or_else(|| panic!("no `{path}` in {table:#?}")))
}

/// `voxbridge params --model <released> --memory <extra…>`'s output; it must exit 0.
fn params_memory(extra: &[&str]) -> String {
    let model = workspace_root().join(RELEASED_MODEL).display().to_string();
    let mut args = vec!["params", "--model", model.as_str(), "--memory"];
    args.extend_from_slice(extra);
    assert_success(&voxbridge(&args))
}

#[test]
fn every_nsd_experiment_passes_config_check_with_the_released_architecture() {
    let dir = workspace_root().join("experiments/nsd");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["finetune-subj1-1session.toml", "pretrain-subj2-8.toml"]);

    let [finetune, pretrain] = [resolved(&files[0]), resolved(&files[1])];
    for config in [&finetune, &pretrain] {
        // The released MindEye2: hidden 4096, 4 released blocks, prior depth 6 with heads of 52,
        // the low-level branch. The NSD import's manifest, which the checkout does not hold.
        for (key, want) in [
            ("model.family", toml::Value::from("mindeye2")),
            ("model.hidden", 4096.into()),
            ("model.blocks", 4.into()),
            ("model.backbone", "released".into()),
            ("model.prior", true.into()),
            ("model.prior_depth", 6.into()),
            ("model.prior_dim_head", 52.into()),
            ("model.low_level", true.into()),
            ("data.manifest", "data/nsd/manifest.toml".into()),
            ("train.epochs", 150.into()),
            ("optim.lr", 3e-4.into()),
            ("compute.device", "cuda".into()),
            ("compute.precision", "bf16".into()),
        ] {
            assert_eq!(get(config, key), &want, "{key}");
        }
    }
    assert_eq!(finetune.get("model"), pretrain.get("model"), "the fine-tune must load the pretrained sizes");
    assert!(!workspace_root().join("data/nsd/manifest.toml").exists(), "config check must not need the data");

    // The paper's setting: pretraining on subjects 2–8 at batch 63 (9 each), then subject 1's
    // first session at batch 24, starting from the pretraining run's directory.
    assert_eq!(get(&pretrain, "data.train_subjects"), &toml::Value::from(vec![2, 3, 4, 5, 6, 7, 8]));
    assert_eq!(get(&pretrain, "data.sessions"), &toml::Value::from("all"));
    assert_eq!(get(&pretrain, "train.batch_size"), &toml::Value::from(63));
    assert_eq!(get(&finetune, "data.train_subjects"), &toml::Value::from(vec![1]));
    assert_eq!(get(&finetune, "data.sessions"), &toml::Value::from(1));
    assert_eq!(get(&finetune, "train.batch_size"), &toml::Value::from(24));
    let run = format!("runs/{}", get(&pretrain, "name").as_str().unwrap());
    assert_eq!(get(&finetune, "train.init_from").as_str(), Some(run.as_str()));
}

#[test]
fn the_released_model_fits_one_80_gb_gpu_at_batch_24_in_bf16() {
    let out = params_memory(&["--batch", "24", "--precision", "bf16"]);
    assert!(out.contains("batch: 24 rows = 3 per subject × 8 subjects"), "{out}");
    assert!(out.contains("bf16 weight casts kept by the matmuls"), "{out}");
    assert!(out.contains("TOTAL per GPU"), "{out}");
    assert!(out.contains("capacity 80 GB = 74.51 GiB: FITS (headroom"), "{out}");
}

#[test]
fn pretraining_on_subjects_2_to_8_at_batch_63_fits_one_80_gb_gpu() {
    let one = params_memory(&["--batch", "63", "--precision", "bf16", "--subjects", "2,3,4,5,6,7,8"]);
    assert!(one.contains("capacity 80 GB = 74.51 GiB: FITS (headroom"), "{one}");
    // It says what makes it fit: the same step with the prior's ops composed does not.
    assert!(one.contains("composed from burn's ops") && one.contains("does not fit)"), "{one}");
    let three = params_memory(&["--batch", "63", "--subjects", "2,3,4,5,6,7,8", "--gpus", "3"]);
    assert!(three.contains("the fullest is rank 0: ridges of subjects 2, 3, 4, 27 rows"), "{three}");
    assert!(three.contains("capacity 80 GB = 74.51 GiB: FITS"), "{three}");
    // A verdict, not a failure: DOES NOT FIT exits 0, with what would fit.
    let twice = params_memory(&["--batch", "126", "--subjects", "2,3,4,5,6,7,8"]);
    assert!(twice.contains("DOES NOT FIT (short by") && twice.contains("What would fit 80 GB:"), "{twice}");
}

#[test]
fn memory_flags_are_checked_before_anything_runs() {
    let model = workspace_root().join(RELEASED_MODEL);
    let model = model.to_str().unwrap();
    let err =
        assert_exit(&voxbridge(&["params", "--model", model, "--memory", "--batch", "24", "--precision", "fp16"]), 2);
    assert!(err.contains("[possible values: bf16, fp32]"), "{err}");
    let err = assert_exit(&voxbridge(&["params", "--model", model, "--memory"]), 2);
    assert!(err.contains("--batch <BATCH>"), "{err}");
    let err = assert_exit(&voxbridge(&["params", "--model", model, "--batch", "24"]), 2);
    assert!(err.contains("--memory"), "{err}");
    let err = assert_exit(&voxbridge(&["params", "--model", model, "--memory", "--batch", "24", "--subjects", "9"]), 1);
    assert!(err.contains("--subjects 9: the model file has 8 ridges (subjects 1–8)"), "{err}");
}
