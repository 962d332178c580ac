// The method registry: components, their parameters and defaults, spec parsing and validation.
#include <algorithm>
#include <cctype>

#include "core/core.h"
#include "methods/methods.h"

namespace collage {

const std::vector<ComponentInfo>& method_components() {
  static const std::vector<ComponentInfo> components = {
      {"common", false, "parameters every method accepts",
       {{"strength", "number", 0.8,
         "global strength b: fraction of the schedule run on the collage (SDEdit); also the LN strength outside all "
         "layers"}}},
      {"flatten", true, "the flattened collage itself, no diffusion (fidelity upper bound)", {}},
      {"txt2img", true, "text-only generation from the collage text, no collage pixels (fidelity lower bound)", {}},
      {"sdedit", true, "img2img (SDEdit) of the flattened collage at strength b (global harmonisation)", {}},
      {"edit", true,
       "layer-driven editing: re-paste chosen layers onto a previous output and rerun with per-layer noise, keeping "
       "the rest nearly fixed",
       {{"edit_from", "string", "", "previous output image (PNG, canvas size) to edit"},
        {"edit_regenerate", "string", "", "layers to regenerate: indices or names, comma-separated"},
        {"edit_keep_strength", "number", 0.05, "noise strength of everything that is kept"},
        {"edit_strength", "number", 1.0, "noise strength of the regenerated layers"}}},
      {"differential", true,
       "Differential Diffusion baseline: a per-pixel strength map without layer semantics (no dilation, no CA)",
       {{"diff_map", "string", "",
         "grayscale strength map image (white = strength 1); empty = the layers' noise strengths, unblurred"}}},
      {"regional", true,
       "regional prompting baseline: per-layer prompts, guided noise predictions blended by visible mask",
       {{"regional_global_weight", "number", 0.3, "share of the global-prompt prediction mixed into every region"}}},
      {"ca", false, "cross-attention manipulation: bias each layer's tokens towards its visible mask (conditional branch)",
       {{"ca_schedule", "string", "loglog", "loglog = ln(1+ln(sigma+1.01)) (authors), ediff = ln(sigma+1.01)"},
        {"ca_w_pos", "number", -1.0, "w_pos for every layer; -1 = each layer's own w_pos"},
        {"ca_w_neg", "number", -1.0, "w_neg for every layer; -1 = each layer's own w_neg"},
        {"ca_min_size", "int", 0,
         "bias only attention maps at least this many cells on their shorter side (0 = all; an ablation)", false}}},
      {"paint_with_words", false, "eDiff-I paint-with-words: CA with the ln(sigma+1.01) schedule and no negative term",
       {{"pww_weight", "number", 0.5, "w_pos of every layer"}}},
      {"ti", false, "per-layer textual inversion: a learned token per layer, inserted before its text",
       {{"ti_layers", "string", "auto",
         "layers to learn: auto (all with text except a full-canvas background), all, indices/names, or meta:KEY "
         "(the layers whose meta KEY is true, e.g. meta:unnamed_appearance)"},
        {"ti_steps", "int", 250, "optimisation steps"},
        {"ti_lr", "number", 4e-4, "AdamW learning rate"},
        {"ti_warmup", "int", 25, "linear warm-up steps"},
        {"ti_batch", "int", 4, "augmented copies per step"},
        {"ti_weight_decay", "number", 1e-2, "AdamW weight decay"},
        {"ti_grad_clip", "number", 1.0, "gradient-norm clip (0 = off)"},
        {"ti_init", "string", "a", "initial embedding: a word, or 'head' (the layer text's last word)"},
        {"ti_augment", "bool", true, "colour jitter and random crops"},
        {"ti_seed", "int", 0, "seed of the training draws"}}},
      {"ln", false, "per-layer noise: each pixel starts denoising at its layer's strength (sampler callback)",
       {{"ln_blur", "number", -1.0, "Gaussian blur sigma of the noise map in pixels; -1 = 10 px at 512 (scaled)"},
        {"ln_dilate", "bool", true, "dilate the kept region as the authors do (kernel 2*floor(4t/T)+1)"}}},
  };
  return components;
}

namespace {

const ComponentInfo* find_component(const std::string& name) {
  for (const auto& c : method_components())
    if (c.name == name) return &c;
  return nullptr;
}

std::string component_names() {
  std::vector<std::string> names;
  for (const auto& c : method_components())
    if (c.name != "common") names.push_back(c.name);
  return fmt::format("{}", fmt::join(names, ", "));
}

std::string trim_lower(std::string s) {
  s.erase(0, s.find_first_not_of(" \t"));
  s.erase(s.find_last_not_of(" \t") + 1);
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  std::replace(s.begin(), s.end(), '-', '_');
  return s;
}

Json coerce(const ParamInfo& p, const Json& v, const std::string& where) {
  const auto field = "params." + p.name;
  if (p.type == "number") {
    COLLAGE_CHECK_AT(v.is_number(), where, field, "expected a number, got {}", v.dump());
    COLLAGE_CHECK_AT(std::isfinite(v.get<double>()), where, field, "must be finite");
    return v.get<double>();
  }
  if (p.type == "int") {
    COLLAGE_CHECK_AT(v.is_number_integer() || (v.is_number() && v.get<double>() == std::floor(v.get<double>())),
                     where, field, "expected an integer, got {}", v.dump());
    return static_cast<int64_t>(v.get<double>());
  }
  if (p.type == "bool") {
    COLLAGE_CHECK_AT(v.is_boolean(), where, field, "expected true or false, got {}", v.dump());
    return v;
  }
  COLLAGE_CHECK_AT(v.is_string(), where, field, "expected a string, got {}", v.dump());
  return v;
}

}  // namespace

MethodSpec MethodSpec::parse(const std::string& spec_text, const Json& params, const std::string& where) {
  MethodSpec spec;
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    auto p = spec_text.find('+', start);
    parts.push_back(trim_lower(spec_text.substr(start, p == std::string::npos ? std::string::npos : p - start)));
    if (p == std::string::npos) break;
    start = p + 1;
  }
  std::vector<std::string> bases, modifiers;
  for (const auto& part : parts) {
    const ComponentInfo* c = find_component(part);
    COLLAGE_CHECK_AT(!part.empty(), where, spec_text, "empty component in method spec (valid components: {})",
                     component_names());
    COLLAGE_CHECK_AT(c && part != "common", where, part, "unknown method component in '{}' (valid components: {})",
                     spec_text, component_names());
    auto& list = c->is_base ? bases : modifiers;
    COLLAGE_CHECK_AT(std::find(list.begin(), list.end(), part) == list.end(), where, part,
                     "component given twice in '{}'", spec_text);
    list.push_back(part);
  }
  COLLAGE_CHECK_AT(bases.size() <= 1, where, spec_text,
                   "a method has at most one base (flatten, txt2img, sdedit, edit, differential, regional), got {}",
                   fmt::join(bases, " and "));
  spec.base = bases.empty() ? "sdedit" : bases.front();
  for (const auto& m : modifiers) {
    if (m == "ca") spec.ca = true;
    if (m == "paint_with_words") spec.paint_with_words = true;
    if (m == "ti") spec.ti = true;
    if (m == "ln") spec.ln = true;
  }
  const bool any_modifier = !modifiers.empty();
  COLLAGE_CHECK_AT(!(spec.base == "flatten" && any_modifier), where, spec_text,
                   "flatten runs no model, so it takes no modifiers ({})", fmt::join(modifiers, ", "));
  COLLAGE_CHECK_AT(!(spec.ca && spec.paint_with_words), where, spec_text,
                   "ca and paint_with_words are two variants of the same attention bias; choose one");
  COLLAGE_CHECK_AT(!(spec.base == "regional" && (spec.ca || spec.paint_with_words)), where, spec_text,
                   "regional conditions each region on its own prompt, which has no layer tokens to bias: it does "
                   "not combine with ca or paint_with_words");
  COLLAGE_CHECK_AT(!(spec.base == "differential" && spec.ln), where, spec_text,
                   "differential already sets a per-pixel start time; it does not combine with ln");
  // Normalised text: base first, then modifiers in registry order.
  std::vector<std::string> ordered{spec.base};
  for (const auto& c : method_components())
    if (!c.is_base && c.name != "common" && std::find(modifiers.begin(), modifiers.end(), c.name) != modifiers.end())
      ordered.push_back(c.name);
  spec.text = fmt::format("{}", fmt::join(ordered, "+"));

  // Parameters: defaults of every selected component (and the common ones), then the given values.
  std::vector<const ParamInfo*> allowed;
  for (const auto& c : method_components())
    if (c.name == "common" || c.name == spec.base ||
        std::find(modifiers.begin(), modifiers.end(), c.name) != modifiers.end())
      for (const auto& p : c.params) allowed.push_back(&p);
  for (const auto* p : allowed) spec.params[p->name] = p->default_value;
  COLLAGE_CHECK_AT(params.is_object() || params.is_null(), where, "params", "method parameters must be an object");
  if (params.is_object())
    for (auto it = params.begin(); it != params.end(); ++it) {
      auto found = std::find_if(allowed.begin(), allowed.end(), [&](const ParamInfo* p) { return p->name == it.key(); });
      if (found == allowed.end()) {
        std::vector<std::string> names;
        for (const auto* p : allowed) names.push_back(p->name);
        throw Error(fmt::format("unknown parameter for method '{}' (its parameters: {})", spec.text,
                                fmt::join(names, ", ")),
                    where, "params." + it.key());
      }
      spec.params[it.key()] = coerce(**found, it.value(), where);
    }
  // Ranges.
  auto unit = [&](const std::string& name, bool allow_minus_one, bool open_zero) {
    if (!spec.params.contains(name)) return;
    const double v = spec.params[name].get<double>();
    const bool ok = (allow_minus_one && v == -1.0) || (open_zero ? (v > 0 && v <= 1) : (v >= 0 && v <= 1));
    COLLAGE_CHECK_AT(ok, where, "params." + name, "must be in {}{}, got {}", open_zero ? "(0, 1]" : "[0, 1]",
                     allow_minus_one ? " or -1" : "", v);
  };
  unit("strength", false, true);
  unit("ca_w_pos", true, false);
  unit("ca_w_neg", true, false);
  unit("pww_weight", false, false);
  unit("edit_keep_strength", false, false);
  unit("edit_strength", false, true);
  unit("regional_global_weight", false, false);
  if (spec.params.contains("ca_schedule"))
    parse_ca_schedule(spec.params["ca_schedule"].get<std::string>(), where, "params.ca_schedule");
  for (const char* name : {"ti_steps", "ti_batch", "ti_warmup", "ti_seed", "ca_min_size"})
    if (spec.params.contains(name))
      COLLAGE_CHECK_AT(spec.params[name].get<int64_t>() >= (std::string(name) == "ti_batch" ? 1 : 0), where,
                       std::string("params.") + name, "must be {}", std::string(name) == "ti_batch" ? "> 0" : ">= 0");
  if (spec.params.contains("ti_lr"))
    COLLAGE_CHECK_AT(spec.params["ti_lr"].get<double>() > 0, where, "params.ti_lr", "must be positive");
  if (spec.base == "edit") {
    COLLAGE_CHECK_AT(!spec.string("edit_from").empty(), where, "params.edit_from",
                     "edit needs the previous output image (edit_from)");
    COLLAGE_CHECK_AT(!spec.string("edit_regenerate").empty(), where, "params.edit_regenerate",
                     "edit needs the layers to regenerate (edit_regenerate)");
  }
  return spec;
}

bool MethodSpec::has(const std::string& component) const {
  if (component == base) return true;
  if (component == "ca") return ca;
  if (component == "paint_with_words") return paint_with_words;
  if (component == "ti") return ti;
  if (component == "ln") return ln;
  return false;
}

double MethodSpec::number(const std::string& name) const {
  COLLAGE_CHECK(params.contains(name), "method '{}' has no parameter '{}'", text, name);
  return params.at(name).get<double>();
}
int64_t MethodSpec::integer(const std::string& name) const {
  COLLAGE_CHECK(params.contains(name), "method '{}' has no parameter '{}'", text, name);
  return params.at(name).get<int64_t>();
}
bool MethodSpec::flag(const std::string& name) const {
  COLLAGE_CHECK(params.contains(name), "method '{}' has no parameter '{}'", text, name);
  return params.at(name).get<bool>();
}
std::string MethodSpec::string(const std::string& name) const {
  COLLAGE_CHECK(params.contains(name), "method '{}' has no parameter '{}'", text, name);
  return params.at(name).get<std::string>();
}

TextualInversionSettings MethodSpec::ti_settings() const {
  TextualInversionSettings ts;
  ts.steps = integer("ti_steps");
  ts.batch = integer("ti_batch");
  ts.warmup_steps = integer("ti_warmup");
  ts.learning_rate = number("ti_lr");
  ts.weight_decay = number("ti_weight_decay");
  ts.grad_clip = number("ti_grad_clip");
  ts.init = string("ti_init");
  ts.augment = flag("ti_augment");
  ts.seed = static_cast<uint64_t>(integer("ti_seed"));
  return ts;
}

std::unique_ptr<Method> create_method(const std::string& spec, const Json& params, const std::string& where) {
  return std::make_unique<Method>(MethodSpec::parse(spec, params, where));
}

std::vector<int64_t> select_layers(const Collage& collage, const std::string& selection, const std::string& where,
                                   const std::string& field) {
  const int64_t L = static_cast<int64_t>(collage.layers.size());
  std::vector<int64_t> out;
  if (selection.empty() || selection == "all") {
    for (int64_t i = 0; i < L; ++i) out.push_back(i);
    return out;
  }
  size_t start = 0;
  while (start <= selection.size()) {
    auto p = selection.find(',', start);
    auto item = selection.substr(start, p == std::string::npos ? std::string::npos : p - start);
    item.erase(0, item.find_first_not_of(' '));
    item.erase(item.find_last_not_of(' ') + 1);
    int64_t index = -1;
    if (item.rfind("meta:", 0) == 0) {  // every layer whose meta has this key true (or a non-zero number)
      const auto key = item.substr(5);
      bool any = false;
      for (int64_t i = 0; i < L; ++i) {
        bool has = false;
        if (json_flag(collage.layers[i].meta, key, &has) && std::find(out.begin(), out.end(), i) == out.end())
          out.push_back(i);
        any = any || has;
      }
      COLLAGE_CHECK_AT(any, where, field, "'{}': no layer of the collage has the meta key '{}'", item, key);
      if (p == std::string::npos) break;
      start = p + 1;
      continue;
    }
    if (!item.empty() && std::all_of(item.begin(), item.end(), ::isdigit)) {
      index = std::stoll(item);
      COLLAGE_CHECK_AT(index < L, where, field, "layer index {} out of range (the collage has {} layers)", index, L);
    } else {
      for (int64_t i = 0; i < L; ++i)
        if (collage.layers[i].name == item || (collage.layers[i].name.empty() && collage.layers[i].text == item))
          index = i;
      if (index < 0) {
        std::vector<std::string> names;
        for (int64_t i = 0; i < L; ++i)
          names.push_back(fmt::format("{} ({})", i, collage.layers[i].name.empty() ? collage.layers[i].text
                                                                                  : collage.layers[i].name));
        throw Error(fmt::format("no layer '{}' (layers: {})", item, fmt::join(names, ", ")), where, field);
      }
    }
    if (std::find(out.begin(), out.end(), index) == out.end()) out.push_back(index);
    if (p == std::string::npos) break;
    start = p + 1;
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace collage
