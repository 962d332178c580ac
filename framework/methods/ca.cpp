// ca: cross-attention manipulation (METHOD.md, "CA"): an attention hook. Each layer's tokens are biased towards its
// visible mask on the conditional rows (the processor is methods/cross_attention.h).
#include "methods/builtin_components.h"

namespace collage {

namespace {

class CrossAttentionModifier : public Component {
 public:
  CrossAttentionModifier()
      : Component({"ca", false,
                   "cross-attention manipulation: bias each layer's tokens towards its visible mask (conditional branch)",
                   {{"ca_schedule", "string", "loglog", "loglog = ln(1+ln(sigma+1.01)) (authors), ediff = ln(sigma+1.01)"},
                    {"ca_w_pos", "number", -1.0, "w_pos for every layer; -1 = each layer's own w_pos", true,
                     ParamRange{0, 1, false, -1.0}},
                    {"ca_w_neg", "number", -1.0, "w_neg for every layer; -1 = each layer's own w_neg", true,
                     ParamRange{0, 1, false, -1.0}},
                    {"ca_min_size", "int", 0,
                     "bias only attention maps at least this many cells on their shorter side (0 = all; an ablation)",
                     false, ParamRange{0}}}}) {}

  void check(const MethodSpec& spec, const std::string& where) const override {
    COLLAGE_CHECK_AT(!spec.has("paint_with_words"), where, spec.text,
                     "ca and paint_with_words are two variants of the same attention bias; choose one");
    parse_ca_schedule(spec.string("ca_schedule"), where, "params.ca_schedule");
  }

  void attention(RunContext& ctx, AttentionPlan& plan) const override {
    const double w_pos = ctx.spec.number("ca_w_pos"), w_neg = ctx.spec.number("ca_w_neg");
    for (int64_t i = 0; i < ctx.L; ++i) {
      plan.layers[i].w_pos = w_pos >= 0 ? w_pos : ctx.collage.layers[i].w_pos;
      plan.layers[i].w_neg = w_neg >= 0 ? w_neg : ctx.collage.layers[i].w_neg;
    }
    plan.schedule = parse_ca_schedule(ctx.spec.string("ca_schedule"));
    plan.bias = true;
    plan.min_size = ctx.spec.integer("ca_min_size");
  }
};

}  // namespace

COLLAGE_REGISTER_COMPONENT(CrossAttentionModifier)

}  // namespace collage
