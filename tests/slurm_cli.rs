//! `voxbridge submit` and `voxbridge status` against a real one-node SLURM (slurmctld +
//! slurmd, started by the README's test command through scripts/slurm-up.sh, which exports
//! SLURM_CONF). Without SLURM_CONF the cluster tests skip with a printed reason; the dry-run and
//! error tests need no cluster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use voxbridge_e2e::{SimDataset, assert_success, bin_path, describe, stderr, voxbridge};

fn slurm_available() -> bool {
    match std::env::var("SLURM_CONF") {
        Ok(conf) if Path::new(&conf).is_file() => true,
        _ => {
            eprintln!("skipped: SLURM_CONF is not set (scripts/test.sh starts a one-node SLURM and sets it)");
            false
        }
    }
}

/// Two subjects of `tiny`, 4 rows each per batch, checkpoints every 5 steps; `epochs` of 5 steps.
fn experiment(dir: &Path, data: &SimDataset, name: &str, epochs: u32, hidden: u32) -> PathBuf {
    let text = format!(
        "name = \"{name}\"\n[data]\nmanifest = {:?}\ntrain_subjects = [2, 3]\n\
         [train]\nseed = 5\nbatch_size = 8\nepochs = {epochs}\nsamples_per_epoch = 40\nmixup_pct = 0.25\n\
         [model]\nhidden = {hidden}\nblocks = 1\nprior_depth = 1\nprior_dim_head = 16\ndropout = 0.0\n\
         [eval]\nloops = 3\nprior_steps = 0\n[checkpoint]\nevery_steps = 5\n",
        data.manifest_str()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn bin_dir() -> PathBuf {
    bin_path("voxbridge").parent().unwrap().to_path_buf()
}

/// The arguments of `voxbridge submit <experiment> --out <run> --bin-dir <this build> extra…`.
fn submit_args(experiment: &Path, run: &Path, extra: &[&str]) -> Vec<String> {
    let bin = bin_dir();
    let mut args = vec!["submit", experiment.to_str().unwrap(), "--out", run.to_str().unwrap()];
    args.extend(["--bin-dir", bin.to_str().unwrap()]);
    args.extend(extra);
    args.into_iter().map(str::to_string).collect()
}

/// Runs `voxbridge submit` (see [`submit_args`]); the job id it printed.
fn submit(experiment: &Path, run: &Path, extra: &[&str]) -> String {
    let out = assert_success(&voxbridge(&submit_args(experiment, run, extra)));
    out.split_whitespace()
        .skip_while(|w| *w != "job")
        .nth(1)
        .unwrap_or_else(|| panic!("no job id in {out}"))
        .to_string()
}

/// `JobState` and `ExitCode` of a job, from `scontrol show job`.
fn job_state(id: &str) -> (String, String) {
    let out = Command::new("scontrol").args(["show", "job", id]).output().expect("scontrol runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |key: &str| {
        text.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{key}="))).unwrap_or("").to_string()
    };
    (field("JobState"), field("ExitCode"))
}

/// Polls `done` every 100 ms until it holds or `within` passes (then panics with `what`).
fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for_end(id: &str, run: &Path) -> (String, String) {
    let mut last = (String::new(), String::new());
    wait_until(Duration::from_secs(300), &format!("job {id} to end (log in {})", run.join("slurm").display()), || {
        last = job_state(id);
        !matches!(last.0.as_str(), "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "")
    });
    last
}

fn log_of(run: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(run.join("slurm")).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().ends_with(".out") {
            text += &std::fs::read_to_string(entry.path()).unwrap_or_default();
        }
    }
    text
}

fn committed_step(run: &Path) -> Option<u64> {
    let store = voxbridge_checkpoint::CheckpointStore::open(run.join("checkpoints").to_str().unwrap()).unwrap();
    store.latest_committed().unwrap().map(|id| id.step)
}

/// Columns `step` and `loss` of a run's steps.csv.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    let csv = std::fs::read_to_string(run.join("metrics/steps.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (s, l) = (col("step"), col("loss"));
    lines
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            (f[s].parse().unwrap(), f[l].parse().unwrap())
        })
        .collect()
}

#[test]
fn a_two_task_tiny_run_completes_and_commits_its_checkpoint() {
    if !slurm_available() {
        return;
    }
    let data = SimDataset::tiny(0);
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), &data, "slurm-tiny", 4, 32);
    let run = dir.path().join("runs/slurm-tiny");
    let id = submit(&exp, &run, &[]);
    let (state, exit) = wait_for_end(&id, &run);
    assert_eq!((state.as_str(), exit.as_str()), ("COMPLETED", "0:0"), "{}", log_of(&run));
    // 2 workers (the local site's tasks per node) trained 4 epochs of 5 steps.
    assert!(log_of(&run).contains("all 2 workers joined"), "{}", log_of(&run));
    assert_eq!(committed_step(&run), Some(20));
    assert!(run.join("report.json").is_file());
    let records = voxbridge_cluster::read_records(&run).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].job_id, id);
    let status = assert_success(&voxbridge(&["status", run.to_str().unwrap()]));
    assert!(status.contains(&format!("job {id} slurm-tiny (train): COMPLETED")), "{status}");
    assert!(status.contains("20 steps logged: checkpoint at step 20 committed: finished"), "{status}");

    // Regression: a job killed after rank 1 wrote its report but before rank 0 wrote its own.
    // Resubmitted, rank 1 must not call the run finished on its own (rank 0 would wait for it
    // in a collective until the step deadline): both resume and rank 0 writes the report.
    std::fs::remove_file(run.join("report.json")).unwrap();
    assert!(run.join("rank-1/report.json").is_file());
    let again = submit(&exp, &run, &[]);
    let (state, exit) = wait_for_end(&again, &run);
    assert_eq!((state.as_str(), exit.as_str()), ("COMPLETED", "0:0"), "{}", log_of(&run));
    assert!(run.join("report.json").is_file(), "{}", log_of(&run));
}

#[test]
fn a_cancelled_run_resumes_on_resubmission_with_the_same_losses() {
    if !slurm_available() {
        return;
    }
    let data = SimDataset::tiny(1);
    let dir = tempfile::tempdir().unwrap();
    // Wide and long enough that the run is still training when it is cancelled: 400 steps.
    let exp = experiment(dir.path(), &data, "slurm-preempt", 80, 256);
    let (reference, preempted) = (dir.path().join("runs/reference"), dir.path().join("runs/preempted"));
    let reference_id = submit(&exp, &reference, &[]);
    let id = submit(&exp, &preempted, &[]);
    wait_until(Duration::from_secs(300), "3 logged steps", || {
        std::fs::read_to_string(preempted.join("metrics/steps.csv")).is_ok_and(|t| t.lines().count() > 3)
    });
    // A second job for a run that is still training is refused.
    let twice = voxbridge(&submit_args(&exp, &preempted, &[]));
    assert!(!twice.status.success(), "{}", describe(&twice));
    assert!(stderr(&twice).contains(&format!("job {id} is still")), "{}", describe(&twice));
    // SIGTERM to the job's steps (the workers), as `--signal=TERM@grace_s` sends it before the
    // time limit.
    let cancel = Command::new("scancel").args(["--signal=TERM", &id]).output().unwrap();
    assert!(cancel.status.success(), "{}", String::from_utf8_lossy(&cancel.stderr));
    let (state, exit) = wait_for_end(&id, &preempted);
    let log = log_of(&preempted);
    // The workers finished their step, committed a checkpoint and exited 0; the coordinator
    // marks the job unfinished (75) so nothing waiting on it starts.
    assert_eq!((state.as_str(), exit.as_str()), ("FAILED", "75:0"), "{log}");
    let stopped_at = committed_step(&preempted).expect("a committed checkpoint");
    assert!(stopped_at < 400, "stopped at {stopped_at}");
    assert!(log.contains(&format!("stopped on request after step {stopped_at}")), "{log}");
    assert!(!preempted.join("report.json").exists());

    let again = submit(&exp, &preempted, &[]);
    let (state, _) = wait_for_end(&again, &preempted);
    assert_eq!(state, "COMPLETED", "{}", log_of(&preempted));
    let log = log_of(&preempted);
    assert!(log.contains(&format!("steps_done={stopped_at} total=400")) && log.contains("resuming"), "{log}");
    let (state, _) = wait_for_end(&reference_id, &reference);
    assert_eq!(state, "COMPLETED", "{}", log_of(&reference));
    let (a, b) = (losses(&reference), losses(&preempted));
    assert_eq!(a.len(), 400);
    assert_eq!(a.iter().map(|r| r.0).collect::<Vec<_>>(), b.iter().map(|r| r.0).collect::<Vec<_>>());
    for ((step, x), (_, y)) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-12), "step {step}: {x} vs {y}");
    }
    assert_eq!(voxbridge_cluster::read_records(&preempted).unwrap().len(), 2);
}

#[test]
fn submit_refuses_what_slurm_cannot_run() {
    if !slurm_available() {
        return;
    }
    let data = SimDataset::tiny(2);
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), &data, "refused", 1, 32);
    let site = dir.path().join("nope.toml");
    std::fs::write(&site, "name = \"nope\"\npartition = \"nope\"\ngpus_per_node = 0\ntasks_per_node = 2\n").unwrap();
    let run = dir.path().join("run");
    let args = |extra: &[&str]| submit_args(&exp, &run, extra);
    let out = voxbridge(&args(&["--cluster", site.to_str().unwrap()]));
    assert!(
        stderr(&out).contains("unknown partition \"nope\"") && stderr(&out).contains("debug"),
        "{}",
        describe(&out)
    );
    // More memory than any node has: sbatch refuses, and its own message is shown.
    let huge = dir.path().join("huge.toml");
    std::fs::write(&huge, "name = \"huge\"\ngpus_per_node = 0\ntasks_per_node = 2\nmem = \"100000000G\"\n").unwrap();
    let out = voxbridge(&args(&["--cluster", huge.to_str().unwrap()]));
    let err = stderr(&out);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        err.contains("sbatch --parsable") && err.contains("Requested node configuration is not available"),
        "{err}"
    );
    assert!(voxbridge_cluster::read_records(&run).unwrap().is_empty());
}

#[test]
fn finetune_all_dry_run_shows_one_job_per_subject_after_the_pretraining() {
    let data = SimDataset::tiny(3);
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), &data, "pre", 2, 32);
    let run = dir.path().join("runs/pre");
    let out = assert_success(&voxbridge(&[
        "submit",
        exp.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--finetune-all",
        "--dry-run",
    ]));
    let jobs: Vec<&str> = out.lines().filter(|l| l.starts_with("# ---- ")).collect();
    assert_eq!(jobs.len(), 3, "{out}");
    assert!(jobs[0].contains("train job pre "), "{out}");
    for (job, subject) in jobs[1..].iter().zip([2, 3]) {
        assert!(job.contains(&format!("finetune job pre-finetune-subj{subject:02}")), "{out}");
    }
    assert_eq!(out.matches("#SBATCH --dependency=afterok:<job id of pre>").count(), 2, "{out}");
    assert!(out.contains("#SBATCH --signal=TERM@90"), "{out}");
    assert!(!dir.path().join("runs").exists(), "a dry run writes nothing");

    // Ranks that cannot place the batch: one subject, 2 rows per batch, 4 workers.
    let site = dir.path().join("four.toml");
    std::fs::write(&site, "name = \"four\"\ngpus_per_node = 4\n").unwrap();
    let small = dir.path().join("small.toml");
    std::fs::write(
        &small,
        std::fs::read_to_string(&exp)
            .unwrap()
            .replace("batch_size = 8", "batch_size = 2")
            .replace("train_subjects = [2, 3]", "train_subjects = [2]"),
    )
    .unwrap();
    let out = voxbridge(&["submit", small.to_str().unwrap(), "--cluster", site.to_str().unwrap(), "--dry-run"]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("4 ranks") && err.contains("train.batch_size"), "{}", describe(&out));

    // A sweep with an empty grid value expands to no runs.
    let sweep = dir.path().join("sweep.toml");
    std::fs::write(
        &sweep,
        format!("name = \"s\"\nbase = {:?}\n[grid]\n\"train.seed\" = []\n", exp.file_name().unwrap()),
    )
    .unwrap();
    let out = voxbridge(&["submit", sweep.to_str().unwrap(), "--dry-run"]);
    assert!(!out.status.success() && stderr(&out).contains("grid.train.seed"), "{}", describe(&out));
}

#[test]
fn submit_without_sbatch_says_where_to_run_and_records_nothing() {
    let data = SimDataset::tiny(4);
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), &data, "nosbatch", 1, 32);
    let run = dir.path().join("run");
    let out = voxbridge_e2e::voxbridge_env(&submit_args(&exp, &run, &[]), &[("PATH", "/nonexistent")]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("`sbatch` is not on PATH") && err.contains("--dry-run"), "{err}");
    assert!(voxbridge_cluster::read_records(&run).unwrap().is_empty());
}

#[test]
fn a_sweep_runs_as_a_job_array() {
    if !slurm_available() {
        return;
    }
    let data = SimDataset::tiny(5);
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), &data, "base", 1, 32);
    let sweep = dir.path().join("seeds.toml");
    let text = format!("name = \"seeds\"\nbase = {:?}\n[grid]\n\"train.seed\" = [1, 2]\n", exp.file_name().unwrap());
    std::fs::write(&sweep, text).unwrap();
    let out_dir = dir.path().join("runs/seeds");
    let id = submit(&sweep, &out_dir, &[]);
    for task in 0..2 {
        let run = out_dir.join(format!("seeds-seed{}", task + 1));
        let (state, exit) = wait_for_end(&format!("{id}_{task}"), &out_dir);
        assert_eq!((state.as_str(), exit.as_str()), ("COMPLETED", "0:0"), "{}", log_of(&out_dir));
        assert!(run.join("report.json").is_file(), "{}", log_of(&out_dir));
        let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
        assert!(config.contains(&format!("seed = {}", task + 1)), "{config}");
    }
    let status = assert_success(&voxbridge(&["status", out_dir.to_str().unwrap()]));
    assert!(status.contains(&format!("{id}_0=COMPLETED")) && status.contains(&format!("{id}_1=COMPLETED")), "{status}");
    assert!(status.contains("seeds-seed2: 5 steps logged"), "{status}");
}

/// Whether this build's voxbridge-worker reduces over NCCL (`voxbridge-worker --capabilities`).
fn worker_has_nccl() -> bool {
    let out = voxbridge_e2e::run_bin("voxbridge-worker", &["--capabilities"]);
    let text = assert_success(&out);
    let caps: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    caps["nccl"].as_bool().unwrap_or_else(|| panic!("no `nccl` in {text}"))
}

/// A GPU site's workers reduce over NCCL (`--nccl-device local`): a worker built without the
/// `nccl` feature would exit at start on every node, so `submit` (and `--dry-run`) refuses up
/// front, naming the build command, and submits, records and writes nothing.
#[test]
fn a_gpu_site_needs_a_worker_built_with_nccl() {
    let data = SimDataset::tiny(6);
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), &data, "gpu", 1, 32);
    let site = dir.path().join("gpu-site.toml");
    std::fs::write(&site, "name = \"gpu\"\ngpus_per_node = 2\n").unwrap();
    let run = dir.path().join("run");
    let dry = voxbridge(&submit_args(&exp, &run, &["--cluster", site.to_str().unwrap(), "--dry-run"]));
    if worker_has_nccl() {
        // A build with NCCL (scripts/test.sh builds one too): the scripts use it.
        assert!(assert_success(&dry).contains("--nccl-device local"), "{}", describe(&dry));
        return;
    }
    let worker = bin_dir().join("voxbridge-worker");
    for out in [dry, voxbridge(&submit_args(&exp, &run, &["--cluster", site.to_str().unwrap()]))] {
        let err = stderr(&out);
        assert!(!out.status.success(), "{}", describe(&out));
        assert!(
            err.contains("cargo build --release -p voxbridge-worker --features nccl")
                && err.contains(&worker.display().to_string())
                && err.contains("gpus_per_node = 2"),
            "{}",
            describe(&out)
        );
        assert!(!voxbridge_e2e::stdout(&out).contains("#SBATCH"), "{}", describe(&out));
        assert!(!run.exists(), "nothing written: {}", describe(&out));
    }
    // The CPU site needs no NCCL.
    assert_success(&voxbridge(&submit_args(&exp, &run, &["--dry-run"])));
}

/// Regression: the coordinator's port was `20000 + job id % 30000`, so a job collided with any
/// program holding that port (another SLURM's job on the machine, a job 30000 ids away). Here
/// the ports of the next job ids are held: the job still runs, on a port of its own, which the
/// coordinator published in a file unique to the job.
#[test]
fn a_job_runs_when_the_port_its_id_once_implied_is_taken() {
    if !slurm_available() {
        return;
    }
    let data = SimDataset::tiny(7);
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), &data, "slurm-port", 1, 32);
    let run = dir.path().join("runs/slurm-port");
    // The latest job id: a throw-away job's.
    let probe =
        Command::new("sbatch").args(["--parsable", "--wrap=true", "--output=/dev/null"]).output().expect("sbatch runs");
    assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stderr));
    let last: u64 = String::from_utf8_lossy(&probe.stdout).trim().split(';').next().unwrap().parse().unwrap();
    let old_port = |id: u64| u16::try_from(20000 + id % 30000).unwrap();
    // Ports already in use elsewhere cannot be bound here, and collide all the same.
    let held: Vec<std::net::TcpListener> =
        (last + 1..=last + 40).filter_map(|id| std::net::TcpListener::bind(("0.0.0.0", old_port(id))).ok()).collect();
    assert!(!held.is_empty());
    let id = submit(&exp, &run, &[]);
    let n: u64 = id.parse().unwrap();
    assert!(n <= last + 40, "job {id} came after the ports held here (ids {}..={})", last + 1, last + 40);
    let (state, exit) = wait_for_end(&id, &run);
    assert_eq!((state.as_str(), exit.as_str()), ("COMPLETED", "0:0"), "{}", log_of(&run));
    assert_eq!(committed_step(&run), Some(5), "{}", log_of(&run));
    let file = run.join(format!("slurm/coordinator-{id}.addr"));
    let addr = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let port: u16 = addr.trim().rsplit_once(':').unwrap().1.parse().unwrap();
    assert_ne!(port, old_port(n), "{addr}");
    drop(held);
}
