// Benchmarks shared by `collage bench` and the device check: the reference matmul rate and one UNet evaluation
// with random weights at a real model's size.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>

#include <chrono>

#include "core/core.h"
#include "models/models.h"
#include "parity/parity.h"

namespace collage::parity {

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

void synchronize(const at::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

}  // namespace

double matmul_gflops(int64_t n, const at::Device& device, at::ScalarType dtype) {
  const auto opts = at::TensorOptions().device(device).dtype(dtype);
  auto a = at::randn({n, n}, opts), b = at::randn({n, n}, opts);
  auto c = at::mm(a, b);
  synchronize(device);
  double best = 1e30;
  for (int i = 0; i < 5; ++i) {
    const double t0 = now();
    at::mm_out(c, a, b);
    synchronize(device);
    best = std::min(best, now() - t0);
  }
  return 2.0 * n * n * n / best / 1e9;
}

UnetBenchResult bench_unet(const UnetBenchOptions& o) {
  torch::NoGradGuard no_grad;
  UnetBenchResult r;
  auto config = UNet2DConditionConfig::from_json_file(o.config_path);
  double t0 = now();
  auto model = std::make_shared<UNet2DConditionModelImpl>(config);
  model->to(o.device, o.dtype);
  model->eval();
  for (const auto& p : model->parameters()) r.parameters += static_cast<double>(p.numel());
  r.build_seconds = now() - t0;
  if (o.device.is_cpu() && o.channels_last) model->set_channels_last(true);
  if (o.device.is_cpu() && o.pack_convs) r.packed_convs = static_cast<double>(pack_large_convs(*model));
  const auto opts = at::TensorOptions().dtype(o.dtype).device(o.device);
  auto sample = at::randn({o.batch, config.in_channels, o.latent, o.latent}, opts);
  auto context = at::randn({o.batch, o.tokens, config.cross_attention_dim}, opts);
  auto timestep = at::scalar_tensor(500.0, at::TensorOptions().device(o.device));
  r.gflop = unet_flops(config, o.batch, o.latent, o.latent, o.tokens) / 1e9;
  r.resident_before_bytes = process_memory_bytes("VmRSS");
  reset_peak_memory();
  t0 = now();
  auto out = model->forward(sample, timestep, context);
  synchronize(o.device);
  r.warmup_seconds = now() - t0;
  COLLAGE_CHECK(at::isfinite(out).all().item<bool>(), "UNet output has non-finite values ({})", o.config_path);
  r.best_seconds = r.warmup_seconds;
  double total = 0;
  for (int64_t i = 0; i < o.repeat; ++i) {
    t0 = now();
    out = model->forward(sample, timestep, context);
    synchronize(o.device);
    const double s = now() - t0;
    r.best_seconds = std::min(r.best_seconds, s);
    total += s;
  }
  r.mean_seconds = o.repeat ? total / o.repeat : r.warmup_seconds;
  r.peak_bytes = process_memory_bytes("VmHWM");
  if (!o.profile.empty()) {
    torch::autograd::profiler::RecordProfile guard(o.profile);
    model->forward(sample, timestep, context);
  }
  return r;
}

}  // namespace collage::parity
