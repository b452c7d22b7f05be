//! End-to-end tests of `voxbridge data simulate`/`verify`, the training loader and `ridge` on
//! damaged datasets, `voxbridge config check`, and the distributed binaries' command lines.
//! Every test simulates its own `tiny` dataset into its own scratch directory.

use std::collections::BTreeMap;
use std::path::Path;

use voxbridge_data::{Dataset, FileEntry, FileKind, Sessions, open_manifest, targets_path, trials_path};
use voxbridge_e2e::{
    SimDataset, assert_exit, assert_success, flip_middle_byte, run_bin, simulate_tiny_into, truncate_tail, voxbridge,
};

/// The files a dataset's manifest lists.
fn listed_files(ds: &SimDataset) -> Vec<FileEntry> {
    let opened = open_manifest(&ds.manifest_str()).expect("the simulated manifest opens");
    assert!(!opened.manifest.files.is_empty(), "the manifest lists no files");
    opened.manifest.files
}

/// The `FAILED …` lines of `voxbridge data verify`'s stderr.
fn failed_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("FAILED ")).collect()
}

/// Asserts a verify problem line names `relative` (as the end of the file URL) and says `why`.
#[track_caller]
fn assert_names(line: &str, relative: &str, why: &str) {
    assert!(line.starts_with("FAILED file://"), "not a FAILED <file URL> line: {line}");
    assert!(line.contains(&format!("/{relative}: ")), "`{line}` does not name {relative}");
    assert!(line.contains(why), "`{line}` does not say `{why}`");
}

/// Every listed file's bytes, by manifest path.
fn snapshot(ds: &SimDataset) -> BTreeMap<String, Vec<u8>> {
    listed_files(ds)
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(ds.file(&f.path)).unwrap_or_else(|e| panic!("{}: {e}", f.path));
            (f.path, bytes)
        })
        .collect()
}

#[test]
fn simulate_then_verify_succeeds() {
    let ds = SimDataset::tiny(1);
    let files = listed_files(&ds);
    let trials = files.iter().filter(|f| f.kind == FileKind::Trials).count();
    let targets: Vec<_> = files.iter().filter(|f| f.kind == FileKind::Targets).collect();
    assert!(trials >= 8, "tiny has 8 subjects, yet only {trials} trials shards are listed");
    assert_eq!(targets.len(), 1, "tiny has one targets shard");
    assert_eq!(targets[0].path, targets_path(0));
    for f in &files {
        let on_disk = std::fs::metadata(ds.file(&f.path)).unwrap_or_else(|e| panic!("{}: {e}", f.path)).len();
        assert_eq!(on_disk, f.bytes, "{}: size on disk differs from the manifest", f.path);
        if f.kind == FileKind::Trials {
            assert_eq!(f.path, trials_path(f.subject.unwrap(), f.session.unwrap()));
        }
    }

    let out = assert_success(&ds.verify());
    let ok = out.lines().find(|l| l.starts_with("ok:")).unwrap_or_else(|| panic!("no `ok:` line in\n{out}"));
    assert!(ok.starts_with(&format!("ok: {} files", files.len())), "{ok}");

    // The loader reads the same dataset.
    let dataset = Dataset::open(&ds.manifest_str()).expect("open");
    let subject = dataset.load_subject(1, Sessions::All).expect("load subject 1");
    assert!(!subject.train.is_empty() && !subject.test.is_empty());
    let all_targets = dataset.load_targets(None).expect("load targets");
    assert_eq!(all_targets.rows.len() as u64, targets[0].rows);
}

#[derive(Debug, Clone, Copy)]
enum Shard {
    /// `trials/subj01/session02.parquet`, read by `load_subject(1, …)` and `ridge --subject 1`.
    Trials,
    /// `targets/part-00000.parquet`.
    Targets,
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// The last 100 bytes cut off.
    Truncate,
    /// The middle byte xor 0xFF.
    FlipMiddle,
}

/// One damaged shard in a fresh dataset: `verify`, the loader and `ridge` all fail and name it.
fn damaged_shard_is_named_everywhere(shard: Shard, damage: Damage) {
    let ds = SimDataset::tiny(11);
    let files = listed_files(&ds);
    let path = match shard {
        Shard::Trials => trials_path(1, 2),
        Shard::Targets => targets_path(0),
    };
    assert!(files.iter().any(|f| f.path == path), "{path} is not listed");
    let why = match damage {
        Damage::Truncate => {
            truncate_tail(&ds.file(&path), 100);
            "size is"
        }
        Damage::FlipMiddle => {
            flip_middle_byte(&ds.file(&path));
            "sha256 is"
        }
    };

    // verify: exit 1, exactly this file reported, with the reason.
    let output = ds.verify();
    let err = assert_exit(&output, 1);
    assert!(!String::from_utf8_lossy(&output.stdout).contains("ok:"), "verify printed ok:\n{err}");
    let failed = failed_lines(&err);
    assert_eq!(failed.len(), 1, "expected one FAILED line:\n{err}");
    assert_names(failed[0], &path, why);
    assert!(err.contains(&format!("1 of {} files failed verification", files.len())), "{err}");

    // The loader refuses the file and names it.
    let dataset = Dataset::open(&ds.manifest_str()).expect("the manifest itself is intact");
    let error = match shard {
        Shard::Trials => dataset.load_subject(1, Sessions::All).map(|_| ()),
        Shard::Targets => dataset.load_targets(None).map(|_| ()),
    }
    .expect_err("the loader accepted a damaged shard")
    .to_string();
    assert!(error.starts_with("file://"), "the loader's error does not start with the file URL: {error}");
    assert!(error.contains(&format!("/{path}: ")), "the loader's error does not name {path}: {error}");
    assert!(error.contains(why), "the loader's error does not say `{why}`: {error}");

    // Files the damage did not touch still load.
    match shard {
        Shard::Trials => {
            dataset.load_subject(2, Sessions::All).expect("subject 2 is intact");
            dataset.load_targets(None).expect("the targets are intact");
        }
        Shard::Targets => {
            dataset.load_subject(1, Sessions::All).expect("subject 1 is intact");
        }
    }

    // ridge reads subject 1's trials and their targets through the loader: exit 1, naming the file.
    let err = assert_exit(&ds.ridge(1), 1);
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("ridge printed no `error:` line:\n{err}"));
    assert!(line.contains(&format!("/{path}: ")), "ridge's error does not name {path}: {line}");
    assert!(line.contains(why), "ridge's error does not say `{why}`: {line}");
}

#[test]
fn truncated_trials_shard_is_named() {
    damaged_shard_is_named_everywhere(Shard::Trials, Damage::Truncate);
}

#[test]
fn flipped_byte_in_trials_shard_is_named() {
    damaged_shard_is_named_everywhere(Shard::Trials, Damage::FlipMiddle);
}

#[test]
fn truncated_targets_shard_is_named() {
    damaged_shard_is_named_everywhere(Shard::Targets, Damage::Truncate);
}

#[test]
fn flipped_byte_in_targets_shard_is_named() {
    damaged_shard_is_named_everywhere(Shard::Targets, Damage::FlipMiddle);
}

#[test]
fn verify_reports_every_bad_file() {
    let ds = SimDataset::tiny(12);
    let files = listed_files(&ds);
    let first = trials_path(3, 1);
    let second = trials_path(7, 3);
    let third = targets_path(0);
    flip_middle_byte(&ds.file(&first));
    truncate_tail(&ds.file(&second), 100);
    flip_middle_byte(&ds.file(&third));

    let err = assert_exit(&ds.verify(), 1);
    let failed = failed_lines(&err);
    assert_eq!(failed.len(), 3, "expected three FAILED lines:\n{err}");
    for (path, why) in [(&first, "sha256 is"), (&second, "size is"), (&third, "sha256 is")] {
        let line = failed
            .iter()
            .find(|l| l.contains(&format!("/{path}: ")))
            .unwrap_or_else(|| panic!("{path} is not reported:\n{err}"));
        assert_names(line, path, why);
    }
    assert!(err.contains(&format!("3 of {} files failed verification", files.len())), "{err}");
}

#[test]
fn missing_shard_is_named() {
    let ds = SimDataset::tiny(13);
    let path = trials_path(4, 3);
    std::fs::remove_file(ds.file(&path)).expect("delete the shard");

    let err = assert_exit(&ds.verify(), 1);
    let failed = failed_lines(&err);
    assert_eq!(failed.len(), 1, "expected one FAILED line:\n{err}");
    assert_names(failed[0], &path, "missing");

    let error = Dataset::open(&ds.manifest_str())
        .expect("open")
        .load_subject(4, Sessions::All)
        .expect_err("the loader accepted a missing shard")
        .to_string();
    assert!(error.contains(&format!("/{path}: ")) && error.contains("missing"), "{error}");
}

#[test]
fn manifest_with_unknown_key_is_rejected() {
    // At the top (a top-level key) and at the end (which TOML puts in the last [[files]] entry).
    for at_top in [true, false] {
        let ds = SimDataset::tiny(14);
        let manifest = ds.manifest();
        let text = std::fs::read_to_string(&manifest).expect("read manifest");
        let edited = if at_top { format!("bogus = 1\n{text}") } else { format!("{text}\nbogus = 1\n") };
        std::fs::write(&manifest, edited).expect("write manifest");

        let err = assert_exit(&ds.verify(), 1);
        let line = err
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("verify printed no `error:` line:\n{err}"));
        assert!(line.contains("/manifest.toml"), "the error does not name the manifest: {line}");
        assert!(err.contains("bogus"), "the error does not name the key `bogus`:\n{err}");
        assert!(failed_lines(&err).is_empty(), "no shard is bad:\n{err}");

        let error = Dataset::open(&ds.manifest_str()).expect_err("the loader accepted the manifest").to_string();
        assert!(error.contains("/manifest.toml") && error.contains("bogus"), "{error}");
    }
}

#[test]
fn verify_of_a_missing_manifest_fails() {
    let dir = tempfile::tempdir().expect("scratch directory");
    let manifest = dir.path().join("manifest.toml");
    let err = assert_exit(&voxbridge(&["data".as_ref(), "verify".as_ref(), manifest.as_os_str()]), 1);
    assert!(err.contains("/manifest.toml") && err.contains("not found"), "{err}");
}

#[test]
fn simulation_is_deterministic_in_the_seed() {
    let a = SimDataset::tiny(21);
    let b = SimDataset::tiny(21);
    let c = SimDataset::tiny(22);

    let (files_a, files_b, files_c) = (snapshot(&a), snapshot(&b), snapshot(&c));
    assert_eq!(
        files_a.keys().collect::<Vec<_>>(),
        files_b.keys().collect::<Vec<_>>(),
        "the same seed listed different files"
    );
    for (path, bytes) in &files_a {
        assert!(bytes == &files_b[path], "{path} differs between two runs with seed 21");
    }
    let listed = |ds: &SimDataset| {
        listed_files(ds).into_iter().map(|f| (f.path, f.bytes, f.sha256, f.rows, f.row_groups)).collect::<Vec<_>>()
    };
    assert_eq!(listed(&a), listed(&b), "the same seed gave different manifest entries");

    assert_eq!(
        files_a.keys().collect::<Vec<_>>(),
        files_c.keys().collect::<Vec<_>>(),
        "another seed should list the same files"
    );
    let trials: Vec<_> = listed_files(&a).into_iter().filter(|f| f.kind == FileKind::Trials).collect();
    assert!(!trials.is_empty());
    for f in &trials {
        assert!(files_a[&f.path] != files_c[&f.path], "{} is identical for seeds 21 and 22", f.path);
    }
}

#[test]
fn simulate_refuses_an_existing_dataset() {
    let ds = SimDataset::tiny(31);
    let manifest_before = std::fs::read(ds.manifest()).expect("read manifest");
    let files_before = snapshot(&ds);

    for seed in [31, 32] {
        let output = simulate_tiny_into(&ds.root, seed);
        let err = assert_exit(&output, 1);
        assert!(err.contains("already holds a dataset"), "{err}");
        assert_eq!(std::fs::read(ds.manifest()).expect("read manifest"), manifest_before, "manifest.toml changed");
        assert!(snapshot(&ds) == files_before, "a shard changed after a refused simulate (seed {seed})");
    }
    assert_success(&ds.verify());
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write experiment file");
    path
}

#[test]
fn config_check_reports_unknown_keys_with_line_and_column() {
    let dir = tempfile::tempdir().expect("scratch directory");
    let bad = write(
        dir.path(),
        "bad.toml",
        "name = \"t\"\n\n[data]\nmanifest = \"m.toml\"\ntrain_subjects = [1]\n\n[optim]\nlrr = 0.1\n",
    );
    let output = voxbridge(&["config".as_ref(), "check".as_ref(), bad.as_os_str()]);
    let err = assert_exit(&output, 1);
    let expected = format!("{}:8:1: unknown key `lrr`", bad.display());
    assert!(err.contains(&expected), "expected `{expected}` in\n{err}");
    assert!(output.stdout.is_empty(), "config check printed a configuration for a bad file");

    let good = write(dir.path(), "good.toml", "name = \"t\"\n\n[data]\nmanifest = \"m.toml\"\ntrain_subjects = [1]\n");
    let out = assert_success(&voxbridge(&["config".as_ref(), "check".as_ref(), good.as_os_str()]));
    assert!(out.contains("train_subjects = [1]"), "{out}");
    assert!(out.contains("name = \"t\""), "{out}");
}

#[test]
fn distributed_binaries_have_a_command_line() {
    for name in ["voxbridge-coordinator", "voxbridge-worker"] {
        let out = assert_success(&run_bin(name, &["--help"]));
        assert!(out.contains(&format!("Usage: {name}")), "{name} --help:\n{out}");
    }
}

#[test]
fn simulate_rejects_malformed_noise_and_session_options() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("data");
    let out = out.to_str().expect("utf-8 path");
    for bad in ["0.1,x", "0.1", "0.1,0.2,0.3", "0.1,,0.2"] {
        let output = voxbridge(&["data", "simulate", "--preset", "tiny", "--out", out, "--ncsnr", bad]);
        let err = assert_exit(&output, 1);
        assert!(err.contains("--ncsnr takes two numbers LO,HI"), "{bad}: {err}");
    }
    // A subject must keep two sessions (one to train on, the test repeats spread over more).
    let output = voxbridge(&["data", "simulate", "--preset", "tiny", "--out", out, "--max-sessions", "1"]);
    let err = assert_exit(&output, 2);
    assert!(err.contains("--max-sessions"), "{err}");
    assert!(!dir.path().join("data").exists(), "a rejected command wrote output");
}
