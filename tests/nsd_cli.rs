//! `voxbridge data import-nsd` end to end: files written in the release's formats (HDF5 betas,
//! webdataset tars of `behav.npy`, a targets directory) are imported through the CLI, verified,
//! then trained and evaluated by the same path as simulated data.

use std::path::{Path, PathBuf};

use voxbridge_e2e::{assert_exit, assert_success, voxbridge};
use voxbridge_nsd::fixtures::{self, FixtureTrial};

const VOXELS: usize = 24;
/// CLIP tokens × width, and the VAE latent, of the fixture's targets (the latent is 7×7: the
/// low-level branch makes 7·2^k squares).
const CLIP: [usize; 2] = [4, 16];
const LATENT: [usize; 3] = [4, 7, 7];
/// The low-level teacher of [`imported_convnext_teacher_trains_the_soft_contrastive_term`]:
/// the branch's 7×7 positions, 8 wide (the run's maps projector takes this width), 2 views.
const TEACHER: [usize; 2] = [49, 8];

/// A value in [-1, 1) from (a, b): a fixed hash, so the fixtures are the same on every run.
fn noise(a: u64, b: u64) -> f32 {
    let mut x = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// Subject `subject`'s release files under `root`: `sessions` sessions of 10 trials (3 shared
/// images each), betas that carry the shown image's CLIP target (a fixed voxel mixing of its
/// first token plus trial noise), and targets for every image shown.
fn write_release(root: &Path, subject: u8, sessions: u16) -> Vec<FixtureTrial> {
    let trials = fixtures::design(sessions, 10);
    let target = |image: u32, k: usize| noise(u64::from(image), k as u64);
    let image_of: Vec<u32> = trials.iter().map(|t| t.image).collect();
    fixtures::write_betas(
        &root.join(format!("betas_all_subj{subject:02}_fp32_renorm.hdf5")),
        trials.len(),
        VOXELS,
        |r, v| {
            let signal: f32 = (0..CLIP[1]).map(|k| noise(v as u64 + 7, k as u64) * target(image_of[r], k)).sum();
            signal + 0.3 * noise(r as u64 + 10_000, v as u64)
        },
    )
    .unwrap();
    fixtures::write_wds(&root.join("wds"), subject, &trials).unwrap();
    let mut images: Vec<u32> = image_of.clone();
    images.sort_unstable();
    images.dedup();
    fixtures::write_targets_npy(&root.join("targets"), &images, CLIP, LATENT, target).unwrap();
    trials
}

fn import(root: &Path, subject: u8, out: &Path, extra: &[&str]) -> std::process::Output {
    let betas = root.join(format!("betas_all_subj{subject:02}_fp32_renorm.hdf5"));
    let subject = subject.to_string();
    let voxels = VOXELS.to_string();
    let mut args: Vec<&str> = vec!["data", "import-nsd", "--subject", &subject, "--voxels", &voxels];
    let (betas, wds, targets, out) = (
        betas.to_str().unwrap(),
        root.join("wds").to_str().unwrap().to_string(),
        root.join("targets").to_str().unwrap().to_string(),
        out.to_str().unwrap(),
    );
    args.extend(["--betas", betas, "--wds", &wds, "--targets", &targets, "--out", out]);
    args.extend(extra);
    voxbridge(&args)
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A small MindEye2 run with the low-level branch on the imported subject.
fn experiment(dir: &Path, manifest: &Path, subjects: &str) -> PathBuf {
    let text = format!(
        "name = \"nsd-fixture\"\n[data]\nmanifest = {:?}\ntrain_subjects = {subjects}\n\
         [train]\nseed = 0\nbatch_size = 8\nepochs = 3\nmixup_pct = 0.34\n\
         [model]\nhidden = 32\nblocks = 1\nprior_depth = 1\nprior_dim_head = 16\nlow_level = true\n\
         [eval]\nloops = 3\nprior_steps = 2\n",
        manifest.to_str().unwrap()
    );
    let path = dir.join("nsd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn imported_release_files_verify_train_and_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    std::fs::create_dir_all(&release).unwrap();
    let trials = write_release(&release, 1, 3);
    let out = dir.path().join("nsd");
    assert_success(&import(&release, 1, &out, &["--normalisation", "as-released"]));
    let manifest = out.join("manifest.toml");
    let verified = assert_success(&voxbridge(&["data", "verify", manifest.to_str().unwrap()]));
    assert!(!verified.is_empty(), "verify prints its findings");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("not normalised again"), "the manifest states the normalisation:\n{text}");

    // A second import into the same place is refused and leaves the dataset as it was.
    let again = assert_exit(&import(&release, 1, &out, &[]), 1);
    assert!(again.contains("already holds a dataset"), "{again}");
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), text);

    let run = dir.path().join("run");
    let exp = experiment(dir.path(), &manifest, "[1]");
    let trained = voxbridge(&["train", exp.to_str().unwrap(), "--out", run.to_str().unwrap()]);
    assert_success(&trained);
    // These targets have no ConvNeXt teacher: the soft contrastive term is off, said once.
    let log = String::from_utf8_lossy(&trained.stderr);
    assert_eq!(log.matches("no low-level teacher features").count(), 1, "{log}");
    let report = read_json(&run.join("report.json"));
    let retrieval = &report["evaluation"]["subject1"]["retrieval"];
    let top1 = retrieval["image_top1"]["mean"].as_f64().unwrap_or_else(|| panic!("no retrieval in {report}"));
    assert!((0.0..=1.0).contains(&top1), "{top1}");
    // Retrieval runs over the 3 shared images (each averaged over its 3 repeats).
    assert_eq!(retrieval["ways"].as_u64(), Some(3), "{retrieval}");
    let steps = std::fs::read_to_string(run.join("metrics/steps.csv")).unwrap();
    let header: Vec<&str> = steps.lines().next().unwrap().split(',').collect();
    let column = |name: &str| -> Vec<f64> {
        let at = header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no `{name}` in {steps}"));
        steps.lines().skip(1).map(|l| l.split(',').nth(at).unwrap().parse().unwrap()).collect()
    };
    // 21 training trials in batches of 8 → 3 steps per epoch, 3 epochs.
    assert_eq!(trials.iter().filter(|t| !t.shared1000).count(), 21);
    assert_eq!(column("loss").len(), 9, "{steps}");
    // The low-level branch trained on the imported VAE latents.
    for name in ["loss", "clip_loss", "prior_loss", "blur_loss"] {
        assert!(column(name).iter().all(|l| l.is_finite() && *l > 0.0), "{name}: {steps}");
    }
    assert!(column("blur_cont").iter().all(|c| c.is_nan()), "{steps}");
}

/// Targets with the ConvNeXt teacher (`convnext`, `convnext_aug`): the import records its shape,
/// the run fits the maps projector to its width and trains the soft contrastive term
/// (`blur_cont` in steps.csv, included in `loss`), with no "no teacher" line.
#[test]
fn imported_convnext_teacher_trains_the_soft_contrastive_term() {
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    std::fs::create_dir_all(&release).unwrap();
    let trials = write_release(&release, 1, 3);
    let mut images: Vec<u32> = trials.iter().map(|t| t.image).collect();
    images.sort_unstable();
    images.dedup();
    let teacher = |image: u32, k: usize| noise(u64::from(image) + 50_000, k as u64);
    fixtures::write_teacher_npy(&release.join("targets"), &images, TEACHER, 2, teacher).unwrap();
    let out = dir.path().join("nsd");
    assert_success(&import(&release, 1, &out, &[]));
    let manifest = out.join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("teacher = [49, 8]") && text.contains("teacher_augs = 2"), "{text}");
    assert_success(&voxbridge(&["data", "verify", manifest.to_str().unwrap()]));

    let run = dir.path().join("run");
    let exp = experiment(dir.path(), &manifest, "[1]");
    let trained = voxbridge(&["train", exp.to_str().unwrap(), "--out", run.to_str().unwrap()]);
    assert_success(&trained);
    let log = String::from_utf8_lossy(&trained.stderr);
    assert!(!log.contains("no low-level teacher features"), "{log}");
    let card = read_json(&run.join("checkpoint/model.json"));
    assert_eq!(card["architecture"]["low_level"]["projector_width"], 8, "{card}");
    let steps = std::fs::read_to_string(run.join("metrics/steps.csv")).unwrap();
    let header: Vec<&str> = steps.lines().next().unwrap().split(',').collect();
    assert_eq!(header.last(), Some(&"blur_cont"), "new column last: {steps}");
    let column = |name: &str| -> Vec<f64> {
        let at = header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no `{name}` in {steps}"));
        steps.lines().skip(1).map(|l| l.split(',').nth(at).unwrap().parse().unwrap()).collect()
    };
    let (loss, clip, prior, blur, cont) =
        (column("loss"), column("clip_loss"), column("prior_loss"), column("blur_loss"), column("blur_cont"));
    assert_eq!(cont.len(), 9, "{steps}");
    for i in 0..cont.len() {
        assert!(cont[i].is_finite() && cont[i] > 0.0, "step {i}: {steps}");
        // loss = 30·prior + 1·clip + 0.5·(L1 + 0.1·cont)
        let total = 30.0 * prior[i] + clip[i] + 0.5 * (blur[i] + 0.1 * cont[i]);
        assert!((loss[i] - total).abs() <= 1e-4 * total, "step {i}: {} vs {total}", loss[i]);
    }
}

/// The import writes to object storage (a moto S3 server, started by the README's test
/// command) and `--append` adds a second subject there; verify reads both back from S3.
#[test]
fn import_to_s3_then_append_a_subject() {
    let Ok(endpoint) = std::env::var("AWS_ENDPOINT") else {
        eprintln!("skipped: AWS_ENDPOINT is not set (scripts/test.sh starts a moto S3 server and sets it)");
        return;
    };
    let bucket = std::env::var("AWS_BUCKET").unwrap_or_else(|_| "test-bucket".into());
    let dir = tempfile::tempdir().unwrap();
    let unique = dir.path().file_name().unwrap().to_string_lossy().to_string();
    let url = format!("s3://{bucket}/{unique}/nsd");
    let (one, two) = (dir.path().join("subj01"), dir.path().join("subj02"));
    for (root, subject) in [(&one, 1), (&two, 2)] {
        std::fs::create_dir_all(root).unwrap();
        write_release(root, subject, 2);
    }
    assert_success(&import(&one, 1, Path::new(&url), &[]));
    let refused = assert_exit(&import(&two, 2, Path::new(&url), &[]), 1);
    assert!(refused.contains("pass --append"), "{refused}");
    assert_success(&import(&two, 2, Path::new(&url), &["--append"]));
    let manifest = format!("{url}/manifest.toml");
    let verified = assert_success(&voxbridge(&["data", "verify", &manifest]));
    assert!(verified.contains("ok") || verified.contains("OK"), "{endpoint}: {verified}");
    let dataset = voxbridge_data::Dataset::open(&manifest).unwrap();
    let subjects: Vec<u8> = dataset.manifest().subjects.iter().map(|s| s.subject).collect();
    assert_eq!(subjects, [1, 2]);
    // Both subjects saw the same 3 shared and 14 other images: each target written once.
    assert_eq!(dataset.manifest().targets.images, 17);
}
