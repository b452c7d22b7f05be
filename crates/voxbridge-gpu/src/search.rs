//! Where CUDA libraries are looked for, and which one is chosen.
//!
//! Every place is read from a [`SearchEnv`], so tests point it at a fake tree in a temporary
//! directory; [`SearchEnv::from_system`] fills it from this machine (`ldconfig -p`, the
//! environment, the `python3` on `PATH`, the driver).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The places and facts a search reads.
#[derive(Debug, Clone, Default)]
pub struct SearchEnv {
    /// Prefix of the system directories (`/usr/local/cuda*`, `/usr/lib/x86_64-linux-gnu`, …):
    /// `/` on a real machine, a fake tree in tests. Paths from the environment (`CUDA_PATH`,
    /// `LD_LIBRARY_PATH`, ldconfig, python) are taken as they are.
    pub root: PathBuf,
    /// `$CUDA_PATH`.
    pub cuda_path: Option<PathBuf>,
    /// `$LD_LIBRARY_PATH`, split.
    pub ld_library_path: Vec<PathBuf>,
    /// The output of `ldconfig -p` (empty when ldconfig is absent).
    pub ldconfig: String,
    /// `site-packages` (and other `sys.path`) directories of the `python3` on `PATH`.
    pub python_dirs: Vec<PathBuf>,
    /// Explicit choices: `VOXBRIDGE_NVRTC`, `VOXBRIDGE_NCCL`, `VOXBRIDGE_CUDA_DRIVER` (a file).
    pub overrides: Vec<(String, PathBuf)>,
    /// The CUDA version the driver supports (`cuDriverGetVersion`), when it could be asked.
    pub driver_cuda: Option<(u32, u32)>,
}

/// Override variables, by library.
pub(crate) fn override_var(lib: &str) -> &'static str {
    match lib {
        "nvrtc" => "VOXBRIDGE_NVRTC",
        "nccl" => "VOXBRIDGE_NCCL",
        _ => "VOXBRIDGE_CUDA_DRIVER",
    }
}

impl SearchEnv {
    /// This machine's places. Never fails: what cannot be read is left empty.
    pub fn from_system() -> SearchEnv {
        let var_path = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let overrides = ["nvrtc", "nccl", "cuda"]
            .iter()
            .filter_map(|lib| var_path(override_var(lib)).map(|p| (lib.to_string(), p)))
            .collect();
        let ld_library_path = std::env::var_os("LD_LIBRARY_PATH")
            .map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
            .unwrap_or_default();
        let ldconfig = ["ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"]
            .iter()
            .find_map(|prog| run_with_deadline(Command::new(prog).arg("-p"), Duration::from_secs(10)))
            .unwrap_or_default();
        let python = run_with_deadline(
            Command::new("python3").args([
                "-c",
                "import site, sys\nfor p in site.getsitepackages() + [site.getusersitepackages()] + sys.path: print(p)",
            ]),
            Duration::from_secs(20),
        )
        .unwrap_or_default();
        let mut seen = BTreeSet::new();
        let python_dirs = python
            .lines()
            .map(PathBuf::from)
            .filter(|p| p.is_absolute() && p.is_dir() && seen.insert(p.clone()))
            .collect();
        let mut env = SearchEnv {
            root: PathBuf::from("/"),
            cuda_path: var_path("CUDA_PATH"),
            ld_library_path,
            ldconfig,
            python_dirs,
            overrides,
            driver_cuda: None,
        };
        env.driver_cuda = crate::driver::cuda_version("libcuda.so.1")
            .or_else(|| find(&env, "cuda").into_iter().find_map(|f| crate::driver::cuda_version(&f.path)));
        env
    }
}

/// Runs a program and returns its stdout, or `None` when it cannot run, fails or overruns.
fn run_with_deadline(command: &mut Command, deadline: Duration) -> Option<String> {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().ok()?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) if start.elapsed() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut out).ok()?;
    Some(out)
}

/// One library file found: its path as found, the file it resolves to and the version its
/// name carries (`libnccl.so.2.28.9` → `[2, 28, 9]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    pub real: PathBuf,
    pub version: Vec<u32>,
    /// Listed by ldconfig (the loader finds it without LD_LIBRARY_PATH).
    pub in_loader_cache: bool,
}

/// `lib<name>.so` or `lib<name>.so.<digits>[.<digits>…]` → the version (empty when unversioned).
pub fn version_of(file_name: &str, lib: &str) -> Option<Vec<u32>> {
    let rest = file_name.strip_prefix(&format!("lib{lib}.so"))?;
    if rest.is_empty() {
        return Some(Vec::new());
    }
    rest.strip_prefix('.')?.split('.').map(|p| p.parse::<u32>().ok()).collect()
}

/// Stubs link against a driver but cannot run; compat libraries are a forward-compatibility
/// driver that must only be chosen deliberately (`VOXBRIDGE_CUDA_DRIVER`).
fn unusable(path: &Path) -> bool {
    path.components().any(|c| matches!(c.as_os_str().to_str(), Some("stubs" | "compat")))
}

/// The directories searched, in priority order, and what they are (for error messages).
pub fn library_dirs(env: &SearchEnv) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = env.ld_library_path.clone();
    let toolkit = |root: &Path| ["lib64", "lib", "targets/x86_64-linux/lib"].map(|d| root.join(d));
    if let Some(cuda) = &env.cuda_path {
        dirs.extend(toolkit(cuda));
    }
    let sys = |p: &str| env.root.join(p);
    dirs.extend(toolkit(&sys("usr/local/cuda")));
    for versioned in cuda_installs(&env.root) {
        dirs.extend(toolkit(&versioned));
    }
    for p in ["usr/local/nvidia/lib64", "usr/local/nvidia/lib", "usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"] {
        dirs.push(sys(p));
    }
    for p in ["usr/lib64", "usr/lib", "lib64", "lib"] {
        dirs.push(sys(p));
    }
    for site in &env.python_dirs {
        dirs.extend(subdirs(&site.join("nvidia")).into_iter().map(|d| d.join("lib")));
    }
    let mut seen = BTreeSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// `<root>/usr/local/cuda-*`, newest version first.
pub(crate) fn cuda_installs(root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = subdirs(&root.join("usr/local"))
        .into_iter()
        .filter_map(|d| {
            let name = d.file_name()?.to_str()?.to_string();
            let version = name.strip_prefix("cuda-")?.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
            Some((version, d))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, d)| d).collect()
}

/// The directories inside `dir`, sorted (none when it is unreadable).
pub(crate) fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// Paths ldconfig lists for `lib` (`\tlibnccl.so.2 (libc6,x86-64) => /usr/lib/…/libnccl.so.2`).
fn ldconfig_paths(ldconfig: &str, lib: &str) -> Vec<PathBuf> {
    ldconfig
        .lines()
        .filter_map(|line| {
            let (name, path) = line.trim().split_once(" => ")?;
            let name = name.split_whitespace().next()?;
            version_of(name, lib)?;
            Some(PathBuf::from(path.trim()))
        })
        .collect()
}

/// Every usable copy of `lib` (`cuda`, `nvrtc`, `nccl`), in priority order: the override, then
/// ldconfig's, then the directories of [`library_dirs`]; one entry per real file.
pub fn find(env: &SearchEnv, lib: &str) -> Vec<Found> {
    let cached: BTreeSet<PathBuf> = ldconfig_paths(&env.ldconfig, lib).into_iter().collect();
    let mut paths: Vec<PathBuf> = env.overrides.iter().filter(|(l, _)| l == lib).map(|(_, p)| p.clone()).collect();
    let explicit = paths.len();
    paths.extend(cached.iter().cloned());
    for dir in library_dirs(env) {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut names: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| version_of(n, lib).is_some()))
            .collect();
        names.sort();
        paths.extend(names);
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, path) in paths.into_iter().enumerate() {
        if i >= explicit && unusable(&path) {
            continue;
        }
        let Ok(real) = std::fs::canonicalize(&path) else { continue };
        if !real.is_file() || !seen.insert(real.clone()) {
            continue;
        }
        let name_version = |p: &Path| p.file_name().and_then(|n| n.to_str()).and_then(|n| version_of(n, lib));
        let version = match (name_version(&real), name_version(&path)) {
            (Some(a), Some(b)) => {
                if a.len() >= b.len() {
                    a
                } else {
                    b
                }
            }
            (a, b) => a.or(b).unwrap_or_default(),
        };
        let in_loader_cache = cached.contains(&path);
        out.push(Found { path, real, version, in_loader_cache });
    }
    out
}

/// The copy to use: an override always; otherwise the newest version, but for NVRTC none newer
/// than the driver's CUDA major (newer NVRTC emits PTX the driver rejects) when another exists;
/// among equal versions, the first found. `notes` gets why when the rule had to bend.
pub fn choose(found: &[Found], lib: &str, env: &SearchEnv, notes: &mut Vec<String>) -> Option<Found> {
    if let Some(first) = found.first().filter(|f| env.overrides.iter().any(|(l, p)| l == lib && *p == f.path)) {
        return Some(first.clone());
    }
    let mut pool: Vec<&Found> = found.iter().collect();
    if lib == "nvrtc"
        && let Some((major, _)) = env.driver_cuda
    {
        let fitting: Vec<&Found> =
            pool.iter().copied().filter(|f| f.version.first().is_none_or(|m| *m <= major)).collect();
        if fitting.is_empty() && !pool.is_empty() {
            notes
                .push(format!("no NVRTC of CUDA {major} or older found; using a newer one (kernels may fail to load)"));
        } else {
            pool = fitting;
        }
    }
    let best = pool.iter().map(|f| &f.version).max()?;
    pool.into_iter().find(|f| &f.version == best).cloned()
}
