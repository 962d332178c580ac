#include "models/space_to_depth.h"

#include <torch/torch.h>

#include "core/core.h"

namespace collage {

SpaceToDepthConfig SpaceToDepthConfig::from_json(const Json& j, const std::string& file) {
  SpaceToDepthConfig c;
  auto get_int = [&](const char* key, int64_t& out) {
    if (!j.contains(key)) return;
    COLLAGE_CHECK_AT(j[key].is_number_integer(), file, key, "expected an integer");
    out = j[key].get<int64_t>();
  };
  get_int("factor", c.factor);
  get_int("in_channels", c.in_channels);
  if (j.contains("scaling_factor")) {
    COLLAGE_CHECK_AT(j["scaling_factor"].is_number(), file, "scaling_factor", "expected a number");
    c.scaling_factor = j["scaling_factor"].get<double>();
  }
  COLLAGE_CHECK_AT(c.factor >= 1, file, "factor", "factor must be >= 1, got {}", c.factor);
  COLLAGE_CHECK_AT(c.in_channels >= 1, file, "in_channels", "in_channels must be >= 1, got {}", c.in_channels);
  COLLAGE_CHECK_AT(c.scaling_factor > 0, file, "scaling_factor", "scaling_factor must be positive");
  return c;
}

Json SpaceToDepthConfig::to_json() const {
  Json j;
  j["_class_name"] = "SpaceToDepthAutoencoder";
  j["factor"] = factor;
  j["in_channels"] = in_channels;
  j["scaling_factor"] = scaling_factor;
  return j;
}

SpaceToDepthAutoencoder::SpaceToDepthAutoencoder(const SpaceToDepthConfig& config) : config_(config) {}

LatentAutoencoder::Posterior SpaceToDepthAutoencoder::encode(const at::Tensor& image) {
  COLLAGE_CHECK(image.dim() == 4 && image.size(1) == config_.in_channels,
                "SpaceToDepth encode: expected (B, {}, H, W), got [{}]", config_.in_channels,
                fmt::join(image.sizes(), ","));
  COLLAGE_CHECK(image.size(2) % config_.factor == 0 && image.size(3) % config_.factor == 0,
                "SpaceToDepth encode: size {}x{} not divisible by {}", image.size(2), image.size(3), config_.factor);
  Posterior p;
  p.mean = at::pixel_unshuffle(image, config_.factor).contiguous();
  p.std = at::zeros_like(p.mean);
  p.logvar = at::full_like(p.mean, -30.0);
  p.parameters = at::cat({p.mean, p.logvar}, 1);
  return p;
}

at::Tensor SpaceToDepthAutoencoder::decode(const at::Tensor& latents) {
  COLLAGE_CHECK(latents.dim() == 4 && latents.size(1) == latent_channels(),
                "SpaceToDepth decode: expected (B, {}, h, w), got [{}]", latent_channels(),
                fmt::join(latents.sizes(), ","));
  return at::pixel_shuffle(latents, config_.factor).contiguous();
}

void SpaceToDepthAutoencoder::to(at::Device device, at::ScalarType dtype) {
  device_ = device;
  dtype_ = dtype;
}

}  // namespace collage
