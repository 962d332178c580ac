#!/usr/bin/env bash
# `collage sweep --slurm` on a real one-node SLURM cluster started for the test (tests/cli/slurm_cluster.sh):
# a 3-task array with --wait merges into a store equal to a local unsharded run; a task cancelled mid-run
# leaves the merged store incomplete, `collage status` shows progress during the run and the failed task after
# it, and rerunning the same command completes the store (equal again). Skipped (exit 77) only where SLURM
# cannot start. Usage: slurm_sweep.sh COLLAGE_BINARY
set -u
collage="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
here="$(cd "$(dirname "$0")" && pwd)"
export OMP_WAIT_POLICY=passive
work=$(mktemp -d /tmp/collage_slurm_test.XXXXXX)
source "$here/slurm_cluster.sh"
cleanup() {
  [ -n "${SLURM_CONF:-}" ] && scancel --quiet --user="$(id -un)" 2>/dev/null
  for _ in $(seq 40); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.25; done
  slurm_cluster_stop
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT
if ! slurm_cluster_start "$work/cluster" 2; then
  echo "SKIP: a one-node SLURM cluster could not start here: $slurm_cluster_why"
  exit 77
fi
echo "cluster up (SLURM_CONF=$SLURM_CONF)"
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }

cd "$work"
# 3 generated collages x 3 runs = 9 units, 3 per task (long enough to cancel a task between units); cheap metrics.
cat > sweep.json <<'JSON'
{
  "dataset": {"generate": {"world": "shapesworld", "n": 3, "seed": 0, "size": 64}},
  "seeds": [0, 1],
  "steps": 16,
  "metrics": ["ciede2000", "ssim"],
  "runs": [{"method": "sdedit", "grid": {"strength": [0.5, 0.7, 0.9]}}]
}
JSON
t0=$(date +%s)
"$collage" --threads 1 sweep sweep.json --out local.h5 >local.log 2>&1
check "the local unsharded run completes" '[ $? -eq 0 ] && [ -s local.h5 ]'
echo "   local run: $(( $(date +%s) - t0 )) s"

# 1. A 3-task array with --wait: the merged store equals the local run.
t0=$(date +%s)
"$collage" --threads 1 sweep sweep.json --out a.h5 --slurm 3 --wait >a.log 2>&1; rc=$?
echo "   --slurm 3 --wait: $(( $(date +%s) - t0 )) s"
check "--slurm 3 --wait exits 0" '[ $rc -eq 0 ]' || tail -20 a.log
check "the readable sbatch scripts are written next to the store" \
  'grep -q "^#SBATCH --array=0-2" a.slurm/task.sbatch && grep -q -- "--shard \$i/3" a.slurm/task.sbatch && grep -q "status .*--merge" a.slurm/merge.sbatch'
check "each task wrote its shard store" '[ -s a.slurm/shard-0-of-3.h5 ] && [ -s a.slurm/shard-1-of-3.h5 ] && [ -s a.slurm/shard-2-of-3.h5 ]'
cmp_a=$(/usr/bin/python3 "$here/../../scripts/compare_stores.py" local.h5 a.h5); rc=$?
echo "   merged vs local: $cmp_a"
check "the merged store equals the local unsharded run (items, images, scores)" '[ $rc -eq 0 ]'
out=$("$collage" status a.h5 2>&1)
check "status of a finished sweep: every task done, 9/9 units" \
  '[[ "$out" == *"total: 9/9 units done"* ]] && [ "$(grep -c " done " <<<"$out")" -eq 3 ]' || echo "$out"

out=$("$collage" status local.h5 2>&1)
check "status of a plain store: units done / total per run" \
  '[[ "$out" == *"total: 9/9 units done"* ]] && [[ "$out" == *"3/3  sdedit strength=0.7"* ]]' || echo "$out"

# 2. Cancel one task mid-run: the merge reports it, status shows it, a rerun completes the store.
"$collage" --threads 1 sweep sweep.json --out b.h5 --slurm 3 >b.log 2>&1
array=$(/usr/bin/python3 -c 'import json; print(json.load(open("b.slurm/state.json"))["array_job"])')
merge=$(/usr/bin/python3 -c 'import json; print(json.load(open("b.slurm/state.json"))["merge_job"])')
running_status="" cancelled=0
for _ in $(seq 600); do
  state=$(squeue -h -j "${array}_1" -o %T 2>/dev/null)
  if [ "$state" = "RUNNING" ]; then
    s=$("$collage" status b.h5 2>&1)
    [ -z "$running_status" ] && running_status="$s"
    # Cancel once its first unit is in the store (mid-run), or right away if it is already past that.
    if grep -Eq "^ +1  RUNNING +[12]/3" <<<"$s"; then running_status="$s"; scancel "${array}_1"; cancelled=1; break; fi
  elif [ -n "$running_status" ] || [ -z "$(squeue -h -j "$array" 2>/dev/null)" ]; then
    break
  fi
  sleep 0.1
done
check "status during the run shows the task RUNNING with units done / total and the runs" \
  '[[ "$running_status" == *"RUNNING"* ]] && [[ "$running_status" == *"units done"* ]] && [[ "$running_status" == *"strength=0.9"* ]]' ||
  echo "$running_status"
echo "$running_status" | sed 's/^/   | /'
check "task 1 was cancelled mid-run (1 or 2 of its 3 units in its store)" '[ $cancelled -eq 1 ]'
for _ in $(seq 600); do [ -z "$(squeue -h -j "$array,$merge" 2>/dev/null)" ] && break; sleep 0.2; done
out=$("$collage" status b.h5 2>&1)
echo "$out" | sed 's/^/   | /'
check "status after the merge names the failed task and the incomplete merge" \
  '[[ "$out" == *"failed tasks: 1 "* ]] && [[ "$out" == *"incomplete"* ]]'
check "the incomplete merge holds the other tasks' items" '[ "$(/usr/bin/python3 -c "import h5py; print(len(h5py.File(\"b.h5\")[\"items\"]))")" -ge 12 ]'
"$collage" --threads 1 sweep sweep.json --out b.h5 --slurm 3 --wait >b2.log 2>&1; rc=$?
check "rerunning the command resumes and exits 0" '[ $rc -eq 0 ]' || tail -20 b2.log
check "the rerun submitted only the cancelled task" 'grep -q "runs task(s) 1 of 3" b2.log' || head -3 b2.log
cmp_b=$(/usr/bin/python3 "$here/../../scripts/compare_stores.py" local.h5 b.h5); rc=$?
echo "   resumed merged vs local: $cmp_b"
check "the resumed merged store equals the local unsharded run" '[ $rc -eq 0 ]'

# 3. Clear refusals.
err=$("$collage" sweep sweep.json --out b.h5 --slurm 4 2>&1); rc=$?
check "another task count is refused, naming the one set up" '[ $rc -eq 1 ] && [[ "$err" == *"--slurm 3"* ]]'
err=$("$collage" sweep sweep.json --out local.h5 --slurm 3 2>&1); rc=$?
check "a store that is not a merge of shards is refused" '[ $rc -eq 1 ] && [[ "$err" == *"not a merge"* ]]'
err=$("$collage" sweep sweep.json --out x.h5 --partition debug 2>&1); rc=$?
check "--partition without --slurm is refused, naming --slurm" '[ $rc -ne 0 ] && [ $rc -ne 1 ] && [[ "$err" == *"--slurm"* ]]'
# 4. GPU options pass through to the task script (this cluster has no GPUs, so sbatch refuses the job and the
#    error says so).
err=$("$collage" --device cuda sweep sweep.json --out g.h5 --slurm 2 --gres gpu:1 --time 0:10:00 2>&1); rc=$?
check "--gres and --device reach the task script; sbatch's refusal is reported" \
  '[ $rc -eq 1 ] && [[ "$err" == *"sbatch"* ]] && grep -q "^#SBATCH --gres=gpu:1" g.slurm/task.sbatch && grep -q "^#SBATCH --time=0:10:00" g.slurm/merge.sbatch && grep -q -- "--device.*cuda" g.slurm/task.sbatch' ||
  { echo "$err"; cat g.slurm/task.sbatch; }
exit $fail
