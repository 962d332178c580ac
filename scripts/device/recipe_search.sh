#!/usr/bin/env bash
# Is there a recipe that trains a good embedded model in the 2-hour CPU budget? Trains several candidate configs
# side by side on one GPU machine, each for exactly the steps its config's max_steps gives (the steps 2 CPU
# threads do in 2 hours, measured beforehand), then evaluates each with eval-shapesworld (sampled on the GPU,
# float32, analysed on its CPU), plus the shipped model as the calibration against its CPU evaluation.
# The GPU only makes the search fast: every candidate sees the same scenes, steps and batches it would on a CPU.
#   OUT=/tmp/out BUDGET_S=560 CONFIGS="a.json:3 b.json:4 ..." (config:threads) bash scripts/device/recipe_search.sh
# Comes back: device.log, search.tar (each candidate's loss.csv, TRAINING.json, eval JSON) and, split below the
# per-file limit, weights.tar.part-* with the float16 model folders of the two best candidates.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/device_out}
BUDGET_S=${BUDGET_S:-560}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device.log") 2>&1
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export LD_LIBRARY_PATH=/tmp/collage_devdeps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
B=/tmp/device_check
JOBS=$(nproc) bash scripts/device/build.sh || { echo "BUILD FAILED after $(elapsed) s"; exit 1; }
echo "== build done at $(elapsed) s"

# Training stops at max_steps, or at the time cap that keeps room for the evaluations (then the log says so).
cap_min=$(python3 -c "print(round(max(1.0, ($BUDGET_S - $(elapsed) - 150) / 60.0), 2))")
names=(); pids=()
for spec in $CONFIGS; do
  cfg=${spec%%:*}; threads=${spec##*:}
  name=$(basename "$cfg" .json); names+=("$name")
  rm -rf "/tmp/search/$name"; mkdir -p "/tmp/search/$name"
  echo "== training $name with $threads threads (cap $cap_min min)"
  OMP_NUM_THREADS=$threads $B train "$cfg" "/tmp/search/$name" "$cap_min" > "/tmp/search/$name.log" 2>&1 &
  pids+=($!)
done
# Wait for these, not a bare `wait`: that also waits for the tee of the log above, i.e. forever (it did, on the
# first run: the evaluations never started).
wait "${pids[@]}"
echo "== training done at $(elapsed) s"
for n in "${names[@]}"; do echo "-- $n"; grep -E "^step|trained|error" "/tmp/search/$n.log" | tail -3; done

evaluate() {  # name model_dir
  $B eval "$2" 100 0 "/tmp/search/$1.eval.json" || echo "EVAL FAILED: $1"
}
for n in "${names[@]}"; do evaluate "$n" "/tmp/search/$n/model"; done
evaluate shipped assets/shapesworld/model
echo "== evaluations done at $(elapsed) s"

rm -rf /tmp/pack && mkdir -p /tmp/pack/search
for n in "${names[@]}"; do
  mkdir -p /tmp/pack/search/$n
  cp /tmp/search/$n/loss.csv /tmp/search/$n.log /tmp/pack/search/$n/ 2>/dev/null
  cp /tmp/search/$n/model/TRAINING.json /tmp/search/$n.eval.json /tmp/pack/search/$n/ 2>/dev/null
done
cp /tmp/search/shipped.eval.json /tmp/pack/search/ 2>/dev/null
tar cf "$OUT/search.tar" -C /tmp/pack search
# The two best by every-named-object-found come back with their weights (64 MB may come back in all).
best=$(python3 - "${names[@]}" <<'PY'
import json, sys
scores = []
for n in sys.argv[1:]:
    try: scores.append((json.load(open(f"/tmp/search/{n}.eval.json"))["all_found"], n))
    except Exception: pass
print(" ".join(n for _, n in sorted(scores, reverse=True)[:2]))
PY
)
echo "== best: $best"
if [ -n "$best" ]; then
  rm -rf /tmp/wpack && mkdir -p /tmp/wpack
  for n in $best; do cp -r "/tmp/search/$n/model" "/tmp/wpack/$n"; rm -f /tmp/wpack/$n/tokenizer/*.txt /tmp/wpack/$n/tokenizer/vocab.json; done
  tar cf /tmp/weights.tar -C /tmp/wpack .
  split -b 15M -d /tmp/weights.tar "$OUT/weights.tar.part-"
fi
ls -la "$OUT"
echo "== done at $(elapsed) s"
