#!/usr/bin/env bash
# A one-node SLURM for the tests (no accounting: `voxbridge status` falls back to squeue and
# scontrol): installs slurm-wlm and munge when missing, writes slurm.conf under DIR, starts
# munged, slurmctld and slurmd, and waits for the node to be idle. Stop with slurm-down.sh DIR.
# Usage: scripts/slurm-up.sh DIR   (then export SLURM_CONF=DIR/slurm.conf)
set -euo pipefail
dir=$(realpath -m "${1:?usage: slurm-up.sh DIR}")
mkdir -p "$dir/state" "$dir/spool"
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  echo "installing: slurm-wlm munge"
  sudo_=""; [[ $(id -u) -eq 0 ]] || sudo_=sudo
  $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
host=$(hostname -s)
mem_mb=$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 3 / 4 }' /proc/meminfo)
cpus=$(nproc)
cat > "$dir/slurm.conf" <<CONF
ClusterName=voxbridge-test
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=$((6817 + RANDOM % 1000))
SlurmdPort=$((7817 + RANDOM % 1000))
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
KillWait=30
MinJobAge=3600
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
export SLURM_CONF="$dir/slurm.conf"
install -d -o munge -g munge -m 0755 /run/munge /var/lib/munge /var/log/munge
[[ -s /etc/munge/munge.key ]] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
# munged is shared by every run: start it unless its pid file names a live munged (a second
# munged would fail on the socket lock). /proc and the pid file need nothing beyond bash, unlike
# pgrep (procps, absent from a minimal Debian).
munged_pid_file=/run/munge/munged.pid
munged_running() {
  local pid='' comm=''
  [[ -r $munged_pid_file ]] || return 1
  read -r pid < "$munged_pid_file" || [[ -n $pid ]] || return 1
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/comm ]] || return 1
  read -r comm < "/proc/$pid/comm" 2>/dev/null || return 1
  [[ $comm == munged ]]
}
munged_running || runuser -u munge -- /usr/sbin/munged --pid-file="$munged_pid_file"
slurmctld
slurmd
for _ in $(seq 300); do
  state=$(sinfo -h -o %T 2>/dev/null || true)
  [[ $state == idle ]] && { echo "slurm up: SLURM_CONF=$SLURM_CONF"; exit 0; }
  sleep 0.1
done
echo "slurm did not come up (node state: ${state:-none}); logs in $dir" >&2
tail -5 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
exit 1
