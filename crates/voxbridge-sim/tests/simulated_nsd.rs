//! Properties of the simulated NSD, read back through the same loader training uses.

use std::collections::HashMap;

use voxbridge_data::{Dataset, Sessions, Storage, TargetKind};
use voxbridge_ridge::{DEFAULT_ALPHAS, Ridge, ridge_retrieval};
use voxbridge_sim::{SimOptions, SimSpec, simulate};

fn simulate_tiny(dir: &std::path::Path, seed: u64) -> Dataset {
    let out = Storage::open(dir.to_str().unwrap()).unwrap();
    simulate(&SimSpec::tiny(), seed, out, &SimOptions { name: None, oracle: false }, &mut |_| {}).unwrap();
    Dataset::open(dir.join("manifest.toml").to_str().unwrap()).unwrap()
}

#[test]
fn voxels_are_zscored_per_session_and_voxel() {
    let dir = tempfile::tempdir().unwrap();
    let data = simulate_tiny(dir.path(), 0);
    for subject in [1u8, 6] {
        let s = data.load_subject(subject, Sessions::All).unwrap();
        // Rebuild each session from its train and test rows.
        let mut by_session: HashMap<u16, Vec<&[f32]>> = HashMap::new();
        for rows in [&s.train, &s.test] {
            for r in 0..rows.len() {
                by_session.entry(rows.session[r]).or_default().push(rows.voxels_of(r));
            }
        }
        assert_eq!(by_session.len(), data.manifest().subject(subject).unwrap().sessions as usize);
        for (session, rows) in by_session {
            assert_eq!(rows.len(), SimSpec::tiny().trials_per_session);
            for v in 0..s.voxel_count {
                let n = rows.len() as f64;
                let mean = rows.iter().map(|r| r[v] as f64).sum::<f64>() / n;
                let sd = (rows.iter().map(|r| (r[v] as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
                assert!(mean.abs() < 1e-5, "subject {subject} session {session} voxel {v}: mean {mean}");
                assert!((sd - 1.0).abs() < 1e-4, "subject {subject} session {session} voxel {v}: sd {sd}");
            }
        }
    }
}

#[test]
fn every_subject_sees_every_test_image_three_times() {
    let dir = tempfile::tempdir().unwrap();
    let data = simulate_tiny(dir.path(), 1);
    let test_images = data.manifest().targets.test_images;
    let mut first_subject_images: Option<Vec<u32>> = None;
    for info in &data.manifest().subjects {
        let s = data.load_subject(info.subject, Sessions::All).unwrap();
        let mut repeats: HashMap<u32, Vec<u8>> = HashMap::new();
        for r in 0..s.test.len() {
            repeats.entry(s.test.image_id[r]).or_default().push(s.test.repeat[r]);
        }
        assert_eq!(repeats.len(), test_images, "subject {}", info.subject);
        for (image, mut reps) in repeats.clone() {
            reps.sort();
            assert_eq!(reps, vec![0, 1, 2], "subject {} image {image}", info.subject);
        }
        // The same shared images for every subject.
        let mut images: Vec<u32> = repeats.keys().copied().collect();
        images.sort();
        match &first_subject_images {
            None => first_subject_images = Some(images),
            Some(first) => assert_eq!(&images, first),
        }
        // Training images are never test images, and are seen at most 3 times.
        let mut train_counts: HashMap<u32, usize> = HashMap::new();
        for r in 0..s.train.len() {
            assert!(!repeats.contains_key(&s.train.image_id[r]));
            *train_counts.entry(s.train.image_id[r]).or_default() += 1;
        }
        assert!(train_counts.values().all(|&c| (1..=3).contains(&c)));
        // Averaging gives one row per test image, from 3 repeats.
        let avg = voxbridge_data::average_repeats(&s.test);
        assert_eq!(avg.image_id.len(), test_images);
        assert!(avg.repeats.iter().all(|&r| r == 3));
    }
}

#[test]
fn first_n_sessions_select_chronologically_and_test_uses_all_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let data = simulate_tiny(dir.path(), 2);
    let one = data.load_subject(1, Sessions::First(1)).unwrap();
    let all = data.load_subject(1, Sessions::All).unwrap();
    assert_eq!(one.sessions_used, vec![1]);
    assert!(one.train.session.iter().all(|&s| s == 1));
    assert!(one.train.len() < all.train.len());
    assert_eq!(one.test.len(), all.test.len(), "the test set never depends on the training sessions");
    let err = data.load_subject(1, Sessions::First(99)).unwrap_err().to_string();
    assert!(err.contains("has 4 sessions; 99 were asked for"), "{err}");
    let err = data.load_subject(9, Sessions::All).unwrap_err().to_string();
    assert!(err.contains("subject 9 is not in"), "{err}");
}

#[test]
fn same_seed_gives_byte_identical_shards() {
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let da = simulate_tiny(a.path(), 7);
    let db = simulate_tiny(b.path(), 7);
    let dc = simulate_tiny(c.path(), 8);
    let files = &da.manifest().files;
    assert_eq!(files, &db.manifest().files);
    for f in files {
        let bytes_a = std::fs::read(a.path().join(&f.path)).unwrap();
        let bytes_b = std::fs::read(b.path().join(&f.path)).unwrap();
        assert!(bytes_a == bytes_b, "{} differs between two runs with the same seed", f.path);
    }
    let manifest_a = std::fs::read(a.path().join("manifest.toml")).unwrap();
    assert_eq!(manifest_a, std::fs::read(b.path().join("manifest.toml")).unwrap());
    assert_ne!(files, &dc.manifest().files, "another seed gives other data");
}

/// Closed-form ridge on one subject's training trials decodes its test images far above chance;
/// the same decoder applied to another subject's voxels does not (each subject has its own
/// mixing), while that subject's own decoder does.
#[test]
fn signal_is_learnable_and_subject_specific() {
    let dir = tempfile::tempdir().unwrap();
    let data = simulate_tiny(dir.path(), 0);
    let (s1, s2) = (data.load_subject(1, Sessions::All).unwrap(), data.load_subject(2, Sessions::All).unwrap());
    let mut images = s1.image_ids();
    images.extend(s2.image_ids());
    let targets = data.load_targets(Some(&images)).unwrap();
    // Both subjects restricted to the same number of voxels so one decoder can take both.
    let voxels = s1.voxel_count.min(s2.voxel_count);
    let a1 = s1.decoding_arrays(&targets, TargetKind::ClipTokens, Some(voxels)).unwrap();
    let a2 = s2.decoding_arrays(&targets, TargetKind::ClipTokens, Some(voxels)).unwrap();
    assert_eq!(a1.test_images, a2.test_images, "shared test images, same order");

    let (model, own) =
        ridge_retrieval(&a1.train_x, &a1.train_y, &a1.test_x, &a1.test_y, voxels, a1.outputs, &DEFAULT_ALPHAS, 0)
            .unwrap();
    let crossed = retrieval_of(&model, &a2.test_x, &a2.test_y, a2.outputs);
    let (_, other_own) =
        ridge_retrieval(&a2.train_x, &a2.train_y, &a2.test_x, &a2.test_y, voxels, a2.outputs, &DEFAULT_ALPHAS, 0)
            .unwrap();
    eprintln!(
        "{}-way top-1 image/brain: subject 1 own ridge {:.3}/{:.3}; subject 1's ridge on subject 2 {:.3}/{:.3}; subject 2 own ridge {:.3}/{:.3}; chance {:.3}",
        own.ways,
        own.image_top1.mean,
        own.brain_top1.mean,
        crossed.image_top1.mean,
        crossed.brain_top1.mean,
        other_own.image_top1.mean,
        other_own.brain_top1.mean,
        own.chance
    );
    assert!(own.image_top1.mean > 8.0 * own.chance, "own decoder {:?}", own.image_top1);
    assert!(own.brain_top1.mean > 8.0 * own.chance, "own decoder {:?}", own.brain_top1);
    assert!(other_own.image_top1.mean > 8.0 * own.chance, "subject 2's own decoder {:?}", other_own.image_top1);
    assert!(crossed.image_top1.mean < 3.0 * own.chance, "crossed decoder {:?}", crossed.image_top1);
    assert!(crossed.brain_top1.mean < 3.0 * own.chance, "crossed decoder {:?}", crossed.brain_top1);
}

fn retrieval_of(model: &Ridge, x: &[f32], y: &[f32], dim: usize) -> voxbridge_eval::Retrieval {
    let predicted = model.predict(x).unwrap();
    let scores = voxbridge_eval::ScoreMatrix::cosine(&predicted, y, dim);
    voxbridge_eval::top1_retrieval(&scores, voxbridge_eval::MINDEYE2_WAYS, voxbridge_eval::MINDEYE2_LOOPS, 0)
}

#[test]
fn oracle_is_reported_and_beats_chance() {
    let dir = tempfile::tempdir().unwrap();
    let out = Storage::open(dir.path().to_str().unwrap()).unwrap();
    let result =
        simulate(&SimSpec::tiny(), 0, out, &SimOptions { name: Some("t".into()), oracle: true }, &mut |_| {}).unwrap();
    let oracle = result.oracle.unwrap();
    assert_eq!(oracle.subjects.len(), 8);
    assert!(oracle.image_top1 > 0.8 && oracle.image_top1 <= 1.0, "{oracle:?}");
    assert!(oracle.brain_top1 > 0.8 && oracle.brain_top1 <= 1.0, "{oracle:?}");
    assert!(result.manifest.oracle.is_some(), "the oracle is recorded in the manifest");
    assert_eq!(result.manifest.name, "t");
}

/// The committed `data-manifests/sim-tiny-seed0.toml` records the sha256 of every shard of the
/// tiny preset with seed 0: any change to the generator, the shard writer or a dependency that
/// alters a single byte fails here (regenerate the file deliberately, see data-manifests/README.md).
/// It was made on x86_64 Linux (glibc libm): transcendental functions (exp, ln, sin) may round
/// differently on another platform, and then this test, not the simulator, needs its own golden.
#[test]
fn tiny_seed0_matches_the_committed_golden_manifest() {
    let golden_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data-manifests/sim-tiny-seed0.toml");
    let golden = voxbridge_data::Manifest::parse(&std::fs::read_to_string(&golden_path).unwrap(), "golden").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fresh = simulate_tiny(dir.path(), 0);
    assert_eq!(fresh.manifest().generator, golden.generator);
    assert_eq!(fresh.manifest().files, golden.files, "shards differ from {}", golden_path.display());
}

/// A preset with teacher features writes the two teacher columns, records their shape in the
/// manifest and reads them back; every other shard value equals that of the same spec without
/// teacher features (the teacher draws from its own streams).
#[test]
fn teacher_features_are_an_extra_column_leaving_the_rest_bit_identical() {
    let with = SimSpec::small().restrict(Some(&[1]), Some(2));
    let mut without = with.clone();
    without.shapes.teacher = None;
    without.shapes.teacher_augs = 0;
    let open = |spec: &SimSpec, dir: &std::path::Path| {
        let out = Storage::open(dir.to_str().unwrap()).unwrap();
        simulate(spec, 3, out, &SimOptions { name: None, oracle: false }, &mut |_| {}).unwrap();
        Dataset::open(dir.join("manifest.toml").to_str().unwrap()).unwrap()
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (with_data, without_data) = (open(&with, a.path()), open(&without, b.path()));
    assert_eq!(with_data.manifest().targets.shapes.teacher, Some([49, 32]));
    assert_eq!(with_data.manifest().targets.shapes.teacher_augs, 2);
    let text = std::fs::read_to_string(a.path().join("manifest.toml")).unwrap();
    assert!(text.contains("teacher = [49, 32]"), "{text}");
    let (t, u) = (with_data.load_targets(None).unwrap(), without_data.load_targets(None).unwrap());
    assert_eq!(t.rows.image_id, u.rows.image_id);
    assert_eq!(t.rows.clip_tokens, u.rows.clip_tokens);
    assert_eq!(t.rows.lowlevel, u.rows.lowlevel);
    assert_eq!(t.rows.captions, u.rows.captions);
    assert_eq!(t.rows.teacher.len(), t.rows.len() * 49 * 32);
    assert_eq!(t.rows.teacher_aug.len(), t.rows.len() * 2 * 49 * 32);
    assert!(u.rows.teacher.is_empty());
    assert_eq!(t.teacher(3).len(), 49 * 32);
    for (fa, fb) in with_data.manifest().trial_files(1).iter().zip(without_data.manifest().trial_files(1)) {
        assert_eq!(fa.sha256, fb.sha256, "{}: voxels differ", fa.path);
    }
}
