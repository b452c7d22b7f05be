//! Harness for the end-to-end tests: finds the workspace's release binaries (building them once
//! per test process), runs them, and simulates small datasets into scratch directories.
//!
//! `env!("CARGO_BIN_EXE_…")` only exists for binaries of the package under test, so the binaries
//! are looked up in the target directory: `$CARGO_TARGET_DIR` when set (a relative one is taken
//! relative to the workspace root), else `<workspace>/target`, then `release/<name>`.
//!
//! `cargo test -p voxbridge-e2e` does not rebuild other packages' binaries, so the first call
//! runs `cargo build --release --workspace --bins` (a no-op when they are up to date) and the
//! tests never run a stale binary. Set `VOXBRIDGE_E2E_NO_BUILD=1` to use the binaries as they
//! are; they are still built when missing.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use tempfile::TempDir;

/// The features the binaries are built with: those the tests of this build expect (the test
/// command's list, so that the harness's build is a no-op after it).
const BUILD_FEATURES: Option<&str> =
    if cfg!(feature = "wgpu") { Some("voxbridge-cli/wgpu,voxbridge-worker/wgpu,voxbridge-e2e/wgpu") } else { None };

/// The binaries the tests drive; all are built together.
pub const BINARIES: [&str; 3] = ["voxbridge", "voxbridge-coordinator", "voxbridge-worker"];

/// The workspace root: the nearest ancestor of the running test's package directory whose
/// `Cargo.toml` has a `[workspace]` table (the tests of any member crate may call this).
///
/// Read at run time (`cargo test` sets `CARGO_MANIFEST_DIR` for the test process): the value
/// compiled in can name another checkout when two share a `CARGO_TARGET_DIR` (cargo reuses the
/// compiled harness across checkouts), and the tests would then build and run that checkout's
/// binaries.
pub fn workspace_root() -> PathBuf {
    let here = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let is_root = |dir: &Path| {
        std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|t| t.lines().any(|l| l.trim() == "[workspace]"))
    };
    match here.ancestors().find(|dir| is_root(dir)) {
        Some(root) => root.to_path_buf(),
        None => here.parent().expect("the e2e package lives inside the workspace").to_path_buf(),
    }
}

/// The PyTorch reference data `<name>` (`mindeye2-tiny`, `mindeye2-tiny-blurry`): the copy kept
/// in the repository under `tests/reference/<name>` (see its README), so a clone runs its own
/// parity tests. `$VOXBRIDGE_REFERENCE/<name>` overrides it (e.g. to test against a regenerated
/// set). Shared by every crate's parity tests.
pub fn reference_dir(name: &str) -> PathBuf {
    let dir = match std::env::var_os("VOXBRIDGE_REFERENCE").filter(|d| !d.is_empty()) {
        Some(root) => PathBuf::from(root).join(name),
        None => workspace_root().join("tests/reference").join(name),
    };
    assert!(
        dir.is_dir(),
        "reference data {name} not found at {} (it ships in tests/reference; VOXBRIDGE_REFERENCE overrides the parent folder)",
        dir.display()
    );
    dir
}

/// The cargo target directory the binaries are built into.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Where the release build of binary `name` is.
pub fn bin_path(name: &str) -> PathBuf {
    target_dir().join("release").join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// Builds the workspace's binaries once per process; panics (every test that needs them fails)
/// with cargo's output when the build fails or a binary is still missing afterwards.
fn ensure_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let missing = BINARIES.iter().any(|b| !bin_path(b).is_file());
        let skip = std::env::var_os("VOXBRIDGE_E2E_NO_BUILD").is_some_and(|v| !v.is_empty() && v != "0");
        if missing || !skip {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let output = Command::new(&cargo)
                .args(["build", "--release", "--workspace", "--bins"])
                .args(BUILD_FEATURES.map(|f| ["--features", f]).into_iter().flatten())
                .current_dir(workspace_root())
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", cargo.to_string_lossy()));
            assert!(
                output.status.success(),
                "`cargo build --release --workspace --bins` failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        for b in BINARIES {
            let path = bin_path(b);
            assert!(path.is_file(), "{} does not exist after building the workspace's binaries", path.display());
        }
    });
}

/// Runs binary `name` of the workspace with `args` and waits for it; stdin is empty.
pub fn run_bin<S: AsRef<OsStr>>(name: &str, args: &[S]) -> Output {
    ensure_built();
    let path = bin_path(name);
    Command::new(&path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()))
}

/// Runs `voxbridge args…`.
pub fn voxbridge<S: AsRef<OsStr>>(args: &[S]) -> Output {
    run_bin("voxbridge", args)
}

/// Runs `voxbridge args…` with extra environment variables.
pub fn voxbridge_env<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &str)]) -> Output {
    ensure_built();
    let path = bin_path("voxbridge");
    Command::new(&path)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()))
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The command's exit status, stdout and stderr, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!("status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}", output.status, stdout(output), stderr(output))
}

/// Asserts the command exited 0 and returns its stdout.
#[track_caller]
pub fn assert_success(output: &Output) -> String {
    assert!(output.status.success(), "expected success\n{}", describe(output));
    stdout(output)
}

/// Asserts the command exited with `code` and returns its stderr.
#[track_caller]
pub fn assert_exit(output: &Output, code: i32) -> String {
    assert_eq!(output.status.code(), Some(code), "expected exit code {code}\n{}", describe(output));
    stderr(output)
}

/// `voxbridge data simulate --preset tiny --seed <seed> --out <out>`.
pub fn simulate_tiny_into(out: &Path, seed: u64) -> Output {
    let seed = seed.to_string();
    let mut args: Vec<&OsStr> =
        ["data", "simulate", "--preset", "tiny", "--seed", &seed, "--out"].into_iter().map(OsStr::new).collect();
    args.push(out.as_os_str());
    voxbridge(&args)
}

/// A simulated dataset in its own scratch directory, removed on drop.
#[derive(Debug)]
pub struct SimDataset {
    /// The dataset root (`--out`).
    pub root: PathBuf,
    pub seed: u64,
    _dir: TempDir,
}

impl SimDataset {
    /// Simulates the `tiny` preset with `seed` into a fresh scratch directory; panics if that fails.
    pub fn tiny(seed: u64) -> Self {
        let dir = tempfile::Builder::new().prefix("voxbridge-e2e-").tempdir().expect("scratch directory");
        let root = dir.path().join("data");
        let output = simulate_tiny_into(&root, seed);
        assert_success(&output);
        assert!(root.join("manifest.toml").is_file(), "simulate wrote no manifest.toml\n{}", describe(&output));
        Self { root, seed, _dir: dir }
    }

    /// The dataset's own manifest.
    pub fn manifest(&self) -> PathBuf {
        self.root.join("manifest.toml")
    }

    /// The manifest path as a string, for the CLI and the loader.
    pub fn manifest_str(&self) -> String {
        self.manifest().to_str().expect("scratch paths are UTF-8").to_string()
    }

    /// A file under the root, from its `/`-separated manifest path.
    pub fn file(&self, relative: &str) -> PathBuf {
        relative.split('/').fold(self.root.clone(), |p, part| p.join(part))
    }

    /// `voxbridge data verify <manifest>`.
    pub fn verify(&self) -> Output {
        voxbridge(&["data", "verify", &self.manifest_str()])
    }

    /// `voxbridge ridge --data <manifest> --subject <subject> --sessions all`.
    pub fn ridge(&self, subject: u8) -> Output {
        voxbridge(&["ridge", "--data", &self.manifest_str(), "--subject", &subject.to_string(), "--sessions", "all"])
    }
}

/// Cuts the last `n` bytes off a file.
pub fn truncate_tail(path: &Path, n: u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let len = file.metadata().expect("metadata").len();
    assert!(len > n, "{} has only {len} bytes", path.display());
    file.set_len(len - n).expect("truncate");
}

/// Flips every bit of the byte in the middle of a file (xor 0xFF); returns its offset.
pub fn flip_middle_byte(path: &Path) -> usize {
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!bytes.is_empty(), "{} is empty", path.display());
    let at = bytes.len() / 2;
    bytes[at] ^= 0xFF;
    std::fs::write(path, &bytes).expect("write back");
    at
}

/// `loss, clip_loss, prior_loss` per step of a run (its `metrics/steps.csv`).
pub fn step_losses(run: &Path) -> Vec<[f64; 3]> {
    let csv = std::fs::read_to_string(run.join("metrics/steps.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let cols = [col("loss"), col("clip_loss"), col("prior_loss")];
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            cols.map(|c| f[c].parse().unwrap())
        })
        .collect()
}
