//! `voxbridge train --workers N`: a local coordinator and worker processes on loopback.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use voxbridge_e2e::{SimDataset, assert_success, describe, stderr, step_losses, voxbridge_env};

/// Subjects 2 and 3 of `tiny`, 4 trials each per batch, 5 steps per epoch, 4 epochs: 20 steps.
/// No dropout: masks are drawn per rank's rows, so they cannot equal one process's.
fn experiment(dir: &Path, data: &SimDataset) -> PathBuf {
    experiment_with(dir, data, "")
}

/// [`experiment`] with `extra` appended (e.g. a `[checkpoint]` table).
fn experiment_with(dir: &Path, data: &SimDataset, extra: &str) -> PathBuf {
    experiment_of(dir, data, "[2, 3]", extra)
}

/// [`experiment_with`] training the subjects `subjects` (a TOML list).
fn experiment_of(dir: &Path, data: &SimDataset, subjects: &str, extra: &str) -> PathBuf {
    let text = format!(
        "name = \"dp\"\n[data]\nmanifest = {:?}\ntrain_subjects = {subjects}\n\
         [train]\nseed = 5\nbatch_size = 8\nepochs = 4\nsamples_per_epoch = 40\nmixup_pct = 0.25\n\
         [model]\nhidden = 32\nblocks = 1\nprior_depth = 1\nprior_dim_head = 16\ndropout = 0.0\n\
         [eval]\nloops = 3\nprior_steps = 0\n{extra}",
        data.manifest_str()
    );
    let path = dir.join("dp.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn train_workers(exp: &Path, out: &Path, workers: usize, extra: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let workers = workers.to_string();
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "train".as_ref(),
        exp.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--workers".as_ref(),
        workers.as_ref(),
    ];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    voxbridge_env(&args, env)
}

fn tensors(run: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(run.join("checkpoint/model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = file.names().into_iter().map(str::to_string).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let data = file
                .tensor(&n)
                .unwrap()
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (n, data)
        })
        .collect()
}

#[test]
fn two_workers_train_what_one_worker_trains() {
    let data = SimDataset::tiny(9);
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), &data);
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    assert_success(&train_workers(&exp, &one, 1, &[], &[]));
    let out = train_workers(&exp, &two, 2, &[], &[]);
    assert_success(&out);
    assert!(stderr(&out).contains("every worker finished"), "{}", describe(&out));
    assert_same_run(&one, &two, 20);
    let trials = |run: &Path| {
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("report.json")).unwrap()).unwrap();
        report["train_trials"].as_u64().unwrap()
    };
    assert_eq!(trials(&two), trials(&one), "the report counts every rank's subjects");
    assert!(two.join("rank-1/metrics/steps.csv").is_file(), "rank 1 keeps its own metrics apart");
    assert!(!two.join("rank-1/checkpoint").exists(), "only rank 0 saves the (whole) model");
}

/// Per-step losses within 1e-5 relative and the saved models (every subject's ridge gathered
/// from its owners) within 1e-4.
fn assert_same_run(one: &Path, many: &Path, steps: usize) {
    let (a, b) = (step_losses(one), step_losses(many));
    assert_eq!(a.len(), steps);
    assert_eq!(b.len(), steps);
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        for k in 0..3 {
            let rel = (x[k] - y[k]).abs() / x[k].abs().max(1e-6);
            assert!(rel <= 1e-5, "step {step} column {k}: 1 worker {} vs more {}", x[k], y[k]);
        }
    }
    let (x_all, y_all) = (tensors(one), tensors(many));
    assert_eq!(x_all.len(), y_all.len());
    for ((name, x), (other, y)) in x_all.iter().zip(&y_all) {
        assert_eq!(name, other);
        if name.ends_with("attention.to_k.bias") {
            continue; // zero gradient in exact arithmetic: AdamW steps on rounding noise
        }
        let worst = x.iter().zip(y).map(|(p, q)| (p - q).abs() / p.abs().max(1e-3)).fold(0f32, f32::max);
        assert!(worst <= 1e-4, "{name}: relative difference {worst}");
    }
}

/// More workers than subjects: 3 workers for 2 subjects split subject 2's share over ranks 0
/// and 1; and one subject on 2 workers (the fine-tuning shape). Both train what one worker
/// trains.
#[test]
fn more_workers_than_subjects_split_a_subject_and_train_what_one_worker_trains() {
    let data = SimDataset::tiny(13);
    let dir = tempfile::tempdir().unwrap();
    for (subjects, workers, steps) in [("[2, 3]", 3, 20), ("[2]", 2, 20)] {
        let exp = experiment_of(dir.path(), &data, subjects, "");
        let (one, many) = (dir.path().join(format!("one-{workers}")), dir.path().join(format!("many-{workers}")));
        assert_success(&train_workers(&exp, &one, 1, &[], &[]));
        assert_success(&train_workers(&exp, &many, workers, &[], &[]));
        assert_same_run(&one, &many, steps);
    }
}

/// A rank reads only its own subjects' trials (rank 0 also the test trials) and the targets
/// of the images they show; the voxel counts and sessions of the others come from the manifest.
#[test]
fn a_rank_loads_only_its_own_subjects_and_their_images() {
    use voxbridge_experiment::inputs::{LoadScope, load};
    let data = SimDataset::tiny(14);
    let dir = tempfile::tempdir().unwrap();
    let config = voxbridge_config::load_experiment(&experiment(dir.path(), &data)).unwrap();
    let dataset = voxbridge_data::Dataset::open(&data.manifest_str()).unwrap();
    let all = load(&dataset, &config.data, false, &LoadScope::all()).unwrap();
    let rank1 = load(&dataset, &config.data, false, &LoadScope { train: Some(vec![1]), tests: false }).unwrap();
    assert_eq!(rank1.train.subjects.len(), 1);
    let mine = &rank1.train.subjects[0];
    let same = &all.train.subjects[1];
    assert_eq!((mine.ridge, mine.subject, &mine.voxels), (1, 3, &same.voxels));
    assert!(rank1.tests.is_empty());
    assert_eq!((&rank1.voxels, &rank1.sessions_used), (&all.voxels, &all.sessions_used));
    // Fewer targets, the same values for every trial.
    let width = all.train.targets.tokens * all.train.targets.dim;
    assert!(rank1.train.targets.values.len() / width < all.train.targets.values.len() / width);
    for (&a, &b) in mine.target_rows.iter().zip(&same.target_rows) {
        assert_eq!(rank1.train.targets.row(a), all.train.targets.row(b));
    }
}

/// A stopped rank (SIGSTOP, as a hung GPU or a swapped-out node) is noticed by the other rank's
/// collective deadline; with no restarts left the coordinator gives up, naming the failure, well
/// within step_timeout + 5 s of the stop.
#[test]
fn a_stopped_worker_fails_the_run_within_the_step_timeout() {
    let data = SimDataset::tiny(10);
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), &data);
    let started = Instant::now();
    let out = train_workers(
        &exp,
        &dir.path().join("run"),
        2,
        &["--step-timeout-s", "2"],
        &[("VOXBRIDGE_FAULT", "stop-rank-after-step:1:5")],
    );
    let elapsed = started.elapsed();
    assert!(!out.status.success(), "{}", describe(&out));
    let err = stderr(&out);
    assert!(err.contains("gave up") && err.contains("no data from rank 1"), "{err}");
    assert!(err.contains("desync") || err.contains("seq"), "the error names the collective's sequence number: {err}");
    // step_timeout (2 s) + 5 s, plus the start-up of the processes and 5 steps; the heartbeat
    // timeout (30 s) is not what ended it.
    assert!(elapsed < Duration::from_secs(2 + 5 + 5), "took {elapsed:?}");
}

/// Every generation's rank 1 dies: with max_restarts = 2 the coordinator restarts twice, then
/// gives up with a summary of the three failures.
#[test]
fn the_restart_budget_is_enforced_with_a_summary() {
    let data = SimDataset::tiny(11);
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), &data);
    let out = train_workers(
        &exp,
        &dir.path().join("run"),
        2,
        &["--max-restarts", "2", "--step-timeout-s", "5"],
        &[("VOXBRIDGE_FAULT", "kill-rank-after-step:1:3")],
    );
    assert!(!out.status.success(), "{}", describe(&out));
    let err = stderr(&out);
    assert!(err.contains("restart budget (2) is spent"), "{err}");
    for generation in 0..3 {
        assert!(err.contains(&format!("generation {generation} rank")), "generation {generation} missing: {err}");
    }
}

/// SIGKILL of rank 1 after step 8 (checkpoints every 3 steps): the coordinator restarts every
/// worker, they continue from the step-6 checkpoint (written by rank 0 with every subject's
/// ridge, moments and stream gathered from its owners), and the per-step losses equal an
/// uninterrupted run's — with 2 workers (a subject each) and with 3 (subject 2 split over
/// ranks 0 and 1, so rank 1 is one of its owners).
#[test]
fn a_killed_worker_restarts_all_from_the_last_checkpoint_and_the_run_matches() {
    let data = SimDataset::tiny(12);
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment_with(dir.path(), &data, "[checkpoint]\nevery_steps = 3\n");
    let reference = dir.path().join("reference");
    assert_success(&train_workers(&exp, &reference, 2, &[], &[]));
    for workers in [2, 3] {
        let run = dir.path().join(format!("killed-{workers}"));
        let out = train_workers(
            &exp,
            &run,
            workers,
            &["--max-restarts", "1", "--step-timeout-s", "10"],
            &[("VOXBRIDGE_FAULT", "kill-rank-after-step:1:8:0")],
        );
        let log = stderr(&out);
        assert_success(&out);
        // The coordinator sees the dead rank through its exit (SIGKILL), or a survivor reports
        // its closed connection first (`rank 2: …: rank 1 closed the connection`): either way
        // rank 1 is named.
        let named = log.contains("rank 1: ") || log.contains("rank 1 closed the connection");
        assert!(log.contains("restart 1 of 1") && named, "{log}");
        assert!(log.contains("steps_done=6"), "the restart resumed from the step-6 checkpoint: {log}");
        let (got, want) = (step_losses(&run), step_losses(&reference));
        assert_eq!(got.len(), want.len());
        for (step, (x, y)) in got.iter().zip(&want).enumerate() {
            for k in 0..3 {
                let rel = (x[k] - y[k]).abs() / y[k].abs().max(1e-6);
                assert!(rel <= 1e-5, "{workers} workers, step {step} column {k}: {} vs {}", x[k], y[k]);
            }
        }
    }
}

/// SIGTERM to rank 1 alone after step 7: every rank agrees on the step to stop after, the
/// checkpoint there is committed once (rank 0 writes it), the workers exit 0 and the launcher
/// says how to continue; one process resuming it finishes with the losses of an uninterrupted
/// 2-worker run.
#[test]
fn sigterm_on_one_rank_stops_every_rank_after_the_same_step() {
    let data = SimDataset::tiny(13);
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), &data);
    let (reference, stopped) = (dir.path().join("reference"), dir.path().join("stopped"));
    assert_success(&train_workers(&exp, &reference, 2, &[], &[]));
    let out = train_workers(&exp, &stopped, 2, &[], &[("VOXBRIDGE_FAULT", "term-rank-after-step:1:7")]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{}", describe(&out));
    let store = voxbridge_checkpoint::CheckpointStore::open(stopped.join("checkpoints").to_str().unwrap()).unwrap();
    let at = store.latest_committed().unwrap().expect("a committed checkpoint").step;
    assert!((8..=9).contains(&at), "stopped at {at}: {err}");
    assert!(err.contains(&format!("the workers stopped on request after step {at}")), "{err}");
    for rank in [0, 1] {
        assert!(err.contains(&format!("stopped on request after step {at} with a committed checkpoint; run again with --resume auto to continue rank={rank}")), "rank {rank}: {err}");
    }
    let resumed = voxbridge_env(
        &[
            "train".as_ref(),
            exp.as_os_str(),
            "--out".as_ref(),
            stopped.as_os_str(),
            "--resume".as_ref(),
            "auto".as_ref(),
        ],
        &[],
    );
    assert_success(&resumed);
    let (a, b) = (step_losses(&reference), step_losses(&stopped));
    assert_eq!(a.len(), b.len());
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        for k in 0..3 {
            assert!((x[k] - y[k]).abs() <= 1e-5 * x[k].abs().max(1e-12), "step {step}: {x:?} vs {y:?}");
        }
    }
}

/// Two jobs on one machine (as two SLURM jobs on a node): each coordinator listens on a port of
/// its own (port 0) and publishes it in its address file; workers started before their
/// coordinator wait for that file and join the right job. A worker whose file never appears
/// gives up within its deadline, naming the file.
#[test]
fn workers_find_their_coordinator_through_its_address_file() {
    let data = SimDataset::tiny(14);
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), &data);
    // Builds the binaries once before they are started directly.
    assert_success(&voxbridge_e2e::run_bin("voxbridge-worker", &["--version"]));
    // Each process logs to a file of its own: pipes read one after another could fill up.
    let logs = std::cell::Cell::new(0);
    let spawn = |name: &str, args: &[&std::ffi::OsStr]| {
        let log = dir.path().join(format!("{name}-{}.log", logs.replace(logs.get() + 1)));
        let child = std::process::Command::new(voxbridge_e2e::bin_path(name))
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        (child, log)
    };
    let wait = |(mut child, log): (std::process::Child, PathBuf)| {
        let status = child.wait().unwrap();
        (status, std::fs::read_to_string(&log).unwrap())
    };
    let mut children = Vec::new();
    for job in ["a", "b"] {
        let out = dir.path().join(job);
        let file = out.join("slurm/coordinator.addr");
        let common = ["--experiment".as_ref(), exp.as_os_str(), "--out".as_ref(), out.as_os_str()];
        for _ in 0..2 {
            let mut args = vec!["--coordinator-file".as_ref(), file.as_os_str()];
            args.extend(common);
            children.push(spawn("voxbridge-worker", &args));
        }
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--external-workers".as_ref(),
            "--workers".as_ref(),
            "2".as_ref(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--address-file".as_ref(),
            file.as_os_str(),
        ];
        args.extend(common);
        children.push(spawn("voxbridge-coordinator", &args));
    }
    for child in children {
        let (status, log) = wait(child);
        assert!(status.success(), "{status}: {log}");
    }
    let port = |job: &str| {
        let addr = std::fs::read_to_string(dir.path().join(job).join("slurm/coordinator.addr")).unwrap();
        assert!(addr.starts_with("127.0.0.1:"), "{addr}");
        addr.trim().rsplit_once(':').unwrap().1.parse::<u16>().unwrap()
    };
    assert_ne!(port("a"), port("b"));
    assert_same_run(&dir.path().join("a"), &dir.path().join("b"), 20);

    let missing = dir.path().join("never/coordinator.addr");
    let never = spawn(
        "voxbridge-worker",
        &[
            "--coordinator-file".as_ref(),
            missing.as_os_str(),
            "--init-timeout-s".as_ref(),
            "1".as_ref(),
            "--experiment".as_ref(),
            exp.as_os_str(),
            "--out".as_ref(),
            dir.path().join("never").as_os_str(),
        ],
    );
    let (status, log) = wait(never);
    assert!(!status.success() && log.contains(&missing.display().to_string()), "{status}: {log}");
}

/// `voxbridge train X` — one process, no coordinator — trains what `--workers 2` trains: the
/// same initial weights (every parameter drawn up front, in module order, on both paths), so
/// per-step losses agree within 1e-5 relative and the saved models within 1e-4. (Before: the
/// single process initialised lazily in its first forward, and step 0's loss differed.)
#[test]
fn one_process_trains_what_two_workers_train() {
    let data = SimDataset::tiny(9);
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), &data);
    let (single, two) = (dir.path().join("single"), dir.path().join("two"));
    let args: [&std::ffi::OsStr; 4] = ["train".as_ref(), exp.as_os_str(), "--out".as_ref(), single.as_os_str()];
    assert_success(&voxbridge_env(&args, &[]));
    assert_success(&train_workers(&exp, &two, 2, &[], &[]));
    assert_same_run(&single, &two, 20);
}
