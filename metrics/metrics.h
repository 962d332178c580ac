// Public header of metrics/: how a harmonised image is scored against its collage.
//
//  - Per-image metrics (one value per image, plus one value per layer): mask_iou (spatial fidelity),
//    ciede2000, ssim, lpips (appearance fidelity inside each layer's visible mask v_i), clip_score,
//    clip_image_similarity, clip_layer_score (text / collage alignment). They sit in a MetricRegistry,
//    declare what they need (Needs), and report "skipped: reason" instead of a number when an input
//    or a model they need is not available.
//  - Set-level metrics on feature matrices: kid, fid.
//  - Plug-in points: Segmenter (+ SegmenterRegistry) for mask_iou, ImageTextEmbedder for the CLIP
//    metrics and PerceptualDistance for lpips. The networks behind the last two live in framework/nets.
//
// Images are float CHW tensors in [0, 1] (sRGB), on the CPU. See metrics/README.md for every metric's
// definition, direction and references.
#pragma once

#include <ATen/Tensor.h>

#include <array>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/core.h"

namespace collage::metrics {

// ------------------------------------------------------------------------------------------------
// Inputs and results

// Which layer, if any, is the background. A background layer is scored per layer where that makes
// sense, but never enters a metric's aggregate value (see README "Background layer").
enum class BackgroundRule {
  auto_detect,  // layer 0 is the background when its alpha is > 0.5 on at least 99% of the canvas
                // (needs `layers`; without them no layer is the background)
  first_layer,  // layer 0 is the background
  none,         // every layer is an object
};

// Everything a per-image metric may read. Only `image` is always needed; the rest is optional and a
// metric that needs a missing piece reports itself skipped. All spatial tensors share (H, W).
struct ScoreInput {
  at::Tensor image;                      // (3, H, W) the output image to score
  at::Tensor collage;                    // (3, H, W) the flattened collage
  at::Tensor layers;                     // (L, 4, H, W) each layer's RGBA placed on the canvas (straight alpha)
  at::Tensor visible_masks;              // (L, H, W) v_i = alpha_i * prod_{j>i} (1 - alpha_j), in [0, 1]
  std::vector<std::string> layer_texts;  // L layer texts c_i, or empty
  std::string prompt;                    // the global text c, or empty
  BackgroundRule background = BackgroundRule::auto_detect;
};

// Throws collage::Error when the given tensors disagree in shape (field = the ScoreInput member).
void check_score_input(const ScoreInput& input);
// Index of the background layer under input.background: 0, or -1 for none.
int background_layer(const ScoreInput& input);

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// One metric's result for one image.
struct MetricValue {
  double value = kNaN;                   // aggregate: mean of the finite per-layer values of object layers
                                         // (or the image-level value for metrics without layers)
  std::vector<double> per_layer;         // one entry per layer (NaN: not scored); empty for image-level metrics
  std::map<std::string, double> extras;  // secondary numbers, e.g. clip_score's "raw" (unclamped)
  bool skipped = false;                  // true: no number could be computed honestly
  std::string skip_reason;               // why, when skipped

  static MetricValue skip(std::string reason);
};
using Scores = std::map<std::string, MetricValue>;  // metric name -> value

// ------------------------------------------------------------------------------------------------
// What a metric is

enum class Direction { higher_is_better, lower_is_better };
const char* direction_name(Direction d);  // "higher_is_better" / "lower_is_better"

enum class MetricKind { per_image, set_level };

// One input or model a metric depends on.
enum class Need : uint32_t {
  image = 1u << 0,          // ScoreInput::image
  collage = 1u << 1,        // ScoreInput::collage
  layers = 1u << 2,         // ScoreInput::layers
  visible_masks = 1u << 3,  // ScoreInput::visible_masks
  layer_texts = 1u << 4,    // ScoreInput::layer_texts
  prompt = 1u << 5,         // ScoreInput::prompt
  segmenter = 1u << 6,      // ScoreContext::segmenter
  embedder = 1u << 7,       // ScoreContext::embedder
  perceptual = 1u << 8,     // ScoreContext::perceptual
  reference_set = 1u << 9,  // a second feature set (set-level metrics)
};
const char* need_name(Need n);  // "image", "visible_masks", ...

// A set of Need flags.
class Needs {
 public:
  Needs() = default;
  Needs(std::initializer_list<Need> needs);
  bool has(Need n) const { return (bits_ & static_cast<uint32_t>(n)) != 0; }
  std::vector<Need> list() const;          // in the enum's order
  std::vector<std::string> names() const;  // need_name of each
  uint32_t bits() const { return bits_; }

 private:
  uint32_t bits_ = 0;
};

struct MetricInfo {
  std::string name;         // what users type: "mask_iou"
  std::string description;  // one line
  Direction direction = Direction::higher_is_better;
  MetricKind kind = MetricKind::per_image;
  Needs needs;
};

// ------------------------------------------------------------------------------------------------
// Model interfaces (implemented in framework/nets or by tests)

// A joint image/text embedding model such as CLIP. Embeddings need not be normalised.
class ImageTextEmbedder {
 public:
  virtual ~ImageTextEmbedder() = default;
  // (B, 3, H, W) float in [0, 1], any H, W (the model resizes/normalises) -> (B, D).
  virtual at::Tensor embed_images(const at::Tensor& images) = 0;
  // B texts -> (B, D).
  virtual at::Tensor embed_texts(const std::vector<std::string>& texts) = 0;
};

// An LPIPS-like spatial perceptual distance.
class PerceptualDistance {
 public:
  virtual ~PerceptualDistance() = default;
  // a, b: (B, 3, H, W) float in [0, 1] -> (B, 1, H, W) per-pixel distance (>= 0; lower = more alike).
  virtual at::Tensor distance_map(const at::Tensor& a, const at::Tensor& b) = 0;
};

// Finds one collage layer's object in an output image (for mask_iou).
class Segmenter {
 public:
  virtual ~Segmenter() = default;
  // Called once per scored image before its segment_layer calls (texts, prompt, all layers);
  // optional, e.g. to analyse the image once.
  virtual void prepare(const ScoreInput& input) {}
  // image (3, H, W), layer_rgba (4, H, W) the layer as placed on the canvas, visible_mask (H, W) v_i,
  // layer_index i -> (H, W) 0/1 mask of where that object is in `image` (any dtype; > 0.5 = object).
  virtual at::Tensor segment_layer(const at::Tensor& image, const at::Tensor& layer_rgba,
                                   const at::Tensor& visible_mask, int layer_index) = 0;
};

// Creates a segmenter from JSON options (an object; unknown keys are an error).
using SegmenterFactory = std::function<std::unique_ptr<Segmenter>(const Json& options)>;

class SegmenterRegistry {
 public:
  // Adds a segmenter; a name that is already there is an error.
  void add(const std::string& name, const std::string& description, SegmenterFactory factory);
  bool has(const std::string& name) const;
  std::vector<std::string> names() const;  // in the order they were added
  const std::string& description(const std::string& name) const;
  // Unknown name: collage::Error listing the known ones.
  std::unique_ptr<Segmenter> create(const std::string& name, const Json& options = Json::object()) const;

 private:
  struct Entry {
    std::string name, description;
    SegmenterFactory factory;
  };
  const Entry& find(const std::string& name) const;
  std::vector<Entry> entries_;
};

// Adds the built-in segmenters:
//  "appearance": weight-free; colour back-projection of the layer's visible pixels into a window
//     around its placement, refined by GrabCut. Options: margin (0.25: window growth, fraction of the
//     placement's box size), min_margin_px (8), grabcut_iterations (4), hue_bins (18), sat_bins (8),
//     val_bins (8).
//  "dnn": an ONNX segmentation network through OpenCV DNN. Options: model (path, required),
//     width / height (network input size, 512), mean / std (3 numbers each, applied to RGB in [0,1];
//     0 and 1), swap_rb (false: the network takes RGB), background_class (0; -1: none), threshold
//     (0.5, for one-channel outputs), sigmoid (false: apply a sigmoid to one-channel outputs first),
//     margin (0.25), min_margin_px (8). See README for how a layer is matched to a class.
void register_builtin_segmenters(SegmenterRegistry& registry);

// The models a scoring run has; any may be null (metrics needing it report skipped).
struct ScoreContext {
  std::shared_ptr<Segmenter> segmenter;
  std::shared_ptr<ImageTextEmbedder> embedder;
  std::shared_ptr<PerceptualDistance> perceptual;
};

// ------------------------------------------------------------------------------------------------
// Metric plugins and their registry

class Metric {
 public:
  virtual ~Metric() = default;
  // Called only when every need in the metric's MetricInfo is met (score_image checks them).
  virtual MetricValue score(const ScoreInput& input, const ScoreContext& context) = 0;
};

// A set-level result: the mean over subsets and its standard deviation (0 when there is one value).
struct SetValue {
  double value = kNaN;
  double std = 0.0;
  int64_t subsets = 1;
};

class SetMetric {
 public:
  virtual ~SetMetric() = default;
  // a: (N_a, D), b: (N_b, D) feature matrices (float64 or float32).
  virtual SetValue compute(const at::Tensor& a, const at::Tensor& b) = 0;
};

// Factories take JSON options (an object; unknown keys are an error).
using MetricFactory = std::function<std::unique_ptr<Metric>(const Json& options)>;
using SetMetricFactory = std::function<std::unique_ptr<SetMetric>(const Json& options)>;

class MetricRegistry {
 public:
  // info.kind must be per_image for add and set_level for add_set; duplicate names are an error.
  void add(const MetricInfo& info, MetricFactory factory);
  void add_set(const MetricInfo& info, SetMetricFactory factory);
  bool has(const std::string& name) const;
  std::vector<std::string> names() const;  // in the order they were added
  // Unknown name: collage::Error listing the known ones.
  const MetricInfo& info(const std::string& name) const;
  std::unique_ptr<Metric> create(const std::string& name, const Json& options = Json::object()) const;
  std::unique_ptr<SetMetric> create_set(const std::string& name, const Json& options = Json::object()) const;

 private:
  struct Entry {
    MetricInfo info;
    MetricFactory factory;
    SetMetricFactory set_factory;
  };
  const Entry& find(const std::string& name) const;
  std::vector<Entry> entries_;
};

// Adds mask_iou, ciede2000, ssim, lpips, clip_score, clip_image_similarity, clip_layer_score, kid, fid.
void register_builtin_metrics(MetricRegistry& registry);
// A registry holding exactly the built-ins (built once, immutable).
const MetricRegistry& builtin_metrics();

// Why a metric cannot run on this input/context ("" when every need is met).
std::string missing_need(const MetricInfo& info, const ScoreInput& input, const ScoreContext& context);

// Scores one image with the named per-image metrics. Unknown or set-level names throw before any work;
// so do inconsistent input shapes. A metric whose needs are not met is returned skipped.
Scores score_image(const ScoreInput& input, const std::vector<std::string>& metric_names, const ScoreContext& context,
                   const MetricRegistry& registry = builtin_metrics());

// {"value": x|null, "per_layer": [...], "extras": {...}} or {"skipped": true, "reason": "..."};
// NaN is written as null.
Json to_json(const MetricValue& value);
// {name: to_json(value) + "direction" (when the registry knows the name)}.
Json to_json(const Scores& scores, const MetricRegistry& registry = builtin_metrics());
Json to_json(const SetValue& value);  // {"value", "std", "subsets"}
void write_scores_json(const std::string& path, const Scores& scores,
                       const MetricRegistry& registry = builtin_metrics());

// ------------------------------------------------------------------------------------------------
// Building blocks (used by the metrics, public for reuse and tests)

// IoU of two (H, W) masks thresholded at 0.5: |A and B| / |A or B|; NaN when both are empty.
double mask_iou(const at::Tensor& a, const at::Tensor& b);

// sRGB (IEC 61966-2-1) in [0, 1] -> CIELAB (D65 white), (3, H, W) -> (3, H, W) float64.
at::Tensor srgb_to_lab(const at::Tensor& rgb);
// CIEDE2000 colour difference (Sharma, Wu, Dalal 2005) of two L*a*b* colours.
double ciede2000(const std::array<double, 3>& lab1, const std::array<double, 3>& lab2, double kL = 1.0, double kC = 1.0,
                 double kH = 1.0);
// Per-pixel CIEDE2000 of two (3, H, W) Lab images -> (H, W) float64.
at::Tensor ciede2000_map(const at::Tensor& lab1, const at::Tensor& lab2);

// Gaussian-window SSIM (window 11, sigma 1.5, K1 0.01, K2 0.03, data range 1, reflect padding) of two
// (C, H, W) images, per channel and averaged over channels -> (H, W) float64.
at::Tensor ssim_map(const at::Tensor& a, const at::Tensor& b);

// sum(map * weights) / sum(weights) for (H, W) tensors; NaN when sum(weights) < min_weight.
double masked_mean(const at::Tensor& map, const at::Tensor& weights, double min_weight = 0.5);

// Edge fidelity of two (H, W) edge maps (nonzero = edge) inside `weights` (H, W) in [0, 1]: an output edge pixel
// is matched when a reference edge lies within Euclidean distance `radius` pixels, and vice versa.
// precision = sum(w * out * near_ref) / sum(w * out), recall = sum(w * ref * near_out) / sum(w * ref),
// f1 = 2 p r / (p + r) (0 when both are 0; precision 0 when the output has no edge there). All NaN when the
// reference has less than 0.5 pixel of weighted edges there (nothing to hold).
struct EdgeMatch {
  double precision = kNaN, recall = kNaN, f1 = kNaN;
  double ref_edges = 0, out_edges = 0;  // weighted edge-pixel counts
};
EdgeMatch edge_match(const at::Tensor& out_edges, const at::Tensor& ref_edges, const at::Tensor& weights, int radius);
// The tolerance radius of edge_f1 for an image: max(1, round(radius_at_512 * min(H, W) / 512)).
int edge_radius(int64_t height, int64_t width, double radius_at_512 = 2.0);

struct KidOptions {
  int64_t subset_size = 1000;  // capped at min(N_a, N_b)
  int64_t subsets = 100;
  uint64_t seed = 0;  // std::mt19937_64 seed of the subset sampling
};
// Kernel Inception Distance: unbiased MMD^2 with k(x, y) = (x.y / D + 1)^3, averaged over random
// subsets (each drawn without replacement); value = mean, std = population std over subsets.
SetValue kid(const at::Tensor& a, const at::Tensor& b, const KidOptions& options = {});
// Frechet distance of Gaussians fitted to the rows (unbiased covariances).
double fid(const at::Tensor& a, const at::Tensor& b);

// The table `collage score` prints: per metric its direction, value and per-layer values; then the skip reasons.
std::string format_scores_table(const Scores& scores, const std::vector<std::string>& names,
                                const std::vector<std::string>& layer_labels,
                                const MetricRegistry& registry = builtin_metrics());

}  // namespace collage::metrics
#include "metrics/plugins.h"  // the model-backed metrics are part of the public interface
