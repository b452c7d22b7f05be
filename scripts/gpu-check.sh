#!/usr/bin/env bash
# The GPU check (issue 20, item 7): on one H100/H200 machine with a driver, CUDA runtime
# libraries and PyTorch (no network, no Rust), runs prebuilt `cuda,nccl` binaries and writes one
# JSON report. Stages, in this order (the cheap, always-valuable ones first; the budget cuts the
# tail):
#   prereqs  bash syntax, binaries, torch_anchor.py, python3, nvidia-smi
#   libs     NVRTC, NCCL and CUDA headers found and linked (voxbridge-cuda-env, else
#            scripts/gpu/find-cuda-libs.sh); cubecl's kernel cache and autotune level set
#   nccl     voxbridge-nccl-check: all-reduce/all-gather on one rank (checked, timed), the
#            watchdog's deadline on a blocked stream, the stall guard on a set-up that never ends
#   train    a 50-step tiny run, `voxbridge train --device cuda` vs `--device cpu` (the CPU run goes
#            in the background meanwhile); losses compared from metrics/steps.csv
#   parity   `voxbridge predict --device cuda` on MindEye2's original tiny checkpoint against the
#            outputs the original PyTorch code computed (tests/reference/mindeye2-tiny)
#   bench    `voxbridge bench train --device cuda --precision bf16|tf32 --config released|P1-big|P1`
#            each beside `python3 scripts/gpu/torch_anchor.py` with the matching arguments
#   report   one JSON object (--out): every step's status, timings, results, ratios to torch
#
# Usage: scripts/gpu-check.sh [--bin-dir DIR] [--out FILE] [--dry-run]
#          [--budget-s 480] [--work DIR] [--log-dir DIR] [--autotune LEVEL] [--bench-autotune LEVEL]
#          [--skip STAGE]...
#   --bin-dir DIR     voxbridge, voxbridge-nccl-check, voxbridge-cuda-env (default target/release),
#                     built on a CPU machine:
#                       cargo build --release -p voxbridge-cli -p voxbridge-worker --features cuda,nccl
#                       cargo build --release -p voxbridge-collective --features nccl --bins
#                       cargo build --release -p voxbridge-gpu
#   --dry-run         print every command with its timeout, check what a CPU machine can (syntax,
#                     files), run nothing on a GPU, exit 0
#   --autotune LEVEL  CUBECL_AUTOTUNE_LEVEL for everything but the bench (default minimal)
#   --bench-autotune LEVEL   for the bench (default minimal; see below)
# Budget: 8 minutes in all (--budget-s); each step gets min(its cap, what is left); a step that
# cannot get its minimum is "skipped-budget". Exit status 0 when no step failed.
#
# CUBECL_AUTOTUNE_LEVEL=minimal by default, deliberately: autotuning compiles and times several
# candidate kernels (NVRTC, ~0.5-1 s each) per new matmul/reduce shape; the released model has
# dozens of shapes, which at `balanced` would eat most of the 8 minutes. `minimal` still picks
# among a few (the H200 probe: 4096³ bf16 matmul 183 TFLOP/s at minimal), so the bench figures
# are a lower bound for burn; rerun the bench alone with --bench-autotune balanced to see more.
# The cubecl cache (compiled PTX and autotune results; cubecl.toml in the work folder) is kept
# for the whole run, so each kernel is compiled once across all the processes of the check.
set -u -o pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
BIN_DIR="$REPO/target/release"
OUT_FILE=""
DRY=0
BUDGET=480
WORK=""
LOG_DIR=""
AUTOTUNE=minimal
BENCH_AUTOTUNE=minimal
SKIP=" "
RESERVE=8 # seconds kept for the report

usage() { sed -n '2,/^set -u/p' "$SELF" | sed -n 's/^# \{0,1\}//p'; }
abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) BIN_DIR="$(abs "${2:?--bin-dir needs a folder}")"; shift 2 ;;
    --out) OUT_FILE="$(abs "${2:?--out needs a file}")"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --budget-s) BUDGET="${2:?--budget-s needs seconds}"; shift 2 ;;
    --work) WORK="$(abs "${2:?--work needs a folder}")"; shift 2 ;;
    --log-dir) LOG_DIR="$(abs "${2:?--log-dir needs a folder}")"; shift 2 ;;
    --autotune) AUTOTUNE="${2:?--autotune needs a level}"; shift 2 ;;
    --bench-autotune) BENCH_AUTOTUNE="${2:?--bench-autotune needs a level}"; shift 2 ;;
    --skip) SKIP+="${2:?--skip needs a stage} "; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu-check: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$BUDGET" in '' | *[!0-9]*) echo "gpu-check: --budget-s must be a number of seconds" >&2; exit 2 ;; esac
for level in "$AUTOTUNE" "$BENCH_AUTOTUNE"; do
  case "$level" in minimal | balanced | extensive | full) ;; *) echo "gpu-check: autotune level $level is not minimal|balanced|extensive|full" >&2; exit 2 ;; esac
done

START=$(date +%s)
DEADLINE=$((START + BUDGET))
OWN_WORK=0
if [ -z "$WORK" ]; then
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/voxbridge-gpu-check.XXXXXX")" || exit 1
  OWN_WORK=1
fi
mkdir -p "$WORK/logs" "$WORK/bench" "$WORK/runs" || exit 1
STEPS="$WORK/steps.jsonl"
SUMMARY="$WORK/summary.txt"
: >"$STEPS"
: >"$SUMMARY"
VOX="$BIN_DIR/voxbridge"
NCCL_CHECK="$BIN_DIR/voxbridge-nccl-check"
CUDA_ENV="$BIN_DIR/voxbridge-cuda-env"
UTIL="$HERE/gpu/gpu_check_util.py"
ANCHOR="$HERE/gpu/torch_anchor.py"
FAILED=0
# torch runs with the environment it was started with (our LD_LIBRARY_PATH could shadow its own
# CUDA libraries); saved before the libs stage changes it.
ORIG_LD_SET=${LD_LIBRARY_PATH+1}
ORIG_LD="${LD_LIBRARY_PATH-}"

skipped() { case "$SKIP" in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
now() { date +%s; }

json_str() {
  local s
  s="$(printf '%s' "$1" | tr -d '\000-\010\013\014\016-\037')"
  s="${s//\\/\\\\}"
  s="${s//\"/\\\"}"
  s="${s//$'\n'/\\n}"
  s="${s//$'\t'/\\t}"
  s="${s//$'\r'/}"
  printf '"%s"' "$s"
}

# record STEP STATUS SECONDS DETAIL [RESULT_JSON_OBJECT]
record() {
  local result="${5:-}"
  case "$result" in '{'*'}') ;; *) result="" ;; esac
  printf '{"step":%s,"status":%s,"seconds":%s,"detail":%s%s}\n' "$(json_str "$1")" "$(json_str "$2")" \
    "${3:-0}" "$(json_str "$4")" "${result:+,\"result\":$result}" >>"$STEPS"
  printf '%-30s %-15s %5ss  %s\n' "$1" "$2" "${3:-0}" "$4" | tee -a "$SUMMARY"
  case "$2" in failed* | timeout* | missing*) FAILED=1 ;; esac
}

tail_of() { [ -f "$1" ] && tail -c "${2:-600}" "$1" | tr '\n' ' ' || true; }

# run_cmd NAME CAP MIN LOG -- CMD...: runs CMD under min(CAP, budget left) seconds, output to
# LOG. Sets RC (exit status, "plan" in a dry run, "budget" when less than MIN seconds are left),
# SECS and LIMIT.
run_cmd() {
  local name="$1" cap="$2" min="$3" log="$4"
  shift 5
  SECS=0
  LIMIT=$cap
  if [ "$DRY" = 1 ]; then
    printf '[plan] %-28s timeout %4ss: %s\n' "$name" "$cap" "$(printf '%q ' "$@")"
    RC=plan
    return 0
  fi
  local left=$((DEADLINE - $(now) - RESERVE))
  if [ "$left" -lt "$min" ]; then
    RC=budget
    return 0
  fi
  [ "$left" -lt "$cap" ] && LIMIT=$left
  echo "== $name (timeout ${LIMIT}s): $(printf '%q ' "$@")"
  local t0
  t0=$(now)
  timeout --kill-after=10 "$LIMIT" "$@" >"$log" 2>&1
  RC=$?
  SECS=$(($(now) - t0))
  return 0
}

# status of the last run_cmd: ok | timeout | failed (exit N) | planned | skipped-budget
status() {
  case "$RC" in
    plan) echo planned ;;
    budget) echo skipped-budget ;;
    0) echo ok ;;
    124 | 137) echo "timeout after ${LIMIT}s" ;;
    *) echo "failed (exit $RC)" ;;
  esac
}

util() {
  if [ "$DRY" = 1 ] || ! command -v python3 >/dev/null; then return 0; fi
  python3 "$UTIL" "$@" 2>/dev/null || true
}

echo "== voxbridge gpu-check $(date -u +%FT%TZ) budget ${BUDGET}s work $WORK$([ "$DRY" = 1 ] && echo ' (dry run)')"

# ---------------------------------------------------------------------------------------------
# prereqs
if bash -n "$SELF" && bash -n "$HERE/gpu/find-cuda-libs.sh"; then
  record prereqs/bash-syntax ok 0 "bash -n gpu-check.sh find-cuda-libs.sh"
else
  record prereqs/bash-syntax failed 0 "bash -n found syntax errors"
fi
for b in "$VOX" "$NCCL_CHECK"; do
  if [ -x "$b" ]; then record "prereqs/$(basename "$b")" ok 0 "$b"; else record "prereqs/$(basename "$b")" missing 0 "$b (see --bin-dir)"; fi
done
if [ -x "$CUDA_ENV" ]; then
  record prereqs/voxbridge-cuda-env ok 0 "$CUDA_ENV"
else
  record prereqs/voxbridge-cuda-env absent 0 "$CUDA_ENV absent: the bash search (scripts/gpu/find-cuda-libs.sh) is used"
fi
if [ -f "$ANCHOR" ]; then record prereqs/torch_anchor.py ok 0 "$ANCHOR"; else record prereqs/torch_anchor.py missing 0 "$ANCHOR"; fi
if [ -f "$REPO/tests/reference/mindeye2-tiny/last.pth" ]; then
  record prereqs/reference ok 0 "$REPO/tests/reference/mindeye2-tiny"
else
  record prereqs/reference missing 0 "$REPO/tests/reference/mindeye2-tiny (carry the checkout's tests/reference)"
fi
for tool in python3 nvidia-smi timeout; do
  if command -v "$tool" >/dev/null; then
    record "prereqs/$tool" ok 0 "$(command -v "$tool")"
  elif [ "$DRY" = 1 ] || [ "$tool" = nvidia-smi ]; then
    record "prereqs/$tool" absent 0 "not on PATH (needed on the GPU machine)"
  else
    record "prereqs/$tool" missing 0 "not on PATH"
  fi
done
GPU_INFO=""
if [ "$DRY" = 0 ] && command -v nvidia-smi >/dev/null; then
  GPU_INFO="$(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 | head -n 1)"
  echo "GPU: $GPU_INFO"
fi

# ---------------------------------------------------------------------------------------------
# libs: the environment every voxbridge process of the check runs with
export CUBECL_AUTOTUNE_LEVEL="$AUTOTUNE"
export XDG_CACHE_HOME="$WORK/xdg-cache"
CACHE="$WORK/cubecl-cache"
mkdir -p "$CACHE" "$XDG_CACHE_HOME"
# cubecl reads cubecl.toml from its working folder upwards: compiled PTX and autotune results go
# to one folder kept for the whole run (by default it would cache no PTX at all and put autotune
# results beside whatever Cargo.toml is above the working folder).
printf '[autotune]\nlevel = "%s"\ncache = { file = "%s" }\n\n[compilation]\ncache = { file = "%s" }\n' \
  "$AUTOTUNE" "$CACHE" "$CACHE" >"$WORK/cubecl.toml"
cd "$WORK" || exit 1
if [ "$DRY" = 1 ]; then
  if [ -x "$CUDA_ENV" ]; then
    printf '[plan] %-28s %s\n' libs "eval \"\$($CUDA_ENV)\"   # LD_LIBRARY_PATH, CUDA_PATH"
  else
    printf '[plan] %-28s %s\n' libs ". scripts/gpu/find-cuda-libs.sh; find_cuda_libs $WORK/cuda-links"
  fi
  record libs planned 0 "CUBECL_AUTOTUNE_LEVEL=$AUTOTUNE (bench: $BENCH_AUTOTUNE), cubecl cache $CACHE"
elif [ -x "$CUDA_ENV" ]; then
  t0=$(now)
  if "$CUDA_ENV" >"$WORK/cuda-env.sh" 2>"$WORK/logs/libs.log"; then
    # shellcheck disable=SC1091
    . "$WORK/cuda-env.sh"
    record libs ok $(($(now) - t0)) "voxbridge-cuda-env: CUDA_PATH=$CUDA_PATH; $(tail_of "$WORK/logs/libs.log" 400)"
  else
    record libs failed $(($(now) - t0)) "$(tail_of "$WORK/logs/libs.log" 1500)"
  fi
else
  t0=$(now)
  # shellcheck disable=SC1091
  . "$HERE/gpu/find-cuda-libs.sh"
  if find_cuda_libs "$WORK/cuda-links" >"$WORK/logs/libs.log" 2>&1; then
    record libs ok $(($(now) - t0)) "find-cuda-libs.sh: $(tail_of "$WORK/logs/libs.log" 400)"
  else
    record libs failed $(($(now) - t0)) "$(tail_of "$WORK/logs/libs.log" 1500)"
  fi
fi
echo "env: LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-} CUDA_PATH=${CUDA_PATH:-} CUBECL_AUTOTUNE_LEVEL=$CUBECL_AUTOTUNE_LEVEL"

# ---------------------------------------------------------------------------------------------
# nccl: one rank
if skipped nccl; then
  record nccl skipped 0 "--skip nccl"
else
  for check in "allreduce 64 20" deadline stall; do
    name="nccl/${check%% *}"
    log="$WORK/logs/${name//\//-}.log"
    # shellcheck disable=SC2086
    case "$check" in
      stall) run_cmd "$name" 45 20 "$log" -- "$NCCL_CHECK" $check ;;
      *) run_cmd "$name" 60 15 "$log" -- "$NCCL_CHECK" $check ;;
    esac
    st="$(status)"
    result="$(util jsonline "$log" "${check%% *}")"
    if [ "$check" = stall ] && [ "$RC" != plan ] && [ "$RC" != budget ]; then
      # Expected: the stall guard aborts the process naming the call, well before the timeout
      # (or NCCL itself returns an error: also no silent hang).
      if grep -q "ncclCommInitRank on rank 0 of 2" "$log" && [ "$RC" != 0 ] && [ "$RC" != 124 ] && [ "$RC" != 137 ]; then
        st=ok
      elif grep -q '"check":"stall"' "$log"; then
        st=ok
      else
        st="failed (exit $RC, no stall report)"
      fi
    fi
    record "$name" "$st" "$SECS" "$(tail_of "$log" 700)" "$result"
  done
fi

# ---------------------------------------------------------------------------------------------
# train: tiny data, 50 steps, CPU (background) vs CUDA
EXP="$WORK/tiny-50.toml"
CPU_PID=""
if skipped train; then
  record train skipped 0 "--skip train"
else
  run_cmd train/simulate 90 20 "$WORK/logs/simulate.log" -- "$VOX" data simulate --preset tiny --seed 0 --out "$WORK/data"
  record train/simulate "$(status)" "$SECS" "$(tail_of "$WORK/logs/simulate.log" 300)"
  # The e2e tests' tiny experiment (tests/train_cli.rs), 5 nominal epochs of 10 steps.
  cat >"$EXP" <<EOF
name = "gpu-check-tiny"
[data]
manifest = "$WORK/data/manifest.toml"
train_subjects = [2, 3]
[train]
seed = 0
batch_size = 8
epochs = 5
mixup_pct = 0.25
max_steps = 50
samples_per_epoch = 80
[model]
hidden = 32
blocks = 1
prior_depth = 1
prior_dim_head = 16
[eval]
loops = 5
prior_steps = 4
EOF
  CPU_ARGS=(train "$EXP" --out "$WORK/runs/tiny-cpu" --device cpu --precision fp32)
  if [ "$DRY" = 1 ]; then
    printf '[plan] %-28s timeout %4ss: %s &\n' train/cpu 300 "$(printf '%q ' "$VOX" "${CPU_ARGS[@]}")"
    record train/cpu planned 0 "in the background while train/cuda and parity run"
  elif [ "$RC" = 0 ]; then
    echo "== train/cpu in the background: $(printf '%q ' "$VOX" "${CPU_ARGS[@]}")"
    CPU_T0=$(now)
    timeout --kill-after=10 300 "$VOX" "${CPU_ARGS[@]}" >"$WORK/logs/train-cpu.log" 2>&1 &
    CPU_PID=$!
  fi
  run_cmd train/cuda 200 40 "$WORK/logs/train-cuda.log" -- \
    "$VOX" train "$EXP" --out "$WORK/runs/tiny-cuda" --device cuda --precision fp32
  record train/cuda "$(status)" "$SECS" "$(tail_of "$WORK/logs/train-cuda.log" 500)"
fi

# ---------------------------------------------------------------------------------------------
# parity: MindEye2's reference outputs (tests/reference/mindeye2-tiny, computed with the original
# PyTorch code) reproduced by `voxbridge predict --device cuda` from the original checkpoint
if skipped parity; then
  record parity skipped 0 "--skip parity"
else
  REF="$REPO/tests/reference/mindeye2-tiny"
  mkdir -p "$WORK/parity"
  for s in 0 1 2; do
    name="parity/subj$s"
    util npy "$REF/inputs.safetensors" "subj$s.voxels" "$WORK/parity/subj$s.npy" >/dev/null
    run_cmd "$name" 90 20 "$WORK/logs/parity-subj$s.log" -- "$VOX" predict --device cuda \
      --checkpoint "$REF/last.pth" --subject "$s" --voxels "$WORK/parity/subj$s.npy" --out "$WORK/parity/subj$s.safetensors"
    st="$(status)"
    result=""
    if [ "$RC" = 0 ]; then
      # 2e-3 of each output's scale: the f32 matmuls run as TF32 on tensor cores (8.9e-4 measured
      # on a small graph's gradients on an H200); the CPU build matches to 1e-5 (tests/model_cli.rs).
      result="$(util close "$WORK/parity/subj$s.safetensors" "$REF/outputs.safetensors" "subj$s" 2e-3 backbone clip_voxels)"
      case "$result" in *'"pass": true'*) ;; *) st="failed (outputs apart)" ;; esac
    fi
    record "$name" "$st" "$SECS" "$(tail_of "$WORK/logs/parity-subj$s.log" 300)" "$result"
  done
fi

# ---------------------------------------------------------------------------------------------
# train: wait for the CPU run, compare
if [ -n "$CPU_PID" ]; then
  wait "$CPU_PID"
  CPU_RC=$?
  RC=$CPU_RC
  LIMIT=300
  SECS=$(($(now) - CPU_T0))
  record train/cpu "$(status)" "$SECS" "$(tail_of "$WORK/logs/train-cpu.log" 500)"
  if [ "$CPU_RC" = 0 ] && [ -f "$WORK/runs/tiny-cuda/metrics/steps.csv" ]; then
    result="$(util losses "$WORK/runs/tiny-cpu/metrics/steps.csv" "$WORK/runs/tiny-cuda/metrics/steps.csv")"
    case "$result" in
      *'"pass": true'*) st=ok ;;
      *'"pass": false'*) st="failed (losses apart)" ;;
      *) st="failed (no comparison)" ;;
    esac
    record train/compare "$st" 0 "CUDA vs CPU losses, 50 steps (tolerances in scripts/gpu/gpu_check_util.py)" "$result"
  else
    record train/compare skipped 0 "a run did not finish"
  fi
elif [ "$DRY" = 1 ] && ! skipped train; then
  printf '[plan] %-28s %s\n' train/compare "python3 $UTIL losses runs/tiny-cpu/metrics/steps.csv runs/tiny-cuda/metrics/steps.csv"
  record train/compare planned 0 "CUDA vs CPU losses"
fi

# ---------------------------------------------------------------------------------------------
# bench: voxbridge vs torch_anchor.py, same GPU, one after the other
if skipped bench; then
  record bench skipped 0 "--skip bench"
else
  for combo in "released bf16" "released tf32" "p1-big bf16" "p1-big tf32" "p1 bf16" "p1 tf32"; do
    config="${combo% *}"
    precision="${combo#* }"
    case "$config" in
      released) vox_config=released torch_config=released steps=10 warmup=3 vcap=180 vmin=60 tcap=120 tmin=40 ;;
      p1-big) vox_config=P1-big torch_config=P1-big steps=20 warmup=5 vcap=100 vmin=25 tcap=60 tmin=15 ;;
      *) vox_config=P1 torch_config=P1 steps=20 warmup=5 vcap=100 vmin=25 tcap=60 tmin=15 ;;
    esac
    # torch: bf16 = autocast (fp32 weights, grads, AdamW), as the anchors' "bf16 autocast, eager";
    # tf32 = fp32 with TF32 matmuls (MindEye2's notebook setting).
    case "$precision" in
      bf16) torch_precision=(--precision bf16) ;;
      *) torch_precision=(--precision fp32 --tf32) ;;
    esac
    vjson="$WORK/bench/voxbridge-$config-$precision.json"
    tjson="$WORK/bench/torch-$config-$precision.json"
    name="bench/$config-$precision"
    run_cmd "$name/voxbridge" "$vcap" "$vmin" "$WORK/logs/bench-vox-$config-$precision.log" -- \
      env CUBECL_AUTOTUNE_LEVEL="$BENCH_AUTOTUNE" "$VOX" bench train --device cuda --precision "$precision" \
      --config "$vox_config" --steps "$steps" --warmup "$warmup" --json "$vjson"
    record "$name/voxbridge" "$(status)" "$SECS" "$(tail_of "$WORK/logs/bench-vox-$config-$precision.log" 400)"
    if [ "$ORIG_LD_SET" = 1 ]; then torch_env=(env -u CUDA_PATH LD_LIBRARY_PATH="$ORIG_LD"); else torch_env=(env -u CUDA_PATH -u LD_LIBRARY_PATH); fi
    run_cmd "$name/torch" "$tcap" "$tmin" "$WORK/logs/bench-torch-$config-$precision.log" -- \
      "${torch_env[@]}" PYTHONUNBUFFERED=1 python3 "$ANCHOR" "$torch_config" --device cuda \
      "${torch_precision[@]}" --steps "$steps" --warmup "$warmup" --json "$tjson" --label gpu-check
    record "$name/torch" "$(status)" "$SECS" "$(tail_of "$WORK/logs/bench-torch-$config-$precision.log" 400)"
    if [ -f "$vjson" ] || [ -f "$tjson" ]; then
      record "$name" compared 0 "voxbridge vs torch_anchor.py" "$(util bench "$vjson" "$tjson" "$config" "$precision")"
    fi
  done
fi

# ---------------------------------------------------------------------------------------------
# report
ELAPSED=$(($(now) - START))
{
  printf '{"voxbridge_gpu_check":1,"dry_run":%s,"started_unix":%s,"elapsed_s":%s,"budget_s":%s,' \
    "$([ "$DRY" = 1 ] && echo true || echo false)" "$START" "$ELAPSED" "$BUDGET"
  printf '"gpu":%s,"bin_dir":%s,"work":%s,' "$(json_str "$GPU_INFO")" "$(json_str "$BIN_DIR")" "$(json_str "$WORK")"
  printf '"env":{"LD_LIBRARY_PATH":%s,"CUDA_PATH":%s,"CUBECL_AUTOTUNE_LEVEL":%s,"bench_autotune":%s,"cubecl_cache":%s},' \
    "$(json_str "${LD_LIBRARY_PATH:-}")" "$(json_str "${CUDA_PATH:-}")" "$(json_str "$AUTOTUNE")" \
    "$(json_str "$BENCH_AUTOTUNE")" "$(json_str "$CACHE")"
  printf '"failed":%s,"steps":[' "$([ "$FAILED" = 1 ] && echo true || echo false)"
  first=1
  while IFS= read -r line; do
    [ "$first" = 1 ] || printf ','
    first=0
    printf '%s' "$line"
  done <"$STEPS"
  printf ']}\n'
} >"$WORK/report.json"
[ -n "$OUT_FILE" ] && { mkdir -p "$(dirname "$OUT_FILE")" && cp "$WORK/report.json" "$OUT_FILE"; }
if [ -n "$LOG_DIR" ]; then
  mkdir -p "$LOG_DIR" && tar -czf "$LOG_DIR/gpu-check-logs.tar.gz" -C "$WORK" logs bench steps.jsonl summary.txt 2>/dev/null
fi
echo "== summary (${ELAPSED}s of ${BUDGET}s; report ${OUT_FILE:-$WORK/report.json}$([ "$DRY" = 1 ] && [ -z "$OUT_FILE" ] && [ "$OWN_WORK" = 1 ] && echo ', removed with the dry run')"
cat "$SUMMARY"
if [ "$DRY" = 1 ]; then
  echo "dry run: nothing ran on a GPU"
  cd "$REPO" && [ "$OWN_WORK" = 1 ] && rm -rf "$WORK"
  exit 0
fi
exit "$FAILED"
