//! Job planning for `voxbridge submit`, as a pure function: an experiment (or an expanded sweep),
//! a site and the options become the jobs to submit — their runs, nodes and ranks, the
//! experiment files to write, where each job is recorded, which job waits for which — or the
//! reason no job can run (ranks that cannot place the batch, an empty sweep, …). Nothing here
//! reads the disk or calls SLURM: [`Target::read`] reads the file beforehand, and the caller
//! writes the files, renders and submits the jobs afterwards.

use std::path::{Path, PathBuf};

use voxbridge_config::{ConfigError, ExperimentConfig, RunDir, SweepRun};
use voxbridge_placement::{Placement, PlacementError, per_subject};

use crate::JobRecord;
use crate::render::{Dependency, Job, RunSpec};
use crate::site::Site;

/// What is submitted: one experiment file, or a sweep expanded into its runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Experiment {
        /// The file's name in messages.
        origin: String,
        text: String,
    },
    Sweep {
        origin: String,
        /// The sweep's `name` (its directory's default name and the array job's name).
        name: String,
        runs: Vec<SweepRun>,
    },
}

impl Target {
    /// Reads an experiment or sweep file (a sweep has a `[grid]`; its base experiment is read
    /// and the grid expanded here).
    pub fn read(path: &Path) -> Result<Target, PlanError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PlanError::Read { path: path.display().to_string(), source })?;
        let origin = path.display().to_string();
        Ok(match sweep_name(&text) {
            Some(name) => Target::Sweep { origin, name, runs: voxbridge_config::load_sweep(path)? },
            None => Target::Experiment { origin, text },
        })
    }
}

/// A sweep file's name (it has a `[grid]`); `None` for an experiment file.
pub fn sweep_name(text: &str) -> Option<String> {
    let table = toml::from_str::<toml::Table>(text).ok().filter(|t| t.contains_key("grid"))?;
    Some(table.get("name").and_then(|v| v.as_str()).unwrap_or("sweep").to_string())
}

/// `--finetune-all`: after the pretraining job, one fine-tuning job per subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finetune {
    /// Subjects to fine-tune; empty: the experiment's training subjects.
    pub subjects: Vec<u8>,
    /// Sessions each fine-tune trains on.
    pub sessions: u32,
}

/// How to plan the jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanOptions {
    /// Nodes per run (at least 1; 0 counts as 1).
    pub nodes: u32,
    /// The run directory (a sweep: the sweep's directory), absolute; default
    /// `<workdir>/runs/<name>`.
    pub out: Option<PathBuf>,
    /// The directory jobs run in (relative paths of experiments resolve against it).
    pub workdir: PathBuf,
    pub finetune: Option<Finetune>,
}

/// What a job is, as `jobs.json` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// One experiment.
    Train,
    /// A sweep, as a job array.
    Sweep,
    /// A fine-tune of one subject after a pretraining job.
    Finetune,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Train => "train",
            JobKind::Sweep => "sweep",
            JobKind::Finetune => "finetune",
        }
    }
}

/// An experiment file a job trains, to write before the job is submitted.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentFile {
    pub path: PathBuf,
    pub text: String,
}

/// One job to submit.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedJob {
    /// The job to render (without its dependency: see [`PlannedJob::job_after`]).
    pub job: Job,
    pub kind: JobKind,
    pub experiments: Vec<ExperimentFile>,
    /// The directory whose `jobs.json` records the job.
    pub record_dir: RunDir,
    /// Where its script goes.
    pub script: PathBuf,
    /// Index of the job this one waits for (`afterok`); always an earlier job.
    pub after: Option<usize>,
    /// Ranks of each of its runs.
    pub ranks: u32,
    /// Why the job exists and how it is shaped, in words.
    pub reason: String,
}

impl PlannedJob {
    /// The job with its dependency, given the ids of the jobs before it (real ids, or
    /// [`PlannedJob::placeholder_id`]s in a dry run).
    pub fn job_after(&self, earlier_ids: &[String]) -> Job {
        Job { dependency: self.after_id(earlier_ids).map(Dependency::AfterOk), ..self.job.clone() }
    }

    /// The id of the job this one waits for.
    pub fn after_id(&self, earlier_ids: &[String]) -> Option<String> {
        self.after.map(|i| earlier_ids[i].clone())
    }

    /// What a dry run shows in place of the job's id.
    pub fn placeholder_id(&self) -> String {
        format!("<job id of {}>", self.job.name)
    }

    /// The `jobs.json` record of the job once SLURM gave it `job_id`.
    pub fn record(&self, job_id: &str, earlier_ids: &[String], submitted_unix: u64) -> JobRecord {
        JobRecord {
            job_id: job_id.to_string(),
            name: self.job.name.clone(),
            kind: self.kind.as_str().to_string(),
            script: self.script.display().to_string(),
            runs: self.job.runs.iter().map(|r| r.run_dir.display().to_string()).collect(),
            after: self.after_id(earlier_ids),
            submitted_unix,
        }
    }
}

/// The jobs to submit, in order (a job only waits for earlier ones).
#[derive(Debug, Clone, PartialEq)]
pub struct JobPlan {
    pub jobs: Vec<PlannedJob>,
}

/// Why no jobs can be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("--finetune-all follows a pretraining experiment, not a sweep ({target})")]
    FinetuneOfSweep { target: String },
    #[error("{target}: the sweep expands to zero runs")]
    EmptySweep { target: String },
    /// The ranks of a job (`nodes` × the site's workers per node) cannot place the
    /// experiment's batch (the rule training applies).
    #[error(
        "{name}: {nodes} node(s) × {tasks_per_node} workers per node = {world} ranks cannot train {subjects} \
         subject(s) with train.batch_size = {batch_size}: {problem} (change --nodes, the site's \
         gpus_per_node/tasks_per_node, or the batch)"
    )]
    Ranks {
        name: String,
        nodes: u32,
        tasks_per_node: u32,
        world: u32,
        subjects: usize,
        batch_size: u32,
        /// Shown in the message, not chained: the message already says it.
        problem: PlacementError,
    },
}

/// The ranks of a job on `nodes` nodes of `site`, if they can place `config`'s batch.
pub fn check_ranks(config: &ExperimentConfig, site: &Site, nodes: u32) -> Result<u32, PlanError> {
    let world = nodes * site.tasks_per_node;
    let subjects = config.data.train_subjects.len();
    let rows = per_subject(config.train.batch_size as usize, subjects);
    match Placement::new(subjects, world as usize, rows) {
        Ok(_) => Ok(world),
        Err(problem) => Err(PlanError::Ranks {
            name: config.name.clone(),
            nodes,
            tasks_per_node: site.tasks_per_node,
            world,
            subjects,
            batch_size: config.train.batch_size,
            problem,
        }),
    }
}

/// The jobs that run `target` on `site`.
pub fn plan(target: &Target, site: &Site, options: &PlanOptions) -> Result<JobPlan, PlanError> {
    let nodes = options.nodes.max(1);
    let out =
        |name: &str| options.out.clone().unwrap_or_else(|| options.workdir.join(RunDir::default_for(name).path()));
    let jobs = match target {
        Target::Sweep { origin, name, runs } => {
            if options.finetune.is_some() {
                return Err(PlanError::FinetuneOfSweep { target: origin.clone() });
            }
            if runs.is_empty() {
                return Err(PlanError::EmptySweep { target: origin.clone() });
            }
            vec![sweep_job(name, runs, site, nodes, RunDir::new(out(name)), &options.workdir)?]
        }
        Target::Experiment { origin, text } => {
            let config = voxbridge_config::parse_experiment(text, origin)?.validate(origin, Some(text))?;
            let ranks = check_ranks(&config, site, nodes)?;
            let run_dir = RunDir::new(out(&config.name));
            let reason = format!(
                "trains {} on subject(s) {:?}: {nodes} node(s) × {} workers = {ranks} ranks",
                config.name, config.data.train_subjects, site.tasks_per_node
            );
            let mut jobs =
                vec![one_run_job(&config.name, JobKind::Train, text, &run_dir, nodes, ranks, options, reason)];
            if let Some(finetune) = &options.finetune {
                for subject in finetune_subjects(&config, finetune) {
                    jobs.push(finetune_job(text, origin, &config, subject, finetune, &run_dir, site, options)?);
                }
            }
            jobs
        }
    };
    Ok(JobPlan { jobs })
}

/// One job array over the runs of a sweep, in the sweep's directory `dir`.
fn sweep_job(
    name: &str,
    runs: &[SweepRun],
    site: &Site,
    nodes: u32,
    dir: RunDir,
    workdir: &Path,
) -> Result<PlannedJob, PlanError> {
    let mut specs = Vec::new();
    let mut experiments = Vec::new();
    let mut ranks = 0;
    for run in runs {
        ranks = check_ranks(&run.config, site, nodes)?;
        let experiment = dir.slurm_sweep_experiment(&run.name);
        experiments.push(ExperimentFile { path: experiment.clone(), text: run.text.clone() });
        specs.push(RunSpec { run_dir: dir.path().join(&run.name), experiment });
    }
    let job = Job {
        name: name.to_string(),
        runs: specs,
        nodes,
        workdir: workdir.to_path_buf(),
        log_dir: dir.slurm(),
        dependency: None,
    };
    let reason = format!("sweep {name}: {} runs as one job array, each on {ranks} ranks", runs.len());
    Ok(PlannedJob {
        script: dir.slurm_script(name),
        job,
        kind: JobKind::Sweep,
        experiments,
        record_dir: dir,
        after: None,
        ranks,
        reason,
    })
}

/// A job of one run into `run_dir`, training `text`.
#[allow(clippy::too_many_arguments)]
fn one_run_job(
    name: &str,
    kind: JobKind,
    text: &str,
    run_dir: &RunDir,
    nodes: u32,
    ranks: u32,
    options: &PlanOptions,
    reason: String,
) -> PlannedJob {
    let experiment = run_dir.slurm_experiment();
    let job = Job {
        name: name.to_string(),
        runs: vec![RunSpec { run_dir: run_dir.path().to_path_buf(), experiment: experiment.clone() }],
        nodes,
        workdir: options.workdir.clone(),
        log_dir: run_dir.slurm(),
        dependency: None,
    };
    PlannedJob {
        job,
        kind,
        experiments: vec![ExperimentFile { path: experiment, text: text.to_string() }],
        record_dir: run_dir.clone(),
        script: run_dir.slurm_script(name),
        after: None,
        ranks,
        reason,
    }
}

/// The subjects `--finetune-all` fine-tunes: those asked for, else the training subjects.
fn finetune_subjects(config: &ExperimentConfig, finetune: &Finetune) -> Vec<u8> {
    if finetune.subjects.is_empty() { config.data.train_subjects.clone() } else { finetune.subjects.clone() }
}

/// The fine-tune of `subject` on one node, from the pretraining run in `pretrain_dir`, after
/// the pretraining job (job 0); its run directory sits beside the pretraining run's.
#[allow(clippy::too_many_arguments)]
fn finetune_job(
    text: &str,
    origin: &str,
    config: &ExperimentConfig,
    subject: u8,
    finetune: &Finetune,
    pretrain_dir: &RunDir,
    site: &Site,
    options: &PlanOptions,
) -> Result<PlannedJob, PlanError> {
    let name = format!("{}-finetune-subj{subject:02}", config.name);
    let subjects = toml::Value::Array(vec![toml::Value::Integer(i64::from(subject))]);
    let overrides = vec![
        ("data.train_subjects".to_string(), subjects.clone()),
        ("data.eval_subjects".to_string(), subjects),
        ("data.sessions".to_string(), toml::Value::Integer(i64::from(finetune.sessions))),
        ("train.init_from".to_string(), toml::Value::String(pretrain_dir.path().display().to_string())),
    ];
    // Each fine-tune checkpoints into its own run directory.
    let (fine_text, fine) = voxbridge_config::derive_experiment(
        text,
        origin,
        &name,
        &overrides,
        &["checkpoint.url", "data.eval_subjects"],
    )?;
    let ranks = check_ranks(&fine, site, 1)?;
    let path = pretrain_dir.path();
    let fine_dir = RunDir::new(path.parent().unwrap_or(path).join(&name));
    let reason = format!(
        "fine-tunes subject {subject} on {} session(s) from {} once job {} succeeds: 1 node = {ranks} ranks",
        finetune.sessions,
        path.display(),
        config.name
    );
    let mut job = one_run_job(&name, JobKind::Finetune, &fine_text, &fine_dir, 1, ranks, options, reason);
    job.after = Some(0);
    Ok(job)
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
