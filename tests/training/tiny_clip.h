// A tiny CLIPModel config (text width 16 x 1 layer, the real CLIP vocabulary, max 16 tokens; vision width 16 x
// 1 layer) for the trainer tests: its text tower matches the tiny diffusion config's text encoder.
#pragma once

#include "core/json.h"

namespace collage::test {

inline Json tiny_clip_model_json(int64_t image_size, int64_t patch_size, int64_t projection_dim) {
  return Json{{"projection_dim", projection_dim},
              {"text_config",
               {{"vocab_size", 49408},
                {"hidden_size", 16},
                {"intermediate_size", 32},
                {"num_hidden_layers", 1},
                {"num_attention_heads", 2},
                {"max_position_embeddings", 16}}},
              {"vision_config",
               {{"hidden_size", 16},
                {"intermediate_size", 32},
                {"num_hidden_layers", 1},
                {"num_attention_heads", 2},
                {"image_size", image_size},
                {"patch_size", patch_size}}}};
}

}  // namespace collage::test
