#include <ATen/ATen.h>
#include <torch/torch.h>

#include <filesystem>
#include <set>

#include "core/core.h"
#include "models/models.h"
#include "parity/parity.h"

namespace collage::parity {

// Cases are discovered from `<case>.sample` tensors; `<case>.debug.<name>` tensors, when present, are compared
// with the same-named intermediate outputs.
void check_unet(const std::string& folder, Recorder& rec) {
  std::shared_ptr<UNet2DConditionModelImpl> unet;
  try {
    unet = UNet2DConditionModelImpl::load(folder);
    unet->to(rec.target().device, rec.target().dtype);
  } catch (const std::exception& e) {
    rec.failure("load", e.what());
    return;
  }
  const auto cases_path = (std::filesystem::path(folder) / "cases.safetensors").string();
  auto cases = load_safetensors(cases_path);
  std::set<std::string> prefixes;
  for (const auto& [name, t] : cases) {
    const auto dot = name.find(".sample");
    if (dot != std::string::npos && dot + 7 == name.size()) prefixes.insert(name.substr(0, dot));
  }
  COLLAGE_CHECK_AT(!prefixes.empty(), cases_path, "", "no '<case>.sample' tensors found");
  torch::NoGradGuard no_grad;
  for (const auto& p : prefixes) {
    try {
      std::map<std::string, at::Tensor> debug;
      const auto& tg = rec.target();
      // The timestep stays float32/int: diffusers embeds it in float32 whatever the model dtype.
      auto out = unet->forward(tg.in(cases.at(p + ".sample")), cases.at(p + ".timestep").to(tg.device),
                               tg.in(cases.at(p + ".encoder_hidden_states")), nullptr, &debug);
      rec.tensor(p + ".out", out, cases.at(p + ".out"));
      const std::string dbg = p + ".debug.";
      for (const auto& [name, ref] : cases) {
        if (name.rfind(dbg, 0) != 0) continue;
        const auto key = name.substr(dbg.size());
        auto it = debug.find(key);
        if (it == debug.end())
          rec.failure(name, "this implementation has no intermediate output named '" + key + "'");
        else
          rec.tensor(name, it->second, ref);
      }
    } catch (const std::exception& e) {
      rec.failure(p, e.what());
    }
  }
}

}  // namespace collage::parity
