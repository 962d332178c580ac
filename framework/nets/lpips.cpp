#include "nets/lpips.h"

#include <torch/torch.h>

#include <filesystem>

#include "core/core.h"
#include "models/models.h"

namespace fs = std::filesystem;

namespace collage {

namespace nn = torch::nn;

LpipsNet parse_lpips_net(const std::string& name) {
  if (name == "alex" || name == "alexnet") return LpipsNet::Alex;
  if (name == "vgg" || name == "vgg16") return LpipsNet::Vgg;
  if (name == "squeeze" || name == "squeezenet" || name == "squeezenet1_1") return LpipsNet::Squeeze;
  throw Error(fmt::format("unknown LPIPS network '{}' (known: alex, vgg, squeeze)", name));
}

std::string lpips_net_name(LpipsNet net) {
  switch (net) {
    case LpipsNet::Alex: return "alex";
    case LpipsNet::Vgg: return "vgg";
    case LpipsNet::Squeeze: return "squeeze";
  }
  throw Error("unknown LPIPS network");
}

std::string lpips_torchvision_name(LpipsNet net) {
  switch (net) {
    case LpipsNet::Alex: return "alexnet";
    case LpipsNet::Vgg: return "vgg16";
    case LpipsNet::Squeeze: return "squeezenet1_1";
  }
  throw Error("unknown LPIPS network");
}

std::vector<int64_t> lpips_channels(LpipsNet net) {
  switch (net) {
    case LpipsNet::Alex: return {64, 192, 384, 256, 256};
    case LpipsNet::Vgg: return {64, 128, 256, 512, 512};
    case LpipsNet::Squeeze: return {64, 128, 256, 384, 384, 512, 512};
  }
  throw Error("unknown LPIPS network");
}

// ---------------------------------------------------------------------------------------------------------------
// Backbones

namespace {

// torchvision SqueezeNet Fire module: squeeze 1x1 + ReLU, then cat(ReLU(expand1x1), ReLU(expand3x3 pad 1)).
class FireImpl : public nn::Module {
 public:
  FireImpl(int64_t in, int64_t squeeze_ch, int64_t e1, int64_t e3) {
    squeeze = register_module("squeeze", nn::Conv2d(nn::Conv2dOptions(in, squeeze_ch, 1)));
    expand1x1 = register_module("expand1x1", nn::Conv2d(nn::Conv2dOptions(squeeze_ch, e1, 1)));
    expand3x3 = register_module("expand3x3", nn::Conv2d(nn::Conv2dOptions(squeeze_ch, e3, 3).padding(1)));
  }
  at::Tensor forward(const at::Tensor& x) {
    auto s = at::relu(squeeze->forward(x));
    return at::cat({at::relu(expand1x1->forward(s)), at::relu(expand3x3->forward(s))}, 1);
  }
  nn::Conv2d squeeze{nullptr}, expand1x1{nullptr}, expand3x3{nullptr};
};
TORCH_MODULE(Fire);

}  // namespace

struct LpipsBackboneImpl::Layer {
  enum class Kind { Conv, Relu, MaxPool, Fire } kind = Kind::Relu;
  nn::Conv2d conv{nullptr};
  Fire fire{nullptr};
  int64_t pool_kernel = 0, pool_stride = 0;
  bool ceil_mode = false;

  at::Tensor forward(const at::Tensor& x) {
    switch (kind) {
      case Kind::Conv: return conv->forward(x);
      case Kind::Relu: return at::relu(x);
      case Kind::MaxPool:
        return at::max_pool2d(x, {pool_kernel, pool_kernel}, {pool_stride, pool_stride}, {0, 0}, {1, 1}, ceil_mode);
      case Kind::Fire: return fire->forward(x);
    }
    throw Error("unknown backbone layer");
  }
};

LpipsBackboneImpl::LpipsBackboneImpl(LpipsNet net) : net_(net) {
  features_ = register_module("features", std::make_shared<nn::Module>());
  auto add = [&](std::shared_ptr<Layer> layer) {
    const auto index = std::to_string(layers_.size());
    if (layer->kind == Layer::Kind::Conv) features_->register_module(index, layer->conv);
    if (layer->kind == Layer::Kind::Fire) features_->register_module(index, layer->fire);
    layers_.push_back(std::move(layer));
  };
  auto conv = [&](int64_t in, int64_t out, int64_t k, int64_t stride, int64_t pad) {
    auto l = std::make_shared<Layer>();
    l->kind = Layer::Kind::Conv;
    l->conv = nn::Conv2d(nn::Conv2dOptions(in, out, k).stride(stride).padding(pad));
    add(l);
  };
  auto relu = [&] { add(std::make_shared<Layer>()); };
  auto pool = [&](int64_t k, int64_t stride, bool ceil_mode) {
    auto l = std::make_shared<Layer>();
    l->kind = Layer::Kind::MaxPool;
    l->pool_kernel = k;
    l->pool_stride = stride;
    l->ceil_mode = ceil_mode;
    add(l);
  };
  auto fire = [&](int64_t in, int64_t s, int64_t e1, int64_t e3) {
    auto l = std::make_shared<Layer>();
    l->kind = Layer::Kind::Fire;
    l->fire = Fire(in, s, e1, e3);
    add(l);
  };

  switch (net) {
    case LpipsNet::Alex:  // torchvision alexnet().features[0:12]
      conv(3, 64, 11, 4, 2), relu();
      pool(3, 2, false), conv(64, 192, 5, 1, 2), relu();
      pool(3, 2, false), conv(192, 384, 3, 1, 1), relu();
      conv(384, 256, 3, 1, 1), relu();
      conv(256, 256, 3, 1, 1), relu();
      slice_ends_ = {2, 5, 8, 10, 12};
      break;
    case LpipsNet::Vgg: {  // torchvision vgg16().features[0:30] (configuration "D")
      const std::vector<int64_t> cfg = {64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512};
      int64_t in = 3;
      for (int64_t c : cfg) {
        if (c == 0) {
          pool(2, 2, false);
        } else {
          conv(in, c, 3, 1, 1), relu();
          in = c;
        }
      }
      slice_ends_ = {4, 9, 16, 23, 30};
      break;
    }
    case LpipsNet::Squeeze:  // torchvision squeezenet1_1().features (MaxPools with ceil_mode=True)
      conv(3, 64, 3, 2, 0), relu();
      pool(3, 2, true), fire(64, 16, 64, 64), fire(128, 16, 64, 64);
      pool(3, 2, true), fire(128, 32, 128, 128), fire(256, 32, 128, 128);
      pool(3, 2, true), fire(256, 48, 192, 192);
      fire(384, 48, 192, 192);
      fire(384, 64, 256, 256);
      fire(512, 64, 256, 256);
      slice_ends_ = {2, 5, 8, 10, 11, 12, 13};
      break;
  }
  TORCH_INTERNAL_ASSERT(static_cast<size_t>(slice_ends_.back()) == layers_.size());
}

std::vector<at::Tensor> LpipsBackboneImpl::forward(const at::Tensor& x) {
  COLLAGE_CHECK(x.dim() == 4 && x.size(1) == 3, "LPIPS input must be (N, 3, H, W), got shape [{}]",
                fmt::join(x.sizes(), ","));
  std::vector<at::Tensor> outs;
  at::Tensor h = x;
  size_t i = 0;
  for (int end : slice_ends_) {
    for (; i < static_cast<size_t>(end); ++i) h = layers_[i]->forward(h);
    outs.push_back(h);
  }
  return outs;
}

LpipsHeadsImpl::LpipsHeadsImpl(const std::vector<int64_t>& channels) {
  for (size_t k = 0; k < channels.size(); ++k) {
    auto lin = register_module("lin" + std::to_string(k), std::make_shared<nn::Module>());
    auto model = lin->register_module("model", std::make_shared<nn::Module>());
    heads_.push_back(model->register_module("1", nn::Conv2d(nn::Conv2dOptions(channels[k], 1, 1).bias(false))));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// LPIPS

at::Tensor lpips_unit_normalize(const at::Tensor& f, double eps) {
  return f / (at::sqrt((f * f).sum(1, /*keepdim=*/true)) + eps);
}

LpipsImpl::LpipsImpl(LpipsNet net) : net_(net) {
  backbone = register_module("backbone", LpipsBackbone(net));
  heads = register_module("heads", LpipsHeads(lpips_channels(net)));
  // float32 constants, as lpips' ScalingLayer buffers.
  shift_ = register_buffer("shift", at::tensor(std::vector<float>{-.030f, -.088f, -.188f}).view({1, 3, 1, 1}));
  scale_ = register_buffer("scale", at::tensor(std::vector<float>{.458f, .448f, .450f}).view({1, 3, 1, 1}));
}

at::Tensor lpips_scaling_layer(const at::Tensor& x) {
  auto opts = x.options().dtype(x.is_floating_point() ? x.scalar_type() : at::kFloat);
  auto shift = at::tensor(std::vector<float>{-.030f, -.088f, -.188f}).view({1, 3, 1, 1}).to(opts);
  auto scale = at::tensor(std::vector<float>{.458f, .448f, .450f}).view({1, 3, 1, 1}).to(opts);
  return (x.to(opts) - shift) / scale;
}

at::Tensor LpipsImpl::scale_input(const at::Tensor& x) const {
  return (x.to(shift_.device(), shift_.scalar_type()) - shift_) / scale_;
}

LpipsOutput LpipsImpl::forward(const at::Tensor& in0_raw, const at::Tensor& in1_raw, const LpipsOptions& options) {
  COLLAGE_CHECK(in0_raw.dim() == 4 && in0_raw.size(1) == 3 && in0_raw.sizes() == in1_raw.sizes(),
                "LPIPS inputs must be two (N, 3, H, W) tensors of the same shape, got [{}] and [{}]",
                fmt::join(in0_raw.sizes(), ","), fmt::join(in1_raw.sizes(), ","));
  at::Tensor in0 = in0_raw, in1 = in1_raw;
  if (options.normalize) {  // [0, 1] -> [-1, 1]
    in0 = 2 * in0 - 1;
    in1 = 2 * in1 - 1;
  }
  LpipsOutput out;
  out.scaled0 = scale_input(in0);
  const auto f0 = backbone->forward(out.scaled0);
  const auto f1 = backbone->forward(scale_input(in1));
  const int64_t H = in0.size(2), W = in0.size(3);
  for (size_t k = 0; k < f0.size(); ++k) {
    auto n0 = lpips_unit_normalize(f0[k]);
    auto n1 = lpips_unit_normalize(f1[k]);
    auto d = (n0 - n1).pow(2);
    auto layer = heads->forward(k, d);
    auto mean = layer.mean({2, 3}, /*keepdim=*/true);
    out.value = k == 0 ? mean : out.value + mean;  // accumulated in slice order
    if (options.spatial) {
      auto up = at::upsample_bilinear2d(layer, {H, W}, /*align_corners=*/false);
      out.spatial = k == 0 ? up : out.spatial + up;
    }
    out.per_layer.push_back(mean);
    out.layers.push_back(layer);
    if (options.keep_features) {
      out.features0.push_back(f0[k]);
      out.normalized0.push_back(n0);
    }
  }
  return out;
}

at::Tensor LpipsImpl::distance(const at::Tensor& in0, const at::Tensor& in1, bool normalize) {
  LpipsOptions o;
  o.normalize = normalize;
  return forward(in0, in1, o).value;
}

at::Tensor LpipsImpl::spatial_map(const at::Tensor& in0, const at::Tensor& in1, bool normalize) {
  LpipsOptions o;
  o.normalize = normalize;
  o.spatial = true;
  return forward(in0, in1, o).spatial;
}

Lpips LpipsImpl::load(LpipsNet net, const std::string& heads_file, const std::string& backbone_file) {
  COLLAGE_CHECK_AT(fs::exists(backbone_file), backbone_file, "",
                   "LPIPS backbone weights not found (torchvision {} features as safetensors)",
                   lpips_torchvision_name(net));
  COLLAGE_CHECK_AT(fs::exists(heads_file), heads_file, "", "LPIPS linear head weights not found ({} v0.1)",
                   lpips_net_name(net));
  Lpips model(net);
  // A whole torchvision ImageNet checkpoint also has the classifier; LPIPS only uses `features`.
  LoadOptions backbone_options;
  for (const auto& key : SafetensorsFile::open(backbone_file)->names())
    if (key.rfind("classifier.", 0) == 0) backbone_options.ignorable_file_keys.insert(key);
  load_module_weights(*model->backbone, {backbone_file}, backbone_options);
  load_module_weights(*model->heads, {heads_file});
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  model->eval();
  return model;
}

Lpips LpipsImpl::load_folder(const std::string& folder, LpipsNet net, const std::string& backbone_folder) {
  const auto heads = fs::path(folder) / ("heads_" + lpips_net_name(net) + ".safetensors");
  const auto backbone = fs::path(backbone_folder.empty() ? folder : backbone_folder) /
                        ("backbone_" + lpips_torchvision_name(net) + ".safetensors");
  return load(net, heads.string(), backbone.string());
}

}  // namespace collage
