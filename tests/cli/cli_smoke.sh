#!/usr/bin/env bash
# End-to-end checks of the `collage` binary as a user runs it: txt2img / img2img on a tiny diffusers-layout
# pipeline assembled from the golden components, and the clear errors for bad input.
set -u
collage="$1"; golden="$2"
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
"$collage" --help >/dev/null && "$collage" parity --help >/dev/null && "$collage" bench unet --help >/dev/null
check "--help works everywhere" '[ $? -eq 0 ]'
exit $fail
