// diffusers-style Attention: the module owns the weights (to_q, to_k, to_v, to_out.0, optional group_norm);
// a swappable AttnProcessor does the math, so methods (cross-attention manipulation, attention recording)
// hook in per layer without copying the UNet.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <string>
#include <vector>

namespace collage {

// What the sampler knows about the current model call; passed down to every attention layer.
struct StepInfo {
  int64_t index = -1;      // sampler step index (-1 outside a sampling loop)
  int64_t num_steps = 0;   // steps in this loop
  double timestep = 0;     // timestep value given to the UNet
  double sigma = 0;        // k-diffusion sigma = sqrt((1 - alphabar_t) / alphabar_t) at that timestep
  // Per batch row: true for rows conditioned on the prompt, false for unconditional / negative rows.
  // Empty = all rows conditional.
  std::vector<bool> conditional;
};

struct AttnContext {
  std::string path;               // module path, e.g. "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
  bool is_cross = false;          // keys/values come from the text encoder
  int64_t height = 0, width = 0;  // query grid at this resolution (0 when not spatial)
  const StepInfo* step = nullptr; // null outside a sampler
};

// Computes attention from per-head projections. q: (B, H, Nq, D), k and v: (B, H, Nk, D); `scale` is the
// factor applied to q.k (head_dim^-0.5). Returns (B, H, Nq, D).
class AttnProcessor {
 public:
  virtual ~AttnProcessor() = default;
  virtual at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                            const AttnContext& ctx);
};

// A processor that materialises the pre-softmax scores S = scale * q k^T of shape (B, H, Nq, Nk), lets a
// subclass change them in place, then exposes the probabilities. Meant for cross-attention (Nk = 77).
class ScoreHookProcessor : public AttnProcessor {
 public:
  at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                    const AttnContext& ctx) override;
  virtual void modify_scores(at::Tensor& scores, const AttnContext& ctx) {}
  virtual void observe_probs(const at::Tensor& probs, const AttnContext& ctx) {}
};

// softmax(scale * q k^T) v, computed in blocks of heads / query rows so the scores never exceed a bounded size
// (a 4096-token self-attention would otherwise need 1 GB per batch of 2 x 8 heads).
// When a gradient flows through q, k or v it hands over to blockwise_attention.
at::Tensor chunked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale);

// Differentiable softmax(scale * q k^T) v (same shapes as above) whose backward recomputes the
// probabilities in blocks of at most `block_elements` scores instead of storing them (0: 4 MB blocks on
// the CPU, 256 MB on a GPU; float32 inside for half-precision inputs).
at::Tensor blockwise_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                               int64_t block_elements = 0);

// softmax(scale * q k^T) v through the plain autograd graph, which stores the probabilities: the reference
// the blockwise attention is checked against, and what gradients use instead when the environment sets
// COLLAGE_ATTENTION_GRADIENTS=graph (an escape hatch for a device where the blockwise path misbehaves).
at::Tensor graph_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale);

struct AttentionOptions {
  int64_t query_dim = 0;
  int64_t cross_attention_dim = 0;  // 0 = self-attention (keys from the queries' input)
  int64_t heads = 8;
  int64_t dim_head = 64;
  bool bias = false;                // bias of to_q/to_k/to_v
  bool upcast_attention = false;    // compute scores in float32 even for half inputs
  bool out_bias = true;
  int64_t norm_num_groups = 0;      // > 0: GroupNorm on the input (VAE mid-block attention)
  double norm_eps = 1e-5;
  bool residual_connection = false;
  double rescale_output_factor = 1.0;
};

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const AttentionOptions& options);
  // hidden_states: (B, N, C) or (B, C, H, W) (the latter flattened, as diffusers does for the VAE).
  // encoder_hidden_states: (B, M, Cc) for cross-attention, undefined for self-attention.
  at::Tensor forward(const at::Tensor& hidden_states, const at::Tensor& encoder_hidden_states = {},
                     int64_t height = 0, int64_t width = 0, const StepInfo* step = nullptr);

  void set_processor(std::shared_ptr<AttnProcessor> processor) { processor_ = std::move(processor); }
  const std::shared_ptr<AttnProcessor>& processor() const { return processor_; }
  // The module path used in AttnContext (set by the owning model after construction).
  void set_path(std::string path) { path_ = std::move(path); }
  const std::string& path() const { return path_; }
  bool is_cross() const { return options_.cross_attention_dim > 0; }
  const AttentionOptions& options() const { return options_; }

  torch::nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr};
  torch::nn::ModuleList to_out{nullptr};  // [Linear, Dropout], named like diffusers' to_out.0
  torch::nn::GroupNorm group_norm{nullptr};

 private:
  AttentionOptions options_;
  std::shared_ptr<AttnProcessor> processor_;
  std::string path_;
};
TORCH_MODULE(Attention);

// Sets the path of every Attention inside `root` to its module path (e.g. "mid_block.attentions.0.
// transformer_blocks.0.attn1") and returns them in module order.
std::vector<Attention> collect_attention_layers(torch::nn::Module& root);

}  // namespace collage
