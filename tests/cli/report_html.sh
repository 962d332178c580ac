#!/usr/bin/env bash
# The results page in a real browser: a tiny sweep (the golden tiny model, two generated 32x32 collages, a kept
# layer, an editing round, a claim), `collage report --html`, then headless Chromium loads the page from disk.
# Checks the DOM (tables, claims, noise maps, editing chain, every image loaded with pixels) and keeps the page
# and a screenshot in OUT (under the build folder). Exits 77 (skipped) only when chromium is not installed.
# usage: report_html.sh COLLAGE_BINARY GOLDEN_DIR OUT
set -u
collage="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; golden="$(cd "$2" && pwd)"; out="$3"
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
  echo "SKIPPED: chromium is not installed (scripts/setup.sh installs it); the results page was not tested"
  exit 77
fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
rm -rf "$out"; mkdir -p "$out"; out="$(cd "$out" && pwd)"
model="$work/model"; mkdir -p "$model"
ln -s "$golden/tokenizer" "$model/tokenizer"; ln -s "$golden/text_encoder_sd1" "$model/text_encoder"
ln -s "$golden/unet_sd1" "$model/unet"; ln -s "$golden/vae" "$model/vae"
ln -s "$golden/pipeline/scheduler" "$model/scheduler"; cp "$golden/pipeline/model_index.json" "$model/"
cat > "$work/tiny.json" <<EOF
{
  "description": "page test: tiny sweep",
  "dataset": {"generate": {"world": "shapesworld", "n": 2, "seed": 0, "size": 32, "kept_strength": 0.3}},
  "model": "$model",
  "seeds": [0, 1],
  "steps": 3,
  "metrics": ["mask_iou", "ciede2000"],
  "save": {"noise_map": true},
  "runs": [{"method": "sdedit", "params": {"strength": 0.8}}, {"method": "sdedit+ca+ln", "params": {"strength": 0.8}}],
  "editing": {"start_run": 1, "pick": "mask_iou", "rounds": 1, "layers": [1]},
  "claims": [{"text": "LN keeps the kept layer", "run": "sdedit+ca+ln strength=0.8", "base": "sdedit strength=0.8",
              "metric": "ciede2000", "layers": "kept"}]
}
EOF
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }

"$collage" --threads 1 sweep "$work/tiny.json" --out "$work/tiny.h5" > "$work/sweep.log" 2>&1; rc=$?
check "the tiny sweep runs" '[ $rc -eq 0 ] || { tail -20 "$work/sweep.log"; false; }'
"$collage" report "$work/tiny.h5" --html "$out/page" > "$work/report.txt" 2>&1; rc=$?
check "report --html writes the page and names it" '[ $rc -eq 0 ] && [ -s "$out/page/index.html" ] && grep -q "results page: $out/page/index.html" "$work/report.txt"'
check "the text report prints the claim verdict and the paired table" \
  'grep -Eq "^- (holds|not shown): LN keeps the kept layer" "$work/report.txt" && grep -q "paired with" "$work/report.txt"'
check "the page refers to no network resource" '! grep -Eq "(src|href)=\"(https?:)?//" "$out/page/index.html"'

url="file://$out/page/index.html"
flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$work/profile" --virtual-time-budget=10000)
timeout 120 "$browser" "${flags[@]}" --dump-dom "$url" > "$out/dom.html" 2> "$work/chromium.log"
check "chromium dumps the page's DOM" '[ -s "$out/dom.html" ] || { tail -5 "$work/chromium.log"; false; }'
total=$(grep -o 'data-images-total="[0-9]*"' "$out/dom.html" | grep -o '[0-9]\+')
loaded=$(grep -o 'data-images-loaded="[0-9]*"' "$out/dom.html" | grep -o '[0-9]\+')
imgs=$(grep -o '<img ' "$out/dom.html" | wc -l)
echo "     images: $imgs in the DOM, total ${total:-?}, loaded with pixels ${loaded:-?}"
# 2 collages: 2 composites in the index + per collage 2 seeds x (collage + 2 runs) and the one run's noise map (sdedit
# has none), the noise section (3 per collage) and the editing chains (start + 1 round per collage):
# 2 + 2 * 7 + 2 * 3 + 2 * 2 = 26.
check "every image loaded (naturalWidth > 0)" '[ -n "$total" ] && [ "$total" = "$imgs" ] && [ "$loaded" = "$total" ] && [ "$total" -eq 26 ]'
for id in claims runs paired collages noise editing settings; do
  check "section #$id is in the DOM" 'grep -q "<section id=\"$id\"" "$out/dom.html"'
done
check "per-run and paired tables have rows for both runs" \
  '[ $(grep -o "<tr><td>sdedit+ca+ln strength=0.8</td>" "$out/dom.html" | wc -l) -ge 1 ] && grep -q "<td>sdedit+ca+ln strength=0.8</td><td>ciede2000" "$out/dom.html"'
check "images carry their scores on hover" 'grep -q "title=\"sdedit strength=0.8&#10;seed 0&#10;ciede2000: [0-9.]*&#10;ciede2000 per layer: " "$out/page/index.html"'
check "collage rows link to their sections" 'grep -q "href=\"#c-sw0_00001\"" "$out/dom.html" && grep -q "id=\"c-sw0_00001\"" "$out/dom.html"'
timeout 120 "$browser" "${flags[@]}" --screenshot="$out/report.png" --window-size=1280,2000 "$url" > /dev/null 2>> "$work/chromium.log"
check "chromium writes a screenshot" '[ -s "$out/report.png" ]'
echo "page: $out/page/index.html  screenshot: $out/report.png"
exit $fail
