#!/usr/bin/env bash
# The test command (README.md). Installs what the tests need on a fresh Debian machine, then runs
# format, lint and every test of the workspace in the release profile (the tests run numerics,
# and the demo uses the same profile, so the dependency tree is built once).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
if ((${#need_apt[@]})); then
  echo "installing: ${need_apt[*]}"
  if [[ $(id -u) -eq 0 ]]; then apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
  else sudo apt-get update -qq && sudo apt-get install -y -qq "${need_apt[@]}"; fi
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is missing: install Rust >= 1.95 (https://rustup.rs) and re-run" >&2
  exit 1
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --release --workspace --all-targets --locked -- -D warnings
echo "== cargo build (binaries used by the end-to-end tests)"
cargo build --release --workspace --bins --locked
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --workspace --locked 2>&1 | tee "$log"
# One closing line for the whole workspace (cargo prints one summary per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "voxbridge: %d passed, %d failed\n", p, f }' "$log"
