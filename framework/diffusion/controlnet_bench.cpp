// time_controlnet_step (diffusion/controlnet.h).
#include <ATen/ATen.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>

#include "core/core.h"
#include "diffusion/controlnet.h"

namespace collage {

namespace {

double seconds_of(const std::function<void()>& fn, const at::Device& device) {
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  if (device.is_cuda()) torch::cuda::synchronize();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

ControlNetStepTiming time_controlnet_step(UNet2DConditionModelImpl& unet, ControlNetModelImpl& net, int64_t batch,
                                          int64_t latent, int64_t tokens, int64_t rounds) {
  COLLAGE_CHECK(rounds > 0 && batch > 0 && latent > 0, "time_controlnet_step: rounds, batch and latent must be positive");
  torch::NoGradGuard no_grad;
  const at::Tensor p = unet.parameters().front();
  const auto opts = p.options();
  const auto& uc = unet.config();
  const int64_t f = net.config().conditioning_downscale();
  auto sample = at::randn({batch, uc.in_channels, latent, latent}, opts);
  auto context = at::randn({batch, tokens, uc.cross_attention_dim}, opts);
  auto image = at::rand({batch, net.config().conditioning_channels, latent * f, latent * f}, opts);
  auto timestep = at::scalar_tensor(500.0, at::TensorOptions().device(p.device()));
  at::Tensor out;
  auto plain = [&] { out = unet.forward(sample, timestep, context); };
  auto control = [&] { net.forward(sample, timestep, context, image, 1.0); };
  auto step = [&] {
    auto residuals = net.forward(sample, timestep, context, image, 1.0);
    out = unet.forward(sample, timestep, context, nullptr, nullptr, &residuals);
  };
  plain();
  step();  // warm-up (allocator, oneDNN primitives)
  COLLAGE_CHECK(at::isfinite(out).all().item<bool>(), "time_controlnet_step: non-finite UNet output");
  std::vector<double> u, c, s;
  for (int64_t r = 0; r < rounds; ++r) {
    u.push_back(seconds_of(plain, p.device()));
    c.push_back(seconds_of(control, p.device()));
    s.push_back(seconds_of(step, p.device()));
  }
  ControlNetStepTiming t;
  t.unet_seconds = median(u);
  t.controlnet_seconds = median(c);
  t.step_seconds = median(s);
  t.rounds = rounds;
  return t;
}

}  // namespace collage
