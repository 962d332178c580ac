// paint_with_words: eDiff-I's original attention bias, an attention hook: CA with the ln(sigma + 1.01) schedule, one
// weight for every layer and no negative term.
#include "methods/builtin_components.h"

namespace collage {

namespace {

class PaintWithWordsModifier : public Component {
 public:
  PaintWithWordsModifier()
      : Component({"paint_with_words", false,
                   "eDiff-I paint-with-words: CA with the ln(sigma+1.01) schedule and no negative term",
                   {{"pww_weight", "number", 0.5, "w_pos of every layer", true, ParamRange{0, 1}}}}) {}

  void attention(RunContext& ctx, AttentionPlan& plan) const override {
    for (auto& layer : plan.layers) {
      layer.w_pos = ctx.spec.number("pww_weight");
      layer.w_neg = 0;
    }
    plan.schedule = CaSchedule::EDiffI;
    plan.bias = true;
    plan.min_size = 0;
  }
};

}  // namespace

COLLAGE_REGISTER_COMPONENT(PaintWithWordsModifier)

}  // namespace collage
