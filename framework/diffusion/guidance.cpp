#include "diffusion/guidance.h"

#include <ATen/ATen.h>

namespace collage {

at::Tensor apply_cfg(const at::Tensor& noise_pred, double guidance_scale) {
  auto parts = noise_pred.chunk(2, 0);
  return parts[0] + guidance_scale * (parts[1] - parts[0]);
}

}  // namespace collage
