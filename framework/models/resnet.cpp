#include "models/resnet.h"

#include <torch/torch.h>

#include "core/error.h"

namespace collage {

namespace nn = torch::nn;


ResnetBlock2DImpl::ResnetBlock2DImpl(const ResnetBlock2DOptions& o) : options_(o) {
  const int64_t out = o.out_channels > 0 ? o.out_channels : o.in_channels;
  options_.out_channels = out;
  norm1 = register_module("norm1", nn::GroupNorm(nn::GroupNormOptions(o.groups, o.in_channels).eps(o.eps)));
  conv1 = register_module("conv1", nn::Conv2d(nn::Conv2dOptions(o.in_channels, out, 3).padding(1)));
  if (o.temb_channels > 0) time_emb_proj = register_module("time_emb_proj", nn::Linear(o.temb_channels, out));
  norm2 = register_module("norm2", nn::GroupNorm(nn::GroupNormOptions(o.groups, out).eps(o.eps)));
  conv2 = register_module("conv2", nn::Conv2d(nn::Conv2dOptions(out, out, 3).padding(1)));
  if (o.in_channels != out)
    conv_shortcut = register_module("conv_shortcut", nn::Conv2d(nn::Conv2dOptions(o.in_channels, out, 1)));
}

at::Tensor ResnetBlock2DImpl::forward(const at::Tensor& x, const at::Tensor& temb) {
  auto h = norm1->forward(x);
  at::silu_(h);
  h = conv1->forward(h);
  if (time_emb_proj && temb.defined()) {
    auto t = time_emb_proj->forward(at::silu(temb));
    h.add_(t.unsqueeze(-1).unsqueeze(-1));
  }
  h = norm2->forward(h);
  at::silu_(h);
  h = conv2->forward(h);  // dropout is 0 in inference
  auto shortcut = conv_shortcut ? conv_shortcut->forward(x) : x;
  h.add_(shortcut);
  if (options_.output_scale_factor != 1.0) h.div_(options_.output_scale_factor);
  return h;
}

Downsample2DImpl::Downsample2DImpl(int64_t channels, int64_t out_channels, int64_t padding) : padding_(padding) {
  conv = register_module(
      "conv", nn::Conv2d(nn::Conv2dOptions(channels, out_channels, 3).stride(2).padding(padding)));
}

at::Tensor Downsample2DImpl::forward(const at::Tensor& x) {
  if (padding_ == 0) return conv->forward(at::constant_pad_nd(x, {0, 1, 0, 1}, 0));
  return conv->forward(x);
}

Upsample2DImpl::Upsample2DImpl(int64_t channels, int64_t out_channels) {
  conv = register_module("conv", nn::Conv2d(nn::Conv2dOptions(channels, out_channels, 3).padding(1)));
}

at::Tensor Upsample2DImpl::forward(const at::Tensor& x, at::IntArrayRef size) {
  at::Tensor up;
  if (size.empty())
    up = at::upsample_nearest2d(x, {x.size(2) * 2, x.size(3) * 2});
  else
    up = at::upsample_nearest2d(x, size);
  return conv->forward(up);
}

}  // namespace collage
