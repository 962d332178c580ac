// How far a text encoder's per-token states of two prompts are apart: the diagnostic behind the embedded
// model's text-encoder decisions (is a word the UNet should follow visible in what it cross-attends to?).
#pragma once

#include <string>
#include <vector>

#include "models/clip_text_model.h"
#include "models/clip_tokenizer.h"

namespace collage {

struct TokenStateDifference {
  int64_t position = 0;
  std::string token_a, token_b;  // decoded tokens at this position ("" past a prompt's end)
  double relative_l2 = 0;        // |h_a - h_b| / |h_a| of the last hidden states
  double cosine = 1;
};

// Encodes both prompts padded to the encoder's max_position_embeddings, as the pipelines do, and compares the
// last hidden states position by position, up to the later of the two eos tokens.
std::vector<TokenStateDifference> compare_text_states(ClipTextModelImpl& text_encoder, const ClipTokenizer& tokenizer,
                                                      const std::string& a, const std::string& b);

}  // namespace collage
