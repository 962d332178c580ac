#include "diffusion/sampler.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "core/core.h"

namespace collage {

SeededNoise::SeededNoise(std::vector<uint64_t> seeds) {
  COLLAGE_CHECK(!seeds.empty(), "SeededNoise: at least one seed is needed");
  for (auto s : seeds) generators_.push_back(at::make_generator<at::CPUGeneratorImpl>(s));
}

at::Tensor SeededNoise::draw(at::IntArrayRef shape, const at::TensorOptions& options, const std::string& what) {
  COLLAGE_CHECK(!shape.empty() && shape[0] == static_cast<int64_t>(generators_.size()),
                "noise draw '{}': batch {} but {} seeds", what, shape.empty() ? 0 : shape[0], generators_.size());
  std::vector<int64_t> item(shape.begin(), shape.end());
  item[0] = 1;
  std::vector<at::Tensor> parts;
  parts.reserve(generators_.size());
  // Drawn in float32 on the CPU, as diffusers' randn_tensor does for a CPU generator, then moved.
  for (auto& g : generators_) parts.push_back(at::randn(item, g, at::TensorOptions().dtype(at::kFloat)));
  return at::cat(parts, 0).to(options);
}

at::Tensor RecordedNoise::draw(at::IntArrayRef shape, const at::TensorOptions& options, const std::string& what) {
  COLLAGE_CHECK(next_ < draws_.size(), "recorded noise exhausted at draw {} ('{}')", next_, what);
  auto t = draws_[next_++];
  COLLAGE_CHECK(t.sizes() == shape, "recorded draw {} ('{}') has shape {}, the run needs {}", next_ - 1, what,
                fmt::join(t.sizes(), "x"), fmt::join(shape, "x"));
  return t.to(options);
}

SampleResult run_sampler(Scheduler& scheduler, const DenoiseFn& denoise, at::Tensor latents, int64_t begin_index,
                         NoiseSource& noise, const SamplerHooks& hooks,
                         const std::function<void(int64_t, int64_t)>& progress) {
  const auto all = scheduler.timestep_values();
  COLLAGE_CHECK(!all.empty(), "run_sampler: call set_timesteps before sampling");
  COLLAGE_CHECK(begin_index >= 0 && begin_index <= static_cast<int64_t>(all.size()),
                "run_sampler: begin index {} outside the {} timesteps", begin_index, all.size());
  SampleResult result;
  const int64_t total = static_cast<int64_t>(all.size()) - begin_index;
  StepInfo info;
  info.num_steps = total;
  for (int64_t i = 0; i < total; ++i) {
    const double t = all[begin_index + i];
    StepState state;
    state.index = i;
    state.num_steps = total;
    state.timestep = t;
    state.next_timestep = (begin_index + i + 1 < static_cast<int64_t>(all.size())) ? all[begin_index + i + 1] : -1;
    state.sigma = scheduler.sigma_at(t);
    state.latents = latents;
    if (hooks.on_step_begin) {
      hooks.on_step_begin(state);
      latents = state.latents;
    }
    info.index = i;
    info.timestep = t;
    info.sigma = state.sigma;
    auto model_input = scheduler.scale_model_input(latents, t);
    auto noise_pred = denoise(model_input, t, info);
    COLLAGE_CHECK(noise_pred.sizes() == latents.sizes(), "denoiser returned shape {} for latents {}",
                  fmt::join(noise_pred.sizes(), "x"), fmt::join(latents.sizes(), "x"));
    at::Tensor step_noise;
    if (scheduler.needs_noise())
      step_noise = noise.draw(latents.sizes(), latents.options(), "step_" + std::to_string(i));
    auto out = scheduler.step(noise_pred, t, latents, step_noise);
    latents = out.prev_sample;
    if (hooks.on_step_end) {
      state.latents = latents;
      state.noise_pred = noise_pred;
      state.pred_original_sample = out.pred_original_sample;
      hooks.on_step_end(state);
      latents = state.latents;
    }
    result.timesteps.push_back(t);
    if (progress) progress(i + 1, total);
  }
  result.latents = latents;
  return result;
}

}  // namespace collage
