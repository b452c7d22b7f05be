//! Makes a `cuda`/`nccl` build of voxbridge run on a machine whose CUDA libraries carry
//! versioned names only (an H100/H200 with PyTorch: `libnvrtc.so.13`, `libnccl.so.2`).
//!
//! Why: cudarc 0.19 (with the `cuda-12080` bindings, dynamic loading) dlopens `libnvrtc.so`,
//! `libnccl.so` or `.so.12/.11/…/.1` — never `.so.13` or `libnccl.so.2` — and panics at first
//! use when none loads; cubecl-cuda needs `CUDA_PATH` (or `/usr/local/cuda`) for NVRTC's
//! headers and panics at the first kernel without it (shared notes, gpu-h200.md §2).
//!
//! [`prepare_cuda_libraries`] finds the driver, NVRTC, NCCL and the headers (ldconfig's cache,
//! `$CUDA_PATH`, `/usr/local/cuda*`, the system library folders, the `nvidia/*` folders of the
//! `python3` on `PATH`, `$LD_LIBRARY_PATH`; `VOXBRIDGE_NVRTC` / `VOXBRIDGE_NCCL` /
//! `VOXBRIDGE_CUDA_DRIVER` choose a file), links the unversioned names in a private folder and
//! returns the environment (`LD_LIBRARY_PATH`, `CUDA_PATH`) the process must run with. glibc
//! reads `LD_LIBRARY_PATH` only at start-up, so [`reexec_with`] re-executes the binary once
//! with it (an environment variable, [`REEXEC_GUARD`], makes sure it never loops). A library
//! that is missing is a [`MissingLibrary`] naming it and every place looked in.

mod driver;
pub mod headers;
mod links;
pub mod search;

use std::ffi::OsString;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

pub use search::{Found, SearchEnv};

/// Set in the environment of the re-executed process: it must not re-execute again.
pub const REEXEC_GUARD: &str = "VOXBRIDGE_CUDA_REEXEC";

/// Which libraries the program needs besides the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// cubecl compiles its kernels with NVRTC (every `cuda` build).
    pub nvrtc: bool,
    /// Multi-GPU gradient exchange (`nccl` builds).
    pub nccl: bool,
}

impl Needs {
    pub const CUDA: Needs = Needs { nvrtc: true, nccl: false };
    pub const CUDA_NCCL: Needs = Needs { nvrtc: true, nccl: true };
}

/// What was found, and the environment that makes it load.
#[derive(Debug, Clone)]
pub struct CudaLibraries {
    /// The driver library (`None`: not found on disk, but the loader loads it).
    pub driver: Option<Found>,
    pub nvrtc: Option<Found>,
    pub nccl: Option<Found>,
    /// The headers' toolkit folder (or the assembled one under `link_dir`).
    pub cuda_path: PathBuf,
    /// The private folder of the unversioned links (`lib/`) and assembled headers (`cuda/`).
    pub link_dir: PathBuf,
    /// `(variable, value)` to run with: `LD_LIBRARY_PATH`, `CUDA_PATH`.
    pub env: Vec<(String, OsString)>,
    /// Choices worth a log line (a version mismatch, headers some kernels lack).
    pub notes: Vec<String>,
}

/// A library (or the headers) that was not found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingLibrary {
    /// What is missing, e.g. `libnccl.so (NCCL)`.
    pub library: String,
    /// Every place looked in (`(absent)` after those that do not exist).
    pub looked_in: Vec<String>,
    /// How to provide it.
    pub hint: String,
}

impl fmt::Display for MissingLibrary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} not found; looked in: {}. {}", self.library, self.looked_in.join(", "), self.hint)
    }
}

impl std::error::Error for MissingLibrary {}

/// Finds the driver, NVRTC and NCCL ([`Needs::CUDA_NCCL`]) on this machine and prepares the
/// links; see the crate docs.
pub fn prepare_cuda_libraries() -> Result<CudaLibraries, MissingLibrary> {
    prepare(Needs::CUDA_NCCL, &SearchEnv::from_system(), None)
}

fn where_looked(env: &SearchEnv, lib: &str) -> Vec<String> {
    let var = search::override_var(lib);
    let mut out = vec![match env.overrides.iter().find(|(l, _)| l == lib) {
        Some((_, p)) => format!("{var}={}", p.display()),
        None => format!("{var} (unset)"),
    }];
    out.push(if env.ldconfig.is_empty() { "ldconfig -p (no output)".into() } else { "ldconfig -p".into() });
    for dir in search::library_dirs(env) {
        out.push(if dir.is_dir() { dir.display().to_string() } else { format!("{} (absent)", dir.display()) });
    }
    if env.python_dirs.is_empty() {
        out.push("python3 site-packages (no python3 on PATH, or it printed nothing)".into());
    }
    out
}

/// Like [`prepare_cuda_libraries`], for `needs`, the places of `env`, with the link folder
/// under `link_root` (default: the system temporary folder).
pub fn prepare(needs: Needs, env: &SearchEnv, link_root: Option<&Path>) -> Result<CudaLibraries, MissingLibrary> {
    let mut notes = Vec::new();
    for (lib, path) in &env.overrides {
        if !path.is_file() {
            return Err(MissingLibrary {
                library: format!("{} (set by {})", path.display(), search::override_var(lib)),
                looked_in: vec![path.display().to_string()],
                hint: "the variable names a file that does not exist; unset it to search".into(),
            });
        }
    }
    let missing = |lib: &str, library: &str, hint: &str| MissingLibrary {
        library: library.to_string(),
        looked_in: where_looked(env, lib),
        hint: hint.to_string(),
    };
    let driver = search::choose(&search::find(env, "cuda"), "cuda", env, &mut notes);
    if driver.is_none() && env.driver_cuda.is_none() {
        return Err(missing(
            "cuda",
            "libcuda.so.1 (the NVIDIA driver)",
            "Without the driver no GPU can be used: is this a GPU machine (nvidia-smi)? A container needs the \
             driver mounted (often /usr/local/nvidia/lib64); VOXBRIDGE_CUDA_DRIVER names the file.",
        ));
    }
    let pick = |lib: &str, notes: &mut Vec<String>| search::choose(&search::find(env, lib), lib, env, notes);
    let nvrtc = if needs.nvrtc { pick("nvrtc", &mut notes) } else { None };
    if needs.nvrtc && nvrtc.is_none() {
        return Err(missing(
            "nvrtc",
            "libnvrtc.so (NVRTC, CUDA's run-time compiler; cubecl compiles every kernel with it)",
            "Install the CUDA toolkit or the nvidia-cuda-nvrtc wheel (PyTorch's CUDA builds bring it), or set \
             VOXBRIDGE_NVRTC to a libnvrtc.so.N.",
        ));
    }
    let nccl = if needs.nccl { pick("nccl", &mut notes) } else { None };
    if needs.nccl && nccl.is_none() {
        return Err(missing(
            "nccl",
            "libnccl.so (NCCL, the multi-GPU collectives)",
            "Install NCCL (the system package or the nvidia-nccl wheel PyTorch's CUDA builds bring), or set \
             VOXBRIDGE_NCCL to a libnccl.so.2.",
        ));
    }

    let major = nvrtc.as_ref().and_then(|f| f.version.first().copied());
    let cuda = headers::choose_cuda_path(env, nvrtc.as_ref().map(|f| f.real.as_path()), major).map_err(|looked| {
        MissingLibrary {
            library: "cuda_runtime.h (CUDA headers, passed to NVRTC as $CUDA_PATH/include)".into(),
            looked_in: looked.iter().map(|d| d.display().to_string()).collect(),
            hint: "Install the CUDA toolkit's headers (or PyTorch's nvidia-cuda-runtime wheel), or set CUDA_PATH."
                .into(),
        }
    })?;

    let root = link_root.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
    let link_dir = root.join(link_dir_name([&driver, &nvrtc, &nccl], &cuda));
    let io = |what: &str, path: &Path, e: std::io::Error| MissingLibrary {
        library: format!("a writable folder for the CUDA library links ({what})"),
        looked_in: vec![path.display().to_string()],
        hint: format!("{e}; set TMPDIR to a writable folder"),
    };
    let lib_dir = link_dir.join("lib");
    std::fs::create_dir_all(&lib_dir).map_err(|e| io("creating it", &lib_dir, e))?;
    for (name, found) in [("nvrtc", &nvrtc), ("nccl", &nccl)] {
        if let Some(found) = found {
            let link = lib_dir.join(format!("lib{name}.so"));
            links::link(&found.real, &link).map_err(|e| io("linking", &link, e))?;
        }
    }
    let cuda_path = match cuda {
        headers::CudaPath::Existing(dir) => dir,
        headers::CudaPath::Merge(parts) => {
            let dir = link_dir.join("cuda");
            let absent = headers::assemble(&dir, &parts).map_err(|e| io("assembling headers", &dir, e))?;
            if !absent.is_empty() {
                return Err(MissingLibrary {
                    library: format!("CUDA headers {}", absent.join(", ")),
                    looked_in: parts.iter().map(|d| d.display().to_string()).collect(),
                    hint: "Install the CUDA toolkit's headers, or set CUDA_PATH.".into(),
                });
            }
            dir
        }
    };
    let include = cuda_path.join("include");
    let absent: Vec<&str> =
        headers::WANTED_HEADERS.iter().copied().filter(|h| !headers::has_header(&include, h)).collect();
    if !absent.is_empty() {
        notes.push(format!(
            "{} lacks {}: kernels that include them will not compile",
            include.display(),
            absent.join(", ")
        ));
    }
    if let (Some(m), Some((v, _))) = (major, headers::cuda_version(&include))
        && m != v
    {
        notes.push(format!("NVRTC is CUDA {m} but the headers in {} are CUDA {v}", include.display()));
    }

    let env_vars = environment(env, &lib_dir, &driver, [&nvrtc, &nccl], &cuda_path);
    Ok(CudaLibraries { driver, nvrtc, nccl, cuda_path, link_dir, env: env_vars, notes })
}

/// The link folder's name, from the choices: processes that choose the same files share one
/// folder; others never see each other's links.
fn link_dir_name(found: [&Option<Found>; 3], cuda: &headers::CudaPath) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for f in found {
        f.as_ref().map(|f| &f.real).hash(&mut hasher);
    }
    match cuda {
        headers::CudaPath::Existing(d) => d.hash(&mut hasher),
        headers::CudaPath::Merge(parts) => parts.hash(&mut hasher),
    }
    format!("voxbridge-cuda-{:016x}", hasher.finish())
}

/// Folders the loader searches anyway: not repeated in `LD_LIBRARY_PATH` (where they would
/// move ahead of the user's own entries).
fn is_default_dir(env: &SearchEnv, dir: &Path) -> bool {
    ["lib", "lib64", "usr/lib", "usr/lib64", "lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"]
        .iter()
        .any(|d| env.root.join(d) == dir)
}

/// `LD_LIBRARY_PATH` = the links, the chosen libraries' folders (NVRTC loads its
/// `libnvrtc-builtins` from there; the driver's when the loader cache lacks it), then the
/// current value; `CUDA_PATH`.
fn environment(
    env: &SearchEnv,
    lib_dir: &Path,
    driver: &Option<Found>,
    libs: [&Option<Found>; 2],
    cuda: &Path,
) -> Vec<(String, OsString)> {
    let mut dirs = vec![lib_dir.to_path_buf()];
    let driver = driver.as_ref().filter(|d| !d.in_loader_cache);
    for f in libs.into_iter().flatten().chain(driver) {
        if let Some(dir) = f.real.parent().filter(|d| !is_default_dir(env, d)) {
            dirs.push(dir.to_path_buf());
        }
    }
    dirs.extend(env.ld_library_path.iter().cloned());
    let mut seen = std::collections::BTreeSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    let ld = std::env::join_paths(&dirs).unwrap_or_else(|_| lib_dir.as_os_str().to_os_string());
    vec![("LD_LIBRARY_PATH".into(), ld), ("CUDA_PATH".into(), cuda.as_os_str().to_os_string())]
}

/// Whether the environment `current` reports already has every variable of `wanted`.
pub fn env_applied(wanted: &[(String, OsString)], current: impl Fn(&str) -> Option<OsString>) -> bool {
    wanted.iter().all(|(k, v)| current(k).as_ref() == Some(v))
}

/// What [`reexec_with`] did instead of re-executing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reexec {
    /// The process already runs with that environment.
    NotNeeded,
    /// This process is the re-executed one and the environment still differs (something
    /// rewrote it): going on without looping; the libraries may not load.
    AlreadyReexecuted,
}

/// Re-executes the current binary, with its arguments, under `env` (and [`REEXEC_GUARD`]) —
/// once: returns instead when the environment is already applied or this process is the
/// re-executed one. On success it does not return; `Err` is the failed `exec`.
pub fn reexec_with(env: &[(String, OsString)]) -> std::io::Result<Reexec> {
    use std::os::unix::process::CommandExt;
    if env_applied(env, |k| std::env::var_os(k)) {
        return Ok(Reexec::NotNeeded);
    }
    if std::env::var_os(REEXEC_GUARD).is_some() {
        return Ok(Reexec::AlreadyReexecuted);
    }
    let exe = std::env::current_exe()?;
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    command.args(args).envs(env.iter().map(|(k, v)| (k, v))).env(REEXEC_GUARD, "1");
    Err(command.exec())
}

/// Why [`ensure_cuda_environment`] failed.
#[derive(Debug)]
pub enum SetupError {
    Missing(MissingLibrary),
    /// Re-executing the binary failed.
    Exec(std::io::Error),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::Missing(m) => m.fmt(f),
            SetupError::Exec(e) => write!(f, "re-executing with the CUDA library environment: {e}"),
        }
    }
}

impl std::error::Error for SetupError {}

/// Call first in `main` of a run that uses CUDA: finds what `needs` asks for and, when the
/// environment lacks it, re-executes the binary with it (so this returns in the new process).
pub fn ensure_cuda_environment(needs: Needs) -> Result<CudaLibraries, SetupError> {
    let libs = prepare(needs, &SearchEnv::from_system(), None).map_err(SetupError::Missing)?;
    match reexec_with(&libs.env).map_err(SetupError::Exec)? {
        Reexec::NotNeeded => {}
        Reexec::AlreadyReexecuted => {
            eprintln!("warning: the CUDA library environment did not apply after re-executing; continuing")
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests;
