#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "core/core.h"
#include "models/clip_text_model.h"
#include "models/clip_tokenizer.h"
#include "models/text_states.h"
#include "parity/parity.h"
#include "test_util.h"

using namespace collage;
using test::expect_all_pass;
using test::expect_error;

namespace {

// A copy of a golden text encoder folder whose weights were edited by `edit`.
std::string copy_with_weights(const std::string& tag, const std::string& golden,
                              const std::function<void(std::map<std::string, at::Tensor>&)>& edit) {
  const auto dir = test::temp_dir(tag);
  std::filesystem::copy_file(test::golden(golden + "/config.json"), dir + "/config.json");
  auto weights = load_safetensors(test::golden(golden + "/model.safetensors"));
  edit(weights);
  save_safetensors(dir + "/model.safetensors", weights);
  return dir;
}

}  // namespace

TEST(ClipTextModel, GoldenSd1) {
  parity::Recorder rec("text_encoder_sd1");
  parity::check_text_encoder(test::golden("text_encoder_sd1"), rec);
  expect_all_pass(rec);
  EXPECT_EQ(rec.results().size(), 1u + 3u + 2u);  // count + hidden_states.0..2 + last + pooler
}

TEST(ClipTextModel, GoldenSd2) {
  parity::Recorder rec("text_encoder_sd2");
  parity::check_text_encoder(test::golden("text_encoder_sd2"), rec);
  expect_all_pass(rec);
  EXPECT_EQ(rec.results().size(), 1u + 4u + 2u);
}

// A full CLIPModel folder loads as a text encoder (its text tower), as transformers allows, so that a pipeline
// can share a trained CLIP's text tower: the golden CLIPModel's hidden states without attention mask.
TEST(ClipTextModel, LoadsTheTextTowerOfAClipModelFolder) {
  auto model = ClipTextModelImpl::load(test::golden("clip"));
  EXPECT_EQ(model->config().hidden_size, 32);
  EXPECT_EQ(model->config().max_position_embeddings, 77);  // a default save_pretrained left out
  auto cases = load_safetensors(test::golden("clip/cases.safetensors"));
  torch::NoGradGuard no_grad;
  auto out = model->forward(cases.at("input_ids")).last_hidden_state;
  EXPECT_TRUE(at::allclose(out, cases.at("text_last_hidden_state_no_attention_mask"), 1e-4, 1e-5))
      << (out - cases.at("text_last_hidden_state_no_attention_mask")).abs().max().item<float>();
}

TEST(ClipTextModel, ParsesRealConfigs) {
  auto sd15 = ClipTextConfig::from_json_file(test::golden("configs/stable-diffusion-v1-5/text_encoder/config.json"));
  EXPECT_EQ(sd15.hidden_size, 768);
  EXPECT_EQ(sd15.intermediate_size, 3072);
  EXPECT_EQ(sd15.num_hidden_layers, 12);
  EXPECT_EQ(sd15.num_attention_heads, 12);
  EXPECT_EQ(sd15.hidden_act, "quick_gelu");
  EXPECT_EQ(sd15.eos_token_id, 2);
  EXPECT_EQ(sd15.projection_dim, 768);
  EXPECT_TRUE(sd15.unknown_keys.empty()) << fmt::format("{}", fmt::join(sd15.unknown_keys, ","));
  auto sd21 = ClipTextConfig::from_json_file(test::golden("configs/stable-diffusion-2-1/text_encoder/config.json"));
  EXPECT_EQ(sd21.hidden_size, 1024);
  EXPECT_EQ(sd21.num_hidden_layers, 23);
  EXPECT_EQ(sd21.num_attention_heads, 16);
  EXPECT_EQ(sd21.hidden_act, "gelu");
  EXPECT_DOUBLE_EQ(sd21.layer_norm_eps, 1e-5);
  // The real SD 1.5 layer stack builds with the checkpoint's key names (widths shrunk to keep the test fast).
  auto small = sd15;
  small.vocab_size = 16;
  small.hidden_size = 24;
  small.intermediate_size = 8;
  ClipTextModelImpl model(small);
  std::set<std::string> keys;
  for (const auto& p : model.named_parameters()) keys.insert(p.key());
  EXPECT_EQ(keys.size(), 2u + 16u * 12u + 2u);
  EXPECT_TRUE(keys.count("text_model.encoder.layers.11.self_attn.q_proj.weight"));
  EXPECT_TRUE(keys.count("text_model.encoder.layers.0.mlp.fc2.bias"));
  EXPECT_TRUE(keys.count("text_model.final_layer_norm.weight"));
}

TEST(ClipTextModel, ConfigErrorsNameTheKey) {
  auto json = read_json_file(test::golden("text_encoder_sd1/config.json"));
  json.erase("num_hidden_layers");
  auto msg = expect_error([&] { ClipTextConfig::from_json(json, "cfg.json"); });
  EXPECT_NE(msg.find("cfg.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("num_hidden_layers"), std::string::npos) << msg;

  json = read_json_file(test::golden("text_encoder_sd1/config.json"));
  json["hidden_act"] = "mish";
  msg = expect_error([&] { ClipTextConfig::from_json(json, "cfg.json"); });
  EXPECT_NE(msg.find("hidden_act"), std::string::npos) << msg;
  EXPECT_NE(msg.find("mish"), std::string::npos) << msg;

  json = read_json_file(test::golden("text_encoder_sd1/config.json"));
  json["num_attention_heads"] = 5;  // 32 is not divisible by 5
  msg = expect_error([&] { ClipTextConfig::from_json(json, "cfg.json"); });
  EXPECT_NE(msg.find("num_attention_heads"), std::string::npos) << msg;

  // A CLIPModel text_config stores only differences from the defaults.
  auto sub = ClipTextConfig::from_json(Json{{"hidden_size", 32}, {"intermediate_size", 37}}, "clip.json",
                                       "text_config.", /*fill_defaults=*/true);
  EXPECT_EQ(sub.num_attention_heads, 8);
  EXPECT_EQ(sub.eos_token_id, 49407);
}

TEST(ClipTextModel, WrongShapeNamesKeyAndShapes) {
  const auto dir = copy_with_weights("clip_bad", "text_encoder_sd1", [](auto& w) {
    w["text_model.encoder.layers.1.mlp.fc1.weight"] = torch::zeros({36, 32});
  });
  const auto msg = expect_error([&] { ClipTextModelImpl::load(dir); });
  EXPECT_NE(msg.find("text_model.encoder.layers.1.mlp.fc1.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[36,32]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[37,32]"), std::string::npos) << msg;
}

TEST(ClipTextModel, MissingWeightsAndKeys) {
  const auto dir = test::temp_dir("clip_missing");
  std::filesystem::copy_file(test::golden("text_encoder_sd1/config.json"), dir + "/config.json");
  EXPECT_THROW(ClipTextModelImpl::load(dir), Error);
  const auto dir2 = copy_with_weights("clip_missing2", "text_encoder_sd1",
                                      [](auto& w) { w.erase("text_model.final_layer_norm.bias"); });
  const auto msg = expect_error([&] { ClipTextModelImpl::load(dir2); });
  EXPECT_NE(msg.find("missing key 'text_model.final_layer_norm.bias'"), std::string::npos) << msg;
}

TEST(ClipTextModel, AcceptsPositionIdsInFile) {
  // Real SD checkpoints (older transformers) store the buffer as I64 [1, 77].
  const auto dir = copy_with_weights("clip_posids", "text_encoder_sd1", [](auto& w) {
    w["text_model.embeddings.position_ids"] = torch::arange(77, torch::kLong).unsqueeze(0);
  });
  auto with_ids = ClipTextModelImpl::load(dir);
  auto plain = ClipTextModelImpl::load(test::golden("text_encoder_sd1"));
  auto cases = load_safetensors(test::golden("text_encoder_sd1/cases.safetensors"));
  torch::NoGradGuard no_grad;
  auto a = with_ids->forward(cases.at("input_ids")).last_hidden_state;
  auto b = plain->forward(cases.at("input_ids")).last_hidden_state;
  EXPECT_TRUE(at::equal(a, b));
}

TEST(ClipTextModel, EmbeddingsPathMatchesIdsPath) {
  auto model = ClipTextModelImpl::load(test::golden("text_encoder_sd2"));
  auto cases = load_safetensors(test::golden("text_encoder_sd2/cases.safetensors"));
  const auto& ids = cases.at("input_ids");
  torch::NoGradGuard no_grad;
  auto ref = model->forward(ids, true);
  auto embeds = model->token_embedding_weight().index_select(0, ids.reshape({-1})).view({ids.size(0), ids.size(1), -1});
  auto got = model->forward_embeddings(embeds, ids, true);
  EXPECT_TRUE(at::equal(got.last_hidden_state, ref.last_hidden_state));
  EXPECT_TRUE(at::equal(got.pooler_output, ref.pooler_output));
  ASSERT_EQ(got.hidden_states.size(), 4u);
  // Changing a token embedding row changes the output (textual inversion relies on this path).
  auto edited = embeds.clone();
  edited.select(1, 1).add_(1.0);
  EXPECT_FALSE(at::allclose(model->forward_embeddings(edited, ids).last_hidden_state, ref.last_hidden_state));
  // Causality: the edit at position 1 leaves position 0 unchanged.
  EXPECT_TRUE(at::equal(model->forward_embeddings(edited, ids).last_hidden_state.select(1, 0),
                        ref.last_hidden_state.select(1, 0)));
  // Gradients reach the input embeddings although the weights are frozen.
  torch::AutoGradMode grad(true);
  auto leaf = embeds.clone().requires_grad_(true);
  model->forward_embeddings(leaf, ids).pooler_output.sum().backward();
  ASSERT_TRUE(leaf.grad().defined());
  EXPECT_GT(leaf.grad().abs().sum().item<double>(), 0.0);
}

TEST(ClipTextModel, PoolingRules) {
  torch::manual_seed(0);
  auto config = ClipTextConfig::from_json_file(test::golden("text_encoder_sd1/config.json"));
  config.vocab_size = 100;
  config.eos_token_id = 7;  // not the legacy 2: pool at the first occurrence of id 7
  ClipTextModelImpl model(config);
  torch::NoGradGuard no_grad;
  auto ids = torch::tensor({0, 50, 7, 99, 7, 3}, torch::kLong).unsqueeze(0);
  auto out = model.forward(ids);
  EXPECT_TRUE(at::equal(out.pooler_output[0], out.last_hidden_state[0][2]));
  config.eos_token_id = 2;  // legacy: argmax of the ids (position 3 holds 99)
  ClipTextModelImpl legacy(config);
  out = legacy.forward(ids);
  EXPECT_TRUE(at::equal(out.pooler_output[0], out.last_hidden_state[0][3]));
  EXPECT_THROW(legacy.forward(torch::tensor({0, 100}, torch::kLong).unsqueeze(0)), Error);  // id out of range
}

TEST(ClipTextModel, PaddingMaskAffectsOnlyPositionsAfterPadding) {
  auto model = ClipTextModelImpl::load(test::golden("text_encoder_sd1"));
  auto ids = load_safetensors(test::golden("text_encoder_sd1/cases.safetensors")).at("input_ids").narrow(0, 0, 1);
  const int64_t eos = ids.argmax(-1).item<int64_t>();
  ASSERT_LT(eos, 70);
  auto mask = torch::zeros_like(ids);
  mask.narrow(1, 0, eos + 1).fill_(1);
  torch::NoGradGuard no_grad;
  auto plain = model->forward(ids);
  auto masked = model->forward(ids, false, mask);
  EXPECT_TRUE(at::equal(plain.last_hidden_state.narrow(1, 0, eos + 1), masked.last_hidden_state.narrow(1, 0, eos + 1)));
  EXPECT_FALSE(at::allclose(plain.last_hidden_state.narrow(1, eos + 2, 5), masked.last_hidden_state.narrow(1, eos + 2, 5)));
  EXPECT_TRUE(at::equal(plain.pooler_output, masked.pooler_output));
}

TEST(ClipTextModel, CheckerDetectsAWrongActivation) {
  // The checker reads everything from the folder: the sd1 weights run with exact gelu must fail.
  const auto dir = copy_with_weights("clip_act", "text_encoder_sd1", [](auto&) {});
  std::filesystem::copy_file(test::golden("text_encoder_sd1/cases.safetensors"), dir + "/cases.safetensors");
  auto json = read_json_file(dir + "/config.json");
  json["hidden_act"] = "gelu";
  write_json_file(dir + "/config.json", json);
  parity::Recorder rec("text_encoder_sd1");
  parity::check_text_encoder(dir, rec);
  std::map<std::string, bool> pass;
  for (const auto& r : rec.results()) pass[r.name] = r.pass;
  EXPECT_TRUE(pass.at("hidden_states.0"));  // embeddings do not use the activation
  EXPECT_FALSE(pass.at("hidden_states.1"));
  EXPECT_FALSE(pass.at("last_hidden_state"));
}

// The text-diff diagnostic: identical prompts are 0 apart; with a causal mask, positions before the first
// differing token are equal (up to float rounding between batch rows) and the differing token is not; the
// table stops after the later eos.
TEST(TextStates, ZeroBeforeTheDifferingTokenAndNonZeroFromIt) {
  auto te = ClipTextModelImpl::load(test::golden("text_encoder_sd1"));
  te->eval();
  auto tok = ClipTokenizer::from_folder(test::golden("tokenizer"));
  const auto same = compare_text_states(*te, tok, "a red circle on grass", "a red circle on grass");
  ASSERT_EQ(same.size(), 7u);  // bos + 5 words + eos
  for (const auto& d : same) EXPECT_LT(d.relative_l2, 1e-5);
  const auto diff = compare_text_states(*te, tok, "a red circle on grass", "a red star on grass in the sky");
  ASSERT_EQ(diff.size(), 10u);  // the longer prompt's bos + 8 words + eos
  EXPECT_EQ(diff[3].token_a, "circle");
  EXPECT_EQ(diff[3].token_b, "star");
  for (int i = 0; i < 3; ++i) EXPECT_LT(diff[i].relative_l2, 1e-5) << i;
  EXPECT_GT(diff[3].relative_l2, 1e-3);
  EXPECT_LT(diff[3].cosine, 1.0);
  EXPECT_EQ(diff[9].token_a, "");  // past prompt a's eos
}
