// The cn component (per-layer ControlNet) on the tiny reference pipeline and its ControlNet: the control image is the
// collage's Canny edges, the per-pixel scale is sum_i v_i * strength_i * cn_scale, strength 0 everywhere gives
// exactly plain SDEdit, and a layer's strength changes the output only where that layer is.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "methods/methods.h"
#include "tiny_pipeline.h"

using namespace collage;

namespace {

Layer square_layer(const std::string& text, int64_t size, float r, float g, float b, double x, double y, double cs) {
  Layer l = test::square_layer(text, size, r, g, b, x, y);
  l.control_strength = cs;
  return l;
}

Collage scene(double red_control, double blue_control) {
  Collage c;
  c.prompt = "a red square and a blue square on a grey wall";
  c.width = c.height = 32;
  c.layers = {square_layer("grey wall", 32, 0.5f, 0.5f, 0.5f, 0, 0, 0.0),
              square_layer("red square", 10, 1, 0, 0, 2, 2, red_control),
              square_layer("blue square", 10, 0, 0, 1, 20, 20, blue_control)};
  return c;
}

RunSettings settings() {
  RunSettings s;
  s.seeds = {5};
  s.steps = 6;
  s.guidance_scale = 3.0;
  return s;
}

Json cn_params(Json extra = Json::object()) {
  Json p{{"cn_model", test::golden("controlnet/model")}, {"strength", 0.7}};
  for (auto it = extra.begin(); it != extra.end(); ++it) p[it.key()] = it.value();
  return p;
}

}  // namespace

TEST(ControlNetComponent, ScaleMapIsVisibleMaskTimesLayerStrength) {
  auto sd = test::tiny_pipeline();
  auto out = create_method("sdedit+cn", cn_params({{"cn_scale", 0.5}}))->run(scene(1.0, 0.0), *sd, settings());
  const auto& map = out.artefacts.at("control_scale");
  const auto& visible = out.artefacts.at("visible_masks");
  EXPECT_TRUE(at::allclose(map, visible[1] * 0.5));
  const auto& control = out.artefacts.at("control_image");
  ASSERT_EQ(control.sizes(), (at::IntArrayRef{3, 32, 32}));
  EXPECT_GT(control.sum().item<double>(), 0);  // the squares' edges
  EXPECT_TRUE(at::equal(control[0], control[1]) && at::equal(control[1], control[2]));
}

TEST(ControlNetComponent, StrengthZeroIsPlainSdeditAndALayerActsOnlyWhereItIs) {
  auto sd = test::tiny_pipeline();
  auto plain = create_method("sdedit", {{"strength", 0.7}})->run(scene(0, 0), *sd, settings());
  auto zero = create_method("sdedit+cn", cn_params())->run(scene(0, 0), *sd, settings());
  EXPECT_TRUE(at::equal(plain.latents, zero.latents));
  auto held = create_method("sdedit+cn", cn_params())->run(scene(1.0, 0.0), *sd, settings());
  EXPECT_GT((held.latents - plain.latents).abs().max().item<double>(), 1e-4);
  auto every = create_method("sdedit+cn", cn_params({{"cn_strength", 0.0}}))->run(scene(1.0, 1.0), *sd, settings());
  EXPECT_TRUE(at::equal(plain.latents, every.latents));  // cn_strength overrides every layer's own
}

TEST(ControlNetComponent, ComposesAndNamesAMissingModel) {
  EXPECT_NO_THROW(MethodSpec::parse("sdedit+ca+ti+ln+cn"));
  EXPECT_NO_THROW(MethodSpec::parse("edit+cn", {{"edit_from", "x.png"}, {"edit_regenerate", "1"}}));
  auto msg = test::expect_error([] { MethodSpec::parse("cn", {{"cn_low", 300.0}}); });
  EXPECT_NE(msg.find("cn_low"), std::string::npos) << msg;
  auto sd = test::tiny_pipeline();
  msg = test::expect_error(
      [&] { create_method("sdedit+cn", {{"cn_model", "/no/such/controlnet"}})->run(scene(1, 0), *sd, settings()); });
  EXPECT_NE(msg.find("/no/such/controlnet"), std::string::npos) << msg;
}
