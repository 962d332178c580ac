#include <ATen/ATen.h>
#include <torch/torch.h>

#include <filesystem>
#include <map>

#include "core/core.h"
#include "models/models.h"
#include "parity/parity.h"

namespace collage::parity {

// cases.safetensors: `input_ids` (N, L), `hidden_states.{0..L}`, `last_hidden_state`, `pooler_output`. The number of
// hidden states is whatever the file holds; each must exist in the model's output.
void check_text_encoder(const std::string& folder, Recorder& rec) {
  ClipTextModel model{nullptr};
  try {
    model = ClipTextModelImpl::load(folder);
    model->to(rec.target().device, rec.target().dtype);
  } catch (const std::exception& e) {
    rec.failure("load", e.what());
    return;
  }
  const auto cases_path = (std::filesystem::path(folder) / "cases.safetensors").string();
  auto cases = load_safetensors(cases_path);
  COLLAGE_CHECK_AT(cases.count("input_ids"), cases_path, "input_ids", "tensor missing");

  std::map<int64_t, at::Tensor> hidden_refs;
  const std::string hs = "hidden_states.";
  for (const auto& [name, t] : cases) {
    if (name.rfind(hs, 0) != 0) continue;
    const auto index = name.substr(hs.size());
    COLLAGE_CHECK_AT(!index.empty() && index.find_first_not_of("0123456789") == std::string::npos, cases_path,
                     name, "expected 'hidden_states.<layer index>'");
    hidden_refs[std::stoll(index)] = t;
  }

  torch::NoGradGuard no_grad;
  ClipTextOutput out;
  try {
    out = model->forward(rec.target().in(cases.at("input_ids")), /*output_hidden_states=*/true);
  } catch (const std::exception& e) {
    rec.failure("forward", e.what());
    return;
  }
  rec.exact("num_hidden_states", hidden_refs.empty() || hidden_refs.rbegin()->first + 1 ==
                                                             static_cast<int64_t>(out.hidden_states.size()),
            fmt::format("model returns {} hidden states (num_hidden_layers {} + 1), reference has up to index {}",
                        out.hidden_states.size(), model->config().num_hidden_layers,
                        hidden_refs.empty() ? -1 : hidden_refs.rbegin()->first));
  for (const auto& [i, ref] : hidden_refs) {
    const auto name = hs + std::to_string(i);
    if (i >= static_cast<int64_t>(out.hidden_states.size()))
      rec.failure(name, "the model has no hidden state with this index");
    else
      rec.tensor(name, out.hidden_states[i], ref);
  }
  for (const char* field : {"last_hidden_state", "pooler_output"}) {
    auto it = cases.find(field);
    if (it == cases.end()) {
      rec.failure(field, "reference tensor missing in " + cases_path);
      continue;
    }
    rec.tensor(field, std::string(field) == "last_hidden_state" ? out.last_hidden_state : out.pooler_output,
               it->second);
  }
}

}  // namespace collage::parity
