// Replaying recorded pipeline runs (shared by the pipeline/ and controlnet/ checkers).
#pragma once

#include <memory>
#include <string>

#include "core/core.h"
#include "diffusion/diffusion.h"
#include "parity/parity.h"

namespace collage::parity {

// The Stable Diffusion components a reference folder's pipeline.json names (`components`: paths relative to
// `folder` of tokenizer, text_encoder, unet, vae, scheduler), loaded at `target`.
std::shared_ptr<StableDiffusion> load_reference_pipeline(const std::string& folder, const Json& components,
                                                         const Target& target);

// Replays one recorded run (txt2img or img2img; img2img when `run` has "strength") through the public pipeline
// functions with the recorded random draws and compares every recorded intermediate. `settings` holds prompt,
// negative_prompt, guidance_scale, height and width; `model` replaces the plain UNet (e.g. a ControlNet).
void check_pipeline_run(StableDiffusion& sd, const Json& settings, const std::string& kind, const Json& run,
                        const std::string& folder, Recorder& rec, const ModelFn& model = {});

}  // namespace collage::parity
