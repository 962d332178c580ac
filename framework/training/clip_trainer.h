// Trainer of the sandbox CLIP: a transformers-layout CLIPModel (collage::ClipModel, the class the metrics load)
// trained from scratch, contrastively (symmetric InfoNCE over the batch, learned temperature), on ShapesWorld
// scenes rendered on the fly with their generated captions. The result is a CLIPModel folder (config.json,
// model.safetensors, preprocessor_config.json, tokenizer files) that `collage score` and the runner's CLIP
// metrics (CLIP score, KID features) load like any real CLIP. Everything random is a function of (seed, step),
// as in the diffusion trainer.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/core.h"

namespace collage::training {

struct ClipTrainConfig {
  uint64_t seed = 0;
  int64_t image_size = 64;
  int64_t batch_size = 256;
  double learning_rate = 1e-3;
  int64_t warmup_steps = 100;
  double weight_decay = 0.1;  // not applied to biases, norms, embeddings of positions/class, logit_scale
  double adam_beta1 = 0.9, adam_beta2 = 0.98, adam_eps = 1e-6;
  double grad_clip = 1.0;
  int64_t max_steps = 1000000;
  double max_minutes = 0;  // 0 = no time budget
  int64_t log_every = 10;
  int64_t export_every = 500;  // writes model/ and checkpoint/ every so many steps (0 = only at the end)
  // Fraction of the batch that is "hard negative" pairs: a scene and its twin with one object's shape changed
  // (captions differ in that word only). Without them the shape is not learned (see clip_trainer.cpp).
  double shape_twins = 0.5;
  // Weight of an image-image contrastive term: a jittered view of each twinned scene (objects nudged, another
  // background texture) must pick its scene among the batch's images, its shape twin included. Meant to make the
  // image tower see shape first (both towers stay blind to it otherwise: twin captions collapse onto one
  // embedding, cosine 0.9999); measured, it did not (weight 1, 1000 steps: twins 48.8 %). 0 = off.
  double image_loss_weight = 0;
  std::string save_dtype = "float16";
  int min_objects = 1, max_objects = 4;
  Json clip;  // a transformers CLIPModel config object (text_config, vision_config, projection_dim, ...)
  std::string tokenizer_source = "tests/data/golden/tokenizer";
  Json raw;

  static ClipTrainConfig from_json(const Json& json, const std::string& file);
  static ClipTrainConfig from_json_file(const std::string& path);
};

struct ClipTrainOptions {
  std::string out_dir;
  int64_t steps = -1;   // overrides max_steps when >= 0
  double minutes = -1;  // overrides max_minutes when >= 0
  std::string command_line;
  bool quiet = false;
  int64_t eval_images = 512;  // evaluation after training (0 = none)
  // Continue from out_dir/checkpoint (written with every export): weights, optimiser state, step, wall time;
  // the batches depend on the step only, so a resumed run equals an uninterrupted one.
  bool resume = false;
};

// Zero-shot checks of a CLIP folder on fresh ShapesWorld renders (scene seeds disjoint from training):
// - single-object scenes classified among the prompts "a {colour} {shape}" (all 8 x 4): colour, shape and
//   joint accuracy of the best-scoring prompt;
// - retrieval: scenes of 1-4 objects in groups of `group` with their full captions: top-1 accuracy
//   image -> caption and caption -> image;
// - shape twins: up to 256 scenes, each image scored against its own caption and the caption of its shape twin
//   (the same scene with one object's shape changed): how often its own wins.
struct ClipEvalResult {
  int64_t images = 0, group = 64;
  double colour_accuracy = 0, shape_accuracy = 0, joint_accuracy = 0;
  double image_to_text = 0, text_to_image = 0;
  double twin_accuracy = 0;  // a scene's full caption scores above its shape twin's (chance 0.5)
  double twin_image_cosine = 0, twin_text_cosine = 0;  // mean cosine of twin images / twin captions (1 = blind)
  double seconds = 0;
  Json to_json() const;
  std::string summary() const;
};
ClipEvalResult evaluate_clip(const std::string& model_dir, int64_t images = 512, uint64_t seed = 0,
                             int64_t group = 64);

struct ClipTrainResult {
  int64_t steps = 0;
  double final_loss = 0;  // mean of the last log_every steps
  double seconds = 0;
  std::string model_dir;
  ClipEvalResult eval;
};

// Trains from scratch (no resume: a run takes minutes), writing out_dir/loss.csv and out_dir/model (the CLIPModel
// folder, with TRAINING.md / TRAINING.json recording the command, the config and the evaluation).
ClipTrainResult train_clip(const ClipTrainConfig& config, const ClipTrainOptions& options);

}  // namespace collage::training
