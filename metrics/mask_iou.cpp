// Spatial fidelity: IoU between each layer's visible mask and the segmenter's mask of that object.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include "core/core.h"
#include "metrics/metrics.h"
#include "metrics/metrics_internal.h"

namespace collage::metrics {

double mask_iou(const at::Tensor& a, const at::Tensor& b) {
  COLLAGE_CHECK(a.dim() == 2 && a.sizes() == b.sizes(),
                "mask_iou: expected two (H, W) masks of one size, got [{}] and [{}]", fmt::join(a.sizes(), ", "),
                fmt::join(b.sizes(), ", "));
  auto ma = a.detach() > 0.5, mb = b.detach() > 0.5;
  const int64_t inter = (ma & mb).sum().item<int64_t>();
  const int64_t uni = (ma | mb).sum().item<int64_t>();
  if (uni == 0) return kNaN;
  return static_cast<double>(inter) / static_cast<double>(uni);
}

namespace detail {
namespace {

class MaskIouMetric : public Metric {
 public:
  MetricValue score(const ScoreInput& in, const ScoreContext& ctx) override {
    const int64_t L = in.visible_masks.size(0);
    const int bg = background_layer(in);
    const int64_t H = in.image.size(1), W = in.image.size(2);
    std::vector<double> per_layer(L, kNaN);
    for (int64_t i = 0; i < L; ++i) {
      if (i == bg) continue;  // the background has no object outline to find
      auto v = in.visible_masks[i];
      if (!(v > 0.5).any().item<bool>()) continue;  // fully hidden: nothing to compare
      auto seg = ctx.segmenter->segment_layer(in.image, in.layers[i], v, static_cast<int>(i));
      COLLAGE_CHECK(seg.defined() && seg.dim() == 2 && seg.size(0) == H && seg.size(1) == W,
                    "the segmenter returned a mask of shape [{}] for layer {}, expected [{}, {}]",
                    seg.defined() ? fmt::format("{}", fmt::join(seg.sizes(), ", ")) : "nothing", i, H, W);
      per_layer[i] = mask_iou(v, seg.to(at::kCPU).to(at::kFloat));
    }
    return aggregate_layers(std::move(per_layer), bg, "no object layer has a visible pixel");
  }
};

}  // namespace

std::unique_ptr<Metric> make_mask_iou(const Json& options) {
  Options(options, "metric 'mask_iou' options").finish();
  return std::make_unique<MaskIouMetric>();
}

}  // namespace detail
}  // namespace collage::metrics
