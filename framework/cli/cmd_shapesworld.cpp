// collage sandbox render / analyse / make-dataset: look at the ShapesWorld sandbox (scenes, captions, what the
// analyser reads back from an image) and draw collage datasets from it.
#include <filesystem>
#include <iostream>

#include "cli/common.h"
#include "core/core.h"
#include "datasets/collage_datasets.h"
#include "datasets/shapesworld/shapesworld.h"

namespace fs = std::filesystem;

namespace collage::cli {

void add_shapesworld_commands(CLI::App& app, GlobalOptions& global) {
  struct RenderArgs {
    uint64_t seed = 0;
    int n = 16, size = 64, min_objects = 1, max_objects = 4;
    std::string out;
  };
  auto r = std::make_shared<RenderArgs>();
  auto* render_cmd = app.add_subcommand(
      "render",
      "render N random ShapesWorld scenes (seeds SEED..SEED+N-1) as PNGs, with scenes.json holding each "
      "scene's spec and captions");
  render_cmd->add_option("--seed", r->seed, "seed of the first scene")->capture_default_str();
  render_cmd->add_option("--n", r->n, "number of scenes")->check(CLI::PositiveNumber)->capture_default_str();
  render_cmd->add_option("--size", r->size, "image side in pixels")->check(CLI::Range(16, 4096))->capture_default_str();
  render_cmd->add_option("--min-objects", r->min_objects, "fewest objects per scene")->capture_default_str();
  render_cmd->add_option("--max-objects", r->max_objects, "most objects per scene")->capture_default_str();
  render_cmd->add_option("--out", r->out, "output folder")->required();
  render_cmd->callback([r, &global] {
    apply_runtime(global);
    fs::create_directories(r->out);
    shapesworld::SampleOptions options;
    options.min_objects = r->min_objects;
    options.max_objects = r->max_objects;
    shapesworld::CaptionOptions everything;
    everything.colour_probability = everything.pattern_probability = 1;
    everything.background_probability = everything.tint_probability = 1;
    Json scenes = Json::array();
    for (int i = 0; i < r->n; ++i) {
      const uint64_t seed = r->seed + static_cast<uint64_t>(i);
      const auto scene = shapesworld::sample_scene(seed, options);
      const auto rendered = shapesworld::render(scene, r->size, r->size);
      const std::string file = fmt::format("scene_{:06d}.png", seed);
      write_image((fs::path(r->out) / file).string(), rendered.image);
      scenes.push_back(Json{{"file", file},
                            {"seed", seed},
                            {"caption", shapesworld::caption(scene, seed)},
                            {"full_caption", shapesworld::caption(scene, seed, everything)},
                            {"scene", shapesworld::to_json(scene)}});
    }
    write_json_file((fs::path(r->out) / "scenes.json").string(), scenes);
    std::cout << fmt::format("wrote {} scenes ({}x{}) and scenes.json to {}\n", r->n, r->size, r->size, r->out);
  });

  struct AnalyseArgs {
    std::string image, background, tint;
  };
  auto a = std::make_shared<AnalyseArgs>();
  auto* analyse_cmd = app.add_subcommand(
      "analyse", "segment and classify the ShapesWorld objects of an image (a render or a generated image)");
  analyse_cmd->add_option("image", a->image, "PNG or JPEG image")->required()->check(CLI::ExistingFile);
  analyse_cmd->add_option("--background", a->background, "the scene's background, if known (default: estimated)");
  analyse_cmd->add_option("--tint", a->tint, "the scene's tint, if known (default: estimated)");
  analyse_cmd->callback([a, &global] {
    apply_runtime(global);
    shapesworld::AnalyseOptions options;
    options.background = a->background;
    options.tint = a->tint;
    const auto image = read_image(a->image);
    const auto result = shapesworld::analyse_scene(image, options);
    std::cout << fmt::format("{}: {}x{}, background {}, tint {}, {} object(s)\n", a->image, image.size(2), image.size(1),
                             result.background, result.tint, result.objects.size());
    if (result.objects.empty()) return;
    std::cout << fmt::format("| {:<7} | {:<8} | {:<7} | {:>5} | {:>5} | {:>5} | {:>8} | {:>6} | {:>5} |\n", "colour", "shape",
                             "pattern", "cx", "cy", "size", "rotation", "area", "fit");
    std::cout << fmt::format("|{:-<9}|{:-<10}|{:-<9}|{:->7}|{:->7}|{:->7}|{:->10}|{:->8}|{:->7}|\n", "", "", "", "", "", "",
                             "", "", "");
    for (const auto& d : result.objects)
      std::cout << fmt::format("| {:<7} | {:<8} | {:<7} | {:>5.3f} | {:>5.3f} | {:>5.3f} | {:>8.1f} | {:>6.4f} | {:>5.3f} |\n",
                               d.colour, d.shape, d.pattern, d.cx, d.cy, d.size, d.rotation_deg, d.area, d.fit);
  });

  auto ds = std::make_shared<datasets::ShapesWorldCollageOptions>();
  auto ds_args = std::make_shared<std::pair<int64_t, std::string>>(50, "");
  auto ds_world = std::make_shared<std::string>("shapesworld");
  auto* d = app.add_subcommand("make-dataset", "generate a collage dataset (layers cut from other scenes, with ground truth)");
  d->add_option("world", *ds_world, "world to draw from (shapesworld)")->capture_default_str();
  d->add_option("--n", ds_args->first, "number of collages")->capture_default_str();
  d->add_option("--seed", ds->seed, "dataset seed")->capture_default_str();
  d->add_option("--size", ds->size, "canvas side in pixels")->capture_default_str();
  d->add_option("--max-objects", ds->max_objects, "objects per collage (1..max)")->capture_default_str();
  d->add_option("--noise-strength", ds->noise_strength, "s_i written into every layer")->capture_default_str();
  d->add_option("--unnamed", ds->unnamed_probability, "chance a layer's pattern is left out of its text")
      ->capture_default_str();
  d->add_option("--unnamed-colour", ds->unnamed_colour_probability,
                "chance a layer's colour is left out of its text (a positive control for TI)")
      ->capture_default_str();
  d->add_option("--kept-strength", ds->kept_strength,
                "one object layer per collage gets this noise strength and meta kept=true (-1: none)")
      ->capture_default_str();
  d->add_option("--w-pos", ds->w_pos, "CA strength inside every layer (w_pos, 0..1; 0 = suppression only)")
      ->capture_default_str();
  d->add_option("--out", ds_args->second, "output dataset folder")->required();
  d->callback([ds, ds_args, ds_world] {
    COLLAGE_CHECK_AT(*ds_world == "shapesworld", "", "world", "unknown world '{}' (available: shapesworld)", *ds_world);
    auto folders = datasets::make_shapesworld_dataset(ds_args->first, *ds, ds_args->second);
    std::cout << fmt::format("{} collages in {}\n", folders.size(), ds_args->second);
  });
}

}  // namespace collage::cli
