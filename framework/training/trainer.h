// Trainer of the embedded ShapesWorld model: a UNet2DConditionModel and a small CLIP-architecture text encoder,
// both from scratch, on scenes rendered on the fly (datasets/shapesworld), in the latent space of the lossless
// SpaceToDepthAutoencoder. Epsilon-prediction DDPM loss on the shipped scheduler's noise schedule, caption
// dropout (for classifier-free guidance), AdamW with linear warm-up, gradient clipping, EMA weights (exported
// as the model), checkpoints + resume. Everything random is a function of (seed, step): the batch of step s
// is rendered from scene seeds data_seed + s*B + i, and its noise / timesteps / dropout come from a generator
// seeded with (seed, s), so a resumed run continues exactly as an uninterrupted one would.
#pragma once

#include <ATen/Tensor.h>

#include <torch/optim/optimizer.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/core.h"
#include "models/models.h"

namespace collage::training {

struct TrainConfig {
  uint64_t seed = 0;
  int64_t image_size = 64;
  int64_t batch_size = 32;
  double learning_rate = 5e-4;
  int64_t warmup_steps = 200;
  double weight_decay = 0.01;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;
  double grad_clip = 1.0;
  // "constant" after the warm-up, or "cosine": down to a tenth at max_steps (the config's or --steps), which
  // short runs (the CPU budget) need to end on a low learning rate.
  std::string lr_decay = "constant";
  double ema_decay = 0.995;     // effective decay min(ema_decay, (1 + step) / (10 + step))
  double caption_dropout = 0.1;  // fraction of captions replaced by "" (the unconditional prompt)
  int64_t max_steps = 1000000;
  double max_minutes = 0;       // 0 = no time budget
  int64_t checkpoint_every = 250;
  int64_t keep_checkpoints = 2;
  int64_t log_every = 10;
  bool channels_last = false;
  std::string save_dtype = "float16";  // dtype of the exported weights
  // The world: object counts and held-out (colour, shape) combinations never rendered in training.
  int min_objects = 1, max_objects = 2;
  std::vector<std::pair<std::string, std::string>> held_out;
  // Components (diffusers / transformers config objects, written out verbatim into the model folder).
  Json unet, text_encoder, scheduler;
  int64_t vae_factor = 4;
  double scaling_factor = 0;  // 0 = measured at start (1 / std of the space-to-depth latents of 256 renders)
  std::string tokenizer_source = "tests/data/golden/tokenizer";  // vocab.json, merges.txt, *.json
  // Start the text encoder from a trained CLIP (a CLIPModel folder such as `collage train-clip`'s output, or a
  // CLIPTextModel folder) instead of from scratch; its text_config must equal `text_encoder`. Stable Diffusion
  // does the same with OpenAI's CLIP: the words then arrive already separated by colour / shape / background.
  std::string text_encoder_from;
  bool train_text_encoder = true;  // false: the text encoder stays frozen (as in Stable Diffusion)
  // Start the UNet from earlier weights: a diffusers unet folder, or a trainer checkpoint's params/ema
  // .safetensors (its `unet.*` keys). E.g. keep what an earlier run learned about denoising while the text
  // encoder is replaced. --resume (a checkpoint in --out) takes precedence.
  std::string unet_from;
  Json raw;  // the whole file

  static TrainConfig from_json(const Json& json, const std::string& file);
  static TrainConfig from_json_file(const std::string& path);
};

// One training batch, everything needed to evaluate the loss deterministically.
struct Batch {
  at::Tensor latents;    // (B, C, h, w) scaled
  at::Tensor input_ids;  // (B, L)
  at::Tensor noise;      // (B, C, h, w)
  at::Tensor timesteps;  // (B,) int64
  std::vector<std::string> captions;
};

struct StepStats {
  double loss = 0, grad_norm = 0, lr = 0;
};

// What the UNet learns to predict from x_t = sqrt(ab) x0 + sqrt(1-ab) eps: eps itself, or (v_prediction)
// v = sqrt(ab) eps - sqrt(1-ab) x0, the diffusers conventions the samplers invert.
at::Tensor diffusion_target(bool v_prediction, const at::Tensor& latents, const at::Tensor& noise,
                            const at::Tensor& alphabar);

class Trainer {
 public:
  // out_dir holds checkpoints/, loss.csv and (after export) model/.
  // `device`: where the models, the optimiser state and the EMA live (scenes are rendered on the CPU, in
  // parallel over at::get_num_threads() threads, and copied over per batch).
  Trainer(TrainConfig config, std::string out_dir, at::Device device = at::kCPU);

  // The batch of a step; `caption_dropout` false keeps every caption (for probes).
  Batch make_batch(int64_t step, bool caption_dropout = true) const;
  // Is the model using the text? On a fixed probe batch (scenes never trained on, timesteps spread over
  // 500..999, where the caption is what decides colours and shapes), the mean squared error of the model's
  // clean-image estimate x0 with the true captions and with every caption empty; {conditional, unconditional}.
  // Measured in x0 space so that epsilon and v-prediction models compare. A model that ignores the text has
  // both equal (run 2 of the embedded model: see its TRAINING.md).
  std::pair<double, double> text_probe(bool use_ema = true);
  // The loss on a batch (no parameter update); `use_ema` evaluates the EMA weights.
  double loss_on(const Batch& batch, bool use_ema = false);
  // One optimisation step on make_batch(step()) (or on `batch` when given); advances step().
  StepStats train_step(const Batch* batch = nullptr);

  int64_t step() const { return step_; }
  double train_seconds = 0;  // wall time of all runs so far (saved in checkpoints)
  const TrainConfig& config() const { return config_; }
  double scaling_factor() const { return scaling_factor_; }
  bool v_prediction() const { return v_prediction_; }
  int64_t unet_parameters() const;
  int64_t text_encoder_parameters() const;

  // checkpoints/step_NNNNNNN/{params,ema}.safetensors, optimizer.pt, state.json; older ones beyond
  // keep_checkpoints are deleted. Returns the folder.
  std::string save_checkpoint();
  // Loads the newest checkpoint in out_dir/checkpoints; false when there is none.
  bool resume_latest();
  // Writes a diffusers pipeline folder with the EMA (default) or raw weights in config.save_dtype.
  void export_model(const std::string& folder, bool use_ema = true) const;
  // Replays the forward pass of `batch` and names the first UNet stage with a non-finite output ("" if none).
  std::string first_non_finite_output(const Batch& batch);
  // Parameters by checkpoint name ("unet.conv_in.weight", ...), the EMA copies when `ema`; on the CPU.
  std::map<std::string, at::Tensor> named_state(bool ema) const;

  UNet2DConditionModel unet{nullptr};
  ClipTextModel text_encoder{nullptr};

 private:
  // The training loss; `debug` (optional) receives the text encoder's output and the UNet's stage outputs.
  at::Tensor loss_tensor(const Batch& batch, std::map<std::string, at::Tensor>* debug = nullptr);
  // The UNet's output on the noised latents of `batch`, with the noised latents and alphabar_t (broadcastable).
  struct Prediction {
    at::Tensor output, noisy, alphabar;
  };
  Prediction predict(const Batch& batch, std::map<std::string, at::Tensor>* debug = nullptr);
  double x0_error(const Batch& batch, bool use_ema);
  void swap_ema();
  // Copies the text tower of a CLIPModel / CLIPTextModel folder into text_encoder (architectures must match).
  void load_text_encoder(const std::string& folder, const ClipTextConfig& expected);
  void load_unet(const std::string& path);
  std::vector<at::Tensor> parameters() const;

  TrainConfig config_;
  std::string out_dir_;
  std::shared_ptr<ClipTokenizer> tokenizer_;
  int64_t max_length_ = 32;
  double scaling_factor_ = 1;
  bool v_prediction_ = false;  // the scheduler's prediction_type: "v_prediction" (else "epsilon")
  at::Tensor alphas_cumprod_;
  std::vector<std::string> param_names_;
  std::vector<at::Tensor> ema_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  int64_t step_ = 0;
  int64_t warmup_start_ = 0;  // the learning-rate warm-up restarts with a fresh optimiser (EMA-only resume)
  at::Device device_ = at::kCPU;
};

struct TrainOptions {
  std::string out_dir;
  int64_t steps = -1;     // overrides max_steps when >= 0
  double minutes = -1;    // overrides max_minutes when >= 0
  bool resume = false;
  std::string command_line;  // recorded in TRAINING.md
  bool quiet = false;
  std::string device = "cpu";  // cpu, cuda, cuda:N
  int prefetch = -1;  // render the next batch while this step runs: 1 on, 0 off, -1 on for CUDA only
};

struct TrainResult {
  int64_t steps = 0;
  double final_loss = 0;  // mean loss of the last log_every steps
  double seconds = 0;     // wall time of this run (not counting earlier, resumed ones)
  std::string model_dir;
};

// The whole run: resume (optional), train until the step or time budget, checkpoint, export out_dir/model
// (EMA weights) with TRAINING.md, append to out_dir/loss.csv.
TrainResult train(const TrainConfig& config, const TrainOptions& options);

// Evaluation on held-out combinations: prompts of one or two objects, the first of a held-out (colour, shape),
// generated with the model's scheduler; success = shapesworld::find_object finds every named (colour, shape).
// `exact` also requires that the analyser detects no other object: the analyser finds objects in noise, so a
// model that draws noise scores some successes, never exact ones.
struct EvalOptions {
  int64_t n = 100;
  int64_t steps = 50;
  double guidance = 5.0;
  uint64_t seed = 0;
  std::vector<std::pair<std::string, std::string>> held_out;  // empty: read from the model's TRAINING.json
  std::string device = "cpu";  // where the model samples ("cuda" on a GPU machine); analysed on the CPU
  // Called with every generated image (3 x H x W in [0, 1], CPU) and whether it succeeded, in prompt order
  // (the CLI writes them and a grid; evaluation itself writes no files, so it also runs where no image codecs are).
  std::function<void(int64_t index, const at::Tensor& image, bool success)> on_image;
};
struct EvalResult {
  int64_t prompts = 0, all_found = 0, exact = 0, held_out_found = 0, objects = 0, objects_found = 0;
  double seconds = 0;
  std::vector<std::string> prompt_texts;
  std::vector<bool> success;
  std::vector<int64_t> detected;  // objects the analyser found per image
  Json to_json() const;
};
EvalResult evaluate_shapesworld(const std::string& model_dir, const EvalOptions& options,
                                const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace collage::training
