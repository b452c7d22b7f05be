//! `CUDA_PATH` for cubecl: it passes `$CUDA_PATH/include` (and `include/cccl` when present) to
//! NVRTC for every kernel, which includes `cuda_runtime.h`, `cuda_fp16.h`, `cuda_bf16.h`,
//! `mma.h` and, for some kernels, `cuda/barrier` and `cuda/pipeline`. The headers must be of the
//! chosen NVRTC's CUDA release.
//!
//! A toolkit install (`/usr/local/cuda-13.0`) is used as it is. PyTorch's pip wheels split the
//! headers over several `site-packages/nvidia/*/include` folders (or keep them under
//! `nvidia/cu13/include`), so then one include folder is assembled from symbolic links: the
//! entries of the folder beside NVRTC first, then those of the other folders of the same
//! release, the first of each name winning (as scripts/gpu-check.sh's probe did on the H200).

use std::path::{Path, PathBuf};

use crate::search::{SearchEnv, cuda_installs, subdirs};

/// Headers without which no cubecl kernel compiles.
pub const REQUIRED_HEADERS: [&str; 3] = ["cuda_runtime.h", "cuda_fp16.h", "cuda_bf16.h"];
/// Headers some kernels need (matmul with tensor cores, pipelined copies); their absence is a note.
pub const WANTED_HEADERS: [&str; 3] = ["mma.h", "cuda/barrier", "cuda/pipeline"];

/// `CUDART_VERSION` of the include folder (`13000` → `(13, 0)`), from `cuda_runtime_api.h`.
pub fn cuda_version(include: &Path) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(include.join("cuda_runtime_api.h")).ok()?;
    let value: u32 = text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("#define")?.trim_start().strip_prefix("CUDART_VERSION")?;
        rest.trim().parse().ok()
    })?;
    Some((value / 1000, (value % 1000) / 10))
}

/// `header` exists in `include`, directly or under `cccl/` (CUDA 13 moved libcu++ there;
/// cubecl adds `include/cccl` to the include path itself).
pub fn has_header(include: &Path, header: &str) -> bool {
    include.join(header).exists() || include.join("cccl").join(header).exists()
}

/// Include folders holding `cuda_runtime.h`: beside `nvrtc` first, then `$CUDA_PATH`,
/// `/usr/local/cuda*`, python's `nvidia/*/include`, `/usr/include`.
pub fn include_candidates(env: &SearchEnv, nvrtc: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(lib_dir) = nvrtc.and_then(Path::parent).and_then(Path::parent) {
        dirs.push(lib_dir.join("include"));
    }
    if let Some(cuda) = &env.cuda_path {
        dirs.push(cuda.join("include"));
    }
    dirs.push(env.root.join("usr/local/cuda/include"));
    for install in cuda_installs(&env.root) {
        dirs.push(install.join("include"));
        dirs.push(install.join("targets/x86_64-linux/include"));
    }
    for site in &env.python_dirs {
        dirs.extend(subdirs(&site.join("nvidia")).into_iter().map(|d| d.join("include")));
    }
    dirs.push(env.root.join("usr/include"));
    let mut seen = std::collections::BTreeSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// Where `CUDA_PATH` should point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CudaPath {
    /// A complete toolkit folder (its `include/` has every header).
    Existing(PathBuf),
    /// Assemble `<dir>/include` from these folders' entries, in order.
    Merge(Vec<PathBuf>),
}

/// The `CUDA_PATH` for NVRTC of CUDA `major` (unknown: any release). `Err` names what is missing
/// and where it looked.
pub fn choose_cuda_path(env: &SearchEnv, nvrtc: Option<&Path>, major: Option<u32>) -> Result<CudaPath, Vec<PathBuf>> {
    let candidates = include_candidates(env, nvrtc);
    let usable: Vec<&PathBuf> = candidates.iter().filter(|d| d.join("cuda_runtime.h").is_file()).collect();
    let same_release = |d: &&PathBuf| match (major, cuda_version(d)) {
        (Some(m), Some((v, _))) => m == v,
        _ => true,
    };
    let complete = |d: &Path| REQUIRED_HEADERS.iter().chain(&WANTED_HEADERS).all(|h| has_header(d, h));
    // The user's CUDA_PATH, when it is a toolkit, is taken as it is.
    if let Some(cuda) = &env.cuda_path
        && cuda.join("include/cuda_runtime.h").is_file()
    {
        return Ok(CudaPath::Existing(cuda.clone()));
    }
    let matching: Vec<&PathBuf> = usable.iter().copied().filter(same_release).collect();
    let Some(primary) = matching.first().or(usable.first()) else { return Err(candidates) };
    if complete(primary)
        && primary.ends_with("include")
        && let Some(root) = primary.parent()
    {
        return Ok(CudaPath::Existing(root.to_path_buf()));
    }
    // Split headers: the primary folder, then every other folder of the same release that has
    // any headers at all (pip's cuda_runtime, cuda_cccl, cuda_nvrtc, … each ship a part).
    let mut parts = vec![(*primary).clone()];
    for site in &env.python_dirs {
        for d in subdirs(&site.join("nvidia")).into_iter().map(|d| d.join("include")) {
            let release_ok = match (major, cuda_version(&d)) {
                (Some(m), Some((v, _))) => m == v,
                // A folder without its own version: trust the wheel folder's name (cu12/cu13)
                // when it has one.
                (Some(m), None) => {
                    let name = d.parent().and_then(Path::file_name).and_then(|n| n.to_str()).unwrap_or("");
                    !name.starts_with("cu1") || name == format!("cu{m}")
                }
                (None, _) => true,
            };
            if d.is_dir() && release_ok && !parts.contains(&d) {
                parts.push(d);
            }
        }
    }
    Ok(CudaPath::Merge(parts))
}

/// Fills `<cuda_dir>/include` with links to the entries of `parts` (first of a name wins) and
/// returns the headers of [`REQUIRED_HEADERS`] still missing.
pub fn assemble(cuda_dir: &Path, parts: &[PathBuf]) -> std::io::Result<Vec<&'static str>> {
    let include = cuda_dir.join("include");
    std::fs::create_dir_all(&include)?;
    let mut taken = std::collections::BTreeSet::new();
    for part in parts {
        let Ok(entries) = std::fs::read_dir(part) else { continue };
        let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        entries.sort();
        for entry in entries {
            let Some(name) = entry.file_name().map(|n| n.to_os_string()) else { continue };
            if taken.insert(name.clone()) {
                crate::links::link(&entry, &include.join(&name))?;
            }
        }
    }
    Ok(REQUIRED_HEADERS.iter().copied().filter(|h| !has_header(&include, h)).collect())
}
