// The transformer stack shared by the CLIP text and vision towers (transformers 4.33 modeling_clip):
// pre-LN encoder layers `layers.{i}.{self_attn.{q,k,v,out}_proj, layer_norm1, mlp.{fc1,fc2}, layer_norm2}`.
// The text tower passes a causal mask; the vision tower passes none.
#pragma once

#include <ATen/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <vector>

namespace collage {

// transformers' ACT2FN names used by CLIP configs.
enum class ClipActivation { QuickGelu, Gelu, GeluNew, GeluPytorchTanh, Relu, Silu };

// Parses a `hidden_act` value; an unknown name throws collage::Error naming `file` and `field`.
ClipActivation parse_clip_activation(const std::string& name, const std::string& file = {},
                                     const std::string& field = "hidden_act");
at::Tensor apply_clip_activation(ClipActivation act, const at::Tensor& x);

struct ClipEncoderOptions {
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  ClipActivation hidden_act = ClipActivation::QuickGelu;
  double layer_norm_eps = 1e-5;
};

// An additive attention mask of shape (1, 1, L, L): 0 on and below the diagonal, the dtype's lowest finite
// value above it (transformers uses finfo.min, not -inf).
at::Tensor clip_causal_mask(int64_t length, const at::TensorOptions& options);

// Turns a (B, S) 0/1 padding mask into an additive (B, 1, 1, S) mask (finfo.min on padded keys).
at::Tensor clip_padding_mask(const at::Tensor& attention_mask, at::ScalarType dtype);

class ClipAttentionImpl : public torch::nn::Module {
 public:
  ClipAttentionImpl(int64_t hidden_size, int64_t num_heads);
  // x: (B, L, D); additive_mask: broadcastable to (B, H, L, L) or undefined.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& additive_mask = {});

  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};

 private:
  int64_t num_heads_, head_dim_;
};
TORCH_MODULE(ClipAttention);

class ClipMlpImpl : public torch::nn::Module {
 public:
  ClipMlpImpl(int64_t hidden_size, int64_t intermediate_size, ClipActivation act);
  at::Tensor forward(const at::Tensor& x);

  torch::nn::Linear fc1{nullptr}, fc2{nullptr};

 private:
  ClipActivation act_;
};
TORCH_MODULE(ClipMlp);

class ClipEncoderLayerImpl : public torch::nn::Module {
 public:
  explicit ClipEncoderLayerImpl(const ClipEncoderOptions& options);
  // x += attn(LN1(x)); x += mlp(LN2(x))
  at::Tensor forward(const at::Tensor& x, const at::Tensor& additive_mask = {});

  ClipAttention self_attn{nullptr};
  torch::nn::LayerNorm layer_norm1{nullptr}, layer_norm2{nullptr};
  ClipMlp mlp{nullptr};
};
TORCH_MODULE(ClipEncoderLayer);

class ClipEncoderImpl : public torch::nn::Module {
 public:
  explicit ClipEncoderImpl(const ClipEncoderOptions& options);
  // Runs every layer. When `hidden_states` is given it receives the input followed by each layer's output
  // (num_hidden_layers + 1 tensors, as transformers' output_hidden_states).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& additive_mask = {},
                     std::vector<at::Tensor>* hidden_states = nullptr);

  torch::nn::ModuleList layers{nullptr};
  const ClipEncoderOptions& options() const { return options_; }

 private:
  ClipEncoderOptions options_;
};
TORCH_MODULE(ClipEncoder);

}  // namespace collage
