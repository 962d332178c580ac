// cn: per-layer ControlNet (the WACV version's fourth layer control), a model hook. The control image is the Canny
// edge map of the flattened collage (OpenCV Canny on the RGB array, as the authors do); the residuals are scaled per
// pixel by sum_i v_i * s_i (visible mask x the layer's control_strength, the authors' cannyStrength) times a global
// scale, so a layer with strength 0 is not held to its edges.
#include <filesystem>
#include <map>
#include <mutex>

#include "core/core.h"
#include "methods/builtin_components.h"

namespace fs = std::filesystem;

namespace collage {

namespace {

class ControlNetModifier : public Component {
 public:
  ControlNetModifier()
      : Component({"cn", false,
                   "per-layer ControlNet: Canny edges of the collage, residuals scaled per pixel by each layer's "
                   "control_strength (model hook)",
                   {{"cn_model", "string", "",
                     "ControlNet folder (diffusers layout); empty = the embedded model's assets/shapesworld/controlnet"},
                    {"cn_scale", "number", 1.0, "global conditioning scale (multiplies every layer's strength)", true,
                     ParamRange{0, 10}},
                    {"cn_strength", "number", -1.0, "control strength of every layer; -1 = each layer's control_strength",
                     true, ParamRange{0, 1, false, -1.0}},
                    {"cn_low", "number", 100.0, "Canny low threshold (the authors' 100)", true, ParamRange{0, 1e6}},
                    {"cn_high", "number", 200.0, "Canny high threshold (the authors' 200)", true, ParamRange{0, 1e6}},
                    {"cn_guess_mode", "bool", false, "guess mode: the ControlNet runs on the conditional rows only"}}}) {}

  void check(const MethodSpec& spec, const std::string& where) const override {
    COLLAGE_CHECK_AT(spec.number("cn_low") <= spec.number("cn_high"), where, "params.cn_low",
                     "the Canny low threshold {} is above the high one {}", spec.number("cn_low"), spec.number("cn_high"));
  }

  ModelFn model(RunContext& ctx, ModelFn) const override {
    ControlNetCall call;
    call.net = load(ctx);
    const int64_t down = call.net->config().conditioning_downscale();
    COLLAGE_CHECK_AT(ctx.H % down == 0 && ctx.W % down == 0, ctx.collage.where(), "width",
                     "canvas {}x{} is not divisible by the ControlNet's factor {}", ctx.W, ctx.H, down);
    call.image = canny_control_image(ctx.flat, {ctx.spec.number("cn_low"), ctx.spec.number("cn_high")});
    call.scale = ControlScale(scale_map(ctx));
    call.guess_mode = ctx.spec.flag("cn_guess_mode");
    ctx.out.artefacts["control_image"] = call.image[0];
    ctx.out.artefacts["control_scale"] = call.scale.map;
    return controlnet_model_fn(ctx.sd, call);
  }

 private:
  // sum_i v_i * strength_i * scale: (H, W).
  static at::Tensor scale_map(const RunContext& ctx) {
    const double every = ctx.spec.number("cn_strength");
    auto map = at::zeros({ctx.H, ctx.W}, ctx.visible.options());
    for (int64_t i = 0; i < ctx.L; ++i)
      map = map + ctx.visible[i] * (every >= 0 ? every : ctx.collage.layers[i].control_strength);
    return map * ctx.spec.number("cn_scale");
  }

  // The ControlNet of cn_model (or the embedded default), loaded once per folder and device.
  ControlNetModel load(const RunContext& ctx) const {
    std::string folder = ctx.spec.string("cn_model");
    if (folder.empty()) folder = find_in_checkout("assets/shapesworld/controlnet", "config.json");
    COLLAGE_CHECK_AT(!folder.empty(), "", "params.cn_model",
                     "no ControlNet given (--controlnet DIR or the cn_model parameter) and the embedded model ships "
                     "none (assets/shapesworld/controlnet)");
    const auto key = fs::weakly_canonical(folder).string() + "|" + ctx.sd.device.str() + "|" + c10::toString(ctx.sd.dtype);
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = loaded_.find(key);
    if (it != loaded_.end()) return it->second;
    ControlNetModel net(ControlNetModelImpl::load(folder));
    net->to(ctx.sd.device, ctx.sd.dtype);
    net->eval();
    loaded_.emplace(key, net);
    return net;
  }

  mutable std::mutex mutex_;
  mutable std::map<std::string, ControlNetModel> loaded_;
};

}  // namespace

COLLAGE_REGISTER_COMPONENT(ControlNetModifier)

}  // namespace collage
