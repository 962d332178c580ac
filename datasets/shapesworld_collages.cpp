#include <ATen/ATen.h>

#include <filesystem>
#include <random>

#include "core/core.h"
#include "datasets/collage_datasets.h"
#include "datasets/shapesworld/shapesworld.h"

namespace fs = std::filesystem;

namespace collage::datasets {

namespace sw = shapesworld;

namespace {

// The object's box on the canvas: its RGBA cut out, and the top-left corner.
std::pair<at::Tensor, std::array<int64_t, 2>> cut_out(const at::Tensor& rgba) {
  auto alpha = rgba[3] > 1.0 / 255;
  auto rows = alpha.any(1).nonzero().squeeze(1), cols = alpha.any(0).nonzero().squeeze(1);
  COLLAGE_CHECK(rows.numel() > 0, "ShapesWorld collage: an object rendered empty");
  const int64_t r0 = rows.min().item<int64_t>(), r1 = rows.max().item<int64_t>() + 1;
  const int64_t c0 = cols.min().item<int64_t>(), c1 = cols.max().item<int64_t>() + 1;
  return {rgba.slice(1, r0, r1).slice(2, c0, c1).contiguous(), {c0, r0}};
}

}  // namespace

Collage make_shapesworld_collage(uint64_t index, const ShapesWorldCollageOptions& o) {
  std::mt19937_64 rng(o.seed * 1000003ull + index * 7919ull + 17);
  std::uniform_real_distribution<double> unit(0, 1);
  sw::SampleOptions so;
  so.min_objects = o.min_objects;
  so.max_objects = o.max_objects;
  so.pattern_probability = 0.5;
  so.shade_probability = 0.5;
  so.max_shade = 0.2;
  const auto target = sw::sample_scene(rng(), so);
  const auto tints = sw::tint_names();
  // Another scene's background: same kind of ground, its own tint and texture.
  sw::SceneSpec background_scene = target;
  background_scene.objects.clear();
  background_scene.tint = tints[rng() % tints.size()];
  background_scene.texture_seed = rng();

  Collage c;
  c.width = c.height = o.size;
  // Texts from the world's own caption grammar (what the embedded model was trained on): every object named by
  // shape; its colour left out with probability unnamed_colour_probability, its pattern with unnamed_probability,
  // its shade never named, so only the layer's pixels carry that part of its appearance.
  sw::CaptionOptions co;
  co.colour_probability = 1.0 - o.unnamed_colour_probability;  // make_caption draws every decision either way
  co.pattern_probability = 1.0 - o.unnamed_probability;
  co.background_probability = 1.0;
  co.tint_probability = 1.0;
  const auto cap = sw::make_caption(target, rng(), co);
  c.prompt = cap.text;
  const auto& phrases = cap.object_phrases;
  // What each layer's text leaves out, by kind (pattern, shade, colour), so reports and TI can select each.
  std::vector<bool> unnamed_pattern, unnamed_shade, unnamed_colour;
  for (size_t i = 0; i < target.objects.size(); ++i) {
    const auto& obj = target.objects[i];
    const bool pattern_named = phrases[i].find(obj.pattern) != std::string::npos;
    unnamed_pattern.push_back(obj.pattern != "plain" && !pattern_named);
    unnamed_shade.push_back(obj.shade != 0);
    unnamed_colour.push_back(phrases[i].find(obj.colour) == std::string::npos);
  }
  const auto ground = cap.background_phrase;
  Layer bg;
  bg.name = "background";
  bg.text = ground;
  auto bg_rgb = sw::render_background(background_scene, o.size, o.size);
  bg.rgba = at::cat({bg_rgb, at::ones({1, o.size, o.size})}, 0);
  bg.noise_strength = o.noise_strength;
  bg.meta = Json{{"background", target.background}, {"tint", background_scene.tint}};
  c.layers.push_back(bg);
  for (size_t i = 0; i < target.objects.size(); ++i) {
    const auto& obj = target.objects[i];
    // Lit from elsewhere, tinted otherwise: what a collage made of other photos looks like.
    sw::SceneSpec lighting;
    lighting.background = target.background;
    lighting.tint = tints[rng() % tints.size()];
    lighting.light_angle_deg = std::fmod(target.light_angle_deg + 90 + 180 * unit(rng), 360.0);
    auto rgba = sw::render_object_rgba(obj, lighting, o.size, o.size);
    auto [cut, corner] = cut_out(rgba);
    Layer l;
    l.name = fmt::format("object_{}", i);
    l.text = phrases[i];
    l.rgba = cut;
    l.transform.x = static_cast<double>(corner[0]);
    l.transform.y = static_cast<double>(corner[1]);
    l.noise_strength = o.noise_strength;
    l.meta = Json{{"object", sw::to_json(obj)},
                  {"unnamed_appearance", unnamed_pattern[i] || unnamed_shade[i] || unnamed_colour[i]},
                  {"unnamed_pattern", static_cast<bool>(unnamed_pattern[i])},
                  {"unnamed_shade", static_cast<bool>(unnamed_shade[i])},
                  {"unnamed_colour", static_cast<bool>(unnamed_colour[i])},
                  {"source_tint", lighting.tint},
                  {"source_light_deg", lighting.light_angle_deg}};
    c.layers.push_back(l);
  }
  if (o.kept_strength >= 0) {
    COLLAGE_CHECK_AT(o.kept_strength <= 1, "", "kept_strength", "must be in [0, 1], got {}", o.kept_strength);
    std::mt19937_64 kept_rng(o.seed * 2654435761ull + index * 40503ull + 99);
    const size_t kept = 1 + kept_rng() % target.objects.size();  // layer 0 is the background
    for (size_t i = 1; i < c.layers.size(); ++i) c.layers[i].meta["kept"] = i == kept;
    c.layers[kept].noise_strength = o.kept_strength;
  }
  COLLAGE_CHECK_AT(o.w_pos >= 0 && o.w_pos <= 1, "", "w_pos", "must be in [0, 1], got {}", o.w_pos);
  for (auto& layer : c.layers) layer.w_pos = o.w_pos;
  c.meta = Json{{"generator", "shapesworld"},
                {"index", index},
                {"seed", o.seed},
                {"target_scene", sw::to_json(target)}};
  validate_collage(c);
  return c;
}

std::vector<std::string> make_shapesworld_dataset(int64_t n, const ShapesWorldCollageOptions& o,
                                                  const std::string& out) {
  COLLAGE_CHECK_AT(n > 0, "", "--n", "the number of collages must be positive, got {}", n);
  COLLAGE_CHECK_AT(o.size >= 32 && o.size % 8 == 0, "", "--size", "canvas size must be >= 32 and divisible by 8");
  fs::create_directories(out);
  std::vector<std::string> folders;
  Json index{{"generator", "shapesworld"},
             {"options",
              {{"size", o.size},
               {"min_objects", o.min_objects},
               {"max_objects", o.max_objects},
               {"noise_strength", o.noise_strength},
               {"unnamed_probability", o.unnamed_probability},
               {"unnamed_colour_probability", o.unnamed_colour_probability},
               {"kept_strength", o.kept_strength},
               {"w_pos", o.w_pos},
               {"seed", o.seed}}},
             {"collages", Json::array()}};
  for (int64_t i = 0; i < n; ++i) {
    const auto name = fmt::format("collage_{:05d}", i);
    auto c = make_shapesworld_collage(static_cast<uint64_t>(i), o);
    save_collage(c, (fs::path(out) / name).string());
    folders.push_back((fs::path(out) / name).string());
    index["collages"].push_back(name);
  }
  write_json_file((fs::path(out) / "index.json").string(), index);
  return folders;
}

// A 64x64 ShapesWorld scene as a collage (background layer + one layer per object, placed as rendered) and its
// render (shadows included) as the "output" to score.
std::pair<Collage, at::Tensor> rendered_scene_collage(uint64_t seed, int size) {
  shapesworld::SampleOptions options;
  options.min_objects = 2;
  options.max_objects = 3;
  const auto scene = shapesworld::sample_scene(seed, options);
  const auto rendered = shapesworld::render(scene, size, size);
  Collage c;
  c.width = c.height = size;
  shapesworld::CaptionOptions everything;
  everything.colour_probability = everything.pattern_probability = 1;
  everything.background_probability = everything.tint_probability = 1;
  const auto caption = shapesworld::make_caption(scene, seed, everything);
  c.prompt = caption.text;
  Layer bg;
  bg.name = "background";
  bg.text = caption.background_phrase;
  auto bg_rgb = shapesworld::render_background(scene, size, size);
  bg.rgba = at::cat({bg_rgb, at::ones({1, size, size}, bg_rgb.options())}, 0);
  c.layers.push_back(bg);
  for (size_t i = 0; i < rendered.objects.size(); ++i) {
    Layer l;
    l.name = "object" + std::to_string(i);
    l.text = caption.object_phrases[i];
    l.rgba = shapesworld::render_object_rgba(rendered.objects[i].spec, scene, size, size);
    c.layers.push_back(l);
  }
  return {c, rendered.image};
}


}  // namespace collage::datasets
