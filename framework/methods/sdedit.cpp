// sdedit: img2img (SDEdit) of the flattened collage at the global strength b (global harmonisation).
#include "methods/builtin_components.h"

namespace collage {

namespace {

class SdeditBase : public Component {
 public:
  SdeditBase()
      : Component({"sdedit", true, "img2img (SDEdit) of the flattened collage at strength b (global harmonisation)",
                   {}}) {}

  void start(RunContext& ctx, StartPlan& plan) const override {
    plan.init_image = ctx.flat;
    plan.strength = ctx.spec.number("strength");
    plan.layer_strengths = layer_noise_strengths(ctx.collage);
    plan.background_strength = ctx.spec.number("strength");
  }
};

}  // namespace

COLLAGE_REGISTER_COMPONENT(SdeditBase)

}  // namespace collage
