#!/usr/bin/env bash
# How much one competing busy process slows `collage` down, with the OpenMP runtime's default wait policy (the
# old behaviour) and with what `collage` now sets itself (docs/threading.md). Two workloads, each on --threads 2:
#   txt2img: the embedded sandbox model, 8 seeds x 20 CFG steps (whole command, loading included)
#   unet:    `collage bench unet` (sd15 config, random weights, latent 16, batch 2): mean of 3 evaluations
# Runs are interleaved (policy x quiet/contended, repeated), the busy process is one `yes > /dev/null`
# started and stopped by this script. Prints the median seconds and the ratio contended / quiet per policy.
# Usage: scripts/bench_contention.sh [BUILD_DIR=build] [REPEATS=3] [POLICIES="default passive"]
#   policies: default (COLLAGE_NO_REEXEC=1, nothing set: the runtime's default spin-then-sleep), new (no
#   variable: collage's own choice), passive (OMP_WAIT_POLICY=passive), spinN (GOMP_SPINCOUNT=N), active.
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build}"; repeats="${2:-3}"; policies="${3:-default new}"; workloads="${4:-txt2img unet}"
collage="$(pwd)/$build/collage"
[ -x "$collage" ] || { echo "no $collage: build first" >&2; exit 2; }
work=$(mktemp -d); busy=""
cleanup() { [ -n "$busy" ] && kill "$busy" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# Runs one workload under one policy; prints its seconds.
run() {
  local workload="$1" policy="$2" env_args=(env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u COLLAGE_NO_REEXEC)
  case "$policy" in
    default) env_args+=(COLLAGE_NO_REEXEC=1) ;;
    new) ;;
    passive) env_args+=(OMP_WAIT_POLICY=passive) ;;
    active) env_args+=(OMP_WAIT_POLICY=active) ;;
    spin*) env_args+=(GOMP_SPINCOUNT="${policy#spin}") ;;
    *) echo "unknown policy $policy" >&2; exit 2 ;;
  esac
  if [ "$workload" = txt2img ]; then
    local t0 t1
    t0=$(date +%s.%N)
    "${env_args[@]}" "$collage" --threads 2 txt2img --prompt "a red circle and a blue square" --seeds 1-8 --steps 20 \
      --out "$work/t.png" >/dev/null 2>&1
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l
  else
    "${env_args[@]}" "$collage" --threads 2 bench unet --config sd15 --latent 16 --batch 2 --repeat 3 --matmul 512 2>/dev/null |
      sed -n 's/.*(mean \([0-9.]*\) s).*/\1/p'
  fi
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

declare -A times
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $repeats repeats, policies: $policies"
for rep in $(seq "$repeats"); do
  for workload in $workloads; do
    for policy in $policies; do
      for condition in quiet busy; do
        if [ "$condition" = busy ]; then
          yes > /dev/null & busy=$!
          sleep 0.5
        fi
        s=$(run "$workload" "$policy")
        if [ -n "$busy" ]; then kill "$busy"; wait "$busy" 2>/dev/null || true; busy=""; fi
        times[$workload,$policy,$condition]+="$s "
        printf '  rep %d %-8s %-10s %-6s %7.2f s   (load %s)\n' "$rep" "$workload" "$policy" "$condition" "$s" \
          "$(cut -d' ' -f1 /proc/loadavg)"
      done
    done
  done
done
echo
printf '%-8s %-10s %9s %9s %8s\n' workload policy quiet_s busy_s ratio
for workload in $workloads; do
  for policy in $policies; do
    q=$(tr ' ' '\n' <<<"${times[$workload,$policy,quiet]}" | grep . | median)
    b=$(tr ' ' '\n' <<<"${times[$workload,$policy,busy]}" | grep . | median)
    printf '%-8s %-10s %9.2f %9.2f %8.2f\n' "$workload" "$policy" "$q" "$b" "$(echo "$b / $q" | bc -l)"
  done
done
