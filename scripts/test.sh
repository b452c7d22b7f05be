#!/usr/bin/env bash
# The test command (README.md). Installs what the tests need on a fresh Debian machine, then runs
# format, lint and every test of the workspace in the release profile (the tests run numerics,
# and the demo uses the same profile, so the dependency tree is built once).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# libhdf5 (Debian's serial build): the NSD import tests read HDF5 betas through the libhdf5 that
# `voxbridge data import-nsd` loads at run time. The build itself needs no HDF5 (checked below).
pkg-config --exists hdf5 2>/dev/null || need_apt+=(libhdf5-dev)
# Mesa's lavapipe (software Vulkan): the `--device wgpu` tests run burn's GPU kernels on it.
lavapipe_icd=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json
[[ -f $lavapipe_icd ]] || need_apt+=(mesa-vulkan-drivers)
ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1 ' || need_apt+=(libvulkan1)
if ((${#need_apt[@]})); then
  echo "installing: ${need_apt[*]}"
  if [[ $(id -u) -eq 0 ]]; then apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
  else sudo apt-get update -qq && sudo apt-get install -y -qq "${need_apt[@]}"; fi
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is missing: install Rust >= 1.95 (https://rustup.rs) and re-run" >&2
  exit 1
fi

# S3 tests talk to a real S3 server: moto, from a Python virtualenv kept between runs (the first
# run installs moto[server], safetensors and numpy from PyPI, about a minute).
echo "== moto S3 server"
command -v python3 >/dev/null 2>&1 || need_py=1
if [[ -n "${need_py:-}" ]] || ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then
  echo "installing: python3 python3-venv"
  if [[ $(id -u) -eq 0 ]]; then apt-get update -qq && apt-get install -y -qq python3 python3-venv
  else sudo apt-get update -qq && sudo apt-get install -y -qq python3 python3-venv; fi
fi
venv="${VOXBRIDGE_TEST_VENV:-${HOME:-/root}/.cache/voxbridge-test-venv}"
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c "import moto, flask, safetensors.numpy, numpy" >/dev/null 2>&1; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check 'moto[server]' safetensors numpy
fi
export PATH="$venv/bin:$PATH"
scratch=$(mktemp -d)
s3_port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$s3_port" > "$scratch/moto.log" 2>&1 &
moto_pid=$!
trap 'kill "$moto_pid" 2>/dev/null; rm -rf "$scratch"' EXIT
python - "$s3_port" <<'PY'
import sys, time, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(200):
    try:
        urllib.request.urlopen(base + "/moto-api/", timeout=1)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("moto_server did not start (see its log)")
urllib.request.urlopen(urllib.request.Request(base + "/test-bucket", method="PUT"), timeout=5)
print(f"moto S3 on {base}, bucket test-bucket")
PY
export AWS_ENDPOINT="http://127.0.0.1:$s3_port" AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=testing \
       AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_BUCKET=test-bucket

# Cluster tests submit jobs to a real one-node SLURM (slurmctld + slurmd; installs slurm-wlm and
# munge on first use, then starts in about a second). Its state lives in the scratch directory.
echo "== one-node SLURM"
bash scripts/slurm-up.sh "$scratch/slurm"
export SLURM_CONF="$scratch/slurm/slurm.conf"
trap 'scancel --full --user="$(id -un)" 2>/dev/null; bash scripts/slurm-down.sh "$scratch/slurm"; kill "$moto_pid" 2>/dev/null; rm -rf "$scratch" || true' EXIT

# wgpu finds lavapipe through the Vulkan loader; only its ICD is probed (the package also
# installs Intel/Radeon ones). XDG_RUNTIME_DIR silences Mesa's warning on headless machines.
export VK_DRIVER_FILES="$lavapipe_icd" VK_ICD_FILENAMES="$lavapipe_icd"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$scratch/xdg}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
# One feature set for lint, build and tests, so the dependency tree is built once: the
# binaries and the end-to-end tests with `--device wgpu`. (The default, CPU-only build is
# what the fresh-machine check builds.)
# (tests/lib.rs builds the binaries with the same list.)
features=voxbridge-cli/wgpu,voxbridge-worker/wgpu,voxbridge-e2e/wgpu

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --release --workspace --all-targets --locked --features "$features" -- -D warnings
echo "== cargo build (binaries used by the end-to-end tests)"
cargo build --release --workspace --bins --locked --features "$features"
echo "== fresh machine: the CLI builds, runs and links no libhdf5 with every system HDF5 hidden"
bash scripts/fresh-machine-check.sh
echo "== cargo clippy: CUDA and NCCL code (burn's cuda backend, NCCL on device memory; no CUDA toolkit needed, run only on a GPU)"
cargo clippy --release --locked -p voxbridge-cli -p voxbridge-worker -p voxbridge-train -p voxbridge-collective \
  --all-targets --features voxbridge-cli/nccl,voxbridge-worker/nccl,voxbridge-train/nccl,voxbridge-collective/nccl \
  -- -D warnings
echo "== scripts/gpu-check.sh --dry-run (the GPU check's plan, without a GPU)"
bash scripts/gpu-check.sh --dry-run
echo "== cargo test"
log="$scratch/test.log"
cargo test --release --workspace --locked --features "$features" 2>&1 | tee "$log"
# One closing line for the whole workspace (cargo prints one summary per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "voxbridge: %d passed, %d failed\n", p, f }' "$log"
