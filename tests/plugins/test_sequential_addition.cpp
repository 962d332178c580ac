// The example method plugin (experiments/plugins/sequential_addition.cpp), compiled in through COLLAGE_PLUGIN_DIRS:
// it is in the registry like a built-in, runs one pass per added layer, and keeps everything outside the layer
// being regenerated.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "methods/methods.h"
#include "tiny_pipeline.h"

using namespace collage;

namespace {

Layer square_layer(const std::string& text, int64_t size, float r, float g, float b, double x, double y, double s) {
  Layer l = test::square_layer(text, size, r, g, b, x, y);
  l.noise_strength = s;
  return l;
}

// 32x32: a grey wall, a red square top left, a blue square bottom right.
Collage scene(double red_strength, double blue_strength) {
  Collage c;
  c.prompt = "a red square and a blue square on a grey wall";
  c.width = c.height = 32;
  c.layers = {square_layer("grey wall", 32, 0.5f, 0.5f, 0.5f, 0, 0, 0.8),
              square_layer("red square", 8, 1, 0, 0, 2, 2, red_strength),
              square_layer("blue square", 8, 0, 0, 1, 22, 22, blue_strength)};
  return c;
}

RunSettings settings() {
  RunSettings s;
  s.seeds = {3, 4};
  s.steps = 8;
  s.guidance_scale = 3.0;
  return s;
}

}  // namespace

TEST(SequentialAdditionPlugin, IsRegisteredAsABase) {
  const auto* c = method_registry().find("sequential");
  ASSERT_NE(c, nullptr);
  EXPECT_TRUE(c->info().is_base);
  auto spec = MethodSpec::parse("ca+sequential", {{"seq_blur", 0.0}});
  EXPECT_EQ(spec.text, "sequential+ca");
  EXPECT_EQ(spec.number("seq_blur"), 0.0);
  auto msg = test::expect_error([] { MethodSpec::parse("sequential+ln"); });
  EXPECT_NE(msg.find("does not combine with ln"), std::string::npos) << msg;
}

TEST(SequentialAdditionPlugin, RunsOnePassPerLayerAndKeepsTheRest) {
  auto sd = test::tiny_pipeline();
  torch::manual_seed(0);
  auto out = create_method("sequential", {{"seq_blur", 0.0}})->run(scene(0.8, 0.8), *sd, settings());
  ASSERT_EQ(out.images.sizes(), (at::IntArrayRef{2, 3, 32, 32}));
  ASSERT_TRUE(out.artefacts.count("sequential_step.1"));
  ASSERT_TRUE(out.artefacts.count("sequential_step.2"));
  // The last pass regenerated only the blue square: its strength map is the square, 0 elsewhere, and the LN sampler
  // leaves latents with strength 0 at the clean latents of the previous result (with the blue square pasted).
  const auto& map = out.artefacts.at("noise_map");
  EXPECT_NEAR(map.max().item<double>(), 0.8, 1e-6);
  EXPECT_NEAR(map.narrow(0, 0, 16).narrow(1, 0, 16).abs().max().item<double>(), 0.0, 1e-9);
  const auto& x0 = out.artefacts.at("init_latents");
  const int64_t f = 32 / out.latents.size(2);  // the VAE factor
  auto region = [f](const at::Tensor& t, int64_t y, int64_t x, int64_t side) {  // canvas pixels -> latent cells
    return t.narrow(2, y / f, side / f).narrow(3, x / f, side / f);
  };
  const auto latents = out.latents.cpu();
  EXPECT_TRUE(at::equal(region(latents, 12, 12, 6), region(x0, 12, 12, 6)));  // between the squares
  EXPECT_TRUE(at::equal(region(latents, 2, 2, 8), region(x0, 2, 2, 8)));      // the red square, added earlier
  // ...and changed the blue square's latents.
  EXPECT_GT((region(latents, 24, 24, 4) - region(x0, 24, 24, 4)).abs().max().item<double>(), 1e-3);
}

TEST(SequentialAdditionPlugin, ALayerAtStrengthZeroIsPastedWithoutAPass) {
  auto sd = test::tiny_pipeline();
  auto out = create_method("sequential")->run(scene(0.8, 0.0), *sd, settings());
  EXPECT_TRUE(out.artefacts.count("sequential_step.1"));
  EXPECT_FALSE(out.artefacts.count("sequential_step.2"));
  // The blue square is pasted as it is over the first pass's result.
  auto blue = out.images.narrow(2, 23, 6).narrow(3, 23, 6);
  EXPECT_NEAR(blue.select(1, 2).min().item<double>(), 1.0, 1e-6);
  EXPECT_NEAR(blue.select(1, 0).max().item<double>(), 0.0, 1e-6);
}
