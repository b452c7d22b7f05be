#!/usr/bin/env bash
# Fresh-machine check (issue 19): the `voxbridge` binary builds on a machine that has only the
# Rust toolchain — no HDF5 headers, no pkg-config entry for HDF5, no HDF5_DIR — runs, and does
# not link libhdf5 (NSD's HDF5 betas are read through the libhdf5 loaded at run time; without it,
# `data import-nsd` says what to install).
#
# It builds in its own target directory (default: <target>/fresh-machine): hiding pkg-config
# changes variables that the build scripts of aws-lc-sys and zstd-sys watch, so in the shared
# target directory every switch would rebuild them and everything above them. The first run is a
# full release build of the CLI; later runs take seconds. Set VOXBRIDGE_FRESH_TARGET_DIR to move it.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${VOXBRIDGE_FRESH_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/fresh-machine}"
fail() {
  echo "fresh-machine check FAILED: $*" >&2
  exit 1
}

echo "== no crate of the CLI's dependency graph is an HDF5 binding"
graph=$(cargo tree -p voxbridge-cli -e all --prefix none)
if grep -i hdf5 <<<"$graph"; then fail "the crates above need HDF5 to build"; fi

echo "== cargo build --release -p voxbridge-cli, HDF5 hidden (target: $target)"
unset HDF5_DIR HDF5_ROOT HDF5_INCLUDE_DIR HDF5_LIB_DIR HDF5_VERSION PKG_CONFIG_PATH
export PKG_CONFIG_LIBDIR=/nonexistent
CARGO_TARGET_DIR="$target" cargo build --release -p voxbridge-cli
bin="$target/release/voxbridge"
[[ -x "$bin" ]] || fail "no binary at $bin"

echo "== the binary does not link libhdf5"
if command -v ldd >/dev/null 2>&1; then
  libraries=$(ldd "$bin")
  echo "$libraries"
  if grep -i hdf5 <<<"$libraries"; then fail "$bin links libhdf5"; fi
elif command -v otool >/dev/null 2>&1; then
  if otool -L "$bin" | grep -i hdf5; then fail "$bin links libhdf5"; fi
else
  fail "neither ldd nor otool is available to list the binary's libraries"
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

echo "== voxbridge --help"
"$bin" --help >"$scratch/help.txt" || fail "voxbridge --help"
grep -q "import-nsd\|simulate" <("$bin" data --help) || fail "voxbridge data --help lists no import-nsd/simulate"
head -n 3 "$scratch/help.txt"

echo "== voxbridge data simulate --preset tiny, then verify it"
"$bin" data simulate --preset tiny --max-sessions 2 --subjects 1 --out "$scratch/sim" || fail "data simulate"
"$bin" data verify "$scratch/sim/manifest.toml" || fail "data verify"

echo "== voxbridge config check of every experiment in experiments/"
for experiment in experiments/*.toml; do
  "$bin" config check "$experiment" >/dev/null || fail "config check $experiment"
  echo "ok: $experiment"
done

echo "== without libhdf5 at run time, data import-nsd says what to install (exit 1, no panic)"
printf 'betas' >"$scratch/betas.hdf5"
set +e
refused=$(VOXBRIDGE_HDF5_LIB=/nonexistent/libhdf5.so "$bin" data import-nsd --subject 1 \
  --betas "$scratch/betas.hdf5" --wds "$scratch/wds" --targets "$scratch/targets" --out "$scratch/nsd" 2>&1)
status=$?
set -e
echo "$refused" | tail -n 3
[[ $status -eq 1 ]] || fail "import-nsd without libhdf5 exited $status, not 1"
grep -q "betas.hdf5: reading NSD's HDF5 betas needs the HDF5 C library at run time" <<<"$refused" ||
  fail "import-nsd without libhdf5 does not name the file and what to install"

echo "fresh-machine check passed: $bin builds and runs without HDF5 at build time"
