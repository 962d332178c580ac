// ControlNetModel, the UNet's residual inputs, the ControlNet model function (CFG, guess mode) and Canny, against
// the golden controlnet/ set and by construction.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <set>

#include "core/canny.h"
#include "core/core.h"
#include "diffusion/controlnet.h"
#include "models/controlnet.h"
#include "parity/parity.h"
#include "test_util.h"

using namespace collage;
using test::expect_all_pass;
using test::expect_error;

namespace {

std::shared_ptr<StableDiffusion> golden_sd() {
  ComponentPaths paths;
  paths.tokenizer = test::golden("tokenizer");
  paths.text_encoder = test::golden("text_encoder_sd1");
  paths.unet = test::golden("unet_sd1");
  paths.vae = test::golden("vae");
  paths.scheduler_config = test::golden("pipeline/scheduler/scheduler_config.json");
  return StableDiffusion::load(paths);
}

}  // namespace

TEST(ControlNet, GoldenEveryCase) {
  parity::Recorder rec("controlnet");
  parity::check_controlnet(test::golden("controlnet"), rec);
  expect_all_pass(rec);
  std::map<std::string, int> per_part;
  for (const auto& r : rec.results()) per_part[r.component]++;
  // 5 forward cases, 2 per-pixel cases, 2 pipeline runs, 4 Canny images, each with many fields.
  EXPECT_GE(per_part["controlnet/model"], 5 * 11);
  EXPECT_GE(per_part["controlnet/per_pixel"], 2 * 30);
  EXPECT_GE(per_part["controlnet/pipeline"], 2 * 20);
  EXPECT_EQ(per_part["controlnet/canny"], 4 * 3);
}

TEST(ControlNet, ConfigAndWeightsFromTheFile) {
  auto net = ControlNetModelImpl::load(test::golden("controlnet/model"));
  const auto& c = net->config();
  EXPECT_EQ(c.conditioning_embedding_out_channels, (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(c.conditioning_downscale(), 2);
  EXPECT_EQ(c.unet.block_out_channels, (std::vector<int64_t>{16, 32, 32}));
  std::set<std::string> keys;
  for (const auto& p : net->named_parameters()) keys.insert(p.key());
  EXPECT_EQ(keys.size(), 250u);  // every tensor of the file (README: 250 keys)
  EXPECT_TRUE(keys.count("controlnet_cond_embedding.blocks.1.weight"));
  EXPECT_TRUE(keys.count("controlnet_down_blocks.8.bias"));
  EXPECT_TRUE(keys.count("controlnet_mid_block.weight"));
  EXPECT_EQ(net->attention_layers().size(), 10u);  // (2 cross-attention down blocks x 2 layers + mid) x (self, cross)
}

TEST(ControlNet, BadConfigNamesTheKey) {
  auto json = read_json_file(test::golden("controlnet/model/config.json"));
  json["controlnet_conditioning_channel_order"] = "rbg";
  auto msg = expect_error([&] { ControlNetConfig::from_json(json, "cfg.json"); });
  EXPECT_NE(msg.find("controlnet_conditioning_channel_order"), std::string::npos) << msg;
  json = read_json_file(test::golden("controlnet/model/config.json"));
  json["class_embed_type"] = "timestep";
  msg = expect_error([&] { ControlNetConfig::from_json(json, "cfg.json"); });
  EXPECT_NE(msg.find("class_embed_type"), std::string::npos) << msg;
}

TEST(ControlNet, UNetResidualsAddToSkipsAndMid) {
  torch::NoGradGuard no_grad;
  auto unet = UNet2DConditionModelImpl::load(test::golden("unet_sd1"));
  auto gen = at::detail::createCPUGenerator(3);
  auto x = at::randn({1, 4, 16, 16}, gen), ctx = at::randn({1, 77, 32}, gen);
  auto t = at::tensor({500}, at::kLong);
  auto plain = unet->forward(x, t, ctx);
  auto net = ControlNetModelImpl::load(test::golden("controlnet/model"));
  auto res = net->forward(x, t, ctx, at::rand({1, 3, 32, 32}, gen), 1.0);
  UNetResiduals zeros;
  for (const auto& r : res.down) zeros.down.push_back(at::zeros_like(r));
  zeros.mid = at::zeros_like(res.mid);
  EXPECT_TRUE(at::equal(unet->forward(x, t, ctx, nullptr, nullptr, &zeros), plain));
  EXPECT_FALSE(at::allclose(unet->forward(x, t, ctx, nullptr, nullptr, &res), plain));
  // Scale 0 gives zero residuals; a map of ones equals scale 1.
  auto cond = at::rand({1, 3, 32, 32}, gen);
  auto at0 = net->forward(x, t, ctx, cond, 0.0);
  EXPECT_EQ(at0.mid.abs().max().item<float>(), 0.0f);
  auto one = net->forward(x, t, ctx, cond, 1.0), map = net->forward(x, t, ctx, cond, ControlScale(at::ones({32, 32})));
  for (size_t k = 0; k < one.down.size(); ++k) EXPECT_TRUE(at::equal(one.down[k], map.down[k])) << k;
  UNetResiduals short_list = res;
  short_list.down.pop_back();
  auto msg = expect_error([&] { unet->forward(x, t, ctx, nullptr, nullptr, &short_list); });
  EXPECT_NE(msg.find("skip connections"), std::string::npos) << msg;
  msg = expect_error([&] { net->forward(x, t, ctx, at::rand({1, 3, 16, 16}), 1.0); });
  EXPECT_NE(msg.find("control image"), std::string::npos) << msg;
}

TEST(ControlNet, ModelFnGuessModeRunsOnTheConditionalRowsOnly) {
  torch::NoGradGuard no_grad;
  auto sd = golden_sd();
  auto gen = at::detail::createCPUGenerator(4);
  ControlNetCall call;
  call.net = ControlNetModel(ControlNetModelImpl::load(test::golden("controlnet/model")));
  call.image = at::rand({1, 3, 32, 32}, gen);
  call.scale = 0.8;
  call.guess_mode = true;
  UNetResiduals seen;
  call.on_residuals = [&](const StepInfo&, const UNetResiduals& r) { seen = r; };
  auto fn = controlnet_model_fn(*sd, call);
  auto x = at::randn({1, 4, 16, 16}, gen);
  auto ctx = at::randn({2, 77, 32}, gen);  // [uncond; cond]
  auto t = at::scalar_tensor(400.0);
  StepInfo step;
  step.conditional = {false, true};
  auto out = fn(at::cat({x, x}), t, ctx, step);
  ASSERT_EQ(seen.down.size(), 9u);
  auto expected = call.net->forward(x, t, ctx.narrow(0, 1, 1), call.image, 0.8, true);
  for (size_t k = 0; k < 9; ++k) {
    EXPECT_EQ(seen.down[k][0].abs().max().item<float>(), 0.0f) << k;
    EXPECT_TRUE(at::equal(seen.down[k].narrow(0, 1, 1), expected.down[k])) << k;
  }
  EXPECT_TRUE(at::equal(seen.mid.narrow(0, 1, 1), expected.mid));
  EXPECT_TRUE(at::equal(out, sd->unet->forward(at::cat({x, x}), t, ctx, &step, nullptr, &seen)));
  // Without guess mode every row gets the control image (the unconditional half too).
  call.guess_mode = false;
  controlnet_model_fn(*sd, call)(at::cat({x, x}), t, ctx, step);
  EXPECT_GT(seen.down[0][0].abs().max().item<float>(), 0.0f);
}

TEST(Canny, ExactAgainstOpenCvReference) {
  auto ref = load_safetensors(test::golden("controlnet/canny/canny.safetensors"));
  for (const char* name : {"shapes64", "noisy64", "steps96x80", "rings96x80"}) {
    const std::string n = name;
    auto edges = canny_edges_u8(ref.at(n + ".input_u8"));
    EXPECT_TRUE(at::equal(edges, ref.at(n + ".edges_u8"))) << n;
    auto control = canny_control_image(ref.at(n + ".input_u8").permute({2, 0, 1}).to(at::kFloat) / 255.0);
    EXPECT_TRUE(at::equal(control, ref.at(n + ".control"))) << n;
    // Canny of the grey image is not what the authors compute (the reference differs there).
    auto grey = canny_edges_u8(ref.at(n + ".input_u8").to(at::kFloat).mean(2).round().to(at::kByte));
    EXPECT_FALSE(at::equal(grey, ref.at(n + ".edges_u8"))) << n;
  }
  auto msg = expect_error([] { canny_edges_u8(at::zeros({4, 4, 3})); });
  EXPECT_NE(msg.find("uint8"), std::string::npos) << msg;
}

TEST(Parity, UnknownFolderIsListedNotSkipped) {
  const auto dir = test::temp_dir("parity_unknown");
  std::filesystem::create_directories(dir + "/mystery_model");
  auto results = parity::run_parity(dir);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].component, "mystery_model");
  EXPECT_TRUE(results[0].skipped);
  EXPECT_TRUE(results[0].pass);
}
