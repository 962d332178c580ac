// ShapesWorld renderer: plain loops over pixels, analytic anti-aliasing (coverage = clamp(0.5 - signed
// distance in pixels)), everything expressed in fractions of the image so that any size shows one scene.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "core/core.h"
#include "datasets/shapesworld/internal.h"
#include "datasets/shapesworld/shapesworld.h"

namespace collage::shapesworld {

using namespace detail;

namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr float kShadowStrength = 0.45f;  // a full shadow keeps 55 % of the light
constexpr double kShadowOffset = 0.35;    // shadow offset, in object radii, away from the light

inline float clamp01(float x) { return x < 0 ? 0 : (x > 1 ? 1 : x); }
inline float smooth(float t) { return t * t * (3 - 2 * t); }

// Value noise on a lattice of nx x ny cells over the unit square, precomputed once per render.
class NoiseGrid {
 public:
  NoiseGrid(int nx, int ny, uint64_t seed) : nx_(nx), ny_(ny), v_((nx + 2) * (ny + 2)) {
    for (int y = 0; y <= ny + 1; ++y)
      for (int x = 0; x <= nx + 1; ++x) v_[y * (nx + 2) + x] = hash01(x, y, seed);
  }
  // u, v in [0, 1].
  float operator()(double u, double v) const {
    const double fx = std::clamp(u, 0.0, 1.0) * nx_, fy = std::clamp(v, 0.0, 1.0) * ny_;
    const int ix = std::min(static_cast<int>(fx), nx_), iy = std::min(static_cast<int>(fy), ny_);
    const float tx = smooth(static_cast<float>(fx - ix)), ty = smooth(static_cast<float>(fy - iy));
    const float* row0 = &v_[iy * (nx_ + 2) + ix];
    const float* row1 = row0 + (nx_ + 2);
    const float a = row0[0] + (row0[1] - row0[0]) * tx, b = row1[0] + (row1[1] - row1[0]) * tx;
    return a + (b - a) * ty;
  }

 private:
  int nx_, ny_;
  std::vector<float> v_;
};

struct Canvas {
  int h, w;
};

void check_size(int height, int width) {
  COLLAGE_CHECK(height >= 16 && width >= 16 && height <= 8192 && width <= 8192,
                "ShapesWorld renders images of 16..8192 pixels per side (64 is the main size), got {}x{}", height,
                width);
}

// Writes the tinted background into three planes of h*w floats.
void draw_background(const SceneSpec& scene, Canvas c, float* r, float* g, float* b) {
  const int bg = name_index(kBackgroundNames, kNumBackgrounds, scene.background, "background", "background");
  const Rgb tint = tint_rgb(name_index(kTintNames, kNumTints, scene.tint, "tint", "tint"));
  const uint64_t seed = scene.texture_seed;
  // A per-scene brightness jitter: no two skies are quite the same.
  const float jitter = 1.0f + 0.08f * (hash01(17, 31, seed) - 0.5f);
  // Only the textures this background uses (a 64x64 render is mostly this loop).
  const NoiseGrid low(4, 4, seed + 1);
  const NoiseGrid fine = bg == kGrass ? NoiseGrid(48, 12, seed + 2) : NoiseGrid(0, 0, 0);
  const NoiseGrid grain = bg == kSand ? NoiseGrid(64, 64, seed + 3) : NoiseGrid(0, 0, 0);
  const double phase = hash01(5, 7, seed);
  for (int y = 0; y < c.h; ++y) {
    const double v = (y + 0.5) / c.h;
    const Rgb base = background_gradient(bg, v);
    for (int x = 0; x < c.w; ++x) {
      const double u = (x + 0.5) / c.w;
      float m = jitter, lift = 0;  // colour = base * m + lift
      switch (bg) {
        case kSky:  // soft haze
          lift = 0.06f * (low(u, v) - 0.5f);
          break;
        case kGrass:  // blades (stretched vertical noise) and patches
          m *= 1.0f + 0.12f * (fine(u, v) - 0.5f) + 0.10f * (low(u, v) - 0.5f);
          break;
        case kSand:  // diagonal ripples and grain
          m *= 1.0f + 0.03f * static_cast<float>(std::sin(2 * kPi * (5 * u + 8 * v + phase + 0.6 * low(u, v)))) +
               0.05f * (grain(u, v) - 0.5f);
          break;
        case kWater: {  // horizontal waves, wobbling
          const float wave = static_cast<float>(std::sin(2 * kPi * (11 * v + phase + 0.9 * low(u, v))));
          m *= 1.0f + 0.06f * wave;
          lift = 0.03f * wave * wave * wave;
          break;
        }
        case kWall: {  // bricks: 8 rows, 4 per row, rows offset by half a brick, lighter mortar
          const double rows = 8, cols = 4;
          const double fy = v * rows;
          const int row = static_cast<int>(fy);
          const double fx = u * cols + (row % 2 ? 0.5 : 0.0) + phase;
          const int col = static_cast<int>(std::floor(fx));
          const double dy = std::min(fy - row, row + 1 - fy) / rows;  // distance to the row edge
          const double dx = std::min(fx - col, col + 1 - fx) / cols;
          const double d = std::min(dx * c.w, dy * c.h);  // pixels to the nearest mortar line
          const float mortar = clamp01(static_cast<float>(0.6 * (std::min(c.h, c.w) / 64.0) + 0.5 - d));
          const float brick = 1.0f + 0.08f * (hash01(col, row, seed) - 0.5f);
          m *= brick + (1.12f - brick) * mortar;
          break;
        }
      }
      const size_t i = static_cast<size_t>(y) * c.w + x;
      r[i] = clamp01(base.r * m + lift) * tint.r;
      g[i] = clamp01(base.g * m + lift) * tint.g;
      b[i] = clamp01(base.b * m + lift) * tint.b;
    }
  }
}

// An object prepared for drawing: pixel-space placement and its colours.
struct Placed {
  int shape, pattern;
  double cx, cy, radius, cos_a, sin_a, extent;  // pixels
  double outer2, inner2;  // squared radii beyond / within which the coverage is 0 / 1
  Rgb base, pat;
};

Placed place(const ObjectSpec& o, Canvas c, const std::string& field) {
  Placed p;
  p.shape = name_index(kShapeNames, kNumShapes, o.shape, "shape", field + "shape");
  const int colour = name_index(kColourNames, kNumColours, o.colour, "colour", field + "colour");
  p.pattern = name_index(kPatternNames, kNumPatterns, o.pattern, "pattern", field + "pattern");
  COLLAGE_CHECK_AT(o.size > 0 && std::isfinite(o.size), "", field + "size", "size must be positive, got {}", o.size);
  const double side = std::min(c.h, c.w);
  p.cx = o.cx * c.w;
  p.cy = o.cy * c.h;
  p.radius = o.size * side;
  p.extent = shape_extent(p.shape) * p.radius;
  p.outer2 = (p.extent + 0.5) * (p.extent + 0.5);
  const double inner = std::max(0.0, shape_inradius(p.shape) * p.radius - 0.5);
  p.inner2 = inner * inner;
  const double a = o.rotation_deg * kPi / 180.0;
  p.cos_a = std::cos(a);
  p.sin_a = std::sin(a);
  // Shade: a mix towards white (positive) or black (negative) that no caption names.
  const float s = static_cast<float>(std::clamp(o.shade, -1.0, 1.0));
  const Rgb c0 = colour_rgb(colour);
  auto shade = [s](float v) { return s >= 0 ? v + (1 - v) * s : v * (1 + s); };
  p.base = {shade(c0.r), shade(c0.g), shade(c0.b)};
  // Pattern ink: a darker version of the colour (black gets a lighter one), so the hue stays the colour's.
  auto ink = [&](float v) { return colour == kBlack ? v + (1 - v) * 0.15f : v * 0.72f; };
  p.pat = {ink(p.base.r), ink(p.base.g), ink(p.base.b)};
  return p;
}

struct Box {
  int x0, y0, x1, y1;  // inclusive-exclusive
  bool empty() const { return x0 >= x1 || y0 >= y1; }
};

Box box_of(double cx, double cy, double reach, Canvas c) {
  return {std::max(0, static_cast<int>(std::floor(cx - reach))), std::max(0, static_cast<int>(std::floor(cy - reach))),
          std::min(c.w, static_cast<int>(std::ceil(cx + reach)) + 1),
          std::min(c.h, static_cast<int>(std::ceil(cy + reach)) + 1)};
}

// Coverage (H*W plane, only the box is written) and tinted, shaded colour of one object.
// Light (lx, ly) is a unit vector towards the light, y up.
Box draw_object(const Placed& p, double lx, double ly, Rgb tint, Canvas c, float* alpha, float* r, float* g, float* b) {
  const Box box = box_of(p.cx, p.cy, p.extent + 1.5, c);
  const double inv_r = 1.0 / p.radius;
  for (int y = box.y0; y < box.y1; ++y)
    for (int x = box.x0; x < box.x1; ++x) {
      const size_t i = static_cast<size_t>(y) * c.w + x;
      const double dx = x + 0.5 - p.cx, dy = -(y + 0.5 - p.cy);  // y up
      const double qx = (dx * p.cos_a + dy * p.sin_a) * inv_r, qy = (-dx * p.sin_a + dy * p.cos_a) * inv_r;
      // The distance to the outline only matters within half a pixel of it.
      const double rr = dx * dx + dy * dy;
      const float cov = rr >= p.outer2 ? 0.0f
                        : rr <= p.inner2 ? 1.0f
                                         : clamp01(static_cast<float>(0.5 - shape_sdf(p.shape, qx, qy) * p.radius));
      alpha[i] = cov;
      if (cov <= 0) {
        r[i] = g[i] = b[i] = 0;
        continue;
      }
      float ink = 0;
      if (p.pattern == kStriped) {  // diagonal stripes, 4 across the object
        const double period = 0.5;
        const double w = (qx + qy) * 0.70710678 / period;
        double d = std::abs((w - std::floor(w)) - 0.25);
        d = std::min(d, 1 - d);
        ink = clamp01(static_cast<float>(0.5 - (d - 0.25) * period * p.radius));
      } else if (p.pattern == kDotted) {  // dots on a square lattice, one at the centre
        const double s = 0.6;
        const double fx = qx / s - std::round(qx / s), fy = qy / s - std::round(qy / s);
        ink = clamp01(static_cast<float>(0.5 - (std::sqrt(fx * fx + fy * fy) * s - 0.17) * p.radius));
      }
      const float t = std::clamp(static_cast<float>((dx * lx + dy * ly) / p.extent), -1.0f, 1.0f);
      auto col = [&](float base, float pat, float tn) {
        return clamp01(shade_channel(base + (pat - base) * ink, t)) * tn;
      };
      r[i] = col(p.base.r, p.pat.r, tint.r);
      g[i] = col(p.base.g, p.pat.g, tint.g);
      b[i] = col(p.base.b, p.pat.b, tint.b);
    }
  return box;
}

struct Light {
  double lx, ly;  // towards the light, y up
  Rgb tint;
};

Light light_of(const SceneSpec& scene) {
  COLLAGE_CHECK_AT(std::isfinite(scene.light_angle_deg), "", "light_angle_deg", "must be a finite number");
  const double a = scene.light_angle_deg * kPi / 180.0;
  return {std::cos(a), std::sin(a), tint_rgb(name_index(kTintNames, kNumTints, scene.tint, "tint", "tint"))};
}

}  // namespace

at::Tensor render_background(const SceneSpec& scene, int height, int width) {
  check_size(height, width);
  auto img = at::empty({3, height, width}, at::kFloat);
  float* d = img.data_ptr<float>();
  const size_t n = static_cast<size_t>(height) * width;
  draw_background(scene, {height, width}, d, d + n, d + 2 * n);
  return img;
}

at::Tensor render_object_rgba(const ObjectSpec& object, const SceneSpec& lighting, int height, int width) {
  check_size(height, width);
  SceneSpec one = lighting;
  one.objects = {object};
  validate(one);
  const Canvas c{height, width};
  const Light light = light_of(lighting);
  auto img = at::zeros({4, height, width}, at::kFloat);
  float* d = img.data_ptr<float>();
  const size_t n = static_cast<size_t>(height) * width;
  draw_object(place(object, c, ""), light.lx, light.ly, light.tint, c, d + 3 * n, d, d + n, d + 2 * n);
  return img;
}

Rendered render(const SceneSpec& scene, int height, int width) {
  check_size(height, width);
  validate(scene);
  const Canvas c{height, width};
  const size_t n = static_cast<size_t>(height) * width;
  const Light light = light_of(scene);
  Rendered out;
  out.image = at::empty({3, height, width}, at::kFloat);
  float* img = out.image.data_ptr<float>();
  float *R = img, *G = img + n, *B = img + 2 * n;
  draw_background(scene, c, R, G, B);

  std::vector<Placed> placed;
  for (size_t i = 0; i < scene.objects.size(); ++i)
    placed.push_back(place(scene.objects[i], c, fmt::format("objects[{}].", i)));

  // Shadows: every object's silhouette, offset away from the one light, soft-edged, darkening the
  // background (not other objects). Overlapping shadows do not darken twice.
  if (!placed.empty()) {
    std::vector<float> shadow(n, 0.0f);
    const double soft = std::max(1.0, 0.025 * std::min(height, width));  // edge width, pixels
    for (const auto& p : placed) {
      const double ox = -light.lx * kShadowOffset * p.radius, oy = light.ly * kShadowOffset * p.radius;  // y down
      const double scx = p.cx + ox, scy = p.cy + oy;
      const Box box = box_of(scx, scy, p.extent + soft + 1, c);
      const double inv_r = 1.0 / p.radius;
      const double outer = p.extent + soft / 2, inner = std::max(0.0, shape_inradius(p.shape) * p.radius - soft / 2);
      const double outer2 = outer * outer, inner2 = inner * inner;
      for (int y = box.y0; y < box.y1; ++y)
        for (int x = box.x0; x < box.x1; ++x) {
          const double dx = x + 0.5 - scx, dy = -(y + 0.5 - scy);
          const double rr = dx * dx + dy * dy;
          if (rr >= outer2) continue;
          float& dst = shadow[static_cast<size_t>(y) * width + x];
          if (rr <= inner2) {
            dst = 1.0f;
            continue;
          }
          const double qx = (dx * p.cos_a + dy * p.sin_a) * inv_r, qy = (-dx * p.sin_a + dy * p.cos_a) * inv_r;
          const float s = clamp01(static_cast<float>(0.5 - shape_sdf(p.shape, qx, qy) * p.radius / soft));
          dst = std::max(dst, s);
        }
    }
    for (size_t i = 0; i < n; ++i) {
      const float k = 1.0f - kShadowStrength * shadow[i];
      R[i] *= k;
      G[i] *= k;
      B[i] *= k;
    }
  }

  // Objects, bottom to top; each one's coverage is kept for the masks.
  std::vector<float> alpha(n), r(n), g(n), b(n);
  for (size_t k = 0; k < placed.size(); ++k) {
    RenderedObject ro;
    ro.spec = scene.objects[k];
    ro.full_mask = at::zeros({height, width}, at::kFloat);
    float* a = ro.full_mask.data_ptr<float>();
    const Box box = draw_object(placed[k], light.lx, light.ly, light.tint, c, a, r.data(), g.data(), b.data());
    for (int y = box.y0; y < box.y1; ++y)
      for (int x = box.x0; x < box.x1; ++x) {
        const size_t i = static_cast<size_t>(y) * width + x;
        const float ai = a[i];
        if (ai <= 0) continue;
        R[i] += (r[i] - R[i]) * ai;
        G[i] += (g[i] - G[i]) * ai;
        B[i] += (b[i] - B[i]) * ai;
      }
    out.objects.push_back(std::move(ro));
  }

  // Visible masks, top down: what each object's coverage leaves uncovered by the objects above.
  std::vector<float> remaining(n, 1.0f);
  for (size_t k = placed.size(); k-- > 0;) {
    auto& ro = out.objects[k];
    ro.visible_mask = at::zeros({height, width}, at::kFloat);
    const float* a = ro.full_mask.data_ptr<float>();
    float* v = ro.visible_mask.data_ptr<float>();
    const Box box = box_of(placed[k].cx, placed[k].cy, placed[k].extent + 1.5, c);
    for (int y = box.y0; y < box.y1; ++y)
      for (int x = box.x0; x < box.x1; ++x) {
        const size_t i = static_cast<size_t>(y) * width + x;
        v[i] = a[i] * remaining[i];
        remaining[i] *= 1.0f - a[i];
      }
  }
  return out;
}

}  // namespace collage::shapesworld
