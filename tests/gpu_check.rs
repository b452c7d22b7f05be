//! `scripts/gpu-check.sh`, the GPU check of issue 20, exercised where CI runs (no GPU): its syntax,
//! its `--dry-run` plan, and a whole run on a fake machine whose binaries, `nvidia-smi` and
//! PyTorch anchor are small scripts — so the step logic, the budget, the loss comparison, the
//! bench ratios and the JSON report are checked without a GPU. What the real binaries do on a
//! GPU is what the script is for; it runs only where a GPU is lent.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use voxbridge_e2e::workspace_root;

fn script() -> PathBuf {
    workspace_root().join("scripts/gpu-check.sh")
}

fn bash(args: &[&str], path_prefix: Option<&Path>) -> Output {
    let mut command = Command::new("bash");
    command.args(args).current_dir(workspace_root()).stdin(Stdio::null());
    if let Some(prefix) = path_prefix {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let joined = std::env::join_paths(std::iter::once(prefix.to_path_buf()).chain(std::env::split_paths(&path)));
        command.env("PATH", joined.unwrap());
    }
    command.output().unwrap_or_else(|e| panic!("cannot run bash: {e}"))
}

fn text(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn read_report(path: &Path) -> serde_json::Value {
    let raw = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&raw).unwrap_or_else(|e| panic!("the report is not JSON ({e}):\n{raw}"))
}

fn step<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {report:#}"))
}

#[test]
fn the_scripts_parse() {
    for file in ["scripts/gpu-check.sh", "scripts/gpu/find-cuda-libs.sh"] {
        let out = bash(&["-n", &workspace_root().join(file).to_string_lossy()], None);
        assert!(out.status.success(), "bash -n {file}: {}", text(&out));
    }
    assert!(workspace_root().join("scripts/gpu/torch_anchor.py").is_file());
}

#[test]
fn the_dry_run_plans_every_stage_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let missing_bins = dir.path().join("no-binaries-here");
    let out = bash(
        &[
            &script().to_string_lossy(),
            "--dry-run",
            "--bin-dir",
            &missing_bins.to_string_lossy(),
            "--out",
            &report.to_string_lossy(),
        ],
        None,
    );
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    for planned in [
        "[plan] libs",
        "[plan] nccl/allreduce",
        "[plan] nccl/deadline",
        "[plan] nccl/stall",
        "[plan] train/simulate",
        "[plan] train/cpu",
        "--device cpu --precision fp32",
        "[plan] train/cuda",
        "--device cuda --precision fp32",
        "[plan] parity/subj0",
        "predict --device cuda --checkpoint",
        "[plan] train/compare",
        "bench train --device cuda --precision bf16 --config released",
        // The names `voxbridge bench train` knows (a lowercase `p1-big` was once passed here).
        "bench train --device cuda --precision tf32 --config P1-big",
        "bench train --device cuda --precision bf16 --config P1 ",
        "torch_anchor.py released --device cuda --precision bf16",
        "env -u CUDA_PATH",
        "torch_anchor.py P1 --device cuda --precision fp32 --tf32",
        "CUBECL_AUTOTUNE_LEVEL=minimal",
        "dry run: nothing ran on a GPU",
    ] {
        assert!(log.contains(planned), "the plan lacks {planned:?}:\n{log}");
    }
    let report = read_report(&report);
    assert_eq!(report["dry_run"], true);
    assert_eq!(step(&report, "prereqs/bash-syntax")["status"], "ok");
    assert_eq!(step(&report, "prereqs/voxbridge")["status"], "missing", "binaries absent are reported");
    assert_eq!(step(&report, "prereqs/torch_anchor.py")["status"], "ok");
    assert_eq!(step(&report, "bench/released-bf16/voxbridge")["status"], "planned");
}

/// Small scripts standing in for the machine: the voxbridge binaries, nvidia-smi, and a python3
/// that fakes torch_anchor.py and passes everything else to the real python3.
fn fake_machine(dir: &Path, real_python: &Path) -> (PathBuf, PathBuf) {
    let bin = dir.join("bin");
    let path = dir.join("path");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&path).unwrap();
    let write = |p: PathBuf, body: &str| {
        std::fs::write(&p, format!("#!/usr/bin/env bash\n{body}")).unwrap();
        let mut perms = std::fs::metadata(&p).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&p, perms).unwrap();
    };
    // value of the option $1 among the remaining arguments
    let opt = "opt() { local want=\"$1\"; shift; while [ $# -gt 0 ]; do [ \"$1\" = \"$want\" ] && { echo \"$2\"; return; }; shift; done; }\n";
    write(
        bin.join("voxbridge"),
        &format!(
            "{opt}case \"$1 $2\" in\n\
             'data simulate') mkdir -p \"$(opt --out \"$@\")\" && echo 'name = \"tiny\"' > \"$(opt --out \"$@\")/manifest.toml\" ;;\n\
             'bench train') echo \"[{{\\\"name\\\":\\\"$(opt --config \"$@\")\\\",\\\"median_ms\\\":100.0,\\\"batch\\\":24,\\\"samples_per_second\\\":240.0}}]\" > \"$(opt --json \"$@\")\" ;;\n\
             train*) out=\"$(opt --out \"$@\")\"; dev=\"$(opt --device \"$@\")\"; mkdir -p \"$out/metrics\"\n\
               echo step,epoch,loss,clip_loss,prior_loss > \"$out/metrics/steps.csv\"\n\
               for s in $(seq 0 49); do\n\
                 if [ \"$dev\" = cuda ]; then l=\"$((2000 - s * 10)).02\"; else l=\"$((2000 - s * 10)).00\"; fi\n\
                 echo \"$s,0,$l,1,1\" >> \"$out/metrics/steps.csv\"\n\
               done ;;\n\
             'predict --device') exec '{python}' '{predict}' \"$@\" ;;\n\
             *) echo \"fake voxbridge: $*\" >&2; exit 2 ;;\n\
             esac\n",
            python = real_python.display(),
            predict = dir.join("fake_predict.py").display(),
        ),
    );
    // `predict`: the reference outputs of --subject next to --checkpoint, as the real one writes them.
    std::fs::write(dir.join("fake_predict.py"), FAKE_PREDICT).unwrap();
    write(
        bin.join("voxbridge-nccl-check"),
        "case \"$1\" in\n\
         allreduce) echo '{\"check\":\"allreduce\",\"ok\":true,\"device_allreduce_ms\":0.04}' ;;\n\
         deadline) echo '{\"check\":\"deadline\",\"ok\":true,\"waited_s\":1.002}' ;;\n\
         stall) echo 'error: ncclCommInitRank on rank 0 of 2 (cuda:0) did not return within 12s; aborting the process' >&2; exit 134 ;;\n\
         esac\n",
    );
    write(bin.join("voxbridge-cuda-env"), "echo \"export CUDA_PATH='/fake/cuda'\"\necho 'driver: fake' >&2\n");
    write(path.join("nvidia-smi"), "echo 'NVIDIA H200, 580.159.04, 143771 MiB, 9.0'\n");
    write(
        path.join("python3"),
        &format!(
            "{opt}case \"$*\" in\n\
             *torch_anchor.py*) echo \"{{\\\"median_ms\\\": 200.0, \\\"batch\\\": 24, \\\"samples_per_s\\\": 120.0, \\\"peak_mem_gib\\\": 44.4}}\" > \"$(opt --json \"$@\")\" ;;\n\
             *) exec '{}' \"$@\" ;;\n\
             esac\n",
            real_python.display()
        ),
    );
    (bin, path)
}

const FAKE_PREDICT: &str = r#"
import json, os, struct, sys
args = sys.argv[1:]
opt = lambda name: args[args.index(name) + 1]
blob = open(os.path.join(os.path.dirname(opt('--checkpoint')), 'outputs.safetensors'), 'rb').read()
(n,) = struct.unpack('<Q', blob[:8])
header = json.loads(blob[8:8 + n])
out_header, data = {}, b''
for key in ('backbone', 'clip_voxels'):
    info = header['subj%s.%s' % (opt('--subject'), key)]
    start, end = info['data_offsets']
    out_header[key] = {'dtype': 'F32', 'shape': info['shape'], 'data_offsets': [len(data), len(data) + end - start]}
    data += blob[8 + n + start:8 + n + end]
encoded = json.dumps(out_header).encode()
open(opt('--out'), 'wb').write(struct.pack('<Q', len(encoded)) + encoded + data)
"#;

fn real_python() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("python3")).find(|p| p.is_file())
}

#[test]
fn a_run_on_a_fake_machine_reports_every_stage_with_ratios() {
    let Some(python) = real_python() else {
        eprintln!("skipped: no python3 on PATH (the report helpers need it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (bin, path) = fake_machine(dir.path(), &python);
    let report_path = dir.path().join("report.json");
    let work = dir.path().join("work");
    let out = bash(
        &[
            &script().to_string_lossy(),
            "--bin-dir",
            &bin.to_string_lossy(),
            "--work",
            &work.to_string_lossy(),
            "--out",
            &report_path.to_string_lossy(),
            "--budget-s",
            "300",
        ],
        Some(&path),
    );
    let log = text(&out);
    let report = read_report(&report_path);
    assert_eq!(report["dry_run"], false, "{log}");
    assert_eq!(report["gpu"], "NVIDIA H200, 580.159.04, 143771 MiB, 9.0");
    assert_eq!(report["env"]["CUDA_PATH"], "/fake/cuda", "voxbridge-cuda-env's environment applies");
    for ok in ["libs", "nccl/allreduce", "nccl/deadline", "nccl/stall", "train/simulate", "train/cuda", "train/cpu"] {
        assert_eq!(step(&report, ok)["status"], "ok", "{ok}: {log}");
    }
    assert_eq!(step(&report, "nccl/allreduce")["result"]["device_allreduce_ms"], 0.04);
    let compare = step(&report, "train/compare");
    assert_eq!(compare["status"], "ok", "{compare:#}\n{log}");
    assert_eq!(compare["result"]["steps_cuda"], 50);
    assert!(compare["result"]["max_rel_diff"].as_f64().unwrap() < 1e-4);
    for s in 0..3 {
        let parity = step(&report, &format!("parity/subj{s}"));
        assert_eq!(parity["status"], "ok", "{parity:#}\n{log}");
        assert_eq!(parity["result"]["outputs"]["clip_voxels"]["rel"], 0.0, "{parity:#}");
    }
    let bench = step(&report, "bench/released-bf16");
    assert_eq!(bench["result"]["speedup_vs_torch"], 2.0, "torch 200 ms / voxbridge 100 ms: {bench:#}");
    assert_eq!(bench["result"]["time_ratio_voxbridge_over_torch"], 0.5);
    assert_eq!(step(&report, "bench/p1-tf32")["result"]["config"], "p1");
    assert_eq!(report["failed"], false, "{log}");
    assert!(out.status.success(), "{log}");
    assert!(work.join("cubecl.toml").is_file(), "cubecl's cache is configured for the run");

    // A budget smaller than the report's reserve: every step is skipped, none hangs or fails.
    let short = dir.path().join("work-short");
    let (script, bin, short, report_arg) =
        (script(), bin.to_string_lossy(), short.to_string_lossy(), report_path.to_string_lossy());
    let args =
        [&*script.to_string_lossy(), "--bin-dir", &bin, "--work", &short, "--out", &report_arg, "--budget-s", "3"];
    let out = bash(&args, Some(&path));
    let report = read_report(&report_path);
    assert_eq!(step(&report, "nccl/allreduce")["status"], "skipped-budget", "{}", text(&out));
    assert_eq!(step(&report, "bench/released-bf16/voxbridge")["status"], "skipped-budget");
}
