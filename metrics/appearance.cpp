// Weight-free appearance metrics: sRGB -> CIELAB, CIEDE2000 (Sharma, Wu, Dalal 2005), Gaussian SSIM,
// and the masked per-layer metrics built on them (ciede2000, ssim).
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>

#include "core/core.h"
#include "metrics/metrics.h"
#include "metrics/metrics_internal.h"

namespace collage::metrics {

namespace {
constexpr double kPi = 3.14159265358979323846;
double deg2rad(double d) { return d * kPi / 180.0; }
double rad2deg(double r) { return r * 180.0 / kPi; }
}  // namespace

// ------------------------------------------------------------------------------------------------
// Colour

at::Tensor srgb_to_lab(const at::Tensor& rgb_in) {
  COLLAGE_CHECK(rgb_in.dim() == 3 && rgb_in.size(0) == 3, "srgb_to_lab: expected (3, H, W), got [{}]",
                fmt::join(rgb_in.sizes(), ", "));
  auto rgb = rgb_in.detach().to(at::kCPU, at::kDouble).clamp(0.0, 1.0);
  // sRGB transfer function (IEC 61966-2-1) -> linear RGB.
  auto lin = at::where(rgb <= 0.04045, rgb / 12.92, at::pow((rgb + 0.055) / 1.055, 2.4));
  // Linear sRGB -> XYZ (D65), then divided by the D65 white point (the matrix's row sums), so that
  // white maps to exactly (100, 0, 0).
  static const double M[3][3] = {
      {0.4124564, 0.3575761, 0.1804375}, {0.2126729, 0.7151522, 0.0721750}, {0.0193339, 0.1191920, 0.9503041}};
  at::Tensor f[3];
  for (int r = 0; r < 3; ++r) {
    const double white = M[r][0] + M[r][1] + M[r][2];
    auto t = (lin[0] * M[r][0] + lin[1] * M[r][1] + lin[2] * M[r][2]) / white;
    // CIE 1976 f(t) with the exact constants epsilon = 216/24389, kappa = 24389/27.
    constexpr double eps = 216.0 / 24389.0, kappa = 24389.0 / 27.0;
    f[r] = at::where(t > eps, at::pow(t, 1.0 / 3.0), (kappa * t + 16.0) / 116.0);
  }
  auto L = 116.0 * f[1] - 16.0;
  auto a = 500.0 * (f[0] - f[1]);
  auto b = 200.0 * (f[1] - f[2]);
  return at::stack({L, a, b});
}

double ciede2000(const std::array<double, 3>& lab1, const std::array<double, 3>& lab2, double kL, double kC,
                 double kH) {
  const double L1 = lab1[0], a1 = lab1[1], b1 = lab1[2];
  const double L2 = lab2[0], a2 = lab2[1], b2 = lab2[2];
  constexpr double pow25_7 = 6103515625.0;  // 25^7

  // 1. C'_i, h'_i
  const double C1 = std::hypot(a1, b1), C2 = std::hypot(a2, b2);
  const double Cbar = 0.5 * (C1 + C2);
  const double Cbar7 = std::pow(Cbar, 7.0);
  const double G = 0.5 * (1.0 - std::sqrt(Cbar7 / (Cbar7 + pow25_7)));
  const double a1p = (1.0 + G) * a1, a2p = (1.0 + G) * a2;
  const double C1p = std::hypot(a1p, b1), C2p = std::hypot(a2p, b2);
  auto hue = [](double b, double ap) {
    if (b == 0.0 && ap == 0.0) return 0.0;
    double h = rad2deg(std::atan2(b, ap));
    return h < 0.0 ? h + 360.0 : h;
  };
  const double h1p = hue(b1, a1p), h2p = hue(b2, a2p);

  // 2. Delta L', Delta C', Delta H'
  const double dLp = L2 - L1;
  const double dCp = C2p - C1p;
  const double CpProd = C1p * C2p;
  double dhp = 0.0;
  if (CpProd != 0.0) {
    dhp = h2p - h1p;
    if (dhp > 180.0)
      dhp -= 360.0;
    else if (dhp < -180.0)
      dhp += 360.0;
  }
  const double dHp = 2.0 * std::sqrt(CpProd) * std::sin(deg2rad(dhp / 2.0));

  // 3. weighting functions
  const double Lbarp = 0.5 * (L1 + L2);
  const double Cbarp = 0.5 * (C1p + C2p);
  double hbarp = h1p + h2p;
  if (CpProd != 0.0) {
    if (std::fabs(h1p - h2p) <= 180.0)
      hbarp = 0.5 * (h1p + h2p);
    else if (h1p + h2p < 360.0)
      hbarp = 0.5 * (h1p + h2p + 360.0);
    else
      hbarp = 0.5 * (h1p + h2p - 360.0);
  }
  const double T = 1.0 - 0.17 * std::cos(deg2rad(hbarp - 30.0)) + 0.24 * std::cos(deg2rad(2.0 * hbarp)) +
                   0.32 * std::cos(deg2rad(3.0 * hbarp + 6.0)) - 0.20 * std::cos(deg2rad(4.0 * hbarp - 63.0));
  const double dTheta = 30.0 * std::exp(-std::pow((hbarp - 275.0) / 25.0, 2.0));
  const double Cbarp7 = std::pow(Cbarp, 7.0);
  const double RC = 2.0 * std::sqrt(Cbarp7 / (Cbarp7 + pow25_7));
  const double Lm50sq = (Lbarp - 50.0) * (Lbarp - 50.0);
  const double SL = 1.0 + 0.015 * Lm50sq / std::sqrt(20.0 + Lm50sq);
  const double SC = 1.0 + 0.045 * Cbarp;
  const double SH = 1.0 + 0.015 * Cbarp * T;
  const double RT = -std::sin(deg2rad(2.0 * dTheta)) * RC;

  const double tL = dLp / (kL * SL), tC = dCp / (kC * SC), tH = dHp / (kH * SH);
  return std::sqrt(tL * tL + tC * tC + tH * tH + RT * tC * tH);
}

at::Tensor ciede2000_map(const at::Tensor& lab1_in, const at::Tensor& lab2_in) {
  COLLAGE_CHECK(lab1_in.dim() == 3 && lab1_in.size(0) == 3 && lab1_in.sizes() == lab2_in.sizes(),
                "ciede2000_map: expected two (3, H, W) Lab images of one size, got [{}] and [{}]",
                fmt::join(lab1_in.sizes(), ", "), fmt::join(lab2_in.sizes(), ", "));
  auto lab1 = lab1_in.to(at::kDouble).contiguous(), lab2 = lab2_in.to(at::kDouble).contiguous();
  const int64_t H = lab1.size(1), W = lab1.size(2);
  auto out = at::empty({H, W}, at::kDouble);
  auto p = lab1.accessor<double, 3>(), q = lab2.accessor<double, 3>();
  auto o = out.accessor<double, 2>();
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x)
      o[y][x] = ciede2000({p[0][y][x], p[1][y][x], p[2][y][x]}, {q[0][y][x], q[1][y][x], q[2][y][x]});
  return out;
}

// ------------------------------------------------------------------------------------------------
// SSIM

at::Tensor ssim_map(const at::Tensor& a_in, const at::Tensor& b_in) {
  COLLAGE_CHECK(a_in.dim() == 3 && a_in.sizes() == b_in.sizes(),
                "ssim_map: expected two (C, H, W) images of one size, got [{}] and [{}]", fmt::join(a_in.sizes(), ", "),
                fmt::join(b_in.sizes(), ", "));
  constexpr int kWin = 11, kHalf = kWin / 2;
  constexpr double kSigma = 1.5, C1 = 0.01 * 0.01, C2 = 0.03 * 0.03;  // data range 1
  auto g = at::empty({kWin}, at::kDouble);
  {
    auto acc = g.accessor<double, 1>();
    double sum = 0;
    for (int i = 0; i < kWin; ++i) sum += acc[i] = std::exp(-double((i - kHalf) * (i - kHalf)) / (2 * kSigma * kSigma));
    for (int i = 0; i < kWin; ++i) acc[i] /= sum;
  }
  auto gx = g.view({1, 1, 1, kWin}), gy = g.view({1, 1, kWin, 1});
  // Each channel is filtered separately: channels go to the batch dimension.
  auto a = a_in.detach().to(at::kCPU, at::kDouble).unsqueeze(1);
  auto b = b_in.detach().to(at::kCPU, at::kDouble).unsqueeze(1);
  const bool reflect = a.size(2) > kHalf && a.size(3) > kHalf;
  auto blur = [&](const at::Tensor& x) {
    auto padded = reflect ? at::reflection_pad2d(x, {kHalf, kHalf, kHalf, kHalf})
                          : at::replication_pad2d(x, {kHalf, kHalf, kHalf, kHalf});
    return at::conv2d(at::conv2d(padded, gx), gy);
  };
  auto mu_a = blur(a), mu_b = blur(b);
  auto mu_ab = mu_a * mu_b, mu_aa = mu_a * mu_a, mu_bb = mu_b * mu_b;
  auto s_ab = blur(a * b) - mu_ab, s_aa = blur(a * a) - mu_aa, s_bb = blur(b * b) - mu_bb;
  auto ssim = ((2.0 * mu_ab + C1) * (2.0 * s_ab + C2)) / ((mu_aa + mu_bb + C1) * (s_aa + s_bb + C2));
  return ssim.squeeze(1).mean(0);
}

double masked_mean(const at::Tensor& map, const at::Tensor& weights, double min_weight) {
  COLLAGE_CHECK(map.dim() == 2 && map.sizes() == weights.sizes(),
                "masked_mean: expected two (H, W) tensors of one size, got [{}] and [{}]", fmt::join(map.sizes(), ", "),
                fmt::join(weights.sizes(), ", "));
  auto w = weights.detach().to(at::kDouble).clamp_min(0.0);
  const double total = w.sum().item<double>();
  if (!(total >= min_weight)) return kNaN;
  return (map.detach().to(at::kDouble) * w).sum().item<double>() / total;
}

// ------------------------------------------------------------------------------------------------
// Metrics

namespace detail {
namespace {

class Ciede2000Metric : public Metric {
 public:
  MetricValue score(const ScoreInput& in, const ScoreContext&) override {
    const int64_t L = in.visible_masks.size(0);
    auto out_lab = srgb_to_lab(in.image).contiguous();
    auto o = out_lab.accessor<double, 3>();
    const int64_t H = out_lab.size(1), W = out_lab.size(2);
    std::vector<double> per_layer(L, kNaN);
    for (int64_t i = 0; i < L; ++i) {
      auto v = in.visible_masks[i].to(at::kDouble).clamp(0.0, 1.0).contiguous();
      auto va = v.accessor<double, 2>();
      auto lab = srgb_to_lab(in.layers[i].slice(0, 0, 3)).contiguous();
      auto l = lab.accessor<double, 3>();
      double sum = 0, total = 0;
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x) {
          const double w = va[y][x];
          if (w <= 0.0) continue;
          sum += w * ciede2000({o[0][y][x], o[1][y][x], o[2][y][x]}, {l[0][y][x], l[1][y][x], l[2][y][x]});
          total += w;
        }
      if (total >= 0.5) per_layer[i] = sum / total;
    }
    return aggregate_layers(std::move(per_layer), background_layer(in), "every v_i is empty");
  }
};

class SsimMetric : public Metric {
 public:
  MetricValue score(const ScoreInput& in, const ScoreContext&) override {
    auto map = ssim_map(in.image, in.collage);
    const int64_t L = in.visible_masks.size(0);
    std::vector<double> per_layer(L);
    for (int64_t i = 0; i < L; ++i) per_layer[i] = masked_mean(map, in.visible_masks[i]);
    return aggregate_layers(std::move(per_layer), background_layer(in), "every v_i is empty");
  }
};

}  // namespace

std::unique_ptr<Metric> make_ciede2000(const Json& options) {
  Options(options, "metric 'ciede2000' options").finish();
  return std::make_unique<Ciede2000Metric>();
}

std::unique_ptr<Metric> make_ssim(const Json& options) {
  Options(options, "metric 'ssim' options").finish();
  return std::make_unique<SsimMetric>();
}

}  // namespace detail
}  // namespace collage::metrics
