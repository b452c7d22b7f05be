#!/usr/bin/env bash
# Stops the SLURM daemons scripts/slurm-up.sh DIR started and waits (up to 10 s) until they
# have exited, so DIR can be removed (munged stays: it is shared).
dir=${1:?usage: slurm-down.sh DIR}
pids=()
for file in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
  [[ -s $file ]] && pids+=("$(cat "$file")")
done
((${#pids[@]})) || exit 0
kill "${pids[@]}" 2>/dev/null
for _ in $(seq 100); do
  alive=0
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  ((alive)) || exit 0
  sleep 0.1
done
kill -9 "${pids[@]}" 2>/dev/null
exit 0
