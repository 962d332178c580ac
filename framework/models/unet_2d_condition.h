// UNet2DConditionModel (diffusers 0.21.4): configured from its config.json, parameters named like the
// checkpoint keys, cross-attention through swappable processors.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/core.h"
#include "models/attention.h"
#include "models/resnet.h"

namespace collage {

struct UNet2DConditionConfig {
  int64_t sample_size = 64;
  int64_t in_channels = 4;
  int64_t out_channels = 4;
  bool center_input_sample = false;
  bool flip_sin_to_cos = true;
  int64_t freq_shift = 0;
  std::vector<std::string> down_block_types{"CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                            "CrossAttnDownBlock2D", "DownBlock2D"};
  std::string mid_block_type = "UNetMidBlock2DCrossAttn";
  std::vector<std::string> up_block_types{"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                          "CrossAttnUpBlock2D"};
  std::vector<int64_t> block_out_channels{320, 640, 1280, 1280};
  std::vector<int64_t> layers_per_block{2};          // one value or one per block
  int64_t downsample_padding = 1;
  double mid_block_scale_factor = 1.0;
  std::string act_fn = "silu";
  int64_t norm_num_groups = 32;
  double norm_eps = 1e-5;
  int64_t cross_attention_dim = 1280;
  std::vector<int64_t> transformer_layers_per_block{1};  // one value or one per block
  std::vector<int64_t> attention_head_dim{8};            // diffusers: the number of heads (!) unless
  std::vector<int64_t> num_attention_heads;              // num_attention_heads is given
  bool use_linear_projection = false;
  bool upcast_attention = false;
  bool only_cross_attention = false;
  std::string resnet_time_scale_shift = "default";
  int64_t conv_in_kernel = 3;
  int64_t conv_out_kernel = 3;

  // Reads a diffusers unet/config.json. Features this implementation does not support (class embeddings,
  // addition embeddings, dual cross-attention, ...) are errors naming the key; unknown keys are listed in
  // `unknown_keys` for a warning.
  static UNet2DConditionConfig from_json(const Json& json, const std::string& file);
  static UNet2DConditionConfig from_json_file(const std::string& path);
  std::vector<std::string> unknown_keys;

  int64_t num_blocks() const { return static_cast<int64_t>(block_out_channels.size()); }
  int64_t heads_for_block(int64_t i) const;  // per down block index; mid uses the last
  int64_t layers_for_block(int64_t i) const;
  int64_t transformer_layers_for_block(int64_t i) const;
};

class Transformer2DModelImpl : public torch::nn::Module {
 public:
  Transformer2DModelImpl(int64_t channels, int64_t heads, int64_t dim_head, int64_t cross_attention_dim,
                         int64_t num_layers, int64_t norm_num_groups, bool use_linear_projection,
                         bool upcast_attention, bool only_cross_attention);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& encoder_hidden_states, const StepInfo* step);

  torch::nn::GroupNorm norm{nullptr};
  // proj_in / proj_out: a 1x1 conv (SD1) or a linear layer (SD2), registered under the same key.
  torch::nn::Conv2d proj_in_conv{nullptr}, proj_out_conv{nullptr};
  torch::nn::Linear proj_in_linear{nullptr}, proj_out_linear{nullptr};
  torch::nn::ModuleList transformer_blocks{nullptr};

 private:
  bool use_linear_projection_;
};
TORCH_MODULE(Transformer2DModel);

// Residuals added to the UNet's skip connections and mid-block output (diffusers'
// down_block_additional_residuals / mid_block_additional_residual, what a ControlNet produces): `down[k]` is
// added to skip tensor k (conv_in output, every down-block layer and downsampler output, in order), `mid` to the
// mid-block output. Shapes equal those tensors'.
struct UNetResiduals {
  std::vector<at::Tensor> down;
  at::Tensor mid;
};

class UNet2DConditionModelImpl : public torch::nn::Module {
 public:
  explicit UNet2DConditionModelImpl(const UNet2DConditionConfig& config);

  // sample: (B, C, H, W); timestep: 0-dim or (B,) (broadcast to the batch); encoder_hidden_states: (B, M, D).
  // `step` is handed to the attention processors. `debug`, when given, receives intermediate outputs named
  // like the golden data ("time_proj", "down_blocks.0", "mid_block", ...). `residuals`, when given, are
  // added as diffusers adds a ControlNet's (after the whole down path; debug outputs are before adding).
  at::Tensor forward(const at::Tensor& sample, const at::Tensor& timestep,
                     const at::Tensor& encoder_hidden_states, const StepInfo* step = nullptr,
                     std::map<std::string, at::Tensor>* debug = nullptr, const UNetResiduals* residuals = nullptr);

  const UNet2DConditionConfig& config() const { return config_; }

  // NHWC activations and conv weights (faster on CPU with oneDNN; results equal up to rounding).
  void set_channels_last(bool enable);
  bool channels_last() const { return channels_last_; }

  // Attention layers, with their paths ("down_blocks.0.attentions.0.transformer_blocks.0.attn2").
  const std::vector<Attention>& attention_layers() const { return attention_layers_; }
  // Installs `processor` on every attention layer whose path satisfies `select` (null processor = the
  // default math). Returns how many layers were set; zero matches is an error.
  int set_attn_processor(const std::function<bool(const Attention&)>& select,
                         std::shared_ptr<AttnProcessor> processor);
  // Installs processors by exact path; an unknown path is an error listing a few valid ones.
  void set_attn_processors(const std::map<std::string, std::shared_ptr<AttnProcessor>>& by_path);
  // Restores the default processor everywhere.
  void reset_attn_processors();

  // Loads `folder/config.json` + weights (variant e.g. "fp16"); errors name the file and key.
  static std::shared_ptr<UNet2DConditionModelImpl> load(const std::string& folder, const std::string& variant = "");

  struct Blocks;  // typed views of the blocks (defined in the .cpp)

 private:
  UNet2DConditionConfig config_;
  std::shared_ptr<Blocks> blocks_;
  bool channels_last_ = false;
  std::vector<Attention> attention_layers_;
};
TORCH_MODULE(UNet2DConditionModel);

// Sinusoidal timestep embedding as diffusers' get_timestep_embedding (float32).
at::Tensor timestep_embedding(const at::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos,
                              double downscale_freq_shift, double max_period = 10000.0);

}  // namespace collage

namespace collage {
// Multiply-add FLOPs (2 per MAC) of one UNet evaluation: convolutions, linear layers and the two attention
// matmuls; norms and element-wise ops are not counted. Used by the benchmark to report achieved GFLOPS.
double unet_flops(const UNet2DConditionConfig& config, int64_t batch, int64_t height, int64_t width,
                  int64_t context_tokens);
}  // namespace collage
