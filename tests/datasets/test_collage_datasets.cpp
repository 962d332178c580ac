#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>

#include "core/core.h"
#include "datasets/collage_datasets.h"
#include "datasets/shapesworld/shapesworld.h"
#include "test_util.h"

using namespace collage;
namespace sw = collage::shapesworld;

TEST(ShapesWorldCollages, DeterministicValidAndPlacedLikeTheTarget) {
  datasets::ShapesWorldCollageOptions o;
  o.seed = 3;
  int64_t objects = 0, unnamed = 0, unnamed_pattern = 0, unnamed_shade = 0;
  for (uint64_t i = 0; i < 40; ++i) {
    auto c = datasets::make_shapesworld_collage(i, o);
    auto again = datasets::make_shapesworld_collage(i, o);
    ASSERT_EQ(c.prompt, again.prompt);
    ASSERT_TRUE(torch::equal(flatten(c), flatten(again)));
    EXPECT_NO_THROW(validate_collage(c));
    EXPECT_EQ(c.width, 64);
    auto target = sw::scene_from_json(c.meta["target_scene"]);
    ASSERT_EQ(c.layers.size(), target.objects.size() + 1);
    auto rendered = sw::render(target, 64, 64);
    auto v = visible_masks(place_layers(c));
    for (size_t k = 0; k < target.objects.size(); ++k) {
      const auto& layer = c.layers[k + 1];
      ++objects;
      // The layer sits where the target scene has its object.
      auto a = v[static_cast<int64_t>(k + 1)] > 0.5, b = rendered.objects[k].visible_mask > 0.5;
      const double iou = (a & b).sum().item<double>() / std::max(1.0, (a | b).sum().item<double>());
      EXPECT_GT(iou, 0.9) << "collage " << i << " object " << k;
      // The text names shape and colour; unnamed_appearance flags what it leaves out.
      const auto& obj = target.objects[k];
      EXPECT_NE(layer.text.find(obj.shape), std::string::npos);
      EXPECT_NE(layer.text.find(obj.colour), std::string::npos);
      const bool pattern_named = layer.text.find(obj.pattern) != std::string::npos;
      EXPECT_EQ(layer.meta["unnamed_pattern"].get<bool>(), obj.pattern != "plain" && !pattern_named);
      EXPECT_EQ(layer.meta["unnamed_shade"].get<bool>(), obj.shade != 0);
      EXPECT_EQ(layer.meta["unnamed_appearance"].get<bool>(),
                (obj.pattern != "plain" && !pattern_named) || obj.shade != 0);
      unnamed += layer.meta["unnamed_appearance"].get<bool>();
      unnamed_pattern += layer.meta["unnamed_pattern"].get<bool>();
      unnamed_shade += layer.meta["unnamed_shade"].get<bool>();
      EXPECT_NE(c.prompt.find(layer.text), std::string::npos);
    }
    // Naive: the collage is not the target render (other lights and tints, no shadows).
    EXPECT_GT((flatten(c) - rendered.image).abs().mean().item<double>(), 0.005) << "collage " << i;
  }
  EXPECT_GT(unnamed, objects / 5);  // TI has something to learn on a fair share of layers
  EXPECT_LT(unnamed, objects);
  EXPECT_GT(unnamed_pattern, 0);  // both kinds occur, so reports can compare them
  EXPECT_GT(unnamed_shade, 0);
}

TEST(ShapesWorldCollages, DatasetFolderWithIndex) {
  auto dir = test::temp_dir("sw_dataset");
  datasets::ShapesWorldCollageOptions o;
  auto folders = datasets::make_shapesworld_dataset(5, o, dir);
  ASSERT_EQ(folders.size(), 5u);
  auto listed = list_collages(dir);
  EXPECT_EQ(listed, folders);
  auto c = load_collage(listed[3]);
  EXPECT_TRUE(torch::allclose(flatten(c), flatten(datasets::make_shapesworld_collage(3, o)), 0, 2.0 / 255));
  auto msg = test::expect_error([&] { datasets::make_shapesworld_dataset(0, o, dir); });
  EXPECT_NE(msg.find("--n"), std::string::npos);
}

TEST(ShapesWorldCollages, KeptLayerChangesOnlyOneLayersStrength) {
  datasets::ShapesWorldCollageOptions plain, kept = plain;
  plain.seed = kept.seed = 5;
  kept.kept_strength = 0.25;
  std::set<size_t> chosen;
  for (uint64_t i = 0; i < 20; ++i) {
    auto a = datasets::make_shapesworld_collage(i, plain), b = datasets::make_shapesworld_collage(i, kept);
    // The same collage otherwise: prompt, texts and pixels.
    ASSERT_EQ(a.prompt, b.prompt);
    ASSERT_EQ(a.layers.size(), b.layers.size());
    ASSERT_TRUE(torch::equal(flatten(a), flatten(b)));
    int64_t n_kept = 0;
    EXPECT_FALSE(b.layers[0].meta.contains("kept") && b.layers[0].meta["kept"].get<bool>());  // never the background
    for (size_t k = 0; k < b.layers.size(); ++k) {
      EXPECT_EQ(a.layers[k].text, b.layers[k].text);
      const bool is_kept = b.layers[k].meta.value("kept", false);
      n_kept += is_kept;
      if (is_kept) chosen.insert(k);
      EXPECT_DOUBLE_EQ(b.layers[k].noise_strength, is_kept ? 0.25 : plain.noise_strength) << i << " " << k;
      EXPECT_FALSE(a.layers[k].meta.contains("kept"));
    }
    EXPECT_EQ(n_kept, 1) << "collage " << i;
  }
  EXPECT_GT(chosen.size(), 1u);  // not always the same layer
  kept.kept_strength = 1.5;
  auto msg = test::expect_error([&] { datasets::make_shapesworld_collage(0, kept); });
  EXPECT_NE(msg.find("kept_strength"), std::string::npos) << msg;
}

// w_pos: 1 in every layer by default (what the measurements support), the given value otherwise; nothing else
// about the collage changes, and a value outside [0, 1] is refused naming w_pos.
TEST(ShapesWorldCollages, WPosIsWrittenIntoEveryLayer) {
  datasets::ShapesWorldCollageOptions ones, zeros;
  zeros.w_pos = 0;
  for (uint64_t i = 0; i < 5; ++i) {
    auto a = datasets::make_shapesworld_collage(i, ones), b = datasets::make_shapesworld_collage(i, zeros);
    ASSERT_EQ(a.prompt, b.prompt);
    ASSERT_TRUE(torch::equal(flatten(a), flatten(b)));
    for (size_t k = 0; k < a.layers.size(); ++k) {
      EXPECT_DOUBLE_EQ(a.layers[k].w_pos, 1.0) << i << " " << k;
      EXPECT_DOUBLE_EQ(b.layers[k].w_pos, 0.0) << i << " " << k;
    }
  }
  zeros.w_pos = -0.5;
  auto msg = test::expect_error([&] { datasets::make_shapesworld_collage(0, zeros); });
  EXPECT_NE(msg.find("w_pos"), std::string::npos) << msg;
}

// --unnamed-colour: the same collages (pixels, layout) whose texts drop the colour of some objects, flagged
// unnamed_colour (and so unnamed_appearance) exactly where the text lacks it.
TEST(ShapesWorldCollages, UnnamedColourDropsTheColourFromTextsOnly) {
  datasets::ShapesWorldCollageOptions plain, control = plain;
  plain.seed = control.seed = 6;
  control.unnamed_colour_probability = 0.5;
  int64_t layers = 0, dropped = 0;
  for (uint64_t i = 0; i < 20; ++i) {
    auto a = datasets::make_shapesworld_collage(i, plain), b = datasets::make_shapesworld_collage(i, control);
    ASSERT_EQ(a.layers.size(), b.layers.size());
    ASSERT_TRUE(torch::equal(flatten(a), flatten(b)));
    for (size_t k = 1; k < b.layers.size(); ++k) {
      const auto& obj = b.layers[k].meta["object"];
      const bool named = b.layers[k].text.find(obj["colour"].get<std::string>()) != std::string::npos;
      EXPECT_EQ(b.layers[k].meta["unnamed_colour"].get<bool>(), !named) << i << " " << k;
      EXPECT_FALSE(a.layers[k].meta["unnamed_colour"].get<bool>());
      if (!named) EXPECT_TRUE(b.layers[k].meta["unnamed_appearance"].get<bool>());
      EXPECT_NE(b.prompt.find(b.layers[k].text), std::string::npos);
      ++layers;
      dropped += !named;
    }
  }
  EXPECT_GT(dropped, layers / 4);
  EXPECT_LT(dropped, layers * 3 / 4);
}
