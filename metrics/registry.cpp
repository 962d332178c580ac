// The metric and segmenter registries, input checks, score_image and the JSON form of scores.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>

#include "core/core.h"
#include "metrics/metrics.h"
#include "metrics/metrics_internal.h"

namespace collage::metrics {

// ------------------------------------------------------------------------------------------------
// Names

const char* direction_name(Direction d) {
  return d == Direction::higher_is_better ? "higher_is_better" : "lower_is_better";
}

const char* need_name(Need n) {
  switch (n) {
    case Need::image:
      return "image";
    case Need::collage:
      return "collage";
    case Need::layers:
      return "layers";
    case Need::visible_masks:
      return "visible_masks";
    case Need::layer_texts:
      return "layer_texts";
    case Need::prompt:
      return "prompt";
    case Need::segmenter:
      return "segmenter";
    case Need::embedder:
      return "embedder";
    case Need::perceptual:
      return "perceptual";
    case Need::reference_set:
      return "reference_set";
  }
  return "?";
}

namespace {
constexpr Need kAllNeeds[] = {Need::image,  Need::collage,   Need::layers,   Need::visible_masks, Need::layer_texts,
                              Need::prompt, Need::segmenter, Need::embedder, Need::perceptual,    Need::reference_set};

std::string join_names(const std::vector<std::string>& names) { return fmt::format("{}", fmt::join(names, ", ")); }
}  // namespace

Needs::Needs(std::initializer_list<Need> needs) {
  for (Need n : needs) bits_ |= static_cast<uint32_t>(n);
}

std::vector<Need> Needs::list() const {
  std::vector<Need> out;
  for (Need n : kAllNeeds)
    if (has(n)) out.push_back(n);
  return out;
}

std::vector<std::string> Needs::names() const {
  std::vector<std::string> out;
  for (Need n : list()) out.emplace_back(need_name(n));
  return out;
}

MetricValue MetricValue::skip(std::string reason) {
  MetricValue v;
  v.skipped = true;
  v.skip_reason = std::move(reason);
  return v;
}

// ------------------------------------------------------------------------------------------------
// Registries

void MetricRegistry::add(const MetricInfo& info, MetricFactory factory) {
  COLLAGE_CHECK(!info.name.empty(), "a metric needs a name");
  COLLAGE_CHECK(info.kind == MetricKind::per_image, "metric '{}': add() takes per-image metrics (use add_set)",
                info.name);
  COLLAGE_CHECK(!has(info.name), "metric '{}' is registered twice", info.name);
  COLLAGE_CHECK(factory != nullptr, "metric '{}': no factory", info.name);
  entries_.push_back({info, std::move(factory), nullptr});
}

void MetricRegistry::add_set(const MetricInfo& info, SetMetricFactory factory) {
  COLLAGE_CHECK(!info.name.empty(), "a metric needs a name");
  COLLAGE_CHECK(info.kind == MetricKind::set_level, "metric '{}': add_set() takes set-level metrics (use add)",
                info.name);
  COLLAGE_CHECK(!has(info.name), "metric '{}' is registered twice", info.name);
  COLLAGE_CHECK(factory != nullptr, "metric '{}': no factory", info.name);
  entries_.push_back({info, nullptr, std::move(factory)});
}

bool MetricRegistry::has(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.info.name == name) return true;
  return false;
}

std::vector<std::string> MetricRegistry::names() const {
  std::vector<std::string> out;
  for (const auto& e : entries_) out.push_back(e.info.name);
  return out;
}

const MetricRegistry::Entry& MetricRegistry::find(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.info.name == name) return e;
  throw Error(fmt::format("unknown metric '{}' (known: {})", name, join_names(names())), "", name);
}

const MetricInfo& MetricRegistry::info(const std::string& name) const { return find(name).info; }

std::unique_ptr<Metric> MetricRegistry::create(const std::string& name, const Json& options) const {
  const Entry& e = find(name);
  if (!e.factory)
    throw Error(fmt::format("metric '{}' is set-level (it compares two feature sets): use create_set, not a "
                            "per-image score",
                            name),
                "", name);
  auto metric = e.factory(options);
  COLLAGE_CHECK(metric != nullptr, "metric '{}': the factory returned nothing", name);
  return metric;
}

std::unique_ptr<SetMetric> MetricRegistry::create_set(const std::string& name, const Json& options) const {
  const Entry& e = find(name);
  if (!e.set_factory)
    throw Error(fmt::format("metric '{}' is a per-image metric: use create / score_image, not create_set", name), "",
                name);
  auto metric = e.set_factory(options);
  COLLAGE_CHECK(metric != nullptr, "metric '{}': the factory returned nothing", name);
  return metric;
}

void register_builtin_metrics(MetricRegistry& r) {
  using N = Need;
  const auto hi = Direction::higher_is_better, lo = Direction::lower_is_better;
  const auto img = MetricKind::per_image;
  r.add({"mask_iou",
         "IoU between each layer's visible mask v_i and that object's segmentation in the output",
         hi,
         img,
         {N::image, N::layers, N::visible_masks, N::segmenter}},
        detail::make_mask_iou);
  r.add({"ciede2000",
         "mean CIEDE2000 colour difference between the output and the layer image inside v_i",
         lo,
         img,
         {N::image, N::layers, N::visible_masks}},
        detail::make_ciede2000);
  r.add({"ssim",
         "mean SSIM map (Gaussian window 11, sigma 1.5, RGB) of output vs flattened collage inside v_i",
         hi,
         img,
         {N::image, N::collage, N::visible_masks}},
        detail::make_ssim);
  r.add({"lpips",
         "mean perceptual (LPIPS) distance map of output vs flattened collage inside v_i",
         lo,
         img,
         {N::image, N::collage, N::visible_masks, N::perceptual}},
        detail::make_lpips);
  r.add({"clip_score",
         "CLIPScore of the output and the global prompt: max(100 cos, 0)",
         hi,
         img,
         {N::image, N::prompt, N::embedder}},
        detail::make_clip_score);
  r.add({"clip_image_similarity",
         "max(100 cos, 0) of the CLIP image embeddings of output and flattened collage",
         hi,
         img,
         {N::image, N::collage, N::embedder}},
        detail::make_clip_image_similarity);
  r.add({"clip_layer_score",
         "per layer: CLIPScore of the output cropped to the layer's box and the layer text",
         hi,
         img,
         {N::image, N::visible_masks, N::layer_texts, N::embedder}},
        detail::make_clip_layer_score);
  r.add({"edge_f1",
         "per layer: F1 of the output's Canny edges vs the flattened collage's within 2 px (at 512) inside v_i",
         hi,
         img,
         {N::image, N::collage, N::visible_masks}},
        detail::make_edge_f1);
  r.add_set({"kid",
             "Kernel Inception Distance: unbiased polynomial-kernel MMD^2 over random subsets",
             lo,
             MetricKind::set_level,
             {N::reference_set}},
            detail::make_kid);
  r.add_set({"fid",
             "Frechet distance between Gaussians fitted to two feature sets",
             lo,
             MetricKind::set_level,
             {N::reference_set}},
            detail::make_fid);
}

const MetricRegistry& builtin_metrics() {
  static const MetricRegistry registry = [] {
    MetricRegistry r;
    register_builtin_metrics(r);
    return r;
  }();
  return registry;
}

void SegmenterRegistry::add(const std::string& name, const std::string& description, SegmenterFactory factory) {
  COLLAGE_CHECK(!name.empty(), "a segmenter needs a name");
  COLLAGE_CHECK(!has(name), "segmenter '{}' is registered twice", name);
  COLLAGE_CHECK(factory != nullptr, "segmenter '{}': no factory", name);
  entries_.push_back({name, description, std::move(factory)});
}

bool SegmenterRegistry::has(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return true;
  return false;
}

std::vector<std::string> SegmenterRegistry::names() const {
  std::vector<std::string> out;
  for (const auto& e : entries_) out.push_back(e.name);
  return out;
}

const SegmenterRegistry::Entry& SegmenterRegistry::find(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return e;
  throw Error(fmt::format("unknown segmenter '{}' (known: {})", name, join_names(names())), "", name);
}

const std::string& SegmenterRegistry::description(const std::string& name) const { return find(name).description; }

std::unique_ptr<Segmenter> SegmenterRegistry::create(const std::string& name, const Json& options) const {
  auto seg = find(name).factory(options);
  COLLAGE_CHECK(seg != nullptr, "segmenter '{}': the factory returned nothing", name);
  return seg;
}

void register_builtin_segmenters(SegmenterRegistry& r) {
  r.add("appearance",
        "weight-free: colour back-projection of the layer's visible pixels near its placement, refined by GrabCut",
        detail::make_appearance_segmenter);
  r.add("dnn", "an ONNX segmentation network (option 'model') run through OpenCV DNN", detail::make_dnn_segmenter);
}

// ------------------------------------------------------------------------------------------------
// Inputs

namespace {
std::string shape(const at::Tensor& t) { return fmt::format("[{}]", fmt::join(t.sizes(), ", ")); }

void check_floating(const at::Tensor& t, const char* field) {
  COLLAGE_CHECK_AT(at::isFloatingType(t.scalar_type()), "", field, "expected a floating-point tensor, got {}",
                   std::string(c10::toString(t.scalar_type())));
  COLLAGE_CHECK_AT(t.device().is_cpu(), "", field, "expected a CPU tensor");
}
}  // namespace

void check_score_input(const ScoreInput& in) {
  COLLAGE_CHECK_AT(in.image.defined(), "", "image", "the output image is required");
  check_floating(in.image, "image");
  COLLAGE_CHECK_AT(in.image.dim() == 3 && in.image.size(0) == 3, "", "image", "expected (3, H, W), got {}",
                   shape(in.image));
  const int64_t H = in.image.size(1), W = in.image.size(2);
  if (in.collage.defined()) {
    check_floating(in.collage, "collage");
    COLLAGE_CHECK_AT(
        in.collage.dim() == 3 && in.collage.size(0) == 3 && in.collage.size(1) == H && in.collage.size(2) == W, "",
        "collage", "expected (3, {}, {}) like the image, got {}", H, W, shape(in.collage));
  }
  int64_t L = -1;
  if (in.layers.defined()) {
    check_floating(in.layers, "layers");
    COLLAGE_CHECK_AT(in.layers.dim() == 4 && in.layers.size(1) == 4 && in.layers.size(2) == H && in.layers.size(3) == W,
                     "", "layers", "expected (L, 4, {}, {}) RGBA layers on the canvas, got {}", H, W, shape(in.layers));
    L = in.layers.size(0);
  }
  if (in.visible_masks.defined()) {
    check_floating(in.visible_masks, "visible_masks");
    COLLAGE_CHECK_AT(in.visible_masks.dim() == 3 && in.visible_masks.size(1) == H && in.visible_masks.size(2) == W, "",
                     "visible_masks", "expected (L, {}, {}), got {}", H, W, shape(in.visible_masks));
    COLLAGE_CHECK_AT(L < 0 || in.visible_masks.size(0) == L, "", "visible_masks", "{} visible masks for {} layers",
                     in.visible_masks.size(0), L);
    L = in.visible_masks.size(0);
  }
  if (!in.layer_texts.empty() && L >= 0)
    COLLAGE_CHECK_AT(static_cast<int64_t>(in.layer_texts.size()) == L, "", "layer_texts",
                     "{} layer texts for {} layers", in.layer_texts.size(), L);
}

int background_layer(const ScoreInput& in) {
  switch (in.background) {
    case BackgroundRule::none:
      return -1;
    case BackgroundRule::first_layer:
      return 0;
    case BackgroundRule::auto_detect:
      if (!in.layers.defined() || in.layers.size(0) == 0) return -1;
      {
        const double covered = (in.layers[0][3] > 0.5).to(at::kDouble).mean().item<double>();
        return covered >= 0.99 ? 0 : -1;
      }
  }
  return -1;
}

std::string missing_need(const MetricInfo& info, const ScoreInput& in, const ScoreContext& ctx) {
  for (Need n : info.needs.list()) {
    switch (n) {
      case Need::image:
        if (!in.image.defined()) return "needs the output image (ScoreInput::image)";
        break;
      case Need::collage:
        if (!in.collage.defined()) return "needs the flattened collage (ScoreInput::collage), not given";
        break;
      case Need::layers:
        if (!in.layers.defined()) return "needs the layer images on the canvas (ScoreInput::layers), not given";
        break;
      case Need::visible_masks:
        if (!in.visible_masks.defined()) return "needs the visible masks v_i (ScoreInput::visible_masks), not given";
        break;
      case Need::layer_texts:
        if (in.layer_texts.empty()) return "needs the layer texts (ScoreInput::layer_texts), not given";
        break;
      case Need::prompt:
        if (in.prompt.empty()) return "needs the global prompt (ScoreInput::prompt), not given";
        break;
      case Need::segmenter:
        if (!ctx.segmenter) return "needs a segmenter (ScoreContext::segmenter), none was set";
        break;
      case Need::embedder:
        if (!ctx.embedder) return "needs an image/text embedding model (ScoreContext::embedder), none was set";
        break;
      case Need::perceptual:
        if (!ctx.perceptual) return "needs a perceptual distance model (ScoreContext::perceptual), none was set";
        break;
      case Need::reference_set:
        return "needs a reference feature set: it is a set-level metric";
    }
  }
  return {};
}

Scores score_image(const ScoreInput& input, const std::vector<std::string>& metric_names, const ScoreContext& context,
                   const MetricRegistry& registry) {
  // Resolve every name first, so a typo fails before any work.
  std::vector<std::unique_ptr<Metric>> metrics;
  for (const auto& name : metric_names) metrics.push_back(registry.create(name));
  check_score_input(input);
  if (context.segmenter) {
    for (size_t i = 0; i < metric_names.size(); ++i)
      if (registry.info(metric_names[i]).needs.has(Need::segmenter) &&
          missing_need(registry.info(metric_names[i]), input, context).empty()) {
        context.segmenter->prepare(input);
        break;
      }
  }
  Scores scores;
  for (size_t i = 0; i < metric_names.size(); ++i) {
    const MetricInfo& info = registry.info(metric_names[i]);
    const std::string missing = missing_need(info, input, context);
    scores[info.name] = missing.empty() ? metrics[i]->score(input, context) : MetricValue::skip(missing);
  }
  return scores;
}

// ------------------------------------------------------------------------------------------------
// JSON

namespace {
Json number(double v) { return std::isfinite(v) ? Json(v) : Json(nullptr); }
}  // namespace

Json to_json(const MetricValue& v) {
  if (v.skipped) return Json{{"skipped", true}, {"reason", v.skip_reason}};
  Json out = Json::object();
  out["value"] = number(v.value);
  if (!v.per_layer.empty()) {
    Json layers = Json::array();
    for (double x : v.per_layer) layers.push_back(number(x));
    out["per_layer"] = layers;
  }
  if (!v.extras.empty()) {
    Json extras = Json::object();
    for (const auto& [k, x] : v.extras) extras[k] = number(x);
    out["extras"] = extras;
  }
  return out;
}

Json to_json(const Scores& scores, const MetricRegistry& registry) {
  Json out = Json::object();
  for (const auto& [name, value] : scores) {
    Json j = to_json(value);
    if (registry.has(name)) j["direction"] = direction_name(registry.info(name).direction);
    out[name] = j;
  }
  return out;
}

Json to_json(const SetValue& v) {
  return Json{{"value", number(v.value)}, {"std", number(v.std)}, {"subsets", v.subsets}};
}

void write_scores_json(const std::string& path, const Scores& scores, const MetricRegistry& registry) {
  write_json_file(path, to_json(scores, registry));
}

// ------------------------------------------------------------------------------------------------
// Shared helpers

namespace detail {

Box mask_box(const at::Tensor& mask, double threshold) {
  auto m = (mask > threshold);
  auto rows = at::nonzero(m.any(1)).flatten();
  auto cols = at::nonzero(m.any(0)).flatten();
  if (rows.numel() == 0 || cols.numel() == 0) return {};
  return {static_cast<int>(cols[0].item<int64_t>()), static_cast<int>(rows[0].item<int64_t>()),
          static_cast<int>(cols[-1].item<int64_t>()) + 1, static_cast<int>(rows[-1].item<int64_t>()) + 1};
}

Box grow_box(const Box& b, double margin, int min_px, int width, int height) {
  if (b.empty()) return b;
  const int gx = std::max(min_px, static_cast<int>(std::lround(margin * b.width())));
  const int gy = std::max(min_px, static_cast<int>(std::lround(margin * b.height())));
  return {std::max(0, b.x0 - gx), std::max(0, b.y0 - gy), std::min(width, b.x1 + gx), std::min(height, b.y1 + gy)};
}

cv::Mat to_rgb8(const at::Tensor& image) {
  auto hwc = image.detach().to(at::kFloat).clamp(0, 1).mul(255.0).round().to(at::kByte).permute({1, 2, 0}).contiguous();
  cv::Mat m(static_cast<int>(hwc.size(0)), static_cast<int>(hwc.size(1)), CV_8UC3, hwc.data_ptr());
  return m.clone();
}

cv::Mat to_mask8(const at::Tensor& mask, double threshold) {
  auto m = (mask.detach() > threshold).to(at::kByte).contiguous();
  cv::Mat out(static_cast<int>(m.size(0)), static_cast<int>(m.size(1)), CV_8U, m.data_ptr());
  return out.clone();
}

at::Tensor from_mask8(const cv::Mat& mask) {
  cv::Mat m = mask.isContinuous() ? mask : mask.clone();
  auto t = at::from_blob(m.data, {m.rows, m.cols}, at::kByte);
  return (t != 0).to(at::kFloat);
}

Options::Options(const Json& options, std::string what)
    : object_(options.is_null() ? Json::object() : options), what_(std::move(what)), reader_(object_, what_) {}

void Options::finish() const {
  auto unused = reader_.unused_keys();
  if (!unused.empty())
    throw Error(fmt::format("unknown option{} {}", unused.size() > 1 ? "s" : "", join_names(unused)), what_,
                unused.front());
}

MetricValue aggregate_layers(std::vector<double> per_layer, int background, const std::string& what) {
  MetricValue v;
  double sum = 0;
  int n = 0;
  for (size_t i = 0; i < per_layer.size(); ++i)
    if (static_cast<int>(i) != background && std::isfinite(per_layer[i])) {
      sum += per_layer[i];
      ++n;
    }
  if (n == 0) {
    v = MetricValue::skip(fmt::format("no object layer could be scored ({})", what));
    v.per_layer = std::move(per_layer);
    return v;
  }
  v.value = sum / n;
  v.per_layer = std::move(per_layer);
  return v;
}

}  // namespace detail
}  // namespace collage::metrics
