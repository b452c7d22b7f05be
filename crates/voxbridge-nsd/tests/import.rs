//! Importing fixtures written in the release's formats: the shards verify and load like
//! simulated data; every bad input names its file (and member or row) and leaves no manifest.

use std::path::{Path, PathBuf};

use voxbridge_data::{Dataset, MANIFEST_FILE, Sessions};
use voxbridge_nsd::fixtures::{self, FixtureTrial};
use voxbridge_nsd::{ImportOptions, Normalisation, import_subject};

const VOXELS: usize = 20;

struct Inputs {
    _dir: tempfile::TempDir,
    root: PathBuf,
    trials: Vec<FixtureTrial>,
}

impl Inputs {
    /// Subject 1: 2 sessions of 8 trials (3 shared1000 each), 20 voxels.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let trials = fixtures::design(2, 8);
        fixtures::write_betas(&root.join("betas.hdf5"), trials.len(), VOXELS, |r, v| (r * 100 + v) as f32).unwrap();
        fixtures::write_wds(&root.join("wds"), 1, &trials).unwrap();
        let mut images: Vec<u32> = trials.iter().map(|t| t.image).collect();
        images.sort_unstable();
        images.dedup();
        fixtures::write_targets_npy(&root.join("targets"), &images, [2, 8], [2, 4, 4], |i, k| {
            i as f32 + k as f32 / 100.0
        })
        .unwrap();
        Inputs { _dir: dir, root, trials }
    }

    fn options(&self) -> ImportOptions {
        ImportOptions {
            subject: 1,
            betas: self.root.join("betas.hdf5"),
            wds: self.root.join("wds"),
            targets: self.root.join("targets"),
            out: self.root.join("out").display().to_string(),
            voxels: Some(VOXELS),
            normalisation: Normalisation::AsReleased,
            name: None,
            targets_per_file: 5,
            append: false,
            allow_missing_trials: false,
        }
    }

    fn out(&self) -> PathBuf {
        self.root.join("out")
    }
}

#[test]
fn imported_fixtures_verify_and_load_like_simulated_data() {
    let inputs = Inputs::new();
    let summary = import_subject(&inputs.options()).unwrap();
    assert_eq!((summary.trials, summary.sessions), (16, 2));
    let dataset = Dataset::open(&inputs.out().join(MANIFEST_FILE).display().to_string()).unwrap();
    let report = voxbridge_data::verify::verify(dataset.opened(), |_, _| {});
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let subject = dataset.load_subject(1, Sessions::All).unwrap();
    assert_eq!((subject.train.len(), subject.test.len(), subject.voxel_count), (10, 6, VOXELS));
    // Voxels are the betas rows of each trial's global trial, untouched (renorm betas).
    for r in 0..subject.train.len() {
        let g = subject.train.global_trial[r] as usize;
        assert_eq!(subject.train.voxels_of(r)[3], (g * 100 + 3) as f32);
    }
    // The shared images were seen twice: repeats 0 and 1, in global-trial order.
    let repeats: Vec<(u32, u8)> =
        (0..subject.test.len()).map(|r| (subject.test.image_id[r], subject.test.repeat[r])).collect();
    assert!(repeats.contains(&(2, 0)) && repeats.contains(&(2, 1)), "{repeats:?}");
    let targets = dataset.load_targets(None).unwrap();
    assert_eq!(targets.rows.shapes.clip_tokens, [2, 8]);
    let row = targets.row(1001).unwrap();
    assert!((targets.rows.clip_tokens[row * 16 + 1] - 1001.01).abs() < 1e-3);
    assert_eq!(inputs.trials.len(), 16);
}

#[test]
fn per_session_z_scoring_centres_every_session() {
    let inputs = Inputs::new();
    import_subject(&ImportOptions { normalisation: Normalisation::PerSession, ..inputs.options() }).unwrap();
    let dataset = Dataset::open(&inputs.out().join(MANIFEST_FILE).display().to_string()).unwrap();
    assert!(dataset.manifest().normalisation.contains("per-session"));
    let s = dataset.load_subject(1, Sessions::All).unwrap();
    for session in [1u16, 2] {
        let mut sum = 0.0f64;
        let mut n = 0;
        for rows in [&s.train, &s.test] {
            for r in (0..rows.len()).filter(|&r| rows.session[r] == session) {
                sum += f64::from(rows.voxels_of(r)[7]);
                n += 1;
            }
        }
        assert_eq!(n, 8);
        assert!((sum / 8.0).abs() < 1e-5, "session {session} mean {}", sum / 8.0);
    }
}

/// Runs the import and checks the error names `file` and says `what`, and that no manifest
/// became visible.
fn refused(inputs: &Inputs, options: ImportOptions, file: &str, what: &str) {
    let err = import_subject(&options).expect_err("bad input must be refused").to_string();
    assert!(err.contains(file), "error does not name {file}: {err}");
    assert!(err.contains(what), "error does not say {what:?}: {err}");
    assert!(!inputs.out().join(MANIFEST_FILE).exists(), "a manifest was written after: {err}");
}

fn rewrite_member(tar: &Path, subject: u8, trial: &FixtureTrial, edit: impl Fn(&mut [f64; 17])) {
    let mut row = fixtures::behav_row(subject, trial);
    edit(&mut row);
    fixtures::write_tar(tar, &[(format!("sample{:09}", trial.global_trial), row)]).unwrap();
}

#[test]
fn a_missing_or_misshapen_behaviour_column_names_the_tar_and_member() {
    let inputs = Inputs::new();
    let tar = inputs.root.join("wds/subj01/train/0.tar");
    let t = inputs.trials[5];
    rewrite_member(&tar, 1, &t, |row| row[0] = -1.0);
    refused(
        &inputs,
        inputs.options(),
        "train/0.tar",
        "sample000000005.behav.npy: column 0 (COCO/NSD-73k idx): missing",
    );
    // A 1×16 row.
    let bytes = voxbridge_nsd::npy::write_f64(&[1, 16], &[1.0; 16]);
    let mut builder = tar::Builder::new(std::fs::File::create(&tar).unwrap());
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_cksum();
    builder.append_data(&mut header, "sample000000005.behav.npy", bytes.as_slice()).unwrap();
    builder.into_inner().unwrap();
    refused(&inputs, inputs.options(), "train/0.tar", "shape [1, 16]; a behaviour row is 1×17");
}

#[test]
fn a_voxel_count_that_disagrees_with_the_subject_names_the_betas() {
    let inputs = Inputs::new();
    refused(&inputs, ImportOptions { voxels: None, ..inputs.options() }, "betas.hdf5", "subject 1 has 15724");
    refused(&inputs, ImportOptions { voxels: Some(21), ..inputs.options() }, "betas.hdf5", "20 voxels per row");
}

#[test]
fn a_behaviour_row_past_the_betas_names_the_member() {
    let inputs = Inputs::new();
    let t = FixtureTrial { global_trial: 40, ..inputs.trials[5] };
    rewrite_member(&inputs.root.join("wds/subj01/train/0.tar"), 1, &t, |_| {});
    refused(&inputs, inputs.options(), "sample000000040.behav.npy", "points past the betas");
}

#[test]
fn an_image_without_a_target_names_the_targets_and_the_trial() {
    let inputs = Inputs::new();
    fixtures::write_targets_npy(&inputs.root.join("targets"), &[0, 1, 2], [2, 8], [2, 4, 4], |_, _| 0.0).unwrap();
    refused(&inputs, inputs.options(), "targets", "has no target");
}

#[test]
fn a_truncated_tar_names_the_file() {
    let inputs = Inputs::new();
    let tar = inputs.root.join("wds/subj01/new_test/0.tar");
    let bytes = std::fs::read(&tar).unwrap();
    for cut in [bytes.len() - 1024, 700, 1536] {
        std::fs::write(&tar, &bytes[..cut]).unwrap();
        refused(&inputs, inputs.options(), "new_test/0.tar", "truncated");
    }
}

/// Subject 2 beside subject 1's inputs: its own betas, tars and targets (the shared images
/// 0–2 with the same targets as subject 1's; its other images 1501+ are its own).
fn subject2(inputs: &Inputs, g: impl Fn(u32, usize) -> f32) -> ImportOptions {
    let trials: Vec<FixtureTrial> = fixtures::design(2, 8)
        .into_iter()
        .map(|t| FixtureTrial { image: if t.shared1000 { t.image } else { t.image + 500 }, ..t })
        .collect();
    let root = &inputs.root;
    fixtures::write_betas(&root.join("betas2.hdf5"), trials.len(), VOXELS, |r, v| (r * 10 + v) as f32).unwrap();
    fixtures::write_wds(&root.join("wds"), 2, &trials).unwrap();
    let mut images: Vec<u32> = trials.iter().map(|t| t.image).collect();
    images.sort_unstable();
    images.dedup();
    fixtures::write_targets_npy(&root.join("targets2"), &images, [2, 8], [2, 4, 4], g).unwrap();
    ImportOptions {
        subject: 2,
        betas: root.join("betas2.hdf5"),
        targets: root.join("targets2"),
        append: true,
        ..inputs.options()
    }
}

fn same_targets(i: u32, k: usize) -> f32 {
    i as f32 + k as f32 / 100.0
}

#[test]
fn appending_a_subject_keeps_the_first_and_writes_each_image_once() {
    let inputs = Inputs::new();
    let first = import_subject(&inputs.options()).unwrap().manifest;
    let second = import_subject(&subject2(&inputs, same_targets)).unwrap().manifest;

    let dataset = Dataset::open(&inputs.out().join(MANIFEST_FILE).display().to_string()).unwrap();
    let report = voxbridge_data::verify::verify(dataset.opened(), |_, _| {});
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let subjects: Vec<u8> = second.subjects.iter().map(|s| s.subject).collect();
    assert_eq!(subjects, [1, 2]);
    // The first import's files are still listed, unchanged (same bytes and checksums).
    for file in &first.files {
        assert!(second.files.contains(file), "{} was rewritten or dropped", file.path);
    }
    // 3 shared + 10 + 10 own images, each in exactly one target shard (load_targets refuses
    // an image with two rows); subject 2 added parts after subject 1's.
    let targets = dataset.load_targets(None).unwrap();
    assert_eq!((targets.rows.len(), second.targets.images, second.targets.test_images), (23, 23, 3));
    assert!(second.files.iter().any(|f| f.path == "targets/part-00003.parquet"), "{:?}", second.files);
    let two = dataset.load_subject(2, Sessions::All).unwrap();
    assert_eq!((two.train.len(), two.test.len()), (10, 6));
    assert_eq!(two.train.voxels_of(0)[3], (two.train.global_trial[0] as usize * 10 + 3) as f32);
    for subject in ["subj01", "subj02"] {
        assert!(second.generator.params.contains_key(subject), "{:?}", second.generator.params);
    }
}

#[test]
fn an_append_that_cannot_fit_names_the_reason_and_leaves_the_dataset_as_it_was() {
    let inputs = Inputs::new();
    import_subject(&inputs.options()).unwrap();
    let manifest = inputs.out().join(MANIFEST_FILE);
    let before = std::fs::read(&manifest).unwrap();
    let refused_append = |options: ImportOptions, what: &str| {
        let err = import_subject(&options).expect_err("must be refused").to_string();
        assert!(err.contains(what), "error does not say {what:?}: {err}");
        assert_eq!(std::fs::read(&manifest).unwrap(), before, "the manifest changed after: {err}");
    };
    refused_append(ImportOptions { append: false, ..subject2(&inputs, same_targets) }, "pass --append");
    refused_append(ImportOptions { subject: 1, append: true, ..inputs.options() }, "already holds subject 1");
    refused_append(
        ImportOptions { normalisation: Normalisation::PerSession, ..subject2(&inputs, same_targets) },
        "--normalisation",
    );
    // Shared image 1 with another target than the one the dataset holds.
    let other = subject2(&inputs, |i, k| if i == 1 { -1.0 } else { same_targets(i, k) });
    refused_append(other, "image 1: its target differs");
    // Targets of another shape.
    let options = subject2(&inputs, same_targets);
    fixtures::write_targets_npy(&options.targets, &[0, 1, 2], [2, 4], [2, 4, 4], same_targets).unwrap();
    refused_append(options, "targets of shapes");
}

/// A session tar that is valid but lacks samples: the import is refused naming the tar, the
/// session and the count, with nothing written; `allow_missing_trials` imports the rest and
/// records the count in the manifest. (Before: 13 of 16 trials imported with an info line.)
#[test]
fn a_tar_missing_trials_is_refused_unless_allowed_and_then_recorded() {
    let inputs = Inputs::new();
    // Session 2's training tar without its trials at global rows 12, 13, 15.
    let kept: Vec<_> = inputs
        .trials
        .iter()
        .filter(|t| t.session == 2 && !t.shared1000 && ![12, 13, 15].contains(&t.global_trial))
        .map(|t| (format!("sample{:09}", t.global_trial), fixtures::behav_row(1, t)))
        .collect();
    fixtures::write_tar(&inputs.root.join("wds/subj01/train/1.tar"), &kept).unwrap();
    let err = import_subject(&inputs.options()).expect_err("missing trials must be refused").to_string();
    for what in ["train/1.tar", "session 2 has 5 of 8 trials (3 missing", "12, 13, 15", "--allow-missing-trials"] {
        assert!(err.contains(what), "error does not say {what:?}: {err}");
    }
    assert!(!inputs.out().exists() || std::fs::read_dir(inputs.out()).unwrap().next().is_none(), "{err}");

    let summary = import_subject(&ImportOptions { allow_missing_trials: true, ..inputs.options() }).unwrap();
    assert_eq!((summary.trials, summary.missing.total()), (13, 3));
    let dataset = Dataset::open(&inputs.out().join(MANIFEST_FILE).display().to_string()).unwrap();
    assert_eq!(dataset.manifest().subjects[0].missing_trials, 3);
    let text = std::fs::read_to_string(inputs.out().join(MANIFEST_FILE)).unwrap();
    assert!(text.contains("missing_trials = 3"), "{text}");
}

/// A whole session absent from the tars (its betas rows unnamed) is refused too.
#[test]
fn a_session_without_a_tar_is_refused() {
    let inputs = Inputs::new();
    let trials = fixtures::design(3, 8);
    fixtures::write_betas(&inputs.root.join("betas.hdf5"), trials.len(), VOXELS, |r, v| (r + v) as f32).unwrap();
    refused(&inputs, inputs.options(), "wds", "session 3 has 0 of 8 trials (8 missing; no tar holds it");
}
