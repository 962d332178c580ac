#include "models/clip_encoder.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "core/core.h"

namespace collage {

namespace nn = torch::nn;

ClipActivation parse_clip_activation(const std::string& name, const std::string& file, const std::string& field) {
  if (name == "quick_gelu") return ClipActivation::QuickGelu;
  if (name == "gelu") return ClipActivation::Gelu;
  if (name == "gelu_new") return ClipActivation::GeluNew;
  if (name == "gelu_pytorch_tanh") return ClipActivation::GeluPytorchTanh;
  if (name == "relu") return ClipActivation::Relu;
  if (name == "silu" || name == "swish") return ClipActivation::Silu;
  throw Error(fmt::format("unsupported activation '{}' (known: quick_gelu, gelu, gelu_new, gelu_pytorch_tanh, "
                          "relu, silu)",
                          name),
              file, field);
}

at::Tensor apply_clip_activation(ClipActivation act, const at::Tensor& x) {
  switch (act) {
    case ClipActivation::QuickGelu:
      return x * at::sigmoid(x * 1.702);
    case ClipActivation::Gelu:
      return at::gelu(x);
    case ClipActivation::GeluNew:  // transformers NewGELUActivation, written out as it computes it
      return 0.5 * x * (1.0 + at::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * at::pow(x, 3.0))));
    case ClipActivation::GeluPytorchTanh:
      return at::gelu(x, "tanh");
    case ClipActivation::Relu:
      return at::relu(x);
    case ClipActivation::Silu:
      return at::silu(x);
  }
  throw Error("unknown activation");
}

namespace {
at::Scalar lowest_finite(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return std::numeric_limits<float>::lowest();
    case at::kDouble:
      return std::numeric_limits<double>::lowest();
    case at::kHalf:
      return std::numeric_limits<at::Half>::lowest();
    case at::kBFloat16:
      return std::numeric_limits<at::BFloat16>::lowest();
    default:
      throw Error(fmt::format("attention mask: unsupported dtype {}", c10::toString(dtype)));
  }
}
}  // namespace

at::Tensor clip_causal_mask(int64_t length, const at::TensorOptions& options) {
  auto mask = at::full({length, length}, lowest_finite(options.dtype().toScalarType()), options);
  mask.triu_(1);
  return mask.view({1, 1, length, length});
}

at::Tensor clip_padding_mask(const at::Tensor& attention_mask, at::ScalarType dtype) {
  COLLAGE_CHECK(attention_mask.dim() == 2, "attention_mask must be (batch, length), got {} dims",
                attention_mask.dim());
  auto padded = attention_mask.eq(0).view({attention_mask.size(0), 1, 1, attention_mask.size(1)});
  return at::zeros(padded.sizes(), attention_mask.options().dtype(dtype)).masked_fill_(padded, lowest_finite(dtype));
}

ClipAttentionImpl::ClipAttentionImpl(int64_t hidden_size, int64_t num_heads)
    : num_heads_(num_heads), head_dim_(num_heads > 0 ? hidden_size / num_heads : 0) {
  COLLAGE_CHECK(num_heads > 0 && hidden_size % num_heads == 0,
                "hidden_size ({}) must be divisible by num_attention_heads ({})", hidden_size, num_heads);
  q_proj = register_module("q_proj", nn::Linear(hidden_size, hidden_size));
  k_proj = register_module("k_proj", nn::Linear(hidden_size, hidden_size));
  v_proj = register_module("v_proj", nn::Linear(hidden_size, hidden_size));
  out_proj = register_module("out_proj", nn::Linear(hidden_size, hidden_size));
}

at::Tensor ClipAttentionImpl::forward(const at::Tensor& x, const at::Tensor& additive_mask) {
  const int64_t B = x.size(0), L = x.size(1), D = x.size(2);
  auto heads = [&](const at::Tensor& t) { return t.view({B, L, num_heads_, head_dim_}).transpose(1, 2); };
  // transformers scales q (not the scores) before q.k.
  auto q = heads(q_proj->forward(x) * std::pow(static_cast<double>(head_dim_), -0.5));
  auto k = heads(k_proj->forward(x));
  auto v = heads(v_proj->forward(x));
  auto scores = at::matmul(q, k.transpose(-1, -2));  // (B, H, L, L)
  if (additive_mask.defined()) scores = scores + additive_mask;
  auto probs = at::softmax(scores, -1);
  auto out = at::matmul(probs, v).transpose(1, 2).reshape({B, L, D});
  return out_proj->forward(out);
}

ClipMlpImpl::ClipMlpImpl(int64_t hidden_size, int64_t intermediate_size, ClipActivation act) : act_(act) {
  fc1 = register_module("fc1", nn::Linear(hidden_size, intermediate_size));
  fc2 = register_module("fc2", nn::Linear(intermediate_size, hidden_size));
}

at::Tensor ClipMlpImpl::forward(const at::Tensor& x) {
  return fc2->forward(apply_clip_activation(act_, fc1->forward(x)));
}

ClipEncoderLayerImpl::ClipEncoderLayerImpl(const ClipEncoderOptions& o) {
  auto ln = [&] {
    return nn::LayerNorm(nn::LayerNormOptions({o.hidden_size}).eps(o.layer_norm_eps));
  };
  // Registration order follows transformers (self_attn, layer_norm1, mlp, layer_norm2).
  self_attn = register_module("self_attn", ClipAttention(o.hidden_size, o.num_attention_heads));
  layer_norm1 = register_module("layer_norm1", ln());
  mlp = register_module("mlp", ClipMlp(o.hidden_size, o.intermediate_size, o.hidden_act));
  layer_norm2 = register_module("layer_norm2", ln());
}

at::Tensor ClipEncoderLayerImpl::forward(const at::Tensor& x, const at::Tensor& additive_mask) {
  auto h = x + self_attn->forward(layer_norm1->forward(x), additive_mask);
  return h + mlp->forward(layer_norm2->forward(h));
}

ClipEncoderImpl::ClipEncoderImpl(const ClipEncoderOptions& o) : options_(o) {
  COLLAGE_CHECK(o.hidden_size > 0 && o.intermediate_size > 0 && o.num_hidden_layers >= 0,
                "CLIP encoder: invalid sizes hidden_size={} intermediate_size={} num_hidden_layers={}",
                o.hidden_size, o.intermediate_size, o.num_hidden_layers);
  layers = register_module("layers", nn::ModuleList());
  for (int64_t i = 0; i < o.num_hidden_layers; ++i) layers->push_back(ClipEncoderLayer(o));
}

at::Tensor ClipEncoderImpl::forward(const at::Tensor& x, const at::Tensor& additive_mask,
                                    std::vector<at::Tensor>* hidden_states) {
  at::Tensor h = x;
  if (hidden_states) hidden_states->push_back(h);
  for (const auto& layer : *layers) {
    h = layer->as<ClipEncoderLayerImpl>()->forward(h, additive_mask);
    if (hidden_states) hidden_states->push_back(h);
  }
  return h;
}

}  // namespace collage
