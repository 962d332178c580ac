#include "models/controlnet.h"

#include <torch/torch.h>

#include <filesystem>

#include "core/core.h"
#include "models/load.h"
#include "models/unet_blocks.h"

namespace collage {

namespace nn = torch::nn;

ControlNetConfig ControlNetConfig::from_json(const Json& json, const std::string& file) {
  COLLAGE_CHECK_AT(json.is_object(), file, "", "config must be a JSON object");
  ControlNetConfig c;
  Json shared = json;  // the UNet parser reads the rest (and rejects what it does not support)
  {
    JsonReader r(json, file);
    c.conditioning_channels = r.get<int64_t>("conditioning_channels", c.conditioning_channels);
    c.conditioning_embedding_out_channels =
        r.get<std::vector<int64_t>>("conditioning_embedding_out_channels", c.conditioning_embedding_out_channels);
    c.conditioning_channel_order = r.get<std::string>("controlnet_conditioning_channel_order", "rgb");
    c.global_pool_conditions = r.get<bool>("global_pool_conditions", false);
  }
  for (const char* key : {"conditioning_channels", "conditioning_embedding_out_channels",
                          "controlnet_conditioning_channel_order", "global_pool_conditions"})
    shared.erase(key);
  COLLAGE_CHECK_AT(c.conditioning_channel_order == "rgb" || c.conditioning_channel_order == "bgr", file,
                   "controlnet_conditioning_channel_order", "must be 'rgb' or 'bgr', got '{}'",
                   c.conditioning_channel_order);
  COLLAGE_CHECK_AT(!c.conditioning_embedding_out_channels.empty(), file, "conditioning_embedding_out_channels",
                   "needs at least one entry");
  // A ControlNet has no up path; the shared parser checks the up block list against the down blocks, so give it
  // the mirror of the down path (never built).
  if (!shared.contains("up_block_types") || shared["up_block_types"].is_null()) {
    COLLAGE_CHECK_AT(shared.contains("down_block_types") && shared["down_block_types"].is_array(), file,
                     "down_block_types", "required key is missing");
    Json up = Json::array();
    for (auto it = shared["down_block_types"].rbegin(); it != shared["down_block_types"].rend(); ++it)
      up.push_back(*it == "CrossAttnDownBlock2D" ? "CrossAttnUpBlock2D" : "UpBlock2D");
    shared["up_block_types"] = up;
  }
  c.unet = UNet2DConditionConfig::from_json(shared, file);
  c.unknown_keys = c.unet.unknown_keys;
  return c;
}

ControlNetConfig ControlNetConfig::from_json_file(const std::string& path) {
  return from_json(read_json_file(path), path);
}

ControlNetConfig ControlNetConfig::from_unet(const UNet2DConditionConfig& unet, std::vector<int64_t> channels) {
  COLLAGE_CHECK(!channels.empty(), "ControlNet: conditioning_embedding_out_channels needs at least one entry");
  ControlNetConfig c;
  c.unet = unet;
  c.unet.unknown_keys.clear();
  c.conditioning_embedding_out_channels = std::move(channels);
  return c;
}

ControlNetConditioningEmbeddingImpl::ControlNetConditioningEmbeddingImpl(int64_t conditioning_channels,
                                                                         const std::vector<int64_t>& ch,
                                                                         int64_t out_channels) {
  auto conv = [](int64_t in, int64_t out, int64_t stride) {
    return nn::Conv2d(nn::Conv2dOptions(in, out, 3).padding(1).stride(stride));
  };
  conv_in = register_module("conv_in", conv(conditioning_channels, ch[0], 1));
  blocks = register_module("blocks", nn::ModuleList());
  for (size_t i = 0; i + 1 < ch.size(); ++i) {
    blocks->push_back(conv(ch[i], ch[i], 1));
    blocks->push_back(conv(ch[i], ch[i + 1], 2));
  }
  conv_out = register_module("conv_out", conv(ch.back(), out_channels, 1));
}

at::Tensor ControlNetConditioningEmbeddingImpl::forward(const at::Tensor& cond) {
  auto h = at::silu(conv_in->forward(cond));
  for (const auto& block : *blocks) h = at::silu(block->as<nn::Conv2dImpl>()->forward(h));
  return conv_out->forward(h);
}

struct ControlNetModelImpl::Blocks {
  nn::Conv2d conv_in{nullptr};
  TimestepEmbedding time_embedding{nullptr};
  ControlNetConditioningEmbedding cond_embedding{nullptr};
  std::vector<DownBlock> down;
  MidBlock mid{nullptr};
  std::vector<nn::Conv2d> zero_convs;  // controlnet_down_blocks.k
  nn::Conv2d zero_conv_mid{nullptr};   // controlnet_mid_block
};

ControlNetModelImpl::ControlNetModelImpl(const ControlNetConfig& config)
    : config_(config), blocks_(std::make_shared<Blocks>()) {
  auto& b = *blocks_;
  const auto& c = config.unet;
  const auto& ch = c.block_out_channels;
  const int64_t n = c.num_blocks();
  const int64_t temb = ch[0] * 4;
  auto zero_conv = [](int64_t channels) { return nn::Conv2d(nn::Conv2dOptions(channels, channels, 1)); };
  b.conv_in = register_module(
      "conv_in", nn::Conv2d(nn::Conv2dOptions(c.in_channels, ch[0], c.conv_in_kernel).padding((c.conv_in_kernel - 1) / 2)));
  b.time_embedding = register_module("time_embedding", TimestepEmbedding(ch[0], temb));
  b.cond_embedding = register_module(
      "controlnet_cond_embedding",
      ControlNetConditioningEmbedding(config.conditioning_channels, config.conditioning_embedding_out_channels, ch[0]));
  auto down_blocks = register_module("down_blocks", nn::ModuleList());
  auto zero_convs = register_module("controlnet_down_blocks", nn::ModuleList());
  b.zero_convs.push_back(zero_conv(ch[0]));  // for conv_in's output
  int64_t out = ch[0];
  for (int64_t i = 0; i < n; ++i) {
    const int64_t in = out;
    out = ch[i];
    const bool last = i == n - 1;
    DownBlock block(c, i, in, out, temb, c.down_block_types[i] == "CrossAttnDownBlock2D", !last);
    down_blocks->push_back(block);
    b.down.push_back(block);
    for (int64_t l = 0; l < c.layers_for_block(i) + (last ? 0 : 1); ++l) b.zero_convs.push_back(zero_conv(out));
  }
  for (auto& z : b.zero_convs) zero_convs->push_back(z);
  b.mid = register_module("mid_block", MidBlock(c, ch[n - 1], temb));
  b.zero_conv_mid = register_module("controlnet_mid_block", zero_conv(ch[n - 1]));
  attention_layers_ = collect_attention_layers(*this);
}

void scale_residuals_by_map(UNetResiduals& residuals, const at::Tensor& map_in) {
  COLLAGE_CHECK(map_in.dim() == 2 || (map_in.dim() == 4 && map_in.size(1) == 1),
                "per-pixel control scale must be (H, W) or (N, 1, H, W), got {}", fmt::join(map_in.sizes(), "x"));
  const auto map = map_in.dim() == 2 ? map_in.unsqueeze(0).unsqueeze(0) : map_in;
  auto apply = [&](at::Tensor& r) {
    COLLAGE_CHECK(map.size(0) == 1 || map.size(0) == r.size(0), "per-pixel control scale has {} maps for a batch of {}",
                  map.size(0), r.size(0));
    auto resized = at::upsample_bilinear2d(map.to(r.device(), r.scalar_type()), {r.size(2), r.size(3)}, false);
    r = r * resized;
  };
  for (auto& r : residuals.down) apply(r);
  apply(residuals.mid);
}

UNetResiduals ControlNetModelImpl::forward(const at::Tensor& sample, const at::Tensor& timestep,
                                           const at::Tensor& context, const at::Tensor& cond_in,
                                           const ControlScale& scale, bool guess_mode, const StepInfo* step,
                                           std::map<std::string, at::Tensor>* debug) {
  auto& b = *blocks_;
  const auto& c = config_.unet;
  const int64_t B = sample.size(0);
  COLLAGE_CHECK(sample.dim() == 4 && sample.size(1) == c.in_channels, "ControlNet: sample must be (B, {}, h, w), got {}",
                c.in_channels, fmt::join(sample.sizes(), "x"));
  const int64_t f = config_.conditioning_downscale();
  COLLAGE_CHECK(cond_in.dim() == 4 && cond_in.size(0) == B && cond_in.size(1) == config_.conditioning_channels &&
                    (cond_in.size(2) + f - 1) / f == sample.size(2) && (cond_in.size(3) + f - 1) / f == sample.size(3),
                "ControlNet: control image must be ({}, {}, {}x the latent size), got {} for a latent {}", B,
                config_.conditioning_channels, f, fmt::join(cond_in.sizes(), "x"), fmt::join(sample.sizes(), "x"));
  COLLAGE_CHECK(context.dim() == 3 && context.size(0) == B && context.size(2) == c.cross_attention_dim,
                "ControlNet: encoder_hidden_states must be ({}, tokens, {}), got {}", B, c.cross_attention_dim,
                fmt::join(context.sizes(), "x"));
  auto [t_emb, emb] = embed_timestep(c, *b.time_embedding, timestep, B, sample.device(), sample.scalar_type());
  at::Tensor cond = config_.conditioning_channel_order == "bgr" ? cond_in.flip({1}) : cond_in;
  auto format = channels_last_ ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  auto h = b.conv_in->forward(sample.contiguous(format));
  auto cond_emb = b.cond_embedding->forward(cond.to(sample.scalar_type()).contiguous(format));
  if (debug) {
    (*debug)["time_proj"] = t_emb;
    (*debug)["time_embedding"] = emb;
    (*debug)["conv_in"] = h;
    (*debug)["cond_embedding"] = cond_emb;
  }
  h = h + cond_emb;
  std::vector<at::Tensor> skips{h};
  for (auto& block : b.down) h = block->forward(h, emb, context, step, skips);
  h = b.mid->forward(h, emb, context, step);
  COLLAGE_CHECK(skips.size() == b.zero_convs.size(), "ControlNet: {} skip tensors for {} zero convolutions",
                skips.size(), b.zero_convs.size());
  if (debug) {
    for (size_t k = 0; k < skips.size(); ++k) (*debug)["down_features." + std::to_string(k)] = skips[k];
    (*debug)["mid_block"] = h;
  }
  UNetResiduals out;
  for (size_t k = 0; k < skips.size(); ++k) out.down.push_back(b.zero_convs[k]->forward(skips[k]));
  out.mid = b.zero_conv_mid->forward(h);
  if (scale.map.defined()) {
    scale_residuals_by_map(out, scale.map);
  } else if (guess_mode && !config_.global_pool_conditions) {
    // diffusers: logspace(-1, 0, K + 1) in float32, times the scale, one factor per residual (mid last).
    auto scales = at::logspace(-1, 0, int64_t(out.down.size()) + 1, 10.0, at::kFloat) * scale.value;
    for (size_t k = 0; k < out.down.size(); ++k) out.down[k] = out.down[k] * scales[int64_t(k)].item<float>();
    out.mid = out.mid * scales[int64_t(out.down.size())].item<float>();
  } else {
    for (auto& r : out.down) r = r * scale.value;
    out.mid = out.mid * scale.value;
  }
  if (config_.global_pool_conditions) {
    for (auto& r : out.down) r = r.mean({2, 3}, true);
    out.mid = out.mid.mean({2, 3}, true);
  }
  return out;
}

void ControlNetModelImpl::set_channels_last(bool enable) {
  channels_last_ = enable;
  set_conv_weights_channels_last(*this, enable);
}

std::shared_ptr<ControlNetModelImpl> ControlNetModelImpl::load(const std::string& folder, const std::string& variant) {
  const auto config_path = (std::filesystem::path(folder) / "config.json").string();
  auto config = ControlNetConfig::from_json_file(config_path);
  auto model = std::make_shared<ControlNetModelImpl>(config);
  load_module_weights(*model, find_weight_files(folder, {"diffusion_pytorch_model", "model"}, variant));
  model->eval();
  return model;
}

}  // namespace collage
