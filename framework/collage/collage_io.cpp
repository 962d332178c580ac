// collage.json reading, validation and writing; datasets of collages.
#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>

#include "collage/collage.h"
#include "collage/io_checks.h"
#include "core/core.h"

namespace fs = std::filesystem;

namespace collage {

namespace {

std::string layer_field(size_t i, const std::string& key) { return fmt::format("layers[{}].{}", i, key); }

using io::check_unit;
using io::check_unknown;
using io::resolve;

at::Tensor load_rgba(const std::string& path, const std::string& file, const std::string& field) {
  COLLAGE_CHECK_AT(!path.empty(), file, field, "a layer needs an image");
  COLLAGE_CHECK_AT(fs::exists(path), file, field, "image file '{}' not found", path);
  at::Tensor img;
  try {
    COLLAGE_CHECK_AT(image_has_alpha(path), file, field,
                     "image '{}' has no alpha channel: layers must be RGBA PNGs (alpha = the layer's shape)", path);
    img = read_image(path, /*keep_alpha=*/true);
  } catch (const Error& e) {
    if (e.file() == file) throw;
    throw Error(e.message(), file, field);
  }
  return img;
}

const char* kCollageFields = "prompt, width, height, background, layers, meta";
const char* kLayerFields =
    "name, image, text, transform, polygon, w_pos, w_neg, noise_strength, control_strength, keep, embedding, meta";

}  // namespace

void validate_collage(const Collage& c) {
  const auto file = c.where();
  COLLAGE_CHECK_AT(c.width > 0 && c.height > 0 && c.width <= 8192 && c.height <= 8192, file, "width",
                   "canvas size must be in 1..8192, got {}x{}", c.width, c.height);
  for (size_t k = 0; k < 3; ++k) check_unit(c.background[k], file, fmt::format("background[{}]", k));
  COLLAGE_CHECK_AT(!c.layers.empty(), file, "layers", "a collage needs at least one layer");
  for (size_t i = 0; i < c.layers.size(); ++i) {
    const auto& l = c.layers[i];
    COLLAGE_CHECK_AT(c.prompt.find(l.text) != std::string::npos, file, layer_field(i, "text"),
                     "layer text '{}' does not occur in the collage text '{}' (it must appear verbatim)", l.text,
                     c.prompt);
    check_unit(l.w_pos, file, layer_field(i, "w_pos"));
    check_unit(l.w_neg, file, layer_field(i, "w_neg"));
    check_unit(l.noise_strength, file, layer_field(i, "noise_strength"));
    check_unit(l.control_strength, file, layer_field(i, "control_strength"));
    const auto& t = l.transform;
    COLLAGE_CHECK_AT(std::isfinite(t.x) && std::isfinite(t.y), file, layer_field(i, "transform"),
                     "position must be finite");
    COLLAGE_CHECK_AT(std::isfinite(t.scale) && t.scale > 0, file, layer_field(i, "transform.scale"),
                     "scale must be positive, got {}", t.scale);
    COLLAGE_CHECK_AT(std::isfinite(t.rotation), file, layer_field(i, "transform.rotation"), "rotation must be finite");
    COLLAGE_CHECK_AT(l.polygon.empty() || l.polygon.size() >= 3, file, layer_field(i, "polygon"),
                     "a crop polygon needs at least 3 points, got {}", l.polygon.size());
    COLLAGE_CHECK_AT(l.rgba.defined() && l.rgba.dim() == 3 && l.rgba.size(0) == 4, file, layer_field(i, "image"),
                     "layer image must be RGBA (4, h, w)");
    COLLAGE_CHECK_AT(!at::isnan(l.rgba).any().item<bool>(), file, layer_field(i, "image"), "layer image has NaNs");
  }
}

Collage load_collage(const std::string& path_in) {
  std::string path = path_in;
  if (fs::is_directory(path)) path = (fs::path(path) / "collage.json").string();
  COLLAGE_CHECK_AT(fs::exists(path), path, "", "collage file not found");
  const Json j = read_json_file(path);
  COLLAGE_CHECK_AT(j.is_object(), path, "", "a collage file must hold a JSON object");
  Collage c;
  c.file = path;
  c.folder = fs::path(path).parent_path().string();
  JsonReader r(j, path);
  c.prompt = r.get<std::string>("prompt");
  c.width = r.get<int64_t>("width", 512);
  c.height = r.get<int64_t>("height", 512);
  if (r.has("background")) {
    auto bg = r.get<std::vector<double>>("background");
    COLLAGE_CHECK_AT(bg.size() == 3, path, "background", "expected [r, g, b] in [0, 1], got {} values", bg.size());
    for (int k = 0; k < 3; ++k) c.background[k] = bg[k];
  }
  c.meta = r.get<Json>("meta", Json::object());
  const Json layers = r.get<Json>("layers");
  COLLAGE_CHECK_AT(layers.is_array(), path, "layers", "expected a list of layers (bottom to top)");
  check_unknown(r, path, "", kCollageFields);
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto prefix = fmt::format("layers[{}].", i);
    COLLAGE_CHECK_AT(layers[i].is_object(), path, fmt::format("layers[{}]", i), "a layer must be a JSON object");
    JsonReader lr(layers[i], path, prefix);
    Layer l;
    l.name = lr.get<std::string>("name", "");
    l.image = lr.get<std::string>("image");
    l.text = lr.get<std::string>("text", "");
    if (lr.has("transform")) {
      const Json tj = lr.get<Json>("transform");
      COLLAGE_CHECK_AT(tj.is_object(), path, prefix + "transform", "expected {x, y, scale, rotation}");
      JsonReader tr(tj, path, prefix + "transform.");
      l.transform.x = tr.get<double>("x", 0.0);
      l.transform.y = tr.get<double>("y", 0.0);
      l.transform.scale = tr.get<double>("scale", 1.0);
      l.transform.rotation = tr.get<double>("rotation", 0.0);
      check_unknown(tr, path, prefix + "transform.", "x, y, scale, rotation");
    }
    if (lr.has("polygon")) {
      auto pts = lr.get<std::vector<std::vector<double>>>("polygon");
      for (size_t k = 0; k < pts.size(); ++k) {
        COLLAGE_CHECK_AT(pts[k].size() == 2, path, fmt::format("{}polygon[{}]", prefix, k), "expected [x, y]");
        l.polygon.push_back({pts[k][0], pts[k][1]});
      }
    }
    l.w_pos = lr.get<double>("w_pos", 0.0);
    l.w_neg = lr.get<double>("w_neg", 1.0);
    l.noise_strength = lr.get<double>("noise_strength", 0.8);
    l.control_strength = lr.get<double>("control_strength", 0.0);
    l.keep = lr.get<bool>("keep", false);
    l.embedding = lr.get<std::string>("embedding", "");
    l.meta = lr.get<Json>("meta", Json::object());
    check_unknown(lr, path, prefix, kLayerFields);
    if (!l.embedding.empty())
      COLLAGE_CHECK_AT(fs::exists(resolve(c.folder, l.embedding)), path, prefix + "embedding",
                       "embedding file '{}' not found", resolve(c.folder, l.embedding));
    l.rgba = load_rgba(resolve(c.folder, l.image), path, prefix + "image");
    c.layers.push_back(std::move(l));
  }
  validate_collage(c);
  return c;
}

Json collage_to_json(const Collage& c) {
  Json j;
  j["prompt"] = c.prompt;
  j["width"] = c.width;
  j["height"] = c.height;
  j["background"] = {c.background[0], c.background[1], c.background[2]};
  j["layers"] = Json::array();
  for (size_t i = 0; i < c.layers.size(); ++i) {
    const auto& l = c.layers[i];
    Json lj;
    if (!l.name.empty()) lj["name"] = l.name;
    lj["image"] = l.image.empty() ? fmt::format("layer_{}.png", i) : l.image;
    lj["text"] = l.text;
    lj["transform"] = {{"x", l.transform.x}, {"y", l.transform.y}, {"scale", l.transform.scale},
                       {"rotation", l.transform.rotation}};
    if (!l.polygon.empty()) {
      lj["polygon"] = Json::array();
      for (const auto& p : l.polygon) lj["polygon"].push_back({p[0], p[1]});
    }
    lj["w_pos"] = l.w_pos;
    lj["w_neg"] = l.w_neg;
    lj["noise_strength"] = l.noise_strength;
    if (l.control_strength != 0) lj["control_strength"] = l.control_strength;
    if (l.keep) lj["keep"] = true;
    if (!l.embedding.empty()) lj["embedding"] = l.embedding;
    if (!l.meta.empty()) lj["meta"] = l.meta;
    j["layers"].push_back(lj);
  }
  if (!c.meta.empty()) j["meta"] = c.meta;
  return j;
}

void save_collage(const Collage& c, const std::string& folder) {
  fs::create_directories(folder);
  Json j = collage_to_json(c);
  for (size_t i = 0; i < c.layers.size(); ++i) {
    const std::string name = j["layers"][i]["image"].get<std::string>();
    COLLAGE_CHECK_AT(c.layers[i].rgba.defined(), folder, layer_field(i, "image"), "layer has no pixels to save");
    fs::create_directories((fs::path(folder) / name).parent_path());
    write_image((fs::path(folder) / name).string(), c.layers[i].rgba);
    // An embedding outside the destination is copied in, so that the saved collage is self-contained.
    const auto& embedding = c.layers[i].embedding;
    if (embedding.empty()) continue;
    const fs::path source = resolve(c.folder, embedding), target = fs::path(folder) / embedding;
    if (!fs::exists(source)) continue;  // reported when the collage is loaded
    if (fs::path(embedding).is_relative() && fs::exists(target) && fs::equivalent(source, target)) continue;
    const auto copy = fmt::format("layer_{}_embedding{}", i, source.extension().string());
    fs::copy_file(source, fs::path(folder) / copy, fs::copy_options::overwrite_existing);
    j["layers"][i]["embedding"] = copy;
  }
  write_json_file((fs::path(folder) / "collage.json").string(), j);
}

void save_collage_dataset(const std::vector<Collage>& collages, const std::string& dir, const Json& index_info) {
  fs::create_directories(dir);
  Json index = index_info.is_object() ? index_info : Json::object();
  index["collages"] = Json::array();
  for (size_t k = 0; k < collages.size(); ++k) {
    const auto name = std::to_string(k);
    const auto final_dir = fs::path(dir) / name, temp_dir = fs::path(dir) / (name + ".partial");
    fs::remove_all(temp_dir);
    save_collage(collages[k], temp_dir.string());
    fs::remove_all(final_dir);
    fs::rename(temp_dir, final_dir);
    index["collages"].push_back(name);
  }
  write_json_file((fs::path(dir) / "index.json").string(), index);
}

SamplingDefaults sampling_defaults(const Collage& c) {
  SamplingDefaults d;
  const Json& m = c.meta;
  if (!m.is_object() || m.value("generator", std::string()) != "import-demo") return d;
  const auto file = c.where();
  if (m.contains("seed") && !m["seed"].is_null()) {
    COLLAGE_CHECK_AT(m["seed"].is_number_integer() && m["seed"].get<int64_t>() >= 0, file, "meta.seed",
                     "a seed is a non-negative integer, got {}", m["seed"].dump());
    d.seed = m["seed"].get<uint64_t>();
  }
  if (m.contains("num_inference_steps") && !m["num_inference_steps"].is_null()) {
    COLLAGE_CHECK_AT(m["num_inference_steps"].is_number_integer() && m["num_inference_steps"].get<int64_t>() > 0,
                     file, "meta.num_inference_steps", "expected a positive integer, got {}",
                     m["num_inference_steps"].dump());
    d.steps = m["num_inference_steps"].get<int64_t>();
  }
  if (m.contains("guidance_scale") && !m["guidance_scale"].is_null()) {
    COLLAGE_CHECK_AT(m["guidance_scale"].is_number(), file, "meta.guidance_scale", "expected a number, got {}",
                     m["guidance_scale"].dump());
    d.guidance_scale = m["guidance_scale"].get<double>();
  }
  return d;
}

std::vector<std::string> list_collages(const std::string& dir) {
  COLLAGE_CHECK_AT(fs::is_directory(dir), dir, "", "dataset folder not found");
  std::vector<std::string> out;
  const auto index = (fs::path(dir) / "index.json").string();
  if (fs::exists(index)) {
    const Json j = read_json_file(index);
    COLLAGE_CHECK_AT(j.is_object() && j.contains("collages") && j["collages"].is_array(), index, "collages",
                     "expected a list of collage folders");
    for (size_t i = 0; i < j["collages"].size(); ++i) {
      const auto& e = j["collages"][i];
      COLLAGE_CHECK_AT(e.is_string(), index, fmt::format("collages[{}]", i), "expected a folder name");
      const auto folder = (fs::path(dir) / e.get<std::string>()).string();
      COLLAGE_CHECK_AT(fs::exists(fs::path(folder) / "collage.json"), index, fmt::format("collages[{}]", i),
                       "'{}' has no collage.json", folder);
      out.push_back(folder);
    }
    return out;
  }
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.is_directory() && fs::exists(entry.path() / "collage.json")) out.push_back(entry.path().string());
  std::sort(out.begin(), out.end());
  COLLAGE_CHECK_AT(!out.empty(), dir, "", "no collages here (no sub-folder with a collage.json, no index.json)");
  return out;
}

}  // namespace collage
