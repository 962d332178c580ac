// Harmonisation methods: a collage + a model + run settings -> images and artefacts.
//
// A method is a spec string of components joined by '+', e.g. "sdedit+ca+ti+ln":
//   bases (at most one; default sdedit): flatten, txt2img, sdedit, edit, differential, regional (+ plugins)
//   modifiers: ca (cross-attention manipulation), paint_with_words (eDiff-I CA), ti (per-layer textual
//   inversion), ln (per-layer noise) (+ plugins)
// Parameters are one flat JSON object of named values (strength, ca_schedule, ti_steps, ...); each component
// declares its own with defaults and ranges (`collage methods` lists them). Components are plugins
// (methods/component.h): they contribute hooks to one run, and Method::run composes them around the one pipeline
// and the one sampling loop. This is the module's public header.
#pragma once

#include <ATen/Tensor.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "collage/collage.h"
#include "core/core.h"
#include "diffusion/diffusion.h"
#include "methods/component.h"
#include "methods/cross_attention.h"
#include "methods/layer_noise.h"
#include "methods/textual_inversion.h"

namespace collage {

// Every component's declaration, in registry order ("common" first: the parameters every method accepts).
std::vector<ComponentInfo> method_components();

struct MethodSpec {
  std::string text;            // normalised, e.g. "sdedit+ca+ti+ln"
  std::string base = "sdedit";
  std::vector<std::string> modifiers;  // in registry order
  Json params = Json::object();  // every parameter of the chosen components, defaults filled in

  // Parses "sdedit+ca+ti+ln" and validates `params` (unknown names, wrong types, values out of range, the
  // components' compatibility rules). Errors name `where` (a config file or CLI flag) and the offending component
  // or parameter, and list the valid ones.
  static MethodSpec parse(const std::string& spec, const Json& params = Json::object(),
                          const std::string& where = "--method");
  bool has(const std::string& component) const;
  double number(const std::string& name) const;
  int64_t integer(const std::string& name) const;
  bool flag(const std::string& name) const;
  std::string string(const std::string& name) const;
};

// The ti_* parameters of a spec as training settings (the spec must include ti).
TextualInversionSettings ti_settings(const MethodSpec& spec);

struct RunSettings {
  std::vector<uint64_t> seeds{0};  // one image per seed, run as one batch
  int64_t steps = 50;
  double guidance_scale = 7.5;
  std::string scheduler = "euler_ancestral";  // registry name; "" = the model's own scheduler
  std::string negative_prompt;
  bool record_attention = false;   // artefact "attention": (B, L, h, w) per-layer cross-attention mass
  std::string cache_dir;           // learned embeddings; "" = default_cache_dir()
  std::function<void(int64_t, int64_t)> progress;   // sampling steps done / total
  std::function<void(const std::string&)> log;      // one-line messages (TI training, cache hits)
  // In-memory images for parameters that name an image file (e.g. "edit_from"): used instead of reading the file.
  std::map<std::string, at::Tensor> images;
};

struct MethodOutput {
  at::Tensor images;                            // (B, 3, H, W) float32 in [0, 1], CPU
  at::Tensor latents;                           // final latents (undefined for flatten)
  std::map<std::string, at::Tensor> artefacts;  // "noise_map", "attention", "ti_embedding.<i>", "collage", ...
  std::map<std::string, double> timings;        // seconds: "ti_train", "encode", "sampling", "decode", "total"
  Json record;                                  // every parameter and setting used
};

class Method {
 public:
  explicit Method(MethodSpec spec);
  const MethodSpec& spec() const { return spec_; }
  MethodOutput run(const Collage& collage, StableDiffusion& sd, const RunSettings& settings) const;

 private:
  MethodSpec spec_;
  std::vector<const Component*> components_;  // base first, then the modifiers
};

// A method by spec string and parameter object (see MethodSpec::parse).
std::unique_ptr<Method> create_method(const std::string& spec, const Json& params = Json::object(),
                                      const std::string& where = "--method");

// Which layers a collage-level parameter such as "1,3" or "name" selects ("all", "" = all layers; "meta:KEY" = the
// layers whose meta has KEY true or non-zero, an error when no layer has the key at all).
std::vector<int64_t> select_layers(const Collage& collage, const std::string& selection, const std::string& where,
                                   const std::string& field);

}  // namespace collage
