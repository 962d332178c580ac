// The authors' demo collages (their front end's JSON) as collages, each layer placed as their server places it.
// Their geometry (backend utils/masking.py and layers.py, facts only): polygon points are fractions of the
// layer image's width and height; alpha is multiplied by the polygon's mask and the image cropped to the
// mask's bounding box; the crop is resized by 512 * scale (each side int(side * 512 * scale), at least 1) and
// rotated counter-clockwise about its centre inside its own box; its top-left corner goes to
// (int(512 * x), int(512 * y)). Here the mask, crop and resize are baked into the layer image, the paste is an
// integer-pixel transform and the rotation stays a transform, with a polygon that clips the layer to its box.
#include <ATen/ATen.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>

#include "collage/collage.h"
#include "collage/io_checks.h"
#include "core/core.h"

namespace fs = std::filesystem;

namespace collage {

namespace {

using io::check_unknown;

// One collage of a demo file, for reading and for errors.
struct DemoSource {
  std::string file;    // the demo JSON
  std::string folder;  // local image paths resolve here
  std::string prefix;  // JSON path of the collage object: "[2].collage." in an example list, "" otherwise
};

// Decodes standard or URL-safe base64 (padding optional; whitespace ignored).
std::vector<unsigned char> base64_decode(const std::string& text, const std::string& file, const std::string& field) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
  };
  std::vector<unsigned char> out;
  int bits = 0, acc = 0;
  for (char c : text) {
    if (c == '=' || std::isspace(static_cast<unsigned char>(c))) continue;
    int v = value(c);
    COLLAGE_CHECK_AT(v >= 0, file, field, "invalid base64 character '{}' in the data URL", c);
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<unsigned char>((acc >> bits) & 0xff));
    }
  }
  return out;
}

// (C, h, w) with C = 3 or 4 -> RGBA; an image without alpha is opaque (their convert("RGBA")).
at::Tensor with_alpha(const at::Tensor& image) {
  if (image.size(0) == 4) return image;
  return at::cat({image, at::ones({1, image.size(1), image.size(2)}, image.options())}, 0);
}

at::Tensor decode_image_bytes(const std::vector<unsigned char>& bytes, const std::string& file,
                              const std::string& field) {
  cv::Mat m = cv::imdecode(bytes, cv::IMREAD_UNCHANGED);
  COLLAGE_CHECK_AT(!m.empty(), file, field, "cannot decode the embedded image");
  if (m.depth() == CV_16U) m.convertTo(m, CV_8U, 1.0 / 257.0);
  COLLAGE_CHECK_AT(m.depth() == CV_8U, file, field, "the embedded image must have 8 or 16 bits per channel");
  cv::Mat rgba;
  const int code = m.channels() == 1 ? cv::COLOR_GRAY2RGBA : m.channels() == 3 ? cv::COLOR_BGR2RGBA : cv::COLOR_BGRA2RGBA;
  cv::cvtColor(m, rgba, code);
  auto t = at::from_blob(rgba.data, {rgba.rows, rgba.cols, 4}, at::kByte).clone();
  return t.permute({2, 0, 1}).to(at::kFloat).div_(255.0).contiguous();
}

// Runs of whitespace become one space; leading and trailing whitespace goes.
std::string normalise_spaces(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      if (!out.empty() && out.back() != ' ') out += ' ';
    } else {
      out += c;
    }
  }
  if (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

// The last path segment of a URL (query, fragment and trailing slashes removed).
std::string url_last_segment(std::string url) {
  url = url.substr(0, url.find_first_of("?#"));
  while (!url.empty() && url.back() == '/') url.pop_back();
  return url.substr(url.find_last_of('/') + 1);
}

// `name` in `dir`: the file of that name, else the one file whose name without its extension is `name` (or,
// when `name` has an extension, is `name` without it). "" when none; several candidates are an error.
std::string find_in_images_dir(const std::string& dir, const std::string& name, const std::string& file,
                               const std::string& field) {
  if (name.empty() || !fs::is_directory(dir)) return "";
  if (fs::is_regular_file(fs::path(dir) / name)) return (fs::path(dir) / name).string();
  const std::string bare = fs::path(name).stem().string();
  std::vector<std::string> found;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    const auto& p = entry.path();
    if (p.stem().string() == name || p.filename().string() == bare || p.stem().string() == bare)
      found.push_back(p.string());
  }
  std::sort(found.begin(), found.end());
  COLLAGE_CHECK_AT(found.size() <= 1, file, field, "several files in '{}' match '{}': {}", dir, name,
                   fmt::join(found, ", "));
  return found.empty() ? "" : found.front();
}

// The layer's image as RGBA: a data: URL, a web URL looked up in options.images_dir by its last path segment,
// or a local path (relative to the demo file; else looked up in options.images_dir by its file name).
at::Tensor load_demo_image(const std::string& src, const DemoSource& s, const DemoImportOptions& o,
                           const std::string& field, const std::string& layer, std::string* found_path) {
  if (src.rfind("data:", 0) == 0) {
    const auto comma = src.find(',');
    COLLAGE_CHECK_AT(comma != std::string::npos && src.find(";base64") < comma, s.file, field,
                     "{}: only base64 data URLs are supported", layer);
    return decode_image_bytes(base64_decode(src.substr(comma + 1), s.file, field), s.file, field);
  }
  const bool is_url = src.find("://") != std::string::npos;
  const std::string name = is_url ? url_last_segment(src) : fs::path(src).filename().string();
  std::string path;
  if (!is_url && !src.empty() && fs::is_regular_file(io::resolve(s.folder, src))) path = io::resolve(s.folder, src);
  if (path.empty() && !o.images_dir.empty()) path = find_in_images_dir(o.images_dir, name, s.file, field);
  if (path.empty()) {
    std::vector<std::string> looked;
    if (!is_url) looked.push_back(fmt::format("'{}'", io::resolve(s.folder, src)));
    if (!o.images_dir.empty())
      looked.push_back(fmt::format("'{}' (with or without a file extension)", (fs::path(o.images_dir) / name).string()));
    COLLAGE_CHECK_AT(!looked.empty(), s.file, field,
                     "{}: '{}' is a URL and nothing can be downloaded here: save its image as '{}' in a folder and "
                     "pass that folder as --images",
                     layer, src, name);
    throw Error(fmt::format("{}: image file not found: looked for {}", layer, fmt::join(looked, " and ")), s.file,
                field);
  }
  *found_path = path;
  try {
    return with_alpha(read_image(path, /*keep_alpha=*/true));
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", layer, e.what()), s.file, field);
  }
}

// Their polygon mask (h, w): pixel (j, i) is in when the point (j, i) lies inside the polygon through
// (x_k * w, y_k * h) (even-odd crossing rule, scanned row by row); no polygon = every pixel.
at::Tensor polygon_mask(const std::vector<std::array<double, 2>>& fractions, int64_t h, int64_t w) {
  if (fractions.empty()) return at::ones({h, w});
  std::vector<std::array<double, 2>> pts;
  for (const auto& f : fractions) pts.push_back({f[0] * w, f[1] * h});
  auto mask = at::zeros({h, w});
  auto m = mask.accessor<float, 2>();
  std::vector<double> xs;
  for (int64_t i = 0; i < h; ++i) {
    xs.clear();
    const double y = static_cast<double>(i);
    for (size_t k = 0; k < pts.size(); ++k) {
      const auto& a = pts[k];
      const auto& b = pts[(k + 1) % pts.size()];
      if ((a[1] <= y && y < b[1]) || (b[1] <= y && y < a[1]))
        xs.push_back(a[0] + (y - a[1]) * (b[0] - a[0]) / (b[1] - a[1]));
    }
    std::sort(xs.begin(), xs.end());
    for (size_t k = 0; k + 1 < xs.size(); k += 2) {
      const auto first = std::max<int64_t>(0, static_cast<int64_t>(std::ceil(xs[k])));
      for (int64_t j = first; j < w && static_cast<double>(j) < xs[k + 1]; ++j) m[i][j] = 1.0f;
    }
  }
  return mask;
}

// Their layer image: alpha times the polygon mask, cropped to the mask's bounding box, resized by `factor`
// (each side int(side * factor), at least 1; premultiplied antialiased bicubic, as PIL resizes RGBA).
// `crop` receives the box [x0, y0, x1, y1) in the original image.
at::Tensor demo_layer_pixels(const at::Tensor& rgba_in, const std::vector<std::array<double, 2>>& polygon,
                             double factor, std::array<int64_t, 4>* crop) {
  auto rgba = rgba_in.clone();
  const int64_t h = rgba.size(1), w = rgba.size(2);
  const auto mask = polygon_mask(polygon, h, w);
  rgba[3].mul_(mask);
  const auto rows = at::nonzero(mask.sum(1)).flatten(), cols = at::nonzero(mask.sum(0)).flatten();
  COLLAGE_CHECK(rows.numel() > 0, "the polygon covers no pixel of the {}x{} image", w, h);
  const int64_t y0 = rows.min().item<int64_t>(), y1 = rows.max().item<int64_t>() + 1;
  const int64_t x0 = cols.min().item<int64_t>(), x1 = cols.max().item<int64_t>() + 1;
  *crop = {x0, y0, x1, y1};
  auto cropped = rgba.slice(1, y0, y1).slice(2, x0, x1);
  const int64_t nw = std::max<int64_t>(1, static_cast<int64_t>((x1 - x0) * factor));
  const int64_t nh = std::max<int64_t>(1, static_cast<int64_t>((y1 - y0) * factor));
  if (nw == x1 - x0 && nh == y1 - y0) return cropped.contiguous();
  auto premultiplied = at::cat({cropped.narrow(0, 0, 3) * cropped[3], cropped.narrow(0, 3, 1)}, 0).unsqueeze(0);
  auto resized = at::_upsample_bicubic2d_aa(premultiplied, {nh, nw}, /*align_corners=*/false)[0].clamp_(0, 1);
  auto alpha = resized[3];
  auto colour = (resized.narrow(0, 0, 3) / alpha.clamp_min(1e-6)).clamp_(0, 1);
  colour = at::where(alpha > 1e-6, colour, at::zeros_like(colour));
  return at::cat({colour, alpha.unsqueeze(0)}, 0).contiguous();
}

// The corners of a w x h box rotated by `degrees` about its centre as place_layer rotates a layer, mapped back
// into the layer image: as a crop polygon they keep only what lands inside the box (their rotate() cuts the
// corners off).
std::vector<std::array<double, 2>> rotation_clip_polygon(int64_t w, int64_t h, double degrees) {
  const double th = degrees * M_PI / 180.0, c = std::cos(th), s = std::sin(th);
  const double cx = w / 2.0, cy = h / 2.0;
  std::vector<std::array<double, 2>> out;
  for (const auto& [x, y] : std::vector<std::array<double, 2>>{{0, 0}, {double(w), 0}, {double(w), double(h)}, {0, double(h)}}) {
    // place_layer maps u -> A (u - centre) + centre with A = [[c, s], [-s, c]]; this is A^-1.
    out.push_back({cx + c * (x - cx) - s * (y - cy), cy + s * (x - cx) + c * (y - cy)});
  }
  return out;
}

// A seed: a non-negative integer, or one written as a string ("44").
uint64_t read_seed(const Json& v, const std::string& file, const std::string& field) {
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return v.get<uint64_t>();
  if (v.is_number_float() && v.get<double>() >= 0 && std::floor(v.get<double>()) == v.get<double>())
    return static_cast<uint64_t>(v.get<double>());
  if (v.is_string()) {
    const auto text = normalise_spaces(v.get<std::string>());
    if (!text.empty() && text.size() <= 19 && std::all_of(text.begin(), text.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) return std::stoull(text);
  }
  throw Error(fmt::format("a seed is a non-negative integer (or one written as a string), got {}", v.dump()), file,
              field);
}

// The first of `keys` the object has (the authors' camelCase and their saved state's snake_case), or "".
std::string either_key(const JsonReader& r, std::initializer_list<const char*> keys) {
  for (const char* k : keys)
    if (r.has(k)) return k;
  return "";
}

Layer import_layer(const Json& lj, size_t i, const DemoSource& s, const DemoImportOptions& o) {
  const auto prefix = fmt::format("{}layers[{}].", s.prefix, i);
  COLLAGE_CHECK_AT(lj.is_object(), s.file, prefix.substr(0, prefix.size() - 1), "a layer must be a JSON object");
  JsonReader r(lj, s.file, prefix);
  Layer l;
  Json demo = Json::object();
  if (r.has("id")) demo["id"] = r.get<Json>("id");
  if (r.has("key")) {
    demo["key"] = r.get<Json>("key");
    if (demo["key"].is_string()) l.name = demo["key"].get<std::string>();
  }
  l.text = normalise_spaces(r.get<std::string>("textPrompt"));
  const auto layer = fmt::format("layer {} ('{}')", i, l.text);
  l.w_pos = r.get<double>("cacStrength", 0.0);
  l.w_neg = r.get<double>("negativeStrength", 1.0);
  l.noise_strength = r.get<double>("noiseStrength", 0.8);
  l.control_strength = r.get<double>("cannyStrength", 0.0);

  const Json t = r.get<Json>("transform");
  COLLAGE_CHECK_AT(t.is_object(), s.file, prefix + "transform", "expected {{position {{x, y}}, scale, rotation}}");
  JsonReader tr(t, s.file, prefix + "transform.");
  const Json p = tr.get<Json>("position");
  COLLAGE_CHECK_AT(p.is_object(), s.file, prefix + "transform.position", "expected {{x, y}}");
  JsonReader pr(p, s.file, prefix + "transform.position.");
  const double x = pr.get<double>("x"), y = pr.get<double>("y");
  check_unknown(pr, s.file, prefix + "transform.position.", "x, y");
  const double scale = tr.get<double>("scale"), rotation = tr.get<double>("rotation", 0.0);
  check_unknown(tr, s.file, prefix + "transform.", "position, scale, rotation");
  COLLAGE_CHECK_AT(std::isfinite(x) && std::isfinite(y), s.file, prefix + "transform.position", "must be finite");
  COLLAGE_CHECK_AT(std::isfinite(scale) && scale > 0, s.file, prefix + "transform.scale",
                   "must be positive (a fraction of the canvas per image pixel), got {}", scale);
  COLLAGE_CHECK_AT(std::isfinite(rotation), s.file, prefix + "transform.rotation", "must be finite");

  std::vector<std::array<double, 2>> polygon;
  const Json poly = r.get<Json>("polygon", Json::array());
  COLLAGE_CHECK_AT(poly.is_array(), s.file, prefix + "polygon", "expected a list of {{x, y}} points");
  for (size_t k = 0; k < poly.size(); ++k) {
    const auto field = fmt::format("{}polygon[{}]", prefix, k);
    COLLAGE_CHECK_AT(poly[k].is_object(), s.file, field, "expected {{x, y}} (fractions of the image's size)");
    JsonReader kr(poly[k], s.file, field + ".");
    polygon.push_back({kr.get<double>("x"), kr.get<double>("y")});
    check_unknown(kr, s.file, field + ".", "x, y");
    COLLAGE_CHECK_AT(std::isfinite(polygon.back()[0]) && std::isfinite(polygon.back()[1]), s.file, field,
                     "must be finite");
  }
  COLLAGE_CHECK_AT(polygon.empty() || polygon.size() >= 3, s.file, prefix + "polygon",
                   "{}: a polygon needs at least 3 points, got {}", layer, polygon.size());

  const auto src = r.get<std::string>("originalImgUrl");
  std::string image_path;
  const auto original = load_demo_image(src, s, o, prefix + "originalImgUrl", layer, &image_path);

  const Json we = r.get<Json>("wordEmbedding", Json());
  if (we.is_string() && !we.get<std::string>().empty()) {
    const auto e = we.get<std::string>();
    const bool is_url = e.find("://") != std::string::npos;
    std::string path = !is_url && fs::is_regular_file(io::resolve(s.folder, e)) ? io::resolve(s.folder, e) : "";
    if (path.empty() && !o.images_dir.empty())
      path = find_in_images_dir(o.images_dir, is_url ? url_last_segment(e) : fs::path(e).filename().string(), s.file,
                                prefix + "wordEmbedding");
    COLLAGE_CHECK_AT(!path.empty(), s.file, prefix + "wordEmbedding",
                     "{}: embedding file '{}' not found (next to the demo file or in --images)", layer, e);
    l.embedding = fs::absolute(path).string();  // save_collage copies it into the collage folder
  }
  check_unknown(r, s.file, prefix,
                "id, key, originalImgUrl, textPrompt, cacStrength, negativeStrength, noiseStrength, cannyStrength, "
                "transform, polygon, wordEmbedding");

  const auto n = static_cast<double>(o.size);
  std::array<int64_t, 4> crop{};
  try {
    l.rgba = demo_layer_pixels(original, polygon, n * scale, &crop);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", layer, e.message()), s.file, prefix + "polygon");
  }
  l.transform.x = std::trunc(n * x);
  l.transform.y = std::trunc(n * y);
  l.transform.rotation = rotation;
  if (std::fmod(rotation, 360.0) != 0) l.polygon = rotation_clip_polygon(l.rgba.size(2), l.rgba.size(1), rotation);
  demo["image"] = src.rfind("data:", 0) == 0 ? std::string("(data URL)") : src;
  if (!image_path.empty()) demo["image_file"] = fs::absolute(image_path).string();
  demo["image_size"] = {original.size(2), original.size(1)};
  demo["crop"] = crop;
  demo["transform"] = t;
  if (!polygon.empty()) demo["polygon"] = poly;
  l.meta = Json{{"demo", demo}};
  return l;
}

// One collage: a collage object (example's "collage", a request, a saved state) or a bare layer list.
Collage import_collage(const Json& cj, const DemoSource& s, const DemoImportOptions& o) {
  Collage c;
  c.file = s.file;
  c.folder = s.folder;
  c.width = c.height = o.size;
  c.meta = Json{{"generator", "import-demo"}};
  Json layers = cj;
  std::string prompt;
  if (cj.is_object()) {
    JsonReader r(cj, s.file, s.prefix);
    const auto prompt_key = either_key(r, {"collagePrompt", "prompt", "collage_prompt"});
    if (!prompt_key.empty()) prompt = r.get<std::string>(prompt_key);
    const auto steps_key = either_key(r, {"numInferenceSteps", "num_inference_steps"});
    if (!steps_key.empty()) {
      const auto steps = r.get<int64_t>(steps_key);
      COLLAGE_CHECK_AT(steps > 0, s.file, s.prefix + steps_key, "must be positive, got {}", steps);
      c.meta["num_inference_steps"] = steps;
    }
    const auto guidance_key = either_key(r, {"guidanceScale", "guidance_scale"});
    if (!guidance_key.empty()) c.meta["guidance_scale"] = r.get<double>(guidance_key);
    if (r.has("seed")) c.meta["seed"] = read_seed(r.get<Json>("seed"), s.file, s.prefix + "seed");
    const auto frames_key = either_key(r, {"numFrames", "num_frames"});
    if (!frames_key.empty()) c.meta["num_frames"] = r.get<Json>(frames_key);
    COLLAGE_CHECK_AT(!r.has("collageSrc"), s.file, s.prefix + "collageSrc",
                     "a collage edit's background image is not supported: import the collage without it");
    // Front-end state (token editor, layer order map) and request flags: no meaning for a collage.
    r.ignore({"inputTokenData", "input_token_data", "layerToIndexMap", "layer_to_index_map", "collage_id",
              "collageId", "breadthFirst", "vizParams", "prioritize"});
    layers = r.get<Json>("layers");
    check_unknown(r, s.file, s.prefix,
                  "collagePrompt (or prompt), numInferenceSteps, guidanceScale, seed, numFrames, layers, "
                  "inputTokenData, layerToIndexMap");
  }
  if (!o.prompt.empty()) {
    if (!prompt.empty() && normalise_spaces(prompt) != normalise_spaces(o.prompt)) c.meta["demo_prompt"] = prompt;
    prompt = o.prompt;
  }
  c.prompt = normalise_spaces(prompt);
  COLLAGE_CHECK_AT(!c.prompt.empty(), s.file, s.prefix + "collagePrompt",
                   "no collage text: the file has none (a bare layer list), give one with --prompt");
  COLLAGE_CHECK_AT(layers.is_array() && !layers.empty(), s.file, s.prefix + "layers",
                   "expected a non-empty list of layer objects (bottom to top)");
  for (size_t i = 0; i < layers.size(); ++i) c.layers.push_back(import_layer(layers[i], i, s, o));
  try {
    validate_collage(c);
  } catch (const Error& e) {
    throw Error(e.message(), s.file, s.prefix + e.field());
  }
  return c;
}

}  // namespace

std::vector<Collage> import_demo_collages(const std::string& path, const DemoImportOptions& o) {
  COLLAGE_CHECK_AT(o.size >= 8 && o.size <= 8192, "", "--size", "canvas size must be in 8..8192, got {}", o.size);
  COLLAGE_CHECK_AT(o.images_dir.empty() || fs::is_directory(o.images_dir), o.images_dir, "--images",
                   "images folder not found");
  const Json j = read_json_file(path);
  const auto folder = fs::path(path).parent_path().string();
  // (collage object or layer list, JSON path prefix) for each collage of the file.
  std::vector<std::pair<Json, std::string>> entries;
  auto is_example = [](const Json& e) { return e.is_object() && e.contains("collage"); };
  if (j.is_array() && !j.empty() && is_example(j[0])) {
    for (size_t k = 0; k < j.size(); ++k) {
      const auto prefix = fmt::format("[{}].", k);
      COLLAGE_CHECK_AT(is_example(j[k]), path, prefix.substr(0, prefix.size() - 1),
                       "expected {{\"collage\": {{...}}}} like the list's first entry");
      JsonReader er(j[k], path, prefix);
      er.ignore({"collageImage", "generatedImage"});  // their renders of it
      const Json cj = er.get<Json>("collage");
      COLLAGE_CHECK_AT(cj.is_object(), path, prefix + "collage", "expected a collage object");
      check_unknown(er, path, prefix, "collage, collageImage, generatedImage");
      entries.emplace_back(cj, prefix + "collage.");
    }
  } else if (j.is_array()) {
    entries.emplace_back(j, "");
  } else if (is_example(j)) {
    entries.emplace_back(j["collage"], "collage.");
  } else {
    COLLAGE_CHECK_AT(j.is_object() && j.contains("layers"), path, "",
                     "expected the demo's examples [{{\"collage\": ...}}], a collage {{prompt, layers, ...}} or a list "
                     "of layer objects");
    entries.emplace_back(j, "");
  }
  std::vector<Collage> out;
  for (size_t k = 0; k < entries.size(); ++k) {
    try {
      out.push_back(import_collage(entries[k].first, {path, folder, entries[k].second}, o));
    } catch (const Error& e) {
      throw Error(fmt::format("collage {}: {}", k, e.message()), e.file(), e.field());
    }
    out.back().meta["source"] = {{"file", fs::absolute(path).string()}, {"index", k}};
  }
  return out;
}

}  // namespace collage
