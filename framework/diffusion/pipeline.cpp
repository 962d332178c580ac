#include "diffusion/pipeline.h"

#include <algorithm>
#include <ATen/ATen.h>
#include <torch/torch.h>

#include <filesystem>

#include "core/core.h"
#include "diffusion/guidance.h"

namespace fs = std::filesystem;

namespace collage {

at::Device parse_device(const std::string& device) {
  try {
    at::Device d(device);
    if (d.is_cuda())
      COLLAGE_CHECK(torch::cuda::is_available(),
                    "device '{}' requested but this libtorch build has no CUDA or no GPU is visible", device);
    return d;
  } catch (const c10::Error& e) {
    throw Error(fmt::format("unknown device '{}' (use cpu, cuda or cuda:N)", device), "", "--device");
  }
}

at::ScalarType parse_dtype(const std::string& dtype, const at::Device& device) {
  if (dtype == "auto") return device.is_cuda() ? at::kHalf : at::kFloat;
  if (dtype == "float32" || dtype == "fp32") return at::kFloat;
  if (dtype == "float16" || dtype == "fp16") return at::kHalf;
  if (dtype == "bfloat16" || dtype == "bf16") return at::kBFloat16;
  throw Error(fmt::format("unknown dtype '{}' (auto, float32, float16, bfloat16)", dtype), "", "--dtype");
}

ComponentPaths ComponentPaths::from_pipeline_folder(const std::string& folder) {
  const auto index = (fs::path(folder) / "model_index.json").string();
  COLLAGE_CHECK_AT(fs::exists(index), folder, "model_index.json",
                   "not a diffusers pipeline folder: model_index.json is missing");
  auto j = read_json_file(index);
  for (const char* key : {"tokenizer", "text_encoder", "unet", "vae", "scheduler"})
    COLLAGE_CHECK_AT(j.contains(key) && !j[key].is_null() && !(j[key].is_array() && j[key][0].is_null()), index,
                     key, "the pipeline has no '{}' component", key);
  ComponentPaths p;
  p.tokenizer = (fs::path(folder) / "tokenizer").string();
  p.text_encoder = (fs::path(folder) / "text_encoder").string();
  p.unet = (fs::path(folder) / "unet").string();
  p.vae = (fs::path(folder) / "vae").string();
  p.scheduler_config = (fs::path(folder) / "scheduler" / "scheduler_config.json").string();
  return p;
}

std::shared_ptr<StableDiffusion> StableDiffusion::load(const std::string& folder, const PipelineOptions& options) {
  auto sd = load(ComponentPaths::from_pipeline_folder(folder), options);
  sd->name = folder;
  return sd;
}

std::shared_ptr<StableDiffusion> StableDiffusion::load(const ComponentPaths& paths, const PipelineOptions& options) {
  auto sd = std::make_shared<StableDiffusion>();
  sd->name = paths.unet;
  sd->device = parse_device(options.device);
  sd->dtype = parse_dtype(options.dtype, sd->device);
  sd->tokenizer = std::make_shared<ClipTokenizer>(ClipTokenizer::from_folder(paths.tokenizer, paths.tokenizer_config));
  sd->text_encoder = ClipTextModelImpl::load(paths.text_encoder, options.variant);
  sd->unet = UNet2DConditionModel(UNet2DConditionModelImpl::load(paths.unet, options.variant));
  sd->vae = load_autoencoder(paths.vae, options.variant);
  sd->scheduler = load_scheduler(paths.scheduler_config, options.scheduler);
  COLLAGE_CHECK_AT(sd->text_encoder->config().hidden_size == sd->unet->config().cross_attention_dim, paths.unet,
                   "cross_attention_dim", "UNet expects text features of width {}, the text encoder gives {}",
                   sd->unet->config().cross_attention_dim, sd->text_encoder->config().hidden_size);
  sd->prepare(options);
  return sd;
}

void StableDiffusion::prepare(const PipelineOptions& options) {
  prompt_cache_.clear();  // the encoder may change device/dtype below
  prompt_cache_order_.clear();
  text_encoder->eval();
  unet->eval();
  text_encoder->to(device, dtype);
  unet->to(device, dtype);
  if (device.is_cpu() && dtype == at::kFloat && options.cpu_fast_paths) {
    // Channels-last pays at Stable Diffusion's latent sizes; at the sandbox model's 16x16 latents NCHW is faster
    // (8 seeds x 50 CFG steps, 2 threads, runs interleaved: 9.3-10.3 s NCHW vs 10.0-11.0 s channels-last).
    unet->set_channels_last(unet->config().sample_size >= 32);
    pack_large_convs(*unet);
  }
  // The VAE decoder overflows in half precision on some inputs; keep it in float32 (it is a small share of
  // the run time).
  vae->to(device, at::kFloat);
}

at::Tensor StableDiffusion::tokenize(const std::vector<std::string>& prompts) const {
  const int64_t len = tokenizer->model_max_length();
  auto ids = at::empty({static_cast<int64_t>(prompts.size()), len}, at::kLong);
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto row = tokenizer->encode_padded(prompts[i], len);
    std::copy(row.begin(), row.end(), ids[i].data_ptr<int64_t>());
  }
  return ids;
}

at::Tensor StableDiffusion::encode_prompt(const std::vector<std::string>& prompts) {
  torch::NoGradGuard no_grad;
  if (prompt_cache_limit == 0) return text_encoder->forward(tokenize(prompts).to(device)).last_hidden_state.to(dtype);
  std::vector<std::string> missing;
  for (const auto& p : prompts)
    if (!prompt_cache_.count(p) && std::find(missing.begin(), missing.end(), p) == missing.end()) missing.push_back(p);
  prompt_cache_hits += int64_t(prompts.size()) - int64_t(missing.size());
  prompt_cache_misses += int64_t(missing.size());
  if (!missing.empty()) {  // one batch for the new prompts; each row is independent of the others
    auto states = text_encoder->forward(tokenize(missing).to(device)).last_hidden_state.to(dtype);
    for (size_t i = 0; i < missing.size(); ++i) {
      prompt_cache_[missing[i]] = states[int64_t(i)].clone();
      prompt_cache_order_.push_back(missing[i]);
    }
  }
  std::vector<at::Tensor> rows;
  for (const auto& p : prompts) rows.push_back(prompt_cache_.at(p));
  auto out = at::stack(rows);
  while (prompt_cache_order_.size() > prompt_cache_limit) {
    prompt_cache_.erase(prompt_cache_order_.front());
    prompt_cache_order_.pop_front();
  }
  return out;
}

at::Tensor StableDiffusion::encode_image(const at::Tensor& images01, NoiseSource& noise) {
  torch::NoGradGuard no_grad;
  auto x = (images01.to(device, at::kFloat) * 2.0 - 1.0);
  auto posterior = vae->encode(x);
  auto eps = noise.draw(posterior.mean.sizes(), posterior.mean.options(), "vae_sample");
  return posterior.sample(eps) * vae->scaling_factor();
}

at::Tensor StableDiffusion::decode_latents(const at::Tensor& latents) {
  torch::NoGradGuard no_grad;
  auto image = vae->decode(latents.to(at::kFloat) / vae->scaling_factor());
  return (image / 2.0 + 0.5).clamp(0, 1).to(at::kCPU);
}

void check_request(const StableDiffusion& sd, const GenerateRequest& r, bool img2img) {
  const int64_t h = r.height > 0 ? r.height : sd.default_image_size();
  const int64_t w = r.width > 0 ? r.width : sd.default_image_size();
  if (!img2img)
    COLLAGE_CHECK_AT(h % sd.vae->downscale_factor() == 0 && w % sd.vae->downscale_factor() == 0, "", "--height",
                     "height and width must be divisible by {} (the VAE factor), got {}x{}",
                     sd.vae->downscale_factor(), h, w);
  COLLAGE_CHECK_AT(r.steps > 0, "", "--steps", "steps must be positive, got {}", r.steps);
  COLLAGE_CHECK_AT(std::isfinite(r.guidance_scale), "", "--guidance", "guidance scale must be finite");
  if (img2img) {
    COLLAGE_CHECK_AT(r.strength > 0 && r.strength <= 1, "", "--strength", "strength must be in (0, 1], got {}",
                     r.strength);
    COLLAGE_CHECK_AT(r.init_image.defined() && r.init_image.dim() == 4 && r.init_image.size(1) == 3, "", "--image",
                     "img2img needs an init image of shape (B, 3, H, W)");
    COLLAGE_CHECK_AT(r.init_image.size(2) % sd.vae->downscale_factor() == 0 &&
                         r.init_image.size(3) % sd.vae->downscale_factor() == 0,
                     "", "--image", "image size {}x{} must be divisible by {}", r.init_image.size(2),
                     r.init_image.size(3), sd.vae->downscale_factor());
  }
}

at::Tensor cfg_prompt_embeds(StableDiffusion& sd, const GenerateRequest& r, int64_t batch) {
  const bool cfg = r.guidance_scale > 1.0;
  std::vector<std::string> texts;
  if (cfg) texts.push_back(r.negative_prompt);
  texts.push_back(r.prompt);
  auto emb = sd.encode_prompt(texts);  // (1 or 2, 77, D)
  if (!cfg) return emb.expand({batch, emb.size(1), emb.size(2)}).contiguous();
  auto uncond = emb.narrow(0, 0, 1).expand({batch, emb.size(1), emb.size(2)});
  auto cond = emb.narrow(0, 1, 1).expand({batch, emb.size(1), emb.size(2)});
  return at::cat({uncond, cond}, 0);
}

std::shared_ptr<StableDiffusion> StableDiffusion::random(const std::string& config_folder,
                                                        const std::string& vocab_folder,
                                                        const PipelineOptions& options) {
  const std::filesystem::path dir(config_folder);
  auto sd = std::make_shared<StableDiffusion>();
  sd->name = "random " + config_folder;
  sd->device = parse_device(options.device);
  sd->dtype = parse_dtype(options.dtype, sd->device);
  sd->tokenizer = std::make_shared<ClipTokenizer>(ClipTokenizer::from_folder(vocab_folder, (dir / "tokenizer").string()));
  sd->text_encoder = ClipTextModel(ClipTextConfig::from_json_file((dir / "text_encoder/config.json").string()));
  sd->unet = UNet2DConditionModel(UNet2DConditionConfig::from_json_file((dir / "unet/config.json").string()));
  sd->vae = std::make_shared<AutoencoderKLModel>(
      AutoencoderKL(AutoencoderKLConfig::from_json_file((dir / "vae/config.json").string())));
  sd->scheduler = load_scheduler((dir / "scheduler/scheduler_config.json").string(), "euler_ancestral");
  sd->prepare(options);
  return sd;
}

ModelFn unet_model_fn(StableDiffusion& sd) {
  auto unet = sd.unet;
  return [unet](const at::Tensor& x, const at::Tensor& timestep, const at::Tensor& context, const StepInfo& step) mutable {
    return unet->forward(x, timestep, context, &step);
  };
}

DenoiseFn make_cfg_denoiser(const ModelFn& model, const at::Tensor& prompt_embeds, double guidance_scale) {
  const bool cfg = guidance_scale > 1.0;
  return [model, prompt_embeds, guidance_scale, cfg](const at::Tensor& x, double t, const StepInfo& step_in) {
    torch::NoGradGuard no_grad;
    StepInfo step = step_in;
    const int64_t B = x.size(0);
    at::Tensor input = cfg ? at::cat({x, x}, 0) : x;
    step.conditional.assign(input.size(0), true);
    if (cfg)
      for (int64_t i = 0; i < B; ++i) step.conditional[i] = false;
    auto timestep = at::scalar_tensor(t, at::TensorOptions().dtype(at::kFloat).device(x.device()));
    auto out = model(input.to(prompt_embeds.scalar_type()), timestep, prompt_embeds, step);
    out = out.to(x.scalar_type());
    return cfg ? apply_cfg(out, guidance_scale) : out;
  };
}

DenoiseFn make_cfg_denoiser(StableDiffusion& sd, const at::Tensor& prompt_embeds, double guidance_scale) {
  return make_cfg_denoiser(unet_model_fn(sd), prompt_embeds, guidance_scale);
}

namespace {

GenerateOutput run(StableDiffusion& sd, const GenerateRequest& r, NoiseSource& noise, int64_t batch, bool is_img2img,
                   const SamplerHooks& hooks, const ProgressFn& progress) {
  check_request(sd, r, is_img2img);
  torch::NoGradGuard no_grad;
  GenerateOutput out;
  out.prompt_embeds = cfg_prompt_embeds(sd, r, batch);
  auto& scheduler = *sd.scheduler;
  scheduler.set_timesteps(r.steps);
  const int64_t f = sd.vae->downscale_factor();
  const auto latent_opts = at::TensorOptions().dtype(at::kFloat).device(sd.device);
  int64_t begin = 0;
  at::Tensor latents;
  if (!is_img2img) {
    const int64_t h = r.height > 0 ? r.height : sd.default_image_size();
    const int64_t w = r.width > 0 ? r.width : sd.default_image_size();
    latents = noise.draw({batch, sd.vae->latent_channels(), h / f, w / f}, latent_opts, "initial_latents");
    latents = latents * scheduler.init_noise_sigma();
  } else {
    auto image = r.init_image;
    if (image.size(0) == 1 && batch > 1) image = image.expand({batch, -1, -1, -1});
    COLLAGE_CHECK(image.size(0) == batch, "img2img: {} init images for a batch of {}", image.size(0), batch);
    auto init_latents = sd.encode_image(image, noise);
    auto start = scheduler.img2img_start(r.strength);
    COLLAGE_CHECK(!start.timesteps.empty(), "img2img: strength {} with {} steps runs no step", r.strength, r.steps);
    begin = start.begin_index;
    auto eps = noise.draw(init_latents.sizes(), latent_opts, "img2img_noise");
    latents = scheduler.add_noise(init_latents, eps, start.timesteps.front());
  }
  out.initial_latents = latents;
  auto denoise = make_cfg_denoiser(r.model ? r.model : unet_model_fn(sd), out.prompt_embeds, r.guidance_scale);
  auto result = run_sampler(scheduler, denoise, latents, begin, noise, hooks, progress);
  out.latents = result.latents;
  out.timesteps = result.timesteps;
  out.images = sd.decode_latents(result.latents);
  return out;
}

}  // namespace

GenerateOutput txt2img(StableDiffusion& sd, const GenerateRequest& r, NoiseSource& noise, int64_t batch,
                       const SamplerHooks& hooks, const ProgressFn& progress) {
  return run(sd, r, noise, batch, false, hooks, progress);
}

GenerateOutput img2img(StableDiffusion& sd, const GenerateRequest& r, NoiseSource& noise, int64_t batch,
                       const SamplerHooks& hooks, const ProgressFn& progress) {
  return run(sd, r, noise, batch, true, hooks, progress);
}

}  // namespace collage
