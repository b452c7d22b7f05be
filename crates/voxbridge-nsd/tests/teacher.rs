//! The low-level teacher (`convnext` / `convnext_aug` in the targets file) is carried into the
//! dataset's `teacher` / `teacher_aug` columns with its shape in the manifest; targets without it
//! import as before (no teacher columns); an append must agree with the dataset on it.

use std::path::Path;

use voxbridge_data::{Dataset, MANIFEST_FILE, TargetShapes};
use voxbridge_nsd::fixtures;
use voxbridge_nsd::{ImportOptions, Normalisation, import_subject};

const VOXELS: usize = 12;

/// Subject `subject`'s release files (2 sessions of 8 trials) under `root`, targets with the
/// teacher when `teacher`; returns the import options.
fn release(root: &std::path::Path, subject: u8, teacher: bool) -> ImportOptions {
    let trials = fixtures::design(2, 8);
    let betas = root.join(format!("betas{subject}.hdf5"));
    fixtures::write_betas(&betas, trials.len(), VOXELS, |r, v| (r * 10 + v) as f32).unwrap();
    fixtures::write_wds(&root.join("wds"), subject, &trials).unwrap();
    // Subject 2 sees other unique images than subject 1 (shared ones 0–2 are the same).
    let offset = if subject == 1 { 0 } else { 500 };
    let mut images: Vec<u32> = trials.iter().map(|t| if t.shared1000 { t.image } else { t.image + offset }).collect();
    images.sort_unstable();
    images.dedup();
    let targets = root.join(format!("targets{subject}{}", if teacher { "t" } else { "" }));
    let g = |i: u32, k: usize| i as f32 + k as f32 / 1000.0;
    fixtures::write_targets_npy(&targets, &images, [2, 4], [2, 7, 7], g).unwrap();
    if teacher {
        fixtures::write_teacher_npy(&targets, &images, [4, 3], 2, g).unwrap();
    }
    if subject != 1 {
        // Rewrite subject 2's behaviour rows to its own images.
        let shifted: Vec<_> = trials
            .iter()
            .map(|t| fixtures::FixtureTrial { image: if t.shared1000 { t.image } else { t.image + offset }, ..*t })
            .collect();
        fixtures::write_wds(&root.join("wds"), subject, &shifted).unwrap();
    }
    ImportOptions {
        subject,
        betas,
        wds: root.join("wds"),
        targets,
        out: root.join("out").display().to_string(),
        voxels: Some(VOXELS),
        normalisation: Normalisation::AsReleased,
        name: None,
        targets_per_file: 5,
        append: subject != 1,
        allow_missing_trials: false,
    }
}

fn open(out: &Path) -> Dataset {
    Dataset::open(&out.join(MANIFEST_FILE).display().to_string()).unwrap()
}

#[test]
fn convnext_targets_become_the_teacher_columns() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    import_subject(&release(dir.path(), 1, true)).unwrap();
    let dataset = open(&out);
    let shapes: TargetShapes = dataset.manifest().targets.shapes;
    assert_eq!((shapes.teacher, shapes.teacher_augs), (Some([4, 3]), 2));
    let report = voxbridge_data::verify::verify(dataset.opened(), |_, _| {});
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let targets = dataset.load_targets(None).unwrap();
    let row = targets.row(1003).unwrap();
    let want: Vec<f32> = (0..12).map(|k| 1003.0 + k as f32 / 1000.0).collect();
    assert_eq!(targets.teacher(row), want);
    let want_aug: Vec<f32> = (0..24).map(|k| 1003.0 + (100_000 + k) as f32 / 1000.0).collect();
    assert_eq!(targets.teacher_aug(row), want_aug);

    // An append whose targets lack the teacher is refused (the shapes differ) and changes nothing.
    let manifest = std::fs::read_to_string(out.join(MANIFEST_FILE)).unwrap();
    let err = import_subject(&release(dir.path(), 2, false)).unwrap_err().to_string();
    assert!(err.contains("targets of shapes"), "{err}");
    assert_eq!(std::fs::read_to_string(out.join(MANIFEST_FILE)).unwrap(), manifest);
    // One with the teacher adds subject 2; the shared images' teachers must agree, and do.
    import_subject(&release(dir.path(), 2, true)).unwrap();
    let dataset = open(&out);
    assert_eq!(dataset.manifest().subjects.len(), 2);
    let targets = dataset.load_targets(None).unwrap();
    let row = targets.row(1503).unwrap();
    assert_eq!(targets.teacher(row)[0], 1503.0);
}

#[test]
fn targets_without_convnext_import_without_teacher_columns() {
    let dir = tempfile::tempdir().unwrap();
    import_subject(&release(dir.path(), 1, false)).unwrap();
    let out = dir.path().join("out");
    let text = std::fs::read_to_string(out.join(MANIFEST_FILE)).unwrap();
    assert!(!text.contains("teacher"), "{text}");
    let dataset = open(&out);
    assert_eq!(dataset.manifest().targets.shapes.teacher, None);
    let targets = dataset.load_targets(None).unwrap();
    assert!(targets.rows.teacher.is_empty() && targets.rows.teacher_aug.is_empty());
}
