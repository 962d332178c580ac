// Stable Diffusion pipelines: the loaded components and txt2img / img2img with classifier-free guidance.
// Both run the one loop of sampler.h; img2img (SDEdit) only starts it later on noised latents.
#pragma once

#include <ATen/Tensor.h>

#include <functional>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "diffusion/sampler.h"
#include "diffusion/scheduler.h"
#include "models/models.h"

namespace collage {

struct PipelineOptions {
  std::string device = "cpu";      // "cpu", "cuda", "cuda:1"
  std::string dtype = "auto";      // "auto" (float16 on CUDA, float32 on CPU), "float32", "float16", "bfloat16"
  std::string variant;             // weights variant, e.g. "fp16" -> *.fp16.safetensors
  std::string scheduler;           // registry name overriding scheduler_config.json's class; empty = keep
  // CPU float32: channels-last UNet and pre-packed large convolutions (inference only; call
  // unpack_convs(*unet) before back-propagating through the UNet).
  bool cpu_fast_paths = true;
};

// Where each component lives (a diffusers pipeline folder maps them to its sub-folders).
struct ComponentPaths {
  std::string tokenizer, tokenizer_config;  // tokenizer_config: folder of tokenizer_config.json (default: tokenizer)
  std::string text_encoder, unet, vae;
  std::string scheduler_config;             // path of scheduler_config.json
  static ComponentPaths from_pipeline_folder(const std::string& folder);
};

class StableDiffusion {
 public:
  // Loads a diffusers pipeline folder (model_index.json, tokenizer/, text_encoder/, unet/, vae/, scheduler/).
  static std::shared_ptr<StableDiffusion> load(const std::string& folder, const PipelineOptions& options = {});
  static std::shared_ptr<StableDiffusion> load(const ComponentPaths& paths, const PipelineOptions& options = {});
  // A pipeline with random weights built from a real model's config folder (text_encoder/, unet/, vae/,
  // scheduler/ configs; tokenizer_config.json from its tokenizer/) and a vocabulary folder: benchmarks at the real
  // size without the weights.
  static std::shared_ptr<StableDiffusion> random(const std::string& config_folder, const std::string& vocab_folder,
                                                 const PipelineOptions& options = {});

  std::string name;  // the folder it came from (for records)
  std::shared_ptr<ClipTokenizer> tokenizer;
  ClipTextModel text_encoder{nullptr};
  UNet2DConditionModel unet{nullptr};
  std::shared_ptr<LatentAutoencoder> vae;
  std::unique_ptr<Scheduler> scheduler;
  at::Device device{at::kCPU};
  at::ScalarType dtype = at::kFloat;

  // Moves the components to `device`/`dtype` and applies the CPU fast paths (load() calls it; call it
  // yourself after assembling components by hand).
  void prepare(const PipelineOptions& options);

  // Token ids (N, 77) of the prompts, padded and truncated as the tokenizer config says.
  at::Tensor tokenize(const std::vector<std::string>& prompts) const;
  // Text-encoder last hidden states (N, 77, D) in the model dtype. Recent prompts come from a cache (a sweep
  // encodes the same prompts for every run and seed); prepare() empties it.
  at::Tensor encode_prompt(const std::vector<std::string>& prompts);
  size_t prompt_cache_limit = 256;   // prompts kept (one (77, D) tensor each); 0 disables the cache
  int64_t prompt_cache_hits = 0, prompt_cache_misses = 0;
  // Images in [0, 1] (B, 3, H, W) -> scaled latents (latent_dist sample with noise from `noise` x scaling factor).
  at::Tensor encode_image(const at::Tensor& images01, NoiseSource& noise);
  // Scaled latents -> images in [0, 1].
  at::Tensor decode_latents(const at::Tensor& latents);
  int64_t vae_scale_factor() const { return vae->downscale_factor(); }
  // Default output size: the UNet's sample_size times the VAE factor (512 for SD 1.5).
  int64_t default_image_size() const { return unet->config().sample_size * vae_scale_factor(); }

 private:
  std::map<std::string, at::Tensor> prompt_cache_;
  std::deque<std::string> prompt_cache_order_;  // oldest first
};

// One evaluation of the noise-prediction network: (model input, timestep (scalar tensor), text states, step
// info with the CFG branch of every row) -> prediction. The plain UNet is one; a method may wrap it (e.g. a
// ControlNet adding residuals) and hand the wrapped one to the CFG denoiser.
using ModelFn = std::function<at::Tensor(const at::Tensor& x, const at::Tensor& timestep, const at::Tensor& context,
                                         const StepInfo& step)>;

struct GenerateRequest {
  std::string prompt;
  std::string negative_prompt;
  int64_t steps = 50;
  double guidance_scale = 7.5;   // <= 1 disables classifier-free guidance
  int64_t height = 0, width = 0; // 0 = the model's default size
  double strength = 0.8;         // img2img: fraction of the schedule to run
  at::Tensor init_image;         // img2img: (1 or B, 3, H, W) in [0, 1]
  ModelFn model;                 // the network the CFG denoiser calls; empty = the plain UNet (unet_model_fn)
};

struct GenerateOutput {
  at::Tensor images;         // (B, 3, H, W) in [0, 1], float32 on the CPU
  at::Tensor latents;        // final latents (B, 4, h, w)
  at::Tensor initial_latents;
  at::Tensor prompt_embeds;  // (2B or B, 77, D): unconditional rows first when CFG is on
  std::vector<double> timesteps;
};

// Validates a request before any heavy work (sizes divisible by the VAE factor, steps > 0, strength in (0,1]).
void check_request(const StableDiffusion& sd, const GenerateRequest& request, bool img2img);

// The CFG denoiser over the UNet: duplicates the batch, runs unconditional + conditional rows in one call
// and combines them. `prompt_embeds` holds B unconditional rows then B conditional rows when guidance > 1,
// else B conditional rows.
DenoiseFn make_cfg_denoiser(StableDiffusion& sd, const at::Tensor& prompt_embeds, double guidance_scale);

ModelFn unet_model_fn(StableDiffusion& sd);
// The CFG denoiser over any model function (make_cfg_denoiser(sd, ...) = this over unet_model_fn(sd)).
DenoiseFn make_cfg_denoiser(const ModelFn& model, const at::Tensor& prompt_embeds, double guidance_scale);

// Prompt embeddings for a batch of `batch` items: [negative x B; prompt x B] (CFG) or [prompt x B].
at::Tensor cfg_prompt_embeds(StableDiffusion& sd, const GenerateRequest& request, int64_t batch);

using ProgressFn = std::function<void(int64_t done, int64_t total)>;

// Batch size = the noise source's batch (one image per seed).
GenerateOutput txt2img(StableDiffusion& sd, const GenerateRequest& request, NoiseSource& noise, int64_t batch,
                       const SamplerHooks& hooks = {}, const ProgressFn& progress = {});
GenerateOutput img2img(StableDiffusion& sd, const GenerateRequest& request, NoiseSource& noise, int64_t batch,
                       const SamplerHooks& hooks = {}, const ProgressFn& progress = {});

at::Device parse_device(const std::string& device);
at::ScalarType parse_dtype(const std::string& dtype, const at::Device& device);

}  // namespace collage
