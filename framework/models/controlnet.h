// ControlNetModel (diffusers 0.21.4): a copy of the UNet's encoder half (time embedding, conv_in, down blocks,
// mid block: the same block classes as UNet2DConditionModel, unet_blocks.h) plus a small conditioning encoder for
// the control image and one 1x1 "zero convolution" per skip connection. Its outputs are residuals for the UNet
// (UNetResiduals). Parameters are named like the checkpoint keys; every tensor comes from its own file.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/core.h"
#include "models/unet_2d_condition.h"

namespace collage {

struct ControlNetConfig {
  UNet2DConditionConfig unet;  // the architecture shared with the UNet (no up path: up_block_types unused)
  int64_t conditioning_channels = 3;
  std::vector<int64_t> conditioning_embedding_out_channels{16, 32, 96, 256};
  std::string conditioning_channel_order = "rgb";  // "bgr" flips the control image's channels first
  bool global_pool_conditions = false;              // residuals mean-pooled to 1x1 (shuffle ControlNets)
  std::vector<std::string> unknown_keys;

  // Reads a diffusers controlnet/config.json; errors name the file and key.
  static ControlNetConfig from_json(const Json& json, const std::string& file);
  static ControlNetConfig from_json_file(const std::string& path);
  // The ControlNet of a UNet (diffusers ControlNetModel.from_unet): its encoder-half options, with the real SD
  // ControlNets' conditioning encoder by default.
  static ControlNetConfig from_unet(const UNet2DConditionConfig& unet,
                                    std::vector<int64_t> conditioning_embedding_out_channels = {16, 32, 96, 256});
  // How much smaller the latent is than the control image: 2^(number of stride-2 convs of the encoder).
  int64_t conditioning_downscale() const { return int64_t(1) << (conditioning_embedding_out_channels.size() - 1); }
};

// How strongly the residuals count: one number (diffusers' conditioning_scale), or a per-pixel map at the control
// image's size, (H, W) or (N, 1, H, W) with N = 1 or the batch, resized bilinearly (align_corners=False) to every
// residual and multiplied in (the Collage Diffusion authors' per-layer control; the number and guess mode's
// scales are then not applied, as in their code).
struct ControlScale {
  double value = 1.0;
  at::Tensor map;
  ControlScale(double v = 1.0) : value(v) {}  // NOLINT: a number is a scale
  explicit ControlScale(at::Tensor per_pixel) : map(std::move(per_pixel)) {}
};

// The control-image encoder: conv_in + silu, then per channel step a 3x3 conv + silu and a stride-2 3x3 conv +
// silu, then conv_out (no activation).
class ControlNetConditioningEmbeddingImpl : public torch::nn::Module {
 public:
  ControlNetConditioningEmbeddingImpl(int64_t conditioning_channels, const std::vector<int64_t>& channels,
                                      int64_t out_channels);
  at::Tensor forward(const at::Tensor& cond);
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  torch::nn::ModuleList blocks{nullptr};
};
TORCH_MODULE(ControlNetConditioningEmbedding);

class ControlNetModelImpl : public torch::nn::Module {
 public:
  explicit ControlNetModelImpl(const ControlNetConfig& config);

  // sample (B, C, h, w), timestep 0-dim or (B,), encoder_hidden_states (B, M, D), controlnet_cond (B, 3, H, W)
  // in [0, 1] with H = h * conditioning_downscale(). Guess mode scales residual k by
  // logspace(-1, 0, K+1)[k] x scale (the mid residual by the last). `debug` receives "time_proj",
  // "time_embedding", "conv_in", "cond_embedding", "down_features.k" (before the zero convs), "mid_block".
  UNetResiduals forward(const at::Tensor& sample, const at::Tensor& timestep, const at::Tensor& encoder_hidden_states,
                        const at::Tensor& controlnet_cond, const ControlScale& scale = {}, bool guess_mode = false,
                        const StepInfo* step = nullptr, std::map<std::string, at::Tensor>* debug = nullptr);

  const ControlNetConfig& config() const { return config_; }
  void set_channels_last(bool enable);
  const std::vector<Attention>& attention_layers() const { return attention_layers_; }

  // Loads `folder/config.json` + diffusion_pytorch_model.safetensors (variant e.g. "fp16").
  static std::shared_ptr<ControlNetModelImpl> load(const std::string& folder, const std::string& variant = "");

  struct Blocks;

 private:
  ControlNetConfig config_;
  std::shared_ptr<Blocks> blocks_;
  bool channels_last_ = false;
  std::vector<Attention> attention_layers_;
};
TORCH_MODULE(ControlNetModel);

// Multiplies residuals by a per-pixel map (H, W) or (N, 1, H, W), resized to each residual's size with bilinear
// interpolation, align_corners=False (the authors' per-pixel conditioning scale).
void scale_residuals_by_map(UNetResiduals& residuals, const at::Tensor& map);

}  // namespace collage
