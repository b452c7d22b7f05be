//! Checkpoints end to end: `kill -9` and resume, a save killed at every put, the resume config
//! guard, fine-tuning from a checkpoint URL, `ckpt ls`/`inspect`, and S3 (moto) against local.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use voxbridge_checkpoint::CheckpointStore;
use voxbridge_e2e::{SimDataset, assert_success, describe, stderr, voxbridge, voxbridge_env};

/// Two subjects of `tiny`, 4 trials each per batch, 5 steps per epoch, 3 epochs (BiMixCo in
/// epoch 0, SoftCLIP after): 15 steps. `checkpoint` is the body of `[checkpoint]`.
fn experiment(dir: &Path, name: &str, data: &SimDataset, checkpoint: &str, extra_train: &str) -> PathBuf {
    let text = format!(
        "name = \"{name}\"\n[data]\nmanifest = {:?}\ntrain_subjects = [2, 3]\n\
         [train]\nseed = 3\nbatch_size = 8\nepochs = 3\nsamples_per_epoch = 40\nmixup_pct = 0.34\n{extra_train}\n\
         [model]\nhidden = 32\nblocks = 1\nprior_depth = 1\nprior_dim_head = 16\n\
         [eval]\nloops = 3\nprior_steps = 0\n\
         [checkpoint]\n{checkpoint}\n",
        data.manifest_str()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn train(exp: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec!["train".as_ref(), exp.as_os_str(), "--out".as_ref(), out.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    voxbridge_env(&args, env)
}

#[track_caller]
fn assert_killed(output: &Output) {
    assert_eq!(output.status.signal(), Some(9), "expected death by SIGKILL\n{}", describe(output));
}

/// Every row of `metrics/<file>` without its wall-clock `seconds` column, as text (exact
/// comparison).
fn rows_without_seconds(run: &Path, file: &str) -> Vec<String> {
    let csv = std::fs::read_to_string(run.join("metrics").join(file)).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let seconds = header.iter().position(|h| *h == "seconds").unwrap();
    lines
        .map(|l| l.split(',').enumerate().filter(|(i, _)| *i != seconds).map(|(_, f)| f).collect::<Vec<_>>().join(","))
        .collect()
}

/// Per-step losses and schedule (steps.csv).
fn step_rows(run: &Path) -> Vec<String> {
    rows_without_seconds(run, "steps.csv")
}

/// Epoch means and retrieval (epochs.csv).
fn epoch_rows(run: &Path) -> Vec<String> {
    rows_without_seconds(run, "epochs.csv")
}

fn final_image_top1(run: &Path) -> serde_json::Value {
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    report["evaluation"]["subject2"]["retrieval"]["image_top1"].clone()
}

/// `kill -9` after step K, then `--resume auto`: the resumed run's per-step losses, epoch means
/// and final evaluation equal an uninterrupted run's exactly — for a checkpoint at an epoch
/// boundary, one mid-epoch, and a kill during the last batch of an epoch.
#[test]
fn kill_9_then_resume_auto_continues_exactly() {
    let data = SimDataset::tiny(4);
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    let exp = experiment(dir.path(), "resume", &data, "", "");
    assert_success(&train(&exp, &reference, &[], &[]));
    let want = step_rows(&reference);
    assert_eq!(want.len(), 15);

    // (checkpoint.every_steps, kill once this many steps are done, step the resume starts at)
    let cases = [(0, 7, 5, "epoch boundary"), (3, 8, 6, "mid-epoch"), (4, 5, 4, "last batch of epoch 0")];
    for (every, kill_at, resumed_at, what) in cases {
        let run = dir.path().join(format!("killed-{every}-{kill_at}"));
        let exp = experiment(dir.path(), "resume", &data, &format!("every_steps = {every}"), "");
        let fault = format!("kill-after-step:{kill_at}");
        let killed = train(&exp, &run, &[], &[("VOXBRIDGE_FAULT", &fault)]);
        assert_killed(&killed);
        assert_eq!(step_rows(&run).len(), kill_at, "{what}: rows written before the kill");

        let resumed = train(&exp, &run, &["--resume", "auto"], &[]);
        let log = stderr(&resumed);
        assert_success(&resumed);
        assert!(log.contains("resuming") && log.contains(&format!("steps_done={resumed_at}")), "{what}: {log}");
        assert_eq!(step_rows(&run), want, "{what}: per-step losses after resume");
        assert_eq!(epoch_rows(&run), epoch_rows(&reference), "{what}: epoch means and retrieval");
        assert_eq!(final_image_top1(&run), final_image_top1(&reference), "{what}: final evaluation");
    }
}

/// Crash anywhere (kill variant): the process is SIGKILLed at each put k of the second save;
/// `ckpt ls` shows that save partial (or absent), and the resume continues from the first
/// checkpoint, read back with matching checksums, to the uninterrupted run's losses.
#[test]
fn a_save_killed_at_any_put_resumes_from_the_previous_checkpoint() {
    let data = SimDataset::tiny(5);
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), "crash", &data, "every_steps = 5", "max_steps = 12");
    let reference = dir.path().join("reference");
    assert_success(&train(&exp, &reference, &[], &[]));
    let want = step_rows(&reference);
    // One save: model.safetensors, optimizer.safetensors, model.json, state.json, config.toml,
    // then COMMIT: 6 puts. The second save (after step 10) starts at put 6.
    for k in 0..6 {
        let run = dir.path().join(format!("crash-{k}"));
        let fault = format!("kill-put:{}", 6 + k);
        assert_killed(&train(&exp, &run, &[], &[("VOXBRIDGE_FAULT", &fault)]));
        let ckpts = run.join("checkpoints");
        let ls = assert_success(&voxbridge(&["ckpt".as_ref(), "ls".as_ref(), ckpts.as_os_str()]));
        assert!(ls.contains("step-000000005-gen-000") && ls.contains("committed"), "put {k}: {ls}");
        assert!(!ls.contains("step-000000010-gen-000  ") || ls.contains("partial"), "put {k}: {ls}");
        let inspect = assert_success(&voxbridge(&["ckpt".as_ref(), "inspect".as_ref(), ckpts.as_os_str()]));
        assert!(inspect.contains("step 5, generation 0") && !inspect.contains("BAD"), "put {k}: {inspect}");

        let resumed = train(&exp, &run, &["--resume", "auto"], &[]);
        assert_success(&resumed);
        assert!(stderr(&resumed).contains("steps_done=5"), "put {k}: {}", stderr(&resumed));
        assert_eq!(step_rows(&run), want, "put {k}");
        // The resumed process is generation 1; the dead save's leftovers are purged.
        let ls = assert_success(&voxbridge(&["ckpt".as_ref(), "ls".as_ref(), ckpts.as_os_str()]));
        assert!(ls.contains("step-000000012-gen-001") && !ls.contains("partial"), "put {k}: {ls}");
    }
}

/// A committed checkpoint whose file was altered after the commit: `ckpt inspect` exits
/// non-zero for it and for its root; `--resume auto` skips it (loudly, naming the file; never
/// deleting it) and resumes from the newest intact one to the uninterrupted run's losses;
/// retention keeps it without counting it, and leaves no empty checkpoint directories on disk.
/// Every committed checkpoint damaged: resume auto refuses. (Before: inspect exited 0, resume
/// auto refused at the damaged newest one, and deleted checkpoints left empty `step-…` dirs.)
#[test]
fn resume_auto_skips_a_damaged_checkpoint_and_inspect_fails_on_it() {
    let data = SimDataset::tiny(5);
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), "damaged", &data, "every_steps = 5\nkeep_last = 2", "max_steps = 14");
    let reference = dir.path().join("reference");
    assert_success(&train(&exp, &reference, &[], &[]));
    let want = step_rows(&reference);

    let run = dir.path().join("run");
    assert_killed(&train(&exp, &run, &[], &[("VOXBRIDGE_FAULT", "kill-after-step:11")]));
    let ckpts = run.join("checkpoints");
    let damaged = ckpts.join("step-000000010-gen-000");
    voxbridge_e2e::flip_middle_byte(&damaged.join("model.safetensors"));

    for target in [&damaged, &ckpts] {
        let inspect = voxbridge(&["ckpt".as_ref(), "inspect".as_ref(), target.as_os_str()]);
        assert!(!inspect.status.success(), "inspect of {} must fail\n{}", target.display(), describe(&inspect));
        let out = voxbridge_e2e::stdout(&inspect);
        assert!(out.contains("model.safetensors") && out.contains("BAD"), "{out}");
        assert!(stderr(&inspect).contains("1 of 5 files failed verification"), "{}", describe(&inspect));
    }

    let resumed = train(&exp, &run, &["--resume", "auto"], &[]);
    let log = stderr(&resumed);
    assert_success(&resumed);
    assert!(
        log.contains("DAMAGED CHECKPOINT SKIPPED") && log.contains("step-000000010-gen-000/model.safetensors"),
        "{log}"
    );
    assert!(log.contains("steps_done=5"), "{log}");
    assert_eq!(step_rows(&run), want, "losses after resuming from the intact checkpoint");
    assert!(damaged.join("model.safetensors").is_file() && damaged.join("COMMIT").is_file(), "never deleted");
    let ls = assert_success(&voxbridge(&["ckpt".as_ref(), "ls".as_ref(), ckpts.as_os_str()]));
    assert!(ls.contains("step-000000010-gen-000") && ls.contains("DAMAGED"), "{ls}");
    // Retention: the two newest intact ones (10 and 14 of generation 1) are kept; 5 is gone.
    assert!(ls.contains("step-000000014-gen-001") && ls.contains("step-000000010-gen-001"), "{ls}");
    let mut dirs: Vec<String> =
        std::fs::read_dir(&ckpts).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    dirs.sort();
    assert_eq!(dirs, ["step-000000010-gen-000", "step-000000010-gen-001", "step-000000014-gen-001"], "{ls}");

    // Nothing intact at all: refused, naming the root, and nothing deleted.
    let run = dir.path().join("all-damaged");
    assert_killed(&train(&exp, &run, &[], &[("VOXBRIDGE_FAULT", "kill-after-step:11")]));
    let ckpts = run.join("checkpoints");
    for step in ["step-000000005-gen-000", "step-000000010-gen-000"] {
        voxbridge_e2e::flip_middle_byte(&ckpts.join(step).join("state.json"));
    }
    let refused = train(&exp, &run, &["--resume", "auto"], &[]);
    assert!(!refused.status.success(), "{}", describe(&refused));
    assert!(stderr(&refused).contains("every committed checkpoint is damaged"), "{}", describe(&refused));
    assert!(
        ckpts.join("step-000000005-gen-000/COMMIT").is_file() && ckpts.join("step-000000010-gen-000/COMMIT").is_file()
    );
}

#[test]
fn resume_refuses_other_training_settings_by_name_unless_allowed() {
    let data = SimDataset::tiny(6);
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let exp = experiment(dir.path(), "guard", &data, "every_steps = 2", "");
    assert_killed(&train(&exp, &run, &[], &[("VOXBRIDGE_FAULT", "kill-after-step:3")]));

    // A fresh start over existing checkpoints is refused, pointing at --resume.
    let again = train(&exp, &run, &[], &[]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--resume auto"), "{}", describe(&again));

    let changed = experiment(dir.path(), "guard", &data, "every_steps = 2\nkeep_last = 3", "\n[optim]\nlr = 0.001");
    let refused = train(&changed, &run, &["--resume", "auto"], &[]);
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(err.contains("optim.lr: 0.0003 → 0.001") && err.contains("--allow-config-change"), "{err}");
    assert!(!err.contains("checkpoint.keep_last"), "checkpoint settings are not training-relevant: {err}");

    let allowed = train(&changed, &run, &["--resume", "auto", "--allow-config-change", "optim.lr"], &[]);
    assert_success(&allowed);
    assert!(stderr(&allowed).contains("steps_done=2"), "{}", stderr(&allowed));
}

/// A fine-tune reads its pretraining checkpoint by URL (here a local root: its newest commit),
/// and records it as the parent.
#[test]
fn fine_tuning_starts_from_a_checkpoint_url() {
    let data = SimDataset::tiny(7);
    let dir = tempfile::tempdir().unwrap();
    let pretrain = dir.path().join("pretrain");
    let exp = experiment(dir.path(), "pre", &data, "", "max_steps = 6");
    assert_success(&train(&exp, &pretrain, &[], &[]));
    let root = pretrain.join("checkpoints");
    let text = format!(
        "name = \"fine\"\n[data]\nmanifest = {:?}\ntrain_subjects = [1]\nsessions = 1\n\
         [train]\nseed = 0\nbatch_size = 4\nepochs = 1\ninit_from = {:?}\n\
         [model]\nhidden = 32\nblocks = 1\nprior_depth = 1\nprior_dim_head = 16\n[eval]\nloops = 2\nprior_steps = 0\n",
        data.manifest_str(),
        root.display().to_string()
    );
    let fine_exp = dir.path().join("fine.toml");
    std::fs::write(&fine_exp, text).unwrap();
    let fine = dir.path().join("fine");
    let out = train(&fine_exp, &fine, &[], &[]);
    assert_success(&out);
    let inspect =
        assert_success(&voxbridge(&["ckpt".as_ref(), "inspect".as_ref(), fine.join("checkpoints").as_os_str()]));
    assert!(inspect.contains(&format!("fine-tuned from {}", root.display())), "{inspect}");
}

/// The S3 path against a real moto server (started by the README's test command): a checkpoint
/// written to moto and one written to a local directory hold byte-identical files; Python's
/// `safetensors` opens the weights where it is installed.
#[test]
fn s3_and_local_checkpoints_are_byte_identical() {
    let Ok(endpoint) = std::env::var("AWS_ENDPOINT") else {
        eprintln!("skipped: AWS_ENDPOINT is not set (scripts/test.sh starts a moto S3 server and sets it)");
        return;
    };
    let bucket = std::env::var("AWS_BUCKET").unwrap_or_else(|_| "test-bucket".into());
    let data = SimDataset::tiny(8);
    let dir = tempfile::tempdir().unwrap();
    let unique = dir.path().file_name().unwrap().to_string_lossy().to_string();
    let s3_root = format!("s3://{bucket}/{unique}/checkpoints");
    // One experiment; the launcher puts its checkpoints in S3 or on local disk.
    let exp = experiment(dir.path(), "same", &data, "", "max_steps = 6");
    assert_success(&train(&exp, &dir.path().join("s3"), &["--checkpoint-url", &s3_root], &[]));
    assert_success(&train(&exp, &dir.path().join("local"), &[], &[]));

    let s3 = CheckpointStore::open(&s3_root).unwrap_or_else(|e| panic!("{endpoint}: {e}"));
    let local = CheckpointStore::open(dir.path().join("local/checkpoints").to_str().unwrap()).unwrap();
    let (s3_id, local_id) = (s3.latest_committed().unwrap().unwrap(), local.latest_committed().unwrap().unwrap());
    assert_eq!(s3_id, local_id);
    let (s3_record, local_record) = (s3.commit_record(s3_id).unwrap(), local.commit_record(local_id).unwrap());
    if s3_record != local_record {
        // Name the tensors that differ, to tell nondeterministic training from serialisation.
        let weights = |store: &CheckpointStore, r| store.read(r, "model.safetensors").unwrap();
        let (a, b) = (weights(&s3, &s3_record), weights(&local, &local_record));
        let (a, b) =
            (safetensors::SafeTensors::deserialize(&a).unwrap(), safetensors::SafeTensors::deserialize(&b).unwrap());
        let differing: Vec<String> = a
            .names()
            .into_iter()
            .filter(|n| a.tensor(n).unwrap().data() != b.tensor(n).unwrap().data())
            .map(str::to_string)
            .collect();
        panic!("COMMIT markers differ:\n{s3_record:?}\n{local_record:?}\ntensors that differ: {differing:?}");
    }
    for file in &s3_record.files {
        assert_eq!(
            s3.read(&s3_record, &file.name).unwrap(),
            local.read(&local_record, &file.name).unwrap(),
            "{}",
            file.name
        );
    }
    let ls = assert_success(&voxbridge(&["ckpt", "ls", &s3_root]));
    assert!(ls.contains("step-000000006-gen-000") && ls.contains("committed"), "{ls}");

    let weights = dir.path().join("local/checkpoints").join(local_id.dir_name()).join("model.safetensors");
    let script = "import sys\nfrom safetensors.numpy import load_file\nd = load_file(sys.argv[1])\n\
                  print(len(d), d['backbone.backbone_linear.weight'].shape)";
    match std::process::Command::new("python3").args(["-c", script]).arg(&weights).output() {
        Ok(out) if out.status.success() => {
            let printed = String::from_utf8_lossy(&out.stdout);
            assert!(printed.contains('('), "python printed {printed}");
        }
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("ModuleNotFoundError") => {
            eprintln!("python check skipped: python3 lacks safetensors/numpy");
        }
        Ok(out) => panic!("python could not open {}: {}", weights.display(), String::from_utf8_lossy(&out.stderr)),
        Err(e) => eprintln!("python check skipped: {e}"),
    }
}

/// SIGTERM (a scheduler's preemption notice) after step 7: the run finishes its step, commits a
/// checkpoint, stops with a message saying how to continue; `--resume auto` then finishes it
/// with the per-step losses, epoch means and evaluation of an uninterrupted run.
#[test]
fn sigterm_stops_at_a_committed_checkpoint_and_resume_auto_finishes_the_run() {
    let data = SimDataset::tiny(11);
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), "term", &data, "every_steps = 5", "");
    let (reference, stopped) = (dir.path().join("reference"), dir.path().join("stopped"));
    assert_success(&train(&exp, &reference, &[], &[]));
    let out = train(&exp, &stopped, &[], &[("VOXBRIDGE_FAULT", "term-rank-after-step:0:7")]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let store = CheckpointStore::open(stopped.join("checkpoints").to_str().unwrap()).unwrap();
    let at = store.latest_committed().unwrap().expect("a committed checkpoint").step;
    // The signal lands during step 8's work at the latest: the run stops after step 8 or 9.
    assert!((8..=9).contains(&at), "stopped at {at}: {err}");
    assert!(err.contains(&format!("stopped on request after step {at}")) && err.contains("--resume auto"), "{err}");
    assert!(!stopped.join("report.json").exists());
    assert_success(&train(&exp, &stopped, &["--resume", "auto"], &[]));
    assert_eq!(step_rows(&stopped), step_rows(&reference));
    assert_eq!(epoch_rows(&stopped), epoch_rows(&reference));
    assert_eq!(final_image_top1(&stopped), final_image_top1(&reference));
}
