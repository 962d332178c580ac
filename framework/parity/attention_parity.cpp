// The blockwise attention against the plain autograd graph (see parity.h).
#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fmt/format.h>

#include "core/core.h"
#include "models/models.h"
#include "parity/parity.h"

namespace collage::parity {

namespace {

double seconds_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

std::string AttentionGradientCheck::summary() const {
  const char* names[] = {"output", "dq", "dk", "dv"};
  std::string s;
  for (int i = 0; i < 4; ++i) s += fmt::format("{}{} {:.1e}", i ? " " : "", names[i], difference[i]);
  return s;
}

AttentionGradientCheck check_attention_gradients(int64_t batch, int64_t heads, int64_t queries, int64_t keys,
                                                 int64_t dim, const at::TensorOptions& options, int64_t repeat) {
  const bool cuda = options.device().is_cuda();
  auto sync = [&] {
    if (cuda) torch::cuda::synchronize();
  };
  const double scale = 1.0 / std::sqrt(double(dim));
  auto q = at::randn({batch, heads, queries, dim}, options);
  auto k = at::randn({batch, heads, keys, dim}, options);
  auto v = at::randn({batch, heads, keys, dim}, options);
  auto d_out = at::randn_like(q);
  struct Run {
    double seconds = 1e30, peak = 0;
    std::vector<at::Tensor> values;
  };
  auto run = [&](auto&& attention) {
    Run r;
    for (int64_t i = 0; i <= repeat; ++i) {  // the first run warms up
      auto qq = q.clone().requires_grad_(), kk = k.clone().requires_grad_(), vv = v.clone().requires_grad_();
      sync();
      if (!cuda) reset_peak_memory();
      const double t0 = seconds_now();
      auto out = attention(qq, kk, vv);
      out.backward(d_out);
      sync();
      if (i > 0) r.seconds = std::min(r.seconds, seconds_now() - t0);
      if (!cuda) r.peak = std::max(r.peak, process_memory_bytes("VmHWM"));
      r.values = {out.detach(), qq.grad(), kk.grad(), vv.grad()};
    }
    return r;
  };
  const auto graph = run([&](const at::Tensor& a, const at::Tensor& b, const at::Tensor& c) {
    return graph_attention(a, b, c, scale);
  });
  const auto blockwise = run([&](const at::Tensor& a, const at::Tensor& b, const at::Tensor& c) {
    return blockwise_attention(a, b, c, scale);
  });
  AttentionGradientCheck result;
  result.graph_seconds = graph.seconds;
  result.blockwise_seconds = blockwise.seconds;
  result.graph_peak_bytes = graph.peak;
  result.blockwise_peak_bytes = blockwise.peak;
  for (size_t i = 0; i < 4; ++i) {
    const auto base = graph.values[i].to(at::kDouble), ours = blockwise.values[i].to(at::kDouble);
    result.difference[i] = (ours - base).abs().max().item<double>() / std::max(1e-30, base.abs().max().item<double>());
    result.worst = std::max(result.worst, result.difference[i]);
  }
  return result;
}

}  // namespace collage::parity
