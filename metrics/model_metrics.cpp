// Metrics computed through a model interface: lpips (PerceptualDistance) and the CLIP family
// (ImageTextEmbedder). The networks themselves are plugged in by the caller (framework/nets).
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/core.h"
#include "metrics/metrics.h"
#include "metrics/metrics_internal.h"

namespace collage::metrics::detail {
namespace {

std::string shape(const at::Tensor& t) { return fmt::format("[{}]", fmt::join(t.sizes(), ", ")); }

// Checks an embedder's answer: (rows, D) with finite values.
at::Tensor checked_embedding(const at::Tensor& e, int64_t rows, const char* what) {
  COLLAGE_CHECK(e.defined() && e.dim() == 2 && e.size(0) == rows,
                "the embedding model's {} returned {}, expected ({}, D)", what, e.defined() ? shape(e) : "nothing",
                rows);
  auto d = e.detach().to(at::kCPU, at::kDouble);
  COLLAGE_CHECK(at::isfinite(d).all().item<bool>(), "the embedding model's {} returned non-finite values", what);
  return d;
}

// Cosine similarity of rows i of a and j of b.
double cosine(const at::Tensor& a, int64_t i, const at::Tensor& b, int64_t j) {
  COLLAGE_CHECK(a.size(1) == b.size(1), "image embeddings have {} dimensions, text embeddings {}", a.size(1),
                b.size(1));
  auto x = a[i], y = b[j];
  const double nx = x.norm().item<double>(), ny = y.norm().item<double>();
  COLLAGE_CHECK(nx > 0 && ny > 0, "the embedding model returned a zero vector");
  return (x * y).sum().item<double>() / (nx * ny);
}

// 100 cos, clamped at 0 as CLIPScore does (Hessel et al. 2021 with w = 100, as torchmetrics), the raw
// value in extras.
MetricValue clip_value(double cos) {
  MetricValue v;
  v.value = std::max(100.0 * cos, 0.0);
  v.extras["raw"] = 100.0 * cos;
  return v;
}

class LpipsMetric : public Metric {
 public:
  MetricValue score(const ScoreInput& in, const ScoreContext& ctx) override {
    auto a = in.image.detach().to(at::kFloat).unsqueeze(0);
    auto b = in.collage.detach().to(at::kFloat).unsqueeze(0);
    auto d = ctx.perceptual->distance_map(a, b);
    const int64_t H = in.image.size(1), W = in.image.size(2);
    COLLAGE_CHECK(d.defined() && d.dim() == 4 && d.size(0) == 1 && d.size(1) == 1 && d.size(2) == H && d.size(3) == W,
                  "the perceptual model returned a distance map of shape {}, expected [1, 1, {}, {}]",
                  d.defined() ? shape(d) : "nothing", H, W);
    auto map = d[0][0].detach().to(at::kCPU, at::kDouble);
    const int64_t L = in.visible_masks.size(0);
    std::vector<double> per_layer(L);
    for (int64_t i = 0; i < L; ++i) per_layer[i] = masked_mean(map, in.visible_masks[i]);
    auto v = aggregate_layers(std::move(per_layer), background_layer(in), "every v_i is empty");
    v.extras["whole_image"] = map.mean().item<double>();
    return v;
  }
};

class ClipScoreMetric : public Metric {
 public:
  MetricValue score(const ScoreInput& in, const ScoreContext& ctx) override {
    auto img =
        checked_embedding(ctx.embedder->embed_images(in.image.detach().to(at::kFloat).unsqueeze(0)), 1, "embed_images");
    auto txt = checked_embedding(ctx.embedder->embed_texts({in.prompt}), 1, "embed_texts");
    return clip_value(cosine(img, 0, txt, 0));
  }
};

class ClipImageSimilarityMetric : public Metric {
 public:
  MetricValue score(const ScoreInput& in, const ScoreContext& ctx) override {
    auto both = at::stack({in.image.detach().to(at::kFloat), in.collage.detach().to(at::kFloat)});
    auto e = checked_embedding(ctx.embedder->embed_images(both), 2, "embed_images");
    return clip_value(cosine(e, 0, e, 1));
  }
};

class ClipLayerScoreMetric : public Metric {
 public:
  MetricValue score(const ScoreInput& in, const ScoreContext& ctx) override {
    const int64_t L = in.visible_masks.size(0);
    COLLAGE_CHECK_AT(static_cast<int64_t>(in.layer_texts.size()) == L, "", "layer_texts",
                     "{} layer texts for {} layers", in.layer_texts.size(), L);
    std::vector<double> per_layer(L, kNaN);
    std::vector<std::string> texts;
    std::vector<int64_t> layers;
    std::vector<Box> boxes;
    for (int64_t i = 0; i < L; ++i) {
      const Box box = mask_box(in.visible_masks[i]);
      if (in.layer_texts[i].empty() || box.empty()) continue;
      texts.push_back(in.layer_texts[i]);
      layers.push_back(i);
      boxes.push_back(box);
    }
    if (!texts.empty()) {
      auto txt = checked_embedding(ctx.embedder->embed_texts(texts), static_cast<int64_t>(texts.size()), "embed_texts");
      for (size_t k = 0; k < layers.size(); ++k) {
        const Box& b = boxes[k];
        auto crop = in.image.detach().to(at::kFloat).slice(1, b.y0, b.y1).slice(2, b.x0, b.x1).unsqueeze(0);
        auto img = checked_embedding(ctx.embedder->embed_images(crop.contiguous()), 1, "embed_images");
        per_layer[layers[k]] = std::max(100.0 * cosine(img, 0, txt, static_cast<int64_t>(k)), 0.0);
      }
    }
    return aggregate_layers(std::move(per_layer), background_layer(in), "no layer has both a text and a visible pixel");
  }
};

}  // namespace

std::unique_ptr<Metric> make_lpips(const Json& options) {
  Options(options, "metric 'lpips' options").finish();
  return std::make_unique<LpipsMetric>();
}

std::unique_ptr<Metric> make_clip_score(const Json& options) {
  Options(options, "metric 'clip_score' options").finish();
  return std::make_unique<ClipScoreMetric>();
}

std::unique_ptr<Metric> make_clip_image_similarity(const Json& options) {
  Options(options, "metric 'clip_image_similarity' options").finish();
  return std::make_unique<ClipImageSimilarityMetric>();
}

std::unique_ptr<Metric> make_clip_layer_score(const Json& options) {
  Options(options, "metric 'clip_layer_score' options").finish();
  return std::make_unique<ClipLayerScoreMetric>();
}

}  // namespace collage::metrics::detail
