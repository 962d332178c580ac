// The sandbox CLIP trainer: the contrastive loss falls, the export is a CLIPModel folder the metrics' loader
// reads (with tokenizer and preprocessing), runs are deterministic, and bad configs name file and key.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/json.h"
#include "core/safetensors.h"
#include "nets/clip_model.h"
#include "test_util.h"
#include "tiny_clip.h"
#include "training/clip_trainer.h"

namespace fs = std::filesystem;
using namespace collage;

namespace {

Json tiny_json() {
  return Json{{"seed", 3},
              {"image_size", 32},
              {"batch_size", 24},
              {"learning_rate", 3e-3},
              {"warmup_steps", 2},
              {"log_every", 5},
              {"export_every", 0},
              {"max_objects", 1},
              {"tokenizer_source", test::golden("tokenizer")},
              {"clip", test::tiny_clip_model_json(32, 8, 16)}};
}

std::vector<double> losses(const fs::path& csv) {
  std::ifstream in(csv);
  std::string line;
  std::getline(in, line);  // header
  std::vector<double> out;
  while (std::getline(in, line)) out.push_back(std::stod(line.substr(line.find(',') + 1)));
  return out;
}

}  // namespace

TEST(ClipTrainer, LossFallsAndTheExportLoadsAsAClipModel) {
  const fs::path dir = test::temp_dir("clip_train");
  auto config = training::ClipTrainConfig::from_json(tiny_json(), "tiny");
  training::ClipTrainOptions o;
  o.out_dir = dir.string();
  o.steps = 60;
  o.quiet = true;
  o.eval_images = 64;
  auto r = training::train_clip(config, o);
  EXPECT_EQ(r.steps, 60);
  auto l = losses(dir / "loss.csv");
  ASSERT_EQ(l.size(), 60u);
  double first = 0, last = 0;
  for (int i = 0; i < 5; ++i) first += l[size_t(i)] / 5, last += l[l.size() - 1 - size_t(i)] / 5;
  EXPECT_NEAR(first, std::log(24.0), 0.5);  // uninformed at the start: about log(batch)
  EXPECT_LT(last, first - 0.3) << "first " << first << " last " << last;

  // The folder is what `collage score --clip` and the CLIP metrics load.
  for (const char* f : {"config.json", "model.safetensors", "preprocessor_config.json", "vocab.json", "merges.txt",
                        "tokenizer_config.json", "TRAINING.md", "TRAINING.json"})
    EXPECT_TRUE(fs::exists(fs::path(r.model_dir) / f)) << f;
  auto model = ClipModelImpl::load(r.model_dir);
  EXPECT_EQ(model->config().vision.image_size, 32);
  EXPECT_EQ(model->config().projection_dim, 16);
  auto pp = ClipImageProcessor::from_folder(r.model_dir);
  EXPECT_EQ(pp.config().crop_height, 32);
  EXPECT_EQ(pp.config().shortest_edge, 32);
  // The evaluation ran on the export and its numbers are fractions.
  EXPECT_EQ(r.eval.images, 64);
  for (double v : {r.eval.colour_accuracy, r.eval.shape_accuracy, r.eval.image_to_text, r.eval.text_to_image,
                   r.eval.twin_accuracy}) {
    EXPECT_GE(v, 0.0);
    EXPECT_LE(v, 1.0);
  }
  // Colour is the easiest cue: after 60 steps it is already above chance (1/8).
  EXPECT_GT(r.eval.colour_accuracy, 0.2);
}

TEST(ClipTrainer, SameSeedSameRun) {
  auto config = training::ClipTrainConfig::from_json(tiny_json(), "tiny");
  training::ClipTrainOptions o;
  o.steps = 3;
  o.quiet = true;
  o.eval_images = 0;
  o.out_dir = test::temp_dir("clip_det_a");
  training::train_clip(config, o);
  auto a = losses(fs::path(o.out_dir) / "loss.csv");
  o.out_dir = test::temp_dir("clip_det_b");
  training::train_clip(config, o);
  auto b = losses(fs::path(o.out_dir) / "loss.csv");
  EXPECT_EQ(a, b);
}

// Interrupted and resumed from the checkpoint written with every export, a run equals an uninterrupted one;
// without --resume an existing run is refused.
TEST(ClipTrainer, ResumedRunEqualsUninterrupted) {
  auto config = training::ClipTrainConfig::from_json(tiny_json(), "tiny");
  config.export_every = 2;
  training::ClipTrainOptions o;
  o.quiet = true;
  o.eval_images = 0;
  o.steps = 4;
  o.out_dir = test::temp_dir("clip_full");
  training::train_clip(config, o);
  const auto full = load_safetensors((fs::path(o.out_dir) / "checkpoint" / "params.safetensors").string());
  const auto full_losses = losses(fs::path(o.out_dir) / "loss.csv");

  o.out_dir = test::temp_dir("clip_part");
  o.steps = 2;
  training::train_clip(config, o);
  EXPECT_EQ(read_json_file((fs::path(o.out_dir) / "checkpoint" / "state.json").string())["step"], 2);
  {  // what a kill during step 4 leaves: the checkpoint of step 2 and a log that runs past it
    std::ofstream csv(fs::path(o.out_dir) / "loss.csv", std::ios::app);
    csv << "3,9.99,0,1,0.001,1.0\n";
  }
  EXPECT_THROW(training::train_clip(config, o), Error);  // exists, no resume
  o.resume = true;
  o.steps = 4;
  training::train_clip(config, o);
  const auto resumed = load_safetensors((fs::path(o.out_dir) / "checkpoint" / "params.safetensors").string());
  ASSERT_EQ(full.size(), resumed.size());
  for (const auto& [k, v] : full) EXPECT_TRUE(torch::allclose(v, resumed.at(k), 1e-5, 1e-6)) << k;
  EXPECT_EQ(losses(fs::path(o.out_dir) / "loss.csv"), full_losses);
}

TEST(ClipTrainer, BadConfigsNameFileAndKey) {
  auto expect_error = [](Json j, const std::string& key) {
    try {
      training::ClipTrainConfig::from_json(j, "clip.json");
      ADD_FAILURE() << "no error for " << key;
    } catch (const Error& e) {
      EXPECT_EQ(e.file(), "clip.json");
      EXPECT_NE((e.field() + " " + e.what()).find(key), std::string::npos) << e.what();
    }
  };
  auto j = tiny_json();
  j["batch_sise"] = 3;
  expect_error(j, "batch_sise");
  j = tiny_json();
  j["clip"]["vision_config"]["image_size"] = 64;
  expect_error(j, "clip.vision_config.image_size");
  j = tiny_json();
  j.erase("clip");
  expect_error(j, "clip");
  j = tiny_json();
  j["batch_size"] = 1;
  expect_error(j, "batch_size");
}
