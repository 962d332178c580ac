#include "models/attention.h"

#include <torch/nn/modules/dropout.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <utility>

#include "core/core.h"

namespace collage {

namespace {

// Elements of one block of scores. On the CPU 1M floats = 4 MB, so a block stays in cache from its first
// GEMM through the softmax to the second (for inference, 16 MB blocks measured the same speed). On a GPU
// the launches, not the memory, cost: inference keeps 16 MB blocks (a 4096-token self-attention would
// otherwise need 1 GB per batch of 2 x 8 heads), and the differentiable path takes blocks of up to 64M
// scores (256 MB in float32: a whole layer of the embedded model at training batch 256, 4 heads of
// SD 1.5's 64x64 self-attention).
int64_t score_block_elements(const at::Tensor& q, bool grad) {
  if (!q.is_cuda()) return int64_t(1) << 20;
  return grad ? int64_t(1) << 26 : int64_t(1) << 22;
}

// A block of heads [h, h + nh) and query rows [r, r + nr) of (BH, N, ...) tensors.
struct ScoreBlock {
  int64_t h, nh, r, nr;
  at::Tensor heads(const at::Tensor& t) const { return t.narrow(0, h, nh); }
  at::Tensor rows(const at::Tensor& t) const { return t.narrow(0, h, nh).narrow(1, r, nr); }
};

// Calls f(block) over blocks whose scores have at most `budget` elements: whole heads when at least one
// fits, otherwise row blocks of one head. The first block is the largest.
template <class F>
void for_each_score_block(int64_t BH, int64_t Nq, int64_t Nk, int64_t budget, F&& f) {
  const int64_t heads = std::clamp<int64_t>(budget / std::max<int64_t>(1, Nq * Nk), 1, BH);
  const int64_t rows = heads > 1 ? Nq : std::clamp<int64_t>(budget / std::max<int64_t>(1, Nk), 1, Nq);
  for (int64_t h = 0; h < BH; h += heads)
    for (int64_t r = 0; r < Nq; r += rows) f(ScoreBlock{h, std::min(heads, BH - h), r, std::min(rows, Nq - r)});
}

// softmax(scale q k^T) v with a backward that recomputes the probabilities block by block from the saved
// log-sum-exp instead of keeping them: the plain autograd graph stores B x heads x Nq x Nk probabilities per
// layer (for a 4096-token self-attention, 1 GB per image pair), and on the CPU its full-size score
// tensors run at memory speed. Used whenever a gradient flows through attention (training, textual
// inversion). q: (BH, Nq, D), k: (BH, Nk, D), v: (BH, Nk, Dv), all contiguous.
class BlockwiseAttention : public torch::autograd::Function<BlockwiseAttention> {
 public:
  // Half-precision inputs are computed in float32 (scores, probabilities and the gradient sums), as the
  // plain graph's softmax kernels do internally.
  static at::ScalarType wide(const at::Tensor& t) {
    return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16 ? at::kFloat : t.scalar_type();
  }

  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, double scale, int64_t budget) {
    const int64_t BH = q.size(0), Nq = q.size(1), Nk = k.size(1);
    const auto w = wide(q);
    auto out = at::empty({BH, Nq, v.size(2)}, q.options());
    auto lse = at::empty({BH, Nq, 1}, q.options().dtype(w));
    for_each_score_block(BH, Nq, Nk, budget, [&](const ScoreBlock& b) {
      auto s = at::bmm(b.rows(q).to(w), b.heads(k).to(w).transpose(1, 2)).mul_(scale);
      auto l = at::logsumexp(s, -1, true);
      b.rows(out).copy_(at::bmm(s.sub_(l).exp_(), b.heads(v).to(w)));
      b.rows(lse).copy_(l);
    });
    ctx->save_for_backward({q, k, v, out, lse});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["budget"] = budget;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &lse = saved[4];
    const double scale = ctx->saved_data["scale"].toDouble();
    const int64_t budget = ctx->saved_data["budget"].toInt();
    const auto w = wide(q);
    const auto d_out = grads[0].to(w).contiguous();
    const int64_t BH = q.size(0), Nq = q.size(1), Nk = k.size(1);
    // softmax backward: dS = P * (dP - rowsum(dO * O)), with dP = dO v^T; P recomputed from the saved lse
    const auto delta = (d_out * out.to(w)).sum(-1, true);
    auto dq = at::empty_like(q);
    auto dk = at::zeros_like(k, k.options().dtype(w)), dv = at::zeros_like(v, v.options().dtype(w));
    for_each_score_block(BH, Nq, Nk, budget, [&](const ScoreBlock& b) {
      auto qb = b.rows(q).to(w), dob = b.rows(d_out);
      auto kb = b.heads(k).to(w), vb = b.heads(v).to(w);
      auto p = at::bmm(qb, kb.transpose(1, 2)).mul_(scale).sub_(b.rows(lse)).exp_();
      b.heads(dv).baddbmm_(p.transpose(1, 2), dob);
      auto ds = at::bmm(dob, vb.transpose(1, 2)).sub_(b.rows(delta)).mul_(p);
      b.rows(dq).copy_(at::bmm(ds, kb).mul_(scale));
      b.heads(dk).baddbmm_(ds.transpose(1, 2), qb, 1.0, scale);
    });
    return {dq, dk.to(k.scalar_type()), dv.to(v.scalar_type()), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor blockwise_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                               int64_t block_elements) {
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), Nk = k.size(2);
  const int64_t budget = block_elements > 0 ? block_elements : score_block_elements(q, true);
  auto out = BlockwiseAttention::apply(q.reshape({B * H, Nq, q.size(3)}).contiguous(),
                                       k.reshape({B * H, Nk, k.size(3)}).contiguous(),
                                       v.reshape({B * H, Nk, v.size(3)}).contiguous(), scale, budget);
  return out.view({B, H, Nq, v.size(3)});
}

at::Tensor graph_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  return at::matmul(at::softmax(at::matmul(q, k.transpose(-1, -2)) * scale, -1), v);
}

at::Tensor chunked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), D = q.size(3), Nk = k.size(2);
  const int64_t BH = B * H;
  if (at::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad())) {
    static const bool use_graph = [] {  // read once: the choice holds for the whole process
      const char* e = std::getenv("COLLAGE_ATTENTION_GRADIENTS");
      return e && std::string(e) == "graph";
    }();
    return use_graph ? graph_attention(q, k, v, scale) : blockwise_attention(q, k, v, scale);
  }
  // Scores as diffusers computes them: baddbmm(q, k^T, beta=0, alpha=scale) (scaling inside the GEMM).
  auto qs = q.reshape({BH, Nq, D});
  auto kt = k.reshape({BH, Nk, D}).transpose(1, 2);
  auto vv = v.reshape({BH, Nk, v.size(3)});
  auto out = at::empty({BH, Nq, v.size(3)}, q.options());
  at::Tensor buffer;
  for_each_score_block(BH, Nq, Nk, score_block_elements(q, false), [&](const ScoreBlock& b) {
    if (!buffer.defined()) buffer = at::empty({b.nh, b.nr, Nk}, q.options());
    auto s = buffer.narrow(0, 0, b.nh).narrow(1, 0, b.nr);
    at::baddbmm_out(s, s, b.rows(qs), b.heads(kt), 0.0, scale);
    at::_softmax_out(s, s, -1, false);
    auto o = b.rows(out);
    at::bmm_out(o, s, b.heads(vv));
  });
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
