// Built-in segmenters for mask_iou: "appearance" (colour back-projection + GrabCut, no weights) and
// "dnn" (a user-given ONNX segmentation network through OpenCV DNN).
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <opencv2/dnn.hpp>
#include <opencv2/imgproc.hpp>

#include "core/core.h"
#include "metrics/metrics.h"
#include "metrics/metrics_internal.h"

namespace collage::metrics::detail {
namespace {

void check_segment_args(const at::Tensor& image, const at::Tensor& layer_rgba, const at::Tensor& visible_mask) {
  COLLAGE_CHECK(image.dim() == 3 && image.size(0) == 3, "segmenter: image must be (3, H, W), got [{}]",
                fmt::join(image.sizes(), ", "));
  const int64_t H = image.size(1), W = image.size(2);
  COLLAGE_CHECK(layer_rgba.dim() == 3 && layer_rgba.size(0) == 4 && layer_rgba.size(1) == H && layer_rgba.size(2) == W,
                "segmenter: layer must be (4, {}, {}), got [{}]", H, W, fmt::join(layer_rgba.sizes(), ", "));
  COLLAGE_CHECK(visible_mask.dim() == 2 && visible_mask.size(0) == H && visible_mask.size(1) == W,
                "segmenter: visible mask must be ({}, {}), got [{}]", H, W, fmt::join(visible_mask.sizes(), ", "));
}

// ------------------------------------------------------------------------------------------------
// appearance

struct AppearanceOptions {
  double margin = 0.25;
  int min_margin_px = 8;
  int grabcut_iterations = 4;
  int hue_bins = 18, sat_bins = 8, val_bins = 8;
};

// Colour model of one layer: an HSV histogram of its visible pixels against one of the output's pixels
// around (not on) its placement; p(object | colour) by Bayes with equal priors, then GrabCut.
class AppearanceSegmenter : public Segmenter {
 public:
  explicit AppearanceSegmenter(AppearanceOptions o) : o_(o) {}

  at::Tensor segment_layer(const at::Tensor& image, const at::Tensor& layer_rgba, const at::Tensor& visible_mask,
                           int layer_index) override {
    check_segment_args(image, layer_rgba, visible_mask);
    const int H = static_cast<int>(image.size(1)), W = static_cast<int>(image.size(2));
    auto empty = at::zeros({H, W}, at::kFloat);
    const Box placed = mask_box(visible_mask);
    if (placed.empty()) return empty;
    const Box window = grow_box(placed, o_.margin, o_.min_margin_px, W, H);
    const cv::Rect roi = window.rect();

    cv::Mat out_hsv, layer_hsv;
    cv::cvtColor(to_rgb8(image), out_hsv, cv::COLOR_RGB2HSV);
    cv::cvtColor(to_rgb8(layer_rgba.slice(0, 0, 3)), layer_hsv, cv::COLOR_RGB2HSV);
    const cv::Mat visible = to_mask8(visible_mask);

    // Surroundings: the window minus the placement dilated by half the margin (so that an object
    // that moved a little does not count as background).
    const int grow = std::max(1, std::max(window.width() - placed.width(), window.height() - placed.height()) / 4);
    cv::Mat near;
    cv::dilate(visible, near, cv::getStructuringElement(cv::MORPH_ELLIPSE, {2 * grow + 1, 2 * grow + 1}));

    const int bins = o_.hue_bins * o_.sat_bins * o_.val_bins;
    std::vector<double> fg(bins, 0.0), bg(bins, 0.0);
    double n_fg = 0, n_bg = 0;
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x)
        if (visible.at<uint8_t>(y, x)) {
          fg[bin(layer_hsv.at<cv::Vec3b>(y, x))] += 1;
          n_fg += 1;
        }
    for (int y = window.y0; y < window.y1; ++y)
      for (int x = window.x0; x < window.x1; ++x)
        if (!near.at<uint8_t>(y, x)) {
          bg[bin(out_hsv.at<cv::Vec3b>(y, x))] += 1;
          n_bg += 1;
        }
    smooth(fg);
    smooth(bg);
    // p(colour | class) with a small uniform prior; p(object | colour) = p_f / (p_f + p_b).
    const double prior = 1.0;
    std::vector<double> p_obj(bins);
    for (int k = 0; k < bins; ++k) {
      const double pf = (fg[k] + prior / bins) / (n_fg + prior);
      const double pb = (bg[k] + prior / bins) / (n_bg + prior);
      p_obj[k] = pf / (pf + pb);
    }

    // GrabCut labels in the window: probable object / probable background from the colour model;
    // definite background on the window's border where it is not the canvas edge.
    cv::Mat labels(roi.height, roi.width, CV_8U);
    int n_obj = 0, n_back = 0;
    for (int y = 0; y < roi.height; ++y)
      for (int x = 0; x < roi.width; ++x) {
        const int gy = y + roi.y, gx = x + roi.x;
        const bool border = (y == 0 && gy > 0) || (x == 0 && gx > 0) || (y == roi.height - 1 && gy < H - 1) ||
                            (x == roi.width - 1 && gx < W - 1);
        uint8_t label;
        if (border)
          label = cv::GC_BGD;
        else
          label = p_obj[bin(out_hsv.at<cv::Vec3b>(gy, gx))] > 0.5 ? cv::GC_PR_FGD : cv::GC_PR_BGD;
        labels.at<uint8_t>(y, x) = label;
        (label == cv::GC_PR_FGD ? n_obj : n_back) += 1;
      }
    if (n_obj == 0) return empty;  // no pixel near the placement looks like the layer
    if (n_back > 0 && o_.grabcut_iterations > 0) {
      cv::Mat rgb = to_rgb8(image)(roi).clone(), bgd_model, fgd_model;
      try {
        // GrabCut seeds its colour models with k-means on OpenCV's global RNG: without a fixed state the mask
        // (and mask_iou) of an image would depend on how many segmentations ran before it in the process.
        cv::theRNG() = cv::RNG(0x5EC0FFEEu);
        cv::grabCut(rgb, labels, cv::Rect(), bgd_model, fgd_model, o_.grabcut_iterations, cv::GC_INIT_WITH_MASK);
      } catch (const cv::Exception& e) {
        throw Error(fmt::format("appearance segmenter: GrabCut failed on layer {}: {}", layer_index, e.what()));
      }
    }
    cv::Mat object = cv::Mat::zeros(H, W, CV_8U);
    cv::Mat object_roi = object(roi);
    for (int y = 0; y < roi.height; ++y)
      for (int x = 0; x < roi.width; ++x) {
        const uint8_t l = labels.at<uint8_t>(y, x);
        object_roi.at<uint8_t>(y, x) = (l == cv::GC_FGD || l == cv::GC_PR_FGD) ? 1 : 0;
      }
    return from_mask8(object);
  }

 private:
  // HSV (OpenCV 8-bit: H in [0, 180)) -> histogram bin; achromatic pixels share hue bin 0.
  int bin(const cv::Vec3b& hsv) const {
    int h = hsv[0] * o_.hue_bins / 180, s = hsv[1] * o_.sat_bins / 256, v = hsv[2] * o_.val_bins / 256;
    h = std::min(h, o_.hue_bins - 1);
    if (s == 0) h = 0;
    return (h * o_.sat_bins + s) * o_.val_bins + v;
  }
  // [1, 2, 1] / 4 along each axis (hue circular), so that a small colour shift keeps its bin's mass.
  void smooth(std::vector<double>& hist) const {
    const int nh = o_.hue_bins, ns = o_.sat_bins, nv = o_.val_bins;
    auto at = [&](std::vector<double>& t, int h, int s, int v) -> double& { return t[(h * ns + s) * nv + v]; };
    std::vector<double> tmp(hist.size());
    for (int h = 0; h < nh; ++h)
      for (int s = 0; s < ns; ++s)
        for (int v = 0; v < nv; ++v)
          at(tmp, h, s, v) =
              0.25 * at(hist, (h + nh - 1) % nh, s, v) + 0.5 * at(hist, h, s, v) + 0.25 * at(hist, (h + 1) % nh, s, v);
    for (int h = 0; h < nh; ++h)
      for (int s = 0; s < ns; ++s)
        for (int v = 0; v < nv; ++v)
          at(hist, h, s, v) = 0.25 * at(tmp, h, std::max(s - 1, 0), v) + 0.5 * at(tmp, h, s, v) +
                              0.25 * at(tmp, h, std::min(s + 1, ns - 1), v);
    for (int h = 0; h < nh; ++h)
      for (int s = 0; s < ns; ++s)
        for (int v = 0; v < nv; ++v)
          at(tmp, h, s, v) = 0.25 * at(hist, h, s, std::max(v - 1, 0)) + 0.5 * at(hist, h, s, v) +
                             0.25 * at(hist, h, s, std::min(v + 1, nv - 1));
    hist.swap(tmp);
  }

  AppearanceOptions o_;
};

// ------------------------------------------------------------------------------------------------
// dnn

struct DnnOptions {
  std::string model;
  int width = 512, height = 512;
  std::vector<double> mean{0.0, 0.0, 0.0}, std{1.0, 1.0, 1.0};
  bool swap_rb = false;
  int background_class = 0;
  double threshold = 0.5;
  bool sigmoid = false;
  double margin = 0.25;
  int min_margin_px = 8;
};

// The network runs once per image (cached on the image's content). A C-channel output (C > 1) is a
// per-pixel class score map: a layer's class is the most frequent predicted class inside its visible
// mask (background_class excluded), and its segmentation is that class's pixels near its placement.
// A 1-channel output is an object/foreground map thresholded at `threshold`.
class DnnSegmenter : public Segmenter {
 public:
  explicit DnnSegmenter(DnnOptions o) : o_(std::move(o)) {
    try {
      net_ = cv::dnn::readNetFromONNX(o_.model);
    } catch (const cv::Exception& e) {
      throw Error(fmt::format("OpenCV DNN cannot load this ONNX model: {}", e.what()), o_.model);
    }
    COLLAGE_CHECK_AT(!net_.empty(), o_.model, "", "OpenCV DNN loaded an empty network");
  }

  at::Tensor segment_layer(const at::Tensor& image, const at::Tensor& layer_rgba, const at::Tensor& visible_mask,
                           int layer_index) override {
    check_segment_args(image, layer_rgba, visible_mask);
    const int H = static_cast<int>(image.size(1)), W = static_cast<int>(image.size(2));
    run(image);
    auto empty = at::zeros({H, W}, at::kFloat);
    const Box placed = mask_box(visible_mask);
    if (placed.empty()) return empty;
    const Box window = grow_box(placed, o_.margin, o_.min_margin_px, W, H);
    cv::Mat object = cv::Mat::zeros(H, W, CV_8U);
    if (classes_ == 1) {
      foreground_(window.rect()).copyTo(object(window.rect()));
      return from_mask8(object);
    }
    const cv::Mat visible = to_mask8(visible_mask);
    std::vector<int64_t> votes(classes_, 0);
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x)
        if (visible.at<uint8_t>(y, x)) ++votes[labels_.at<int32_t>(y, x)];
    if (o_.background_class >= 0 && o_.background_class < classes_) votes[o_.background_class] = 0;
    const int cls = static_cast<int>(std::max_element(votes.begin(), votes.end()) - votes.begin());
    if (votes[cls] == 0) return empty;  // only background predicted under the layer
    for (int y = window.y0; y < window.y1; ++y)
      for (int x = window.x0; x < window.x1; ++x) object.at<uint8_t>(y, x) = labels_.at<int32_t>(y, x) == cls;
    return from_mask8(object);
  }

 private:
  void run(const at::Tensor& image_in) {
    auto image = image_in.detach().to(at::kCPU, at::kFloat).contiguous();
    if (cached_.defined() && cached_.sizes() == image.sizes() && at::equal(cached_, image)) return;
    const int H = static_cast<int>(image.size(1)), W = static_cast<int>(image.size(2));
    auto hwc = image.permute({1, 2, 0}).contiguous();
    cv::Mat rgb(H, W, CV_32FC3, hwc.data_ptr<float>());
    cv::Mat input;
    cv::resize(rgb, input, cv::Size(o_.width, o_.height), 0, 0, cv::INTER_LINEAR);
    input = (input - cv::Scalar(o_.mean[0], o_.mean[1], o_.mean[2]));
    cv::divide(input, cv::Scalar(o_.std[0], o_.std[1], o_.std[2]), input);
    cv::Mat blob = cv::dnn::blobFromImage(input, 1.0, cv::Size(), cv::Scalar(), o_.swap_rb, false, CV_32F);
    cv::Mat out;
    try {
      net_.setInput(blob);
      out = net_.forward();
    } catch (const cv::Exception& e) {
      throw Error(fmt::format("OpenCV DNN forward pass failed: {}", e.what()), o_.model);
    }
    COLLAGE_CHECK_AT(out.dims == 4 && out.size[0] == 1 && out.size[1] >= 1, o_.model, "",
                     "expected the network to output (1, C, h, w) score maps, got {} dimensions", out.dims);
    classes_ = out.size[1];
    const int oh = out.size[2], ow = out.size[3];
    std::vector<cv::Mat> maps(classes_);
    for (int c = 0; c < classes_; ++c) {
      cv::Mat m(oh, ow, CV_32F, out.ptr<float>(0, c));
      cv::resize(m, maps[c], cv::Size(W, H), 0, 0, cv::INTER_LINEAR);
    }
    if (classes_ == 1) {
      cv::Mat p = maps[0];
      if (o_.sigmoid) {
        cv::exp(-p, p);
        p = 1.0 / (1.0 + p);
      }
      foreground_ = p > o_.threshold;
      foreground_ /= 255;  // 0/1
    } else {
      labels_ = cv::Mat::zeros(H, W, CV_32S);
      for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x) {
          int best = 0;
          float best_score = maps[0].at<float>(y, x);
          for (int c = 1; c < classes_; ++c)
            if (maps[c].at<float>(y, x) > best_score) best_score = maps[c].at<float>(y, x), best = c;
          labels_.at<int32_t>(y, x) = best;
        }
    }
    cached_ = image.clone();
  }

  DnnOptions o_;
  cv::dnn::Net net_;
  at::Tensor cached_;
  int classes_ = 0;
  cv::Mat labels_, foreground_;
};

}  // namespace

std::unique_ptr<Segmenter> make_appearance_segmenter(const Json& options) {
  const std::string what = "segmenter 'appearance' options";
  Options o(options, what);
  AppearanceOptions a;
  a.margin = o.get<double>("margin", a.margin);
  a.min_margin_px = o.get<int>("min_margin_px", a.min_margin_px);
  a.grabcut_iterations = o.get<int>("grabcut_iterations", a.grabcut_iterations);
  a.hue_bins = o.get<int>("hue_bins", a.hue_bins);
  a.sat_bins = o.get<int>("sat_bins", a.sat_bins);
  a.val_bins = o.get<int>("val_bins", a.val_bins);
  o.finish();
  COLLAGE_CHECK_AT(a.margin >= 0, what, "margin", "must be >= 0, got {}", a.margin);
  COLLAGE_CHECK_AT(a.min_margin_px >= 0, what, "min_margin_px", "must be >= 0, got {}", a.min_margin_px);
  COLLAGE_CHECK_AT(a.grabcut_iterations >= 0, what, "grabcut_iterations", "must be >= 0, got {}", a.grabcut_iterations);
  COLLAGE_CHECK_AT(a.hue_bins >= 1 && a.hue_bins <= 180, what, "hue_bins", "must be in [1, 180], got {}", a.hue_bins);
  COLLAGE_CHECK_AT(a.sat_bins >= 1 && a.sat_bins <= 256, what, "sat_bins", "must be in [1, 256], got {}", a.sat_bins);
  COLLAGE_CHECK_AT(a.val_bins >= 1 && a.val_bins <= 256, what, "val_bins", "must be in [1, 256], got {}", a.val_bins);
  return std::make_unique<AppearanceSegmenter>(a);
}

std::unique_ptr<Segmenter> make_dnn_segmenter(const Json& options) {
  const std::string what = "segmenter 'dnn' options";
  Options o(options, what);
  DnnOptions d;
  d.model = o.require<std::string>("model");
  d.width = o.get<int>("width", d.width);
  d.height = o.get<int>("height", d.height);
  d.mean = o.get<std::vector<double>>("mean", d.mean);
  d.std = o.get<std::vector<double>>("std", d.std);
  d.swap_rb = o.get<bool>("swap_rb", d.swap_rb);
  d.background_class = o.get<int>("background_class", d.background_class);
  d.threshold = o.get<double>("threshold", d.threshold);
  d.sigmoid = o.get<bool>("sigmoid", d.sigmoid);
  d.margin = o.get<double>("margin", d.margin);
  d.min_margin_px = o.get<int>("min_margin_px", d.min_margin_px);
  o.finish();
  COLLAGE_CHECK_AT(std::filesystem::is_regular_file(d.model), d.model, "model", "ONNX model file not found");
  COLLAGE_CHECK_AT(d.width > 0 && d.height > 0, what, "width", "network input size must be positive, got {}x{}",
                   d.width, d.height);
  COLLAGE_CHECK_AT(d.mean.size() == 3, what, "mean", "expected 3 numbers (R, G, B), got {}", d.mean.size());
  COLLAGE_CHECK_AT(d.std.size() == 3 && d.std[0] > 0 && d.std[1] > 0 && d.std[2] > 0, what, "std",
                   "expected 3 positive numbers (R, G, B)");
  COLLAGE_CHECK_AT(d.margin >= 0, what, "margin", "must be >= 0, got {}", d.margin);
  return std::make_unique<DnnSegmenter>(d);
}

}  // namespace collage::metrics::detail
