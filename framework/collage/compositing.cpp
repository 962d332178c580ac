// Placing layers on the canvas, flattening, visible masks, mask pyramids, the LN noise map, layer tokens.
#include <ATen/ATen.h>
#include <opencv2/imgproc.hpp>

#include <cmath>

#include "collage/collage.h"
#include "core/core.h"
#include "models/models.h"

namespace collage {

namespace {

cv::Mat to_mat_hwc(const at::Tensor& chw) {
  auto hwc = chw.to(at::kFloat).permute({1, 2, 0}).contiguous();
  cv::Mat m(static_cast<int>(hwc.size(0)), static_cast<int>(hwc.size(1)), CV_32FC(static_cast<int>(hwc.size(2))),
            hwc.data_ptr());
  return m.clone();
}

at::Tensor from_mat_hwc(const cv::Mat& m) {
  cv::Mat c = m.isContinuous() ? m : m.clone();
  return at::from_blob(c.data, {c.rows, c.cols, c.channels()}, at::kFloat).clone().permute({2, 0, 1}).contiguous();
}

}  // namespace

at::Tensor place_layer(const Layer& layer, int64_t H, int64_t W) {
  COLLAGE_CHECK(layer.rgba.defined() && layer.rgba.size(0) == 4, "layer '{}' has no RGBA image", layer.name);
  auto rgba = layer.rgba.to(at::kFloat).clone();
  const int h = static_cast<int>(rgba.size(1)), w = static_cast<int>(rgba.size(2));
  if (!layer.polygon.empty()) {
    // Anti-aliased polygon coverage (sub-pixel precision through the shift argument).
    cv::Mat mask(h, w, CV_8UC1, cv::Scalar(0));
    std::vector<cv::Point> pts;
    // Polygon points are continuous coordinates (pixel corners); OpenCV's are pixel centres.
    for (const auto& p : layer.polygon)
      pts.emplace_back(static_cast<int>(std::lround((p[0] - 0.5) * 16)), static_cast<int>(std::lround((p[1] - 0.5) * 16)));
    cv::fillPoly(mask, std::vector<std::vector<cv::Point>>{pts}, cv::Scalar(255), cv::LINE_AA, 4);
    auto m = at::from_blob(mask.data, {h, w}, at::kByte).to(at::kFloat).div(255.0);
    rgba[3].mul_(m);
  }
  // Warp premultiplied colour so that transparent pixels do not bleed their colour into the edges.
  rgba.narrow(0, 0, 3).mul_(rgba[3]);
  cv::Mat src = to_mat_hwc(rgba);
  double s = layer.transform.scale;
  if (s < 1.0) {
    // Area-average first: a bilinear warp alone would alias when shrinking.
    const int nw = std::max(1, static_cast<int>(std::lround(w * s)));
    const int nh = std::max(1, static_cast<int>(std::lround(h * s)));
    cv::Mat small;
    cv::resize(src, small, cv::Size(nw, nh), 0, 0, cv::INTER_AREA);
    src = small;
  }
  const double sx = w * s / src.cols, sy = h * s / src.rows;  // residual scale of the (resized) source
  const double th = layer.transform.rotation * M_PI / 180.0, c = std::cos(th), sn = std::sin(th);
  const double cx = w * s / 2.0, cy = h * s / 2.0;
  // Continuous map X = R (S U - centre) + centre + position, R rotating counter-clockwise on screen.
  const double a00 = c * sx, a01 = sn * sy, a10 = -sn * sx, a11 = c * sy;
  const double b0 = -(c * cx + sn * cy) + cx + layer.transform.x;
  const double b1 = -(-sn * cx + c * cy) + cy + layer.transform.y;
  // Pixel-index form: X_idx = A U_idx + A (0.5, 0.5) + b - 0.5.
  cv::Mat M = (cv::Mat_<double>(2, 3) << a00, a01, b0 + 0.5 * (a00 + a01) - 0.5, a10, a11,
               b1 + 0.5 * (a10 + a11) - 0.5);
  cv::Mat dst;
  cv::warpAffine(src, dst, M, cv::Size(static_cast<int>(W), static_cast<int>(H)), cv::INTER_LINEAR,
                 cv::BORDER_CONSTANT, cv::Scalar(0, 0, 0, 0));
  auto out = from_mat_hwc(dst).clamp_(0, 1);
  auto alpha = out[3];
  auto colour = out.narrow(0, 0, 3) / alpha.clamp_min(1e-6).unsqueeze(0);
  colour = at::where(alpha.unsqueeze(0) > 1e-6, colour, at::zeros_like(colour)).clamp_(0, 1);
  return at::cat({colour, alpha.unsqueeze(0)}, 0);
}

at::Tensor place_layers(const Collage& collage) {
  std::vector<at::Tensor> placed;
  for (const auto& l : collage.layers) placed.push_back(place_layer(l, collage.height, collage.width));
  return at::stack(placed);
}

at::Tensor visible_masks(const at::Tensor& placed) {
  const int64_t L = placed.size(0);
  auto alpha = placed.select(1, 3);  // (L, H, W)
  std::vector<at::Tensor> v(L);
  auto above = at::ones_like(alpha[0]);  // prod_{j>i} (1 - alpha_j)
  for (int64_t i = L - 1; i >= 0; --i) {
    v[i] = alpha[i] * above;
    above = above * (1 - alpha[i]);
  }
  return at::stack(v);
}

at::Tensor flatten_layers(const at::Tensor& placed, const std::array<double, 3>& bg, int64_t up_to) {
  const int64_t L = up_to < 0 ? placed.size(0) : std::min<int64_t>(up_to + 1, placed.size(0));
  auto out = at::empty({3, placed.size(2), placed.size(3)}, placed.options());
  for (int k = 0; k < 3; ++k) out[k].fill_(bg[k]);
  for (int64_t i = 0; i < L; ++i) {
    auto a = placed[i][3].unsqueeze(0);
    out = a * placed[i].narrow(0, 0, 3) + (1 - a) * out;
  }
  return out;
}

at::Tensor flatten(const Collage& collage) { return flatten_layers(place_layers(collage), collage.background); }

at::Tensor downsample_masks(const at::Tensor& masks, int64_t h, int64_t w) {
  if (masks.size(-2) == h && masks.size(-1) == w) return masks;
  return at::adaptive_avg_pool2d(masks.unsqueeze(0).to(at::kFloat), {h, w}).squeeze(0);
}

const at::Tensor& MaskPyramid::at_size(int64_t h, int64_t w, const at::Device& device) {
  const std::array<int64_t, 3> key{h, w, device.is_cuda() ? device.index() + 1 : 0};
  for (const auto& [k, t] : cache_)
    if (k == key) return t;
  cache_.emplace_back(key, downsample_masks(masks_, h, w).to(device));
  return cache_.back().second;
}

double default_blur_sigma(int64_t height, int64_t width) { return 10.0 * std::max(height, width) / 512.0; }

at::Tensor noise_map(const at::Tensor& visible, const std::vector<double>& strengths, double b, double sigma) {
  COLLAGE_CHECK(static_cast<int64_t>(strengths.size()) == visible.size(0),
                "noise map: {} strengths for {} layers", strengths.size(), visible.size(0));
  auto s = at::tensor(std::vector<double>(strengths.begin(), strengths.end()), at::kDouble).to(at::kFloat);
  auto v = visible.to(at::kFloat);
  auto n = (v * s.view({-1, 1, 1})).sum(0) + (1 - v.sum(0)).clamp_min(0) * b;
  if (sigma < 0) sigma = default_blur_sigma(visible.size(1), visible.size(2));
  if (sigma > 0) {
    cv::Mat m(static_cast<int>(n.size(0)), static_cast<int>(n.size(1)), CV_32FC1, n.contiguous().data_ptr());
    cv::Mat blurred;
    const int k = 2 * static_cast<int>(std::ceil(3 * sigma)) + 1;
    cv::GaussianBlur(m.clone(), blurred, cv::Size(k, k), sigma, sigma, cv::BORDER_REFLECT);
    n = at::from_blob(blurred.data, {n.size(0), n.size(1)}, at::kFloat).clone();
  }
  return n.clamp_(0, 1);
}

std::vector<std::vector<int64_t>> layer_token_positions(const ClipTokenizer& tok, const std::string& prompt,
                                                        const std::vector<std::string>& texts,
                                                        const std::string& where) {
  const auto ids = tok.encode(prompt);  // bos ... eos, untruncated
  const int64_t limit = tok.model_max_length() - 1;  // positions < limit survive truncation
  std::vector<std::vector<int64_t>> out(texts.size());
  std::vector<bool> taken(ids.size(), false);
  for (size_t i = 0; i < texts.size(); ++i) {
    if (texts[i].empty()) continue;
    auto sub = tok.encode(texts[i]);
    sub = std::vector<int64_t>(sub.begin() + 1, sub.end() - 1);
    const auto field = fmt::format("layers[{}].text", i);
    COLLAGE_CHECK_AT(!sub.empty(), where, field, "layer text '{}' has no tokens", texts[i]);
    int64_t first_free = -1, first_any = -1;
    for (size_t p = 1; p + sub.size() <= ids.size() - 1; ++p) {
      if (!std::equal(sub.begin(), sub.end(), ids.begin() + p)) continue;
      if (first_any < 0) first_any = static_cast<int64_t>(p);
      bool free = true;
      for (size_t k = 0; k < sub.size(); ++k) free = free && !taken[p + k];
      if (free) {
        first_free = static_cast<int64_t>(p);
        break;
      }
    }
    const int64_t start = first_free >= 0 ? first_free : first_any;
    COLLAGE_CHECK_AT(start >= 0, where, field,
                     "layer text '{}' is not a whole-token span of the tokenised collage text '{}' (it must match "
                     "complete words)",
                     texts[i], prompt);
    COLLAGE_CHECK_AT(start + static_cast<int64_t>(sub.size()) <= limit, where, field,
                     "layer text '{}' lies beyond the {}-token limit of the text encoder", texts[i],
                     tok.model_max_length());
    for (size_t k = 0; k < sub.size(); ++k) {
      taken[start + k] = true;
      out[i].push_back(start + static_cast<int64_t>(k));
    }
  }
  return out;
}

}  // namespace collage
