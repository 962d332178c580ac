// edit: layer-driven editing (METHOD.md). Re-paste the chosen layers onto a previous output and rerun with per-layer
// noise: the regenerated layers at edit_strength, everything else nearly fixed at edit_keep_strength.
#include "core/core.h"
#include "methods/builtin_components.h"

namespace collage {

namespace {

class EditBase : public Component {
 public:
  EditBase()
      : Component({"edit", true,
                   "layer-driven editing: re-paste chosen layers onto a previous output and rerun with per-layer "
                   "noise, keeping the rest nearly fixed",
                   {{"edit_from", "string", "", "previous output image (PNG, canvas size) to edit"},
                    {"edit_regenerate", "string", "", "layers to regenerate: indices or names, comma-separated"},
                    {"edit_keep_strength", "number", 0.05, "noise strength of everything that is kept", true,
                     ParamRange{0, 1}},
                    {"edit_strength", "number", 1.0, "noise strength of the regenerated layers", true,
                     ParamRange{0, 1, true}}}}) {}

  void check(const MethodSpec& spec, const std::string& where) const override {
    COLLAGE_CHECK_AT(!spec.string("edit_from").empty(), where, "params.edit_from",
                     "edit needs the previous output image (edit_from)");
    COLLAGE_CHECK_AT(!spec.string("edit_regenerate").empty(), where, "params.edit_regenerate",
                     "edit needs the layers to regenerate (edit_regenerate)");
  }

  void start(RunContext& ctx, StartPlan& plan) const override {
    const auto& spec = ctx.spec;
    const auto regen = select_layers(ctx.collage, spec.string("edit_regenerate"), ctx.collage.where(),
                                     "params.edit_regenerate");
    plan.init_image = previous_output(ctx);
    plan.per_pixel = true;
    plan.layer_strengths.assign(ctx.L, spec.number("edit_keep_strength"));
    for (auto i : regen) {
      auto v = ctx.visible[i].unsqueeze(0);
      plan.init_image = v * ctx.placed[i].narrow(0, 0, 3) + (1 - v) * plan.init_image;
      plan.layer_strengths[i] = spec.number("edit_strength");
    }
    plan.background_strength = spec.number("edit_keep_strength");
    ctx.out.record["regenerated_layers"] = regen;
  }

 private:
  // The image to edit: handed over in memory (RunSettings::images, e.g. by a sweep's editing rounds) or read from
  // the edit_from file.
  static at::Tensor previous_output(const RunContext& ctx) {
    const auto from = ctx.spec.string("edit_from");
    at::Tensor previous;
    if (auto it = ctx.settings.images.find("edit_from"); it != ctx.settings.images.end()) {
      previous = it->second;
    } else {
      try {
        previous = read_image(from);
      } catch (const Error& e) {
        throw Error(e.message(), from, "params.edit_from");
      }
    }
    COLLAGE_CHECK_AT(previous.size(1) == ctx.H && previous.size(2) == ctx.W, from, "params.edit_from",
                     "previous output is {}x{}, the collage canvas is {}x{}", previous.size(2), previous.size(1), ctx.W,
                     ctx.H);
    return previous;
  }
};

}  // namespace

COLLAGE_REGISTER_COMPONENT(EditBase)

}  // namespace collage
