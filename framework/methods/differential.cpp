// differential: the Differential Diffusion baseline. A per-pixel strength map without layer semantics: the layers'
// noise strengths unblurred (or a given grayscale map), no dilation, no CA.
#include "core/core.h"
#include "methods/builtin_components.h"

namespace collage {

namespace {

class DifferentialBase : public Component {
 public:
  DifferentialBase()
      : Component({"differential", true,
                   "Differential Diffusion baseline: a per-pixel strength map without layer semantics (no dilation, no "
                   "CA)",
                   {{"diff_map", "string", "",
                     "grayscale strength map image (white = strength 1); empty = the layers' noise strengths, "
                     "unblurred"}}}) {}

  void check(const MethodSpec& spec, const std::string& where) const override {
    COLLAGE_CHECK_AT(!spec.has("ln"), where, spec.text,
                     "differential already sets a per-pixel start time; it does not combine with ln");
  }

  void start(RunContext& ctx, StartPlan& plan) const override {
    plan.init_image = ctx.flat;
    plan.per_pixel = true;
    plan.dilate = false;
    plan.layer_strengths = layer_noise_strengths(ctx.collage);
    plan.background_strength = ctx.spec.number("strength");
    plan.map_blur = 0.0;
    const auto path = ctx.spec.string("diff_map");
    if (path.empty()) return;
    try {
      plan.strength_map = read_image(path).mean(0);
    } catch (const Error& e) {
      throw Error(e.message(), path, "params.diff_map");
    }
    COLLAGE_CHECK_AT(plan.strength_map.size(0) == ctx.H && plan.strength_map.size(1) == ctx.W, path,
                     "params.diff_map", "strength map is {}x{}, the canvas is {}x{}", plan.strength_map.size(1),
                     plan.strength_map.size(0), ctx.W, ctx.H);
  }
};

}  // namespace

COLLAGE_REGISTER_COMPONENT(DifferentialBase)

}  // namespace collage
