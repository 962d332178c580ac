// LPIPS v0.1 (Zhang et al. 2018; what the `lpips` 0.1.4 package computes with lpips=True, version="0.1") with the
// AlexNet, VGG16 and SqueezeNet 1.1 backbones.
//
// Backbones use torchvision's module names (`features.N.weight`, SqueezeNet Fire modules
// `features.N.{squeeze,expand1x1,expand3x3}.*`), so a torchvision state dict converted to safetensors loads by lookup
// (F16/BF16 files are up-cast; a full ImageNet checkpoint's `classifier.*` keys are skipped). The linear heads use
// the lpips package's names (`lin{K}.model.1.weight`, shape (1, C_K, 1, 1), no bias).
//
// Forward: scaled = (x - shift) / scale per channel; f_K = backbone slice K (each ends after a ReLU);
// n_K = f_K / (sqrt(sum_c f_K^2) + 1e-10); layer_K = conv1x1(head_K, (n0_K - n1_K)^2) (N, 1, h_K, w_K);
// distance = sum_K mean_hw(layer_K) (N, 1, 1, 1); spatial map = sum_K bilinear_upsample(layer_K, (H, W),
// align_corners=False) (N, 1, H, W) -- its mean is close to, but not exactly, the distance.
#pragma once

#include <ATen/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <vector>

namespace collage {

enum class LpipsNet { Alex, Vgg, Squeeze };

// "alex" / "alexnet", "vgg" / "vgg16", "squeeze" / "squeezenet" / "squeezenet1_1"; anything else is an Error.
LpipsNet parse_lpips_net(const std::string& name);
std::string lpips_net_name(LpipsNet net);          // the lpips package's name: "alex", "vgg", "squeeze"
std::string lpips_torchvision_name(LpipsNet net);  // "alexnet", "vgg16", "squeezenet1_1"
// Channels of the slice outputs (alex 64,192,384,256,256; vgg 64,128,256,512,512; squeeze 64,128,256,384,384,512,512).
std::vector<int64_t> lpips_channels(LpipsNet net);

// A torchvision `features` stack, run slice by slice. Only layers up to the last slice are built (AlexNet's final
// MaxPool and VGG's last MaxPool are not part of any slice).
class LpipsBackboneImpl : public torch::nn::Module {
 public:
  explicit LpipsBackboneImpl(LpipsNet net);
  // x: (N, 3, H, W), already scaled. Returns the output of every slice (after its ReLU).
  std::vector<at::Tensor> forward(const at::Tensor& x);
  LpipsNet net() const { return net_; }

  struct Layer;  // one entry of `features` (conv, ReLU, max pool or Fire)

 private:
  LpipsNet net_;
  std::shared_ptr<torch::nn::Module> features_;
  std::vector<std::shared_ptr<Layer>> layers_;
  std::vector<int> slice_ends_;  // exclusive end index of each slice in `features`
};
TORCH_MODULE(LpipsBackbone);

// The linear heads: lin{K}.model.1 = Conv2d(C_K, 1, 1, bias=false) (model.0 is a Dropout, identity in eval).
class LpipsHeadsImpl : public torch::nn::Module {
 public:
  explicit LpipsHeadsImpl(const std::vector<int64_t>& channels);
  at::Tensor forward(size_t k, const at::Tensor& d) { return heads_.at(k)->forward(d); }
  size_t size() const { return heads_.size(); }

 private:
  std::vector<torch::nn::Conv2d> heads_;
};
TORCH_MODULE(LpipsHeads);

struct LpipsOptions {
  bool normalize = false;        // inputs in [0, 1] (mapped to 2x - 1) instead of [-1, 1]
  bool spatial = false;          // also compute the (N, 1, H, W) spatial map
  bool keep_features = false;    // keep the backbone features of in0 (raw and unit-normalised)
};

struct LpipsOutput {
  at::Tensor value;                     // (N, 1, 1, 1): sum_K mean_hw(layer_K)
  std::vector<at::Tensor> per_layer;    // mean_hw(layer_K), (N, 1, 1, 1) each (lpips retPerLayer)
  std::vector<at::Tensor> layers;       // layer_K (N, 1, h_K, w_K): head outputs before averaging
  at::Tensor spatial;                   // (N, 1, H, W) when options.spatial
  at::Tensor scaled0;                   // ScalingLayer(in0)
  std::vector<at::Tensor> features0;    // f_K of in0 (when keep_features)
  std::vector<at::Tensor> normalized0;  // n_K of in0 (when keep_features)
};

class Lpips;

class LpipsImpl : public torch::nn::Module {
 public:
  explicit LpipsImpl(LpipsNet net);

  // in0, in1: (N, 3, H, W) in [-1, 1] (or [0, 1] with options.normalize); moved to the model's device/dtype.
  LpipsOutput forward(const at::Tensor& in0, const at::Tensor& in1, const LpipsOptions& options = {});
  // The distance (N, 1, 1, 1).
  at::Tensor distance(const at::Tensor& in0, const at::Tensor& in1, bool normalize = false);
  // The spatial distance map (N, 1, H, W) (what lpips returns with spatial=True), e.g. for masked LPIPS.
  at::Tensor spatial_map(const at::Tensor& in0, const at::Tensor& in1, bool normalize = false);
  // (x - shift) / scale with shift = (-0.030, -0.088, -0.188), scale = (0.458, 0.448, 0.450) (float32).
  at::Tensor scale_input(const at::Tensor& x) const;

  LpipsNet net() const { return net_; }

  // Loads the heads (lin{K}.model.1.weight) and the torchvision backbone (features.*). A missing file is a
  // collage::Error naming it (callers may report the metric as skipped); wrong, missing or unexpected keys are
  // reported with key, file and shapes. Frozen, eval mode.
  static Lpips load(LpipsNet net, const std::string& heads_file, const std::string& backbone_file);
  // `folder`/heads_<alex|vgg|squeeze>.safetensors + `folder`/backbone_<alexnet|vgg16|squeezenet1_1>.safetensors
  // (the layout of the reference data); `backbone_folder` (optional) holds the backbone file instead.
  static Lpips load_folder(const std::string& folder, LpipsNet net, const std::string& backbone_folder = "");

  LpipsBackbone backbone{nullptr};
  LpipsHeads heads{nullptr};

 private:
  LpipsNet net_;
  at::Tensor shift_, scale_;  // (1, 3, 1, 1) buffers
};
TORCH_MODULE(Lpips);

// lpips ScalingLayer on a float32 CPU or device tensor (N, 3, H, W): (x - shift) / scale (net-independent).
at::Tensor lpips_scaling_layer(const at::Tensor& x);
// f / (sqrt(sum_c f^2) + eps) over dim 1 (lpips normalize_tensor).
at::Tensor lpips_unit_normalize(const at::Tensor& features, double eps = 1e-10);

}  // namespace collage
