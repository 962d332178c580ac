#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "core/core.h"
#include "models/autoencoder_kl.h"
#include "parity/parity.h"
#include "test_util.h"

using namespace collage;
using test::expect_all_pass;
using test::expect_error;

namespace {

std::string copy_with_weights(const std::string& tag,
                              const std::function<void(std::map<std::string, at::Tensor>&)>& edit) {
  const auto dir = test::temp_dir(tag);
  std::filesystem::copy_file(test::golden("vae/config.json"), dir + "/config.json");
  auto weights = load_safetensors(test::golden("vae/diffusion_pytorch_model.safetensors"));
  edit(weights);
  save_safetensors(dir + "/diffusion_pytorch_model.safetensors", weights);
  return dir;
}

}  // namespace

TEST(AutoencoderKL, Golden) {
  parity::Recorder rec("vae");
  parity::check_vae(test::golden("vae"), rec);
  expect_all_pass(rec);
  EXPECT_EQ(rec.results().size(), 1u + 3u * 6u);  // downscale_factor + 3 cases x (5 encoder fields + dec_out)
}

TEST(AutoencoderKL, ParsesRealConfigs) {
  auto sd15 = AutoencoderKLConfig::from_json_file(test::golden("configs/stable-diffusion-v1-5/vae/config.json"));
  EXPECT_EQ(sd15.block_out_channels, (std::vector<int64_t>{128, 256, 512, 512}));
  EXPECT_EQ(sd15.layers_per_block, 2);
  EXPECT_EQ(sd15.norm_num_groups, 32);
  EXPECT_EQ(sd15.downscale_factor(), 8);
  EXPECT_DOUBLE_EQ(sd15.scaling_factor, 0.18215);
  EXPECT_TRUE(sd15.unknown_keys.empty());
  // SD 2.1's config predates scaling_factor and force_upcast: the diffusers defaults apply.
  auto sd21 = AutoencoderKLConfig::from_json_file(test::golden("configs/stable-diffusion-2-1/vae/config.json"));
  EXPECT_DOUBLE_EQ(sd21.scaling_factor, 0.18215);
  EXPECT_TRUE(sd21.force_upcast);
  EXPECT_EQ(sd21.sample_size, 768);
  EXPECT_EQ(sd21.latent_channels, 4);
  // The real architecture builds with the diffusers key names (channels scaled down 16x to keep the test fast;
  // the block structure and hence the key set are those of the real model).
  auto small = sd15;
  for (auto& c : small.block_out_channels) c /= 16;
  small.norm_num_groups = 8;
  AutoencoderKLImpl vae(small);
  std::set<std::string> keys;
  for (const auto& p : vae.named_parameters()) keys.insert(p.key());
  EXPECT_EQ(keys.size(), 248u);  // the SD VAE checkpoint's tensor count
  for (const char* k : {"encoder.down_blocks.3.resnets.1.conv2.weight", "encoder.down_blocks.2.downsamplers.0.conv.weight",
                        "encoder.mid_block.attentions.0.to_out.0.bias", "decoder.up_blocks.0.upsamplers.0.conv.weight",
                        "decoder.up_blocks.3.resnets.2.conv1.weight", "decoder.up_blocks.2.resnets.0.conv_shortcut.weight",
                        "quant_conv.weight", "post_quant_conv.bias"})
    EXPECT_TRUE(keys.count(k)) << k;
  EXPECT_FALSE(keys.count("encoder.down_blocks.3.downsamplers.0.conv.weight"));
  EXPECT_FALSE(keys.count("decoder.up_blocks.3.upsamplers.0.conv.weight"));
}

TEST(AutoencoderKL, ConfigErrorsNameTheKey) {
  auto json = read_json_file(test::golden("vae/config.json"));
  json.erase("block_out_channels");
  auto msg = expect_error([&] { AutoencoderKLConfig::from_json(json, "vae.json"); });
  EXPECT_NE(msg.find("vae.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("block_out_channels"), std::string::npos) << msg;

  json = read_json_file(test::golden("vae/config.json"));
  json["up_block_types"] = {"UpDecoderBlock2D"};
  msg = expect_error([&] { AutoencoderKLConfig::from_json(json, "vae.json"); });
  EXPECT_NE(msg.find("up_block_types"), std::string::npos) << msg;

  json = read_json_file(test::golden("vae/config.json"));
  json["norm_num_groups"] = 12;  // 16 and 32 are not multiples of 12
  msg = expect_error([&] { AutoencoderKLConfig::from_json(json, "vae.json"); });
  EXPECT_NE(msg.find("norm_num_groups"), std::string::npos) << msg;
}

TEST(AutoencoderKL, WrongShapeNamesKeyAndShapes) {
  const auto dir = copy_with_weights("vae_bad", [](auto& w) {
    w["decoder.mid_block.attentions.0.to_q.weight"] = torch::zeros({32, 16});
  });
  const auto msg = expect_error([&] { load_autoencoder(dir); });
  EXPECT_NE(msg.find("decoder.mid_block.attentions.0.to_q.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[32,16]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[32,32]"), std::string::npos) << msg;
}

TEST(AutoencoderKL, LoadsLegacyAttentionKeys) {
  const std::pair<const char*, const char*> renames[] = {
      {"to_q", "query"}, {"to_k", "key"}, {"to_v", "value"}, {"to_out.0", "proj_attn"}};
  const auto dir = copy_with_weights("vae_legacy", [&](auto& w) {
    for (const char* part : {"encoder", "decoder"})
      for (const auto& [now, old] : renames)
        for (const char* p : {"weight", "bias"}) {
          const auto base = std::string(part) + ".mid_block.attentions.0.";
          auto node = w.extract(base + now + "." + p);
          ASSERT_FALSE(node.empty());
          node.key() = base + old + "." + p;
          w.insert(std::move(node));
        }
  });
  auto legacy = load_autoencoder(dir);
  auto plain = load_autoencoder(test::golden("vae"));
  auto cases = load_safetensors(test::golden("vae/cases.safetensors"));
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(at::equal(legacy->decode(cases.at("sq.dec_latent")), plain->decode(cases.at("sq.dec_latent"))));
  EXPECT_TRUE(at::equal(legacy->encode(cases.at("sq.image")).parameters, plain->encode(cases.at("sq.image")).parameters));
}

TEST(AutoencoderKL, InterfaceAndInputChecks) {
  auto vae = load_autoencoder(test::golden("vae"));
  EXPECT_DOUBLE_EQ(vae->scaling_factor(), 0.18215);
  EXPECT_EQ(vae->downscale_factor(), 2);
  EXPECT_EQ(vae->latent_channels(), 4);
  EXPECT_EQ(vae->dtype(), at::kFloat);
  torch::NoGradGuard no_grad;
  EXPECT_THROW(vae->decode(torch::zeros({1, 3, 8, 8})), Error);                  // wrong channel count
  EXPECT_THROW(vae->encode(torch::zeros({1, 3, 8, 8}, torch::kDouble)), Error);  // no silent dtype cast
  // Odd sizes work as in diffusers: pad right/bottom by 1, then a 3x3 stride-2 conv (9 -> 4, 7 -> 3).
  auto post = vae->encode(torch::zeros({1, 3, 9, 7}));
  EXPECT_EQ(post.mean.sizes(), (std::vector<int64_t>{1, 4, 4, 3}));
  EXPECT_TRUE(at::all(post.logvar <= 20).item<bool>() && at::all(post.logvar >= -30).item<bool>());
  // A float64 copy agrees with float32 (no dtype-specific code paths).
  vae->to(at::kCPU, at::kDouble);
  auto cases = load_safetensors(test::golden("vae/cases.safetensors"));
  auto d = vae->decode(cases.at("ns.dec_latent").to(at::kDouble));
  EXPECT_LT((d - cases.at("ns.dec_out").to(at::kDouble)).abs().max().item<double>(), 1e-4);
}

TEST(AutoencoderKL, UnknownClassIsAnError) {
  const auto dir = test::temp_dir("vae_class");
  auto json = read_json_file(test::golden("vae/config.json"));
  json["_class_name"] = "AutoencoderTiny";
  write_json_file(dir + "/config.json", json);
  const auto msg = expect_error([&] { load_autoencoder(dir); });
  EXPECT_NE(msg.find("AutoencoderTiny"), std::string::npos) << msg;
  EXPECT_NE(msg.find("_class_name"), std::string::npos) << msg;
}

TEST(AutoencoderKL, CheckerDetectsADecoderChange) {
  const auto dir = copy_with_weights("vae_perturbed", [](auto& w) { w["decoder.conv_out.bias"] += 0.01; });
  std::filesystem::copy_file(test::golden("vae/cases.safetensors"), dir + "/cases.safetensors");
  parity::Recorder rec("vae");
  parity::check_vae(dir, rec);
  int failed = 0;
  for (const auto& r : rec.results()) {
    const bool decoder = r.name.find("dec_out") != std::string::npos;
    EXPECT_EQ(r.pass, !decoder) << r.name;
    failed += !r.pass;
  }
  EXPECT_EQ(failed, 3);
}
