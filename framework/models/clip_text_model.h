// CLIP text encoder (transformers 4.33 CLIPTextModel): token + position embeddings, a causal pre-LN
// transformer, a final LayerNorm and eos pooling. Parameter names are the checkpoint keys
// (`text_model.encoder.layers.0.self_attn.q_proj.weight`, ...).
#pragma once

#include <ATen/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <vector>

#include "core/core.h"
#include "models/clip_encoder.h"

namespace collage {

// config.json of a CLIPTextModel (transformers CLIPTextConfig).
struct ClipTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 512;
  int64_t intermediate_size = 2048;
  int64_t projection_dim = 512;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 8;
  int64_t max_position_embeddings = 77;
  std::string hidden_act = "quick_gelu";
  double layer_norm_eps = 1e-5;
  int64_t pad_token_id = 1;
  int64_t bos_token_id = 49406;
  int64_t eos_token_id = 49407;
  // Keys of the file that this struct neither reads nor knows to be irrelevant (callers may warn).
  std::vector<std::string> unknown_keys;

  // Reads a CLIPTextModel config.json. The architecture sizes (vocab_size, hidden_size, intermediate_size,
  // num_hidden_layers, num_attention_heads, max_position_embeddings) are required, since save_pretrained always
  // writes them; the other keys take the CLIPTextConfig defaults. Errors name the file and the key.
  static ClipTextConfig from_json_file(const std::string& path);
  // Reads a config object. `fill_defaults` = true applies the CLIPTextConfig default to every missing key,
  // which is how the `text_config` of a CLIPModel config.json (stored as differences) must be read.
  // `prefix` is prepended to key names in errors (e.g. "text_config.").
  static ClipTextConfig from_json(const Json& object, const std::string& file, const std::string& prefix = {},
                                  bool fill_defaults = false);

  ClipEncoderOptions encoder_options() const;
};

struct ClipTextOutput {
  at::Tensor last_hidden_state;            // (B, L, D): final_layer_norm(hidden_states.back())
  at::Tensor pooler_output;                // (B, D): last_hidden_state at the eos position
  std::vector<at::Tensor> hidden_states;   // embeddings + every layer's output (when requested)
};

class ClipTextEmbeddingsImpl : public torch::nn::Module {
 public:
  ClipTextEmbeddingsImpl(int64_t vocab_size, int64_t hidden_size, int64_t max_position_embeddings);
  // token_embeds (B, L, D) + position_embedding[0..L-1].
  at::Tensor add_positions(const at::Tensor& token_embeds);

  torch::nn::Embedding token_embedding{nullptr}, position_embedding{nullptr};
};
TORCH_MODULE(ClipTextEmbeddings);

// transformers CLIPTextTransformer (the `text_model.` prefix).
class ClipTextTransformerImpl : public torch::nn::Module {
 public:
  explicit ClipTextTransformerImpl(const ClipTextConfig& config);

  ClipTextEmbeddings embeddings{nullptr};
  ClipEncoder encoder{nullptr};
  torch::nn::LayerNorm final_layer_norm{nullptr};
};
TORCH_MODULE(ClipTextTransformer);

class ClipTextModel;

class ClipTextModelImpl : public torch::nn::Module {
 public:
  explicit ClipTextModelImpl(const ClipTextConfig& config);

  // input_ids: (B, L) int64 with L <= max_position_embeddings. attention_mask (optional, (B, L), 1 = keep)
  // additionally masks padded keys, as CLIPModel users pass it; SD pipelines pass none.
  ClipTextOutput forward(const at::Tensor& input_ids, bool output_hidden_states = false,
                         const at::Tensor& attention_mask = {});
  // The same from precomputed token embeddings (B, L, D) (e.g. textual inversion rows for added tokens);
  // input_ids (B, L) are still needed for eos pooling.
  ClipTextOutput forward_embeddings(const at::Tensor& token_embeds, const at::Tensor& input_ids,
                                    bool output_hidden_states = false, const at::Tensor& attention_mask = {});
  // The token embedding table (vocab_size, D); shares storage with the parameter.
  at::Tensor token_embedding_weight();

  const ClipTextConfig& config() const { return config_; }

  // Loads `folder`/config.json and the weights (model[.variant].safetensors or its shards). The
  // `text_model.embeddings.position_ids` buffer is accepted but not needed. Parameters are frozen
  // (requires_grad = false); gradients still flow to input embeddings.
  static ClipTextModel load(const std::string& folder, const std::string& variant = "");

  ClipTextTransformer text_model{nullptr};

 private:
  ClipTextConfig config_;
};
TORCH_MODULE(ClipTextModel);

}  // namespace collage
