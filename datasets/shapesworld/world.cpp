// ShapesWorld vocabulary, palettes, geometry, scene sampling, JSON and captions.
#include <algorithm>
#include <array>
#include <cmath>

#include "core/core.h"
#include "datasets/shapesworld/internal.h"
#include "datasets/shapesworld/shapesworld.h"

namespace collage::shapesworld {
namespace detail {

const char* const kShapeNames[kNumShapes] = {"circle", "square", "triangle", "star"};
const char* const kColourNames[kNumColours] = {"red", "orange", "yellow", "green", "blue", "purple", "white", "black"};
const char* const kPatternNames[kNumPatterns] = {"plain", "striped", "dotted"};
const char* const kBackgroundNames[kNumBackgrounds] = {"sky", "grass", "sand", "water", "wall"};
const char* const kTintNames[kNumTints] = {"day", "sunset", "night"};

int find_name(const char* const* names, int n, const std::string& name) {
  for (int i = 0; i < n; ++i)
    if (name == names[i]) return i;
  return -1;
}

int name_index(const char* const* names, int n, const std::string& name, const std::string& what,
               const std::string& field) {
  const int i = find_name(names, n, name);
  if (i < 0) {
    std::string known;
    for (int k = 0; k < n; ++k) known += (k ? ", " : "") + std::string(names[k]);
    throw Error(fmt::format("unknown {} '{}' (known: {})", what, name, known), "", field);
  }
  return i;
}

Rgb colour_rgb(int colour) {
  static const Rgb table[kNumColours] = {
      {0.86f, 0.12f, 0.12f},  // red      hue   0
      {0.98f, 0.50f, 0.06f},  // orange   hue  29
      {0.96f, 0.86f, 0.10f},  // yellow   hue  53
      {0.12f, 0.70f, 0.20f},  // green    hue 128
      {0.14f, 0.30f, 0.92f},  // blue     hue 228
      {0.60f, 0.18f, 0.80f},  // purple   hue 281
      {0.96f, 0.96f, 0.96f},  // white
      {0.08f, 0.08f, 0.08f},  // black
  };
  return table[colour];
}

Rgb tint_rgb(int tint) {
  static const Rgb table[kNumTints] = {{1.0f, 1.0f, 1.0f}, {1.0f, 0.74f, 0.56f}, {0.36f, 0.44f, 0.72f}};
  return table[tint];
}

Rgb background_gradient(int background, double v) {
  // Top and bottom colours: chosen so that no object colour (at any shading) is close to them, and no
  // object colour is a darkened copy of them (that would read as a shadow).
  static const Rgb top[kNumBackgrounds] = {
      {0.32f, 0.56f, 0.90f}, {0.46f, 0.66f, 0.26f}, {0.92f, 0.82f, 0.60f}, {0.20f, 0.52f, 0.70f}, {0.72f, 0.42f, 0.32f}};
  static const Rgb bottom[kNumBackgrounds] = {
      {0.70f, 0.84f, 0.97f}, {0.27f, 0.48f, 0.14f}, {0.80f, 0.68f, 0.46f}, {0.06f, 0.30f, 0.50f}, {0.60f, 0.35f, 0.27f}};
  const float t = static_cast<float>(std::clamp(v, 0.0, 1.0));
  const Rgb& a = top[background];
  const Rgb& b = bottom[background];
  return {a.r + (b.r - a.r) * t, a.g + (b.g - a.g) * t, a.b + (b.b - a.b) * t};
}

namespace {

struct Polygon {
  std::vector<std::array<double, 2>> v;
  std::vector<std::array<double, 3>> edge;  // edge j -> j+1 (from the previous vertex): dx, dy, 1 / length^2
  void finish() {
    for (size_t i = 0, j = v.size() - 1; i < v.size(); j = i++) {
      const double ex = v[i][0] - v[j][0], ey = v[i][1] - v[j][1];
      edge.push_back({ex, ey, 1.0 / (ex * ex + ey * ey)});
    }
  }
};

// Outlines scaled to similar areas (circle pi, square 2.96, triangle 2.26, star 2.43), so that one
// "size" looks like one size whatever the shape.
const Polygon& polygon(int shape) {
  static const std::array<Polygon, kNumShapes> polys = [] {
    std::array<Polygon, kNumShapes> p;
    const double h = 0.86;
    p[kSquare].v = {{h, h}, {-h, h}, {-h, -h}, {h, -h}};
    const double pi = 3.14159265358979323846;
    for (int k = 0; k < 3; ++k) {
      const double a = pi / 2 + k * 2 * pi / 3;
      p[kTriangle].v.push_back({1.32 * std::cos(a), 1.32 * std::sin(a)});
    }
    for (int k = 0; k < 10; ++k) {
      const double a = pi / 2 + k * pi / 5;
      const double r = (k % 2 == 0) ? 1.38 : 0.60;
      p[kStar].v.push_back({r * std::cos(a), r * std::sin(a)});
    }
    for (auto& q : p)
      if (!q.v.empty()) q.finish();
    return p;
  }();
  return polys[shape];
}

bool polygon_inside(const Polygon& p, double x, double y) {
  bool in = false;
  const size_t n = p.v.size();
  for (size_t i = 0, j = n - 1; i < n; j = i++) {
    const double xi = p.v[i][0], yi = p.v[i][1], xj = p.v[j][0], yj = p.v[j][1];
    if ((yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi) in = !in;
  }
  return in;
}

double polygon_sdf(const Polygon& p, double x, double y) {
  double best = 1e30;
  const size_t n = p.v.size();
  for (size_t i = 0, j = n - 1; i < n; j = i++) {
    const double ax = p.v[j][0], ay = p.v[j][1];
    const double ex = p.edge[i][0], ey = p.edge[i][1];
    const double wx = x - ax, wy = y - ay;
    const double t = std::clamp((wx * ex + wy * ey) * p.edge[i][2], 0.0, 1.0);
    const double dx = wx - t * ex, dy = wy - t * ey;
    best = std::min(best, dx * dx + dy * dy);
  }
  const double d = std::sqrt(best);
  return polygon_inside(p, x, y) ? -d : d;
}

}  // namespace

double shape_extent(int shape) {
  static const double e[kNumShapes] = {1.0, 0.86 * 1.41421356237, 1.32, 1.38};
  return e[shape];
}

double shape_inradius(int shape) {
  // Square: half the side; triangle: half the circumradius; star: its inner vertices (the edges' closest
  // points to the centre lie beyond the segments).
  static const double r[kNumShapes] = {1.0, 0.86, 0.66, 0.60};
  return r[shape];
}

double shape_area(int shape) {
  static const double a[kNumShapes] = {3.14159265358979, 4 * 0.86 * 0.86, 0.75 * 1.7320508075688772 * 1.32 * 1.32,
                                       5 * 1.38 * 0.60 * 0.5877852522924731};
  return a[shape];
}

double shape_sdf(int shape, double x, double y) {
  if (shape == kCircle) return std::sqrt(x * x + y * y) - 1.0;
  return polygon_sdf(polygon(shape), x, y);
}

bool shape_inside(int shape, double x, double y) {
  switch (shape) {
    case kCircle:
      return x * x + y * y <= 1.0;
    case kSquare:
      return std::abs(x) <= 0.86 && std::abs(y) <= 0.86;
    default:
      return polygon_inside(polygon(shape), x, y);
  }
}

double shape_period(int shape) {
  static const double p[kNumShapes] = {360, 90, 120, 72};
  return p[shape];
}

}  // namespace detail

using namespace detail;

namespace {
std::vector<std::string> to_vector(const char* const* names, int n) { return {names, names + n}; }
}  // namespace

std::vector<std::string> shape_names() { return to_vector(kShapeNames, kNumShapes); }
std::vector<std::string> colour_names() { return to_vector(kColourNames, kNumColours); }
std::vector<std::string> pattern_names() { return to_vector(kPatternNames, kNumPatterns); }
std::vector<std::string> background_names() { return to_vector(kBackgroundNames, kNumBackgrounds); }
std::vector<std::string> tint_names() { return to_vector(kTintNames, kNumTints); }

// ---------------------------------------------------------------- validation and JSON

void validate(const SceneSpec& scene) {
  name_index(kBackgroundNames, kNumBackgrounds, scene.background, "background", "background");
  name_index(kTintNames, kNumTints, scene.tint, "tint", "tint");
  COLLAGE_CHECK_AT(std::isfinite(scene.light_angle_deg), "", "light_angle_deg", "must be a finite number");
  for (size_t i = 0; i < scene.objects.size(); ++i) {
    const auto& o = scene.objects[i];
    const std::string f = fmt::format("objects[{}].", i);
    name_index(kShapeNames, kNumShapes, o.shape, "shape", f + "shape");
    name_index(kColourNames, kNumColours, o.colour, "colour", f + "colour");
    name_index(kPatternNames, kNumPatterns, o.pattern, "pattern", f + "pattern");
    COLLAGE_CHECK_AT(std::isfinite(o.cx) && std::isfinite(o.cy), "", f + "cx", "centre must be finite");
    COLLAGE_CHECK_AT(o.size > 0 && o.size <= 1, "", f + "size", "size must be in (0, 1], got {}", o.size);
    COLLAGE_CHECK_AT(std::isfinite(o.rotation_deg), "", f + "rotation_deg", "must be a finite number");
    COLLAGE_CHECK_AT(o.shade >= -1 && o.shade <= 1, "", f + "shade", "shade must be in [-1, 1], got {}", o.shade);
  }
}

Json to_json(const ObjectSpec& o) {
  return Json{{"shape", o.shape}, {"colour", o.colour}, {"pattern", o.pattern}, {"cx", o.cx},
              {"cy", o.cy},       {"size", o.size},     {"rotation_deg", o.rotation_deg}, {"shade", o.shade}};
}

Json to_json(const SceneSpec& s) {
  Json objects = Json::array();
  for (const auto& o : s.objects) objects.push_back(to_json(o));
  return Json{{"background", s.background},     {"tint", s.tint},       {"light_angle_deg", s.light_angle_deg},
              {"texture_seed", s.texture_seed}, {"objects", objects}};
}

SceneSpec scene_from_json(const Json& json, const std::string& file) {
  COLLAGE_CHECK_AT(json.is_object(), file, "", "a ShapesWorld scene must be a JSON object");
  auto reject_unknown = [&](const JsonReader& r) {
    const auto unknown = r.unused_keys();
    if (!unknown.empty()) throw Error("unknown key", file, unknown.front());
  };
  SceneSpec s;
  JsonReader r(json, file);
  s.background = r.get<std::string>("background", s.background);
  s.tint = r.get<std::string>("tint", s.tint);
  s.light_angle_deg = r.get<double>("light_angle_deg", s.light_angle_deg);
  s.texture_seed = r.get<uint64_t>("texture_seed", s.texture_seed);
  const Json objects = r.get<Json>("objects", Json::array());
  COLLAGE_CHECK_AT(objects.is_array(), file, "objects", "must be an array");
  reject_unknown(r);
  for (size_t i = 0; i < objects.size(); ++i) {
    const std::string prefix = fmt::format("objects[{}].", i);
    COLLAGE_CHECK_AT(objects[i].is_object(), file, prefix, "must be an object");
    JsonReader o(objects[i], file, prefix);
    ObjectSpec spec;
    spec.shape = o.get<std::string>("shape", spec.shape);
    spec.colour = o.get<std::string>("colour", spec.colour);
    spec.pattern = o.get<std::string>("pattern", spec.pattern);
    spec.cx = o.get<double>("cx", spec.cx);
    spec.cy = o.get<double>("cy", spec.cy);
    spec.size = o.get<double>("size", spec.size);
    spec.rotation_deg = o.get<double>("rotation_deg", spec.rotation_deg);
    spec.shade = o.get<double>("shade", spec.shade);
    const auto unknown = o.unused_keys();
    if (!unknown.empty()) throw Error("unknown key", file, prefix + unknown.front());
    s.objects.push_back(spec);
  }
  try {
    validate(s);
  } catch (const Error& e) {
    throw e.with_context(file);
  }
  return s;
}

// ---------------------------------------------------------------- sampling

namespace {

std::vector<int> allowed(const std::vector<std::string>& names, const char* const* all, int n, const std::string& what) {
  std::vector<int> out;
  if (names.empty()) {
    for (int i = 0; i < n; ++i) out.push_back(i);
    return out;
  }
  for (const auto& name : names) out.push_back(name_index(all, n, name, what, "SampleOptions." + what + "s"));
  return out;
}

// Cells of a G x G grid (a square image) whose centres lie inside the object.
std::vector<int> object_cells(const ObjectSpec& o, int shape, int grid) {
  std::vector<int> cells;
  const double r = o.size * grid, ext = shape_extent(shape) * r;
  const double cx = o.cx * grid, cy = o.cy * grid;
  const double a = o.rotation_deg * M_PI / 180.0, ca = std::cos(a), sa = std::sin(a);
  const int x0 = std::max(0, static_cast<int>(cx - ext)), x1 = std::min(grid - 1, static_cast<int>(cx + ext) + 1);
  const int y0 = std::max(0, static_cast<int>(cy - ext)), y1 = std::min(grid - 1, static_cast<int>(cy + ext) + 1);
  for (int y = y0; y <= y1; ++y)
    for (int x = x0; x <= x1; ++x) {
      const double dx = (x + 0.5 - cx) / r, dy = -(y + 0.5 - cy) / r;
      if (shape_inside(shape, dx * ca + dy * sa, -dx * sa + dy * ca)) cells.push_back(y * grid + x);
    }
  return cells;
}

SceneSpec sample_once(Rng& rng, const SampleOptions& opt, const std::vector<int>& shapes, const std::vector<int>& colours,
                      const std::vector<int>& patterns, const std::vector<int>& backgrounds,
                      const std::vector<int>& tints) {
  SceneSpec s;
  s.background = kBackgroundNames[backgrounds[rng.index(static_cast<int>(backgrounds.size()))]];
  s.tint = kTintNames[tints[rng.index(static_cast<int>(tints.size()))]];
  s.light_angle_deg = std::fmod(rng.uniform(opt.min_light_deg, opt.max_light_deg), 360.0);
  s.texture_seed = rng.next() >> 16;
  const int n = opt.min_objects + rng.index(opt.max_objects - opt.min_objects + 1);

  // Combinations that may be sampled (held-out pairs removed).
  std::vector<std::pair<int, int>> combos;
  for (int c : colours)
    for (int sh : shapes) {
      bool excluded = false;
      for (const auto& [ec, es] : opt.excluded_colour_shapes) excluded |= (ec == kColourNames[c] && es == kShapeNames[sh]);
      if (!excluded) combos.push_back({c, sh});
    }
  COLLAGE_CHECK(!combos.empty(), "SampleOptions exclude every (colour, shape) combination");

  constexpr int kGrid = 48;
  std::vector<int> top(kGrid * kGrid, -1);  // index of the topmost object per cell
  std::vector<int> full;                      // cell count per object
  std::vector<int> shape_of;
  for (int i = 0; i < n; ++i) {
    bool placed = false;
    for (int attempt = 0; attempt < 40 && !placed; ++attempt) {
      const auto [c, sh] = combos[rng.index(static_cast<int>(combos.size()))];
      ObjectSpec o;
      o.shape = kShapeNames[sh];
      o.colour = kColourNames[c];
      o.pattern = "plain";
      std::vector<int> non_plain;
      for (int p : patterns)
        if (p != kPlain) non_plain.push_back(p);
      const bool has_plain = std::find(patterns.begin(), patterns.end(), int(kPlain)) != patterns.end();
      if (!non_plain.empty() && (!has_plain || rng.chance(opt.pattern_probability)))
        o.pattern = kPatternNames[non_plain[rng.index(static_cast<int>(non_plain.size()))]];
      o.size = rng.uniform(opt.min_size, opt.max_size);
      const double ext = std::min(0.5, shape_extent(sh) * o.size + 0.01);
      o.cx = rng.uniform(ext, 1.0 - ext);
      o.cy = rng.uniform(ext, 1.0 - ext);
      o.rotation_deg = rng.uniform(0.0, 360.0);
      if (rng.chance(opt.shade_probability)) o.shade = rng.uniform(-opt.max_shade, opt.max_shade);

      // Same-coloured objects must not touch (their extents plus a margin apart).
      bool ok = true;
      for (int j = 0; j < i && ok; ++j) {
        const auto& q = s.objects[j];
        if (q.colour != o.colour) continue;
        const double d = std::hypot(q.cx - o.cx, q.cy - o.cy);
        ok = d > shape_extent(sh) * o.size + shape_extent(shape_of[j]) * q.size + 0.04;
      }
      if (!ok) continue;
      // Every object below keeps min_visible of its area.
      const auto cells = object_cells(o, sh, kGrid);
      if (cells.empty()) continue;
      std::vector<int> visible(i, 0);
      for (int k = 0; k < kGrid * kGrid; ++k)
        if (top[k] >= 0) ++visible[top[k]];
      for (int k : cells)
        if (top[k] >= 0) --visible[top[k]];
      for (int j = 0; j < i && ok; ++j) ok = visible[j] >= opt.min_visible * full[j];
      if (!ok) continue;
      for (int k : cells) top[k] = i;
      full.push_back(static_cast<int>(cells.size()));
      shape_of.push_back(sh);
      s.objects.push_back(o);
      placed = true;
    }
    if (!placed) break;  // a crowded scene: keep the objects placed so far
  }
  return s;
}

}  // namespace

SceneSpec sample_scene(uint64_t seed, const SampleOptions& opt) {
  COLLAGE_CHECK(opt.min_objects >= 0 && opt.max_objects >= opt.min_objects,
                "SampleOptions: need 0 <= min_objects <= max_objects, got {} and {}", opt.min_objects, opt.max_objects);
  COLLAGE_CHECK(opt.min_size > 0 && opt.max_size >= opt.min_size && opt.max_size <= 0.5,
                "SampleOptions: need 0 < min_size <= max_size <= 0.5, got {} and {}", opt.min_size, opt.max_size);
  const auto shapes = allowed(opt.shapes, kShapeNames, kNumShapes, "shape");
  const auto colours = allowed(opt.colours, kColourNames, kNumColours, "colour");
  const auto patterns = allowed(opt.patterns, kPatternNames, kNumPatterns, "pattern");
  const auto backgrounds = allowed(opt.backgrounds, kBackgroundNames, kNumBackgrounds, "background");
  const auto tints = allowed(opt.tints, kTintNames, kNumTints, "tint");
  for (int attempt = 0; attempt < 1000; ++attempt) {
    Rng rng(seed ^ (0xA24BAED4963EE407ull * static_cast<uint64_t>(attempt)));
    SceneSpec s = sample_once(rng, opt, shapes, colours, patterns, backgrounds, tints);
    if (static_cast<int>(s.objects.size()) < opt.min_objects) continue;
    if (opt.accept && !opt.accept(s)) continue;
    return s;
  }
  throw Error("sample_scene: no scene satisfies the SampleOptions after 1000 attempts");
}

// ---------------------------------------------------------------- captions

std::string object_phrase(const ObjectSpec& o, bool name_colour, bool name_pattern) {
  std::string p;
  if (name_pattern && o.pattern != "plain") p += o.pattern + " ";
  if (name_colour) p += o.colour + " ";
  return p + o.shape;
}

std::string background_phrase(const std::string& background) {
  name_index(kBackgroundNames, kNumBackgrounds, background, "background", "background");
  return background;
}

Caption make_caption(const SceneSpec& scene, uint64_t seed, const CaptionOptions& opt) {
  validate(scene);
  Rng rng(seed ^ 0x5DEECE66Dull);
  Caption c;
  for (size_t i = 0; i < scene.objects.size(); ++i) {
    const auto& o = scene.objects[i];
    // Draw both decisions for every object, so one object's options never shift another's draws.
    const bool colour = rng.chance(opt.colour_probability);
    const bool pattern = rng.chance(opt.pattern_probability);
    const std::string phrase = object_phrase(o, colour, pattern);
    if (i > 0) c.text += (i + 1 == scene.objects.size()) ? " and " : ", ";
    c.text += (std::string("aeiou").find(phrase[0]) != std::string::npos) ? "an " : "a ";
    c.object_spans.push_back({c.text.size(), c.text.size() + phrase.size()});
    c.text += phrase;
    c.object_phrases.push_back(phrase);
  }
  const bool background = rng.chance(opt.background_probability);
  const bool tint = rng.chance(opt.tint_probability);
  if (background) {
    static const char* const prefix[kNumBackgrounds] = {"in the ", "on ", "on ", "on ", "in front of a "};
    const int b = find_name(kBackgroundNames, kNumBackgrounds, scene.background);
    c.text += (c.text.empty() ? "" : " ") + std::string(prefix[b]);
    c.background_phrase = background_phrase(scene.background);
    c.background_span = {c.text.size(), c.text.size() + c.background_phrase.size()};
    c.text += c.background_phrase;
  }
  if (tint) {
    static const char* const words[kNumTints] = {"in daylight", "at sunset", "at night"};
    c.text += (c.text.empty() ? "" : " ") + std::string(words[find_name(kTintNames, kNumTints, scene.tint)]);
  }
  return c;
}

std::string caption(const SceneSpec& scene, uint64_t seed, const CaptionOptions& options) {
  return make_caption(scene, seed, options).text;
}

}  // namespace collage::shapesworld
