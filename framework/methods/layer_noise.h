// LN: per-layer noise as a sampler callback (METHOD.md, "LN"). Sampling starts SDEdit-style at the map's
// maximum strength; after every solver step the pixels whose own start time t = T * N(p) has not come yet
// are reset to the original latents re-noised to the timestep the latents are now at. The same hook, with
// a free-form map and no dilation, is the Differential Diffusion baseline.
#pragma once

#include <ATen/Tensor.h>

#include <vector>

#include "diffusion/diffusion.h"

namespace collage {

class LayerNoiseSampler {
 public:
  // x0: clean latents (B, C, h, w); strength_map: (H, W) in [0, 1] at any resolution (area-resampled to h x w).
  // dilate: grow the kept region by a max-pool of kernel 2*floor(4t/T)+1 as the authors do.
  LayerNoiseSampler(const Scheduler& scheduler, at::Tensor x0, const at::Tensor& strength_map, NoiseSource& noise,
                    bool dilate);

  // The SDEdit start strength: max over the map.
  double start_strength() const { return start_strength_; }
  const at::Tensor& latent_map() const { return map_; }
  // The sampler callback: resets not-yet-started pixels. After the final step, pixels whose start time lies
  // at or below the last timestep (e.g. strength 0) are set to the clean latents.
  void on_step_end(StepState& state);
  // Keep masks (h, w), one per step, as applied (1 = reset to the re-noised original).
  const std::vector<at::Tensor>& keep_masks() const { return keep_masks_; }

 private:
  const Scheduler& scheduler_;
  at::Tensor x0_, map_;
  NoiseSource& noise_;
  bool dilate_;
  double start_strength_ = 0;
  double num_train_timesteps_ = 1000;
  std::vector<at::Tensor> keep_masks_;
};

}  // namespace collage
