// The method registry: components by name, spec parsing and validation against the components' declarations.
#include <algorithm>
#include <cctype>
#include <cmath>

#include "core/core.h"
#include "methods/builtin_components.h"
#include "methods/methods.h"

namespace collage {

void register_builtin_components(ComponentRegistry& registry) {
#define COLLAGE_CALL_REGISTER(Class) collage_register_component_##Class(registry);
  COLLAGE_BUILTIN_COMPONENTS(COLLAGE_CALL_REGISTER)
#undef COLLAGE_CALL_REGISTER
}

std::vector<double> layer_noise_strengths(const Collage& collage) {
  std::vector<double> out;
  for (const auto& l : collage.layers) out.push_back(l.noise_strength);
  return out;
}

void ComponentRegistry::add(std::shared_ptr<const Component> component) {
  COLLAGE_CHECK(component, "method registry: null component");
  COLLAGE_CHECK(!find(component->name()), "method registry: two components named '{}' (a plugin must choose another name)",
                component->name());
  for (const auto& p : component->info().params)
    for (const auto& other : components_)
      for (const auto& q : other->info().params)
        COLLAGE_CHECK(p.name != q.name, "method registry: parameter '{}' of '{}' is already declared by '{}'", p.name,
                      component->name(), other->name());
  components_.push_back(std::move(component));
}

const Component* ComponentRegistry::find(const std::string& name) const {
  for (const auto& c : components_)
    if (c->name() == name) return c.get();
  return nullptr;
}

const ComponentRegistry& method_registry() {
  static const ComponentRegistry registry = [] {
    ComponentRegistry r;
    register_builtin_components(r);
    collage_register_plugin_components(r);
    return r;
  }();
  return registry;
}

std::vector<ComponentInfo> method_components() {
  std::vector<ComponentInfo> out;
  for (const auto& c : method_registry().all()) out.push_back(c->info());
  return out;
}

namespace {

std::string component_names(bool bases_only = false) {
  std::vector<std::string> names;
  for (const auto& c : method_registry().all())
    if (c->name() != "common" && (!bases_only || c->info().is_base)) names.push_back(c->name());
  return fmt::format("{}", fmt::join(names, ", "));
}

std::string trim_lower(std::string s) {
  s.erase(0, s.find_first_not_of(" \t"));
  s.erase(s.find_last_not_of(" \t") + 1);
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  std::replace(s.begin(), s.end(), '-', '_');
  return s;
}

std::vector<std::string> split_spec(const std::string& spec_text) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    auto p = spec_text.find('+', start);
    parts.push_back(trim_lower(spec_text.substr(start, p == std::string::npos ? std::string::npos : p - start)));
    if (p == std::string::npos) break;
    start = p + 1;
  }
  return parts;
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

void check_range(const ParamInfo& p, const Json& value, const std::string& where) {
  if (!p.range) return;
  const auto& r = *p.range;
  const double v = value.get<double>();
  if (r.also && v == *r.also) return;
  const bool ok = (r.low_open ? v > r.low : v >= r.low) && v <= r.high;
  const std::string also = r.also ? fmt::format(" or {}", *r.also) : "";
  if (r.high < 1e300)
    COLLAGE_CHECK_AT(ok, where, "params." + p.name, "must be in {}{}, {}]{}, got {}", r.low_open ? "(" : "[", r.low,
                     r.high, also, v);
  else
    COLLAGE_CHECK_AT(ok, where, "params." + p.name, "must be {} {}{}, got {}", r.low_open ? ">" : ">=", r.low, also, v);
}

// The given parameter values over the defaults of `allowed`, type-coerced and range-checked.
Json resolve_params(const std::vector<const ParamInfo*>& allowed, const Json& params, const std::string& spec_text,
                    const std::string& where) {
  Json out = Json::object();
  for (const auto* p : allowed) out[p->name] = p->default_value;
  COLLAGE_CHECK_AT(params.is_object() || params.is_null(), where, "params", "method parameters must be an object");
  if (params.is_object())
    for (auto it = params.begin(); it != params.end(); ++it) {
      auto found = std::find_if(allowed.begin(), allowed.end(), [&](const ParamInfo* p) { return p->name == it.key(); });
      if (found == allowed.end()) {
        std::vector<std::string> names;
        for (const auto* p : allowed) names.push_back(p->name);
        throw Error(fmt::format("unknown parameter for method '{}' (its parameters: {})", spec_text,
                                fmt::join(names, ", ")),
                    where, "params." + it.key());
      }
      out[it.key()] = coerce(**found, it.value(), where);
    }
  for (const auto* p : allowed) check_range(*p, out[p->name], where);
  return out;
}

}  // namespace

MethodSpec MethodSpec::parse(const std::string& spec_text, const Json& params, const std::string& where) {
  const auto& registry = method_registry();
  MethodSpec spec;
  std::vector<std::string> bases, modifiers;
  for (const auto& part : split_spec(spec_text)) {
    const Component* c = registry.find(part);
    COLLAGE_CHECK_AT(!part.empty(), where, spec_text, "empty component in method spec (valid components: {})",
                     component_names());
    COLLAGE_CHECK_AT(c && part != "common", where, part, "unknown method component in '{}' (valid components: {})",
                     spec_text, component_names());
    auto& list = c->info().is_base ? bases : modifiers;
    COLLAGE_CHECK_AT(std::find(list.begin(), list.end(), part) == list.end(), where, part,
                     "component given twice in '{}'", spec_text);
    list.push_back(part);
  }
  COLLAGE_CHECK_AT(bases.size() <= 1, where, spec_text, "a method has at most one base ({}), got {}",
                   component_names(true), fmt::join(bases, " and "));
  spec.base = bases.empty() ? "sdedit" : bases.front();
  // Normalised text: base first, then modifiers in registry order.
  std::vector<std::string> ordered{spec.base};
  std::vector<const ParamInfo*> allowed;
  for (const auto& c : registry.all()) {
    const bool modifier = std::find(modifiers.begin(), modifiers.end(), c->name()) != modifiers.end();
    if (modifier) spec.modifiers.push_back(c->name());
    if (c->name() == "common" || c->name() == spec.base || modifier)
      for (const auto& p : c->info().params) allowed.push_back(&p);
  }
  ordered.insert(ordered.end(), spec.modifiers.begin(), spec.modifiers.end());
  spec.text = fmt::format("{}", fmt::join(ordered, "+"));
  spec.params = resolve_params(allowed, params, spec.text, where);
  registry.find(spec.base)->check(spec, where);
  for (const auto& m : spec.modifiers) registry.find(m)->check(spec, where);
  return spec;
}

bool MethodSpec::has(const std::string& component) const {
  return component == base || std::find(modifiers.begin(), modifiers.end(), component) != modifiers.end();
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
