#include <ATen/ATen.h>
#include <torch/torch.h>

#include <filesystem>
#include <set>

#include "core/core.h"
#include "models/models.h"
#include "parity/parity.h"

namespace collage::parity {

// Cases are the prefixes of cases.safetensors names (`sq.image` -> `sq`). A case with `image` checks the
// encoder (enc_parameters, enc_mean, enc_logvar, enc_std, and enc_sample from sample_noise); a case with
// `dec_latent` checks the decoder (dec_out). The file's `downscale_factor` metadata, when present, is checked.
void check_vae(const std::string& folder, Recorder& rec) {
  std::shared_ptr<LatentAutoencoder> vae;
  try {
    vae = load_autoencoder(folder);
    vae->to(rec.target().device, rec.target().dtype);
  } catch (const std::exception& e) {
    rec.failure("load", e.what());
    return;
  }
  const auto cases_path = (std::filesystem::path(folder) / "cases.safetensors").string();
  auto file = SafetensorsFile::open(cases_path);
  std::map<std::string, at::Tensor> cases;
  std::set<std::string> prefixes;
  for (const auto& name : file->names()) {
    cases[name] = file->tensor(name);
    const auto dot = name.find('.');
    if (dot != std::string::npos && dot > 0) prefixes.insert(name.substr(0, dot));
  }
  COLLAGE_CHECK_AT(!prefixes.empty(), cases_path, "", "no '<case>.<field>' tensors found");
  const auto& meta = file->metadata();
  if (auto it = meta.find("downscale_factor"); it != meta.end())
    rec.exact("downscale_factor", it->second == std::to_string(vae->downscale_factor()),
              fmt::format("model {} vs reference {}", vae->downscale_factor(), it->second));

  torch::NoGradGuard no_grad;
  for (const auto& p : prefixes) {
    auto get = [&](const std::string& field) -> const at::Tensor* {
      auto it = cases.find(p + "." + field);
      return it == cases.end() ? nullptr : &it->second;
    };
    bool checked = false;
    if (const auto* image = get("image")) {
      checked = true;
      try {
        auto post = vae->encode(rec.target().in(*image));
        const std::pair<const char*, const at::Tensor*> fields[] = {{"enc_parameters", &post.parameters},
                                                                    {"enc_mean", &post.mean},
                                                                    {"enc_logvar", &post.logvar},
                                                                    {"enc_std", &post.std}};
        for (const auto& [field, got] : fields)
          if (const auto* ref = get(field)) rec.tensor(p + "." + field, *got, *ref);
        if (const auto* ref = get("enc_sample")) {
          if (const auto* noise = get("sample_noise"))
            rec.tensor(p + ".enc_sample", post.sample(rec.target().in(*noise)), *ref);
          else
            rec.failure(p + ".enc_sample", "reference has enc_sample but no sample_noise");
        }
      } catch (const std::exception& e) {
        rec.failure(p + ".encode", e.what());
      }
    }
    if (const auto* latent = get("dec_latent")) {
      checked = true;
      try {
        auto out = vae->decode(rec.target().in(*latent));
        if (const auto* ref = get("dec_out"))
          rec.tensor(p + ".dec_out", out, *ref);
        else
          rec.failure(p + ".dec_out", "reference has dec_latent but no dec_out");
      } catch (const std::exception& e) {
        rec.failure(p + ".decode", e.what());
      }
    }
    if (!checked) rec.failure(p, "case has neither 'image' nor 'dec_latent'");
  }
}

}  // namespace collage::parity
