//! The command line, as clap types. Parsing only; behaviour lives in the command modules.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use voxbridge_experiment::ResumeFrom;
use voxbridge_experiment::baseline::{Sessions, parse_sessions};
use voxbridge_experiment::predict::{TrialSelection, parse_trials};

pub use crate::arg_values::{Anchor, DemoPreset, Normalisation, Preset};
use crate::arg_values::{ComputeArgs, parse_resume};

#[derive(Debug, Parser)]
#[command(
    name = "voxbridge",
    version,
    about = "Train fMRI → image-embedding decoders (MindEye2 family) across subjects and GPUs."
)]
pub struct Cli {
    /// Log filter (tracing's env-filter syntax); also read from VOXBRIDGE_LOG.
    #[arg(long, global = true, default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Datasets: simulate, verify.
    #[command(subcommand)]
    Data(DataCommand),
    /// Experiment configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The main job on embedded defaults: simulate the `small` NSD, pretrain MindEye2 on subjects
    /// 2-8, fine-tune subject 1 on one session, compare with training it from scratch on that session.
    Demo(DemoArgs),
    /// Closed-form ridge regression from one subject's voxels to CLIP tokens, scored with
    /// MindEye2's retrieval protocol.
    Ridge(RidgeArgs),
    /// Parameters of a MindEye2 architecture per submodule and in total (nothing is allocated).
    Params(ParamsArgs),
    /// Run a MindEye2 checkpoint (evaluation mode) on one subject's voxels.
    Predict(PredictArgs),
    /// Top-k images from a large pool of target embeddings for a checkpoint's predictions, through
    /// an HNSW index built once and saved beside the pool.
    Retrieve(RetrieveArgs),
    /// Train and evaluate one experiment file into a run directory.
    Train(TrainArgs),
    /// Run every experiment of a sweep file (a grid over an experiment), then plot retrieval
    /// against the number of sessions.
    Sweep(SweepArgs),
    /// Evaluate a trained run's checkpoint with MindEye2's retrieval protocol.
    Eval(EvalArgs),
    /// Benchmarks (they print figures; they are not tests).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Training checkpoints in object storage or a local directory.
    #[command(subcommand)]
    Ckpt(CkptCommand),
    /// Submit an experiment (or a sweep, as a job array) to SLURM: coordinator on the first
    /// node, one worker per GPU through srun; job ids are recorded in the run directory.
    Submit(SubmitArgs),
    /// SLURM job states of a submitted run or sweep, with progress from its metrics and
    /// checkpoints.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Experiment or sweep TOML file.
    pub target: PathBuf,
    /// Site file (cluster/<site>.toml); default: this machine's SLURM, 2 CPU workers per node.
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    /// Print the job scripts; submit nothing, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Nodes per run (workers per node come from the site).
    #[arg(long, default_value_t = 1)]
    pub nodes: u32,
    /// Run directory (sweep: the sweep's directory); default runs/<name>.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// After the pretraining job: one fine-tuning job per subject, each `afterok` on it.
    #[arg(long)]
    pub finetune_all: bool,
    /// Subjects to fine-tune (default: the experiment's train_subjects).
    #[arg(long, value_delimiter = ',')]
    pub finetune_subjects: Vec<u8>,
    /// Sessions each fine-tune uses (MindEye2: one session, one hour of data).
    #[arg(long, default_value_t = 1)]
    pub finetune_sessions: u32,
    /// Directory of voxbridge-coordinator and voxbridge-worker on the cluster (default: the
    /// site's bin_dir, else this binary's directory).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Run (or sweep) directory `voxbridge submit` recorded its jobs in.
    pub run: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum CkptCommand {
    /// List the checkpoints under a root (path or URL): committed or not, step, generation, size.
    Ls {
        /// A checkpoint root, e.g. runs/NAME/checkpoints or s3://bucket/prefix.
        url: String,
    },
    /// One checkpoint (or a root's newest committed one): files with sizes and checksums
    /// verified, training state, config, metrics.
    Inspect { url: String },
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Experiment TOML file (experiments/*.toml).
    pub experiment: PathBuf,
    /// Run directory (default runs/<name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from a checkpoint: `auto` (the newest committed one at the run's checkpoint.url,
    /// or step 0 when there is none) or a checkpoint's path/URL.
    #[arg(long, value_name = "auto|URL", value_parser = parse_resume)]
    pub resume: Option<ResumeFrom>,
    /// Where checkpoints go (path or URL, e.g. s3://bucket/run); overrides checkpoint.url, default
    /// <run dir>/checkpoints. Not part of the config: the same run may be stored anywhere.
    #[arg(long, value_name = "URL")]
    pub checkpoint_url: Option<String>,
    /// Training-relevant config keys allowed to differ from the resumed checkpoint's
    /// (comma-separated dotted keys, e.g. train.epochs,train.max_steps).
    #[arg(long, value_name = "KEYS", value_delimiter = ',')]
    pub allow_config_change: Vec<String>,
    /// Data-parallel training with N worker processes on this machine (a local coordinator
    /// shards the training subjects over them). Without it: one process, no coordinator.
    #[arg(long)]
    pub workers: Option<usize>,
    /// With --workers: restarts of all workers allowed after one fails.
    #[arg(long, default_value_t = 0)]
    pub max_restarts: u32,
    /// With --workers: seconds allowed for each collective after the first step.
    #[arg(long, default_value_t = 60)]
    pub step_timeout_s: u64,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Sweep TOML file (experiments/sweeps/*.toml).
    pub sweep: PathBuf,
    /// Directory of the sweep (default runs/<sweep name>); each run gets a subdirectory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Run directory written by `voxbridge train` (or its checkpoint/ directory).
    pub run: PathBuf,
    /// Data manifest (default: the run's own config).
    #[arg(long)]
    pub data: Option<String>,
    /// 1-based subjects to evaluate (default: the run's evaluation subjects).
    #[arg(long, value_delimiter = ',')]
    pub subjects: Option<Vec<u8>>,
    /// Candidates per retrieval loop.
    #[arg(long, default_value_t = 300)]
    pub ways: usize,
    #[arg(long, default_value_t = 30)]
    pub loops: usize,
    /// DDIM steps for the prior's samples (0 skips them).
    #[arg(long, default_value_t = 20)]
    pub prior_steps: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the evaluation as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Milliseconds per training step and samples per second.
    Train(BenchTrainArgs),
    /// Algorithm bandwidth of the CPU all-reduce (TCP ring on loopback; ranks are threads).
    Allreduce(BenchAllreduceArgs),
    /// Time and peak extra memory of one checkpoint save (multipart upload of a blob, and full
    /// training checkpoints of P1 / P1-big).
    Ckpt(BenchCkptArgs),
}

#[derive(Debug, Args)]
pub struct BenchAllreduceArgs {
    /// Ranks in the ring.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Buffer size per all-reduce: bytes, or with a KiB/MiB/GiB suffix.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    pub bytes: usize,
    /// Timed calls (median reported), after one warm-up.
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
}

/// `4096`, `64KiB`, `64MiB`, `1GiB`.
fn parse_bytes(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: usize = digits.parse().map_err(|_| format!("{text:?}: expected a number of bytes, e.g. 64MiB"))?;
    let scale = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("{text:?}: unknown unit {other:?} (B, KiB, MiB, GiB)")),
    };
    Ok(n * scale)
}

#[derive(Debug, Args)]
pub struct BenchCkptArgs {
    /// Checkpoint root to write to (path or URL); the benchmark deletes what it wrote.
    #[arg(long)]
    pub url: String,
    /// Size of the in-memory blob saved first (MiB).
    #[arg(long, default_value_t = 256)]
    pub blob_mib: usize,
    /// Multipart part size (MiB).
    #[arg(long, default_value_t = 8)]
    pub part_mib: usize,
    /// Training checkpoints to save after the blob: P1, P1-big (repeat; none by default).
    #[arg(long, value_enum)]
    pub config: Vec<Anchor>,
}

#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// `P1` or `P1-big` (notes/perf-anchors.md), `released` (MindEye2 as released fine-tuning
    /// subject 1, batch 24, blurry branch off: the torch anchor's `released`), `pretrain` (its
    /// 7 subjects, batch 63), or an experiment TOML file whose model and batch are timed on
    /// random data. Repeat to time several side by side.
    #[arg(long, default_values_t = ["P1".to_string()])]
    pub config: Vec<String>,
    /// Timed steps (median reported).
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Also time data-parallel steps on this many ranks (threads over a loopback TCP ring).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

#[derive(Debug, Args)]
pub struct ParamsArgs {
    /// Model file (TOML), e.g. experiments/models/mindeye2-released.toml; `family` in it picks
    /// MindEye2 (the default), mindeye1, mindeye1-lowlevel or mindreader.
    #[arg(long)]
    pub model: PathBuf,
    /// Instead of the parameter table: the per-GPU memory of one training step (weights,
    /// gradients, AdamW moments, saved activations) and whether it fits --capacity-gb.
    #[arg(long, requires = "batch")]
    pub memory: bool,
    /// With --memory: the global batch, split evenly over the subjects (MindEye2's shares).
    #[arg(long, requires = "memory", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: Option<u32>,
    /// With --memory: the dtype of matmuls and convolutions (weights, gradients, AdamW moments,
    /// softmax, norms and losses are f32 either way).
    #[arg(long, requires = "memory", default_value = "bf16", value_parser = crate::model_cmd::precision_parser())]
    pub precision: voxbridge_experiment::model_file::ComputeDtype,
    /// With --memory: data-parallel GPUs; subjects are sharded over them, shared weights replicated.
    #[arg(long, requires = "memory", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub gpus: u32,
    /// With --memory: train only these of the model file's ridges, by 1-based position (NSD
    /// subject numbers for the released file), e.g. 2,3,4,5,6,7,8 for pretraining; default all.
    #[arg(long, requires = "memory", value_delimiter = ',', value_parser = clap::value_parser!(u8).range(1..))]
    pub subjects: Option<Vec<u8>>,
    /// With --memory: device memory in GB (10^9 bytes; an "80 GB" card holds 74.5 GiB).
    #[arg(long, requires = "memory", default_value_t = 80.0, value_parser = crate::model_cmd::parse_capacity_gb)]
    pub capacity_gb: f64,
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Checkpoint: an original `last.pth` (MindEye2 or MindEye1), `lowlevel_last.pth` (MindEye1's
    /// low-level model) or `model.pth` (Mind Reader), or `.safetensors` with the original key
    /// names (path or object-store URL), or a run directory written by `voxbridge train`. The
    /// family is recognised from the key names.
    #[arg(long)]
    pub checkpoint: String,
    /// Model file (TOML); without it the architecture is inferred from the checkpoint.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Subject index in the checkpoint (0-based ridge position). With --data, the NSD subject
    /// number picks the ridge instead (run checkpoints know their subjects).
    #[arg(long, default_value_t = 0)]
    pub subject: usize,
    /// `[batch, voxels]` float32 (or float64) `.npy`.
    #[arg(long, conflicts_with = "data", required_unless_present = "data")]
    pub voxels: Option<PathBuf>,
    /// Read the trials from this data manifest instead of --voxels (run checkpoints only).
    #[arg(long, requires = "nsd_subject")]
    pub data: Option<String>,
    /// 1-based NSD subject whose trials --data reads.
    #[arg(long)]
    pub nsd_subject: Option<u8>,
    /// With --data: which trials — `test` (every shared-test trial) or `train:N` (the training
    /// trials of the first N sessions).
    #[arg(long, default_value = "test", value_parser = parse_trials)]
    pub trials: TrialSelection,
    /// With --data: only trials of these image ids (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub images: Option<Vec<u32>>,
    /// Output: a `.safetensors` file, or a directory that gets one `.npy` per tensor. Tensors:
    /// backbone, clip_voxels [batch, tokens, dim], blurry_latent, blurry_features (when the branch
    /// exists), prior_samples (with --prior-steps), image_id (with --data).
    #[arg(long)]
    pub out: PathBuf,
    /// Also sample the diffusion prior with DDIM over this many steps (MindEye2 uses 20).
    #[arg(long)]
    pub prior_steps: Option<usize>,
    /// Seed of the prior's Gaussian draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

#[derive(Debug, Args)]
pub struct RetrieveArgs {
    /// Checkpoint (as for `predict`: original or run directory; the family is recognised).
    #[arg(long)]
    pub checkpoint: String,
    /// Model file (TOML); without it the architecture is inferred from the checkpoint.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// `[batch, voxels]` float32 (or float64) `.npy`: one query per row.
    #[arg(long)]
    pub voxels: PathBuf,
    /// Subject index in a multi-subject (MindEye2) checkpoint.
    #[arg(long, default_value_t = 0)]
    pub subject: usize,
    /// `[N, D]` `.npy` of target embeddings, D the width of the model's retrieval output
    /// (MindEye1's clip_voxels_proj, MindEye2's clip_voxels, Mind Reader's y_pred, flattened).
    #[arg(long)]
    pub pool: PathBuf,
    /// Folder of the saved index (default: `<pool>.hnsw` beside the pool). Built when missing,
    /// reused when it indexes this pool, refused when it indexes another.
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// Pool entries per query.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub k: u32,
    /// HNSW neighbours per node (M) when building.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=255))]
    pub connections: u32,
    /// Candidates explored per insertion when building (efConstruction).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub ef_construction: u32,
    /// Candidates explored per query (efSearch; raised to k).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub ef: u32,
    /// Also search exactly and print recall@k of the index against it.
    #[arg(long)]
    pub exact: bool,
    /// Write the hits (pool rows and cosine similarities per query) as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

#[derive(Debug, Args)]
pub struct RidgeArgs {
    /// Manifest path or URL.
    #[arg(long)]
    pub data: String,
    /// 1-based subject.
    #[arg(long, default_value_t = 1)]
    pub subject: u8,
    /// Train on the first N sessions ("all" for every session).
    #[arg(long, default_value = "all", value_parser = parse_sessions)]
    pub sessions: Sessions,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fit these feature spaces at once (comma-separated: clip, caption, latent), λ chosen per
    /// space by cross-validation over sessions, each scored with its own measure; without it,
    /// the CLIP-token baseline.
    #[arg(long, value_delimiter = ',', value_parser = voxbridge_experiment::multispace::parse_space)]
    pub spaces: Option<Vec<voxbridge_experiment::multispace::Space>>,
    /// With --spaces: also write the result as JSON.
    #[arg(long, requires = "spaces")]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Generate a simulated NSD with known ground truth as Parquet shards plus a manifest.
    Simulate(SimulateArgs),
    /// Check every file of a dataset against its manifest (size, sha256, Parquet, schema, rows).
    Verify(VerifyArgs),
    /// Import one subject of the real NSD as MindEye2 released it (HDF5 betas, webdataset
    /// behaviour tars, precomputed per-image targets) into shards and a manifest.
    ImportNsd(ImportNsdArgs),
}

#[derive(Debug, Args)]
pub struct ImportNsdArgs {
    /// NSD subject (1–8).
    #[arg(long)]
    pub subject: u8,
    /// `betas_all_subj0X_fp32_renorm.hdf5` (dataset `betas`, one row per global trial).
    #[arg(long)]
    pub betas: std::path::PathBuf,
    /// The release's `wds/` (or `wds/subj0X/`): `train/{session}.tar`, `new_test/0.tar`.
    #[arg(long)]
    pub wds: std::path::PathBuf,
    /// Per-image targets keyed by the 73k index: `.safetensors`, `.h5`/`.hdf5`, or a directory
    /// of `image_id.npy`, `clip_tokens.npy` [, `lowlevel.npy`, `captions.npy`].
    #[arg(long)]
    pub targets: std::path::PathBuf,
    /// Output directory or object-store URL.
    #[arg(long)]
    pub out: String,
    /// Voxels per betas row (default: the subject's nsdgeneral count).
    #[arg(long)]
    pub voxels: Option<usize>,
    /// `as-released` (renorm betas, already z-scored per session), or for raw betas
    /// `per-session` (notebook) or `train-set` (paper) z-scoring.
    #[arg(long, value_enum, default_value_t = Normalisation::AsReleased)]
    pub normalisation: Normalisation,
    /// Dataset name in the manifest (default nsd-subj0X).
    #[arg(long)]
    pub name: Option<String>,
    /// Add this subject to the dataset an earlier import wrote at `--out` (same normalisation
    /// and target shapes); the images it already holds are not written again.
    #[arg(long)]
    pub append: bool,
    /// Import even when some betas rows have no behaviour row in the tars (a damaged tar);
    /// without it such an import is refused. The count dropped is printed and recorded in the
    /// manifest (`subjects[].missing_trials`).
    #[arg(long)]
    pub allow_missing_trials: bool,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Output directory or object-store URL (s3://bucket/prefix, gs://…, file://…).
    #[arg(long)]
    pub out: String,
    /// Size preset: tiny (tests), small (demo), nsd-scale (NSD's real sizes).
    #[arg(long, value_enum, default_value_t = Preset::Small)]
    pub preset: Preset,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Dataset name (default sim-<preset>-seed<seed>).
    #[arg(long)]
    pub name: Option<String>,
    /// Also write the manifest here, with `root` pointing at --out
    /// (for example data-manifests/<name>.toml).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Report the retrieval accuracy of the ideal decoder (knows the ground truth).
    #[arg(long)]
    pub oracle: bool,
    /// Only these subjects (1-based, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub subjects: Option<Vec<u8>>,
    /// At most this many sessions per subject, at least 2 (shrinks the shared test set to fit).
    #[arg(long, value_parser = clap::value_parser!(u16).range(2..))]
    pub max_sessions: Option<u16>,
    /// Per-voxel noise-ceiling SNR range LO,HI (sd of signal / sd of single-trial noise),
    /// overriding the preset's.
    #[arg(long, value_name = "LO,HI")]
    pub ncsnr: Option<String>,
    /// Representational noise κ: sd of the trial-to-trial variability of the shared features,
    /// relative to their spread across images (it limits every decoder), overriding the preset's.
    #[arg(long, value_name = "KAPPA")]
    pub representational_noise: Option<f64>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Manifest path or URL.
    pub manifest: String,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate an experiment file and print the resolved configuration.
    Check {
        /// Experiment TOML file.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the dataset and report go.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Preset to simulate (small is the demo; tiny for a quick look).
    #[arg(long, value_enum, default_value_t = DemoPreset::Small)]
    pub preset: DemoPreset,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

#[cfg(test)]
#[path = "args_tests.rs"]
mod tests;
