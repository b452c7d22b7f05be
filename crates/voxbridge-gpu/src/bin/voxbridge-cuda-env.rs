//! `voxbridge-cuda-env [--no-nccl]`: finds the CUDA driver, NVRTC, NCCL and headers as a
//! voxbridge binary would ([`voxbridge_gpu::prepare`]) and prints `export VAR='value'` lines for
//! a shell to `eval` (scripts/gpu-check.sh does); what was chosen goes to stderr. Exit status 1
//! with the missing library, every place looked in and a hint when something is missing.

use std::process::ExitCode;

use voxbridge_gpu::{Needs, SearchEnv, prepare};

fn quoted(value: &std::ffi::OsStr) -> String {
    format!("'{}'", value.to_string_lossy().replace('\'', r"'\''"))
}

fn main() -> ExitCode {
    let nccl = !std::env::args().skip(1).any(|a| a == "--no-nccl");
    let needs = if nccl { Needs::CUDA_NCCL } else { Needs::CUDA };
    let env = SearchEnv::from_system();
    match prepare(needs, &env, None) {
        Ok(libs) => {
            let show = |f: &Option<voxbridge_gpu::Found>| {
                f.as_ref().map_or("(not needed / loader's)".to_string(), |f| f.real.display().to_string())
            };
            eprintln!("driver: {} (CUDA {:?})", show(&libs.driver), env.driver_cuda);
            eprintln!("nvrtc:  {}", show(&libs.nvrtc));
            eprintln!("nccl:   {}", show(&libs.nccl));
            eprintln!("links:  {}", libs.link_dir.display());
            for note in &libs.notes {
                eprintln!("note: {note}");
            }
            for (k, v) in &libs.env {
                println!("export {k}={}", quoted(v));
            }
            ExitCode::SUCCESS
        }
        Err(missing) => {
            eprintln!("error: {missing}");
            ExitCode::FAILURE
        }
    }
}
