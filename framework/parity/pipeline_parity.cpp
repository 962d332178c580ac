#include <ATen/ATen.h>
#include <torch/torch.h>

#include <filesystem>

#include "core/core.h"
#include "diffusion/diffusion.h"
#include "parity/parity.h"
#include "parity/pipeline_run.h"

namespace fs = std::filesystem;

namespace collage::parity {

namespace {

std::string step_name(size_t i) { return fmt::format("step_{:02d}", i); }

}  // namespace

void check_pipeline_run(StableDiffusion& sd, const Json& cfg, const std::string& kind, const Json& run,
                        const std::string& folder, Recorder& rec, const ModelFn& model) {
  const auto path = (fs::path(folder) / run.at("file").get<std::string>()).string();
  auto ref = load_safetensors(path);
  const std::string p = kind + ".";
  std::vector<at::Tensor> draws;
  for (size_t i = 0; ref.count(fmt::format("random_draw.{:02d}", i)); ++i)
    draws.push_back(ref.at(fmt::format("random_draw.{:02d}", i)));
  RecordedNoise noise(draws);

  GenerateRequest req;
  req.prompt = cfg.at("prompt").get<std::string>();
  req.negative_prompt = cfg.value("negative_prompt", std::string());
  req.guidance_scale = cfg.at("guidance_scale").get<double>();
  req.height = cfg.at("height").get<int64_t>();
  req.width = cfg.at("width").get<int64_t>();
  req.steps = ref.at("timesteps").size(0);
  req.model = model;
  const bool is_img2img = run.contains("strength");
  if (is_img2img) {
    req.strength = run.at("strength").get<double>();
    req.init_image = ref.at("init_image");
  }

  auto ids = sd.tokenize({req.prompt});
  rec.exact(p + "prompt_input_ids", at::equal(ids, ref.at("prompt_input_ids")));
  auto neg_ids = sd.tokenize({req.negative_prompt});
  rec.exact(p + "negative_prompt_input_ids", at::equal(neg_ids, ref.at("negative_prompt_input_ids")));

  std::vector<at::Tensor> step_latents, step_noise_pred;
  SamplerHooks hooks;
  hooks.on_step_end = [&](StepState& s) {
    step_latents.push_back(s.latents.clone());
    step_noise_pred.push_back(s.noise_pred.clone());
  };
  auto out = is_img2img ? img2img(sd, req, noise, 1, hooks) : txt2img(sd, req, noise, 1, hooks);

  rec.tensor(p + "prompt_embeds_cfg", out.prompt_embeds, ref.at("prompt_embeds_cfg"));
  auto ref_t = ref.at("timesteps").to(at::kDouble);
  const auto all_t = sd.scheduler->timestep_values();
  rec.tensor(p + "timesteps", at::tensor(all_t, at::kDouble), ref_t, 0, 1e-3);
  rec.tensor(p + "initial_latents", out.initial_latents, ref.at("initial_latents"));
  const auto expected_steps = run.at("step_timesteps").size();
  rec.exact(p + "num_steps", out.timesteps.size() == expected_steps,
            fmt::format("ran {} steps, reference {}", out.timesteps.size(), expected_steps));
  for (size_t i = 0; i < step_latents.size() && i < expected_steps; ++i) {
    const auto n = step_name(i);
    auto raw = ref.at(n + ".noise_pred_uncond_cond");
    rec.tensor(p + n + ".noise_pred", step_noise_pred[i], apply_cfg(raw, req.guidance_scale));
    rec.tensor(p + n + ".latents", step_latents[i], ref.at(n + ".latents"));
  }
  rec.exact(p + "random_draws_used", noise.used() == draws.size(),
            fmt::format("used {} of {} recorded draws", noise.used(), draws.size()));
  rec.tensor(p + "final_latents", out.latents, ref.at("final_latents"));
  rec.tensor(p + "image", out.images, ref.at("image"));
}

std::shared_ptr<StableDiffusion> load_reference_pipeline(const std::string& folder, const Json& comp,
                                                         const Target& target) {
  auto resolve = [&](const char* key) { return (fs::path(folder) / comp.at(key).get<std::string>()).lexically_normal().string(); };
  ComponentPaths paths;
  paths.tokenizer = resolve("tokenizer");
  paths.text_encoder = resolve("text_encoder");
  paths.unet = resolve("unet");
  paths.vae = resolve("vae");
  paths.scheduler_config = (fs::path(resolve("scheduler")) / "scheduler_config.json").string();
  PipelineOptions options;
  options.device = target.device.str();
  options.dtype = c10::toString(target.dtype) == std::string("Half")       ? "float16"
                  : c10::toString(target.dtype) == std::string("BFloat16") ? "bfloat16"
                                                                           : "float32";
  return StableDiffusion::load(paths, options);
}

void check_pipeline(const std::string& folder, Recorder& rec) {
  const auto json_path = (fs::path(folder) / "pipeline.json").string();
  auto cfg = read_json_file(json_path);
  auto sd = load_reference_pipeline(folder, cfg.at("components"), rec.target());
  for (auto it = cfg.at("runs").begin(); it != cfg.at("runs").end(); ++it) {
    try {
      check_pipeline_run(*sd, cfg, it.key(), it.value(), folder, rec);
    } catch (const std::exception& e) {
      rec.failure(it.key(), e.what());
    }
  }
}

}  // namespace collage::parity
