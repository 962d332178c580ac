// ShapesWorld analyser. Steps, each chosen to survive blur, noise and colour drift of generated images:
//  1. background and tint: the image border against every (background, tint) pair's known gradient;
//     the image is divided by that tint (with a bounded per-channel correction for drift), so colours
//     are judged as under daylight;
//  2. background model: a quadratic per channel, fitted robustly to the pixels that look like
//     background (textures are small deviations; shadows are a chroma-preserving darkening);
//  3. object pixels deviate from it; each gets a colour class by hue (chromatic) or by brightness
//     (white / black), which shading, patterns and shade do not change;
//  4. seeds: object pixels whose whole 3x3 neighbourhood has one class (this drops anti-aliased edges
//     and the thin mixed seams between touching objects, whose hues mislead); seeds grow, most
//     certain pixels first, each frontier pixel going to whichever nearby colour (an object's, the
//     background, its shadow) best explains it as a two-colour mixture, so that an edge pixel belongs
//     to the object covering at least half of it; touching regions of one colour are one object, and
//     pieces of one object cut apart by another are rejoined when one outline fits their union;
//  5. shape: every outline is fitted (centre, size, rotation) to the region by its anti-aliased
//     coverage, pixels of other objects counting as unknown (they may hide part of the outline); the
//     best soft IoU wins.
#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <queue>
#include <set>

#include "core/core.h"
#include "datasets/shapesworld/internal.h"
#include "datasets/shapesworld/shapesworld.h"

namespace collage::shapesworld {

using namespace detail;

namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr float kWeak = 0.07f;          // deviation below which a pixel is background
constexpr float kShadowKeep = 0.55f;    // 1 - the renderer's shadow strength
constexpr float kMaxMixError = 0.05f;   // squared RGB distance: a pixel no two nearby colours explain
constexpr int kNone = -1;

enum PixelKind : uint8_t { kBg = 0, kShadowPx, kWeakPx, kStrongPx };

struct V3 {
  float r = 0, g = 0, b = 0;
  V3 operator+(const V3& o) const { return {r + o.r, g + o.g, b + o.b}; }
  V3 operator-(const V3& o) const { return {r - o.r, g - o.g, b - o.b}; }
  V3 operator*(float s) const { return {r * s, g * s, b * s}; }
  float dot(const V3& o) const { return r * o.r + g * o.g + b * o.b; }
  float norm2() const { return dot(*this); }
};

struct Image {
  int h = 0, w = 0;
  std::vector<V3> px;
  const V3& at(int y, int x) const { return px[static_cast<size_t>(y) * w + x]; }
};

Image to_image(const at::Tensor& input) {
  auto t = input.detach().to(at::kCPU, at::kFloat);
  if (t.dim() == 4) {
    COLLAGE_CHECK(t.size(0) == 1, "analyse: expected one image, got a batch of {}", t.size(0));
    t = t[0];
  }
  COLLAGE_CHECK(t.dim() == 3 && (t.size(0) == 3 || t.size(0) == 4), "analyse: expected a (3, H, W) image, got {}",
                fmt::join(input.sizes(), "x"));
  COLLAGE_CHECK(t.size(1) >= 16 && t.size(2) >= 16, "analyse: image too small ({}x{})", t.size(1), t.size(2));
  t = t.slice(0, 0, 3).contiguous();
  Image img;
  img.h = static_cast<int>(t.size(1));
  img.w = static_cast<int>(t.size(2));
  const size_t n = static_cast<size_t>(img.h) * img.w;
  const float* d = t.data_ptr<float>();
  img.px.resize(n);
  for (size_t i = 0; i < n; ++i) img.px[i] = {d[i], d[n + i], d[2 * n + i]};
  return img;
}

V3 v3(Rgb c) { return {c.r, c.g, c.b}; }

// ---------------------------------------------------------------- 1. background and tint

struct Lighting {
  int background = 0, tint = 0;
  V3 gain{1, 1, 1};
};

Lighting estimate_lighting(const Image& img, const AnalyseOptions& opt) {
  const int bw = std::max(1, std::min(img.h, img.w) / 32);
  std::vector<std::pair<int, int>> border;  // (y, x)
  for (int y = 0; y < img.h; ++y)
    for (int x = 0; x < img.w; ++x)
      if (y < bw || y >= img.h - bw || x < bw || x >= img.w - bw) border.push_back({y, x});
  std::vector<int> bgs, tints;
  if (opt.background.empty())
    for (int b = 0; b < kNumBackgrounds; ++b) bgs.push_back(b);
  else
    bgs.push_back(name_index(kBackgroundNames, kNumBackgrounds, opt.background, "background", "AnalyseOptions.background"));
  if (opt.tint.empty())
    for (int t = 0; t < kNumTints; ++t) tints.push_back(t);
  else
    tints.push_back(name_index(kTintNames, kNumTints, opt.tint, "tint", "AnalyseOptions.tint"));

  Lighting best;
  double best_cost = 1e30;
  for (int b : bgs)
    for (int t : tints) {
      const V3 tint = v3(tint_rgb(t));
      double cost = 0;
      for (auto [y, x] : border) {
        const V3 g = v3(background_gradient(b, (y + 0.5) / img.h));
        const V3 e{g.r * tint.r, g.g * tint.g, g.b * tint.b};
        cost += std::min(0.04f, (img.at(y, x) - e).norm2());
      }
      if (cost < best_cost) {
        best_cost = cost;
        best.background = b;
        best.tint = t;
      }
    }
  // A bounded per-channel correction on top of the tint: texture variants and the colour drift of a
  // generated image.
  const V3 tint = v3(tint_rgb(best.tint));
  std::array<std::vector<float>, 3> ratios;
  for (auto [y, x] : border) {
    const V3 g = v3(background_gradient(best.background, (y + 0.5) / img.h));
    const V3 e{g.r * tint.r, g.g * tint.g, g.b * tint.b};
    const V3 p = img.at(y, x);
    if ((p - e).norm2() > 0.02f) continue;
    if (e.r > 0.02f) ratios[0].push_back(p.r / e.r);
    if (e.g > 0.02f) ratios[1].push_back(p.g / e.g);
    if (e.b > 0.02f) ratios[2].push_back(p.b / e.b);
  }
  float corr[3];
  for (int c = 0; c < 3; ++c) {
    auto& v = ratios[c];
    if (v.size() < 8) {
      corr[c] = 1;
      continue;
    }
    std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    corr[c] = std::clamp(v[v.size() / 2], 0.8f, 1.25f);
  }
  best.gain = {tint.r * corr[0], tint.g * corr[1], tint.b * corr[2]};
  return best;
}

// ---------------------------------------------------------------- 2. background model

struct Quadratic {
  std::array<std::array<double, 6>, 3> c{};
  static void terms(double u, double v, double* t) {
    const double x = 2 * u - 1, y = 2 * v - 1;
    t[0] = 1;
    t[1] = x;
    t[2] = y;
    t[3] = x * x;
    t[4] = x * y;
    t[5] = y * y;
  }
};

// Solves the 6x6 system a x = b (3 right-hand sides) in place by Gaussian elimination with partial pivoting;
// false when a is singular. Our own few lines instead of OpenCV, so that the analyser also builds where only
// libtorch is (the GPU machine's evaluation).
bool solve6(double a[6][6], double b[6][3]) {
  for (int col = 0; col < 6; ++col) {
    int pivot = col;
    for (int r = col + 1; r < 6; ++r)
      if (std::abs(a[r][col]) > std::abs(a[pivot][col])) pivot = r;
    if (!(std::abs(a[pivot][col]) > 1e-300)) return false;
    if (pivot != col) {
      std::swap(a[pivot], a[col]);
      std::swap(b[pivot], b[col]);
    }
    for (int r = col + 1; r < 6; ++r) {
      const double f = a[r][col] / a[col][col];
      if (f == 0) continue;
      for (int k = col; k < 6; ++k) a[r][k] -= f * a[col][k];
      for (int k = 0; k < 3; ++k) b[r][k] -= f * b[col][k];
    }
  }
  for (int r = 5; r >= 0; --r)
    for (int k = 0; k < 3; ++k) {
      double v = b[r][k];
      for (int c = r + 1; c < 6; ++c) v -= a[r][c] * b[c][k];
      b[r][k] = v / a[r][r];
    }
  return true;
}

// Least squares over the selected pixels; false when there are too few.
bool fit_quadratic(const Image& img, const std::vector<uint8_t>& use, Quadratic& q) {
  double ata[6][6] = {}, atb[6][3] = {};
  int count = 0;
  double t[6];
  for (int y = 0; y < img.h; ++y)
    for (int x = 0; x < img.w; ++x) {
      const size_t i = static_cast<size_t>(y) * img.w + x;
      if (!use[i]) continue;
      ++count;
      Quadratic::terms((x + 0.5) / img.w, (y + 0.5) / img.h, t);
      const V3 p = img.px[i];
      for (int a = 0; a < 6; ++a) {
        for (int b = a; b < 6; ++b) ata[a][b] += t[a] * t[b];
        atb[a][0] += t[a] * p.r;
        atb[a][1] += t[a] * p.g;
        atb[a][2] += t[a] * p.b;
      }
    }
  if (count < 12) return false;
  for (int a = 0; a < 6; ++a) {
    for (int b = 0; b < a; ++b) ata[a][b] = ata[b][a];
    ata[a][a] += 1e-6 * count;  // keeps a one-sided selection well posed
  }
  if (!solve6(ata, atb)) return false;
  for (int c = 0; c < 3; ++c)
    for (int a = 0; a < 6; ++a) q.c[c][a] = atb[a][c];
  return true;
}

std::vector<V3> evaluate(const Quadratic& q, int h, int w) {
  std::vector<V3> out(static_cast<size_t>(h) * w);
  double t[6];
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      Quadratic::terms((x + 0.5) / w, (y + 0.5) / h, t);
      double v[3] = {0, 0, 0};
      for (int c = 0; c < 3; ++c)
        for (int a = 0; a < 6; ++a) v[c] += q.c[c][a] * t[a];
      out[static_cast<size_t>(y) * w + x] = {static_cast<float>(v[0]), static_cast<float>(v[1]), static_cast<float>(v[2])};
    }
  return out;
}

// A darkening of the background that keeps its chroma: a shadow (or the soft edge of one).
bool shadow_like(const V3& p, const V3& bg) {
  const float bb = bg.norm2();
  if (bb < 1e-4f) return false;
  const float k = p.dot(bg) / bb;
  return k > 0.35f && k < 0.93f && (p - bg * k).norm2() < 0.05f * 0.05f;
}

std::vector<V3> background_model(const Image& n, int background) {
  const size_t count = n.px.size();
  const int bw = std::max(1, std::min(n.h, n.w) / 32);
  std::vector<uint8_t> use(count, 0);
  int used = 0;
  for (int y = 0; y < n.h; ++y)
    for (int x = 0; x < n.w; ++x) {
      if (!(y < bw || y >= n.h - bw || x < bw || x >= n.w - bw)) continue;
      const size_t i = static_cast<size_t>(y) * n.w + x;
      const V3 g = v3(background_gradient(background, (y + 0.5) / n.h));
      if ((n.px[i] - g).norm2() < 0.2f * 0.2f) use[i] = 1, ++used;
    }
  if (used < 12)  // the border is not this background at all: fall back to the whole border
    for (int y = 0; y < n.h; ++y)
      for (int x = 0; x < n.w; ++x)
        if (y < bw || y >= n.h - bw || x < bw || x >= n.w - bw) use[static_cast<size_t>(y) * n.w + x] = 1;
  Quadratic q;
  std::vector<V3> model(count, V3{0.5f, 0.5f, 0.5f});
  for (int iter = 0; iter < 3; ++iter) {
    if (!fit_quadratic(n, use, q)) break;
    model = evaluate(q, n.h, n.w);
    const float thr = iter == 0 ? 0.10f : 0.08f;
    for (size_t i = 0; i < count; ++i)
      use[i] = (n.px[i] - model[i]).norm2() < thr * thr && !shadow_like(n.px[i], model[i]);
  }
  return model;
}

// ---------------------------------------------------------------- 3. colour classes

struct Palette {
  float hue[kNumColours];
  Palette() {
    for (int c = 0; c < kNumColours; ++c) hue[c] = hue_of(v3(colour_rgb(c)));
  }
  static float hue_of(const V3& p) {
    const float mx = std::max({p.r, p.g, p.b}), mn = std::min({p.r, p.g, p.b}), d = mx - mn;
    if (d <= 1e-6f) return 0;
    float h;
    if (mx == p.r)
      h = (p.g - p.b) / d;
    else if (mx == p.g)
      h = 2 + (p.b - p.r) / d;
    else
      h = 4 + (p.r - p.g) / d;
    h *= 60;
    return h < 0 ? h + 360 : h;
  }
};

int colour_class(const V3& p) {
  static const Palette palette;
  const float mx = std::max({p.r, p.g, p.b}), mn = std::min({p.r, p.g, p.b});
  const float sat = (mx - mn) / std::max(mx, 1e-3f);
  if (mx < 0.18f || sat < 0.28f) return (p.r + p.g + p.b) / 3 >= 0.44f ? kWhite : kBlack;
  const float h = Palette::hue_of(p);
  int best = 0;
  float best_d = 1e9f;
  for (int c = 0; c < kNumColours; ++c) {
    if (c == kWhite || c == kBlack) continue;
    float d = std::abs(h - palette.hue[c]);
    d = std::min(d, 360 - d);
    if (d < best_d) best_d = d, best = c;
  }
  return best;
}

// ---------------------------------------------------------------- 5. shape fitting

// Signed distances to each outline on a grid over [-E, E]^2 in local units: the fitter's coverage of a
// pixel is one lookup (the renderer's analytic anti-aliasing, so the score is smooth in the parameters
// and coordinate descent does not stall on pixel steps). Only distances within kClip of the outline
// matter (beyond, the coverage is 0 or 1 for any region big enough to fit), so they are stored
// clipped, as bytes: the tables stay in cache.
class ShapeTables {
 public:
  static constexpr int kN = 192;
  static constexpr double kE = 1.6, kClip = 0.3;
  ShapeTables() {
    for (int s = 0; s < kNumShapes; ++s) {
      sdf_[s].resize(kN * kN);
      for (int iy = 0; iy < kN; ++iy)
        for (int ix = 0; ix < kN; ++ix) {
          const double d = shape_sdf(s, -kE + (ix + 0.5) * 2 * kE / kN, -kE + (iy + 0.5) * 2 * kE / kN);
          sdf_[s][iy * kN + ix] = static_cast<int8_t>(std::lround(std::clamp(d, -kClip, kClip) / kClip * 127));
        }
    }
  }
  const int8_t* sdf(int s) const { return sdf_[s].data(); }

 private:
  std::vector<int8_t> sdf_[kNumShapes];
};

const ShapeTables& tables() {
  static const ShapeTables t;
  return t;
}

enum Code : uint8_t { kOut = 0, kMine = 1, kUnknown = 2 };

// What a shape is fitted to: per pixel, whether it is the region's, background (the shape must not
// cover it) or another object's (unknown: it may hide part of the shape).
struct Target {
  int h = 0, w = 0;
  std::vector<uint8_t> code;
  int x0 = 0, y0 = 0, x1 = 0, y1 = 0, area = 0;
  double mx = 0, my = 0;
  bool occluded = false;
  double dx = 0, dy = 0;  // unit vector from the centroid towards the occluders
  // Sums of exp(i k theta) over the outward normals (y up) of the outline seen against the background,
  // k = 3, 4, 5: the k-fold symmetric shapes' rotation, from edges that are really theirs.
  double normal_re[6] = {}, normal_im[6] = {}, normal_sum = 0;
};

Target make_target(const std::vector<int>& label, const std::vector<uint8_t>& occupied, int h, int w,
                   const std::vector<int>& ids) {
  Target t;
  t.h = h, t.w = w;
  t.code.assign(static_cast<size_t>(h) * w, kOut);
  t.x0 = w, t.y0 = h;
  auto mine = [&](int l) { return l != kNone && std::find(ids.begin(), ids.end(), l) != ids.end(); };
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const size_t i = static_cast<size_t>(y) * w + x;
      if (mine(label[i])) {
        t.code[i] = kMine;
        ++t.area;
        t.mx += x + 0.5, t.my += y + 0.5;
        t.x0 = std::min(t.x0, x), t.y0 = std::min(t.y0, y), t.x1 = std::max(t.x1, x + 1), t.y1 = std::max(t.y1, y + 1);
      } else if (occupied[i]) {
        t.code[i] = kUnknown;
      }
    }
  if (t.area == 0) return t;
  t.mx /= t.area, t.my /= t.area;
  // Contact with other objects: where the hidden part, if any, must be.
  double cx = 0, cy = 0;
  int contacts = 0;
  for (int y = t.y0; y < t.y1; ++y)
    for (int x = t.x0; x < t.x1; ++x) {
      if (t.code[static_cast<size_t>(y) * w + x] != kMine) continue;
      for (int dy = -1; dy <= 1; ++dy)
        for (int dx = -1; dx <= 1; ++dx) {
          const int yy = y + dy, xx = x + dx;
          if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
          // Only other regions occlude; unassigned object-like pixels (edges) merely stay unknown.
          const int l = label[static_cast<size_t>(yy) * w + xx];
          if (l != kNone && !mine(l)) cx += xx + 0.5, cy += yy + 0.5, ++contacts;
        }
    }
  // Outward normals from the gradient of the 3x3-smoothed mask, where the mask meets the background.
  auto mask_at = [&](int y, int x) {
    return (y < 0 || y >= h || x < 0 || x >= w) ? 0.0 : (t.code[static_cast<size_t>(y) * w + x] == kMine ? 1.0 : 0.0);
  };
  for (int y = t.y0 - 1; y <= t.y1; ++y)
    for (int x = t.x0 - 1; x <= t.x1; ++x) {
      if (y < 0 || y >= h || x < 0 || x >= w || t.code[static_cast<size_t>(y) * w + x] != kOut) continue;
      // A background pixel next to the region: the outline passes here.
      const double gx = (mask_at(y - 1, x + 1) + 2 * mask_at(y, x + 1) + mask_at(y + 1, x + 1)) -
                        (mask_at(y - 1, x - 1) + 2 * mask_at(y, x - 1) + mask_at(y + 1, x - 1));
      const double gy = (mask_at(y + 1, x - 1) + 2 * mask_at(y + 1, x) + mask_at(y + 1, x + 1)) -
                        (mask_at(y - 1, x - 1) + 2 * mask_at(y - 1, x) + mask_at(y - 1, x + 1));
      const double mag = std::hypot(gx, gy);
      if (mag < 1e-9) continue;
      const double theta = std::atan2(gy, -gx);  // outward = against the gradient; y up
      t.normal_sum += mag;
      for (int k = 3; k <= 5; ++k) t.normal_re[k] += mag * std::cos(k * theta), t.normal_im[k] += mag * std::sin(k * theta);
    }
  t.occluded = contacts >= 2;
  if (t.occluded) {
    const double vx = cx / contacts - t.mx, vy = cy / contacts - t.my, len = std::hypot(vx, vy);
    if (len > 1e-6) t.dx = vx / len, t.dy = vy / len;
  }
  return t;
}

struct Fit {
  double cx = 0, cy = 0, r = 1, rot = 0, score = -1;
};

// Soft IoU of the outline's anti-aliased coverage with the region, unknown pixels ignored, minus a
// small penalty for the share of the outline hidden behind other objects (so that, of two outlines
// explaining the visible pixels equally, the one that needs less occlusion wins). Every `stride`-th pixel.
double fit_score(const Target& t, int shape, const Fit& f, int stride = 1) {
  constexpr double kHiddenPenalty = 0.08;
  const double ext = shape_extent(shape) * f.r + 1;
  auto lo = [stride](int v) { return v - ((v % stride) + stride) % stride; };
  const int x0 = lo(std::max(0, std::min(t.x0, static_cast<int>(std::floor(f.cx - ext)))));
  const int y0 = lo(std::max(0, std::min(t.y0, static_cast<int>(std::floor(f.cy - ext)))));
  const int x1 = std::min(t.w, std::max(t.x1, static_cast<int>(std::ceil(f.cx + ext)) + 1));
  const int y1 = std::min(t.h, std::max(t.y1, static_cast<int>(std::ceil(f.cy + ext)) + 1));
  // Table coordinates advance by a constant per pixel: u = (local x + E) * scale, likewise v. Outside
  // the table they are clamped to its border, which lies outside every outline (coverage 0 for any
  // region big enough to be fitted), so the loop has no branches.
  constexpr int kN = ShapeTables::kN;
  constexpr double kScale = kN / (2 * ShapeTables::kE);
  const double a = f.rot * kPi / 180.0, ca = std::cos(a) / f.r * kScale, sa = std::sin(a) / f.r * kScale;
  const double off = ShapeTables::kE * kScale;
  const int8_t* sdf = tables().sdf(shape);
  const float k = static_cast<float>(f.r * ShapeTables::kClip / 127);  // table units -> pixels
  constexpr int top = kN - 1;
  float inter = 0, uni = 0, inside = 0, hidden = 0;
  for (int y = y0; y < y1; y += stride) {
    const double dy = -(y + 0.5 - f.cy), dx0 = x0 + 0.5 - f.cx;
    float u = static_cast<float>(dx0 * ca + dy * sa + off), v = static_cast<float>(-dx0 * sa + dy * ca + off);
    const float du = static_cast<float>(stride * ca), dv = static_cast<float>(-stride * sa);
    const uint8_t* row = &t.code[static_cast<size_t>(y) * t.w];
    for (int x = x0; x < x1; x += stride, u += du, v += dv) {
      int iu = static_cast<int>(u), iv = static_cast<int>(v);
      iu = iu < 0 ? 0 : (iu > top ? top : iu);
      iv = iv < 0 ? 0 : (iv > top ? top : iv);
      float cov = 0.5f - sdf[iv * kN + iu] * k;
      cov = cov < 0.0f ? 0.0f : cov;
      cov = cov > 1.0f ? 1.0f : cov;
      const uint8_t c = row[x];
      const float mine = c == kMine, out = c == kOut;
      inter += cov * mine;
      uni += mine + cov * out;
      hidden += cov * (1.0f - mine - out);
      inside += cov;
    }
  }
  if (uni <= 0) return 0.0;
  return inter / uni - kHiddenPenalty * hidden / std::max(1.0f, inside);
}

// Coordinate descent on centre, size and rotation with halving steps; a move that helps is repeated.
// The first levels score every other pixel, the last one every pixel.
Fit refine(const Target& t, int shape, Fit f, double r0, double rot_step, int stride) {
  // An unoccluded start is close already (centroid and area are exact): smaller first steps.
  const double first = t.occluded ? 1.0 : 0.5;
  double step[4] = {first, first, 0.08 * first * r0, rot_step * first};
  const int levels = t.occluded ? 4 : 3;
  int evals = 0;
  f.score = fit_score(t, shape, f, stride);
  for (int level = 0; level < levels && evals < 60; ++level) {
    if (level == levels - 1 && stride != 1) stride = 1, f.score = fit_score(t, shape, f, stride);
    bool improved = true;
    while (improved && evals < 60) {
      improved = false;
      for (int p = 0; p < 4; ++p) {
        if (step[p] <= 0) continue;
        for (int sign : {1, -1}) {
          bool moved = false;
          while (evals < 60) {
            Fit g = f;
            double* v[4] = {&g.cx, &g.cy, &g.r, &g.rot};
            *v[p] += sign * step[p];
            if (g.r < 1) break;
            g.score = fit_score(t, shape, g, stride);
            ++evals;
            if (g.score <= f.score + 1e-7) break;
            f = g;
            moved = improved = true;
          }
          if (moved) break;
        }
      }
    }
    for (double& s : step) s *= 0.5;
  }
  if (stride != 1) f.score = fit_score(t, shape, f);
  return f;
}

int fit_stride(double r0) { return r0 >= 9 ? 2 : 1; }

// Starting placements of one outline (scored on every other pixel). A visible region's centroid and
// area pin down an unoccluded shape; an occluded one may be larger and centred elsewhere, mostly
// towards its occluders. Rotations: the one the visible outline's normals suggest, or a grid when
// they do not agree on one.
std::vector<Fit> coarse_starts(const Target& t, int shape) {
  const double r0 = std::sqrt(t.area / shape_area(shape));
  const double period = shape_period(shape);
  std::vector<std::array<double, 2>> offsets{{0, 0}};  // along, across the direction to the occluders
  std::vector<double> scales{1.0};
  if (t.occluded) {
    offsets = {{0, 0}, {0.75, 0}};
    for (int k = 0; k < 6; ++k) offsets.push_back({0.4 * std::cos(k * kPi / 3), 0.4 * std::sin(k * kPi / 3)});
    scales = {1.0, 1.35, 1.7};
  }
  std::vector<double> rotations{0.0};
  if (shape != kCircle) {
    // The k-fold phase of the normals, less the phase the shape has at rotation 0 (square: normals at
    // 0 mod 90; triangle: 30 mod 120; star: its edges' normals sit 68.5 degrees either side of each
    // arm, 90 mod 72, and cos(5 * 68.5 deg) > 0 keeps the sum's phase at the arm).
    const int k = shape == kSquare ? 4 : (shape == kTriangle ? 3 : 5);
    const double base = shape == kSquare ? 0.0 : (shape == kTriangle ? 30.0 : 90.0);
    const double est = std::atan2(t.normal_im[k], t.normal_re[k]) * 180 / kPi / k - base;
    const double agreement = std::hypot(t.normal_re[k], t.normal_im[k]) / std::max(1e-9, t.normal_sum);
    rotations = {est - 6, est, est + 6};
    if (agreement < 0.4) {
      const int n_rot = shape == kTriangle ? 12 : 10;
      for (int i = 0; i < n_rot; ++i) rotations.push_back(period * i / n_rot);
    }
  }
  const int stride = fit_stride(r0);
  auto at = [&](const std::array<double, 2>& o, double s, double rot) {
    Fit f{t.mx + r0 * (o[0] * t.dx - o[1] * t.dy), t.my + r0 * (o[0] * t.dy + o[1] * t.dx), r0 * s, rot, 0};
    f.score = fit_score(t, shape, f, stride);
    return f;
  };
  // Occluded: the rotations first (at a middle placement), then the placements for the best few and
  // the normals' estimate.
  if (t.occluded && rotations.size() > 3) {
    std::vector<std::pair<double, double>> by_score;
    for (size_t k = 3; k < rotations.size(); ++k) by_score.push_back({at({0.2, 0}, 1.3, rotations[k]).score, rotations[k]});
    std::sort(by_score.begin(), by_score.end(), std::greater<>());
    rotations.resize(3);
    for (size_t k = 0; k < 3 && k < by_score.size(); ++k) rotations.push_back(by_score[k].second);
  }
  std::vector<Fit> starts;
  for (const auto& o : offsets)
    for (double s : scales)
      for (double rot : rotations) starts.push_back(at(o, s, rot));
  std::sort(starts.begin(), starts.end(), [](const Fit& a, const Fit& b) { return a.score > b.score; });
  starts.resize(std::min<size_t>(t.occluded ? 2 : 1, starts.size()));
  return starts;
}

// The best outline over all shapes: coarse starts for every shape, refinement for the promising ones.
std::pair<int, Fit> fit_best(const Target& t) {
  std::vector<Fit> starts[kNumShapes];
  double best_coarse = -1;
  for (int s = 0; s < kNumShapes; ++s) {
    starts[s] = coarse_starts(t, s);
    best_coarse = std::max(best_coarse, starts[s].front().score);
  }
  // Refine the two best shapes, and any other close to them.
  std::array<double, kNumShapes> coarse;
  for (int s = 0; s < kNumShapes; ++s) coarse[s] = starts[s].front().score;
  std::array<double, kNumShapes> sorted = coarse;
  std::sort(sorted.begin(), sorted.end(), std::greater<double>());
  std::pair<int, Fit> best{0, Fit{}};
  for (int s = 0; s < kNumShapes; ++s) {
    if (coarse[s] < sorted[1] && coarse[s] < best_coarse - 0.1) continue;
    const double r0 = std::sqrt(t.area / shape_area(s));
    for (const Fit& start : starts[s]) {
      const Fit f = refine(t, s, start, r0, s == kCircle ? 0.0 : 4.0, fit_stride(r0));
      if (f.score > best.second.score) best = {s, f};
    }
  }
  return best;
}

// ---------------------------------------------------------------- pattern

// Pattern ink is a darker copy of the colour (a lighter one for black): a region's pixels clearly darker
// (lighter) than the brightest (darkest) pixel near them. Few such pixels: plain. Otherwise stripes are
// long bands and dots round blobs: the share of ink in elongated connected pieces decides.
std::string classify_pattern(const Image& n, const std::vector<int>& seed_label, int id, int colour, const Target& t) {
  const bool black = colour == kBlack;
  auto value = [&](size_t i) { return (n.px[i].r + n.px[i].g + n.px[i].b) / 3; };
  std::vector<uint8_t> ink(static_cast<size_t>(n.h) * n.w, 0);
  int inked = 0, total = 0;
  for (int y = t.y0; y < t.y1; ++y)
    for (int x = t.x0; x < t.x1; ++x) {
      const size_t i = static_cast<size_t>(y) * n.w + x;
      if (seed_label[i] != id) continue;
      const float v = value(i);
      float ref = v;
      for (int yy = std::max(0, y - 2); yy <= std::min(n.h - 1, y + 2); ++yy)
        for (int xx = std::max(0, x - 2); xx <= std::min(n.w - 1, x + 2); ++xx) {
          const size_t j = static_cast<size_t>(yy) * n.w + xx;
          if (seed_label[j] == id) ref = black ? std::min(ref, value(j)) : std::max(ref, value(j));
        }
      ++total;
      ink[i] = black ? (v > ref + 0.06f) : (v < 0.86f * ref);
      inked += ink[i];
    }
  if (total == 0 || inked < 0.08 * total) return "plain";
  // Connected ink pieces and their elongation (ratio of the principal second moments).
  int elongated = 0;
  std::vector<int> stack;
  for (int y = t.y0; y < t.y1; ++y)
    for (int x = t.x0; x < t.x1; ++x) {
      const size_t s = static_cast<size_t>(y) * n.w + x;
      if (ink[s] != 1) continue;
      ink[s] = 2;
      stack.assign(1, static_cast<int>(s));
      double sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0;
      int a = 0;
      while (!stack.empty()) {
        const int i = stack.back();
        stack.pop_back();
        const int py = i / n.w, px = i % n.w;
        ++a, sx += px, sy += py, sxx += px * px, syy += py * py, sxy += px * py;
        for (int dy = -1; dy <= 1; ++dy)
          for (int dx = -1; dx <= 1; ++dx) {
            const int yy = py + dy, xx = px + dx;
            if (yy < 0 || yy >= n.h || xx < 0 || xx >= n.w) continue;
            const size_t j = static_cast<size_t>(yy) * n.w + xx;
            if (ink[j] == 1) ink[j] = 2, stack.push_back(static_cast<int>(j));
          }
      }
      const double mx = sx / a, my = sy / a;
      const double cxx = sxx / a - mx * mx + 1.0 / 12, cyy = syy / a - my * my + 1.0 / 12, cxy = sxy / a - mx * my;
      const double tr = cxx + cyy, det = cxx * cyy - cxy * cxy;
      const double disc = std::sqrt(std::max(0.0, tr * tr / 4 - det));
      const double l1 = tr / 2 + disc, l2 = std::max(1e-6, tr / 2 - disc);
      if (l1 / l2 > 4.0 && a >= 4) elongated += a;
    }
  return elongated > 0.5 * inked ? "striped" : "dotted";
}

}  // namespace

// ---------------------------------------------------------------- the analyser

Analysis analyse_scene(const at::Tensor& image, const AnalyseOptions& opt) {
  const Image raw = to_image(image);
  const int h = raw.h, w = raw.w;
  const size_t count = raw.px.size();
  Analysis out;

  // 1. Lighting; everything below works on the tint-normalised image.
  const Lighting light = estimate_lighting(raw, opt);
  out.background = kBackgroundNames[light.background];
  out.tint = kTintNames[light.tint];
  Image n = raw;
  for (auto& p : n.px) p = {p.r / light.gain.r, p.g / light.gain.g, p.b / light.gain.b};

  // 2. Background model and pixel kinds.
  const std::vector<V3> bg = background_model(n, light.background);
  const float strong = static_cast<float>(opt.threshold);
  std::vector<uint8_t> kind(count);
  // Colour classes of each pixel and of its 3x3 average: noise (strong in the dark channels of a night
  // image once the tint is divided out) must not scatter an object's pixels over classes, while a
  // thin visible strip of an object has no pixel whose average is not mixed with its surroundings.
  std::vector<int8_t> cls(count, -1), cls_smooth(count, -1);
  Image smooth = n;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      V3 sum;
      int c = 0;
      for (int yy = std::max(0, y - 1); yy <= std::min(h - 1, y + 1); ++yy)
        for (int xx = std::max(0, x - 1); xx <= std::min(w - 1, x + 1); ++xx) sum = sum + n.at(yy, xx), ++c;
      smooth.px[static_cast<size_t>(y) * w + x] = sum * (1.0f / c);
    }
  for (size_t i = 0; i < count; ++i) {
    const float dev = std::sqrt((n.px[i] - bg[i]).norm2());
    if (dev < kWeak)
      kind[i] = kBg;
    else if (shadow_like(n.px[i], bg[i]))
      kind[i] = kShadowPx;
    else if (dev < strong)
      kind[i] = kWeakPx;
    else {
      kind[i] = kStrongPx;
      cls[i] = static_cast<int8_t>(colour_class(n.px[i]));
      cls_smooth[i] = static_cast<int8_t>(colour_class(smooth.px[i]));
    }
  }

  // 4a. Seeds: strong pixels whose 3x3 neighbourhood is all strong and of one class (by the pixels'
  // own colours, or else by their averages); seed_cls is that class.
  std::vector<int8_t> seed_cls(count, -1);
  for (int y = 1; y < h - 1; ++y)
    for (int x = 1; x < w - 1; ++x) {
      const size_t i = static_cast<size_t>(y) * w + x;
      if (kind[i] != kStrongPx) continue;
      bool raw = true, avg = true;
      for (int dy = -1; dy <= 1; ++dy)
        for (int dx = -1; dx <= 1; ++dx) {
          raw &= cls[i + dy * w + dx] == cls[i];
          avg &= cls_smooth[i + dy * w + dx] == cls_smooth[i];
        }
      seed_cls[i] = raw ? cls[i] : (avg ? cls_smooth[i] : int8_t{-1});
    }
  // Connected seed components (4-connected, one class each).
  std::vector<int> seed_label(count, kNone);
  std::vector<int> region_colour;
  std::vector<int> stack;
  const int min_seed = std::max(4, static_cast<int>(0.001 * count));
  for (size_t s = 0; s < count; ++s) {
    if (seed_cls[s] < 0 || seed_label[s] != kNone) continue;
    const int id = static_cast<int>(region_colour.size());
    std::vector<size_t> members;
    seed_label[s] = id;
    stack.assign(1, static_cast<int>(s));
    while (!stack.empty()) {
      const size_t i = stack.back();
      stack.pop_back();
      members.push_back(i);
      const int y = static_cast<int>(i / w), x = static_cast<int>(i % w);
      const int nb[4][2] = {{0, 1}, {0, -1}, {1, 0}, {-1, 0}};
      for (auto& d : nb) {
        const int yy = y + d[0], xx = x + d[1];
        if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
        const size_t j = static_cast<size_t>(yy) * w + xx;
        if (seed_cls[j] == seed_cls[s] && seed_label[j] == kNone) {
          seed_label[j] = id;
          stack.push_back(static_cast<int>(j));
        }
      }
    }
    if (static_cast<int>(members.size()) < min_seed) {
      for (size_t i : members) seed_label[i] = kNone - 1;  // too small: not a seed, not revisited
      continue;
    }
    region_colour.push_back(seed_cls[s]);
  }
  for (auto& l : seed_label)
    if (l < kNone) l = kNone;
  const int n_regions = static_cast<int>(region_colour.size());

  // 4b. Growth, most certain pixels first (seeded region growing): a frontier pixel is explained as a
  // mixture of two "pure" colours near it (a neighbouring region's, the background, its shadow) and
  // goes to the region that owns at least half of it. Processing in order of the explanation's error
  // lets each object's own thin parts (star tips) be reached through its own pixels before a
  // differently coloured neighbour can claim them.
  std::vector<V3> seed_mean(n_regions);
  {
    std::vector<int> c(n_regions, 0);
    for (size_t i = 0; i < count; ++i)
      if (seed_label[i] != kNone) seed_mean[seed_label[i]] = seed_mean[seed_label[i]] + n.px[i], ++c[seed_label[i]];
    for (int r = 0; r < n_regions; ++r) seed_mean[r] = seed_mean[r] * (1.0f / c[r]);
  }
  std::vector<int> label = seed_label;
  // A region's colour near (y, x): its pixels of its own class (not mixed edges), widening the window.
  auto pure_mean = [&](int id, int y, int x) {
    for (int rad : {2, 4, 7}) {
      V3 sum;
      int c = 0;
      for (int yy = std::max(0, y - rad); yy <= std::min(h - 1, y + rad); ++yy)
        for (int xx = std::max(0, x - rad); xx <= std::min(w - 1, x + rad); ++xx) {
          const size_t j = static_cast<size_t>(yy) * w + xx;
          if (label[j] == id && (cls[j] == region_colour[id] || cls_smooth[j] == region_colour[id]))
            sum = sum + n.px[j], ++c;
        }
      if (c > 0) return sum * (1.0f / c);
    }
    return seed_mean[id];
  };
  auto local_background = [&](int y, int x) {
    V3 sum;
    int c = 0;
    for (int yy = std::max(0, y - 3); yy <= std::min(h - 1, y + 3); ++yy)
      for (int xx = std::max(0, x - 3); xx <= std::min(w - 1, x + 3); ++xx) {
        const size_t j = static_cast<size_t>(yy) * w + xx;
        if (kind[j] == kBg) sum = sum + n.px[j], ++c;
      }
    return c > 0 ? sum * (1.0f / c) : bg[static_cast<size_t>(y) * w + x];
  };
  // The seed colour of a region nearest to p within a small window (a stripe or dot next to an edge is
  // explained by the ink colour, not by an average of ink and paint).
  auto nearest_seed = [&](int id, int y, int x, const V3& p, V3& out) {
    float best = 1e9f;
    for (int yy = std::max(0, y - 3); yy <= std::min(h - 1, y + 3); ++yy)
      for (int xx = std::max(0, x - 3); xx <= std::min(w - 1, x + 3); ++xx) {
        const size_t j = static_cast<size_t>(yy) * w + xx;
        if (seed_label[j] != id) continue;
        const float d = (n.px[j] - p).norm2();
        if (d < best) best = d, out = n.px[j];
      }
    return best < 1e9f;
  };
  // (error, owner) of the best two-colour explanation of pixel i; owner kNone: background or shadow.
  auto decide = [&](size_t i) -> std::pair<float, int> {
    const int y = static_cast<int>(i / w), x = static_cast<int>(i % w);
    const V3 p = n.px[i];
    V3 pure[20];
    int owner[20], np = 0, seen[9], ns = 0;
    for (int dy = -1; dy <= 1; ++dy)
      for (int dx = -1; dx <= 1; ++dx) {
        const int yy = y + dy, xx = x + dx;
        if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
        const int l = label[static_cast<size_t>(yy) * w + xx];
        if (l == kNone || std::find(seen, seen + ns, l) != seen + ns) continue;
        seen[ns++] = l;
        pure[np] = pure_mean(l, y, x), owner[np++] = l;
        if (nearest_seed(l, y, x, p, pure[np])) owner[np++] = l;
      }
    if (np == 0) return {0.0f, kNone};
    const V3 b = local_background(y, x);
    pure[np] = b, owner[np++] = kNone;
    pure[np] = b * kShadowKeep, owner[np++] = kNone;
    float best = 1e9f;
    int best_owner = kNone;
    for (int a = 0; a < np; ++a)
      for (int c = a; c < np; ++c) {
        const V3 d = pure[a] - pure[c];
        const float dd = d.norm2();
        const float t = dd > 1e-8f ? std::clamp((p - pure[c]).dot(d) / dd, 0.0f, 1.0f) : 1.0f;
        const float err = (p - (pure[c] + d * t)).norm2();
        if (err < best) best = err, best_owner = t >= 0.5f ? owner[a] : owner[c];
      }
    // Nothing nearby explains the pixel (e.g. a sliver of an object too thin for a seed): leave it.
    if (best > kMaxMixError) best_owner = kNone;
    return {best, best_owner};
  };
  using Item = std::pair<float, int>;
  std::priority_queue<Item, std::vector<Item>, std::greater<Item>> queue;
  auto push_neighbours = [&](size_t i) {
    const int y = static_cast<int>(i / w), x = static_cast<int>(i % w);
    for (int dy = -1; dy <= 1; ++dy)
      for (int dx = -1; dx <= 1; ++dx) {
        const int yy = y + dy, xx = x + dx;
        if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
        const size_t j = static_cast<size_t>(yy) * w + xx;
        if (label[j] != kNone || kind[j] == kBg) continue;
        const auto [err, owner] = decide(j);
        if (owner != kNone) queue.push({err, static_cast<int>(j)});
      }
  };
  for (size_t i = 0; i < count; ++i)
    if (seed_label[i] != kNone) push_neighbours(i);
  while (!queue.empty()) {
    const auto [err, j] = queue.top();
    queue.pop();
    if (label[j] != kNone) continue;
    const auto [now, owner] = decide(j);  // the neighbourhood may have changed since the push
    if (owner == kNone) continue;
    if (now > err + 1e-7f) {
      queue.push({now, j});
      continue;
    }
    label[j] = owner;
    push_neighbours(j);
  }

  // 4c. Regions of one colour that touch are one object (sampled scenes never let two such objects touch).
  std::vector<int> parent(n_regions);
  std::iota(parent.begin(), parent.end(), 0);
  std::function<int(int)> root = [&](int a) { return parent[a] == a ? a : parent[a] = root(parent[a]); };
  auto relabel = [&] {
    for (auto& l : label)
      if (l != kNone) l = root(l);
    for (auto& l : seed_label)
      if (l != kNone) l = root(l);
  };
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const int a = label[static_cast<size_t>(y) * w + x];
      if (a == kNone) continue;
      for (auto [dy, dx] : {std::pair{0, 1}, std::pair{1, 0}, std::pair{1, 1}, std::pair{1, -1}}) {
        const int yy = y + dy, xx = x + dx;
        if (yy >= h || xx < 0 || xx >= w) continue;
        const int b = label[static_cast<size_t>(yy) * w + xx];
        if (b != kNone && root(b) != root(a) && region_colour[a] == region_colour[b]) parent[root(a)] = root(b);
      }
    }
  relabel();

  // Pixels that may hide part of a region: other regions, and object-like pixels no region took.
  std::vector<uint8_t> occupied(count, 0);
  for (size_t i = 0; i < count; ++i) occupied[i] = label[i] != kNone || kind[i] == kStrongPx;

  // 4d. Pieces of one object cut apart by an occluder: same colour, joined through other objects'
  // pixels, and one outline fits their union well.
  {
    std::vector<int> blob(count, kNone);  // connected components of occupied pixels
    int n_blobs = 0;
    for (size_t s = 0; s < count; ++s) {
      if (!occupied[s] || blob[s] != kNone) continue;
      blob[s] = n_blobs;
      stack.assign(1, static_cast<int>(s));
      while (!stack.empty()) {
        const int i = stack.back();
        stack.pop_back();
        const int y = i / w, x = i % w;
        for (int dy = -1; dy <= 1; ++dy)
          for (int dx = -1; dx <= 1; ++dx) {
            const int yy = y + dy, xx = x + dx;
            if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
            const size_t j = static_cast<size_t>(yy) * w + xx;
            if (occupied[j] && blob[j] == kNone) blob[j] = n_blobs, stack.push_back(static_cast<int>(j));
          }
      }
      ++n_blobs;
    }
    std::vector<int> region_blob(n_regions, kNone), region_area(n_regions, 0);
    for (size_t i = 0; i < count; ++i)
      if (label[i] != kNone) region_blob[label[i]] = blob[i], ++region_area[label[i]];
    std::set<std::pair<int, int>> rejected;  // (a, b) whose union fits badly, while neither changes
    bool merged = true;
    while (merged) {
      merged = false;
      for (int a = 0; a < n_regions && !merged; ++a)
        for (int b = a + 1; b < n_regions && !merged; ++b) {
          if (root(a) != a || root(b) != b || region_area[a] == 0 || region_area[b] == 0) continue;
          if (region_colour[a] != region_colour[b] || region_blob[a] != region_blob[b]) continue;
          if (rejected.count({a, b})) continue;
          const Target t = make_target(label, occupied, h, w, {a, b});
          if (fit_best(t).second.score < 0.8) {
            rejected.insert({a, b});
            continue;
          }
          for (auto it = rejected.begin(); it != rejected.end();)  // a changes: its pairs are retried
            it = (it->first == a || it->second == a) ? rejected.erase(it) : std::next(it);
          parent[b] = a;
          region_area[a] += region_area[b];
          relabel();
          merged = true;
        }
    }
  }

  // 5. One detection per region.
  std::vector<int> area(n_regions, 0);
  for (size_t i = 0; i < count; ++i)
    if (label[i] != kNone) ++area[label[i]];
  const int min_area = std::max(1, static_cast<int>(opt.min_area * count));
  for (int r = 0; r < n_regions; ++r) {
    if (area[r] < min_area) continue;
    const Target t = make_target(label, occupied, h, w, {r});
    const auto [shape, fit] = fit_best(t);
    Detection d;
    d.shape = kShapeNames[shape];
    d.colour = kColourNames[region_colour[r]];
    d.pattern = opt.classify_pattern ? classify_pattern(n, seed_label, r, region_colour[r], t) : "";
    d.mask = at::zeros({h, w}, at::kFloat);
    float* m = d.mask.data_ptr<float>();
    for (size_t i = 0; i < count; ++i) m[i] = label[i] == r ? 1.0f : 0.0f;
    d.cx = fit.cx / w;
    d.cy = fit.cy / h;
    d.size = fit.r / std::min(h, w);
    const double period = shape_period(shape);
    d.rotation_deg = shape == kCircle ? 0.0 : std::fmod(std::fmod(fit.rot, period) + period, period);
    d.fit = fit.score;
    d.area = static_cast<double>(area[r]) / count;
    out.objects.push_back(std::move(d));
  }
  std::sort(out.objects.begin(), out.objects.end(), [](const Detection& a, const Detection& b) { return a.area > b.area; });
  return out;
}

std::vector<Detection> analyse(const at::Tensor& image, const AnalyseOptions& options) {
  return analyse_scene(image, options).objects;
}

std::optional<Detection> find_object(const std::vector<Detection>& detections, const std::string& shape,
                                     const std::string& colour) {
  for (const auto& d : detections)  // largest first
    if ((shape.empty() || d.shape == shape) && (colour.empty() || d.colour == colour)) return d;
  return std::nullopt;
}

std::optional<Detection> find_object(const at::Tensor& image, const std::string& shape, const std::string& colour) {
  return find_object(analyse(image), shape, colour);
}

at::Tensor segment_near(const std::vector<Detection>& detections, const at::Tensor& expected_mask,
                        const std::string& colour) {
  auto expected = expected_mask.detach().to(at::kCPU, at::kFloat).squeeze();
  COLLAGE_CHECK(expected.dim() == 2, "segment_near: expected an (H, W) mask, got {}", fmt::join(expected_mask.sizes(), "x"));
  const int64_t h = expected.size(0), w = expected.size(1);
  const auto binary = expected.ge(0.5).to(at::kFloat);
  const double exp_area = binary.sum().item<double>();
  double ex = 0.5, ey = 0.5;
  if (exp_area > 0) {
    ex = (binary.sum(0) * at::arange(w, at::kFloat)).sum().item<double>() / exp_area / w + 0.5 / w;
    ey = (binary.sum(1) * at::arange(h, at::kFloat)).sum().item<double>() / exp_area / h + 0.5 / h;
  }
  const Detection* best = nullptr;
  double best_overlap = 0, best_dist = 0.25;
  bool by_overlap = false;
  for (const auto& d : detections) {
    if (!colour.empty() && d.colour != colour) continue;
    COLLAGE_CHECK(d.mask.size(0) == h && d.mask.size(1) == w, "segment_near: mask is {}x{}, detections are {}x{}", h, w,
                  d.mask.size(0), d.mask.size(1));
    const double overlap = (d.mask * binary).sum().item<double>();
    if (overlap > 0) {
      if (!by_overlap || overlap > best_overlap) best = &d, best_overlap = overlap, by_overlap = true;
      continue;
    }
    if (by_overlap) continue;
    // The detection's visible centroid.
    const double area = d.mask.sum().item<double>();
    if (area <= 0) continue;
    const double dx = (d.mask.sum(0) * at::arange(w, at::kFloat)).sum().item<double>() / area / w + 0.5 / w;
    const double dy = (d.mask.sum(1) * at::arange(h, at::kFloat)).sum().item<double>() / area / h + 0.5 / h;
    const double dist = std::hypot(dx - ex, dy - ey);
    if (dist < best_dist) best = &d, best_dist = dist;
  }
  return best ? best->mask.clone() : at::zeros({h, w}, at::kFloat);
}

at::Tensor segment_near(const at::Tensor& image, const at::Tensor& expected_mask, const std::string& colour) {
  return segment_near(analyse(image), expected_mask, colour);
}

}  // namespace collage::shapesworld
