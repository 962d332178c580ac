// collage score / metrics / bench metrics: score a harmonised image against its collage with the metric
// registry (metrics/metrics.h) and the real models behind it (metrics/plugins.h).
#include <ATen/ATen.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "cli/common.h"
#include "collage/collage.h"
#include "core/core.h"
#include "datasets/collage_datasets.h"
#include "datasets/shapesworld/shapesworld.h"
#include "metrics/metrics.h"

namespace fs = std::filesystem;
namespace cm = collage::metrics;

namespace collage::cli {

namespace {

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string part;
  while (std::getline(ss, part, ',')) {
    auto b = part.find_first_not_of(" \t"), e = part.find_last_not_of(" \t");
    if (b != std::string::npos) out.push_back(part.substr(b, e - b + 1));
  }
  return out;
}

// Metric names from --metrics: every per-image metric when empty. Unknown names list the valid ones.
std::vector<std::string> resolve_metrics(const std::string& text) {
  const auto& reg = cm::builtin_metrics();
  const auto valid = cm::per_image_metric_names(reg);
  if (text.empty() || text == "all") return valid;
  std::vector<std::string> out;
  for (const auto& name : split_list(text)) {
    COLLAGE_CHECK_AT(reg.has(name), "", "--metrics", "unknown metric '{}'; valid per-image metrics: {}", name,
                     fmt::join(valid, ", "));
    COLLAGE_CHECK_AT(reg.info(name).kind == cm::MetricKind::per_image, "", "--metrics",
                     "'{}' is a set-level metric (feature sets, not one image); valid per-image metrics: {}", name,
                     fmt::join(valid, ", "));
    out.push_back(name);
  }
  return out;
}

bool needs_any(const std::vector<std::string>& names, cm::Need need) {
  for (const auto& n : names)
    if (cm::builtin_metrics().info(n).needs.has(need)) return true;
  return false;
}

struct ModelArgs {
  std::string segmenter = "auto", dnn_model, clip, clip_tokenizer, lpips, lpips_net = "alex";
};

void add_model_options(CLI::App* cmd, ModelArgs& m, bool with_segmenter) {
  if (with_segmenter) {
    cmd->add_option("--segmenter", m.segmenter,
                    std::string("segmenter for mask_iou: shapesworld, appearance, dnn, or auto (") +
                        cm::kAutoSegmenterDescription + ")")
        ->capture_default_str();
    cmd->add_option("--dnn-model", m.dnn_model, "ONNX segmentation model for --segmenter dnn");
  }
  cmd->add_option("--clip", m.clip,
                  "transformers CLIPModel folder for the CLIP metrics (default: assets/shapesworld/clip if present, "
                  "else the CLIP metrics are skipped)");
  cmd->add_option("--clip-tokenizer", m.clip_tokenizer,
                  "CLIP tokenizer folder (vocab.json, merges.txt; default: the CLIP folder or its tokenizer/)");
  cmd->add_option("--lpips", m.lpips,
                  "LPIPS weights folder: heads_<net>.safetensors + backbone_<torchvision net>.safetensors (default: "
                  "assets/lpips if present, else lpips is skipped)");
  cmd->add_option("--lpips-net", m.lpips_net, "LPIPS backbone: alex, vgg or squeeze")->capture_default_str();
}

// Loads what `names` need: the segmenter for this input, then the CLIP / LPIPS models (missing ones become skip
// reasons). `reference_fallback`: without shipped assets, the tiny reference models (bench).
cm::ModelSetup make_setup(const ModelArgs& m, bool reference_fallback, const std::vector<std::string>& names,
                          const cm::ScoreInput& input) {
  cm::MetricModelPaths paths;
  paths.clip = m.clip;
  paths.clip_tokenizer = m.clip_tokenizer;
  paths.lpips = m.lpips;
  paths.lpips_net = parse_lpips_net(m.lpips_net);
  paths.reference_fallback = reference_fallback;
  cm::ModelSetup setup = cm::load_metric_models(names, paths);
  if (needs_any(names, cm::Need::segmenter)) {
    std::string seg = m.segmenter;
    if (seg == "auto") seg = cm::auto_segmenter_name(input);
    Json options = Json::object();
    if (seg == "dnn") {
      COLLAGE_CHECK_AT(!m.dnn_model.empty(), "", "--dnn-model", "--segmenter dnn needs --dnn-model FILE.onnx");
      options["model"] = m.dnn_model;
    }
    setup.segmenter_name = seg;
    setup.context.segmenter = cm::all_segmenters().create(seg, options);
  }
  return setup;
}

std::string fmt_value(double v) { return std::isfinite(v) ? fmt::format("{:.4f}", v) : std::string("-"); }

std::string models_line(const cm::ModelSetup& s, const ModelArgs& m, const std::string& clip_dir,
                        const std::string& lpips_dir) {
  std::vector<std::string> parts;
  if (!s.segmenter_name.empty()) parts.push_back("segmenter " + s.segmenter_name);
  if (s.context.embedder) parts.push_back("CLIP " + clip_dir);
  if (s.context.perceptual) parts.push_back("LPIPS " + m.lpips_net + " " + lpips_dir);
  return fmt::format("{}", fmt::join(parts, ", "));
}

}  // namespace

void add_score_commands(CLI::App& app, GlobalOptions& global) {
  // ---------------------------------------------------------------- collage score
  struct ScoreArgs {
    std::string collage, image, metrics, json;
    ModelArgs models;
  };
  auto a = std::make_shared<ScoreArgs>();
  auto* score = app.add_subcommand(
      "score", "score an output image against its collage (mask IoU, CIEDE2000, SSIM, LPIPS, CLIP metrics)");
  score->add_option("--collage", a->collage, "collage folder or collage.json")->required();
  score->add_option("--image", a->image, "the output image (PNG/JPEG) at the collage's canvas size")
      ->required()
      ->check(CLI::ExistingFile);
  score->add_option("--metrics", a->metrics,
                    "comma-separated metric names (default: all per-image metrics; `collage metrics` lists them)");
  score->add_option("--json", a->json, "where to write the scores as JSON (default: IMAGE with .scores.json)");
  add_model_options(score, a->models, true);
  score->callback([a, &global] {
    apply_runtime(global);
    const auto names = resolve_metrics(a->metrics);  // a typo fails before any loading
    const Collage collage = load_collage(a->collage);
    const auto image = read_image(a->image);
    const auto input = cm::score_input_from_collage(collage, image);

    const double t0 = now_seconds();
    const auto setup = make_setup(a->models, false, names, input);
    const double t1 = now_seconds();
    const auto scores = cm::score_with_setup(input, names, setup);
    const double t2 = now_seconds();

    std::vector<std::string> labels;
    for (size_t i = 0; i < collage.layers.size(); ++i) {
      const auto& l = collage.layers[i];
      labels.push_back(!l.name.empty() ? l.name : !l.text.empty() ? l.text : "layer" + std::to_string(i));
    }
    std::cout << fmt::format("{} vs {} ({}x{}, {} layers; {})\n", a->image, collage.where(), collage.width,
                             collage.height, collage.layers.size(), models_line(setup, a->models, setup.clip_dir, setup.lpips_dir));
    std::cout << cm::format_scores_table(scores, names, labels);
    std::cerr << fmt::format("models loaded in {:.2f} s, scored in {:.3f} s\n", t1 - t0, t2 - t1);

    Json out = Json::object();
    out["image"] = a->image;
    out["collage"] = collage.where();
    out["layers"] = labels;
    out["segmenter"] = setup.segmenter_name;
    if (setup.context.embedder) out["clip"] = setup.clip_dir;
    if (setup.context.perceptual) out["lpips"] = Json{{"folder", setup.lpips_dir}, {"net", a->models.lpips_net}};
    out["framework"] = framework_version() + " (" + git_revision() + ")";
    out["scores"] = cm::to_json(scores);
    std::string json_path = a->json;
    if (json_path.empty()) json_path = (fs::path(a->image).parent_path() / fs::path(a->image).stem()).string() + ".scores.json";
    write_json_file(json_path, out);
    std::cout << "wrote " << json_path << "\n";
  });

  // ---------------------------------------------------------------- collage metrics
  auto* list = app.add_subcommand("metrics", "list the metrics (name, kind, direction, needs) and the segmenters");
  list->callback([] {
    const auto& reg = cm::builtin_metrics();
    std::cout << "metrics:\n";
    std::cout << fmt::format("| {:<21} | {:<9} | {:<16} | {:<48} | {}\n", "name", "kind", "direction", "needs",
                             "description");
    for (const auto& n : reg.names()) {
      const auto& info = reg.info(n);
      std::cout << fmt::format("| {:<21} | {:<9} | {:<16} | {:<48} | {}\n", n,
                               info.kind == cm::MetricKind::per_image ? "per_image" : "set_level",
                               cm::direction_name(info.direction), fmt::format("{}", fmt::join(info.needs.names(), ",")),
                               info.description);
    }
    const auto segs = cm::all_segmenters();
    std::cout << "\nsegmenters (--segmenter):\n";
    for (const auto& n : segs.names()) std::cout << fmt::format("  {:<12} {}\n", n, segs.description(n));
    std::cout << fmt::format("  {:<12} {}\n", "auto", cm::kAutoSegmenterDescription);
  });

}

// collage bench metrics
void add_metrics_bench_command(CLI::App& bench_group, GlobalOptions& global) {
  struct BenchArgs {
    int n = 20;
    uint64_t seed = 0;
    std::string collage;
    ModelArgs models;
  };
  auto b = std::make_shared<BenchArgs>();
  auto* bench = bench_group.add_subcommand(
      "metrics",
      "time every per-image metric on one 64x64 ShapesWorld sandbox image (a rendered scene scored against a "
      "collage of its background and objects); the golden tiny CLIP / LPIPS stand in when assets/ has no models");
  bench->add_option("--n", b->n, "timed repetitions per metric")->check(CLI::PositiveNumber)->capture_default_str();
  bench->add_option("--seed", b->seed, "ShapesWorld scene seed")->capture_default_str();
  bench->add_option("--collage", b->collage,
                    "score this collage's flattened image against it instead of a rendered scene");
  add_model_options(bench, b->models, true);
  bench->callback([b, &global] {
    apply_runtime(global);
    cm::ScoreInput input;
    std::string what;
    if (b->collage.empty()) {
      auto [collage, image] = datasets::rendered_scene_collage(b->seed, 64);
      input = cm::score_input_from_collage(collage, image);
      what = fmt::format("ShapesWorld scene {} ({} objects) vs its collage, 64x64", b->seed, collage.layers.size() - 1);
    } else {
      const Collage collage = load_collage(b->collage);
      input = cm::score_input_from_collage(collage, flatten(collage));
      what = fmt::format("{} flattened vs itself, {}x{}", collage.where(), collage.width, collage.height);
    }
    const auto names = cm::per_image_metric_names();
    const double t0 = now_seconds();
    const auto setup = make_setup(b->models, true, names, input);
    const double load_s = now_seconds() - t0;
    std::cout << fmt::format("{}; {}; {} threads; models loaded in {:.2f} s\n", what,
                             models_line(setup, b->models, setup.clip_dir, setup.lpips_dir), at::get_num_threads(),
                             load_s);

    std::cout << fmt::format("| {:<21} | {:>10} | {:>10} | {:>9} | {}\n", "metric", "ms/image", "best ms", "value",
                             "");
    double sum_ms = 0;
    for (const auto& name : names) {
      auto warm = cm::score_with_setup(input, {name}, setup);  // warm-up (allocations, caches)
      double total = 0, best = 1e30;
      for (int i = 0; i < b->n; ++i) {
        const double s = now_seconds();
        auto r = cm::score_with_setup(input, {name}, setup);
        const double e = now_seconds() - s;
        total += e;
        best = std::min(best, e);
      }
      const double ms = 1000 * total / b->n;
      sum_ms += ms;
      const auto& v = warm.at(name);
      std::cout << fmt::format("| {:<21} | {:>10.2f} | {:>10.2f} | {:>9} | {}\n", name, ms, 1000 * best,
                               v.skipped ? std::string("skipped") : fmt_value(v.value),
                               v.skipped ? v.skip_reason : std::string());
    }
    double total = 0;
    for (int i = 0; i < b->n; ++i) {
      const double s = now_seconds();
      auto r = cm::score_with_setup(input, names, setup);
      total += now_seconds() - s;
    }
    std::cout << fmt::format("| {:<21} | {:>10.2f} | {:>10} | {:>9} | sum of the rows {:.2f} ms\n",
                             "all (one call)", 1000 * total / b->n, "", "", sum_ms);
  });
}

}  // namespace collage::cli
