// Private to metrics/: helpers shared by the metric and segmenter implementations.
#pragma once

#include <ATen/Tensor.h>

#include <memory>
#include <opencv2/core.hpp>
#include <string>
#include <vector>

#include "metrics/metrics.h"

namespace collage::metrics::detail {

// An axis-aligned pixel box [x0, x1) x [y0, y1); empty when x1 <= x0 or y1 <= y0.
struct Box {
  int x0 = 0, y0 = 0, x1 = 0, y1 = 0;
  bool empty() const { return x1 <= x0 || y1 <= y0; }
  int width() const { return x1 - x0; }
  int height() const { return y1 - y0; }
  cv::Rect rect() const { return {x0, y0, x1 - x0, y1 - y0}; }
};
// Bounding box of the pixels of a (H, W) mask above `threshold`.
Box mask_box(const at::Tensor& mask, double threshold = 0.5);
// The box grown by max(margin * side, min_px) on each side, clipped to the canvas.
Box grow_box(const Box& box, double margin, int min_px, int width, int height);

// (3, H, W) float in [0, 1] -> 8-bit RGB cv::Mat (rounded, clamped).
cv::Mat to_rgb8(const at::Tensor& image);
// (H, W) tensor -> CV_8U mask with 1 where > threshold.
cv::Mat to_mask8(const at::Tensor& mask, double threshold = 0.5);
// CV_8U mask (nonzero = 1) -> (H, W) float32 0/1.
at::Tensor from_mask8(const cv::Mat& mask);

// A JSON options object with typed reads; throws on unknown keys at finish() (field = the key).
class Options {
 public:
  Options(const Json& options, std::string what);
  Options(const Options&) = delete;
  Options& operator=(const Options&) = delete;
  template <typename T>
  T get(const std::string& key, const T& fallback) {
    return reader_.get<T>(key, fallback);
  }
  template <typename T>
  T require(const std::string& key) {
    return reader_.get<T>(key);
  }
  // Throws when a key was never read.
  void finish() const;

 private:
  Json object_;
  std::string what_;
  JsonReader reader_;
};

// value = mean of the finite entries of per_layer except `background`; skipped when there is none.
MetricValue aggregate_layers(std::vector<double> per_layer, int background, const std::string& what);

// Factories of the built-ins (one file each).
std::unique_ptr<Metric> make_mask_iou(const Json& options);
std::unique_ptr<Metric> make_ciede2000(const Json& options);
std::unique_ptr<Metric> make_ssim(const Json& options);
std::unique_ptr<Metric> make_lpips(const Json& options);
std::unique_ptr<Metric> make_clip_score(const Json& options);
std::unique_ptr<Metric> make_clip_image_similarity(const Json& options);
std::unique_ptr<Metric> make_clip_layer_score(const Json& options);
std::unique_ptr<Metric> make_edge_f1(const Json& options);
std::unique_ptr<SetMetric> make_kid(const Json& options);
std::unique_ptr<SetMetric> make_fid(const Json& options);
std::unique_ptr<Segmenter> make_appearance_segmenter(const Json& options);
std::unique_ptr<Segmenter> make_dnn_segmenter(const Json& options);

}  // namespace collage::metrics::detail
