// ln: per-layer noise (METHOD.md, "LN"). Turns the start per-pixel: every pixel starts denoising at its layer's
// strength, enforced after each solver step by the LN sampler callback (methods/layer_noise.h).
#include "methods/builtin_components.h"

namespace collage {

namespace {

class LayerNoiseModifier : public Component {
 public:
  LayerNoiseModifier()
      : Component({"ln", false, "per-layer noise: each pixel starts denoising at its layer's strength (sampler callback)",
                   {{"ln_blur", "number", -1.0,
                     "Gaussian blur sigma of the noise map in pixels; -1 = 10 px at 512 (scaled)"},
                    {"ln_dilate", "bool", true,
                     "dilate the kept region as the authors do (kernel 2*floor(4t/T)+1)"}}}) {}

  void start(RunContext& ctx, StartPlan& plan) const override {
    plan.per_pixel = true;
    plan.map_blur = ctx.spec.number("ln_blur");
    plan.dilate = ctx.spec.flag("ln_dilate");
  }
};

}  // namespace

COLLAGE_REGISTER_COMPONENT(LayerNoiseModifier)

}  // namespace collage
