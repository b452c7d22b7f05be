#!/usr/bin/env bash
# Runs the test command (scripts/test.sh) on a fresh minimal Debian, the way a user who clones the
# repository would: debootstrap's `minbase` variant of Debian bookworm (no procps, no sudo, no
# compiler) in a folder, plus only what the README asks a user to install first: Rust (rustup,
# with rustfmt and clippy), build-essential, git, python3, curl. Everything else (pkg-config,
# libhdf5-dev, python3-venv, moto, slurm-wlm, munge) is left to scripts/test.sh to install, as
# it would on such a machine. Catches tests and scripts that rely on programs or files a
# developer's machine happens to have (the procps `kill`/`pgrep`, data outside the repository).
#
# Not part of CI: it downloads a Debian base system, a Rust toolchain and the crates, builds the
# whole workspace from nothing and runs every test (an hour or more on a few cores).
#
# Needs: Linux, root (debootstrap, chroot and mounts), the `debootstrap` package on the host
# (`apt-get install debootstrap`), network access to deb.debian.org, static.rust-lang.org and
# crates.io, and about 15 GB free under ROOT.
#
# Usage: sudo scripts/fresh-debian-check.sh [--worktree] [ROOT]
#   ROOT        where the Debian root goes (default /var/tmp/voxbridge-fresh-debian); an existing
#               root from an earlier run is reused (delete it to start from scratch)
#   --worktree  test the working tree as it is (uncommitted changes included, `target/` left
#               out) instead of a `git clone` of the committed HEAD
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), RUST_TOOLCHAIN (default the
# workspace's rust-version, read from Cargo.toml).
# Exit status: that of scripts/test.sh inside the root (0 = every check passed).
set -euo pipefail

worktree=0
if [[ ${1:-} == --worktree ]]; then
  worktree=1
  shift
fi
root=$(realpath -m "${1:-/var/tmp/voxbridge-fresh-debian}")
repo=$(cd "$(dirname "$0")/.." && pwd)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
toolchain=${RUST_TOOLCHAIN:-$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)}

if [[ $(id -u) -ne 0 ]]; then
  echo "error: run as root (debootstrap, chroot and mount need it)" >&2
  exit 2
fi
command -v debootstrap >/dev/null 2>&1 || {
  echo "error: debootstrap is missing: apt-get install debootstrap" >&2
  exit 2
}

if [[ ! -f $root/etc/debian_version ]]; then
  echo "== debootstrap --variant=minbase bookworm $root"
  mkdir -p "$root"
  debootstrap --variant=minbase bookworm "$root" "$mirror"
fi

# The chroot's kernel interfaces; undone in reverse order on exit.
mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount -l "${mounted[i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT
mount_in() { # mount_in TARGET mount-arguments…
  local target=$root$1
  shift
  mkdir -p "$target"
  mount "$@" "$target"
  mounted+=("$target")
}
mount_in /proc -t proc proc
mount_in /sys -t sysfs sysfs
mount_in /dev --bind /dev
mount_in /dev/pts --bind /dev/pts
mount_in /run -t tmpfs tmpfs
mount_in /mnt/voxbridge-src --bind "$repo"
mount -o remount,bind,ro "$root/mnt/voxbridge-src"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# Packages must not start their daemons while installing (munge): scripts/slurm-up.sh starts them.
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"

in_root() {
  chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

echo "== prerequisites: build-essential git python3 curl, Rust $toolchain"
in_root bash -c 'set -e; export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends build-essential git python3 curl ca-certificates'
in_root bash -c "set -e; command -v rustup >/dev/null 2>&1 ||
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain '$toolchain'
  rustup toolchain install '$toolchain' --profile minimal --component rustfmt,clippy
  rustup default '$toolchain'"
# The point of the check: none of these may have come in with the prerequisites.
for program in ps pgrep pkill killall; do
  if in_root bash -c "command -v $program" >/dev/null 2>&1; then
    echo "warning: $program is installed in $root: the check no longer covers machines without it" >&2
  fi
done
if in_root bash -c 'type -P kill' >/dev/null 2>&1; then
  echo "warning: the kill program is installed in $root (procps)" >&2
fi

echo "== the repository"
in_root rm -rf /root/voxbridge
if ((worktree)); then
  mkdir -p "$root/root/voxbridge"
  tar -C "$repo" --exclude=./target -cf - . | tar -C "$root/root/voxbridge" -xf -
else
  in_root git -c safe.directory='*' clone -q /mnt/voxbridge-src /root/voxbridge
fi
in_root git -C /root/voxbridge log -1 --format='%h %s' 2>/dev/null || true

echo "== scripts/test.sh"
status=0
in_root bash -c 'cd /root/voxbridge && bash scripts/test.sh' || status=$?
echo "fresh Debian check: scripts/test.sh exited with $status"
exit "$status"
