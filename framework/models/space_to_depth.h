// A lossless, weight-free "autoencoder" for small sandbox models: encode = pixel_unshuffle by `factor`
// (64x64x3 -> 16x16x48 for factor 4), decode = pixel_shuffle. The posterior is deterministic (std = 0), so
// encode(x).sample(noise) == encode(x).mode() for any noise, and decode(encode(x).mean) == x bit for bit.
// Latent scaling is the pipeline's job (scaling_factor, as for the SD VAE).
//
// vae/config.json: {"_class_name": "SpaceToDepthAutoencoder", "factor": 4, "in_channels": 3,
//                   "scaling_factor": 2.0}
#pragma once

#include <string>

#include "core/core.h"
#include "models/autoencoder_kl.h"

namespace collage {

struct SpaceToDepthConfig {
  int64_t factor = 4;
  int64_t in_channels = 3;
  double scaling_factor = 1.0;
  static SpaceToDepthConfig from_json(const Json& json, const std::string& file);
  Json to_json() const;
};

class SpaceToDepthAutoencoder : public LatentAutoencoder {
 public:
  explicit SpaceToDepthAutoencoder(const SpaceToDepthConfig& config);
  Posterior encode(const at::Tensor& image) override;
  at::Tensor decode(const at::Tensor& latents) override;
  double scaling_factor() const override { return config_.scaling_factor; }
  int64_t downscale_factor() const override { return config_.factor; }
  int64_t latent_channels() const override { return config_.in_channels * config_.factor * config_.factor; }
  void to(at::Device device, at::ScalarType dtype) override;
  at::Device device() const override { return device_; }
  at::ScalarType dtype() const override { return dtype_; }
  const SpaceToDepthConfig& config() const { return config_; }

 private:
  SpaceToDepthConfig config_;
  at::Device device_{at::kCPU};
  at::ScalarType dtype_ = at::kFloat;
};

}  // namespace collage
