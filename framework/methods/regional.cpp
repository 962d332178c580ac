// regional: the regional-prompting baseline (area conditioning, MultiDiffusion style). Each layer's region follows
// its own prompt; the global prompt fills the rest and is mixed in everywhere. A denoiser hook: it replaces the
// plain CFG denoiser with one that runs the model once per region prompt.
#include <torch/torch.h>

#include "methods/builtin_components.h"

namespace collage {

namespace {

class RegionalBase : public Component {
 public:
  RegionalBase()
      : Component({"regional", true,
                   "regional prompting baseline: per-layer prompts, guided noise predictions blended by visible mask",
                   {{"regional_global_weight", "number", 0.3,
                     "share of the global-prompt prediction mixed into every region", true, ParamRange{0, 1}}}}) {}

  void check(const MethodSpec& spec, const std::string& where) const override {
    COLLAGE_CHECK_AT(!spec.has("ca") && !spec.has("paint_with_words"), where, spec.text,
                     "regional conditions each region on its own prompt, which has no layer tokens to bias: it does "
                     "not combine with ca or paint_with_words");
  }

  void start(RunContext& ctx, StartPlan& plan) const override {
    plan.init_image = ctx.flat;
    plan.strength = ctx.spec.number("strength");
    plan.layer_strengths = layer_noise_strengths(ctx.collage);
    plan.background_strength = ctx.spec.number("strength");
  }

  DenoiseFn denoiser(RunContext& ctx, DenoiseFn) const override;
};

DenoiseFn RegionalBase::denoiser(RunContext& ctx, DenoiseFn) const {
  const auto& cond = ctx.conditioning;
  const int64_t B = ctx.B;
  std::vector<at::Tensor> region_embeds;
  std::vector<int64_t> region_layers;
  for (int64_t i = 0; i < ctx.L; ++i) {
    const auto& text = ctx.collage.layers[i].text;
    if (text.empty()) continue;
    const auto& added = ctx.text.added_tokens[i];
    region_embeds.push_back(cond.batch(cond.encode(added.empty() ? text : added + " " + text), B).contiguous());
    region_layers.push_back(i);
  }
  const int64_t f = ctx.sd.vae_scale_factor();
  auto masks = downsample_masks(ctx.visible, ctx.H / f, ctx.W / f).to(ctx.sd.device);
  const double wg = ctx.spec.number("regional_global_weight");
  const double g = ctx.settings.guidance_scale;
  const bool cfg = cond.cfg;
  auto model = ctx.model_fn;
  auto cond_b = cond.batch(cond.cond, B).contiguous(), uncond_b = cond.batch(cond.uncond, B).contiguous();
  return [=](const at::Tensor& x, double t, const StepInfo& step_in) {
    torch::NoGradGuard ng;
    auto ts = at::scalar_tensor(t, at::TensorOptions().dtype(at::kFloat).device(x.device()));
    auto run = [&](const at::Tensor& ctx_embeds, bool conditional) {
      StepInfo step = step_in;
      step.conditional.assign(x.size(0), conditional);
      return model(x.to(ctx_embeds.scalar_type()), ts, ctx_embeds, step).to(x.scalar_type());
    };
    at::Tensor u = cfg ? run(uncond_b, false) : at::Tensor();
    auto guided = [&](const at::Tensor& embeds) {
      auto c = run(embeds, true);
      return cfg ? u + g * (c - u) : c;
    };
    auto global = guided(cond_b);
    auto covered = at::zeros({1, 1, masks.size(1), masks.size(2)}, x.options());
    auto regional = at::zeros_like(global);
    for (size_t k = 0; k < region_layers.size(); ++k) {
      auto m = masks[region_layers[k]].view({1, 1, masks.size(1), masks.size(2)}).to(x.scalar_type());
      regional = regional + m * guided(region_embeds[k]);
      covered = covered + m;
    }
    regional = regional + (1 - covered).clamp_min(0) * global;
    return wg * global + (1 - wg) * regional;
  };
}

}  // namespace

COLLAGE_REGISTER_COMPONENT(RegionalBase)

}  // namespace collage
