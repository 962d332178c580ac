#include "models/text_states.h"

#include <algorithm>

namespace collage {

std::vector<TokenStateDifference> compare_text_states(ClipTextModelImpl& text_encoder, const ClipTokenizer& tokenizer,
                                                      const std::string& a, const std::string& b) {
  const int64_t L = text_encoder.config().max_position_embeddings;
  const auto ids_a = tokenizer.encode_padded(a, L), ids_b = tokenizer.encode_padded(b, L);
  torch::NoGradGuard no_grad;
  const auto ids = torch::stack({torch::tensor(ids_a), torch::tensor(ids_b)});
  const auto h = text_encoder.forward(ids.to(text_encoder.text_model->final_layer_norm->weight.device()))
                     .last_hidden_state.to(at::kFloat)
                     .cpu();
  auto text_of = [&](int64_t id) {  // decoded, without the word-end space
    auto t = tokenizer.decode({id});
    while (!t.empty() && t.back() == ' ') t.pop_back();
    return t;
  };
  auto end_of = [&](const std::vector<int64_t>& v) {
    const auto eos = std::find(v.begin() + 1, v.end(), tokenizer.eos_id());
    return eos == v.end() ? L : static_cast<int64_t>(eos - v.begin()) + 1;
  };
  const int64_t end_a = end_of(ids_a), end_b = end_of(ids_b), n = std::max(end_a, end_b);
  const auto rel = ((h[0] - h[1]).norm(2, 1) / h[0].norm(2, 1).clamp_min(1e-12));
  const auto cos = torch::cosine_similarity(h[0], h[1], 1);
  std::vector<TokenStateDifference> out;
  for (int64_t i = 0; i < n; ++i) {
    TokenStateDifference d;
    d.position = i;
    d.token_a = i < end_a ? text_of(ids_a[i]) : "";
    d.token_b = i < end_b ? text_of(ids_b[i]) : "";
    d.relative_l2 = rel[i].item<double>();
    d.cosine = cos[i].item<double>();
    out.push_back(d);
  }
  return out;
}

}  // namespace collage
