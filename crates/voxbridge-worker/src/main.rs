//! `voxbridge-worker`: one training rank under a coordinator (started by `voxbridge train
//! --workers N`, or by a cluster launcher).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "voxbridge-worker",
    version,
    about = "One voxbridge training rank: joins a coordinator, trains its subjects' shard, all-reduces shared gradients."
)]
struct Args {
    /// Print what this build supports as one JSON object (`{"nccl":false,…}`) and exit.
    #[arg(long, exclusive = true)]
    capabilities: bool,
    /// Coordinator address (host:port).
    #[arg(long, required_unless_present_any = ["coordinator_file", "capabilities"], conflicts_with = "coordinator_file")]
    coordinator: Option<String>,
    /// A file the coordinator writes its host:port to once it listens
    /// (`voxbridge-coordinator --address-file`): wait for it (within --init-timeout-s), then
    /// connect.
    #[arg(long)]
    coordinator_file: Option<std::path::PathBuf>,
    /// The generation (restart count) this worker was started for.
    #[arg(long, default_value_t = 0)]
    generation: u32,
    /// Experiment TOML file.
    #[arg(long, required_unless_present = "capabilities")]
    experiment: Option<std::path::PathBuf>,
    /// Run directory (rank 0 writes it; rank r writes <out>/rank-r/).
    #[arg(long, required_unless_present = "capabilities")]
    out: Option<std::path::PathBuf>,
    /// Seconds allowed for the collective's set-up and first step.
    #[arg(long, default_value_t = 300)]
    init_timeout_s: u64,
    /// Seconds allowed for every later collective.
    #[arg(long, default_value_t = 60)]
    step_timeout_s: u64,
    /// All-reduce host buffers over NCCL on this CUDA device (built with the `nccl` feature): a
    /// device number, or `local` for SLURM's `SLURM_LOCALID`. For a CPU model only; a model on
    /// the GPU (`--device cuda`) all-reduces on device memory by itself.
    #[arg(long)]
    nccl_device: Option<String>,
    /// Where this rank computes: cpu, cuda, cuda:N, cuda:local (SLURM's `SLURM_LOCALID`, one
    /// worker per GPU) or wgpu; overrides the experiment's `[compute] device`.
    #[arg(long)]
    device: Option<String>,
    /// fp32 or bf16; overrides the experiment's `[compute] precision`.
    #[arg(long, value_parser = ["fp32", "tf32", "bf16"])]
    precision: Option<String>,
    /// `auto`: continue from the newest committed checkpoint when there is one (a resubmitted
    /// job); `never` (default): a fresh run, unless the coordinator restarted this worker.
    #[arg(long, default_value = "never", value_parser = ["auto", "never"])]
    resume: String,
}

/// `--nccl-device N|local`, reading SLURM's environment for `local`.
fn nccl_device(arg: Option<&str>) -> Result<Option<usize>, String> {
    let env = |k: &str| std::env::var(k).ok();
    resolve_device(arg, env("SLURM_LOCALID").as_deref(), env("CUDA_VISIBLE_DEVICES").as_deref())
}

/// The CUDA device (an index among the visible ones) for `--nccl-device`: a number as given, or
/// for `local` this task's GPU. Sites that bind one GPU per task show it alone in
/// `CUDA_VISIBLE_DEVICES` (device 0); otherwise the task's local id picks among those visible.
fn resolve_device(arg: Option<&str>, local_id: Option<&str>, visible: Option<&str>) -> Result<Option<usize>, String> {
    let Some(arg) = arg else { return Ok(None) };
    if arg != "local" {
        return arg.parse().map(Some).map_err(|_| format!("--nccl-device {arg:?} is not a device number or `local`"));
    }
    let local_id = local_id.ok_or("--nccl-device local: SLURM_LOCALID is not set (not started by srun)")?;
    let local: usize =
        local_id.parse().map_err(|_| format!("--nccl-device local: SLURM_LOCALID = {local_id:?} is not a number"))?;
    let visible: Vec<&str> = visible.unwrap_or("").split(',').filter(|d| !d.trim().is_empty()).collect();
    match visible.len() {
        0 => Ok(Some(local)),
        1 => Ok(Some(0)),
        n if local < n => Ok(Some(local)),
        n => Err(format!(
            "--nccl-device local: task {local} on this node but CUDA_VISIBLE_DEVICES shows {n} GPUs ({}); \
             one worker per GPU needs as many tasks per node as GPUs",
            visible.join(",")
        )),
    }
}

/// `--device`: a device spelling, with `cuda:local` resolved as `--nccl-device local` is.
fn compute_device(arg: Option<&str>) -> Result<Option<voxbridge_config::DeviceSpec>, String> {
    match arg {
        None => Ok(None),
        Some("cuda:local") => {
            let env = |k: &str| std::env::var(k).ok();
            let index =
                resolve_device(Some("local"), env("SLURM_LOCALID").as_deref(), env("CUDA_VISIBLE_DEVICES").as_deref())
                    .map_err(|e| e.replace("--nccl-device local", "--device cuda:local"))?;
            Ok(index.map(voxbridge_config::DeviceSpec::Cuda))
        }
        Some(text) => text.parse().map(Some).map_err(|e| format!("--device: {e}")),
    }
}

fn main() -> ExitCode {
    // As `voxbridge`'s main: before the coordinator is reached, so a re-execution loses nothing.
    #[cfg(feature = "cuda")]
    let _ = voxbridge_experiment::engine::prepare_cuda_process();
    let args = Args::parse();
    if args.capabilities {
        println!("{}", voxbridge_worker::capabilities());
        return ExitCode::SUCCESS;
    }
    voxbridge_logging::init_logging("info");
    let coordinator = match (args.coordinator, args.coordinator_file) {
        (Some(addr), _) => voxbridge_worker::CoordinatorAt::Addr(addr),
        (None, Some(file)) => voxbridge_worker::CoordinatorAt::File(file),
        (None, None) => return usage("--coordinator or --coordinator-file is required"),
    };
    let (Some(experiment), Some(out)) = (args.experiment, args.out) else {
        return usage("--experiment and --out are required");
    };
    let nccl_device = match nccl_device(args.nccl_device.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("voxbridge-worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let device = match compute_device(args.device.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("voxbridge-worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let precision = args.precision.as_deref().map(|p| match p {
        "bf16" => voxbridge_config::Precision::Bf16,
        _ => voxbridge_config::Precision::Fp32,
    });
    // SIGTERM (SLURM's preemption or time-limit warning): finish the step, checkpoint, exit 0.
    let stop = Arc::new(AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone()) {
        eprintln!("voxbridge-worker: cannot handle SIGTERM: {e}");
        return ExitCode::FAILURE;
    }
    let worker = voxbridge_worker::WorkerArgs {
        coordinator,
        generation: args.generation,
        experiment,
        out,
        init_timeout: Duration::from_secs(args.init_timeout_s),
        step_timeout: Duration::from_secs(args.step_timeout_s),
        nccl_device,
        device,
        precision,
        resume: args.resume == "auto",
        stop: Some(stop),
    };
    match voxbridge_worker::run(&worker) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voxbridge-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("voxbridge-worker: {message} (see --help)");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::resolve_device;

    #[test]
    fn local_devices_follow_slurm_and_cuda_visibility() {
        assert_eq!(resolve_device(None, Some("3"), None), Ok(None));
        assert_eq!(resolve_device(Some("2"), None, None), Ok(Some(2)));
        assert_eq!(resolve_device(Some("local"), Some("3"), None), Ok(Some(3)));
        assert_eq!(resolve_device(Some("local"), Some("3"), Some("0,1,2,3")), Ok(Some(3)));
        // One GPU bound to this task: it is device 0 whatever the local id.
        assert_eq!(resolve_device(Some("local"), Some("3"), Some("5")), Ok(Some(0)));
        let err = resolve_device(Some("local"), Some("4"), Some("0,1")).unwrap_err();
        assert!(err.contains("shows 2 GPUs (0,1)"), "{err}");
        assert!(resolve_device(Some("local"), None, None).unwrap_err().contains("SLURM_LOCALID is not set"));
        assert!(resolve_device(Some("gpu0"), None, None).unwrap_err().contains("not a device number"));
    }
}
