# A one-node SLURM cluster in a temporary folder, for tests (source this file; needs root and Debian's
# slurm-wlm + munge). No systemd: munged, slurmctld and slurmd run as plain processes with their state, sockets
# and logs under $SLURM_TEST_DIR, and are stopped by process id.
#   slurm_cluster_start DIR CPUS  -> 0 when the cluster accepts jobs (exports SLURM_CONF), else 1 with a reason
#   slurm_cluster_stop            -> stops the daemons it started
slurm_cluster_why=""
slurm_cluster_pids=()

slurm_cluster_start() {
  local dir="$1" cpus="${2:-2}"
  SLURM_TEST_DIR="$dir"
  mkdir -p "$dir/munge" "$dir/spool" "$dir/state" "$dir/log"
  for tool in munged slurmctld slurmd sbatch squeue scontrol; do
    command -v "$tool" >/dev/null || { slurm_cluster_why="$tool is not installed (apt-get install slurm-wlm munge)"; return 1; }
  done
  [ "$(id -u)" -eq 0 ] || { slurm_cluster_why="the test cluster needs root (slurmd runs jobs as their users)"; return 1; }
  # munge: a fresh key, socket and pid file in the folder (the key must be private to the daemon's user).
  chmod 700 "$dir/munge"
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$dir/munge/munge.key"
  local sock="$dir/munge/munge.socket"
  munged --force --key-file="$dir/munge/munge.key" --socket="$sock" --pid-file="$dir/munge/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munge/seed" >/dev/null 2>&1 ||
    { slurm_cluster_why="munged did not start: $(tail -2 "$dir/log/munged.log" 2>/dev/null)"; return 1; }
  for _ in $(seq 50); do [ -s "$dir/munge/munged.pid" ] && break; sleep 0.1; done
  slurm_cluster_pids+=("$(cat "$dir/munge/munged.pid")")
  # Ports chosen at random so that two test runs on one machine do not collide.
  local port=$((20000 + RANDOM % 20000))
  cat > "$dir/slurm.conf" <<CONF
ClusterName=collagetest
SlurmctldHost=localhost
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=600
KillWait=2
SchedulerParameters=sched_interval=2
MpiDefault=none
NodeName=localhost NodeHostname=localhost CPUs=$cpus RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -f "$SLURM_CONF" -i >/dev/null 2>&1 ||
    { slurm_cluster_why="slurmctld did not start: $(tail -3 "$dir/log/slurmctld.log" 2>/dev/null)"; return 1; }
  for _ in $(seq 50); do [ -s "$dir/slurmctld.pid" ] && break; sleep 0.1; done
  slurm_cluster_pids+=("$(cat "$dir/slurmctld.pid" 2>/dev/null)")
  slurmd -f "$SLURM_CONF" >/dev/null 2>&1 ||
    { slurm_cluster_why="slurmd did not start: $(tail -3 "$dir/log/slurmd.log" 2>/dev/null)"; return 1; }
  for _ in $(seq 50); do [ -s "$dir/slurmd.pid" ] && break; sleep 0.1; done
  slurm_cluster_pids+=("$(cat "$dir/slurmd.pid" 2>/dev/null)")
  slurm_cluster_watchdog $$
  # Ready when the node is idle.
  for _ in $(seq 60); do
    if sinfo -h -N -o "%T" 2>/dev/null | grep -q "^idle"; then return 0; fi
    sleep 0.5
  done
  slurm_cluster_why="the node did not become idle: $(sinfo -h -N -o '%T %E' 2>&1 | head -1); $(tail -3 "$dir/log/slurmctld.log" 2>/dev/null)"
  return 1
}

# When the test process OWNER dies without stopping the cluster (ctest's timeout kills it with SIGKILL), a
# detached watcher cancels the jobs and stops the daemons by their process ids.
slurm_cluster_watchdog() {
  local owner="$1" pids=()
  for ((i = ${#slurm_cluster_pids[@]} - 1; i >= 0; i--)); do pids+=("${slurm_cluster_pids[$i]}"); done
  # Double fork: the watcher is re-parented away from the test, so killing the test's process tree spares it.
  (setsid bash -c 'owner=$1; shift; while kill -0 "$owner" 2>/dev/null; do sleep 2; done
    scancel --user="$(id -un)" 2>/dev/null; sleep 3
    ours() { case "$(cat /proc/$1/comm 2>/dev/null)" in munged|slurmctld|slurmd) return 0 ;; esac; return 1; }
    for p in "$@"; do ours "$p" && kill "$p"; done; sleep 3; for p in "$@"; do ours "$p" && kill -9 "$p"; done' \
    watchdog "$owner" "${pids[@]}" </dev/null >/dev/null 2>&1 & echo $! >"$SLURM_TEST_DIR/watchdog.pid")
  slurm_cluster_watchdog_pid=$(cat "$SLURM_TEST_DIR/watchdog.pid")
}

slurm_cluster_stop() {
  local pid
  [ -n "${slurm_cluster_watchdog_pid:-}" ] && kill "$slurm_cluster_watchdog_pid" 2>/dev/null
  # Reverse order: slurmd, slurmctld, munged. Each by its own process id.
  for ((i = ${#slurm_cluster_pids[@]} - 1; i >= 0; i--)); do
    pid="${slurm_cluster_pids[$i]}"
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
  done
  for ((i = ${#slurm_cluster_pids[@]} - 1; i >= 0; i--)); do
    pid="${slurm_cluster_pids[$i]}"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  done
  slurm_cluster_pids=()
}
