#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "core/core.h"
#include "models/unet_2d_condition.h"
#include "parity/parity.h"
#include "test_util.h"

using namespace collage;
using test::expect_all_pass;
using test::expect_error;


TEST(UNet2DCondition, GoldenSd1) {
  parity::Recorder rec("unet_sd1");
  parity::check_unet(test::golden("unet_sd1"), rec);
  expect_all_pass(rec);
  EXPECT_GE(rec.results().size(), 10u);  // out of 3 cases + debug intermediates
}

TEST(UNet2DCondition, GoldenSd2) {
  parity::Recorder rec("unet_sd2");
  parity::check_unet(test::golden("unet_sd2"), rec);
  expect_all_pass(rec);
}

TEST(UNet2DCondition, ParsesRealConfigs) {
  auto sd15 = UNet2DConditionConfig::from_json_file(test::golden("configs/stable-diffusion-v1-5/unet/config.json"));
  EXPECT_EQ(sd15.cross_attention_dim, 768);
  EXPECT_EQ(sd15.heads_for_block(0), 8);
  EXPECT_FALSE(sd15.use_linear_projection);
  auto sd21 = UNet2DConditionConfig::from_json_file(test::golden("configs/stable-diffusion-2-1/unet/config.json"));
  EXPECT_EQ(sd21.cross_attention_dim, 1024);
  EXPECT_EQ(sd21.heads_for_block(0), 5);
  EXPECT_EQ(sd21.heads_for_block(3), 20);
  EXPECT_TRUE(sd21.use_linear_projection);
  EXPECT_TRUE(sd21.upcast_attention);
  // SD 1.5 has 16 transformer blocks with self + cross attention each = 32 Attention modules (built with
  // narrow channels: the structure is what is checked, and full width takes 40 s to initialise).
  sd15.block_out_channels = {32, 32, 32, 32};
  sd15.cross_attention_dim = 32;
  UNet2DConditionModelImpl unet(sd15);
  EXPECT_EQ(unet.attention_layers().size(), 32u);
  EXPECT_EQ(unet.attention_layers()[1]->path(), "down_blocks.0.attentions.0.transformer_blocks.0.attn2");
}

TEST(UNet2DCondition, WrongShapeNamesKeyAndShapes) {
  const auto dir = test::temp_dir("unet_bad");
  std::filesystem::copy_file(test::golden("unet_sd1/config.json"), dir + "/config.json");
  auto weights = load_safetensors(test::golden("unet_sd1/diffusion_pytorch_model.safetensors"));
  weights["conv_in.weight"] = torch::zeros({16, 4, 1, 1});
  save_safetensors(dir + "/diffusion_pytorch_model.safetensors", weights);
  try {
    UNet2DConditionModelImpl::load(dir);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("conv_in.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[16,4,1,1]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[16,4,3,3]"), std::string::npos) << msg;
  }
}

TEST(UNet2DCondition, MissingKeyAndMissingFile) {
  const auto dir = test::temp_dir("unet_missing");
  std::filesystem::copy_file(test::golden("unet_sd1/config.json"), dir + "/config.json");
  EXPECT_THROW(UNet2DConditionModelImpl::load(dir), Error);  // no weights at all
  auto weights = load_safetensors(test::golden("unet_sd1/diffusion_pytorch_model.safetensors"));
  weights.erase("mid_block.resnets.0.conv1.bias");
  save_safetensors(dir + "/diffusion_pytorch_model.safetensors", weights);
  try {
    UNet2DConditionModelImpl::load(dir);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing key 'mid_block.resnets.0.conv1.bias'"), std::string::npos) << e.what();
  }
}

TEST(UNet2DCondition, ProcessorSeesCrossAttentionContext) {
  auto unet = UNet2DConditionModelImpl::load(test::golden("unet_sd1"));
  auto cases = load_safetensors(test::golden("unet_sd1/cases.safetensors"));
  struct Recording : ScoreHookProcessor {
    std::vector<AttnContext> seen;
    void observe_probs(const at::Tensor& probs, const AttnContext& ctx) override {
      seen.push_back(ctx);
      EXPECT_EQ(probs.size(2), ctx.height * ctx.width);
    }
  };
  auto rec = std::make_shared<Recording>();
  const int n = unet->set_attn_processor([](const Attention& a) { return a->is_cross(); }, rec);
  EXPECT_GT(n, 0);
  torch::NoGradGuard g;
  StepInfo step;
  step.index = 3;
  auto out = unet->forward(cases["b2.sample"], cases["b2.timestep"], cases["b2.encoder_hidden_states"], &step);
  EXPECT_EQ(static_cast<int>(rec->seen.size()), n);
  for (const auto& ctx : rec->seen) {
    EXPECT_TRUE(ctx.is_cross);
    EXPECT_NE(ctx.path.find("attn2"), std::string::npos);
    ASSERT_NE(ctx.step, nullptr);
    EXPECT_EQ(ctx.step->index, 3);
  }
  // The score-hook processor computes the same attention as the default one.
  EXPECT_TRUE(torch::allclose(out, cases["b2.out"], 1e-4, 1e-5));
  unet->reset_attn_processors();
  EXPECT_THROW(unet->set_attn_processors({{"down_blocks.9.nope", rec}}), Error);
}

TEST(UNet2DCondition, ChannelsLastAndPackedConvolutionsKeepParity) {
  auto unet = UNet2DConditionModelImpl::load(test::golden("unet_sd1"));
  auto cases = load_safetensors(test::golden("unet_sd1/cases.safetensors"));
  auto before = load_safetensors(test::golden("unet_sd1/diffusion_pytorch_model.safetensors"));
  torch::NoGradGuard g;
  unet->set_channels_last(true);
  const int packed = pack_large_convs(*unet, 0);  // every convolution, whatever its size
  EXPECT_GT(packed, 20);
  for (const std::string p : {"b2", "b1_ns", "b2_t0d"}) {
    auto out = unet->forward(cases[p + ".sample"], cases[p + ".timestep"], cases[p + ".encoder_hidden_states"]);
    auto c = compare_tensors(out, cases[p + ".out"], 1e-4, 1e-5);
    EXPECT_TRUE(c.pass) << p << ": " << c.describe();
  }
  // Gradients through a packed convolution are refused with a clear message; unpack restores the weights.
  {
    torch::AutoGradMode grad(true);
    auto x = cases["b2.sample"].clone().requires_grad_(true);
    EXPECT_THROW(unet->forward(x, cases["b2.timestep"], cases["b2.encoder_hidden_states"]), Error);
  }
  unpack_convs(*unet);
  for (const auto& p : unet->named_parameters())
    if (p.value().dim() == 4) EXPECT_TRUE(torch::equal(p.value(), before.at(p.key()))) << p.key();
}
