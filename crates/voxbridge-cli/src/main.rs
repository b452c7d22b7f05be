fn main() -> std::process::ExitCode {
    // A CUDA build re-executes itself once with the environment that loads NVRTC and NCCL
    // (their versioned names); on a machine without them the CPU still works, and
    // `--device cuda` says what is missing.
    #[cfg(feature = "cuda")]
    let _ = voxbridge_experiment::engine::prepare_cuda_process();
    voxbridge_cli::main_with_args(std::env::args_os())
}
