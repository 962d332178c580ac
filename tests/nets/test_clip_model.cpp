#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "core/core.h"
#include "nets/clip_model.h"
#include "parity/nets_parity.h"
#include "test_util.h"

using namespace collage;
using test::expect_all_pass;
using test::expect_error;

namespace {

// A copy of a golden model folder whose weights were edited by `edit`.
std::string copy_with_weights(const std::string& tag, const std::string& golden,
                              const std::function<void(std::map<std::string, at::Tensor>&)>& edit) {
  const auto dir = test::temp_dir(tag);
  std::filesystem::copy_file(test::golden(golden + "/config.json"), dir + "/config.json");
  auto weights = load_safetensors(test::golden(golden + "/model.safetensors"));
  edit(weights);
  save_safetensors(dir + "/model.safetensors", weights);
  return dir;
}

size_t count_prefix(const parity::Recorder& rec, const std::string& prefix) {
  size_t n = 0;
  for (const auto& r : rec.results()) n += r.name.rfind(prefix, 0) == 0;
  return n;
}

}  // namespace

TEST(ClipVision, GoldenModelAndPreprocessing) {
  parity::Recorder rec("clip_vision");
  parity::check_clip_vision(test::golden("clip_vision"), rec);
  expect_all_pass(rec);
  // b1 + b3: embeddings, hidden_states.0..2, last_hidden_state, pooler_output, image_embeds; b1's PNG link;
  // 8 images x 2 settings x (resized_u8, cropped_u8, pixel_values).
  EXPECT_EQ(rec.results().size(), 2u * 7u + 1u + 8u * 2u * 3u);
  EXPECT_EQ(count_prefix(rec, "hifreq."), 6u);
}

TEST(ClipModel, Golden) {
  parity::Recorder rec("clip");
  parity::check_clip(test::golden("clip"), rec);
  expect_all_pass(rec);
  // ids (tokenizer) + mask + 12 model tensors + 4 score tensors
  EXPECT_EQ(rec.results().size(), 2u + 12u + 4u);
}

TEST(ClipModel, ConfigDefaultsMatchResolvedConfig) {
  auto c = ClipConfig::from_json_file(test::golden("clip/config.json"));
  auto resolved = read_json_file(test::golden("clip/config_resolved.json"));
  const auto& t = resolved["text_config"];
  const auto& v = resolved["vision_config"];
  EXPECT_EQ(c.projection_dim, resolved["projection_dim"].get<int64_t>());
  EXPECT_EQ(c.text.vocab_size, t["vocab_size"].get<int64_t>());
  EXPECT_EQ(c.text.hidden_size, t["hidden_size"].get<int64_t>());
  EXPECT_EQ(c.text.intermediate_size, t["intermediate_size"].get<int64_t>());
  EXPECT_EQ(c.text.num_hidden_layers, t["num_hidden_layers"].get<int64_t>());
  EXPECT_EQ(c.text.num_attention_heads, t["num_attention_heads"].get<int64_t>());
  EXPECT_EQ(c.text.max_position_embeddings, t["max_position_embeddings"].get<int64_t>());
  EXPECT_EQ(c.text.hidden_act, t["hidden_act"].get<std::string>());
  EXPECT_DOUBLE_EQ(c.text.layer_norm_eps, t["layer_norm_eps"].get<double>());
  EXPECT_EQ(c.text.pad_token_id, t["pad_token_id"].get<int64_t>());
  EXPECT_EQ(c.text.bos_token_id, t["bos_token_id"].get<int64_t>());
  EXPECT_EQ(c.text.eos_token_id, t["eos_token_id"].get<int64_t>());
  EXPECT_EQ(c.vision.hidden_size, v["hidden_size"].get<int64_t>());
  EXPECT_EQ(c.vision.intermediate_size, v["intermediate_size"].get<int64_t>());
  EXPECT_EQ(c.vision.num_hidden_layers, v["num_hidden_layers"].get<int64_t>());
  EXPECT_EQ(c.vision.num_attention_heads, v["num_attention_heads"].get<int64_t>());
  EXPECT_EQ(c.vision.image_size, v["image_size"].get<int64_t>());
  EXPECT_EQ(c.vision.patch_size, v["patch_size"].get<int64_t>());
  EXPECT_EQ(c.vision.num_channels, v["num_channels"].get<int64_t>());
  EXPECT_EQ(c.vision.hidden_act, v["hidden_act"].get<std::string>());
  EXPECT_DOUBLE_EQ(c.vision.layer_norm_eps, v["layer_norm_eps"].get<double>());
  EXPECT_TRUE(c.unknown_keys.empty()) << fmt::format("{}", fmt::join(c.unknown_keys, ","));

  // Sub-configs absent entirely = all defaults; the legacy *_config_dict overrides *_config.
  auto d = ClipConfig::from_json(Json{{"text_config", {{"hidden_size", 64}}},
                                      {"text_config_dict", {{"hidden_size", 128}}}},
                                 "c.json");
  EXPECT_EQ(d.text.hidden_size, 128);
  EXPECT_EQ(d.text.num_attention_heads, 8);
  EXPECT_EQ(d.vision.hidden_size, 768);
  EXPECT_EQ(d.vision.patch_size, 32);
  EXPECT_EQ(d.projection_dim, 512);

  auto msg = expect_error([] { ClipConfig::from_json(Json{{"vision_config", {{"patch_size", 6}}}}, "c.json"); });
  EXPECT_NE(msg.find("vision_config.patch_size"), std::string::npos) << msg;
}

TEST(ClipModel, TowersShareWeightsAndVisionLoadsFromClipFolder) {
  auto clip = ClipModelImpl::load(test::golden("clip"));
  auto vision = ClipVisionModelWithProjectionImpl::load(test::golden("clip"));  // text keys skipped
  EXPECT_EQ(vision->config().projection_dim, 16);
  auto px = load_safetensors(test::golden("clip/cases.safetensors")).at("pixel_values");
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(vision->get_image_features(px).equal(clip->get_image_features(px)));
  // Every parameter is a checkpoint key (and the towers' parameters are the model's).
  std::set<std::string> keys;
  for (const auto& p : clip->named_parameters()) keys.insert(p.key());
  EXPECT_TRUE(keys.count("logit_scale"));
  EXPECT_TRUE(keys.count("text_projection.weight"));
  EXPECT_TRUE(keys.count("visual_projection.weight"));
  EXPECT_TRUE(keys.count("vision_model.pre_layrnorm.weight"));
  EXPECT_TRUE(keys.count("text_model.final_layer_norm.bias"));
  EXPECT_EQ(clip->text_tower()->text_model->final_layer_norm->weight.data_ptr(),
            clip->named_parameters()["text_model.final_layer_norm.weight"].data_ptr());
}

TEST(ClipVision, AcceptsPositionIdsInFile) {
  // Older transformers versions saved the buffer as I64 [1, N+1].
  const auto dir = copy_with_weights("clipv_pos", "clip_vision", [](auto& w) {
    w["vision_model.embeddings.position_ids"] = torch::arange(17, torch::kLong).view({1, 17});
  });
  auto a = ClipVisionModelWithProjectionImpl::load(dir);
  auto b = ClipVisionModelWithProjectionImpl::load(test::golden("clip_vision"));
  auto px = torch::rand({1, 3, 32, 32});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(a->get_image_features(px).equal(b->get_image_features(px)));
}

TEST(ClipVision, WrongShapeNamesKeyAndShapes) {
  const auto dir = copy_with_weights("clipv_bad", "clip_vision", [](auto& w) {
    w["vision_model.embeddings.patch_embedding.weight"] = torch::zeros({32, 3, 4, 4});
  });
  const auto msg = expect_error([&] { ClipVisionModelWithProjectionImpl::load(dir); });
  EXPECT_NE(msg.find("vision_model.embeddings.patch_embedding.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[32,3,4,4]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[32,3,8,8]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;

  const auto dir2 = copy_with_weights("clipv_missing", "clip_vision",
                                      [](auto& w) { w.erase("vision_model.embeddings.class_embedding"); });
  const auto msg2 = expect_error([&] { ClipVisionModelWithProjectionImpl::load(dir2); });
  EXPECT_NE(msg2.find("missing key 'vision_model.embeddings.class_embedding'"), std::string::npos) << msg2;
}

TEST(ClipVision, RejectsWrongImageSize) {
  auto model = ClipVisionModelWithProjectionImpl::load(test::golden("clip_vision"));
  const auto msg = expect_error([&] { model->forward(torch::zeros({1, 3, 33, 32})); });
  EXPECT_NE(msg.find("(batch, 3, 32, 32)"), std::string::npos) << msg;
}

TEST(ClipPreprocess, ConfigForms) {
  // The older feature-extractor form (int sizes) and the dict form give the same processor.
  auto legacy = ClipImageProcessorConfig::from_json(
      Json{{"crop_size", 224}, {"do_center_crop", true}, {"do_normalize", true}, {"do_resize", true},
           {"feature_extractor_type", "CLIPFeatureExtractor"}, {"resample", 3}, {"size", 224}},
      "legacy.json");
  EXPECT_TRUE(legacy.unknown_keys.empty());
  EXPECT_EQ(legacy.shortest_edge, 224);
  EXPECT_EQ(legacy.crop_height, 224);
  EXPECT_EQ(legacy.crop_width, 224);
  auto tiny = ClipImageProcessorConfig::from_json_file(test::golden("clip_vision/preprocessor_config.json"));
  EXPECT_EQ(tiny.shortest_edge, 32);
  EXPECT_EQ(tiny.crop_height, 32);
  EXPECT_EQ(tiny.resample, PilFilter::Bicubic);
  EXPECT_DOUBLE_EQ(tiny.image_std[2], 0.27577711);
  EXPECT_TRUE(tiny.unknown_keys.empty()) << fmt::format("{}", fmt::join(tiny.unknown_keys, ","));

  auto msg = expect_error([] {
    ClipImageProcessorConfig::from_json(Json{{"size", {{"height", 224}, {"width", 224}}}}, "p.json");
  });
  EXPECT_NE(msg.find("p.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'size'"), std::string::npos) << msg;
  msg = expect_error([] { ClipImageProcessorConfig::from_json(Json{{"resample", 0}}, "p.json"); });
  EXPECT_NE(msg.find("resample"), std::string::npos) << msg;
}

TEST(ClipPreprocess, ResizeSizeTruncates) {
  using HW = std::pair<int64_t, int64_t>;
  EXPECT_EQ(clip_resize_output_size(480, 640, 224), HW(224, 298));  // 298.67
  EXPECT_EQ(clip_resize_output_size(224, 225, 224), HW(224, 225));
  EXPECT_EQ(clip_resize_output_size(224, 225, 32), HW(32, 32));
  EXPECT_EQ(clip_resize_output_size(517, 300, 224), HW(386, 224));
}

TEST(ClipPreprocess, FloatTensorsEqualPngFiles) {
  // Preprocessing the float image equals preprocessing its PNG (round-and-clamp to uint8 first), for grayscale,
  // RGBA (alpha dropped) and RGB files, at both settings.
  const auto tiny = ClipImageProcessor::from_folder(test::golden("clip_vision"));
  const ClipImageProcessor full;
  for (const char* name : {"gray", "rgba", "portrait"}) {
    const auto png = test::golden(std::string("clip_vision/preprocess/") + name + ".png");
    const auto image = read_image(png);  // float (3, H, W) in [0, 1]
    for (const auto* p : {&tiny, &full}) {
      auto from_file = p->preprocess_files({png});
      auto from_tensor = p->preprocess(image);
      EXPECT_TRUE(from_file.equal(from_tensor)) << name;
      EXPECT_TRUE(p->preprocess(image.unsqueeze(0).repeat({2, 1, 1, 1})).equal(at::cat({from_file, from_file})));
    }
  }
  // Values outside [0, 1] are clamped like write_image does.
  auto x = torch::rand({3, 40, 50});
  EXPECT_TRUE(tiny.preprocess(x * 3 - 1).equal(tiny.preprocess((x * 3 - 1).clamp(0, 1))));
  const auto msg = expect_error([&] { tiny.preprocess_files({test::golden("clip_vision/nope.png")}); });
  EXPECT_NE(msg.find("nope.png"), std::string::npos) << msg;
}

TEST(ClipPreprocess, PilResizeIdentityAndCropPadding) {
  auto img = torch::randint(0, 256, {20, 30, 3}, torch::kByte);
  auto same = pil_resize(img, 20, 30);
  EXPECT_TRUE(same.equal(img));
  EXPECT_NE(same.data_ptr(), img.data_ptr());
  // A constant image stays constant under every filter (weights are normalised).
  auto flat = torch::full({17, 23, 3}, 200, torch::kByte);
  for (auto f : {PilFilter::Bicubic, PilFilter::Bilinear, PilFilter::Lanczos, PilFilter::Box, PilFilter::Hamming})
    EXPECT_TRUE(pil_resize(flat, 9, 40, f).eq(200).all().item<bool>());
  // A crop larger than the resized image pads with zeros (transformers center_crop).
  ClipImageProcessorConfig c;
  c.shortest_edge = 8;
  c.crop_height = 10;
  c.crop_width = 10;
  c.do_rescale = false;
  c.do_normalize = false;
  ClipPreprocessTrace trace;
  auto out = ClipImageProcessor(c).preprocess_u8(torch::full({8, 8, 3}, 7, torch::kByte), &trace);
  EXPECT_EQ(trace.cropped_u8.sizes(), (at::IntArrayRef{10, 10, 3}));
  EXPECT_EQ(trace.cropped_u8.select(0, 0).max().item<int>(), 0);
  EXPECT_EQ(trace.cropped_u8[1][1][0].item<int>(), 7);
  EXPECT_EQ(out.sizes(), (at::IntArrayRef{1, 3, 10, 10}));
}

TEST(ClipModel, AttentionMaskAndScoreHelpers) {
  auto ids = torch::tensor({49406, 320, 49407, 49407, 49407, 49406, 49407, 0, 0, 0}, torch::kLong).view({2, 5});
  auto mask = clip_attention_mask_from_ids(ids);
  EXPECT_TRUE(mask.equal(torch::tensor({1, 1, 1, 0, 0, 1, 1, 0, 0, 0}, torch::kLong).view({2, 5})));
  auto a = torch::tensor({1.0f, 0.0f, 3.0f, 4.0f}).view({2, 2});
  auto b = torch::tensor({2.0f, 0.0f, -3.0f, -4.0f}).view({2, 2});
  auto cos = clip_cos100(a, b);
  EXPECT_NEAR(cos[0].item<float>(), 100.0f, 1e-4);
  EXPECT_NEAR(cos[1].item<float>(), -100.0f, 1e-4);
}
