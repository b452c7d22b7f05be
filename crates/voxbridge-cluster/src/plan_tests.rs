//! Job planning without SLURM: which jobs, their runs, ranks, files and dependencies.

use super::*;

const EXPERIMENT: &str = "name = \"pre\"\n[data]\nmanifest = \"m.toml\"\ntrain_subjects = [2, 3]\n\
                          [train]\nbatch_size = 8\n[checkpoint]\nurl = \"s3://b/pre\"\n";

fn experiment(text: &str) -> Target {
    Target::Experiment { origin: "pre.toml".into(), text: text.into() }
}

fn sweep(grid: &str) -> Target {
    let text = format!("name = \"seeds\"\nbase = \"pre.toml\"\n[grid]\n{grid}\n");
    let runs = voxbridge_config::expand_sweep(&text, "seeds.toml", EXPERIMENT).unwrap();
    Target::Sweep { origin: "seeds.toml".into(), name: "seeds".into(), runs }
}

fn options(finetune: Option<Finetune>) -> PlanOptions {
    PlanOptions { nodes: 1, out: None, workdir: "/work".into(), finetune }
}

fn site(text: &str) -> Site {
    Site::parse(text, Path::new("/c/site.toml")).unwrap()
}

#[test]
fn one_experiment_is_one_job_in_its_run_directory() {
    let jobs = plan(&experiment(EXPERIMENT), &Site::local(), &options(None)).unwrap();
    let [job] = jobs.jobs.as_slice() else { panic!("{jobs:?}") };
    assert_eq!((job.kind, job.ranks, job.after), (JobKind::Train, 2, None));
    assert_eq!(job.record_dir.path(), Path::new("/work/runs/pre"));
    assert_eq!(job.script, Path::new("/work/runs/pre/slurm/pre.sbatch"));
    assert_eq!(job.job.log_dir, Path::new("/work/runs/pre/slurm"));
    assert_eq!(job.job.workdir, Path::new("/work"));
    assert_eq!(
        job.job.runs,
        [RunSpec { run_dir: "/work/runs/pre".into(), experiment: "/work/runs/pre/slurm/experiment.toml".into() }]
    );
    assert_eq!(job.experiments, [ExperimentFile { path: job.job.runs[0].experiment.clone(), text: EXPERIMENT.into() }]);
    assert!(job.reason.contains("2 ranks"), "{}", job.reason);

    // --out and --nodes.
    let options = PlanOptions { nodes: 3, out: Some("/elsewhere/r".into()), ..options(None) };
    let jobs = plan(&experiment(EXPERIMENT), &Site::local(), &options).unwrap();
    assert_eq!((jobs.jobs[0].job.nodes, jobs.jobs[0].ranks), (3, 6));
    assert_eq!(jobs.jobs[0].record_dir.path(), Path::new("/elsewhere/r"));
}

#[test]
fn a_sweep_is_one_job_array_in_the_sweeps_directory() {
    let jobs = plan(&sweep("\"train.seed\" = [1, 2]"), &Site::local(), &options(None)).unwrap();
    let [job] = jobs.jobs.as_slice() else { panic!("{jobs:?}") };
    assert_eq!((job.kind, job.job.name.as_str()), (JobKind::Sweep, "seeds"));
    assert_eq!(job.record_dir.path(), Path::new("/work/runs/seeds"));
    let runs: Vec<_> = job.job.runs.iter().map(|r| (r.run_dir.clone(), r.experiment.clone())).collect();
    assert_eq!(
        runs,
        [
            ("/work/runs/seeds/seeds-seed1".into(), "/work/runs/seeds/slurm/seeds-seed1.toml".into()),
            ("/work/runs/seeds/seeds-seed2".into(), "/work/runs/seeds/slurm/seeds-seed2.toml".into()),
        ]
    );
    assert_eq!(job.experiments.len(), 2);
    assert!(job.experiments[1].text.contains("seed = 2"), "{}", job.experiments[1].text);

    let refused = plan(&sweep("\"train.seed\" = [1]"), &Site::local(), &options(Some(finetune(&[])))).unwrap_err();
    assert!(refused.to_string().contains("--finetune-all follows a pretraining experiment, not a sweep (seeds.toml)"));
    let empty = Target::Sweep { origin: "s.toml".into(), name: "s".into(), runs: Vec::new() };
    let refused = plan(&empty, &Site::local(), &options(None)).unwrap_err();
    assert_eq!(refused.to_string(), "s.toml: the sweep expands to zero runs");
}

fn finetune(subjects: &[u8]) -> Finetune {
    Finetune { subjects: subjects.to_vec(), sessions: 1 }
}

#[test]
fn each_finetune_waits_for_the_pretraining_and_starts_from_its_run() {
    let options = PlanOptions { nodes: 2, ..options(Some(finetune(&[]))) };
    let jobs = plan(&experiment(EXPERIMENT), &Site::local(), &options).unwrap();
    let kinds: Vec<_> = jobs.jobs.iter().map(|j| (j.kind, j.job.name.as_str(), j.after, j.job.nodes)).collect();
    assert_eq!(
        kinds,
        [
            (JobKind::Train, "pre", None, 2),
            (JobKind::Finetune, "pre-finetune-subj02", Some(0), 1),
            (JobKind::Finetune, "pre-finetune-subj03", Some(0), 1),
        ]
    );
    let fine = &jobs.jobs[1];
    assert_eq!(fine.record_dir.path(), Path::new("/work/runs/pre-finetune-subj02"));
    let text = &fine.experiments[0].text;
    assert!(text.contains("init_from = \"/work/runs/pre\"") && text.contains("train_subjects = [2]"), "{text}");
    assert!(!text.contains("s3://b/pre"), "a fine-tune checkpoints into its own run directory:\n{text}");

    // The dependency names the pretraining job's id (real or a dry run's placeholder).
    let ids = vec![jobs.jobs[0].placeholder_id()];
    assert_eq!(fine.job_after(&ids).dependency, Some(Dependency::AfterOk("<job id of pre>".into())));
    assert_eq!(jobs.jobs[0].job_after(&[]).dependency, None);
    let record = fine.record("43", &["42".to_string()], 7);
    assert_eq!((record.kind.as_str(), record.after.as_deref()), ("finetune", Some("42")));
    assert_eq!(record.runs, ["/work/runs/pre-finetune-subj02"]);
    assert_eq!(record.script, "/work/runs/pre-finetune-subj02/slurm/pre-finetune-subj02.sbatch");

    let only = plan_names(&experiment(EXPERIMENT), &PlanOptions { nodes: 1, ..options_with(&[3]) });
    assert_eq!(only, ["pre", "pre-finetune-subj03"]);
}

fn options_with(subjects: &[u8]) -> PlanOptions {
    options(Some(finetune(subjects)))
}

fn plan_names(target: &Target, options: &PlanOptions) -> Vec<String> {
    plan(target, &Site::local(), options).unwrap().jobs.into_iter().map(|j| j.job.name).collect()
}

#[test]
fn ranks_that_cannot_place_the_batch_are_refused_with_the_reason() {
    // One subject, 2 rows per batch, 4 workers: the share cannot be split 4 ways.
    let small = EXPERIMENT.replace("batch_size = 8", "batch_size = 2").replace("[2, 3]", "[2]");
    let four = site("name = \"four\"\ngpus_per_node = 4\n");
    let err = plan(&experiment(&small), &four, &options(None)).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, PlanError::Ranks { world: 4, subjects: 1, .. }), "{err:?}");
    assert!(
        message.starts_with(
            "pre: 1 node(s) × 4 workers per node = 4 ranks cannot train 1 subject(s) with train.batch_size = 2: "
        ) && message.ends_with("(change --nodes, the site's gpus_per_node/tasks_per_node, or the batch)"),
        "{message}"
    );
    // Two nodes of the local site hold 4 ranks too.
    let two_nodes = PlanOptions { nodes: 2, ..options(None) };
    assert!(plan(&experiment(&small), &Site::local(), &two_nodes).is_err());
    // The same batch on one local node (2 ranks) trains.
    assert_eq!(check_ranks(&experiment_config(&small), &Site::local(), 1).unwrap(), 2);
}

fn experiment_config(text: &str) -> ExperimentConfig {
    voxbridge_config::parse_experiment(text, "t").unwrap().validate("t", Some(text)).unwrap()
}

#[test]
fn an_invalid_experiment_is_a_config_error() {
    let err = plan(
        &experiment("name = \"x\"\n[data]\nmanifest = \"m\"\ntrain_subjects = [1]\n[optim]\nlrr = 1\n"),
        &Site::local(),
        &options(None),
    )
    .unwrap_err();
    assert!(matches!(err, PlanError::Config(_)) && err.to_string().contains("lrr"), "{err}");
}

#[test]
fn sweep_files_are_told_apart_by_their_grid() {
    assert_eq!(sweep_name("name = \"s\"\nbase = \"b.toml\"\n[grid]\nx = [1]\n").as_deref(), Some("s"));
    assert_eq!(sweep_name("base = \"b.toml\"\n[grid]\nx = [1]\n").as_deref(), Some("sweep"));
    assert_eq!(sweep_name(EXPERIMENT), None);
    assert_eq!(sweep_name("not toml ["), None);
}
