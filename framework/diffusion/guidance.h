// Classifier-free guidance.
#pragma once

#include <ATen/Tensor.h>

namespace collage {

// noise_pred holds the unconditional rows first, then the conditional rows (the diffusers layout):
// returns uncond + scale * (cond - uncond).
at::Tensor apply_cfg(const at::Tensor& noise_pred, double guidance_scale);

}  // namespace collage
