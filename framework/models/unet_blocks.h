// The UNet's time embedding, down blocks and mid block (diffusers CrossAttnDownBlock2D / DownBlock2D,
// UNetMidBlock2DCrossAttn), shared by UNet2DConditionModel and ControlNetModel: one implementation of the
// encoder half, configured from the same UNet2DConditionConfig, with the checkpoint's key names.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <utility>
#include <vector>

#include "models/attention.h"
#include "models/resnet.h"
#include "models/unet_2d_condition.h"

namespace collage {

// linear_1 -> silu -> linear_2 on the sinusoidal timestep features.
class TimestepEmbeddingImpl : public torch::nn::Module {
 public:
  TimestepEmbeddingImpl(int64_t in, int64_t dim) {
    linear_1 = register_module("linear_1", torch::nn::Linear(in, dim));
    linear_2 = register_module("linear_2", torch::nn::Linear(dim, dim));
  }
  at::Tensor forward(const at::Tensor& x) { return linear_2->forward(at::silu(linear_1->forward(x))); }
  torch::nn::Linear linear_1{nullptr}, linear_2{nullptr};
};
TORCH_MODULE(TimestepEmbedding);

// A down block: resnet (+ transformer) layers, then a downsampler unless it is the last block. forward
// appends every layer output and the downsampler output to `skips` (the UNet's skip connections, the
// ControlNet's residual sources).
class DownBlockImpl : public torch::nn::Module {
 public:
  DownBlockImpl(const UNet2DConditionConfig& c, int64_t index, int64_t in, int64_t out, int64_t temb,
                bool cross, bool add_downsample) {
    resnets = register_module("resnets", torch::nn::ModuleList());
    if (cross) attentions = register_module("attentions", torch::nn::ModuleList());
    const int64_t heads = c.heads_for_block(index);
    for (int64_t i = 0; i < c.layers_for_block(index); ++i) {
      ResnetBlock2DOptions ro;
      ro.in_channels = i == 0 ? in : out;
      ro.out_channels = out;
      ro.temb_channels = temb;
      ro.groups = c.norm_num_groups;
      ro.eps = c.norm_eps;
      resnets->push_back(ResnetBlock2D(ro));
      if (cross)
        attentions->push_back(Transformer2DModel(out, heads, out / heads, c.cross_attention_dim,
                                                 c.transformer_layers_for_block(index), c.norm_num_groups,
                                                 c.use_linear_projection, c.upcast_attention,
                                                 c.only_cross_attention));
    }
    if (add_downsample) {
      downsamplers = register_module("downsamplers", torch::nn::ModuleList());
      downsamplers->push_back(Downsample2D(out, out, c.downsample_padding));
    }
  }
  at::Tensor forward(at::Tensor h, const at::Tensor& temb, const at::Tensor& context, const StepInfo* step,
                     std::vector<at::Tensor>& skips) {
    for (size_t i = 0; i < resnets->size(); ++i) {
      h = resnets[i]->as<ResnetBlock2DImpl>()->forward(h, temb);
      if (attentions) h = attentions[i]->as<Transformer2DModelImpl>()->forward(h, context, step);
      skips.push_back(h);
    }
    if (downsamplers) {
      h = downsamplers[0]->as<Downsample2DImpl>()->forward(h);
      skips.push_back(h);
    }
    return h;
  }
  torch::nn::ModuleList resnets{nullptr}, attentions{nullptr}, downsamplers{nullptr};
};
TORCH_MODULE(DownBlock);

// The mid block: resnet, (transformer, resnet) x 1.
class MidBlockImpl : public torch::nn::Module {
 public:
  MidBlockImpl(const UNet2DConditionConfig& c, int64_t channels, int64_t temb) {
    resnets = register_module("resnets", torch::nn::ModuleList());
    attentions = register_module("attentions", torch::nn::ModuleList());
    ResnetBlock2DOptions ro;
    ro.in_channels = channels;
    ro.out_channels = channels;
    ro.temb_channels = temb;
    ro.groups = c.norm_num_groups;
    ro.eps = c.norm_eps;
    ro.output_scale_factor = c.mid_block_scale_factor;
    resnets->push_back(ResnetBlock2D(ro));
    const int64_t last = c.num_blocks() - 1;
    const int64_t heads = c.heads_for_block(last);
    attentions->push_back(Transformer2DModel(channels, heads, channels / heads, c.cross_attention_dim,
                                             c.transformer_layers_for_block(last), c.norm_num_groups,
                                             c.use_linear_projection, c.upcast_attention, false));
    resnets->push_back(ResnetBlock2D(ro));
  }
  at::Tensor forward(at::Tensor h, const at::Tensor& temb, const at::Tensor& context, const StepInfo* step) {
    h = resnets[0]->as<ResnetBlock2DImpl>()->forward(h, temb);
    for (size_t i = 0; i < attentions->size(); ++i) {
      h = attentions[i]->as<Transformer2DModelImpl>()->forward(h, context, step);
      h = resnets[i + 1]->as<ResnetBlock2DImpl>()->forward(h, temb);
    }
    return h;
  }
  torch::nn::ModuleList resnets{nullptr}, attentions{nullptr};
};
TORCH_MODULE(MidBlock);

// The time path of both models: timestep (0-dim or (B,), any dtype; broadcast to `batch`) -> sinusoidal
// features ("time_proj", in `dtype`) -> time_embedding. Returns {time_proj, time_embedding}.
std::pair<at::Tensor, at::Tensor> embed_timestep(const UNet2DConditionConfig& config, TimestepEmbeddingImpl& embedding,
                                                 const at::Tensor& timestep, int64_t batch, const at::Device& device,
                                                 at::ScalarType dtype);

// Stores every 4-d parameter (conv weights) of `module` channels-last (enable) or contiguous.
void set_conv_weights_channels_last(torch::nn::Module& module, bool enable);

}  // namespace collage
