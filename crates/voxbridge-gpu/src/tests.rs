//! The search on fake machines built in temporary folders (no GPU, no CUDA needed).

use std::path::{Path, PathBuf};

use super::*;

fn file(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn symlink(target: &str, link: &Path) {
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, link).unwrap();
}

fn headers(include: &Path, version: u32, cccl: bool) {
    file(&include.join("cuda_runtime_api.h"), &format!("/* x */\n#define CUDART_VERSION {version}\n"));
    for h in ["cuda_runtime.h", "cuda_fp16.h", "cuda_bf16.h", "mma.h"] {
        file(&include.join(h), "");
    }
    let lib = if cccl { include.join("cccl/cuda") } else { include.join("cuda") };
    file(&lib.join("barrier"), "");
    file(&lib.join("pipeline"), "");
}

/// An H200 as measured: driver 580 (CUDA 13.0) under /usr/local/nvidia, a CUDA 13.0 toolkit,
/// PyTorch's wheels with NCCL 2.28.9 (`libnccl.so.2` only) and a CUDA 12 NVRTC.
struct Machine {
    _dir: tempfile::TempDir,
    root: PathBuf,
    site: PathBuf,
    links: PathBuf,
}

fn machine() -> Machine {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let site = dir.path().join("venv/lib/python3.12/site-packages");
    let cuda = root.join("usr/local/cuda-13.0");
    file(&cuda.join("lib64/libnvrtc.so.13.0.88"), "elf");
    symlink("libnvrtc.so.13.0.88", &cuda.join("lib64/libnvrtc.so.13"));
    file(&cuda.join("lib64/libnvrtc-builtins.so.13.0.88"), "elf");
    headers(&cuda.join("include"), 13000, true);
    file(&root.join("usr/local/nvidia/lib64/libcuda.so.580.159.04"), "elf");
    symlink("libcuda.so.580.159.04", &root.join("usr/local/nvidia/lib64/libcuda.so.1"));
    file(&root.join("usr/local/cuda-13.0/lib64/stubs/libcuda.so"), "stub");
    file(&site.join("nvidia/nccl/lib/libnccl.so.2"), "elf");
    file(&site.join("nvidia/cu12/lib/libnvrtc.so.12"), "elf");
    let links = dir.path().join("tmp");
    Machine { _dir: dir, root, site, links }
}

fn env_of(m: &Machine, driver: Option<(u32, u32)>) -> SearchEnv {
    SearchEnv {
        root: m.root.clone(),
        python_dirs: vec![m.site.clone()],
        ld_library_path: vec![PathBuf::from("/opt/mine/lib")],
        driver_cuda: driver,
        ..SearchEnv::default()
    }
}

fn var<'a>(libs: &'a CudaLibraries, name: &str) -> &'a std::ffi::OsStr {
    &libs.env.iter().find(|(k, _)| k == name).unwrap().1
}

#[test]
fn on_an_h200_it_links_nvrtc_13_and_nccl_2_and_uses_the_toolkit_headers() {
    let m = machine();
    let libs = prepare(Needs::CUDA_NCCL, &env_of(&m, Some((13, 0))), Some(&m.links)).unwrap();
    let nvrtc = libs.nvrtc.as_ref().unwrap();
    assert_eq!(nvrtc.real, m.root.join("usr/local/cuda-13.0/lib64/libnvrtc.so.13.0.88").canonicalize().unwrap());
    assert_eq!(nvrtc.version, [13, 0, 88]);
    assert_eq!(libs.nccl.as_ref().unwrap().version, [2]);
    assert_eq!(libs.driver.as_ref().unwrap().version, [580, 159, 4], "the driver, never the stub");
    assert_eq!(libs.cuda_path, m.root.join("usr/local/cuda-13.0"), "a complete toolkit is used as it is");
    assert!(libs.notes.is_empty(), "{:?}", libs.notes);

    // The unversioned names cudarc loads, pointing at the chosen files.
    let lib = libs.link_dir.join("lib");
    assert_eq!(std::fs::canonicalize(lib.join("libnvrtc.so")).unwrap(), nvrtc.real);
    assert_eq!(std::fs::canonicalize(lib.join("libnccl.so")).unwrap(), libs.nccl.as_ref().unwrap().real);
    assert!(libs.link_dir.starts_with(&m.links));

    // Links first, then the libraries' folders (nvrtc-builtins, the driver that ldconfig does
    // not list), then the old LD_LIBRARY_PATH.
    let ld: Vec<PathBuf> = std::env::split_paths(var(&libs, "LD_LIBRARY_PATH")).collect();
    let real_dir = |p: &str| m.root.join(p).canonicalize().unwrap();
    assert_eq!(
        ld,
        [
            lib,
            real_dir("usr/local/cuda-13.0/lib64"),
            m.site.join("nvidia/nccl/lib").canonicalize().unwrap(),
            real_dir("usr/local/nvidia/lib64"),
            PathBuf::from("/opt/mine/lib"),
        ]
    );
    assert_eq!(var(&libs, "CUDA_PATH"), m.root.join("usr/local/cuda-13.0").as_os_str());

    // The same machine again: the same folder, nothing to redo.
    let again = prepare(Needs::CUDA_NCCL, &env_of(&m, Some((13, 0))), Some(&m.links)).unwrap();
    assert_eq!(again.link_dir, libs.link_dir);
    assert_eq!(again.env, libs.env);
}

#[test]
fn an_older_driver_gets_the_nvrtc_it_can_load_and_headers_assembled_from_the_wheels() {
    let m = machine();
    // CUDA 12 headers split over wheels, as pip's cu12 packages ship them.
    headers(&m.site.join("nvidia/cuda_runtime/include"), 12080, false);
    std::fs::remove_dir_all(m.site.join("nvidia/cuda_runtime/include/cuda")).unwrap();
    file(&m.site.join("nvidia/cuda_cccl/include/cuda/barrier"), "");
    file(&m.site.join("nvidia/cuda_cccl/include/cuda/pipeline"), "");
    let libs = prepare(Needs::CUDA_NCCL, &env_of(&m, Some((12, 8))), Some(&m.links)).unwrap();
    assert_eq!(libs.nvrtc.as_ref().unwrap().version, [12], "NVRTC 13 emits PTX a CUDA 12 driver refuses");
    assert_eq!(libs.cuda_path, libs.link_dir.join("cuda"));
    let include = libs.cuda_path.join("include");
    for h in ["cuda_runtime.h", "cuda_bf16.h", "mma.h", "cuda/barrier"] {
        assert!(include.join(h).exists(), "{h} in the assembled {}", include.display());
    }
    assert_eq!(headers::cuda_version(&include), Some((12, 8)), "the CUDA 13 toolkit's headers stay out");
}

#[test]
fn without_a_driver_version_the_newest_nvrtc_wins() {
    let m = machine();
    let libs = prepare(Needs::CUDA, &env_of(&m, None), Some(&m.links)).unwrap();
    assert_eq!(libs.nvrtc.unwrap().version, [13, 0, 88]);
    assert!(libs.nccl.is_none(), "not asked for");
}

#[test]
fn a_missing_nccl_is_named_with_every_place_looked_in() {
    let m = machine();
    std::fs::remove_dir_all(m.site.join("nvidia/nccl")).unwrap();
    assert!(prepare(Needs::CUDA, &env_of(&m, Some((13, 0))), Some(&m.links)).is_ok(), "a cuda build needs no NCCL");
    let err = prepare(Needs::CUDA_NCCL, &env_of(&m, Some((13, 0))), Some(&m.links)).unwrap_err();
    assert!(err.library.starts_with("libnccl.so (NCCL"), "{err}");
    let text = err.to_string();
    assert!(text.contains("VOXBRIDGE_NCCL (unset)") && text.contains("ldconfig -p"), "{text}");
    assert!(text.contains(&m.root.join("usr/local/cuda-13.0/lib64").display().to_string()), "{text}");
    assert!(text.contains(&format!("{} (absent)", m.root.join("usr/local/cuda/lib64").display())), "{text}");
    assert!(text.contains(&m.site.join("nvidia/cu12/lib").display().to_string()), "{text}");
    assert!(text.contains("set VOXBRIDGE_NCCL"), "{text}");
}

#[test]
fn a_missing_driver_or_headers_is_named() {
    let m = machine();
    std::fs::remove_dir_all(m.root.join("usr/local/nvidia")).unwrap();
    let err = prepare(Needs::CUDA, &env_of(&m, None), Some(&m.links)).unwrap_err();
    assert!(err.library.starts_with("libcuda.so.1 (the NVIDIA driver)"), "stubs do not count: {err}");
    // A driver the loader finds (its version could be asked) needs no file here.
    let libs = prepare(Needs::CUDA, &env_of(&m, Some((13, 0))), Some(&m.links)).unwrap();
    assert!(libs.driver.is_none());

    std::fs::remove_dir_all(m.root.join("usr/local/cuda-13.0/include")).unwrap();
    let err = prepare(Needs::CUDA, &env_of(&m, Some((13, 0))), Some(&m.links)).unwrap_err();
    assert!(err.library.starts_with("cuda_runtime.h"), "{err}");
    assert!(err.looked_in.iter().any(|d| d.ends_with("cuda-13.0/include")), "{err}");
}

#[test]
fn ldconfig_and_overrides_are_honoured() {
    let m = machine();
    let elsewhere = m.links.parent().unwrap().join("opt/nccl/libnccl.so.2.21.5");
    file(&elsewhere, "elf");
    let mut env = env_of(&m, Some((13, 0)));
    env.ldconfig = format!(
        "3 libs found in cache `/etc/ld.so.cache'\n\tlibnccl.so.2 (libc6,x86-64) => {}\n\tlibcuda.so (libc6,x86-64) => {}\n",
        elsewhere.display(),
        m.root.join("usr/local/cuda-13.0/lib64/stubs/libcuda.so").display()
    );
    let found = search::find(&env, "nccl");
    assert!(found.iter().any(|f| f.in_loader_cache && f.version == [2, 21, 5]), "{found:?}");
    let libs = prepare(Needs::CUDA_NCCL, &env, Some(&m.links)).unwrap();
    assert_eq!(libs.nccl.as_ref().unwrap().version, [2, 21, 5], "the newest NCCL");
    assert!(search::find(&env, "cuda").iter().all(|f| !f.path.to_string_lossy().contains("stubs")));

    env.overrides = vec![("nccl".into(), m.site.join("nvidia/nccl/lib/libnccl.so.2"))];
    let libs = prepare(Needs::CUDA_NCCL, &env, Some(&m.links)).unwrap();
    assert_eq!(libs.nccl.unwrap().path, m.site.join("nvidia/nccl/lib/libnccl.so.2"), "the override wins");
    env.overrides = vec![("nvrtc".into(), PathBuf::from("/nonexistent/libnvrtc.so.13"))];
    let err = prepare(Needs::CUDA, &env, Some(&m.links)).unwrap_err();
    assert!(err.to_string().contains("(set by VOXBRIDGE_NVRTC)"), "{err}");
}

#[test]
fn library_names_give_versions() {
    assert_eq!(search::version_of("libnccl.so.2.28.9", "nccl"), Some(vec![2, 28, 9]));
    assert_eq!(search::version_of("libnccl.so", "nccl"), Some(vec![]));
    assert_eq!(search::version_of("libnvrtc-builtins.so.13.0", "nvrtc"), None);
    assert_eq!(search::version_of("libnvrtc.alt.so.13", "nvrtc"), None);
    assert_eq!(search::version_of("libnvrtc.so.13.tmp", "nvrtc"), None);
    assert_eq!(search::version_of("libcuda.so.1", "cuda"), Some(vec![1]));
    assert_eq!(search::version_of("libcudart.so.13", "cuda"), None);
}

#[test]
fn the_environment_is_applied_only_when_every_variable_matches() {
    let wanted = vec![("LD_LIBRARY_PATH".to_string(), OsString::from("/a:/b")), ("CUDA_PATH".into(), "/c".into())];
    let current = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| OsString::from(v))
    };
    assert!(env_applied(&wanted, current(&[("LD_LIBRARY_PATH", "/a:/b"), ("CUDA_PATH", "/c")])));
    assert!(!env_applied(&wanted, current(&[("LD_LIBRARY_PATH", "/a:/b")])));
    assert!(!env_applied(&wanted, current(&[("LD_LIBRARY_PATH", "/a"), ("CUDA_PATH", "/c")])));
    // This process's own environment is already "applied": no re-execution.
    if let Some(path) = std::env::var_os("PATH") {
        assert_eq!(reexec_with(&[("PATH".to_string(), path)]).unwrap(), Reexec::NotNeeded);
    }
}

/// This machine (CI has no GPU): the real search runs to an answer without panicking — an
/// error that names the driver, or (on a GPU machine) the libraries.
#[test]
fn the_real_machine_gives_an_answer() {
    match prepare(Needs::CUDA_NCCL, &SearchEnv::from_system(), Some(&std::env::temp_dir())) {
        Ok(libs) => assert!(libs.env.iter().any(|(k, _)| k == "CUDA_PATH")),
        Err(missing) => assert!(!missing.library.is_empty() && !missing.looked_in.is_empty(), "{missing}"),
    }
}
