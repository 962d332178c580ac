// ResnetBlock2D, Downsample2D and Upsample2D shared by the UNet and the VAE (diffusers key names).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

namespace collage {

// A Conv2d whose weight can be reordered once into oneDNN's blocked layout for CPU inference. Large
// convolutions at low resolution (SD's 1280-channel blocks at 16x16 and 8x8) otherwise spend most of their
// time re-laying out a 60 MB weight on every call. pack() releases the dense weight (no double memory);
// unpack() restores it, which gradient computation (textual inversion) needs.
class Conv2dPackedImpl : public torch::nn::Conv2dImpl {
 public:
  using torch::nn::Conv2dImpl::Conv2dImpl;
  at::Tensor forward(const at::Tensor& x);
  void pack();
  void unpack();
  bool packed() const { return packed_weight_.defined(); }

 private:
  at::Tensor packed_weight_, packed_bias_;
  std::vector<int64_t> dense_shape_;
};
TORCH_MODULE(Conv2dPacked);

// Packs every Conv2dPacked in `root` whose weight has at least `min_weight_elements` elements (CPU only;
// a no-op elsewhere). Returns how many were packed.
int pack_large_convs(torch::nn::Module& root, int64_t min_weight_elements = int64_t(8) << 20);
void unpack_convs(torch::nn::Module& root);

struct ResnetBlock2DOptions {
  int64_t in_channels = 0;
  int64_t out_channels = 0;       // 0 = in_channels
  int64_t temb_channels = 0;      // 0 = no time embedding (VAE)
  int64_t groups = 32;
  double eps = 1e-6;
  double output_scale_factor = 1.0;
};

class ResnetBlock2DImpl : public torch::nn::Module {
 public:
  explicit ResnetBlock2DImpl(const ResnetBlock2DOptions& options);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& temb = {});

  torch::nn::GroupNorm norm1{nullptr}, norm2{nullptr};
  Conv2dPacked conv1{nullptr}, conv2{nullptr}, conv_shortcut{nullptr};
  torch::nn::Linear time_emb_proj{nullptr};

 private:
  ResnetBlock2DOptions options_;
};
TORCH_MODULE(ResnetBlock2D);

class Downsample2DImpl : public torch::nn::Module {
 public:
  // padding 1: symmetric (UNet); padding 0: diffusers pads (0,1,0,1) first (VAE encoder).
  Downsample2DImpl(int64_t channels, int64_t out_channels, int64_t padding);
  at::Tensor forward(const at::Tensor& x);
  Conv2dPacked conv{nullptr};

 private:
  int64_t padding_;
};
TORCH_MODULE(Downsample2D);

class Upsample2DImpl : public torch::nn::Module {
 public:
  Upsample2DImpl(int64_t channels, int64_t out_channels);
  // Nearest-neighbour 2x (or to `size` when given: odd latent sizes in the UNet), then a 3x3 conv.
  at::Tensor forward(const at::Tensor& x, at::IntArrayRef size = {});
  Conv2dPacked conv{nullptr};
};
TORCH_MODULE(Upsample2D);

}  // namespace collage
