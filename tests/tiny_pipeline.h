// The tiny reference pipeline (golden tokenizer, sd1 text encoder and UNet, VAE, scheduler) and a square layer, for
// the method tests.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "collage/collage.h"
#include "diffusion/diffusion.h"
#include "test_util.h"

namespace collage::test {

// Loaded once per test binary.
inline std::shared_ptr<StableDiffusion> tiny_pipeline() {
  static std::shared_ptr<StableDiffusion> sd = [] {
    ComponentPaths p;
    p.tokenizer = golden("tokenizer");
    p.text_encoder = golden("text_encoder_sd1");
    p.unet = golden("unet_sd1");
    p.vae = golden("vae");
    p.scheduler_config = golden("pipeline/scheduler/scheduler_config.json");
    return StableDiffusion::load(p);
  }();
  return sd;
}

// An opaque size x size layer of one colour with its top-left corner at (x, y).
inline Layer square_layer(const std::string& text, int64_t size, float r, float g, float b, double x, double y) {
  Layer l;
  l.text = text;
  l.rgba = at::ones({4, size, size});
  l.rgba[0].fill_(r);
  l.rgba[1].fill_(g);
  l.rgba[2].fill_(b);
  l.transform.x = x;
  l.transform.y = y;
  return l;
}

}  // namespace collage::test
