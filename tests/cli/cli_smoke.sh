#!/usr/bin/env bash
# End-to-end checks of the `collage` binary as a user runs it: txt2img / img2img on a tiny diffusers-layout
# pipeline assembled from the golden components, and the clear errors for bad input.
set -u
collage="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; golden="$(cd "$2" && pwd)"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
model="$work/model"; mkdir -p "$model"
ln -s "$golden/tokenizer" "$model/tokenizer"; ln -s "$golden/text_encoder_sd1" "$model/text_encoder"
ln -s "$golden/unet_sd1" "$model/unet"; ln -s "$golden/vae" "$model/vae"
ln -s "$golden/pipeline/scheduler" "$model/scheduler"; cp "$golden/pipeline/model_index.json" "$model/"
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }

"$collage" --threads 1 txt2img --model "$model" --prompt "a red barn" --seeds 1-2 --steps 3 --out "$work/t.png" >/dev/null 2>&1
check "txt2img writes one PNG per seed" '[ -s "$work/t_seed1.png" ] && [ -s "$work/t_seed2.png" ]'
"$collage" txt2img --model "$model" --prompt "a red barn" --seed 2 --steps 3 --out "$work/single.png" --threads 1 >/dev/null 2>&1
check "a seed gives the same image alone or in a batch" 'cmp -s "$work/single.png" "$work/t_seed2.png"'
"$collage" img2img --model "$model" --image "$work/t_seed1.png" --strength 0.5 --prompt "a barn" --steps 4 --out "$work/i.png" >/dev/null 2>&1
check "img2img writes its PNG" '[ -s "$work/i.png" ]'
err=$("$collage" txt2img --model "$model" --prompt x --height 31 2>&1); rc=$?
check "odd height is refused naming --height" '[ $rc -eq 1 ] && [[ "$err" == *"--height"* ]]'
err=$("$collage" txt2img --model "$work/none" --prompt x 2>&1); rc=$?
check "missing model folder names model_index.json" '[ $rc -eq 1 ] && [[ "$err" == *"model_index.json"* ]]'
err=$("$collage" txt2img --model "$model" --prompt x --seeds abc 2>&1); rc=$?
check "bad seeds name --seeds" '[ $rc -eq 1 ] && [[ "$err" == *"--seeds"* ]]'

# Collage Diffusion methods on a 32x32 collage (tests/data/collages/tiny).
collage_dir="$(dirname "$golden")/collages/tiny"
"$collage" --threads 1 generate --collage "$collage_dir" --model "$model" --method sdedit+ca+ti+ln --seeds 1-2 \
  --steps 4 --param ti_steps=2 --param ti_batch=1 --record-attention --cache-dir "$work/cache" --out "$work/gen" >/dev/null 2>&1
check "generate writes one PNG per seed, the record and artefacts" \
  '[ -s "$work/gen/seed_1.png" ] && [ -s "$work/gen/seed_2.png" ] && [ -s "$work/gen/noise_map.png" ] && [ -s "$work/gen/attention_seed1_layer1.png" ] && [ -s "$work/gen/layer_1_embedding.safetensors" ]'
check "the record names the method and every parameter" \
  'grep -q "\"method\": \"sdedit+ca+ti+ln\"" "$work/gen/record.json" && grep -q "\"ti_steps\": 2" "$work/gen/record.json" && grep -q "\"ca_schedule\"" "$work/gen/record.json"'
err=$("$collage" --threads 1 generate --collage "$collage_dir" --model "$model" --method sdedit+ca+ti+ln --seeds 1 \
  --steps 4 --param ti_steps=2 --param ti_batch=1 --cache-dir "$work/cache" --out "$work/gen2" 2>&1)
check "a second run takes the learned embeddings from the cache" '[[ "$err" == *"from cache"* ]]'
"$collage" --threads 1 edit --collage "$collage_dir" --model "$model" --from "$work/gen/seed_1.png" --regenerate square \
  --seeds 3 --steps 4 --out "$work/edit" >/dev/null 2>&1
check "edit regenerates a layer of a previous output" '[ -s "$work/edit/seed_3.png" ] && grep -q "regenerated_layers" "$work/edit/record.json"'
"$collage" --threads 1 train-ti --collage "$collage_dir" --model "$model" --layer circle --param ti_steps=2 \
  --param ti_batch=1 --cache-dir "$work/cache2" --out "$work/circle.safetensors" >/dev/null 2>&1
check "train-ti saves an embedding file" '[ -s "$work/circle.safetensors" ]'
out=$("$collage" methods 2>&1)
check "methods lists components with parameters and defaults" '[[ "$out" == *"paint_with_words"* ]] && [[ "$out" == *"ti_steps"* ]] && [[ "$out" == *"250"* ]]'
err=$("$collage" generate --collage "$collage_dir" --model "$model" --method sdedit+cax --out "$work/x" 2>&1); rc=$?
check "an unknown component is refused, naming the valid ones" '[ $rc -eq 1 ] && [[ "$err" == *"cax"* ]] && [[ "$err" == *"regional"* ]]'
cp -r "$collage_dir" "$work/bad"; sed -i 's/"text": "blue square"/"text": "green square"/' "$work/bad/collage.json"
err=$("$collage" generate --collage "$work/bad" --model "$model" --out "$work/x" 2>&1); rc=$?
check "a layer text missing from the prompt names the file and field" '[ $rc -eq 1 ] && [[ "$err" == *"collage.json"* ]] && [[ "$err" == *"layers[2].text"* ]]'
# Scoring and datasets.
"$collage" --threads 1 score --collage "$collage_dir" --image "$work/gen/seed_1.png" --metrics mask_iou,ciede2000,ssim \
  --json "$work/scores.json" >/dev/null 2>&1
check "score writes the requested metrics as JSON" 'grep -q "ciede2000" "$work/scores.json" && grep -q "mask_iou" "$work/scores.json"'
"$collage" --threads 1 score --collage "$collage_dir" --image "$work/gen/collage.png" --metrics ssim --json "$work/self.json" >/dev/null 2>&1
check "the flattened collage scores SSIM 1 against itself (8-bit PNG)" 'grep -Eq "\"value\": (1(\.0+)?|0\.9999[0-9]*)$" "$work/self.json"'
err=$("$collage" score --collage "$collage_dir" --image "$work/gen/seed_1.png" --metrics iou 2>&1); rc=$?
check "an unknown metric is refused, naming the valid ones" '[ $rc -eq 1 ] && [[ "$err" == *"mask_iou"* ]]'
out=$("$collage" metrics 2>&1)
check "metrics lists the registry" '[[ "$out" == *"ciede2000"* ]] && [[ "$out" == *"kid"* ]]'
"$collage" sandbox make-dataset shapesworld --n 3 --seed 2 --out "$work/ds" >/dev/null 2>&1
check "make-dataset writes collages and an index" '[ -s "$work/ds/index.json" ] && [ -s "$work/ds/collage_00002/collage.json" ]'
# The sandbox CLIP trainer (2 steps of the shipped config, run from another folder) and scoring with its output.
root="$(cd "$golden/../../.." && pwd)"
(cd "$work" && "$collage" --threads 1 sandbox train-clip --config "$root/assets/shapesworld/clip_config.json" --out "$work/clip" \
  --steps 2 --eval-images 0 >/dev/null 2>&1)
check "train-clip writes a CLIPModel folder" \
  '[ -s "$work/clip/model/model.safetensors" ] && [ -s "$work/clip/model/preprocessor_config.json" ] && [ -s "$work/clip/model/vocab.json" ]'
"$collage" --threads 1 score --collage "$collage_dir" --image "$work/gen/seed_1.png" --metrics clip_score \
  --clip "$work/clip/model" --json "$work/clip.json" >/dev/null 2>&1
check "score computes clip_score with the trained CLIP" 'grep -q "clip_score" "$work/clip.json" && ! grep -q "skip" "$work/clip.json"'
"$collage" --help >/dev/null && "$collage" parity --help >/dev/null && "$collage" bench unet --help >/dev/null \
  && "$collage" sandbox train --help >/dev/null && "$collage" bench metrics --help >/dev/null
check "--help works everywhere" '[ $? -eq 0 ]'
# The grouped commands: old names still work for one release, with a note; usage errors exit 2, runtime errors 1.
err=$("$collage" render-shapesworld --n 1 --out "$work/rs" 2>&1); rc=$?
check "an old command name still works and names the new one" '[ $rc -eq 0 ] && [[ "$err" == *"collage sandbox render"* ]] && ls "$work/rs"/*.png >/dev/null 2>&1'
out=$("$collage" --help 2>&1)
check "--help lists the groups, not the old names" '[[ "$out" == *"sandbox"* ]] && [[ "$out" == *"bench"* ]] && [[ "$out" != *"render-shapesworld"* ]]'
"$collage" generate --no-such-flag >/dev/null 2>&1; rc=$?
check "a usage error exits 2" '[ $rc -eq 2 ]'
"$collage" sandbox >/dev/null 2>&1; rc=$?
check "a group without its command is a usage error (exit 2)" '[ $rc -eq 2 ]'
exit $fail
