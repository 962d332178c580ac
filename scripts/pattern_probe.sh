#!/usr/bin/env bash
# Can the model draw the patterns apart? (the reason the TI claim for unnamed patterns is not shown; README)
# Same seeds, prompts that differ in one word: mean absolute pixel difference per pair of prompts, and what the
# analyser reads as the pattern of the images of striped prompts.
#   bash scripts/pattern_probe.sh [MODEL] [OUT_DIR]      (about 1 min on 2 threads)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-assets/shapesworld/model}
OUT=${2:-/tmp/pattern_probe}
C=${COLLAGE:-build/collage}
mkdir -p "$OUT"
declare -A P=(
  [striped_red]="a striped red square on grass" [dotted_red]="a dotted red square on grass"
  [plain_red]="a red square on grass" [striped_blue]="a striped blue square on grass"
  [dotted_blue]="a dotted blue square on grass"
)
for k in "${!P[@]}"; do
  $C --threads 2 txt2img --model "$MODEL" --prompt "${P[$k]}" --seeds 1-8 --steps 50 --guidance 5 --out "$OUT/$k.png" > /dev/null 2>&1
done
for k in striped_red striped_blue dotted_red dotted_blue; do
  for s in 1 2 3 4 5 6 7 8; do
    colour=${k#*_}
    # the pattern of the largest object of the prompt's colour (table rows: | colour | shape | pattern | ...)
    read -r pat < <($C sandbox analyse "$OUT/${k}_seed$s.png" |
      awk -F'|' -v c="$colour" '{gsub(/ /, "", $2); gsub(/ /, "", $3); gsub(/ /, "", $4); gsub(/ /, "", $9)}
        $2 == c && $9 + 0 > best { best = $9 + 0; p = $4 "_" $3 } END { print (p == "" ? "no_" c "_object" : p) }')
    echo "$k seed $s: $pat"
  done
done > "$OUT/analyser.txt"
/usr/bin/python3 - "$OUT" <<'PY'
import sys
import numpy as np
from PIL import Image
out = sys.argv[1]
load = lambda k, s: np.asarray(Image.open(f"{out}/{k}_seed{s}.png").convert("RGB"), dtype=np.float64) / 255
def diff(a, b):
    return np.mean([np.abs(load(a, s) - load(b, s)).mean() for s in range(1, 9)])
for a, b in [("striped_red", "dotted_red"), ("striped_blue", "dotted_blue"), ("striped_red", "plain_red"),
             ("striped_red", "striped_blue")]:
    print(f"{a} vs {b}: mean |difference| per pixel {diff(a, b):.4f} (8 seeds)")
PY
echo "analyser's pattern reading (striped and dotted prompts):"
for k in striped_red striped_blue dotted_red dotted_blue; do
  printf '  %s: ' "$k"; grep "^$k " "$OUT/analyser.txt" | sed 's/.*: //' | sort | uniq -c | tr '\n' ';'; echo
done
