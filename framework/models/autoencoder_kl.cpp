#include "models/autoencoder_kl.h"

#include <torch/torch.h>

#include <cstring>
#include <filesystem>

#include "core/core.h"
#include "models/load.h"
#include "models/space_to_depth.h"

namespace collage {

namespace nn = torch::nn;

LatentAutoencoder::~LatentAutoencoder() = default;

at::Tensor LatentAutoencoder::Posterior::sample(const at::Tensor& noise) const {
  COLLAGE_CHECK(noise.sizes() == mean.sizes(), "posterior sample: noise shape [{}] differs from the latent [{}]",
                fmt::join(noise.sizes(), ","), fmt::join(mean.sizes(), ","));
  return mean + std * noise.to(mean.options());
}

// ---------------------------------------------------------------------------------------------- config

AutoencoderKLConfig AutoencoderKLConfig::from_json_file(const std::string& path) {
  return from_json(read_json_file(path), path);
}

AutoencoderKLConfig AutoencoderKLConfig::from_json(const Json& object, const std::string& file) {
  JsonReader r(object, file);
  AutoencoderKLConfig c;
  c.in_channels = r.get<int64_t>("in_channels", c.in_channels);
  c.out_channels = r.get<int64_t>("out_channels", c.out_channels);
  c.down_block_types = r.get<std::vector<std::string>>("down_block_types");
  c.up_block_types = r.get<std::vector<std::string>>("up_block_types");
  c.block_out_channels = r.get<std::vector<int64_t>>("block_out_channels");
  c.layers_per_block = r.get<int64_t>("layers_per_block", c.layers_per_block);
  c.act_fn = r.get<std::string>("act_fn", c.act_fn);
  c.latent_channels = r.get<int64_t>("latent_channels", c.latent_channels);
  c.norm_num_groups = r.get<int64_t>("norm_num_groups", c.norm_num_groups);
  c.sample_size = r.get<int64_t>("sample_size", c.sample_size);
  c.scaling_factor = r.get<double>("scaling_factor", c.scaling_factor);
  c.force_upcast = r.get<bool>("force_upcast", c.force_upcast);
  c.mid_block_add_attention = r.get<bool>("mid_block_add_attention", c.mid_block_add_attention);
  c.use_quant_conv = r.get<bool>("use_quant_conv", c.use_quant_conv);
  c.use_post_quant_conv = r.get<bool>("use_post_quant_conv", c.use_post_quant_conv);
  // latents_mean/latents_std/shift_factor are for other latent spaces (SDXL, SD3) and unused by SD 1/2.
  r.ignore({"latents_mean", "latents_std", "shift_factor"});
  c.unknown_keys = r.unused_keys();

  const size_t n = c.block_out_channels.size();
  COLLAGE_CHECK_AT(n >= 1, file, "block_out_channels", "must list at least one block");
  COLLAGE_CHECK_AT(n < 16, file, "block_out_channels", "too many blocks ({})", n);
  COLLAGE_CHECK_AT(c.down_block_types.size() == n, file, "down_block_types",
                   "has {} entries but block_out_channels has {}", c.down_block_types.size(), n);
  COLLAGE_CHECK_AT(c.up_block_types.size() == n, file, "up_block_types",
                   "has {} entries but block_out_channels has {}", c.up_block_types.size(), n);
  for (const auto& t : c.down_block_types)
    COLLAGE_CHECK_AT(t == "DownEncoderBlock2D", file, "down_block_types",
                     "unsupported block type '{}' (only DownEncoderBlock2D)", t);
  for (const auto& t : c.up_block_types)
    COLLAGE_CHECK_AT(t == "UpDecoderBlock2D", file, "up_block_types",
                     "unsupported block type '{}' (only UpDecoderBlock2D)", t);
  COLLAGE_CHECK_AT(c.act_fn == "silu" || c.act_fn == "swish", file, "act_fn",
                   "unsupported activation '{}' (only silu)", c.act_fn);
  COLLAGE_CHECK_AT(c.norm_num_groups > 0, file, "norm_num_groups", "must be positive, got {}", c.norm_num_groups);
  for (auto ch : c.block_out_channels)
    COLLAGE_CHECK_AT(ch > 0 && ch % c.norm_num_groups == 0, file, "block_out_channels",
                     "channel count {} is not a positive multiple of norm_num_groups {}", ch, c.norm_num_groups);
  COLLAGE_CHECK_AT(c.layers_per_block >= 1, file, "layers_per_block", "must be >= 1, got {}", c.layers_per_block);
  COLLAGE_CHECK_AT(c.in_channels > 0, file, "in_channels", "must be positive, got {}", c.in_channels);
  COLLAGE_CHECK_AT(c.out_channels > 0, file, "out_channels", "must be positive, got {}", c.out_channels);
  COLLAGE_CHECK_AT(c.latent_channels > 0, file, "latent_channels", "must be positive, got {}", c.latent_channels);
  COLLAGE_CHECK_AT(c.scaling_factor > 0, file, "scaling_factor", "must be positive, got {}", c.scaling_factor);
  return c;
}

// ---------------------------------------------------------------------------------------------- blocks

namespace {
constexpr double kVaeEps = 1e-6;  // diffusers passes resnet_eps=1e-6 to every VAE block and norm

ResnetBlock2D vae_resnet(int64_t in, int64_t out, int64_t groups) {
  ResnetBlock2DOptions o;
  o.in_channels = in;
  o.out_channels = out;
  o.groups = groups;
  o.eps = kVaeEps;
  return ResnetBlock2D(o);
}

nn::Conv2d conv3x3(int64_t in, int64_t out) { return nn::Conv2d(nn::Conv2dOptions(in, out, 3).padding(1)); }

nn::GroupNorm group_norm(int64_t groups, int64_t channels) {
  return nn::GroupNorm(nn::GroupNormOptions(groups, channels).eps(kVaeEps));
}
}  // namespace

VaeMidBlockImpl::VaeMidBlockImpl(int64_t channels, int64_t groups, bool add_attention) {
  resnets = register_module("resnets", nn::ModuleList());
  attentions = register_module("attentions", nn::ModuleList());
  resnets->push_back(vae_resnet(channels, channels, groups));
  if (add_attention) {
    // diffusers 0.21.4: attention_head_dim = channels, i.e. one head; biased q/k/v; GroupNorm on the input.
    AttentionOptions o;
    o.query_dim = channels;
    o.heads = 1;
    o.dim_head = channels;
    o.bias = true;
    o.norm_num_groups = groups;
    o.norm_eps = kVaeEps;
    o.residual_connection = true;
    attentions->push_back(Attention(o));
  }
  resnets->push_back(vae_resnet(channels, channels, groups));
}

at::Tensor VaeMidBlockImpl::forward(const at::Tensor& x) {
  auto h = resnets[0]->as<ResnetBlock2DImpl>()->forward(x);
  if (!attentions->is_empty()) h = attentions[0]->as<AttentionImpl>()->forward(h);
  return resnets[1]->as<ResnetBlock2DImpl>()->forward(h);
}

DownEncoderBlock2DImpl::DownEncoderBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t num_layers,
                                               int64_t groups, bool add_downsample) {
  resnets = register_module("resnets", nn::ModuleList());
  for (int64_t i = 0; i < num_layers; ++i)
    resnets->push_back(vae_resnet(i == 0 ? in_channels : out_channels, out_channels, groups));
  if (add_downsample) {
    downsamplers = register_module("downsamplers", nn::ModuleList());
    downsamplers->push_back(Downsample2D(out_channels, out_channels, /*padding=*/0));
  }
}

at::Tensor DownEncoderBlock2DImpl::forward(const at::Tensor& x) {
  at::Tensor h = x;
  for (const auto& r : *resnets) h = r->as<ResnetBlock2DImpl>()->forward(h);
  if (downsamplers) h = downsamplers[0]->as<Downsample2DImpl>()->forward(h);
  return h;
}

UpDecoderBlock2DImpl::UpDecoderBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t num_layers,
                                           int64_t groups, bool add_upsample) {
  resnets = register_module("resnets", nn::ModuleList());
  for (int64_t i = 0; i < num_layers; ++i)
    resnets->push_back(vae_resnet(i == 0 ? in_channels : out_channels, out_channels, groups));
  if (add_upsample) {
    upsamplers = register_module("upsamplers", nn::ModuleList());
    upsamplers->push_back(Upsample2D(out_channels, out_channels));
  }
}

at::Tensor UpDecoderBlock2DImpl::forward(const at::Tensor& x) {
  at::Tensor h = x;
  for (const auto& r : *resnets) h = r->as<ResnetBlock2DImpl>()->forward(h);
  if (upsamplers) h = upsamplers[0]->as<Upsample2DImpl>()->forward(h);
  return h;
}

VaeEncoderImpl::VaeEncoderImpl(const AutoencoderKLConfig& c) {
  const auto& ch = c.block_out_channels;
  const int64_t groups = c.norm_num_groups;
  conv_in = register_module("conv_in", conv3x3(c.in_channels, ch[0]));
  down_blocks = register_module("down_blocks", nn::ModuleList());
  int64_t out = ch[0];
  for (size_t i = 0; i < ch.size(); ++i) {
    const int64_t in = out;
    out = ch[i];
    down_blocks->push_back(DownEncoderBlock2D(in, out, c.layers_per_block, groups, i + 1 < ch.size()));
  }
  mid_block = register_module("mid_block", VaeMidBlock(ch.back(), groups, c.mid_block_add_attention));
  conv_norm_out = register_module("conv_norm_out", group_norm(groups, ch.back()));
  conv_out = register_module("conv_out", conv3x3(ch.back(), 2 * c.latent_channels));  // double_z
}

at::Tensor VaeEncoderImpl::forward(const at::Tensor& x) {
  auto h = conv_in->forward(x);
  for (const auto& b : *down_blocks) h = b->as<DownEncoderBlock2DImpl>()->forward(h);
  h = mid_block->forward(h);
  h = conv_norm_out->forward(h);
  at::silu_(h);
  return conv_out->forward(h);
}

VaeDecoderImpl::VaeDecoderImpl(const AutoencoderKLConfig& c) {
  const auto& ch = c.block_out_channels;
  const int64_t groups = c.norm_num_groups;
  conv_in = register_module("conv_in", conv3x3(c.latent_channels, ch.back()));
  mid_block = register_module("mid_block", VaeMidBlock(ch.back(), groups, c.mid_block_add_attention));
  up_blocks = register_module("up_blocks", nn::ModuleList());
  const std::vector<int64_t> reversed(ch.rbegin(), ch.rend());
  int64_t out = reversed[0];
  for (size_t i = 0; i < reversed.size(); ++i) {
    const int64_t prev = out;
    out = reversed[i];
    up_blocks->push_back(
        UpDecoderBlock2D(prev, out, c.layers_per_block + 1, groups, i + 1 < reversed.size()));
  }
  conv_norm_out = register_module("conv_norm_out", group_norm(groups, ch[0]));
  conv_out = register_module("conv_out", conv3x3(ch[0], c.out_channels));
}

at::Tensor VaeDecoderImpl::forward(const at::Tensor& z) {
  auto h = conv_in->forward(z);
  h = mid_block->forward(h);
  for (const auto& b : *up_blocks) h = b->as<UpDecoderBlock2DImpl>()->forward(h);
  h = conv_norm_out->forward(h);
  at::silu_(h);
  return conv_out->forward(h);
}

// ---------------------------------------------------------------------------------------------- model

LatentAutoencoder::Posterior make_diagonal_gaussian(const at::Tensor& parameters) {
  COLLAGE_CHECK(parameters.dim() == 4 && parameters.size(1) % 2 == 0,
                "posterior parameters must be (B, 2C, h, w), got shape [{}]", fmt::join(parameters.sizes(), ","));
  LatentAutoencoder::Posterior p;
  p.parameters = parameters;
  auto parts = parameters.chunk(2, 1);
  p.mean = parts[0];
  p.logvar = at::clamp(parts[1], -30.0, 20.0);
  p.std = at::exp(0.5 * p.logvar);
  return p;
}

AutoencoderKLImpl::AutoencoderKLImpl(const AutoencoderKLConfig& config) : config_(config) {
  encoder = register_module("encoder", VaeEncoder(config));
  decoder = register_module("decoder", VaeDecoder(config));
  const int64_t z2 = 2 * config.latent_channels;
  if (config.use_quant_conv) quant_conv = register_module("quant_conv", nn::Conv2d(nn::Conv2dOptions(z2, z2, 1)));
  if (config.use_post_quant_conv)
    post_quant_conv = register_module(
        "post_quant_conv", nn::Conv2d(nn::Conv2dOptions(config.latent_channels, config.latent_channels, 1)));
}

at::Tensor AutoencoderKLImpl::encode_parameters(const at::Tensor& image) {
  auto h = encoder->forward(image);
  return quant_conv ? quant_conv->forward(h) : h;
}

LatentAutoencoder::Posterior AutoencoderKLImpl::encode(const at::Tensor& image) {
  return make_diagonal_gaussian(encode_parameters(image));
}

at::Tensor AutoencoderKLImpl::decode(const at::Tensor& latents) {
  return decoder->forward(post_quant_conv ? post_quant_conv->forward(latents) : latents);
}

namespace {
// diffusers' _convert_deprecated_attention_blocks: mid-block attention keys of checkpoints written before
// the Attention refactor.
std::string rename_legacy_vae_key(const std::string& key) {
  static const std::pair<const char*, const char*> kRenames[] = {
      {".query.", ".to_q."}, {".key.", ".to_k."}, {".value.", ".to_v."}, {".proj_attn.", ".to_out.0."}};
  const auto at = key.find(".mid_block.attentions.");
  if (at == std::string::npos) return key;
  for (const auto& [from, to] : kRenames) {
    const auto pos = key.find(from, at);
    if (pos != std::string::npos) return key.substr(0, pos) + to + key.substr(pos + std::strlen(from));
  }
  return key;
}
}  // namespace

AutoencoderKL load_autoencoder_kl(const std::string& folder, const std::string& variant) {
  const auto config_path = (std::filesystem::path(folder) / "config.json").string();
  COLLAGE_CHECK_AT(std::filesystem::exists(config_path), config_path, "", "VAE config.json not found");
  AutoencoderKL model(AutoencoderKLConfig::from_json_file(config_path));
  LoadOptions options;
  options.rename_key = rename_legacy_vae_key;
  load_module_weights(*model, find_weight_files(folder, {"diffusion_pytorch_model"}, variant), options);
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  model->eval();
  return model;
}

AutoencoderKLModel::AutoencoderKLModel(AutoencoderKL module) : module_(std::move(module)) {}

void AutoencoderKLModel::check_input(const at::Tensor& x, int64_t channels, const char* what) const {
  COLLAGE_CHECK(x.dim() == 4 && x.size(1) == channels, "VAE {}: expected shape (B, {}, H, W), got [{}]", what,
                channels, fmt::join(x.sizes(), ","));
  COLLAGE_CHECK(x.scalar_type() == dtype() && x.device() == device(),
                "VAE {}: input is {} on {}, the model is {} on {} (convert the input explicitly)", what,
                c10::toString(x.scalar_type()), x.device().str(), c10::toString(dtype()), device().str());
}

LatentAutoencoder::Posterior AutoencoderKLModel::encode(const at::Tensor& image) {
  check_input(image, module_->config().in_channels, "encode");
  return module_->encode(image);
}

at::Tensor AutoencoderKLModel::decode(const at::Tensor& latents) {
  check_input(latents, module_->config().latent_channels, "decode");
  return module_->decode(latents);
}

void AutoencoderKLModel::to(at::Device device, at::ScalarType dtype) { module_->to(device, dtype); }

at::Device AutoencoderKLModel::device() const { return module_->encoder->conv_in->weight.device(); }

at::ScalarType AutoencoderKLModel::dtype() const { return module_->encoder->conv_in->weight.scalar_type(); }

std::shared_ptr<LatentAutoencoder> load_autoencoder(const std::string& folder, const std::string& variant) {
  const auto config_path = (std::filesystem::path(folder) / "config.json").string();
  COLLAGE_CHECK_AT(std::filesystem::exists(config_path), config_path, "", "VAE config.json not found");
  const auto json = read_json_file(config_path);
  const std::string cls = json.contains("_class_name") && json["_class_name"].is_string()
                              ? json["_class_name"].get<std::string>()
                              : "AutoencoderKL";
  if (cls == "SpaceToDepthAutoencoder")  // weight-free, lossless (the embedded ShapesWorld model)
    return std::make_shared<SpaceToDepthAutoencoder>(SpaceToDepthConfig::from_json(json, config_path));
  COLLAGE_CHECK_AT(cls == "AutoencoderKL", config_path, "_class_name",
                   "unsupported autoencoder class '{}' (known: AutoencoderKL, SpaceToDepthAutoencoder)", cls);
  return std::make_shared<AutoencoderKLModel>(load_autoencoder_kl(folder, variant));
}

}  // namespace collage
