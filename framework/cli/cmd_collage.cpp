// collage generate / edit / methods / train-ti: Collage Diffusion methods on a collage folder.
#include <ATen/ATen.h>

#include <filesystem>
#include <iostream>

#include "cli/common.h"
#include "core/core.h"
#include "methods/methods.h"

namespace fs = std::filesystem;

namespace collage::cli {

namespace {

struct CollageArgs {
  std::string collage, method = "sdedit+ca+ti+ln", model, out, seeds = "0", scheduler = "euler_ancestral",
                       negative_prompt, cache_dir, variant;
  std::vector<std::string> params;
  int64_t steps = 50;
  double guidance = 7.5;
  double strength = -1;
  std::string controlnet;  // --controlnet DIR: the cn component's ControlNet folder
  bool record_attention = false;
  // edit
  std::string from, regenerate;
  double keep_strength = 0.05, edit_strength = 1.0;
  // train-ti
  std::string layer;
  // Whether the command line set these (else a collage's own settings apply, see with_collage_defaults).
  CLI::Option *seeds_option = nullptr, *steps_option = nullptr, *guidance_option = nullptr;
};

// "--param name=value": the value is JSON when it parses (numbers, true/false), else a string.
Json parse_params(const std::vector<std::string>& items) {
  Json params = Json::object();
  for (const auto& item : items) {
    const auto eq = item.find('=');
    COLLAGE_CHECK_AT(eq != std::string::npos && eq > 0, "", "--param", "expected name=value, got '{}'", item);
    const auto name = item.substr(0, eq), value = item.substr(eq + 1);
    Json v = Json::parse(value, nullptr, /*allow_exceptions=*/false);
    params[name] = v.is_discarded() || v.is_object() || v.is_array() ? Json(value) : v;
  }
  return params;
}

std::shared_ptr<StableDiffusion> load_model(const CollageArgs& a, const GlobalOptions& g) {
  return load_pipeline(a.model, a.variant, "", g);
}

void add_model_options(CLI::App* cmd, CollageArgs& a) {
  cmd->add_option("--collage", a.collage, "collage folder or its collage.json")->required();
  cmd->add_option("--model", a.model, "diffusers pipeline folder (default: the embedded ShapesWorld model)");
  cmd->add_option("--variant", a.variant, "weights variant, e.g. fp16");
  cmd->add_option("--param", a.params, "method parameter name=value (repeatable; `collage methods` lists them)");
  cmd->add_option("--cache-dir", a.cache_dir, "where learned embeddings are cached (default: ~/.cache/collage)");
}

void add_run_options(CLI::App* cmd, CollageArgs& a) {
  add_model_options(cmd, a);
  a.seeds_option = cmd->add_option("--seeds,--seed", a.seeds,
                                   "seeds: 7, 1-10, 1,4,9 (one image each, run as one batch; default: an imported "
                                   "collage's own seed, else 0)")
                       ->capture_default_str();
  a.steps_option = cmd->add_option("--steps", a.steps, "sampling steps (default: an imported collage's own)")
                       ->capture_default_str();
  a.guidance_option =
      cmd->add_option("--guidance", a.guidance, "classifier-free guidance scale (default: an imported collage's own)")
          ->capture_default_str();
  cmd->add_option("--scheduler", a.scheduler, "solver (euler_ancestral as the paper; '' = the model's own)")
      ->capture_default_str();
  cmd->add_option("--negative-prompt", a.negative_prompt, "negative prompt");
  cmd->add_option("--strength", a.strength, "global strength b (shortcut for --param strength=B)");
  cmd->add_option("--controlnet", a.controlnet, "ControlNet folder for the cn component (shortcut for --param cn_model=DIR)");
  cmd->add_option("--out", a.out, "output folder: seed_<n>.png, record.json, artefacts")->required();
  cmd->add_flag("--record-attention", a.record_attention, "save per-layer cross-attention maps");
}

// Writes images, artefacts and the record; prints the image paths.
void write_outputs(const CollageArgs& a, const std::vector<uint64_t>& seeds, const Collage& collage,
                   const MethodOutput& out) {
  fs::create_directories(a.out);
  Json record = out.record;
  record["timings"] = out.timings;
  record["images"] = Json::array();
  for (size_t i = 0; i < seeds.size(); ++i) {
    const auto path = (fs::path(a.out) / fmt::format("seed_{}.png", seeds[i])).string();
    write_image(path, out.images[static_cast<int64_t>(i)]);
    record["images"].push_back(fs::path(path).filename().string());
    std::cout << path << "\n";
  }
  auto it = out.artefacts.find("collage");
  if (it != out.artefacts.end()) write_image((fs::path(a.out) / "collage.png").string(), it->second);
  it = out.artefacts.find("noise_map");
  if (it != out.artefacts.end()) {
    write_image((fs::path(a.out) / "noise_map.png").string(), it->second.unsqueeze(0).expand({3, -1, -1}));
    record["artefacts"]["noise_map"] = "noise_map.png";
  }
  it = out.artefacts.find("attention");
  if (it != out.artefacts.end()) {
    // One grayscale picture per seed and layer, each normalised to its own maximum, upsampled to the canvas.
    auto maps = at::upsample_bilinear2d(it->second, {collage.height, collage.width}, false);
    for (size_t s = 0; s < seeds.size(); ++s)
      for (int64_t l = 0; l < maps.size(1); ++l) {
        auto m = maps[static_cast<int64_t>(s)][l];
        m = m / m.max().clamp_min(1e-12);
        const auto name = fmt::format("attention_seed{}_layer{}.png", seeds[s], l);
        write_image((fs::path(a.out) / name).string(), m.unsqueeze(0).expand({3, -1, -1}));
        record["artefacts"]["attention"].push_back(name);
      }
  }
  for (const auto& [name, tensor] : out.artefacts)
    if (name.rfind("ti_embedding.", 0) == 0) {
      const auto file = fmt::format("layer_{}_embedding.safetensors", name.substr(13));
      save_embedding((fs::path(a.out) / file).string(), tensor,
                     {{"collage", collage.file}, {"layer", name.substr(13)}, {"model", out.record.value("model", "")}});
      record["artefacts"]["embeddings"].push_back(file);
    }
  write_json_file((fs::path(a.out) / "record.json").string(), record);
  std::cerr << fmt::format("{} image(s) in {:.2f} s (sampling {:.2f} s{})\n", seeds.size(), out.timings.at("total"),
                           out.timings.count("sampling") ? out.timings.at("sampling") : 0.0,
                           out.timings.count("ti_train") ? fmt::format(", TI {:.2f} s", out.timings.at("ti_train"))
                                                          : std::string());
}

// The seed, steps and guidance an imported demo collage carries, where the command line sets none.
CollageArgs with_collage_defaults(const CollageArgs& a, const Collage& collage) {
  CollageArgs out = a;
  const auto d = sampling_defaults(collage);
  std::vector<std::string> used;
  auto unset = [](const CLI::Option* o) { return o != nullptr && o->count() == 0; };
  if (d.seed && unset(a.seeds_option)) {
    out.seeds = std::to_string(*d.seed);
    used.push_back("seed " + out.seeds);
  }
  if (d.steps && unset(a.steps_option)) {
    out.steps = *d.steps;
    used.push_back(fmt::format("{} steps", out.steps));
  }
  if (d.guidance_scale && unset(a.guidance_option)) {
    out.guidance = *d.guidance_scale;
    used.push_back(fmt::format("guidance {}", out.guidance));
  }
  if (!used.empty()) std::cerr << fmt::format("the collage's own settings: {}\n", fmt::join(used, ", "));
  return out;
}

void run_method_command(const CollageArgs& args, const GlobalOptions& g, const std::string& spec_text, Json params) {
  apply_runtime(g);
  if (args.strength >= 0) params["strength"] = args.strength;
  if (!args.controlnet.empty()) params["cn_model"] = args.controlnet;
  // Validate everything cheap before loading a multi-GB model.
  auto method = create_method(spec_text, params, "--method");
  auto collage = load_collage(args.collage);
  const CollageArgs a = with_collage_defaults(args, collage);
  const auto seeds = parse_seeds(a.seeds);
  auto sd = load_model(a, g);
  RunSettings rs;
  rs.seeds = seeds;
  rs.steps = a.steps;
  rs.guidance_scale = a.guidance;
  rs.scheduler = a.scheduler;
  rs.negative_prompt = a.negative_prompt;
  rs.record_attention = a.record_attention;
  rs.cache_dir = a.cache_dir;
  Progress progress(method->spec().text);
  rs.progress = progress.callback();
  rs.log = [](const std::string& line) { std::cerr << line << "\n"; };
  auto out = method->run(collage, *sd, rs);
  write_outputs(a, seeds, collage, out);
}

void print_methods() {
  std::cout << "Method spec: components joined by '+', at most one base (default sdedit), e.g. sdedit+ca+ti+ln\n\n";
  for (const auto& c : method_components()) {
    std::cout << fmt::format("{:<17} {:<9} {}\n", c.name, c.name == "common" ? "" : (c.is_base ? "base" : "modifier"),
                             c.description);
    for (const auto& p : c.params)
      std::cout << fmt::format("    {:<24} {:<7} default {:<8} {}\n", p.name, p.type, p.default_value.dump(),
                               p.description);
  }
}

void run_train_ti(const CollageArgs& a, const GlobalOptions& g) {
  apply_runtime(g);
  auto params = parse_params(a.params);
  auto spec = MethodSpec::parse("sdedit+ti", params, "--param");
  auto collage = load_collage(a.collage);
  const auto layers = select_layers(collage, a.layer, collage.where(), "--layer");
  COLLAGE_CHECK_AT(layers.size() == 1, "", "--layer", "give exactly one layer (index or name)");
  const int64_t i = layers.front();
  auto sd = load_model(a, g);
  const auto ts = ti_settings(spec);
  auto placed = place_layers(collage);
  auto visible = visible_masks(placed);
  Progress progress(fmt::format("TI layer {}", i));
  auto res = train_layer_embedding(*sd, flatten_layers(placed, collage.background, i), visible[i],
                                   collage.layers[i].text, ts, a.cache_dir.empty() ? default_cache_dir() : a.cache_dir,
                                   [&](int64_t done, int64_t total, double) { progress(done, total); });
  COLLAGE_CHECK_AT(!a.out.empty(), "", "--out", "give the output .safetensors file");
  if (!fs::path(a.out).parent_path().empty()) fs::create_directories(fs::path(a.out).parent_path());
  save_embedding(a.out, res.embedding,
                 {{"collage", collage.file}, {"layer", std::to_string(i)}, {"layer_text", collage.layers[i].text},
                  {"model", sd->name}, {"settings", ts.to_json().dump()}});
  std::cout << a.out << "\n";
  if (res.from_cache)
    std::cerr << fmt::format("from cache {} ({:.2f} s)\n", res.cache_file, res.seconds);
  else
    std::cerr << fmt::format("trained {} steps in {:.1f} s; masked loss on the evaluation batch {:.5f} -> {:.5f}\n",
                             ts.steps, res.seconds, res.eval_loss_before, res.eval_loss_after);
  std::cerr << fmt::format("use it: set \"embedding\": \"{}\" on layer {} of the collage\n", a.out, i);
}

}  // namespace

void add_collage_commands(CLI::App& app, GlobalOptions& global) {
  auto gen = std::make_shared<CollageArgs>();
  auto* g = app.add_subcommand("generate", "harmonise a collage with a method (e.g. sdedit+ca+ti+ln)");
  g->add_option("--method", gen->method, "method spec: components joined by '+' (see `collage methods`)")
      ->capture_default_str();
  add_run_options(g, *gen);
  g->callback([gen, &global] { run_method_command(*gen, global, gen->method, parse_params(gen->params)); });

  auto ed = std::make_shared<CollageArgs>();
  ed->method = "edit+ca";
  auto* e = app.add_subcommand("edit", "regenerate chosen layers of a previous output, keeping the rest");
  e->add_option("--method", ed->method, "method spec containing edit (modifiers ca, ti may be added)")
      ->capture_default_str();
  add_run_options(e, *ed);
  e->add_option("--from", ed->from, "previous output image (canvas size)")->required();
  e->add_option("--regenerate", ed->regenerate, "layers to regenerate: indices or names, comma-separated")->required();
  e->add_option("--keep-strength", ed->keep_strength, "noise strength of everything kept")->capture_default_str();
  e->add_option("--edit-strength", ed->edit_strength, "noise strength of the regenerated layers")->capture_default_str();
  e->callback([ed, &global] {
    Json params = parse_params(ed->params);
    params["edit_from"] = ed->from;
    params["edit_regenerate"] = ed->regenerate;
    params["edit_keep_strength"] = ed->keep_strength;
    params["edit_strength"] = ed->edit_strength;
    COLLAGE_CHECK_AT(MethodSpec::parse(ed->method, params, "--method").base == "edit", "", "--method",
                     "collage edit needs a spec with the edit base (e.g. edit+ca), got '{}'", ed->method);
    run_method_command(*ed, global, ed->method, params);
  });

  auto* m = app.add_subcommand("methods", "list the method components with their parameters and defaults");
  m->callback([] { print_methods(); });

  auto ti = std::make_shared<CollageArgs>();
  auto* t = app.add_subcommand("train-ti", "learn one layer's textual-inversion embedding and save it");
  add_model_options(t, *ti);
  t->add_option("--layer", ti->layer, "layer index or name")->required();
  t->add_option("--out", ti->out, "output .safetensors file")->required();
  t->callback([ti, &global] { run_train_ti(*ti, global); });
}

}  // namespace collage::cli
