// The SD VAE (diffusers 0.21.4 AutoencoderKL) behind a small LatentAutoencoder interface, so that pipelines
// do not depend on the KL variant. Parameter names are the diffusers keys (`encoder.down_blocks.0.resnets.0.
// conv1.weight`, `decoder.mid_block.attentions.0.to_q.weight`, `quant_conv.weight`, ...).
#pragma once

#include <ATen/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <string>
#include <vector>

#include "core/core.h"
#include "models/attention.h"
#include "models/resnet.h"

namespace collage {

// What pipelines need from a VAE: image <-> latent, the latent scale and geometry.
class LatentAutoencoder {
 public:
  virtual ~LatentAutoencoder();

  // diffusers DiagonalGaussianDistribution: parameters = cat(mean, logvar) along channels.
  struct Posterior {
    at::Tensor mean, logvar, std, parameters;
    // mean + std * noise (what latent_dist.sample(generator) returns when the generator draws `noise`).
    at::Tensor sample(const at::Tensor& noise) const;
    at::Tensor mode() const { return mean; }
  };

  // image: (B, in_channels, H, W) in [-1, 1], on the model's device and dtype.
  virtual Posterior encode(const at::Tensor& image) = 0;
  // latents: (B, latent_channels, h, w), unscaled (divide by scaling_factor() first). Returns images in ~[-1, 1].
  virtual at::Tensor decode(const at::Tensor& latents) = 0;
  virtual double scaling_factor() const = 0;
  virtual int64_t downscale_factor() const = 0;
  virtual int64_t latent_channels() const = 0;
  virtual void to(at::Device device, at::ScalarType dtype) = 0;
  virtual at::Device device() const = 0;
  virtual at::ScalarType dtype() const = 0;
};

// config.json of an AutoencoderKL (diffusers register_to_config fields).
struct AutoencoderKLConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  std::vector<std::string> down_block_types;  // "DownEncoderBlock2D" each
  std::vector<std::string> up_block_types;    // "UpDecoderBlock2D" each
  std::vector<int64_t> block_out_channels;
  int64_t layers_per_block = 1;
  std::string act_fn = "silu";
  int64_t latent_channels = 4;
  int64_t norm_num_groups = 32;
  int64_t sample_size = 32;
  double scaling_factor = 0.18215;
  // Read, not acted on: like diffusers' SD 1.x/2.x pipelines, ours decode in the VAE's own dtype (the float32
  // upcast this flag asks for is SDXL's).
  bool force_upcast = true;
  // Newer diffusers fields (absent at 0.21.4, defaults = 0.21.4 behaviour).
  bool mid_block_add_attention = true;
  bool use_quant_conv = true;
  bool use_post_quant_conv = true;
  std::vector<std::string> unknown_keys;  // keys neither read nor known to be irrelevant

  // block_out_channels, down_block_types and up_block_types are required (the diffusers defaults, one 64-channel
  // block, never match a real checkpoint); other keys take the diffusers defaults. Errors name the file + key.
  static AutoencoderKLConfig from_json_file(const std::string& path);
  static AutoencoderKLConfig from_json(const Json& object, const std::string& file);

  // 2^(number of blocks - 1): 8 for SD.
  int64_t downscale_factor() const { return int64_t(1) << (block_out_channels.size() - 1); }
};

// diffusers UNetMidBlock2D without time embedding: resnet, (attention, resnet) x 1.
class VaeMidBlockImpl : public torch::nn::Module {
 public:
  VaeMidBlockImpl(int64_t channels, int64_t groups, bool add_attention);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::ModuleList resnets{nullptr}, attentions{nullptr};
};
TORCH_MODULE(VaeMidBlock);

// diffusers DownEncoderBlock2D: resnets, then an asymmetrically padded stride-2 conv except in the last block.
class DownEncoderBlock2DImpl : public torch::nn::Module {
 public:
  DownEncoderBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t num_layers, int64_t groups,
                         bool add_downsample);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::ModuleList resnets{nullptr}, downsamplers{nullptr};
};
TORCH_MODULE(DownEncoderBlock2D);

// diffusers UpDecoderBlock2D: resnets, then nearest 2x + conv except in the last block.
class UpDecoderBlock2DImpl : public torch::nn::Module {
 public:
  UpDecoderBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t num_layers, int64_t groups,
                       bool add_upsample);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::ModuleList resnets{nullptr}, upsamplers{nullptr};
};
TORCH_MODULE(UpDecoderBlock2D);

class VaeEncoderImpl : public torch::nn::Module {
 public:
  explicit VaeEncoderImpl(const AutoencoderKLConfig& config);
  at::Tensor forward(const at::Tensor& x);  // (B, in, H, W) -> (B, 2 * latent, H / f, W / f)
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  torch::nn::ModuleList down_blocks{nullptr};
  VaeMidBlock mid_block{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(VaeEncoder);

class VaeDecoderImpl : public torch::nn::Module {
 public:
  explicit VaeDecoderImpl(const AutoencoderKLConfig& config);
  at::Tensor forward(const at::Tensor& z);  // (B, latent, h, w) -> (B, out, h * f, w * f)
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  VaeMidBlock mid_block{nullptr};
  torch::nn::ModuleList up_blocks{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(VaeDecoder);

class AutoencoderKLImpl : public torch::nn::Module {
 public:
  explicit AutoencoderKLImpl(const AutoencoderKLConfig& config);
  // quant_conv(encoder(image)): (B, 2 * latent_channels, h, w) = cat(mean, logvar).
  at::Tensor encode_parameters(const at::Tensor& image);
  LatentAutoencoder::Posterior encode(const at::Tensor& image);
  // decoder(post_quant_conv(latents)); no scaling factor applied.
  at::Tensor decode(const at::Tensor& latents);

  const AutoencoderKLConfig& config() const { return config_; }

  VaeEncoder encoder{nullptr};
  VaeDecoder decoder{nullptr};
  torch::nn::Conv2d quant_conv{nullptr}, post_quant_conv{nullptr};  // null when the config disables them

 private:
  AutoencoderKLConfig config_;
};
TORCH_MODULE(AutoencoderKL);

// Splits quant_conv output into the posterior (logvar clamped to [-30, 20], std = exp(logvar / 2)).
LatentAutoencoder::Posterior make_diagonal_gaussian(const at::Tensor& parameters);

// Loads `folder`/config.json + diffusion_pytorch_model[.variant].safetensors into an AutoencoderKL. Old
// checkpoints' mid-block attention keys (query, key, value, proj_attn) load into to_q, to_k, to_v, to_out.0.
// Parameters are frozen (requires_grad = false).
AutoencoderKL load_autoencoder_kl(const std::string& folder, const std::string& variant = "");

// LatentAutoencoder over an AutoencoderKL module.
class AutoencoderKLModel : public LatentAutoencoder {
 public:
  explicit AutoencoderKLModel(AutoencoderKL module);
  Posterior encode(const at::Tensor& image) override;
  at::Tensor decode(const at::Tensor& latents) override;
  double scaling_factor() const override { return module_->config().scaling_factor; }
  int64_t downscale_factor() const override { return module_->config().downscale_factor(); }
  int64_t latent_channels() const override { return module_->config().latent_channels; }
  void to(at::Device device, at::ScalarType dtype) override;
  at::Device device() const override;
  at::ScalarType dtype() const override;

  const AutoencoderKLConfig& config() const { return module_->config(); }
  AutoencoderKL& module() { return module_; }

 private:
  void check_input(const at::Tensor& x, int64_t channels, const char* what) const;
  AutoencoderKL module_;
};

// Loads a VAE folder, dispatching on config.json `_class_name` (AutoencoderKL; absent = AutoencoderKL).
std::shared_ptr<LatentAutoencoder> load_autoencoder(const std::string& folder, const std::string& variant = "");

}  // namespace collage
