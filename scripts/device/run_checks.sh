#!/usr/bin/env bash
# The whole GPU session in one command (device time is scarce): build device_check, golden parity on CUDA
# in float32 and float16, the SD 1.5 UNet CFG step timed with its peak GPU memory, then train the embedded
# ShapesWorld model for the time left. Results go to $OUT (the device tool brings them back):
# device.log, and run.tar.part-* (split below the per-file limit): the newest checkpoint (EMA weights in
# float16 + state.json) and loss.csv, i.e. a run folder that --resume continues (and exports).
#   OUT=/tmp/out BUDGET_S=560 [RESUME_FROM=assets/shapesworld/run2] [TRAIN_CONFIG=...] [CHECKS=0] \
#     bash scripts/device/run_checks.sh
# CHECKS=0 skips the parity and the SD 1.5 timing (shown by an earlier lease) and trains for all the time.
# CONTINUE=1 continues the previous call's training on the same warm machine (no build, optimiser kept).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/device_out}
BUDGET_S=${BUDGET_S:-560}     # the command's wall-clock limit, minus a margin
TRAIN_CONFIG=${TRAIN_CONFIG:-assets/shapesworld/train_config.json}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device.log") 2>&1
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
g++ --version | head -1

export LD_LIBRARY_PATH=/tmp/collage_devdeps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}  # ICU for the transitive deps
B=/tmp/device_check
G=tests/data/golden
# CONTINUE=1 (a second call on the same warm machine): keep the binary, and resume /tmp/swtrain in place
# with its optimiser state.
if [ "${CONTINUE:-0}" = 1 ] && [ -x $B ]; then
  echo "== continuing: binary and /tmp/swtrain from the previous call"
else
  JOBS=$(nproc) bash scripts/device/build.sh || { echo "BUILD FAILED after $(elapsed) s"; exit 1; }
  echo "== build done at $(elapsed) s"
  # Gradients through attention use the blockwise path; if it disagrees with the plain graph on this device
  # (or is over 2x slower, or fails), train with the plain graph instead.
  $B attention; rc=$?
  echo "== attention check exit $rc at $(elapsed) s"
  if [ $rc != 0 ]; then echo "COLLAGE_ATTENTION_GRADIENTS=graph" > /tmp/attention.env; else : > /tmp/attention.env; fi
fi
if [ -s /tmp/attention.env ]; then export $(cat /tmp/attention.env); echo "== training with $(cat /tmp/attention.env)"; fi
if [ "${CHECKS:-1}" != 0 ]; then
$B parity $G float32; echo "== parity float32 exit $? at $(elapsed) s"
$B parity $G float16; echo "== parity float16 exit $? at $(elapsed) s"

peak_mem() {  # runs "$@" while sampling the GPU's used memory; prints the peak (includes the CUDA context)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 20 > /tmp/mem.txt &
  local pid=$!
  "$@"; local rc=$?
  kill $pid; wait $pid 2>/dev/null
  echo "   peak GPU memory used (nvidia-smi, incl. CUDA context): $(sort -n /tmp/mem.txt | tail -1) MiB"
  return $rc
}
SD15=$G/configs/stable-diffusion-v1-5/unet/config.json
peak_mem $B bench-unet $SD15 float16 64 2 10; echo "== bench fp16 exit $? at $(elapsed) s"
peak_mem $B bench-unet $SD15 float32 64 2 5; echo "== bench fp32 exit $? at $(elapsed) s"
fi

# RESUME_FROM=assets/shapesworld/run2 continues that run (its checkpoints/ and loss.csv) instead of starting.
left=$(( BUDGET_S - $(elapsed) - 60 ))   # 60 s for the export and the packing
if [ "$left" -gt 60 ]; then
  minutes=$(python3 -c "print(round($left / 60.0, 2))")
  resume=""
  if [ "${CONTINUE:-0}" = 1 ] && [ -d /tmp/swtrain/checkpoints ]; then
    resume=resume
  else
    rm -rf /tmp/swtrain
    if [ -n "${RESUME_FROM:-}" ]; then cp -r "$RESUME_FROM" /tmp/swtrain; resume=resume; fi
  fi
  echo "== training for $minutes min ${RESUME_FROM:+(resuming $RESUME_FROM)}"
  $B train "$TRAIN_CONFIG" /tmp/swtrain "$minutes" 0 $resume; echo "== train exit $? at $(elapsed) s"
  # Bring back what a later run needs even if the export failed: the newest checkpoint's EMA weights in
  # float16 (the per-file limit is 16 MB: the tarball is split), its state.json and the loss log; the model
  # is exported here from them (64 MB come back at most).
  ck=$(ls -d /tmp/swtrain/checkpoints/step_* 2>/dev/null | tail -1)
  if [ -n "$ck" ]; then
    rm -rf /tmp/pack /tmp/run.tar
    mkdir -p /tmp/pack/run/checkpoints/$(basename "$ck")
    python3 - "$ck/ema.safetensors" "/tmp/pack/run/checkpoints/$(basename "$ck")/ema.safetensors" <<'PY' || cp "$ck/ema.safetensors" /tmp/pack/run/checkpoints/$(basename "$ck")/
import sys
from safetensors.torch import load_file, save_file
save_file({k: v.half() for k, v in load_file(sys.argv[1]).items()}, sys.argv[2], metadata={"format": "pt"})
PY
    cp "$ck/state.json" /tmp/pack/run/checkpoints/$(basename "$ck")/
    cp /tmp/swtrain/loss.csv /tmp/pack/run/
    tar cf /tmp/run.tar -C /tmp/pack run
    split -b 15M -d /tmp/run.tar "$OUT/run.tar.part-"
    ls -la "$OUT"
    echo "== here: cat run.tar.part-* | tar x; then collage train-model ... --out run --resume --steps N exports run/model"
  fi
else
  echo "== no time left to train ($left s)"
fi
echo "== done at $(elapsed) s"
