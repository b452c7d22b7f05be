# Sourced by scripts/gpu-check.sh when the carried binaries lack `voxbridge-cuda-env` (which does
# the same search in Rust, crates/voxbridge-gpu). Defines `find_cuda_libs LINK_DIR`: finds NVRTC,
# NCCL and the CUDA headers, links the unversioned names cudarc dlopens (`libnvrtc.so`,
# `libnccl.so`: it never tries `.so.13` or `libnccl.so.2`) into LINK_DIR/lib, and exports
# LD_LIBRARY_PATH and CUDA_PATH. Returns 1, naming what is missing and where it looked, when a
# library or the headers are not found. Overrides: VOXBRIDGE_NVRTC, VOXBRIDGE_NCCL (files),
# CUDA_PATH (a toolkit with include/cuda_runtime.h).

# newest version first among the lines on stdin matching the regex $1
_pick_newest() { grep -E "$1" | sort -V -r | head -n 1; }

find_cuda_libs() {
  local links="$1"
  mkdir -p "$links/lib" "$links/cuda/include" || return 1
  local py_dirs="" d
  py_dirs="$(python3 -c 'import site, sys
for p in site.getsitepackages() + sys.path: print(p)' 2>/dev/null | grep '^/' | sort -u)"
  local search=() nvidia_dirs=()
  for d in ${CUDA_PATH:+"$CUDA_PATH"} /usr/local/cuda /usr/local/cuda-* /usr/local/nvidia \
           /usr/lib/x86_64-linux-gnu /usr/lib64; do
    [ -d "$d" ] && search+=("$d")
  done
  while IFS= read -r d; do
    [ -n "$d" ] && [ -d "$d/nvidia" ] && nvidia_dirs+=("$d/nvidia")
  done <<< "$py_dirs"
  local looked="ldconfig -p, ${search[*]:-} ${nvidia_dirs[*]:-}"
  local all_libs
  all_libs="$( { ldconfig -p 2>/dev/null | awk -F' => ' '/libnvrtc\.so|libnccl\.so/ {print $2}';
                 find "${search[@]}" "${nvidia_dirs[@]}" -maxdepth 4 \( -name 'libnvrtc.so*' -o -name 'libnccl.so*' \) \
                   -not -path '*/stubs/*' 2>/dev/null; } | sort -u)"

  # NVRTC: not newer than the driver's CUDA major (newer NVRTC emits PTX the driver refuses).
  local driver_major
  driver_major="$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\..*/\1/p' | head -n 1)"
  local nvrtc="${VOXBRIDGE_NVRTC:-}" nccl="${VOXBRIDGE_NCCL:-}" m
  if [ -z "$nvrtc" ] && [ -n "$driver_major" ]; then
    for ((m = driver_major; m >= 11; m--)); do
      nvrtc="$(echo "$all_libs" | _pick_newest "/libnvrtc\.so\.$m(\.|$)")"
      [ -n "$nvrtc" ] && break
    done
  fi
  [ -z "$nvrtc" ] && nvrtc="$(echo "$all_libs" | _pick_newest '/libnvrtc\.so(\.[0-9]+)*$')"
  [ -z "$nccl" ] && nccl="$(echo "$all_libs" | _pick_newest '/libnccl\.so(\.[0-9]+)*$')"
  if [ -z "$nvrtc" ] || [ ! -e "$nvrtc" ]; then
    echo "libnvrtc.so (NVRTC) not found; looked in: $looked; set VOXBRIDGE_NVRTC" >&2
    return 1
  fi
  if [ -z "$nccl" ] || [ ! -e "$nccl" ]; then
    echo "libnccl.so (NCCL) not found; looked in: $looked; set VOXBRIDGE_NCCL" >&2
    return 1
  fi
  nvrtc="$(readlink -f "$nvrtc")"
  nccl="$(readlink -f "$nccl")"
  ln -sfn "$nvrtc" "$links/lib/libnvrtc.so" && ln -sfn "$nccl" "$links/lib/libnccl.so" || return 1
  local ldp="$links/lib:$(dirname "$nvrtc")"
  case ":$ldp:" in *":$(dirname "$nccl"):"*) ;; *) ldp="$ldp:$(dirname "$nccl")" ;; esac
  export LD_LIBRARY_PATH="$ldp${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

  # Headers of NVRTC's release: a toolkit beside it, else $CUDA_PATH, else one include folder
  # assembled from the wheels' nvidia/*/include (first of each name wins).
  local major sibling
  major="$(basename "$nvrtc" | sed -n 's/^libnvrtc\.so\.\([0-9]*\).*/\1/p')"
  sibling="$(dirname "$(dirname "$nvrtc")")"
  if [ -e "$sibling/include/cuda_runtime.h" ] && [ -e "$sibling/include/cuda_bf16.h" ]; then
    export CUDA_PATH="$sibling"
  elif [ -n "${CUDA_PATH:-}" ] && [ -e "$CUDA_PATH/include/cuda_runtime.h" ]; then
    :
  else
    local inc e b
    for inc in "$sibling/include" $(for d in "${nvidia_dirs[@]}"; do ls -d "$d"/*/include 2>/dev/null; done); do
      [ -d "$inc" ] || continue
      case "$inc" in */cu1[0-9]/include) case "$inc" in */cu$major/include) ;; *) continue ;; esac ;; esac
      for e in "$inc"/*; do
        b="$(basename "$e")"
        [ -e "$links/cuda/include/$b" ] || ln -s "$e" "$links/cuda/include/$b"
      done
    done
    if [ ! -e "$links/cuda/include/cuda_runtime.h" ]; then
      echo "cuda_runtime.h (CUDA headers for NVRTC) not found beside $nvrtc, in \$CUDA_PATH or the wheels' include folders; set CUDA_PATH" >&2
      return 1
    fi
    export CUDA_PATH="$links/cuda"
  fi
  echo "nvrtc: $nvrtc"
  echo "nccl:  $nccl"
  echo "CUDA_PATH=$CUDA_PATH"
  return 0
}
