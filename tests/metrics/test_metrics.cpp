// Tests of metrics/: registries, score_image and its JSON, mask IoU and segmenters, CIEDE2000 (all 34
// pairs of Sharma, Wu, Dalal 2005), SSIM, the model-backed metrics (with fake models) and KID / FID.
#include <ATen/ATen.h>
#include <opencv2/core.hpp>

#include <cmath>
#include <fstream>

#include "core/json.h"
#include "metrics/metrics.h"
#include "test_util.h"

namespace collage::metrics {
namespace {

using test::expect_error;

// ------------------------------------------------------------------------------------------------
// Scene helpers: layers on a canvas, their visible masks and the flattened collage.

at::Tensor rect_alpha(int H, int W, int x0, int y0, int x1, int y1) {
  auto a = at::zeros({H, W}, at::kFloat);
  a.slice(0, y0, y1).slice(1, x0, x1).fill_(1.0);
  return a;
}

at::Tensor disc_alpha(int H, int W, double cx, double cy, double r) {
  auto ys = at::arange(H, at::kFloat).view({H, 1}), xs = at::arange(W, at::kFloat).view({1, W});
  return (((xs - cx) * (xs - cx) + (ys - cy) * (ys - cy)) <= r * r).to(at::kFloat);
}

at::Tensor solid(int H, int W, double r, double g, double b) {
  return at::tensor({r, g, b}, at::kFloat).view({3, 1, 1}).expand({3, H, W}).contiguous();
}

struct Scene {
  at::Tensor layers, visible, collage;
};

// Back-to-front "over" on a grey canvas; v_i = alpha_i * prod_{j>i} (1 - alpha_j).
Scene make_scene(const std::vector<std::pair<at::Tensor, at::Tensor>>& rgb_alpha) {
  const int64_t H = rgb_alpha[0].second.size(0), W = rgb_alpha[0].second.size(1);
  std::vector<at::Tensor> layers, visible;
  auto canvas = at::full({3, H, W}, 0.5, at::kFloat);
  for (const auto& [rgb, alpha] : rgb_alpha) {
    layers.push_back(at::cat({rgb, alpha.unsqueeze(0)}, 0));
    canvas = alpha * rgb + (1 - alpha) * canvas;
  }
  for (size_t i = 0; i < rgb_alpha.size(); ++i) {
    auto v = rgb_alpha[i].second.clone();
    for (size_t j = i + 1; j < rgb_alpha.size(); ++j) v = v * (1 - rgb_alpha[j].second);
    visible.push_back(v);
  }
  return {at::stack(layers), at::stack(visible), canvas};
}

// 32x32: background (layer 0, full), a red rectangle (layer 1), a blue rectangle (layer 2) partly on top.
ScoreInput three_layer_input() {
  const int H = 32, W = 32;
  auto scene = make_scene({{solid(H, W, 0.2, 0.6, 0.3), at::ones({H, W})},
                           {solid(H, W, 0.9, 0.1, 0.1), rect_alpha(H, W, 2, 2, 14, 14)},
                           {solid(H, W, 0.1, 0.1, 0.9), rect_alpha(H, W, 10, 10, 24, 24)}});
  ScoreInput in;
  in.image = scene.collage.clone();
  in.collage = scene.collage;
  in.layers = scene.layers;
  in.visible_masks = scene.visible;
  in.layer_texts = {"a meadow", "a red box", "a blue box"};
  in.prompt = "a red box and a blue box on a meadow";
  return in;
}

// Returns fixed masks per layer index (what a perfect or a known-imperfect segmenter would say).
class FixedSegmenter : public Segmenter {
 public:
  explicit FixedSegmenter(std::map<int, at::Tensor> masks) : masks_(std::move(masks)) {}
  void prepare(const ScoreInput&) override { ++prepared; }
  at::Tensor segment_layer(const at::Tensor& image, const at::Tensor&, const at::Tensor&, int i) override {
    ++calls;
    auto it = masks_.find(i);
    return it != masks_.end() ? it->second : at::zeros({image.size(1), image.size(2)});
  }
  int prepared = 0, calls = 0;

 private:
  std::map<int, at::Tensor> masks_;
};

// A fake embedder for wiring tests: an image's embedding is its mean RGB colour; a text's is looked up.
class FakeEmbedder : public ImageTextEmbedder {
 public:
  at::Tensor embed_images(const at::Tensor& images) override {
    ++image_calls;
    return images.mean({2, 3}).to(at::kFloat);
  }
  at::Tensor embed_texts(const std::vector<std::string>& texts) override {
    std::vector<at::Tensor> rows;
    for (const auto& t : texts) {
      if (t.find("anti-red") != std::string::npos)
        rows.push_back(at::tensor({-1.0f, 0.0f, 0.0f}));
      else if (t.find("red") != std::string::npos)
        rows.push_back(at::tensor({1.0f, 0.0f, 0.0f}));
      else if (t.find("blue") != std::string::npos)
        rows.push_back(at::tensor({0.0f, 0.0f, 1.0f}));
      else
        rows.push_back(at::tensor({0.0f, 1.0f, 0.0f}));
    }
    return at::stack(rows);
  }
  int image_calls = 0;
};

// A fake perceptual distance for wiring tests: mean absolute difference over channels.
class FakePerceptual : public PerceptualDistance {
 public:
  at::Tensor distance_map(const at::Tensor& a, const at::Tensor& b) override {
    return (a - b).abs().mean(1, /*keepdim=*/true);
  }
};

// ------------------------------------------------------------------------------------------------
// Registry

TEST(MetricRegistry, BuiltinsHaveNamesDescriptionsDirectionsAndNeeds) {
  const auto& r = builtin_metrics();
  EXPECT_EQ(r.names(), (std::vector<std::string>{"mask_iou", "ciede2000", "ssim", "lpips", "clip_score",
                                                 "clip_image_similarity", "clip_layer_score", "edge_f1", "kid",
                                                 "fid"}));
  for (const auto& name : r.names()) {
    const auto& info = r.info(name);
    EXPECT_EQ(info.name, name);
    EXPECT_FALSE(info.description.empty()) << name;
    EXPECT_FALSE(info.needs.list().empty()) << name;
    if (info.kind == MetricKind::per_image)
      EXPECT_NE(r.create(name), nullptr) << name;
    else
      EXPECT_NE(r.create_set(name), nullptr) << name;
  }
  EXPECT_EQ(r.info("mask_iou").direction, Direction::higher_is_better);
  EXPECT_EQ(r.info("ssim").direction, Direction::higher_is_better);
  EXPECT_EQ(r.info("clip_score").direction, Direction::higher_is_better);
  EXPECT_EQ(r.info("ciede2000").direction, Direction::lower_is_better);
  EXPECT_EQ(r.info("lpips").direction, Direction::lower_is_better);
  EXPECT_EQ(r.info("kid").direction, Direction::lower_is_better);
  EXPECT_EQ(r.info("kid").kind, MetricKind::set_level);
  EXPECT_TRUE(r.info("mask_iou").needs.has(Need::segmenter));
  EXPECT_TRUE(r.info("lpips").needs.has(Need::perceptual));
  EXPECT_TRUE(r.info("clip_score").needs.has(Need::embedder));
  EXPECT_TRUE(r.info("clip_score").needs.has(Need::prompt));
  EXPECT_TRUE(r.info("clip_layer_score").needs.has(Need::layer_texts));
  EXPECT_TRUE(r.info("fid").needs.has(Need::reference_set));
  EXPECT_EQ(r.info("ciede2000").needs.names(), (std::vector<std::string>{"image", "layers", "visible_masks"}));
}

TEST(MetricRegistry, UnknownNameListsTheValidOnes) {
  const std::string msg = expect_error([] { builtin_metrics().create("mask_io"); });
  EXPECT_NE(msg.find("unknown metric 'mask_io'"), std::string::npos) << msg;
  for (const char* name : {"mask_iou", "ciede2000", "ssim", "lpips", "clip_score", "kid", "fid"})
    EXPECT_NE(msg.find(name), std::string::npos) << msg;
  // score_image fails on the name before scoring anything.
  auto in = three_layer_input();
  auto seg = std::make_shared<FixedSegmenter>(std::map<int, at::Tensor>{});
  ScoreContext ctx;
  ctx.segmenter = seg;
  const std::string msg2 = expect_error([&] { score_image(in, {"mask_iou", "sssim"}, ctx); });
  EXPECT_NE(msg2.find("'sssim'"), std::string::npos) << msg2;
  EXPECT_EQ(seg->calls, 0);
}

TEST(MetricRegistry, KindMismatchAndDuplicatesAreErrors) {
  const auto& r = builtin_metrics();
  EXPECT_NE(expect_error([&] { r.create("kid"); }).find("set-level"), std::string::npos);
  EXPECT_NE(expect_error([&] { r.create_set("ssim"); }).find("per-image"), std::string::npos);
  EXPECT_NE(expect_error([] { score_image(three_layer_input(), {"fid"}, {}); }).find("set-level"), std::string::npos);
  MetricRegistry mine;
  register_builtin_metrics(mine);
  EXPECT_NE(expect_error([&] { register_builtin_metrics(mine); }).find("registered twice"), std::string::npos);
  // Unknown options are refused, naming the key.
  const std::string msg = expect_error([&] { r.create_set("kid", Json{{"subset", 10}}); });
  EXPECT_NE(msg.find("subset"), std::string::npos) << msg;
}

// A metric added from outside goes through score_image like a built-in.
TEST(MetricRegistry, CustomMetricThroughScoreImage) {
  class MeanBrightness : public Metric {
   public:
    MetricValue score(const ScoreInput& in, const ScoreContext&) override {
      MetricValue v;
      v.value = in.image.mean().item<double>();
      return v;
    }
  };
  MetricRegistry r;
  r.add({"brightness", "mean pixel value", Direction::higher_is_better, MetricKind::per_image, {Need::image}},
        [](const Json&) { return std::make_unique<MeanBrightness>(); });
  ScoreInput in;
  in.image = at::full({3, 4, 4}, 0.25, at::kFloat);
  auto s = score_image(in, {"brightness"}, {}, r);
  EXPECT_DOUBLE_EQ(s.at("brightness").value, 0.25);
  EXPECT_EQ(to_json(s, r)["brightness"]["direction"], "higher_is_better");
}

// ------------------------------------------------------------------------------------------------
// Inputs, skipping, JSON

TEST(ScoreInput, ShapeMismatchNamesTheField) {
  auto in = three_layer_input();
  in.visible_masks = in.visible_masks.slice(0, 0, 2);
  std::string msg = expect_error([&] { check_score_input(in); });
  EXPECT_NE(msg.find("visible_masks"), std::string::npos) << msg;
  in = three_layer_input();
  in.collage = at::zeros({3, 16, 16});
  msg = expect_error([&] { check_score_input(in); });
  EXPECT_NE(msg.find("collage"), std::string::npos) << msg;
  in = three_layer_input();
  in.layer_texts.pop_back();
  msg = expect_error([&] { check_score_input(in); });
  EXPECT_NE(msg.find("layer_texts"), std::string::npos) << msg;
  in = ScoreInput{};
  EXPECT_NE(expect_error([&] { check_score_input(in); }).find("image"), std::string::npos);
}

TEST(ScoreInput, BackgroundRule) {
  auto in = three_layer_input();
  EXPECT_EQ(background_layer(in), 0);  // layer 0 covers the canvas
  in.background = BackgroundRule::none;
  EXPECT_EQ(background_layer(in), -1);
  in.background = BackgroundRule::auto_detect;
  in.layers = in.layers.slice(0, 1, 3);  // first layer is now the red rectangle
  EXPECT_EQ(background_layer(in), -1);
  in.background = BackgroundRule::first_layer;
  EXPECT_EQ(background_layer(in), 0);
  ScoreInput no_layers;
  no_layers.image = at::zeros({3, 4, 4});
  EXPECT_EQ(background_layer(no_layers), -1);
}

TEST(ScoreImage, MissingInputOrModelIsSkippedWithAReason) {
  auto in = three_layer_input();
  in.collage = at::Tensor();
  in.prompt.clear();
  auto s = score_image(in, {"ssim", "lpips", "clip_score", "mask_iou", "ciede2000"}, {});
  for (const char* name : {"ssim", "lpips", "clip_score", "mask_iou"}) {
    EXPECT_TRUE(s.at(name).skipped) << name;
    EXPECT_TRUE(std::isnan(s.at(name).value)) << name;
  }
  EXPECT_NE(s.at("ssim").skip_reason.find("collage"), std::string::npos) << s.at("ssim").skip_reason;
  EXPECT_NE(s.at("clip_score").skip_reason.find("prompt"), std::string::npos) << s.at("clip_score").skip_reason;
  EXPECT_NE(s.at("mask_iou").skip_reason.find("segmenter"), std::string::npos) << s.at("mask_iou").skip_reason;
  // The weight-free metric still runs.
  EXPECT_FALSE(s.at("ciede2000").skipped);
  in = three_layer_input();
  s = score_image(in, {"lpips", "clip_image_similarity"}, {});
  EXPECT_NE(s.at("lpips").skip_reason.find("perceptual"), std::string::npos) << s.at("lpips").skip_reason;
  EXPECT_NE(s.at("clip_image_similarity").skip_reason.find("embedding"), std::string::npos);
}

TEST(ScoreImage, JsonHasValuesNullsReasonsAndDirections) {
  auto in = three_layer_input();
  ScoreContext ctx;
  ctx.segmenter = std::make_shared<FixedSegmenter>(std::map<int, at::Tensor>{{1, in.visible_masks[1]}});
  auto s = score_image(in, {"mask_iou", "lpips", "ssim"}, ctx);
  const std::string path = test::temp_dir("metrics_json") + "/scores.json";
  write_scores_json(path, s);
  Json j = read_json_file(path);
  EXPECT_EQ(j["mask_iou"]["direction"], "higher_is_better");
  EXPECT_TRUE(j["mask_iou"]["per_layer"][0].is_null());  // background
  EXPECT_DOUBLE_EQ(j["mask_iou"]["per_layer"][1].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(j["mask_iou"]["per_layer"][2].get<double>(), 0.0);  // segmenter found nothing
  EXPECT_DOUBLE_EQ(j["mask_iou"]["value"].get<double>(), 0.5);
  EXPECT_EQ(j["lpips"]["skipped"], true);
  EXPECT_NE(j["lpips"]["reason"].get<std::string>().find("perceptual"), std::string::npos);
  EXPECT_EQ(j["lpips"]["direction"], "lower_is_better");
  EXPECT_DOUBLE_EQ(j["ssim"]["value"].get<double>(), 1.0);
  EXPECT_EQ(to_json(SetValue{1.5, 0.25, 10}), (Json{{"value", 1.5}, {"std", 0.25}, {"subsets", 10}}));
}

// ------------------------------------------------------------------------------------------------
// Mask IoU

TEST(MaskIou, KnownRectangles) {
  const int H = 10, W = 10;
  auto a = rect_alpha(H, W, 0, 0, 4, 4), b = rect_alpha(H, W, 2, 2, 6, 6);  // overlap 2x2 = 4, union 28
  EXPECT_DOUBLE_EQ(mask_iou(a, b), 4.0 / 28.0);
  EXPECT_DOUBLE_EQ(mask_iou(a, a), 1.0);
  EXPECT_DOUBLE_EQ(mask_iou(a, rect_alpha(H, W, 5, 5, 9, 9)), 0.0);
  EXPECT_TRUE(std::isnan(mask_iou(at::zeros({H, W}), at::zeros({H, W}))));
  // Thresholded at 0.5 (strictly above): a soft 0.5 is outside, 0.51 inside.
  EXPECT_DOUBLE_EQ(mask_iou(a * 0.5, a), 0.0);
  EXPECT_DOUBLE_EQ(mask_iou(a * 0.51, a), 1.0);
  // 0..5 x 0..2 vs 0..2 x 0..5: overlap 4, union 16.
  EXPECT_DOUBLE_EQ(mask_iou(rect_alpha(H, W, 0, 0, 5, 2), rect_alpha(H, W, 0, 0, 2, 5)), 4.0 / 16.0);
}

TEST(MaskIou, PerLayerAndMeanOverObjectLayers) {
  auto in = three_layer_input();
  const int H = 32, W = 32;
  // Layer 1's visible mask is its rectangle minus the part under layer 2: 12x12 - 4x4 = 128 pixels.
  ASSERT_EQ((in.visible_masks[1] > 0.5).sum().item<int64_t>(), 128);
  // The segmenter finds layer 1 exactly and layer 2 shifted by 7 pixels right: 7x14 of 14x14 overlap.
  auto seg = std::make_shared<FixedSegmenter>(std::map<int, at::Tensor>{
      {0, at::ones({H, W})}, {1, in.visible_masks[1].clone()}, {2, rect_alpha(H, W, 17, 10, 31, 24)}});
  ScoreContext ctx;
  ctx.segmenter = seg;
  auto v = score_image(in, {"mask_iou"}, ctx).at("mask_iou");
  ASSERT_FALSE(v.skipped) << v.skip_reason;
  ASSERT_EQ(v.per_layer.size(), 3u);
  EXPECT_TRUE(std::isnan(v.per_layer[0]));  // background: not scored
  EXPECT_DOUBLE_EQ(v.per_layer[1], 1.0);
  EXPECT_DOUBLE_EQ(v.per_layer[2], 98.0 / 294.0);
  EXPECT_DOUBLE_EQ(v.value, (1.0 + 98.0 / 294.0) / 2.0);
  EXPECT_EQ(seg->prepared, 1);
  EXPECT_EQ(seg->calls, 2);

  // Without the background rule layer 0 is an object too: v_0 = canvas minus both rectangles.
  in.background = BackgroundRule::none;
  v = score_image(in, {"mask_iou"}, ctx).at("mask_iou");
  const double v0 = (in.visible_masks[0] > 0.5).sum().item<double>() / (H * W);
  EXPECT_DOUBLE_EQ(v.per_layer[0], v0);
  EXPECT_DOUBLE_EQ(v.value, (v0 + 1.0 + 98.0 / 294.0) / 3.0);
}

TEST(MaskIou, HiddenLayerIsNaNAndAllHiddenIsSkipped) {
  auto in = three_layer_input();
  in.visible_masks[2].zero_();
  ScoreContext ctx;
  ctx.segmenter = std::make_shared<FixedSegmenter>(std::map<int, at::Tensor>{{1, in.visible_masks[1]}});
  auto v = score_image(in, {"mask_iou"}, ctx).at("mask_iou");
  EXPECT_TRUE(std::isnan(v.per_layer[2]));
  EXPECT_DOUBLE_EQ(v.value, 1.0);
  in.visible_masks[1].zero_();
  v = score_image(in, {"mask_iou"}, ctx).at("mask_iou");
  EXPECT_TRUE(v.skipped);
  EXPECT_NE(v.skip_reason.find("no object layer"), std::string::npos) << v.skip_reason;
}

// ------------------------------------------------------------------------------------------------
// Segmenters

TEST(Segmenters, RegistryNamesErrorsAndPlugins) {
  SegmenterRegistry r;
  register_builtin_segmenters(r);
  EXPECT_EQ(r.names(), (std::vector<std::string>{"appearance", "dnn"}));
  const std::string msg = expect_error([&] { r.create("shapes"); });
  EXPECT_NE(msg.find("appearance"), std::string::npos) << msg;
  EXPECT_NE(msg.find("dnn"), std::string::npos) << msg;
  // Someone else's segmenter plugs in by name.
  r.add("fixed", "test", [](const Json&) { return std::make_unique<FixedSegmenter>(std::map<int, at::Tensor>{}); });
  EXPECT_TRUE(r.has("fixed"));
  EXPECT_NE(r.create("fixed"), nullptr);
  EXPECT_NE(expect_error([&] { r.add("fixed", "again", [](const Json&) { return nullptr; }); }).find("twice"),
            std::string::npos);
  EXPECT_NE(expect_error([&] { r.create("appearance", Json{{"margins", 1}}); }).find("margins"), std::string::npos);
  EXPECT_NE(expect_error([&] { r.create("dnn"); }).find("model"), std::string::npos);
  const std::string missing = expect_error([&] { r.create("dnn", Json{{"model", "/nonexistent/seg.onnx"}}); });
  EXPECT_NE(missing.find("/nonexistent/seg.onnx"), std::string::npos) << missing;
}

// A textured background, a red disc moved and recoloured a little by "harmonisation".
struct DiscScene {
  ScoreInput in;
  at::Tensor true_disc;  // where the disc is in the output
};

DiscScene disc_scene(bool remove_object) {
  const int H = 96, W = 96;
  auto gen = at::detail::createCPUGenerator(7);
  auto noise = at::rand({3, H, W}, gen) * 0.15;
  auto background = solid(H, W, 0.25, 0.45, 0.3) + noise;
  auto placed = disc_alpha(H, W, 40, 44, 14);
  auto scene = make_scene({{background, at::ones({H, W})}, {solid(H, W, 0.85, 0.15, 0.1), placed}});
  auto moved = disc_alpha(H, W, 44, 46, 14);
  auto output = background.clone();
  if (!remove_object) output = moved * solid(H, W, 0.78, 0.2, 0.12) + (1 - moved) * output;
  DiscScene d;
  d.in.image = output.clamp(0, 1);
  d.in.collage = scene.collage;
  d.in.layers = scene.layers;
  d.in.visible_masks = scene.visible;
  d.true_disc = remove_object ? at::zeros({H, W}) : moved;
  return d;
}

TEST(Segmenters, AppearanceFindsTheMovedObject) {
  SegmenterRegistry r;
  register_builtin_segmenters(r);
  auto seg = r.create("appearance");
  auto d = disc_scene(false);
  auto mask = seg->segment_layer(d.in.image, d.in.layers[1], d.in.visible_masks[1], 1);
  ASSERT_EQ(mask.sizes(), (std::vector<int64_t>{96, 96}));
  EXPECT_GT(mask_iou(mask, d.true_disc), 0.9);
  // So mask_iou measures how far the object moved: close to IoU(placed, moved).
  ScoreContext ctx;
  ctx.segmenter = std::move(seg);
  auto v = score_image(d.in, {"mask_iou"}, ctx).at("mask_iou");
  const double expected = mask_iou(d.in.visible_masks[1], d.true_disc);
  EXPECT_NEAR(v.value, expected, 0.06) << "expected about " << expected;
  EXPECT_TRUE(std::isnan(v.per_layer[0]));
}

// Harder: a shaded, textured object, a colour cast and a blur over the whole output, an occluder, and
// a patch of similar colour in the background near the object.
TEST(Segmenters, AppearanceSurvivesHarmonisationLikeChanges) {
  const int H = 128, W = 128;
  auto gen = at::detail::createCPUGenerator(11);
  auto ys = at::arange(H, at::kFloat).view({1, H, 1}), xs = at::arange(W, at::kFloat).view({1, 1, W});
  auto background = solid(H, W, 0.35, 0.5, 0.65) + at::rand({3, H, W}, gen) * 0.2 - 0.1 + 0.1 * at::sin(xs / 9.0);
  background = at::where(rect_alpha(H, W, 90, 20, 120, 50).to(at::kBool), solid(H, W, 0.7, 0.4, 0.25), background);
  auto shading = 0.65 + 0.35 * (ys / H) + at::rand({1, H, W}, gen) * 0.1;
  auto object_rgb = solid(H, W, 0.95, 0.55, 0.15) * shading;
  auto occluder_rgb = solid(H, W, 0.9, 0.9, 0.85);
  auto placed = disc_alpha(H, W, 56, 60, 24), occluder = rect_alpha(H, W, 60, 70, 100, 100);
  auto scene = make_scene(
      {{background.clamp(0, 1), at::ones({H, W})}, {object_rgb.clamp(0, 1), placed}, {occluder_rgb, occluder}});
  // The output: the object moved by (5, 3), the occluder stays; then a cast and a 3x3 blur.
  auto moved = disc_alpha(H, W, 61, 63, 24);
  auto shifted_rgb = at::roll(object_rgb, {3, 5}, {1, 2});
  auto output = moved * shifted_rgb + (1 - moved) * background;
  output = occluder * occluder_rgb + (1 - occluder) * output;
  output = (output * at::tensor({0.9f, 1.0f, 1.1f}).view({3, 1, 1}) + 0.03).clamp(0, 1);
  output = at::avg_pool2d(output.unsqueeze(0), 3, 1, 1, false, false).squeeze(0);
  const auto truth = moved * (1 - occluder);  // where the object is visible in the output
  SegmenterRegistry r;
  register_builtin_segmenters(r);
  auto mask = r.create("appearance")->segment_layer(output, scene.layers[1], scene.visible[1], 1);
  const double found = mask_iou(mask, truth), placed_iou = mask_iou(scene.visible[1], truth);
  EXPECT_GT(found, 0.85);
  EXPECT_GT(found, placed_iou + 0.1);  // it found the object, not the placement
}

// A score must not depend on what ran before it in the process (GrabCut draws from OpenCV's global RNG):
// the same noisy image segmented after different RNG histories gives the same mask.
TEST(Segmenters, AppearanceIsTheSameWhateverRanBefore) {
  SegmenterRegistry r;
  register_builtin_segmenters(r);
  auto seg = r.create("appearance");
  auto d = disc_scene(false);
  // Small and noisy (as a tiny model's outputs are): GrabCut's colour models then depend on their k-means start.
  auto small = [](const at::Tensor& t) { return at::avg_pool2d(t.unsqueeze(0), 4).squeeze(0); };
  auto layer = small(d.in.layers[1]);
  auto visible = small(d.in.visible_masks[1].unsqueeze(0)).squeeze(0);
  for (int g : {1, 4}) {
    auto gen = at::detail::createCPUGenerator(g);
    auto image = (small(d.in.image) + (at::rand({3, 24, 24}, gen) - 0.5) * 0.4).clamp(0, 1);
    at::Tensor first;
    for (uint64_t history : {1u, 99u, 12345u, 7u}) {
      cv::theRNG() = cv::RNG(history);
      auto mask = seg->segment_layer(image, layer, visible, 1);
      if (!first.defined())
        first = mask;
      else
        EXPECT_TRUE(at::equal(mask, first)) << "image " << g << ", RNG state " << history;
    }
  }
}

TEST(Segmenters, AppearanceFindsNothingWhenTheObjectIsGone) {
  SegmenterRegistry r;
  register_builtin_segmenters(r);
  auto seg = r.create("appearance");
  auto d = disc_scene(true);
  auto mask = seg->segment_layer(d.in.image, d.in.layers[1], d.in.visible_masks[1], 1);
  EXPECT_LT(mask_iou(mask, d.in.visible_masks[1]), 0.1);
}

// A minimal protobuf writer, enough to build a one-node ONNX model (Conv 1x1) for the DNN segmenter.
struct Pb {
  std::string buf;
  void varint(uint64_t v) {
    while (v >= 0x80) {
      buf += static_cast<char>((v & 0x7f) | 0x80);
      v >>= 7;
    }
    buf += static_cast<char>(v);
  }
  Pb& integer(int field, int64_t v) {
    varint(static_cast<uint64_t>(field) << 3);
    varint(static_cast<uint64_t>(v));
    return *this;
  }
  Pb& bytes(int field, const std::string& s) {
    varint((static_cast<uint64_t>(field) << 3) | 2);
    varint(s.size());
    buf += s;
    return *this;
  }
  Pb& message(int field, const Pb& m) { return bytes(field, m.buf); }
};

Pb value_info(const std::string& name, const std::vector<int64_t>& dims) {
  Pb shape;
  for (int64_t d : dims) shape.message(1, Pb().integer(1, d));
  Pb tensor_type;
  tensor_type.integer(1, 1).message(2, shape);  // FLOAT
  return Pb().bytes(1, name).message(2, Pb().message(1, tensor_type));
}

// y = Conv1x1(x, weights (C, 3)), x: (1, 3, size, size).
std::string write_conv_onnx(const std::string& path, const std::vector<float>& weights, int size) {
  const int64_t C = static_cast<int64_t>(weights.size() / 3);
  Pb w;
  for (int64_t d : {C, int64_t{3}, int64_t{1}, int64_t{1}}) w.integer(1, d);
  w.integer(2, 1).bytes(4, std::string(reinterpret_cast<const char*>(weights.data()), weights.size() * 4));
  w.bytes(8, "w");
  Pb attr;
  attr.bytes(1, "kernel_shape").integer(8, 1).integer(8, 1).integer(20, 7);  // INTS
  Pb node;
  node.bytes(1, "x").bytes(1, "w").bytes(2, "y").bytes(3, "conv").bytes(4, "Conv").message(5, attr);
  Pb graph;
  graph.message(1, node).bytes(2, "g").message(5, w).message(11, value_info("x", {1, 3, size, size}));
  graph.message(12, value_info("y", {1, C, size, size}));
  Pb model;
  model.integer(1, 7).bytes(2, "collage-test").message(7, graph).message(8, Pb().bytes(1, "").integer(2, 11));
  std::ofstream(path, std::ios::binary) << model.buf;
  return path;
}

TEST(Segmenters, DnnClassMapAndForegroundMap) {
  const int S = 32;
  // Blue canvas, a red square (layer 1) and a green square (layer 2).
  auto scene = make_scene({{solid(S, S, 0.0, 0.1, 0.9), at::ones({S, S})},
                           {solid(S, S, 0.9, 0.1, 0.0), rect_alpha(S, S, 4, 4, 14, 14)},
                           {solid(S, S, 0.1, 0.9, 0.1), rect_alpha(S, S, 18, 18, 28, 28)}});
  ScoreInput in;
  in.image = scene.collage;
  in.collage = scene.collage;
  in.layers = scene.layers;
  in.visible_masks = scene.visible;
  SegmenterRegistry r;
  register_builtin_segmenters(r);
  const std::string dir = test::temp_dir("metrics_dnn");
  // Class scores = the RGB channels; class 2 (blue) is the background.
  auto classes = r.create("dnn", Json{{"model", write_conv_onnx(dir + "/rgb.onnx", {1, 0, 0, 0, 1, 0, 0, 0, 1}, S)},
                                      {"width", S},
                                      {"height", S},
                                      {"background_class", 2}});
  EXPECT_DOUBLE_EQ(
      mask_iou(classes->segment_layer(in.image, in.layers[1], in.visible_masks[1], 1), in.visible_masks[1]), 1.0);
  EXPECT_DOUBLE_EQ(
      mask_iou(classes->segment_layer(in.image, in.layers[2], in.visible_masks[2], 2), in.visible_masks[2]), 1.0);
  ScoreContext ctx;
  ctx.segmenter = std::move(classes);
  auto v = score_image(in, {"mask_iou"}, ctx).at("mask_iou");
  EXPECT_DOUBLE_EQ(v.value, 1.0);
  // One output channel = red minus blue, thresholded at 0.5: finds the red square only.
  auto fg =
      r.create("dnn", Json{{"model", write_conv_onnx(dir + "/red.onnx", {1, 0, -1}, S)}, {"width", S}, {"height", S}});
  EXPECT_DOUBLE_EQ(mask_iou(fg->segment_layer(in.image, in.layers[1], in.visible_masks[1], 1), in.visible_masks[1]),
                   1.0);
  EXPECT_DOUBLE_EQ(mask_iou(fg->segment_layer(in.image, in.layers[2], in.visible_masks[2], 2), in.visible_masks[2]),
                   0.0);
}

// ------------------------------------------------------------------------------------------------
// CIEDE2000 and CIELAB

// Table 1 of G. Sharma, W. Wu, E. N. Dalal, "The CIEDE2000 color-difference formula: implementation
// notes, supplementary test data, and mathematical observations", Color Res. Appl. 30(1), 2005.
struct SharmaPair {
  double lab1[3], lab2[3], de;
};
const SharmaPair kSharma[34] = {
    {{50.0000, 2.6772, -79.7751}, {50.0000, 0.0000, -82.7485}, 2.0425},
    {{50.0000, 3.1571, -77.2803}, {50.0000, 0.0000, -82.7485}, 2.8615},
    {{50.0000, 2.8361, -74.0200}, {50.0000, 0.0000, -82.7485}, 3.4412},
    {{50.0000, -1.3802, -84.2814}, {50.0000, 0.0000, -82.7485}, 1.0000},
    {{50.0000, -1.1848, -84.8006}, {50.0000, 0.0000, -82.7485}, 1.0000},
    {{50.0000, -0.9009, -85.5211}, {50.0000, 0.0000, -82.7485}, 1.0000},
    {{50.0000, 0.0000, 0.0000}, {50.0000, -1.0000, 2.0000}, 2.3669},
    {{50.0000, -1.0000, 2.0000}, {50.0000, 0.0000, 0.0000}, 2.3669},
    {{50.0000, 2.4900, -0.0010}, {50.0000, -2.4900, 0.0009}, 7.1792},
    {{50.0000, 2.4900, -0.0010}, {50.0000, -2.4900, 0.0010}, 7.1792},
    {{50.0000, 2.4900, -0.0010}, {50.0000, -2.4900, 0.0011}, 7.2195},
    {{50.0000, 2.4900, -0.0010}, {50.0000, -2.4900, 0.0012}, 7.2195},
    {{50.0000, -0.0010, 2.4900}, {50.0000, 0.0009, -2.4900}, 4.8045},
    {{50.0000, -0.0010, 2.4900}, {50.0000, 0.0010, -2.4900}, 4.8045},
    {{50.0000, -0.0010, 2.4900}, {50.0000, 0.0011, -2.4900}, 4.7461},
    {{50.0000, 2.5000, 0.0000}, {50.0000, 0.0000, -2.5000}, 4.3065},
    {{50.0000, 2.5000, 0.0000}, {73.0000, 25.0000, -18.0000}, 27.1492},
    {{50.0000, 2.5000, 0.0000}, {61.0000, -5.0000, 29.0000}, 22.8977},
    {{50.0000, 2.5000, 0.0000}, {56.0000, -27.0000, -3.0000}, 31.9030},
    {{50.0000, 2.5000, 0.0000}, {58.0000, 24.0000, 15.0000}, 19.4535},
    {{50.0000, 2.5000, 0.0000}, {50.0000, 3.1736, 0.5854}, 1.0000},
    {{50.0000, 2.5000, 0.0000}, {50.0000, 3.2972, 0.0000}, 1.0000},
    {{50.0000, 2.5000, 0.0000}, {50.0000, 1.8634, 0.5757}, 1.0000},
    {{50.0000, 2.5000, 0.0000}, {50.0000, 3.2592, 0.3350}, 1.0000},
    {{60.2574, -34.0099, 36.2677}, {60.4626, -34.1751, 39.4387}, 1.2644},
    {{63.0109, -31.0961, -5.8663}, {62.8187, -29.7946, -4.0864}, 1.2630},
    {{61.2901, 3.7196, -5.3901}, {61.4292, 2.2480, -4.9620}, 1.8731},
    {{35.0831, -44.1164, 3.7933}, {35.0232, -40.0716, 1.5901}, 1.8645},
    {{22.7233, 20.0904, -46.6940}, {23.0331, 14.9730, -42.5619}, 2.0373},
    {{36.4612, 47.8580, 18.3852}, {36.2715, 50.5065, 21.2231}, 1.4146},
    {{90.8027, -2.0831, 1.4410}, {91.1528, -1.6435, 0.0447}, 1.4441},
    {{90.9257, -0.5406, -0.9208}, {88.6381, -0.8985, -0.7239}, 1.5381},
    {{6.7747, -0.2908, -2.4247}, {5.8714, -0.0985, -2.2286}, 0.6377},
    {{2.0776, 0.0795, -1.1350}, {0.9033, -0.0636, -0.5514}, 0.9082},
};

TEST(Ciede2000, AllSharmaWuDalalPairsToFourDecimals) {
  for (int i = 0; i < 34; ++i) {
    const auto& p = kSharma[i];
    const std::array<double, 3> a{p.lab1[0], p.lab1[1], p.lab1[2]}, b{p.lab2[0], p.lab2[1], p.lab2[2]};
    // The published values are rounded to 4 decimals; the formula is symmetric.
    EXPECT_NEAR(ciede2000(a, b), p.de, 0.5e-4 + 1e-9) << "pair " << i + 1;
    EXPECT_NEAR(ciede2000(b, a), p.de, 0.5e-4 + 1e-9) << "pair " << i + 1 << " swapped";
  }
  EXPECT_EQ(ciede2000({50, 10, -10}, {50, 10, -10}), 0.0);
}

TEST(Ciede2000, MapMatchesScalarFormula) {
  auto lab1 = at::empty({3, 1, 34}, at::kDouble), lab2 = at::empty({3, 1, 34}, at::kDouble);
  for (int i = 0; i < 34; ++i)
    for (int c = 0; c < 3; ++c) {
      lab1[c][0][i] = kSharma[i].lab1[c];
      lab2[c][0][i] = kSharma[i].lab2[c];
    }
  auto map = ciede2000_map(lab1, lab2);
  for (int i = 0; i < 34; ++i) EXPECT_NEAR(map[0][i].item<double>(), kSharma[i].de, 0.5e-4 + 1e-9) << i + 1;
}

TEST(Ciede2000, SrgbToLabKnownColours) {
  // Pixels: white, red, green, blue, black, grey 0.5 (rows: R, G, B).
  auto px = at::tensor({1.0, 1.0, 0.0, 0.0, 0.0, 0.5,  //
                        1.0, 0.0, 1.0, 0.0, 0.0, 0.5,  //
                        1.0, 0.0, 0.0, 1.0, 0.0, 0.5},
                       at::kDouble)
                .view({3, 1, 6});
  auto lab = srgb_to_lab(px);
  const double expected[6][3] = {
      {100.0, 0.0, 0.0}, {53.2408, 80.0925, 67.2032}, {87.7347, -86.1827, 83.1793}, {32.2970, 79.1875, -107.8602},
      {0.0, 0.0, 0.0},   {53.3889, 0.0, 0.0}};
  for (int k = 0; k < 6; ++k)
    for (int c = 0; c < 3; ++c) EXPECT_NEAR(lab[c][0][k].item<double>(), expected[k][c], 2e-3) << k << "," << c;
}

TEST(Ciede2000, MaskedMetricPerLayer) {
  auto in = three_layer_input();
  auto s = score_image(in, {"ciede2000"}, {});
  auto v = s.at("ciede2000");
  ASSERT_FALSE(v.skipped) << v.skip_reason;
  for (double x : v.per_layer) EXPECT_NEAR(x, 0.0, 1e-9);  // output == collage == layers where visible
  // Recolour the blue rectangle in the output: layer 2's value is the colour difference, layer 1 is
  // untouched (the blue rectangle covers its corner, where v_1 = 0).
  in.image = in.image.clone();
  auto region = rect_alpha(32, 32, 10, 10, 24, 24).to(at::kBool);
  auto recoloured = solid(32, 32, 0.2, 0.2, 0.7);
  in.image = at::where(region, recoloured, in.image);
  v = score_image(in, {"ciede2000"}, {}).at("ciede2000");
  auto lab = [](double r, double g, double b) {
    auto l = srgb_to_lab(solid(1, 1, r, g, b).to(at::kDouble));
    return std::array<double, 3>{l[0][0][0].item<double>(), l[1][0][0].item<double>(), l[2][0][0].item<double>()};
  };
  const double de = ciede2000(lab(0.2f, 0.2f, 0.7f), lab(0.1f, 0.1f, 0.9f));
  EXPECT_GT(de, 5.0);
  EXPECT_NEAR(v.per_layer[2], de, 1e-6);
  EXPECT_NEAR(v.per_layer[1], 0.0, 1e-9);
  EXPECT_NEAR(v.value, de / 2.0, 1e-6);  // background excluded from the mean
}

// ------------------------------------------------------------------------------------------------
// SSIM

TEST(Ssim, SelfIsExactlyOne) {
  auto gen = at::detail::createCPUGenerator(3);
  auto img = at::rand({3, 40, 37}, gen);
  auto map = ssim_map(img, img);
  EXPECT_TRUE(at::all(map == 1.0).item<bool>());
  auto in = three_layer_input();
  auto v = score_image(in, {"ssim"}, {}).at("ssim");
  for (double x : v.per_layer) EXPECT_EQ(x, 1.0);
  EXPECT_EQ(v.value, 1.0);
}

TEST(Ssim, ConstantImagesMatchTheClosedForm) {
  // For constant images the variances vanish: SSIM = (2ab + C1) / (a^2 + b^2 + C1).
  const double a = 0.3, b = 0.6, C1 = 1e-4;
  auto map = ssim_map(at::full({1, 16, 16}, a, at::kDouble), at::full({1, 16, 16}, b, at::kDouble));
  const double expected = (2 * a * b + C1) / (a * a + b * b + C1);
  EXPECT_NEAR(map.min().item<double>(), expected, 1e-12);
  EXPECT_NEAR(map.max().item<double>(), expected, 1e-12);
}

TEST(Ssim, MaskedPerLayerDropsWhereTheOutputChanged) {
  auto in = three_layer_input();
  auto gen = at::detail::createCPUGenerator(5);
  auto noise = (at::rand({3, 32, 32}, gen) - 0.5) * 0.6 * rect_alpha(32, 32, 10, 10, 24, 24);
  in.image = (in.collage + noise).clamp(0, 1);
  auto v = score_image(in, {"ssim"}, {}).at("ssim");
  EXPECT_LT(v.per_layer[2], 0.5);
  EXPECT_GT(v.per_layer[1], v.per_layer[2]);
  EXPECT_NEAR(masked_mean(ssim_map(in.image, in.collage), in.visible_masks[2]), v.per_layer[2], 1e-12);
  EXPECT_TRUE(std::isnan(masked_mean(at::ones({4, 4}), at::zeros({4, 4}))));
}

// ------------------------------------------------------------------------------------------------
// Edge fidelity

// A (10, 10) map with edge pixels at the given (y, x).
at::Tensor edge_map(const std::vector<std::pair<int, int>>& pixels) {
  auto e = at::zeros({10, 10}, at::kByte);
  for (auto [y, x] : pixels) e[y][x] = 255;
  return e;
}
std::vector<std::pair<int, int>> column(int x, int y0, int y1) {
  std::vector<std::pair<int, int>> out;
  for (int y = y0; y < y1; ++y) out.push_back({y, x});
  return out;
}

TEST(EdgeF1, KnownEdgeMapsGiveExactValues) {
  const auto ref = edge_map(column(3, 0, 10));
  const auto all = at::ones({10, 10});
  // The same line 2 px to the right: outside radius 1, inside radius 2.
  auto shifted = edge_match(edge_map(column(5, 0, 10)), ref, all, 1);
  EXPECT_EQ(shifted.precision, 0.0);
  EXPECT_EQ(shifted.recall, 0.0);
  EXPECT_EQ(shifted.f1, 0.0);
  EXPECT_EQ(edge_match(edge_map(column(5, 0, 10)), ref, all, 2).f1, 1.0);
  // Half of the line (rows 0..4) plus a spurious pixel far away; radius 1 also reaches row 5.
  auto half = column(3, 0, 5);
  half.push_back({9, 9});
  auto m = edge_match(edge_map(half), ref, all, 1);
  EXPECT_DOUBLE_EQ(m.recall, 6.0 / 10.0);
  EXPECT_DOUBLE_EQ(m.precision, 5.0 / 6.0);
  EXPECT_DOUBLE_EQ(m.f1, 30.0 / 43.0);
  EXPECT_EQ(m.ref_edges, 10.0);
  EXPECT_EQ(m.out_edges, 6.0);
  // Inside the left half only, the spurious pixel does not count.
  auto left = at::zeros({10, 10});
  left.slice(1, 0, 5).fill_(1.0);
  auto ml = edge_match(edge_map(half), ref, left, 1);
  EXPECT_DOUBLE_EQ(ml.precision, 1.0);
  EXPECT_DOUBLE_EQ(ml.f1, 2 * 0.6 / 1.6);
  // Diagonal neighbours are at distance sqrt(2): matched at radius 2, not at radius 1.
  EXPECT_EQ(edge_match(edge_map({{4, 4}}), edge_map({{5, 5}}), all, 1).f1, 0.0);
  EXPECT_EQ(edge_match(edge_map({{4, 4}}), edge_map({{5, 5}}), all, 2).f1, 1.0);
  // No collage edge in the region: nothing to hold (NaN); no output edge: precision 0, F1 0.
  EXPECT_TRUE(std::isnan(edge_match(ref, edge_map({}), all, 1).f1));
  auto none = edge_match(edge_map({}), ref, all, 1);
  EXPECT_EQ(none.precision, 0.0);
  EXPECT_EQ(none.f1, 0.0);
  // Soft weights count fractionally.
  auto w = at::full({10, 10}, 0.5);
  EXPECT_DOUBLE_EQ(edge_match(edge_map(half), ref, w, 1).ref_edges, 5.0);
  EXPECT_EQ(edge_radius(512, 512), 2);
  EXPECT_EQ(edge_radius(64, 64), 1);
  EXPECT_EQ(edge_radius(768, 1024), 3);
  expect_error([&] { edge_match(ref, ref, at::ones({5, 5}), 1); });
}

TEST(EdgeF1, PerLayerThroughTheRegistry) {
  auto in = three_layer_input();
  auto same = score_image(in, {"edge_f1"}, {}).at("edge_f1");
  ASSERT_FALSE(same.skipped) << same.skip_reason;
  ASSERT_EQ(same.per_layer.size(), 3u);
  for (double v : same.per_layer)
    if (!std::isnan(v)) EXPECT_EQ(v, 1.0);
  EXPECT_EQ(same.per_layer[1], 1.0);
  EXPECT_EQ(same.per_layer[2], 1.0);
  EXPECT_EQ(same.value, 1.0);
  EXPECT_EQ(same.extras.at("whole_image"), 1.0);
  EXPECT_EQ(same.extras.at("radius_px"), 1.0);
  // Flatten the blue box (layer 2) into the meadow colour: its edges go, the red box keeps its own.
  auto blue = rect_alpha(32, 32, 10, 10, 24, 24).unsqueeze(0);
  in.image = in.collage * (1 - blue) + solid(32, 32, 0.2, 0.6, 0.3) * blue;
  auto changed = score_image(in, {"edge_f1"}, {}).at("edge_f1");
  EXPECT_LT(changed.per_layer[2], 0.5);  // only its border with the red box is left
  EXPECT_GT(changed.per_layer[1], 0.8);
  EXPECT_LT(changed.extras.at("whole_image"), 1.0);
  EXPECT_EQ(changed.value, (changed.per_layer[1] + changed.per_layer[2]) / 2);  // layer 0 is the background
  expect_error([] { builtin_metrics().create("edge_f1", Json{{"radius", 2}}); });
}

// ------------------------------------------------------------------------------------------------
// Model-backed metrics through fake models (wiring only)

TEST(ModelMetrics, ClipScoreClampsAndReportsRaw) {
  ScoreInput in;
  in.image = solid(8, 8, 1.0, 0.0, 0.0);  // mean colour (1, 0, 0)
  ScoreContext ctx;
  ctx.embedder = std::make_shared<FakeEmbedder>();
  in.prompt = "a red square";
  auto v = score_image(in, {"clip_score"}, ctx).at("clip_score");
  EXPECT_NEAR(v.value, 100.0, 1e-9);
  EXPECT_NEAR(v.extras.at("raw"), 100.0, 1e-9);
  in.prompt = "an anti-red square";  // cosine -1
  v = score_image(in, {"clip_score"}, ctx).at("clip_score");
  EXPECT_EQ(v.value, 0.0);
  EXPECT_NEAR(v.extras.at("raw"), -100.0, 1e-9);
  in.image = solid(8, 8, 1.0, 0.0, 1.0);  // (1, 0, 1) vs "blue" (0, 0, 1): cosine 1/sqrt(2)
  in.prompt = "blue";
  v = score_image(in, {"clip_score"}, ctx).at("clip_score");
  EXPECT_NEAR(v.value, 100.0 / std::sqrt(2.0), 1e-6);
  EXPECT_TRUE(v.per_layer.empty());
}

TEST(ModelMetrics, ClipImageSimilarityAndLayerScore) {
  auto in = three_layer_input();
  auto embedder = std::make_shared<FakeEmbedder>();
  ScoreContext ctx;
  ctx.embedder = embedder;
  auto s = score_image(in, {"clip_image_similarity", "clip_layer_score"}, ctx);
  EXPECT_NEAR(s.at("clip_image_similarity").value, 100.0, 1e-6);
  // Layer crops: layer 1's box (2..14) holds red (0.9, 0.1, 0.1) except its lower-right 4x4 corner,
  // covered by blue; layer 2's box is all blue (0.1, 0.1, 0.9).
  const auto& v = s.at("clip_layer_score");
  ASSERT_EQ(v.per_layer.size(), 3u);
  auto cos_with = [](at::Tensor mean, at::Tensor axis) {
    return (mean * axis).sum().item<double>() / (mean.norm().item<double>() * axis.norm().item<double>());
  };
  auto crop1 = in.image.slice(1, 2, 14).slice(2, 2, 14).mean({1, 2});
  const double l1 = 100.0 * cos_with(crop1, at::tensor({1.0f, 0.0f, 0.0f}));
  const double l2 = 100.0 * cos_with(at::tensor({0.1f, 0.1f, 0.9f}), at::tensor({0.0f, 0.0f, 1.0f}));
  EXPECT_NEAR(v.per_layer[1], l1, 1e-4);
  EXPECT_NEAR(v.per_layer[2], l2, 1e-4);
  EXPECT_NEAR(v.value, (l1 + l2) / 2, 1e-4);
  // The background's text is scored per layer but not averaged; an empty text is not scored.
  EXPECT_TRUE(std::isfinite(v.per_layer[0]));
  in.layer_texts[0].clear();
  EXPECT_TRUE(std::isnan(score_image(in, {"clip_layer_score"}, ctx).at("clip_layer_score").per_layer[0]));
}

TEST(ModelMetrics, LpipsIsTheMaskedMeanOfTheDistanceMap) {
  auto in = three_layer_input();
  ScoreContext ctx;
  ctx.perceptual = std::make_shared<FakePerceptual>();
  // Brighten the output by 0.2 on layer 1's visible part only.
  in.image = (in.collage + 0.2 * in.visible_masks[1].unsqueeze(0)).contiguous();
  auto v = score_image(in, {"lpips"}, ctx).at("lpips");
  ASSERT_FALSE(v.skipped) << v.skip_reason;
  EXPECT_NEAR(v.per_layer[1], 0.2, 1e-6);
  EXPECT_NEAR(v.per_layer[2], 0.0, 1e-7);
  EXPECT_NEAR(v.value, 0.1, 1e-6);
  EXPECT_NEAR(v.extras.at("whole_image"), 0.2 * 128 / 1024, 1e-6);
  // A model that answers the wrong shape is an error, not a number.
  class Broken : public PerceptualDistance {
    at::Tensor distance_map(const at::Tensor& a, const at::Tensor&) override { return a.mean(); }
  };
  ctx.perceptual = std::make_shared<Broken>();
  EXPECT_NE(expect_error([&] { score_image(in, {"lpips"}, ctx); }).find("distance map"), std::string::npos);
}

// ------------------------------------------------------------------------------------------------
// KID and FID

at::Tensor randn(int64_t n, int64_t d, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::randn({n, d}, gen, at::kDouble);
}

TEST(Kid, ClosedFormOnATinyExample) {
  // a = {0, 1}, b = {1, 2}, D = 1, subsets of 2 = the whole sets:
  // within a: k(0,1) = 1; within b: k(1,2) = 3^3 = 27; across: k(0,1) + k(0,2) + k(1,1) + k(1,2) =
  // 1 + 1 + 8 + 27 = 37 -> 1 + 27 - 2 * 37 / 4 = 9.5.
  auto a = at::tensor({0.0, 1.0}, at::kDouble).view({2, 1}), b = at::tensor({1.0, 2.0}, at::kDouble).view({2, 1});
  auto r = kid(a, b, {2, 5, 0});
  EXPECT_NEAR(r.value, 9.5, 1e-12);
  EXPECT_NEAR(r.std, 0.0, 1e-12);
  EXPECT_EQ(r.subsets, 5);
  // The kernel divides by D: the same numbers with the points spread over 2 equal coordinates.
  auto a2 = at::tensor({0.0, 0.0, 1.0, 1.0}, at::kDouble).view({2, 2});
  auto b2 = at::tensor({1.0, 1.0, 2.0, 2.0}, at::kDouble).view({2, 2});
  EXPECT_NEAR(kid(a2, b2, {1000, 3, 1}).value, 9.5, 1e-12);  // subset size capped at 2
  // Through the registry, float32 input.
  auto metric = builtin_metrics().create_set("kid", Json{{"subset_size", 2}, {"subsets", 4}, {"seed", 9}});
  EXPECT_NEAR(metric->compute(a.to(at::kFloat), b.to(at::kFloat)).value, 9.5, 1e-12);
}

TEST(Kid, IdenticalSetsNearZeroAndGrowsWithShift) {
  // With subsets drawn from one set for both sides, the estimator is O(1/m) below 0 (a shared point
  // adds k(x, x) to the cross term); sets from one distribution give ~0 +- noise.
  auto a = randn(1000, 16, 1);
  const KidOptions o{500, 10, 0};
  const double same = kid(a, a, o).value;
  const double indep = kid(a, randn(1000, 16, 2), o).value;
  const double shifted = kid(a, a + 0.5, o).value;
  EXPECT_LT(std::abs(same), 0.1 * shifted) << same << " vs " << shifted;
  EXPECT_LT(std::abs(indep), 0.1 * shifted) << indep << " vs " << shifted;
  double previous = 0;
  for (double shift : {0.1, 0.25, 0.5, 1.0, 2.0}) {
    auto r = kid(a, a + shift, o);
    EXPECT_GT(r.value, previous) << shift;
    EXPECT_GT(r.std, 0.0);
    previous = r.value;
  }
}

TEST(Kid, SeededAndValidated) {
  auto a = randn(50, 4, 3), b = randn(60, 4, 4);
  EXPECT_EQ(kid(a, b, {20, 10, 7}).value, kid(a, b, {20, 10, 7}).value);
  EXPECT_NE(kid(a, b, {20, 10, 7}).value, kid(a, b, {20, 10, 8}).value);
  EXPECT_NE(expect_error([&] { kid(a, randn(10, 5, 1)); }).find("dimensions"), std::string::npos);
  EXPECT_NE(expect_error([&] { kid(a, randn(1, 4, 1)); }).find("at least 2"), std::string::npos);
}

// Rows whose sample mean and (unbiased) covariance are exactly `mean` and diag(var).
at::Tensor with_exact_stats(at::Tensor x, const std::vector<double>& mean, const std::vector<double>& var) {
  x = x - x.mean(0, true);
  auto cov = x.t().mm(x) / (x.size(0) - 1);
  auto [evals, evecs] = at::linalg_eigh(cov);
  auto whiten = evecs.mm(at::diag(evals.rsqrt())).mm(evecs.t());
  auto z = x.mm(whiten);  // identity covariance
  return z * at::tensor(var, at::kDouble).sqrt() + at::tensor(mean, at::kDouble);
}

TEST(Fid, IdenticalSetsAreZero) {
  auto a = randn(64, 8, 5);
  EXPECT_NEAR(fid(a, a), 0.0, 1e-9);
  EXPECT_NEAR(builtin_metrics().create_set("fid")->compute(a, a.clone()).value, 0.0, 1e-9);
}

TEST(Fid, GaussiansWithKnownMomentsMatchTheClosedForm) {
  const std::vector<double> mu_a{0.0, 1.0, -2.0, 0.5}, var_a{1.0, 4.0, 0.25, 2.0};
  const std::vector<double> mu_b{1.0, 1.0, 0.0, -0.5}, var_b{9.0, 1.0, 0.25, 0.5};
  auto a = with_exact_stats(randn(200, 4, 6), mu_a, var_a);
  auto b = with_exact_stats(randn(150, 4, 7), mu_b, var_b);
  // ||mu_a - mu_b||^2 + sum (sqrt(var_a) - sqrt(var_b))^2
  double expected = 0;
  for (int i = 0; i < 4; ++i)
    expected += std::pow(mu_a[i] - mu_b[i], 2) + std::pow(std::sqrt(var_a[i]) - std::sqrt(var_b[i]), 2);
  EXPECT_NEAR(fid(a, b), expected, 1e-8);  // 1 + 0 + 4 + 1 + 4 + 1 + 0 + (sqrt2 - sqrt0.5)^2 = 11.5
  EXPECT_NEAR(expected, 11.5, 1e-12);
  // Invariant under a rotation of the feature space (non-diagonal covariances).
  auto q = std::get<0>(at::linalg_qr(randn(4, 4, 8)));
  EXPECT_NEAR(fid(a.mm(q), b.mm(q)), expected, 1e-8);
}

TEST(Fid, SingularCovariancesAreFine) {
  // 5 samples in 16 dimensions, all in the first 3 coordinates: the covariances have rank <= 3, and
  // the distance is the one of the 3-dimensional data.
  auto a3 = randn(5, 3, 9), b3 = randn(5, 3, 10) + 1.0;
  auto pad = [](const at::Tensor& x) { return at::cat({x, at::zeros({x.size(0), 13}, at::kDouble)}, 1); };
  const double d16 = fid(pad(a3), pad(b3));
  EXPECT_TRUE(std::isfinite(d16));
  EXPECT_NEAR(d16, fid(a3, b3), 1e-8);
  EXPECT_NEAR(fid(pad(a3), pad(a3)), 0.0, 1e-9);
}

}  // namespace
}  // namespace collage::metrics
