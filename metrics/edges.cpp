// edge_f1: how well the output keeps the collage's edges (the quantity a ControlNet on Canny edges controls).
#include <ATen/ATen.h>

#include <cmath>
#include <opencv2/imgproc.hpp>

#include "core/core.h"
#include "metrics/metrics.h"
#include "metrics/metrics_internal.h"

namespace collage::metrics {

namespace {

// 1 where an edge pixel of `edges` lies within Euclidean distance `radius` (a dilation by a disk).
at::Tensor near_edges(const at::Tensor& edges, int radius) {
  auto e = (edges.to(at::kCPU) != 0).to(at::kByte).contiguous();
  cv::Mat in(static_cast<int>(e.size(0)), static_cast<int>(e.size(1)), CV_8UC1, e.data_ptr());
  cv::Mat disk = cv::Mat::zeros(2 * radius + 1, 2 * radius + 1, CV_8UC1);
  for (int dy = -radius; dy <= radius; ++dy)
    for (int dx = -radius; dx <= radius; ++dx)
      if (dx * dx + dy * dy <= radius * radius) disk.at<uint8_t>(dy + radius, dx + radius) = 1;
  cv::Mat out;
  cv::dilate(in, out, disk);  // outside the image counts as no edge
  return at::from_blob(out.data, {out.rows, out.cols}, at::kByte).to(at::kDouble);
}

}  // namespace

EdgeMatch edge_match(const at::Tensor& out_edges, const at::Tensor& ref_edges, const at::Tensor& weights, int radius) {
  COLLAGE_CHECK(out_edges.dim() == 2 && out_edges.sizes() == ref_edges.sizes() && weights.sizes() == ref_edges.sizes(),
                "edge_match: expected three (H, W) tensors of one size, got [{}], [{}], [{}]",
                fmt::join(out_edges.sizes(), ", "), fmt::join(ref_edges.sizes(), ", "), fmt::join(weights.sizes(), ", "));
  COLLAGE_CHECK(radius >= 0, "edge_match: radius must be >= 0, got {}", radius);
  const auto w = weights.detach().to(at::kCPU, at::kDouble).clamp(0.0, 1.0);
  const auto out = (out_edges.to(at::kCPU) != 0).to(at::kDouble);
  const auto ref = (ref_edges.to(at::kCPU) != 0).to(at::kDouble);
  EdgeMatch m;
  m.ref_edges = (w * ref).sum().item<double>();
  m.out_edges = (w * out).sum().item<double>();
  if (m.ref_edges < 0.5) return m;
  m.recall = (w * ref * near_edges(out, radius)).sum().item<double>() / m.ref_edges;
  m.precision = m.out_edges > 0 ? (w * out * near_edges(ref, radius)).sum().item<double>() / m.out_edges : 0.0;
  m.f1 = m.precision + m.recall > 0 ? 2 * m.precision * m.recall / (m.precision + m.recall) : 0.0;
  return m;
}

int edge_radius(int64_t height, int64_t width, double radius_at_512) {
  return std::max(1, static_cast<int>(std::lround(radius_at_512 * static_cast<double>(std::min(height, width)) / 512.0)));
}

namespace detail {
namespace {

class EdgeF1Metric : public Metric {
 public:
  EdgeF1Metric(double radius_at_512, CannyThresholds thresholds) : radius_(radius_at_512), thresholds_(thresholds) {}
  MetricValue score(const ScoreInput& in, const ScoreContext&) override {
    const auto out_edges = canny_edges_u8(to_uint8_hwc(in.image), thresholds_);
    const auto ref_edges = canny_edges_u8(to_uint8_hwc(in.collage), thresholds_);
    const int radius = edge_radius(in.image.size(1), in.image.size(2), radius_);
    const int64_t L = in.visible_masks.size(0);
    std::vector<double> per_layer(L);
    for (int64_t i = 0; i < L; ++i) per_layer[i] = edge_match(out_edges, ref_edges, in.visible_masks[i], radius).f1;
    auto value = aggregate_layers(std::move(per_layer), background_layer(in), "no layer has collage edges");
    const auto whole = edge_match(out_edges, ref_edges, at::ones(ref_edges.sizes(), at::kDouble), radius);
    value.extras["whole_image"] = whole.f1;
    value.extras["whole_image_precision"] = whole.precision;
    value.extras["whole_image_recall"] = whole.recall;
    value.extras["radius_px"] = radius;
    return value;
  }

 private:
  double radius_;
  CannyThresholds thresholds_;
};

}  // namespace

std::unique_ptr<Metric> make_edge_f1(const Json& options) {
  Options o(options, "metric 'edge_f1' options");
  const double radius = o.get<double>("radius_at_512", 2.0);
  CannyThresholds t{o.get<double>("canny_low", 100.0), o.get<double>("canny_high", 200.0)};
  o.finish();
  COLLAGE_CHECK_AT(radius >= 0, "", "radius_at_512", "must be >= 0, got {}", radius);
  return std::make_unique<EdgeF1Metric>(radius, t);
}

}  // namespace detail
}  // namespace collage::metrics
