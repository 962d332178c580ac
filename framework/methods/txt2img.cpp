// txt2img: text-only generation from the collage text, no collage pixels (the fidelity lower bound). With ln, the
// layers start from their own strengths and everything outside them from the text alone.
#include "methods/builtin_components.h"

namespace collage {

namespace {

class Txt2ImgBase : public Component {
 public:
  Txt2ImgBase()
      : Component({"txt2img", true,
                   "text-only generation from the collage text, no collage pixels (fidelity lower bound)", {}}) {}

  void start(RunContext& ctx, StartPlan& plan) const override {
    plan.init_image = ctx.flat;
    plan.from_noise = true;
    plan.strength = ctx.spec.number("strength");
    plan.layer_strengths = layer_noise_strengths(ctx.collage);
    plan.background_strength = 1.0;
  }
};

}  // namespace

COLLAGE_REGISTER_COMPONENT(Txt2ImgBase)

}  // namespace collage
