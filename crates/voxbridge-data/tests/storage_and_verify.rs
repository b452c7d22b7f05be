//! The data layer end to end on local storage addressed by path and by `file://` URL: write a
//! small dataset, read it back through a manifest (its own copy and a registered copy that
//! points at it), and check what `verify` reports for damage a checksum alone cannot explain.

use voxbridge_data::manifest::{Generator, SubjectInfo, TargetsInfo};
use voxbridge_data::{
    DataError, Dataset, DatasetWriter, FileKind, Manifest, SCHEMA_VERSION, Sessions, Storage, TargetRows, TargetShapes,
    TrialRows, open_manifest, targets_path, trials_path, verify,
};

const SHAPES: TargetShapes =
    TargetShapes { clip_tokens: [2, 3], lowlevel: [1, 2, 2], captions: [1, 2], teacher: None, teacher_augs: 0 };
const VOXELS: usize = 5;

fn session_rows(session: u16) -> TrialRows {
    let mut t = TrialRows::new(VOXELS);
    for i in 0..6u32 {
        t.subject.push(1);
        t.session.push(session);
        t.run.push(1);
        t.trial.push(i as u16 + 1);
        t.global_trial.push((session as u32 - 1) * 6 + i);
        // Images 0 and 1 are test images, shown in both sessions.
        let image = if i < 2 { i } else { 10 * session as u32 + i };
        t.image_id.push(image);
        t.is_test.push(i < 2);
        t.repeat.push(if i < 2 { session as u8 - 1 } else { 0 });
        t.voxels.extend((0..VOXELS).map(|v| (i as usize * VOXELS + v) as f32 + session as f32));
    }
    t
}

fn targets() -> TargetRows {
    let mut t = TargetRows::new(SHAPES);
    let ids = [0u32, 1, 12, 13, 14, 15, 22, 23, 24, 25];
    for id in ids {
        t.image_id.push(id);
        t.is_test.push(id < 2);
        t.clip_tokens.extend((0..6).map(|k| (id * 6 + k) as f32));
        t.lowlevel.extend([id as f32; 4]);
        t.captions.extend([1.0, id as f32]);
    }
    t
}

fn write_dataset(root: &str) -> Manifest {
    let mut writer = DatasetWriter::new(Storage::open(root).unwrap());
    for session in 1..=2 {
        writer.write_trials(&trials_path(1, session), 1, session, &session_rows(session), 4).unwrap();
    }
    writer.write_targets(&targets_path(0), &targets(), 3).unwrap();
    writer
        .finish(Manifest {
            name: "fixture".into(),
            schema_version: SCHEMA_VERSION,
            root: None,
            normalisation: "none (fixture)".into(),
            trials_per_session: 6,
            generator: Generator {
                name: "test".into(),
                version: "0".into(),
                preset: None,
                seed: None,
                params: Default::default(),
            },
            targets: TargetsInfo { shapes: SHAPES, images: 10, test_images: 2 },
            subjects: vec![SubjectInfo {
                subject: 1,
                voxels: VOXELS,
                sessions: 2,
                trials: 12,
                test_images: 2,
                missing_trials: 0,
            }],
            files: Vec::new(),
            oracle: None,
        })
        .unwrap()
}

#[test]
fn file_urls_and_registered_manifests_load_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/data", dir.path().display());
    let manifest = write_dataset(&url);
    assert_eq!(manifest.files.len(), 3);
    assert_eq!(manifest.files[0].row_groups, vec![4, 2]);

    let by_url = Dataset::open(&format!("{url}/manifest.toml")).unwrap();
    let by_path = Dataset::open(dir.path().join("data/manifest.toml").to_str().unwrap()).unwrap();
    // A registered copy elsewhere, pointing at the data by URL.
    let mut registered = manifest.clone();
    registered.root = Some(url.clone());
    let registered_path = dir.path().join("data-manifests/fixture.toml");
    std::fs::create_dir_all(registered_path.parent().unwrap()).unwrap();
    std::fs::write(&registered_path, registered.to_toml()).unwrap();
    let by_registered = Dataset::open(registered_path.to_str().unwrap()).unwrap();

    for ds in [&by_url, &by_path, &by_registered] {
        let one = ds.load_subject(1, Sessions::First(1)).unwrap();
        assert_eq!(one.sessions_used, vec![1]);
        assert_eq!(one.train.len(), 4, "session 1's non-test trials");
        assert_eq!(one.test.len(), 4, "test trials of both sessions");
        let avg = voxbridge_data::average_repeats(&one.test);
        assert_eq!(avg.image_id, vec![0, 1]);
        // Image 0: row 0 of session 1 (0..5 + 1) and of session 2 (0..5 + 2) → mean 0..5 + 1.5.
        assert_eq!(avg.voxels_of(0), &[1.5, 2.5, 3.5, 4.5, 5.5]);
        let t = ds.load_targets(Some(&one.image_ids())).unwrap();
        assert_eq!(t.rows.len(), 6);
        assert_eq!(t.clip(t.row(12).unwrap()), &[72.0, 73.0, 74.0, 75.0, 76.0, 77.0]);
    }
    assert!(verify(by_registered.opened(), |_, _| {}).is_ok());

    // Shuffles are a pure function of (seed, epoch, subject).
    let s = by_url.load_subject(1, Sessions::All).unwrap();
    assert_eq!(s.train_order(3, 1), by_path.load_subject(1, Sessions::All).unwrap().train_order(3, 1));
    let mut order = s.train_order(3, 1);
    order.sort();
    assert_eq!(order, (0..s.train.len()).collect::<Vec<_>>());
    assert!((0..20).any(|epoch| s.train_order(3, epoch) != s.train_order(3, 1)), "epochs reshuffle");
}

#[test]
fn row_group_mismatch_is_named_with_its_row_group() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let mut manifest = write_dataset(root);
    // The manifest claims other row groups for session 2 (same total rows).
    let entry = manifest.files.iter_mut().find(|f| f.session == Some(2)).unwrap();
    entry.row_groups = vec![3, 3];
    std::fs::write(dir.path().join("manifest.toml"), manifest.to_toml()).unwrap();
    let opened = open_manifest(&format!("{root}/manifest.toml")).unwrap();
    let report = verify(&opened, |_, _| {});
    assert_eq!(report.problems.len(), 1);
    let message = report.problems[0].to_string();
    assert!(matches!(report.problems[0], DataError::RowGroup { row_group: 0, .. }), "{message}");
    assert!(message.contains("trials/subj01/session02.parquet: row group 0:"), "{message}");
}

#[test]
fn a_valid_parquet_file_with_the_wrong_schema_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let mut manifest = write_dataset(root);
    // Replace session 1 by the targets file and fix up the checksum: only decoding can tell.
    let targets_bytes = std::fs::read(dir.path().join(targets_path(0))).unwrap();
    std::fs::write(dir.path().join(trials_path(1, 1)), &targets_bytes).unwrap();
    let targets_entry = manifest.files.iter().find(|f| f.kind == FileKind::Targets).unwrap().clone();
    let entry = manifest.files.iter_mut().find(|f| f.session == Some(1)).unwrap();
    entry.sha256 = targets_entry.sha256;
    entry.bytes = targets_entry.bytes;
    entry.rows = targets_entry.rows;
    entry.row_groups = targets_entry.row_groups;
    // Keep the manifest self-consistent so only the shard's schema is wrong.
    manifest.subjects[0].trials =
        manifest.files.iter().filter(|f| f.kind == FileKind::Trials).map(|f| f.rows as usize).sum();
    std::fs::write(dir.path().join("manifest.toml"), manifest.to_toml()).unwrap();

    let opened = open_manifest(&format!("{root}/manifest.toml")).unwrap();
    let report = verify(&opened, |_, _| {});
    assert_eq!(report.problems.len(), 1);
    let message = report.problems[0].to_string();
    assert!(message.contains("trials/subj01/session01.parquet: schema mismatch"), "{message}");
    let err = Dataset::open(&format!("{root}/manifest.toml")).unwrap().load_subject(1, Sessions::All).unwrap_err();
    assert!(err.to_string().contains("trials/subj01/session01.parquet: schema mismatch"), "{err}");
}

#[test]
fn manifest_errors_name_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let manifest = write_dataset(root);
    let mut text = manifest.to_toml();
    text = text.replace("schema_version = 1", "schema_version = 99");
    std::fs::write(dir.path().join("manifest.toml"), text).unwrap();
    let err = Dataset::open(&format!("{root}/manifest.toml")).unwrap_err().to_string();
    assert!(err.contains("manifest.toml") && err.contains("schema_version 99 is not supported"), "{err}");
}

#[test]
fn manifest_must_cover_every_session_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let manifest = write_dataset(root);

    // A session's shard dropped from the list: the manifest no longer describes the dataset.
    let mut missing = manifest.clone();
    let at = missing.files.iter().position(|f| f.subject == Some(1) && f.session == Some(2)).unwrap();
    missing.files.remove(at);
    let err = voxbridge_data::Manifest::parse(&missing.to_toml(), "m.toml").unwrap_err().to_string();
    assert!(err.contains("subject 1 session 2: 0 trials files listed, expected exactly 1"), "{err}");

    // Row counts that do not add up to the subject's trials.
    let mut short = manifest.clone();
    short.subjects[0].trials += 1;
    let err = voxbridge_data::Manifest::parse(&short.to_toml(), "m.toml").unwrap_err().to_string();
    assert!(err.contains("subject 1: trials files hold"), "{err}");

    // A session number the subject does not have.
    let mut beyond = manifest.clone();
    let f = beyond.files.iter_mut().find(|f| f.subject == Some(1) && f.session == Some(1)).unwrap();
    f.session = Some(99);
    let err = voxbridge_data::Manifest::parse(&beyond.to_toml(), "m.toml").unwrap_err().to_string();
    assert!(err.contains("session 99 is outside"), "{err}");

    // Targets rows must match the image count.
    let mut images = manifest;
    images.targets.images += 5;
    let err = voxbridge_data::Manifest::parse(&images.to_toml(), "m.toml").unwrap_err().to_string();
    assert!(err.contains("targets files hold"), "{err}");
}
