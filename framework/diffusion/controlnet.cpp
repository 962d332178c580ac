#include "diffusion/controlnet.h"

#include <ATen/ATen.h>
#include <torch/torch.h>

#include "core/core.h"

namespace collage {

namespace {

// The control image for `rows` model-input rows: the N prepared images repeated (diffusers repeats them to the
// batch, then concatenates [image, image] for the two CFG halves).
at::Tensor control_rows(const at::Tensor& image, int64_t rows, const at::Device& device) {
  const int64_t n = image.size(0);
  COLLAGE_CHECK(rows % n == 0, "ControlNet: {} control images for {} model-input rows", n, rows);
  return image.to(device).repeat({rows / n, 1, 1, 1});
}

}  // namespace

ModelFn controlnet_model_fn(StableDiffusion& sd, const ControlNetCall& call) {
  COLLAGE_CHECK(call.net, "controlnet_model_fn: no ControlNet given");
  COLLAGE_CHECK(call.image.defined() && call.image.dim() == 4 && call.image.size(1) == 3,
                "controlnet_model_fn: the control image must be (N, 3, H, W)");
  auto unet = sd.unet;
  auto net = call.net;  // a non-const copy (captured copies of `call` would be const)
  return [unet, net, call](const at::Tensor& x, const at::Tensor& timestep, const at::Tensor& context,
                      const StepInfo& step) mutable {
    const int64_t rows = x.size(0);
    UNetResiduals residuals;
    std::vector<int64_t> cond_rows;
    for (int64_t i = 0; i < rows; ++i)
      if (step.conditional.empty() || step.conditional[i]) cond_rows.push_back(i);
    if (!call.guess_mode || int64_t(cond_rows.size()) == rows) {
      residuals = net->forward(x, timestep, context, control_rows(call.image, rows, x.device()), call.scale,
                                    call.guess_mode, &step);
    } else {
      // Guess mode under CFG: the ControlNet sees only the prompt-conditioned rows.
      auto index = at::tensor(cond_rows, at::kLong).to(x.device());
      StepInfo cond_step = step;
      cond_step.conditional.assign(cond_rows.size(), true);
      auto part = net->forward(x.index_select(0, index), timestep, context.index_select(0, index),
                                    control_rows(call.image, int64_t(cond_rows.size()), x.device()), call.scale,
                                    true, &cond_step);
      auto widen = [&](const at::Tensor& r) {
        std::vector<int64_t> shape(r.sizes().begin(), r.sizes().end());
        shape[0] = rows;
        return at::zeros(shape, r.options()).index_copy_(0, index, r);
      };
      for (const auto& r : part.down) residuals.down.push_back(widen(r));
      residuals.mid = widen(part.mid);
    }
    if (call.on_residuals) call.on_residuals(step, residuals);
    return unet->forward(x, timestep, context, &step, nullptr, &residuals);
  };
}

}  // namespace collage
