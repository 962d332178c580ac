// flatten: the flattened collage itself, no diffusion (the fidelity upper bound).
#include "methods/builtin_components.h"

namespace collage {

namespace {

class FlattenBase : public Component {
 public:
  FlattenBase() : Component({"flatten", true, "the flattened collage itself, no diffusion (fidelity upper bound)", {}}) {}

  void check(const MethodSpec& spec, const std::string& where) const override {
    COLLAGE_CHECK_AT(spec.modifiers.empty(), where, spec.text, "flatten runs no model, so it takes no modifiers ({})",
                     fmt::join(spec.modifiers, ", "));
  }
  bool samples() const override { return false; }
  PassOutput execute(RunContext& ctx, const PassFn&) const override {
    PassOutput out;
    out.images = ctx.flat.unsqueeze(0).expand({ctx.B, -1, -1, -1}).contiguous();
    return out;
  }
};

}  // namespace

COLLAGE_REGISTER_COMPONENT(FlattenBase)

}  // namespace collage
