#include "models/resnet.h"

#include <torch/torch.h>

#include <variant>

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "core/core.h"

namespace collage {

namespace nn = torch::nn;

// libtorch 1.x keeps Conv2dOptions::padding in a c10::variant, 2.x in a std::variant: unqualified calls
// with std::get/holds_alternative in scope find whichever applies (by argument-dependent lookup).
using std::get;
using std::holds_alternative;

at::Tensor Conv2dPackedImpl::forward(const at::Tensor& x) {
  if (!packed_weight_.defined()) return Conv2dImpl::forward(x);
  COLLAGE_CHECK(!(at::GradMode::is_enabled() && x.requires_grad()),
                "a packed convolution cannot propagate gradients: call unpack_convs() on the model first");
  const auto& padding = get<torch::ExpandingArray<2>>(options.padding());
  auto y = at::mkldnn_convolution(x.contiguous().to_mkldnn(), packed_weight_, packed_bias_, *padding,
                                  *options.stride(), *options.dilation(), options.groups());
  return y.to_dense().contiguous(x.suggest_memory_format());
}

void Conv2dPackedImpl::pack() {
  if (packed() || !weight.device().is_cpu() || weight.scalar_type() != at::kFloat) return;
  COLLAGE_CHECK(holds_alternative<torch::ExpandingArray<2>>(options.padding()),
                "cannot pack a convolution with 'same'/'valid' padding");
  torch::NoGradGuard no_grad;
  const auto& padding = get<torch::ExpandingArray<2>>(options.padding());
  dense_shape_ = weight.sizes().vec();
  packed_weight_ = at::mkldnn_reorder_conv2d_weight(weight.contiguous().to_mkldnn(), *padding, *options.stride(),
                                                    *options.dilation(), options.groups());
  packed_bias_ = bias.defined() ? bias.to_mkldnn() : at::Tensor();
  weight.set_data(at::empty({0}, weight.options()));  // release the dense copy
}

void Conv2dPackedImpl::unpack() {
  if (!packed()) return;
  torch::NoGradGuard no_grad;
  weight.set_data(packed_weight_.to_dense().reshape(dense_shape_).contiguous());
  packed_weight_ = at::Tensor();
  packed_bias_ = at::Tensor();
}

int pack_large_convs(torch::nn::Module& root, int64_t min_weight_elements) {
  int count = 0;
  for (const auto& m : root.modules()) {
    auto conv = std::dynamic_pointer_cast<Conv2dPackedImpl>(m);
    if (conv && !conv->packed() && conv->weight.numel() >= min_weight_elements && conv->weight.device().is_cpu()) {
      conv->pack();
      count += conv->packed();
    }
  }
#ifdef __GLIBC__
  if (count > 0) malloc_trim(0);  // hand the released dense weights back to the OS
#endif
  return count;
}

void unpack_convs(torch::nn::Module& root) {
  for (const auto& m : root.modules())
    if (auto conv = std::dynamic_pointer_cast<Conv2dPackedImpl>(m)) conv->unpack();
}


ResnetBlock2DImpl::ResnetBlock2DImpl(const ResnetBlock2DOptions& o) : options_(o) {
  const int64_t out = o.out_channels > 0 ? o.out_channels : o.in_channels;
  options_.out_channels = out;
  norm1 = register_module("norm1", nn::GroupNorm(nn::GroupNormOptions(o.groups, o.in_channels).eps(o.eps)));
  conv1 = register_module("conv1", Conv2dPacked(nn::Conv2dOptions(o.in_channels, out, 3).padding(1)));
  if (o.temb_channels > 0) time_emb_proj = register_module("time_emb_proj", nn::Linear(o.temb_channels, out));
  norm2 = register_module("norm2", nn::GroupNorm(nn::GroupNormOptions(o.groups, out).eps(o.eps)));
  conv2 = register_module("conv2", Conv2dPacked(nn::Conv2dOptions(out, out, 3).padding(1)));
  if (o.in_channels != out)
    conv_shortcut = register_module("conv_shortcut", Conv2dPacked(nn::Conv2dOptions(o.in_channels, out, 1)));
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
      "conv", Conv2dPacked(nn::Conv2dOptions(channels, out_channels, 3).stride(2).padding(padding)));
}

at::Tensor Downsample2DImpl::forward(const at::Tensor& x) {
  if (padding_ == 0) return conv->forward(at::constant_pad_nd(x, {0, 1, 0, 1}, 0));
  return conv->forward(x);
}

Upsample2DImpl::Upsample2DImpl(int64_t channels, int64_t out_channels) {
  conv = register_module("conv", Conv2dPacked(nn::Conv2dOptions(channels, out_channels, 3).padding(1)));
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
