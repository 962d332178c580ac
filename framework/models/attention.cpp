#include "models/attention.h"

#include <torch/nn/modules/dropout.h>
#include <torch/torch.h>

#include <cmath>

#include "core/error.h"

namespace collage {

namespace {
// Upper bound on the elements of one score chunk: 4M floats = 16 MB, small enough to stay mostly in cache
// on the way from the first GEMM through the softmax to the second GEMM.
constexpr int64_t kMaxChunkElements = int64_t(1) << 22;
}  // namespace

at::Tensor chunked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), D = q.size(3), Nk = k.size(2);
  const int64_t BH = B * H;
  // Scores as diffusers computes them: baddbmm(q, k^T, beta=0, alpha=scale) (scaling inside the GEMM).
  auto qs = q.reshape({BH, Nq, D});
  auto kt = k.reshape({BH, Nk, D}).transpose(1, 2);
  auto vv = v.reshape({BH, Nk, v.size(3)});
  if (at::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad())) {
    // Training (textual inversion): the in-place kernels below have no backward; use the plain graph.
    auto probs = at::softmax(at::baddbmm(at::zeros({BH, Nq, Nk}, q.options()), qs, kt, 0.0, scale), -1);
    return at::bmm(probs, vv).view({B, H, Nq, v.size(3)});
  }
  auto out = at::empty({BH, Nq, v.size(3)}, q.options());
  // Chunk over queries across all heads at once when it fits; otherwise per head.
  int64_t rows = std::max<int64_t>(1, kMaxChunkElements / std::max<int64_t>(1, BH * Nk));
  if (rows >= Nq) {
    auto s = at::empty({BH, Nq, Nk}, q.options());
    at::baddbmm_out(s, s, qs, kt, 0.0, scale);
    at::_softmax_out(s, s, -1, false);
    at::bmm_out(out, s, vv);
    return out.view({B, H, Nq, v.size(3)});
  }
  rows = std::max<int64_t>(1, kMaxChunkElements / Nk);
  rows = std::min(rows, Nq);
  auto scores = at::empty({rows, Nk}, q.options());
  for (int64_t bh = 0; bh < BH; ++bh) {
    auto q_bh = qs[bh], k_bh = kt[bh], v_bh = vv[bh], o_bh = out[bh];
    for (int64_t start = 0; start < Nq; start += rows) {
      const int64_t len = std::min(rows, Nq - start);
      auto s = scores.narrow(0, 0, len);
      at::addmm_out(s, s, q_bh.narrow(0, start, len), k_bh, 0.0, scale);
      at::_softmax_out(s, s, -1, false);
      auto o = o_bh.narrow(0, start, len);
      at::mm_out(o, s, v_bh);
    }
  }
  return out.view({B, H, Nq, v.size(3)});
}

at::Tensor AttnProcessor::attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                                 const AttnContext& ctx) {
  return chunked_attention(q, k, v, scale);
}

at::Tensor ScoreHookProcessor::attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      double scale, const AttnContext& ctx) {
  const auto B = q.size(0), H = q.size(1), Nq = q.size(2), Nk = k.size(2);
  auto scores = at::zeros({B * H, Nq, Nk}, q.options());
  scores = at::baddbmm(scores, q.reshape({B * H, Nq, -1}), k.reshape({B * H, Nk, -1}).transpose(1, 2), 0.0, scale)
               .view({B, H, Nq, Nk});
  modify_scores(scores, ctx);
  auto probs = at::softmax(scores, -1);
  observe_probs(probs, ctx);
  return at::matmul(probs, v);
}

AttentionImpl::AttentionImpl(const AttentionOptions& o) : options_(o) {
  COLLAGE_CHECK(o.query_dim > 0 && o.heads > 0 && o.dim_head > 0,
                "Attention: invalid sizes query_dim={} heads={} dim_head={}", o.query_dim, o.heads, o.dim_head);
  const int64_t inner = o.heads * o.dim_head;
  const int64_t kv_dim = o.cross_attention_dim > 0 ? o.cross_attention_dim : o.query_dim;
  if (o.norm_num_groups > 0)
    group_norm = register_module(
        "group_norm",
        torch::nn::GroupNorm(torch::nn::GroupNormOptions(o.norm_num_groups, o.query_dim).eps(o.norm_eps)));
  to_q = register_module("to_q", torch::nn::Linear(torch::nn::LinearOptions(o.query_dim, inner).bias(o.bias)));
  to_k = register_module("to_k", torch::nn::Linear(torch::nn::LinearOptions(kv_dim, inner).bias(o.bias)));
  to_v = register_module("to_v", torch::nn::Linear(torch::nn::LinearOptions(kv_dim, inner).bias(o.bias)));
  to_out = register_module("to_out", torch::nn::ModuleList());
  to_out->push_back(torch::nn::Linear(torch::nn::LinearOptions(inner, o.query_dim).bias(o.out_bias)));
  to_out->push_back(torch::nn::Dropout(0.0));
}

at::Tensor AttentionImpl::forward(const at::Tensor& hidden_states_in, const at::Tensor& encoder_hidden_states,
                                  int64_t height, int64_t width, const StepInfo* step) {
  at::Tensor hidden_states = hidden_states_in;
  const bool spatial_input = hidden_states.dim() == 4;
  int64_t C = 0;
  if (spatial_input) {
    C = hidden_states.size(1);
    height = hidden_states.size(2);
    width = hidden_states.size(3);
    hidden_states = hidden_states.view({hidden_states.size(0), C, height * width}).transpose(1, 2);
  }
  const auto& residual = hidden_states;
  at::Tensor x = hidden_states;
  if (group_norm) x = group_norm->forward(x.transpose(1, 2)).transpose(1, 2);

  const int64_t B = x.size(0), N = x.size(1), heads = options_.heads;
  const auto& context = encoder_hidden_states.defined() ? encoder_hidden_states : x;
  auto q = to_q->forward(x);
  auto k = to_k->forward(context);
  auto v = to_v->forward(context);
  const int64_t M = k.size(1);
  auto split = [&](const at::Tensor& t, int64_t n) {
    return t.view({B, n, heads, -1}).transpose(1, 2).contiguous();
  };
  q = split(q, N);
  k = split(k, M);
  v = split(v, M);
  const auto dtype = q.scalar_type();
  if (options_.upcast_attention && dtype != at::kFloat) {
    q = q.to(at::kFloat);
    k = k.to(at::kFloat);
  }
  AttnContext ctx{path_, encoder_hidden_states.defined(), height, width, step};
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  at::Tensor out = processor_ ? processor_->attend(q, k, v.to(q.scalar_type()), scale, ctx)
                              : chunked_attention(q, k, v.to(q.scalar_type()), scale);
  out = out.to(dtype).transpose(1, 2).reshape({B, N, -1});
  out = to_out[0]->as<torch::nn::Linear>()->forward(out);
  if (spatial_input) {
    if (options_.residual_connection) out = out + residual;
    out = out.transpose(1, 2).reshape({B, C, height, width});
  } else if (options_.residual_connection) {
    out = out + residual;
  }
  if (options_.rescale_output_factor != 1.0) out = out / options_.rescale_output_factor;
  return out;
}

std::vector<Attention> collect_attention_layers(torch::nn::Module& root) {
  std::vector<Attention> out;
  for (const auto& item : root.named_modules("", /*include_self=*/false)) {
    if (auto attn = std::dynamic_pointer_cast<AttentionImpl>(item.value())) {
      attn->set_path(item.key());
      out.emplace_back(attn);
    }
  }
  return out;
}

}  // namespace collage
