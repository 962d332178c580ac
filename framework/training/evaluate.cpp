// Held-out compositional evaluation of a ShapesWorld model (see trainer.h: evaluate_shapesworld).
#include <torch/torch.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <random>

#include "core/core.h"
#include "datasets/shapesworld/shapesworld.h"
#include "diffusion/diffusion.h"
#include "training/trainer.h"

namespace fs = std::filesystem;

namespace collage::training {

Json EvalResult::to_json() const {
  Json j;
  j["prompts"] = prompts;
  j["all_found"] = all_found;
  j["all_found_rate"] = prompts ? double(all_found) / double(prompts) : 0.0;
  j["exact"] = exact;
  j["exact_rate"] = prompts ? double(exact) / double(prompts) : 0.0;
  j["held_out_found"] = held_out_found;
  j["held_out_found_rate"] = prompts ? double(held_out_found) / double(prompts) : 0.0;
  j["objects"] = objects;
  j["objects_found"] = objects_found;
  j["seconds"] = seconds;
  Json items = Json::array();
  for (size_t i = 0; i < prompt_texts.size(); ++i)
    items.push_back(Json{{"prompt", prompt_texts[i]}, {"success", bool(success[i])}, {"detected", detected[i]}});
  j["items"] = items;
  return j;
}

EvalResult evaluate_shapesworld(const std::string& model_dir, const EvalOptions& options,
                                const std::function<void(int64_t, int64_t)>& progress) {
  auto held_out = options.held_out;
  if (held_out.empty()) {
    const auto info_path = (fs::path(model_dir) / "TRAINING.json").string();
    COLLAGE_CHECK_AT(fs::exists(info_path), info_path, "held_out",
                     "no held-out list given and the model folder has no TRAINING.json");
    auto info = read_json_file(info_path);
    for (const auto& p : info["held_out"]) held_out.emplace_back(p[0].get<std::string>(), p[1].get<std::string>());
  }
  COLLAGE_CHECK(!held_out.empty(), "evaluation needs at least one held-out (colour, shape) combination");
  auto is_held = [&](const std::string& c, const std::string& s) {
    for (const auto& h : held_out)
      if (h.first == c && h.second == s) return true;
    return false;
  };
  PipelineOptions po;
  po.device = options.device;
  po.dtype = "float32";  // as on the CPU, so that GPU and CPU evaluations compare
  auto sd = StableDiffusion::load(model_dir, po);
  const auto colours = shapesworld::colour_names();
  const auto shapes = shapesworld::shape_names();
  const auto backgrounds = shapesworld::background_names();
  std::mt19937_64 rng(options.seed * 7919 + 17);
  EvalResult res;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::string> prompts;
  std::vector<std::vector<shapesworld::ObjectSpec>> objects;
  std::vector<shapesworld::ObjectSpec> firsts;
  for (int64_t i = 0; i < options.n; ++i) {
    shapesworld::SceneSpec scene;
    const auto& h = held_out[size_t(i) % held_out.size()];
    shapesworld::ObjectSpec a;
    a.colour = h.first;
    a.shape = h.second;
    std::vector<shapesworld::ObjectSpec> objs{a};
    if (i % 2 == 1) {  // a second, ordinary object of another colour
      shapesworld::ObjectSpec b;
      do {
        b.colour = colours[rng() % colours.size()];
        b.shape = shapes[rng() % shapes.size()];
      } while (b.colour == a.colour || is_held(b.colour, b.shape));
      objs.push_back(b);
      if (rng() % 2) std::swap(objs[0], objs[1]);
    }
    scene.objects = objs;
    scene.background = backgrounds[rng() % backgrounds.size()];
    shapesworld::CaptionOptions co;
    co.colour_probability = 1;
    co.pattern_probability = 1;
    co.background_probability = (i / 2) % 2 == 0 ? 1 : 0;
    co.tint_probability = 0;
    prompts.push_back(shapesworld::caption(scene, 0, co));
    objects.push_back(objs);
    firsts.push_back(a);
  }
  // Several prompts per sampler run (each row has its own seed, so an image does not depend on its batch).
  const int64_t chunk = 10;
  const int64_t h = sd->default_image_size() / sd->vae_scale_factor();
  for (int64_t c0 = 0; c0 < options.n; c0 += chunk) {
    const int64_t B = std::min(chunk, options.n - c0);
    std::vector<std::string> texts(prompts.begin() + c0, prompts.begin() + c0 + B);
    std::vector<uint64_t> seeds;
    for (int64_t i = 0; i < B; ++i) seeds.push_back(options.seed * 100003 + uint64_t(c0 + i));
    SeededNoise noise(seeds);
    torch::NoGradGuard no_grad;
    auto cond = sd->encode_prompt(texts);
    auto embeds = cond;
    if (options.guidance > 1.0) {
      auto uncond = sd->encode_prompt({""}).expand({B, cond.size(1), cond.size(2)});
      embeds = at::cat({uncond, cond}, 0);
    }
    auto& scheduler = *sd->scheduler;
    scheduler.set_timesteps(options.steps);
    auto latents = noise.draw({B, sd->vae->latent_channels(), h, h},
                              at::TensorOptions().dtype(at::kFloat).device(sd->device), "initial_latents") *
                   scheduler.init_noise_sigma();
    auto result = run_sampler(scheduler, make_cfg_denoiser(*sd, embeds, options.guidance), latents, 0, noise);
    auto images = sd->decode_latents(result.latents).to(at::kFloat).cpu();
    for (int64_t k = 0; k < B; ++k) {
      const int64_t i = c0 + k;
      auto image = images[k].contiguous();
      auto dets = shapesworld::analyse(image);
      bool all = true;
      const auto& a = firsts[size_t(i)];
      for (const auto& o : objects[size_t(i)]) {
        const bool found = shapesworld::find_object(dets, o.shape, o.colour).has_value();
        res.objects += 1;
        res.objects_found += found;
        all = all && found;
        if (o.colour == a.colour && o.shape == a.shape && found) res.held_out_found += 1;
      }
      res.prompts += 1;
      res.all_found += all;
      res.exact += all && dets.size() == objects[size_t(i)].size();
      res.prompt_texts.push_back(prompts[size_t(i)]);
      res.success.push_back(all);
      res.detected.push_back(static_cast<int64_t>(dets.size()));
      if (options.on_image) options.on_image(i, image, all);
    }
    if (progress) progress(c0 + B, options.n);
  }
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace collage::training
