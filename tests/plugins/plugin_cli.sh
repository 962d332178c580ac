#!/usr/bin/env bash
# The example method plugin as a user runs it: built into `collage` by COLLAGE_PLUGIN_DIRS, listed by
# `collage methods`, run by `collage generate` and by a small sweep, whose report names it.
set -u
collage="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; golden="$(cd "$2" && pwd)"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
model="$work/model"; mkdir -p "$model"
ln -s "$golden/tokenizer" "$model/tokenizer"; ln -s "$golden/text_encoder_sd1" "$model/text_encoder"
ln -s "$golden/unet_sd1" "$model/unet"; ln -s "$golden/vae" "$model/vae"
ln -s "$golden/pipeline/scheduler" "$model/scheduler"; cp "$golden/pipeline/model_index.json" "$model/"
collage_dir="$(dirname "$golden")/collages/tiny"
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }

out=$("$collage" methods 2>&1)
check "methods lists the plugin and its parameter" '[[ "$out" == *"sequential"* ]] && [[ "$out" == *"seq_blur"* ]]'
"$collage" --threads 1 generate --collage "$collage_dir" --model "$model" --method sequential+ca --seeds 1-2 --steps 4 \
  --out "$work/gen" > "$work/gen.log" 2>&1
check "generate runs the plugin (with a modifier)" \
  '[ -s "$work/gen/seed_1.png" ] && [ -s "$work/gen/seed_2.png" ] && grep -q "\"method\": \"sequential+ca\"" "$work/gen/record.json"'
mkdir -p "$work/data"; cp -r "$collage_dir" "$work/data/tiny"
cat > "$work/sweep.json" <<JSON
{"dataset": "$work/data", "model": "$model", "seeds": [0, 1], "steps": 3, "guidance": 3.0, "metrics": ["ssim"],
 "runs": [{"method": "sdedit", "params": {"strength": 0.6}}, {"method": "sequential", "params": {"seq_blur": 0}}]}
JSON
"$collage" --threads 1 sweep "$work/sweep.json" --out "$work/store.h5" > "$work/sweep.log" 2>&1
check "a sweep runs the plugin next to a built-in" '[ -s "$work/store.h5" ]'
report=$("$collage" report "$work/store.h5" 2>&1)
check "the report has a row for the plugin's run" '[[ "$report" == *"sequential"* ]] && [[ "$report" == *"ssim"* ]]'
[ $fail -eq 0 ] || { cat "$work/gen.log" "$work/sweep.log"; echo "$report"; }
exit $fail
