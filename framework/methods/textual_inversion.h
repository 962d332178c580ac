// TI: per-layer textual inversion (METHOD.md, "TI"). One new token per layer; only its embedding row is
// learned, with the masked epsilon loss on the collage composited up to that layer. Learned embeddings are
// cached on disk, keyed by (model, layer pixels + mask, layer text, settings), so a sweep trains each layer once.
#pragma once

#include <ATen/Tensor.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/core.h"

namespace collage {

class StableDiffusion;
class ClipTokenizer;

struct TextualInversionSettings {
  int64_t steps = 250;
  int64_t batch = 4;
  int64_t warmup_steps = 25;
  double learning_rate = 4e-4;
  double weight_decay = 1e-2;
  double grad_clip = 1.0;
  std::string init = "a";       // initial embedding: a word ("a", as the authors) or "head" (the layer text's last word)
  bool augment = true;          // colour jitter (brightness 0.2, contrast 0.1) and random crops (80-100 %)
  uint64_t seed = 0;
  Json to_json() const;
};

struct TextualInversionResult {
  at::Tensor embedding;              // (D,) float32, CPU
  std::vector<double> losses;        // per training step (empty when loaded from the cache)
  double eval_loss_before = 0, eval_loss_after = 0;  // masked loss on a fixed evaluation batch
  bool from_cache = false;
  std::string cache_file;            // where it is (or would be) stored
  double seconds = 0;
};

// Trains (or loads from `cache_dir`, when non-empty) the embedding of a new token for one layer.
// image: (3, H, W) in [0, 1] (the collage up to and including the layer); mask: (H, W) visible mask v_i.
TextualInversionResult train_layer_embedding(StableDiffusion& sd, const at::Tensor& image, const at::Tensor& mask,
                                             const std::string& layer_text, const TextualInversionSettings& settings,
                                             const std::string& cache_dir,
                                             const std::function<void(int64_t, int64_t, double)>& progress = {});

// Text-encoder states for prompts that contain added tokens: ids from `tokenizer` (a copy with the tokens
// added), token embeddings from the model's table, rows of added ids replaced by `extra` (id -> (D,)).
at::Tensor encode_prompt_with_embeddings(StableDiffusion& sd, const ClipTokenizer& tokenizer,
                                         const std::vector<std::string>& prompts,
                                         const std::map<int64_t, at::Tensor>& extra);

// $COLLAGE_CACHE_DIR, else $XDG_CACHE_HOME/collage, else ~/.cache/collage, else ./.collage_cache.
std::string default_cache_dir();
// A fingerprint of the model's weights (token table, UNet in/out convolutions, parameter counts) for cache keys.
std::string model_fingerprint(StableDiffusion& sd);
// Saves / loads a learned embedding file (tensor "embedding", metadata: token, layer text, settings).
void save_embedding(const std::string& path, const at::Tensor& embedding, const std::map<std::string, std::string>& meta);
at::Tensor load_embedding(const std::string& path, int64_t expected_dim);

}  // namespace collage
