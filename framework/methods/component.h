// Method components: the plugin interface. A method ("sdedit+ca+ti+ln") is one base and any modifiers; each is a
// Component that declares its parameters and compatibility rules and contributes to one run through hooks.
// Method::run calls the hooks in this order (framework/methods/README.md has the diagram):
//
//   start      what sampling starts from: the init image, uniform or per-pixel strengths (bases, then ln)
//   text       the prompt and added token embeddings (ti)
//   attention  the cross-attention bias per layer (ca, paint_with_words)
//   model      a wrapper around one evaluation of the UNet (e.g. ControlNet residuals)
//   denoiser   a wrapper around the guided denoiser (CFG; regional replaces it)
//   sampler    per-step callbacks of the one sampling loop
//   execute    the base decides how many sampling passes run, each from a StartPlan (default: one)
//   finish     artefacts and records after sampling
//
// A component never copies the pipeline, the CFG code or the loop: it only fills the plans below. Plugins outside
// framework/ subclass Component and register with COLLAGE_REGISTER_COMPONENT(Class) (see README "Writing a
// method plugin").
#pragma once

#include <ATen/Tensor.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "collage/collage.h"
#include "core/core.h"
#include "diffusion/diffusion.h"
#include "methods/cross_attention.h"
#include "models/models.h"

namespace collage {

struct MethodSpec;
struct RunSettings;
struct MethodOutput;

// A numeric range a parameter must lie in (ints and numbers); `also` is one extra allowed value (e.g. -1 = unset).
struct ParamRange {
  double low = -1e300, high = 1e300;
  bool low_open = false;
  std::optional<double> also;
};

struct ParamInfo {
  std::string name;         // e.g. "ca_schedule"
  std::string type;         // "number", "int", "bool", "string"
  Json default_value;
  std::string description;
  // false for a parameter added after stores existed: a run that leaves it at its default keeps the run id it
  // had before the parameter existed (run ids hash the parameters), so old stores still resume and pair.
  bool in_id_at_default = true;
  std::optional<ParamRange> range;
};

struct ComponentInfo {
  std::string name;         // what users type in a spec, e.g. "ca"
  bool is_base = false;     // bases choose how sampling starts; modifiers hook into it
  std::string description;
  std::vector<ParamInfo> params;
};

// ---- The plans components fill ---------------------------------------------------------------------------

// Where sampling starts. Uniform: SDEdit of init_image at `strength` (or pure noise when from_noise). Per-pixel:
// each pixel starts at its own strength (the LN sampler callback), from a map built from the layers' strengths
// and the background strength (blurred by map_blur px; < 0 = the default blur), or from an explicit map.
struct StartPlan {
  at::Tensor init_image;               // (3, H, W) for every seed, or (B, 3, H, W) one per seed; in [0, 1]
  bool from_noise = false;             // txt2img: pure noise when no per-pixel map is used
  double strength = 1.0;               // uniform start strength
  bool per_pixel = false;
  std::vector<double> layer_strengths; // per layer, for the per-pixel map
  double background_strength = 1.0;    // the map outside every layer
  double map_blur = -1;                // Gaussian sigma in px; < 0 = default, 0 = none
  at::Tensor strength_map;             // (H, W): used as is when defined
  bool dilate = true;                  // grow the kept region as the authors do
};

struct TextPlan {
  std::shared_ptr<ClipTokenizer> tokenizer;     // a copy of the model's: components may add tokens
  std::string prompt;                           // the collage text, as edited by components
  std::vector<std::string> layer_texts;
  std::vector<std::string> added_tokens;        // per layer: a token inserted for it ("" = none); joins its CA tokens
  std::map<int64_t, at::Tensor> embeddings;     // token id -> learned (D,) row
};

// The text conditioning, computed once from the TextPlan.
struct Conditioning {
  std::vector<std::vector<int64_t>> layer_tokens;  // token positions of each layer in the prompt
  at::Tensor cond, uncond;                          // (1, 77, D)
  at::Tensor prompt_embeds;                         // (2B, 77, D) [uncond; cond] with CFG, else (B, 77, D)
  bool cfg = false;
  std::function<at::Tensor(const std::string&)> encode;  // text states of any text, with the learned embeddings
  at::Tensor batch(const at::Tensor& embeds, int64_t B) const { return embeds.expand({B, embeds.size(1), embeds.size(2)}); }
};

struct AttentionPlan {
  std::vector<CaLayer> layers;   // one per collage layer, tokens filled in
  CaSchedule schedule = CaSchedule::LogLog;
  bool bias = false;             // false: attention is only recorded (when asked)
  int64_t min_size = 0;
};

struct SamplerPlan {
  std::vector<std::function<void(StepState&)>> on_step_begin, on_step_end;
};

// ---- The run a component sees -------------------------------------------------------------------------------

struct RunContext {
  RunContext(const Collage& collage, StableDiffusion& sd, const RunSettings& settings, const MethodSpec& spec,
             MethodOutput& out);
  const Collage& collage;
  StableDiffusion& sd;
  const RunSettings& settings;
  const MethodSpec& spec;
  MethodOutput& out;            // record, artefacts, timings
  int64_t B, L, H, W;           // seeds, layers, canvas
  at::Tensor placed, visible, flat;  // (L, 4, H, W) placed layers, (L, H, W) visible masks, (3, H, W) collage
  StartPlan start;
  TextPlan text;
  Conditioning conditioning;    // after the text hooks
  AttentionPlan attention;
  ModelFn model_fn;             // the UNet call after the model hooks (denoiser hooks call this one)
};

// What one sampling pass produced.
struct PassOutput {
  at::Tensor images;            // (B, 3, H, W) in [0, 1]
  at::Tensor latents, init_latents, noise_map, keep_masks;
  std::vector<double> timesteps;
  double start_strength = 1;
};
// Runs one sampling pass (encode, the one sampler loop with every component's hooks, decode) from a StartPlan.
using PassFn = std::function<PassOutput(const StartPlan&)>;

class Component {
 public:
  explicit Component(ComponentInfo info) : info_(std::move(info)) {}
  virtual ~Component() = default;
  const ComponentInfo& info() const { return info_; }
  const std::string& name() const { return info_.name; }

  // Compatibility and cross-parameter rules, once the whole spec is parsed: throw Error(reason, where, field).
  virtual void check(const MethodSpec& spec, const std::string& where) const {}
  // Whether the method runs the model at all (flatten does not).
  virtual bool samples() const { return true; }

  virtual void start(RunContext& ctx, StartPlan& plan) const {}
  virtual void text(RunContext& ctx, TextPlan& plan) const {}
  virtual void attention(RunContext& ctx, AttentionPlan& plan) const {}
  virtual ModelFn model(RunContext& ctx, ModelFn inner) const { return inner; }
  virtual DenoiseFn denoiser(RunContext& ctx, DenoiseFn inner) const { return inner; }
  virtual void sampler(RunContext& ctx, SamplerPlan& plan) const {}
  // Bases only: the passes of the method. The default runs one pass from ctx.start.
  virtual PassOutput execute(RunContext& ctx, const PassFn& pass) const { return pass(ctx.start); }
  virtual void finish(RunContext& ctx, MethodOutput& out) const {}

 private:
  ComponentInfo info_;
};

// Every component by name, in registration order (the built-ins, then plugins). Spec texts list the base first,
// then the modifiers in this order, so the order is part of every run id: append, never reorder.
class ComponentRegistry {
 public:
  void add(std::shared_ptr<const Component> component);   // an error for a name already taken
  const Component* find(const std::string& name) const;
  const std::vector<std::shared_ptr<const Component>>& all() const { return components_; }

 private:
  std::vector<std::shared_ptr<const Component>> components_;
};

// The registry of this binary: the built-in components, then every plugin compiled in (COLLAGE_PLUGIN_DIRS).
const ComponentRegistry& method_registry();

}  // namespace collage

// In a plugin source file: registers `Class` (default-constructible Component) with the method registry. The build
// finds this line in every plugin file and calls the function it defines, once, when the registry is first used.
#define COLLAGE_REGISTER_COMPONENT(Class)                                           \
  void collage_register_component_##Class(::collage::ComponentRegistry& registry) { \
    registry.add(std::make_shared<Class>());                                        \
  }
