#include "methods/layer_noise.h"

#include <ATen/ATen.h>

#include <cmath>

#include "collage/collage.h"
#include "core/core.h"

namespace collage {

LayerNoiseSampler::LayerNoiseSampler(const Scheduler& scheduler, at::Tensor x0, const at::Tensor& strength_map,
                                     NoiseSource& noise, bool dilate)
    : scheduler_(scheduler), x0_(std::move(x0)), noise_(noise), dilate_(dilate) {
  COLLAGE_CHECK(strength_map.dim() == 2, "LN: the strength map must be (H, W)");
  COLLAGE_CHECK(!at::isnan(strength_map).any().item<bool>(), "LN: the strength map has NaNs");
  map_ = downsample_masks(strength_map.unsqueeze(0).to(at::kFloat), x0_.size(2), x0_.size(3))[0]
             .clamp(0, 1)
             .to(x0_.device());
  start_strength_ = map_.max().item<double>();
  num_train_timesteps_ = static_cast<double>(scheduler.config().num_train_timesteps);
}

void LayerNoiseSampler::on_step_end(StepState& s) {
  const bool last = s.next_timestep < 0;
  const double T = num_train_timesteps_;
  // The timestep the latents are at now (after the step); METHOD.md: not the one before it.
  const double t = last ? s.timestep : s.next_timestep;
  auto start_time = map_ * T;  // each pixel's own start timestep
  auto keep = (last ? start_time.le(t) : start_time.lt(t)).to(at::kFloat);
  if (dilate_ && !last) {
    const int64_t k = 2 * static_cast<int64_t>(std::floor(4.0 * t / T)) + 1;
    if (k > 1) keep = at::max_pool2d(keep.view({1, 1, keep.size(0), keep.size(1)}), {k, k}, {1, 1}, {k / 2, k / 2})
                          .view({keep.size(0), keep.size(1)});
  }
  keep_masks_.push_back(keep.to(at::kCPU));
  if (!keep.any().item<bool>()) return;
  at::Tensor reference;
  if (last) {
    reference = x0_;
  } else {
    auto eps = noise_.draw(x0_.sizes(), x0_.options(), fmt::format("ln_step_{}", s.index));
    reference = scheduler_.add_noise(x0_, eps, t);
  }
  auto k = keep.view({1, 1, keep.size(0), keep.size(1)}).to(s.latents.scalar_type());
  s.latents = k * reference.to(s.latents.scalar_type()) + (1 - k) * s.latents;
}

}  // namespace collage
