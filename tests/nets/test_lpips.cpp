#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "core/core.h"
#include "nets/lpips.h"
#include "parity/nets_parity.h"
#include "test_util.h"

using namespace collage;
using test::expect_all_pass;
using test::expect_error;

namespace fs = std::filesystem;

TEST(Lpips, GoldenAllBackbones) {
  parity::Recorder rec("lpips");
  parity::check_lpips(test::golden("lpips"), rec);
  expect_all_pass(rec);
  // scaled0 x 3 cases; per net and case: value + spatial + L x (layer, perlayer); b3 also L x (feat, normfeat) and
  // the identical-pair check.
  size_t expected = 3;
  for (size_t L : {5u, 5u, 7u}) expected += 3 * (2 + 2 * L) + 2 * L + 1;
  EXPECT_EQ(rec.results().size(), expected);
}

TEST(Lpips, ModuleNamesAreTorchvisionKeys) {
  LpipsBackboneImpl squeeze(LpipsNet::Squeeze);
  std::set<std::string> keys;
  for (const auto& p : squeeze.named_parameters()) keys.insert(p.key());
  auto file = SafetensorsFile::open(test::golden("lpips/backbone_squeezenet1_1.safetensors"));
  auto names = file->names();
  EXPECT_EQ(keys, std::set<std::string>(names.begin(), names.end()));
  LpipsHeadsImpl heads(lpips_channels(LpipsNet::Vgg));
  EXPECT_TRUE(heads.named_parameters().contains("lin4.model.1.weight"));
  EXPECT_EQ(parse_lpips_net("vgg16"), LpipsNet::Vgg);
  EXPECT_EQ(lpips_torchvision_name(parse_lpips_net("squeeze")), "squeezenet1_1");
  const auto msg = expect_error([] { parse_lpips_net("resnet"); });
  EXPECT_NE(msg.find("resnet"), std::string::npos) << msg;
}

TEST(Lpips, MissingBackboneFileIsAnErrorNamingIt) {
  const auto dir = test::temp_dir("lpips_missing");
  fs::copy_file(test::golden("lpips/heads_alex.safetensors"), dir + "/heads_alex.safetensors");
  const auto msg = expect_error([&] { LpipsImpl::load_folder(dir, LpipsNet::Alex); });
  EXPECT_NE(msg.find(dir + "/backbone_alexnet.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not found"), std::string::npos) << msg;
  try {
    LpipsImpl::load_folder(dir, LpipsNet::Alex);
  } catch (const Error& e) {
    EXPECT_EQ(e.file(), dir + "/backbone_alexnet.safetensors");  // callers can report "skipped: <file>"
  }
  // The heads may come from elsewhere than the backbone.
  auto model = LpipsImpl::load_folder(dir, LpipsNet::Alex, test::golden("lpips"));
  EXPECT_EQ(model->net(), LpipsNet::Alex);
}

TEST(Lpips, WrongShapedKeyNamesKeyFileAndShapes) {
  const auto dir = test::temp_dir("lpips_bad");
  auto w = load_safetensors(test::golden("lpips/backbone_alexnet.safetensors"));
  w["features.3.weight"] = torch::zeros({192, 64, 3, 3}, torch::kHalf);
  w["classifier.1.weight"] = torch::zeros({4, 4});  // a full ImageNet checkpoint's classifier is skipped
  save_safetensors(dir + "/backbone_alexnet.safetensors", w);
  fs::copy_file(test::golden("lpips/heads_alex.safetensors"), dir + "/heads_alex.safetensors");
  const auto msg = expect_error([&] { LpipsImpl::load_folder(dir, LpipsNet::Alex); });
  EXPECT_NE(msg.find("features.3.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[192,64,3,3]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[192,64,5,5]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("backbone_alexnet.safetensors"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("classifier"), std::string::npos) << msg;

  auto heads = load_safetensors(test::golden("lpips/heads_alex.safetensors"));
  heads["lin2.model.1.weight"] = torch::zeros({1, 383, 1, 1});
  save_safetensors(dir + "/heads_alex.safetensors", heads);
  const auto msg2 =
      expect_error([&] { LpipsImpl::load_folder(dir, LpipsNet::Alex, test::golden("lpips")); });
  EXPECT_NE(msg2.find("lin2.model.1.weight"), std::string::npos) << msg2;
  EXPECT_NE(msg2.find("[1,383,1,1]"), std::string::npos) << msg2;
  EXPECT_NE(msg2.find("[1,384,1,1]"), std::string::npos) << msg2;
}

TEST(Lpips, ApiConsistency) {
  auto model = LpipsImpl::load_folder(test::golden("lpips"), LpipsNet::Squeeze);
  torch::manual_seed(0);
  auto a = torch::rand({2, 3, 40, 56}), b = torch::rand({2, 3, 40, 56});
  torch::NoGradGuard no_grad;
  // normalize=true maps [0, 1] to [-1, 1].
  auto d01 = model->distance(a, b, /*normalize=*/true);
  auto d11 = model->distance(a * 2 - 1, b * 2 - 1);
  EXPECT_EQ(d01.sizes(), (at::IntArrayRef{2, 1, 1, 1}));
  EXPECT_TRUE(d01.allclose(d11, 1e-6, 1e-7));
  auto map = model->spatial_map(a * 2 - 1, b * 2 - 1);
  EXPECT_EQ(map.sizes(), (at::IntArrayRef{2, 1, 40, 56}));
  // The map's mean is close to the distance (not equal: bilinear upsampling is not mean-preserving).
  EXPECT_TRUE(map.mean({2, 3}, true).allclose(d11, 0.2, 0.0));
  EXPECT_TRUE(model->distance(a, a, true).eq(0).all().item<bool>());
  const auto msg = expect_error([&] { model->distance(a, b.narrow(3, 0, 50)); });
  EXPECT_NE(msg.find("same shape"), std::string::npos) << msg;
}
