#!/usr/bin/env bash
# Stops the SLURM daemons scripts/slurm-up.sh DIR started (munged stays: it is shared).
dir=${1:?usage: slurm-down.sh DIR}
for pid in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
  [[ -s $pid ]] && kill "$(cat "$pid")" 2>/dev/null
done
exit 0
