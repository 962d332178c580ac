// The metrics wired to the real models (golden tiny CLIP, golden LPIPS heads + random backbones), the ShapesWorld
// segmenter plugin on rendered scenes, and an end-to-end score of the example collage (metrics/plugins.h).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <iostream>

#include "collage/collage.h"
#include "core/core.h"
#include "datasets/shapesworld/shapesworld.h"
#include "metrics/plugins.h"
#include "test_util.h"

using namespace collage;
namespace cm = collage::metrics;
namespace sw = collage::shapesworld;
namespace fs = std::filesystem;

namespace {

std::string example_collage() {
  // tests/data -> repository root -> datasets/examples/circle_and_square
  return (fs::path(COLLAGE_TEST_DATA).parent_path().parent_path() / "datasets" / "examples" / "circle_and_square")
      .string();
}

std::shared_ptr<cm::ClipEmbedder> golden_clip() {
  return cm::ClipEmbedder::load(test::golden("clip"), test::golden("tokenizer"));
}

// A ShapesWorld scene as collage layers: background (opaque) + each object's RGBA; visible masks from the renderer.
cm::ScoreInput scene_input(const sw::SceneSpec& scene, int size) {
  const auto rendered = sw::render(scene, size, size);
  std::vector<at::Tensor> layers;
  auto bg = sw::render_background(scene, size, size);
  layers.push_back(at::cat({bg, at::ones({1, size, size}, bg.options())}, 0));
  std::vector<at::Tensor> visible{at::zeros({size, size})};
  cm::ScoreInput in;
  in.layer_texts.push_back(sw::background_phrase(scene.background));
  for (const auto& o : rendered.objects) {
    layers.push_back(sw::render_object_rgba(o.spec, scene, size, size));
    visible.push_back(o.visible_mask.to(at::kFloat));
    in.layer_texts.push_back(sw::object_phrase(o.spec));
  }
  in.image = rendered.image;
  in.layers = at::stack(layers);
  in.visible_masks = at::stack(visible);
  in.background = cm::BackgroundRule::first_layer;
  return in;
}

}  // namespace

TEST(ClipEmbedder, ReproducesGoldenScores) {
  auto clip = golden_clip();
  const auto cases = load_safetensors(test::golden("clip/cases.safetensors"));
  const Json tok = read_json_file(test::golden("tokenizer/cases.json"));
  std::vector<std::string> prompts;
  for (int row : {1, 2, 35, 0, 38}) prompts.push_back(tok["cases"][row]["text"].get<std::string>());

  // The tokenizer gives the golden ids; the towers the golden features.
  EXPECT_TRUE(at::equal(clip->tokenize(prompts), cases.at("input_ids")));
  auto txt = clip->embed_texts(prompts);
  auto img = clip->embed_pixel_values(cases.at("pixel_values"));
  EXPECT_TRUE(at::allclose(txt, cases.at("text_embeds_unnormalized"), 1e-4, 1e-5));
  EXPECT_TRUE(at::allclose(img, cases.at("image_embeds_unnormalized"), 1e-4, 1e-5));

  // The documented CLIP-score pairs (image, prompt) -> 100 cos.
  const std::vector<std::pair<int, int>> pairs{{0, 0}, {1, 1}, {2, 2}, {0, 3}, {1, 4}, {2, 0}};
  const std::vector<double> expected{-7.2154, 21.7062, 13.5529, 47.8621, 22.1557, -14.7653};
  for (size_t k = 0; k < pairs.size(); ++k) {
    const double cos =
        clip_cos100(img[pairs[k].first].unsqueeze(0), txt[pairs[k].second].unsqueeze(0)).item<double>();
    EXPECT_NEAR(cos, expected[k], 1e-3) << "pair " << k;
  }

  // Images in [0, 1] go through the processor (any size) to (B, proj).
  auto e = clip->embed_images(at::rand({2, 3, 40, 56}));
  EXPECT_EQ(e.sizes(), (at::IntArrayRef{2, 16}));
}

TEST(ClipEmbedder, MissingTokenizerNamesPaths) {
  const auto msg = test::expect_error([] { cm::ClipEmbedder::load(test::golden("clip")); });
  EXPECT_NE(msg.find("vocab.json"), std::string::npos) << msg;
  std::string reason;
  EXPECT_EQ(cm::try_load_clip(test::golden("clip"), "/nonexistent/tok", reason), nullptr);
  EXPECT_NE(reason.find("/nonexistent/tok"), std::string::npos) << reason;
}

TEST(LpipsDistance, GoldenValue) {
  auto lpips = cm::LpipsDistance::load(test::golden("lpips"), LpipsNet::Alex);
  const auto cases = load_safetensors(test::golden("lpips/cases.safetensors"));
  // The golden inputs are in [-1, 1]; the adapter takes [0, 1].
  auto a = (cases.at("sq.in0") + 1) / 2, b = (cases.at("sq.in1") + 1) / 2;
  auto d = lpips->distance(a, b);
  EXPECT_TRUE(at::allclose(d, cases.at("alex.sq.value"), 1e-4, 1e-6))
      << d.item<double>() << " vs " << cases.at("alex.sq.value").item<double>();
  auto map = lpips->distance_map(a, b);
  EXPECT_TRUE(at::allclose(map, cases.at("alex.sq.spatial"), 1e-4, 1e-6));
}

TEST(LpipsDistance, MissingBackboneIsSkippedWithReason) {
  const auto dir = test::temp_dir("lpips_heads_only");
  fs::copy_file(test::golden("lpips/heads_alex.safetensors"), dir + "/heads_alex.safetensors");
  std::string reason;
  auto lpips = cm::try_load_lpips(dir, LpipsNet::Alex, reason);
  EXPECT_EQ(lpips, nullptr);
  EXPECT_NE(reason.find("backbone_alexnet.safetensors"), std::string::npos) << reason;

  cm::ModelSetup setup;
  setup.perceptual_skip_reason = reason;
  cm::ScoreInput in;
  in.image = at::rand({3, 16, 16});
  in.collage = in.image.clone();
  in.visible_masks = at::ones({1, 16, 16});
  auto s = cm::score_with_setup(in, {"lpips", "ssim"}, setup);
  EXPECT_TRUE(s.at("lpips").skipped);
  EXPECT_EQ(s.at("lpips").skip_reason, reason);
  EXPECT_FALSE(s.at("ssim").skipped);
}

TEST(ShapesWorldSegmenter, ColourFromText) {
  EXPECT_EQ(cm::shapesworld_colour_of("red circle"), "red");
  EXPECT_EQ(cm::shapesworld_colour_of("striped Blue star"), "blue");
  EXPECT_EQ(cm::shapesworld_colour_of("a circle"), "");
  EXPECT_EQ(cm::shapesworld_shape_of("two green squares"), "square");
  EXPECT_TRUE(cm::all_segmenters().has("shapesworld"));
  EXPECT_TRUE(cm::all_segmenters().has("appearance"));
}

TEST(ShapesWorldSegmenter, MaskIouOnRenderedScenes) {
  auto seg = cm::all_segmenters().create("shapesworld");
  cm::ScoreContext ctx;
  ctx.segmenter = std::move(seg);
  double sum = 0;
  int n = 0;
  for (uint64_t seed = 0; seed < 12; ++seed) {
    const auto scene = sw::sample_scene(seed);
    auto in = scene_input(scene, 64);
    EXPECT_EQ(cm::auto_segmenter_name(in), "shapesworld");
    auto s = cm::score_image(in, {"mask_iou"}, ctx);
    ASSERT_FALSE(s.at("mask_iou").skipped) << s.at("mask_iou").skip_reason;
    EXPECT_GE(s.at("mask_iou").value, 0.9) << "seed " << seed;
    sum += s.at("mask_iou").value;
    ++n;
  }
  EXPECT_GE(sum / n, 0.93);
}

TEST(Integration, ExampleCollageAgainstItself) {
  const Collage collage = load_collage(example_collage());
  auto image = flatten(collage);
  auto in = cm::score_input_from_collage(collage, image);
  EXPECT_EQ(in.layers.size(0), 3);
  EXPECT_EQ(cm::auto_segmenter_name(in), "shapesworld");

  cm::ModelSetup setup;
  setup.context.segmenter = cm::all_segmenters().create("shapesworld");
  setup.context.embedder = golden_clip();
  setup.context.perceptual = cm::LpipsDistance::load(test::golden("lpips"), LpipsNet::Alex);
  const auto names = cm::per_image_metric_names();
  EXPECT_EQ(names.size(), 8u);
  auto s = cm::score_with_setup(in, names, setup);
  for (const auto& n : names) EXPECT_FALSE(s.at(n).skipped) << n << ": " << s.at(n).skip_reason;
  for (const auto& n : names) std::cout << "  " << n << " = " << s.at(n).value << "\n";
  EXPECT_GE(s.at("mask_iou").value, 0.9);
  // The anti-aliased layer edges mix each layer with what is under it, so only the edge pixels differ from the
  // layer's own colour: small, not 0 (the hard-alpha version below is exactly 0).
  EXPECT_LT(s.at("ciede2000").value, 3.0);
  EXPECT_NEAR(s.at("ssim").value, 1.0, 1e-9);
  EXPECT_NEAR(s.at("edge_f1").value, 1.0, 1e-9);  // the collage's own edges, all found
  EXPECT_NEAR(s.at("lpips").value, 0.0, 1e-6);
  EXPECT_NEAR(s.at("clip_image_similarity").value, 100.0, 1e-3);
  EXPECT_TRUE(std::isfinite(s.at("clip_score").extras.at("raw")));
  EXPECT_TRUE(std::isfinite(s.at("clip_layer_score").value));

  // The same collage with hard (0/1) alpha: the flattened image IS each layer's colour on v_i.
  auto hard = in;
  hard.layers = in.layers.clone();
  hard.layers.select(1, 3).copy_(in.layers.select(1, 3).gt(0.5).to(at::kFloat));
  hard.visible_masks = visible_masks(hard.layers);
  hard.collage = flatten_layers(hard.layers, collage.background);
  hard.image = hard.collage.clone();
  auto h = cm::score_with_setup(hard, {"mask_iou", "ciede2000", "ssim", "lpips"}, setup);
  EXPECT_GE(h.at("mask_iou").value, 0.9);
  EXPECT_EQ(h.at("ciede2000").value, 0.0);
  EXPECT_NEAR(h.at("ssim").value, 1.0, 1e-9);
  EXPECT_NEAR(h.at("lpips").value, 0.0, 1e-6);

  // A wrong canvas size is an error naming both sizes.
  const auto msg = test::expect_error([&] { cm::score_input_from_collage(collage, at::zeros({3, 32, 32})); });
  EXPECT_NE(msg.find("32x32"), std::string::npos) << msg;
}
