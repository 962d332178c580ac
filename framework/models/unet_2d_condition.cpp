#include "models/unet_2d_condition.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <torch/torch.h>

#include <cmath>
#include <filesystem>

#include "core/core.h"
#include "models/load.h"
#include "models/unet_blocks.h"

namespace collage {

namespace nn = torch::nn;

// ---------------------------------------------------------------------------------------------- config

namespace {

// A JSON value that may be one number or a list of numbers.
std::vector<int64_t> int_or_list(JsonReader& r, const std::string& key, const std::vector<int64_t>& fallback) {
  if (!r.has(key)) {
    r.ignore({key});
    return fallback;
  }
  const auto& v = r.object().at(key);
  if (v.is_number_integer()) return {r.get<int64_t>(key)};
  return r.get<std::vector<int64_t>>(key);
}

int64_t pick(const std::vector<int64_t>& values, int64_t i, const char* what) {
  if (values.size() == 1) return values[0];
  COLLAGE_CHECK(i >= 0 && i < static_cast<int64_t>(values.size()), "{}: no entry for block {}", what, i);
  return values[i];
}

}  // namespace

UNet2DConditionConfig UNet2DConditionConfig::from_json(const Json& json, const std::string& file) {
  UNet2DConditionConfig c;
  JsonReader r(json, file);
  c.sample_size = r.get<int64_t>("sample_size", c.sample_size);
  c.in_channels = r.get<int64_t>("in_channels", c.in_channels);
  c.out_channels = r.get<int64_t>("out_channels", c.out_channels);
  c.center_input_sample = r.get<bool>("center_input_sample", c.center_input_sample);
  c.flip_sin_to_cos = r.get<bool>("flip_sin_to_cos", c.flip_sin_to_cos);
  c.freq_shift = r.get<int64_t>("freq_shift", c.freq_shift);
  c.down_block_types = r.get<std::vector<std::string>>("down_block_types", c.down_block_types);
  c.mid_block_type = r.get<std::string>("mid_block_type", c.mid_block_type);
  c.up_block_types = r.get<std::vector<std::string>>("up_block_types", c.up_block_types);
  c.block_out_channels = r.get<std::vector<int64_t>>("block_out_channels", c.block_out_channels);
  c.layers_per_block = int_or_list(r, "layers_per_block", c.layers_per_block);
  c.downsample_padding = r.get<int64_t>("downsample_padding", c.downsample_padding);
  c.mid_block_scale_factor = r.get<double>("mid_block_scale_factor", c.mid_block_scale_factor);
  c.act_fn = r.get<std::string>("act_fn", c.act_fn);
  c.norm_num_groups = r.get<int64_t>("norm_num_groups", c.norm_num_groups);
  c.norm_eps = r.get<double>("norm_eps", c.norm_eps);
  c.cross_attention_dim = int_or_list(r, "cross_attention_dim", {c.cross_attention_dim}).at(0);
  c.transformer_layers_per_block = int_or_list(r, "transformer_layers_per_block", c.transformer_layers_per_block);
  c.attention_head_dim = int_or_list(r, "attention_head_dim", c.attention_head_dim);
  c.num_attention_heads = int_or_list(r, "num_attention_heads", {});
  c.use_linear_projection = r.get<bool>("use_linear_projection", c.use_linear_projection);
  c.upcast_attention = r.get<bool>("upcast_attention", c.upcast_attention);
  c.only_cross_attention = r.get<bool>("only_cross_attention", c.only_cross_attention);
  c.resnet_time_scale_shift = r.get<std::string>("resnet_time_scale_shift", c.resnet_time_scale_shift);
  c.conv_in_kernel = r.get<int64_t>("conv_in_kernel", c.conv_in_kernel);
  c.conv_out_kernel = r.get<int64_t>("conv_out_kernel", c.conv_out_kernel);

  // Features of other diffusers UNets (SDXL, unCLIP, LCM, ...) that this model does not implement: refuse
  // them clearly rather than load a model that silently computes something else.
  for (const char* key : {"class_embed_type", "addition_embed_type", "encoder_hid_dim", "num_class_embeds",
                          "time_cond_proj_dim", "encoder_hid_dim_type", "projection_class_embeddings_input_dim",
                          "addition_time_embed_dim", "time_embedding_dim", "time_embedding_act_fn",
                          "timestep_post_act", "cross_attention_norm", "mid_block_only_cross_attention"}) {
    COLLAGE_CHECK_AT(!r.has(key), file, key, "unsupported UNet feature (value {}); only Stable Diffusion 1.x/2.x "
                     "UNets are supported", r.object().at(key).dump());
    r.ignore({key});
  }
  const bool dual = r.get<bool>("dual_cross_attention", false);
  COLLAGE_CHECK_AT(!dual, file, "dual_cross_attention", "dual cross-attention is not supported");
  const auto tet = r.get<std::string>("time_embedding_type", "positional");
  COLLAGE_CHECK_AT(tet == "positional", file, "time_embedding_type", "only 'positional' is supported, got '{}'", tet);
  COLLAGE_CHECK_AT(c.resnet_time_scale_shift == "default", file, "resnet_time_scale_shift",
                   "only 'default' is supported, got '{}'", c.resnet_time_scale_shift);
  COLLAGE_CHECK_AT(c.act_fn == "silu" || c.act_fn == "swish", file, "act_fn", "only 'silu' is supported, got '{}'",
                   c.act_fn);
  COLLAGE_CHECK_AT(c.mid_block_type == "UNetMidBlock2DCrossAttn", file, "mid_block_type",
                   "only 'UNetMidBlock2DCrossAttn' is supported, got '{}'", c.mid_block_type);
  r.ignore({"dropout", "attention_type", "class_embeddings_concat", "resnet_skip_time_act", "resnet_out_scale_factor"});
  const auto n = c.block_out_channels.size();
  COLLAGE_CHECK_AT(n > 0 && c.down_block_types.size() == n && c.up_block_types.size() == n, file,
                   "down_block_types", "block_out_channels ({}), down_block_types ({}) and up_block_types ({}) "
                   "must have the same length", n, c.down_block_types.size(), c.up_block_types.size());
  for (const auto& [key, list] : {std::pair<const char*, const std::vector<int64_t>*>{"layers_per_block", &c.layers_per_block},
                                  {"attention_head_dim", &c.attention_head_dim},
                                  {"transformer_layers_per_block", &c.transformer_layers_per_block}})
    COLLAGE_CHECK_AT(list->size() == 1 || list->size() == n, file, key, "needs 1 or {} entries, got {}", n,
                     list->size());
  for (const auto& t : c.down_block_types)
    COLLAGE_CHECK_AT(t == "CrossAttnDownBlock2D" || t == "DownBlock2D", file, "down_block_types",
                     "unsupported block type '{}' (known: CrossAttnDownBlock2D, DownBlock2D)", t);
  for (const auto& t : c.up_block_types)
    COLLAGE_CHECK_AT(t == "CrossAttnUpBlock2D" || t == "UpBlock2D", file, "up_block_types",
                     "unsupported block type '{}' (known: CrossAttnUpBlock2D, UpBlock2D)", t);
  for (auto ch : c.block_out_channels)
    COLLAGE_CHECK_AT(ch % c.norm_num_groups == 0, file, "block_out_channels",
                     "channel count {} is not divisible by norm_num_groups {}", ch, c.norm_num_groups);
  c.unknown_keys = r.unused_keys();
  return c;
}

UNet2DConditionConfig UNet2DConditionConfig::from_json_file(const std::string& path) {
  return from_json(read_json_file(path), path);
}

int64_t UNet2DConditionConfig::heads_for_block(int64_t i) const {
  // diffusers 0.21: `num_attention_heads = num_attention_heads or attention_head_dim` (a naming quirk kept
  // for compatibility: attention_head_dim holds the number of heads).
  const auto& heads = num_attention_heads.empty() ? attention_head_dim : num_attention_heads;
  return pick(heads, i, "attention heads");
}
int64_t UNet2DConditionConfig::layers_for_block(int64_t i) const { return pick(layers_per_block, i, "layers_per_block"); }
int64_t UNet2DConditionConfig::transformer_layers_for_block(int64_t i) const {
  return pick(transformer_layers_per_block, i, "transformer_layers_per_block");
}

// ---------------------------------------------------------------------------------------------- blocks

at::Tensor timestep_embedding(const at::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos,
                              double downscale_freq_shift, double max_period) {
  const int64_t half = dim / 2;
  auto exponent = at::arange(0, half, at::TensorOptions().dtype(at::kFloat).device(timesteps.device()));
  exponent = exponent * static_cast<float>(-std::log(max_period));
  exponent = exponent / static_cast<float>(half - downscale_freq_shift);
  auto freqs = at::exp(exponent);
  auto args = timesteps.to(at::kFloat).unsqueeze(1) * freqs.unsqueeze(0);
  auto emb = at::cat({at::sin(args), at::cos(args)}, -1);
  if (flip_sin_to_cos) emb = at::cat({emb.narrow(1, half, half), emb.narrow(1, 0, half)}, -1);
  if (dim % 2 == 1) emb = at::constant_pad_nd(emb, {0, 1, 0, 0}, 0);
  return emb;
}

namespace {

class GEGLUImpl : public nn::Module {
 public:
  GEGLUImpl(int64_t dim_in, int64_t dim_out) { proj = register_module("proj", nn::Linear(dim_in, dim_out * 2)); }
  at::Tensor forward(const at::Tensor& x) {
    // Two GEMMs on the row halves of the weight give contiguous halves, so gelu and the product run in
    // place instead of on strided views of one wide output.
    const int64_t n = proj->weight.size(0) / 2;
    auto hidden = at::linear(x, proj->weight.narrow(0, 0, n), proj->bias.narrow(0, 0, n));
    auto gate = at::linear(x, proj->weight.narrow(0, n, n), proj->bias.narrow(0, n, n));
    return hidden.mul_(at::gelu(gate));
  }
  nn::Linear proj{nullptr};
};
TORCH_MODULE(GEGLU);

class FeedForwardImpl : public nn::Module {
 public:
  FeedForwardImpl(int64_t dim, int64_t mult = 4) {
    net = register_module("net", nn::ModuleList());
    geglu = GEGLU(dim, dim * mult);
    out = nn::Linear(dim * mult, dim);
    net->push_back(geglu);
    net->push_back(nn::Dropout(0.0));
    net->push_back(out);
  }
  at::Tensor forward(const at::Tensor& x) {
    // Inference at high resolution: the GEGLU's two (tokens x 4*dim) halves dominate the live memory of a
    // UNet step (SD 1.5 at 64x64: 3 x 42 MB per block); feeding the tokens in chunks keeps them 4x smaller
    // at no measurable cost (the GEMMs stay large).
    constexpr int64_t kChunk = 1024;
    const int64_t n = x.dim() == 3 ? x.size(1) : 0;
    if (n <= 2 * kChunk || at::GradMode::is_enabled()) return out->forward(geglu->forward(x));
    auto y = at::empty({x.size(0), n, out->weight.size(0)}, x.options());
    for (int64_t start = 0; start < n; start += kChunk) {
      const int64_t len = std::min(kChunk, n - start);
      y.narrow(1, start, len).copy_(out->forward(geglu->forward(x.narrow(1, start, len))));
    }
    return y;
  }
  nn::ModuleList net{nullptr};
  GEGLU geglu{nullptr};
  nn::Linear out{nullptr};
};
TORCH_MODULE(FeedForward);

class BasicTransformerBlockImpl : public nn::Module {
 public:
  BasicTransformerBlockImpl(int64_t dim, int64_t heads, int64_t dim_head, int64_t cross_dim, bool upcast,
                            bool only_cross)
      : only_cross_(only_cross) {
    norm1 = register_module("norm1", nn::LayerNorm(nn::LayerNormOptions({dim}).eps(1e-5)));
    AttentionOptions a1;
    a1.query_dim = dim;
    a1.cross_attention_dim = only_cross ? cross_dim : 0;
    a1.heads = heads;
    a1.dim_head = dim_head;
    a1.upcast_attention = upcast;
    attn1 = register_module("attn1", Attention(a1));
    norm2 = register_module("norm2", nn::LayerNorm(nn::LayerNormOptions({dim}).eps(1e-5)));
    AttentionOptions a2 = a1;
    a2.cross_attention_dim = cross_dim;
    attn2 = register_module("attn2", Attention(a2));
    norm3 = register_module("norm3", nn::LayerNorm(nn::LayerNormOptions({dim}).eps(1e-5)));
    ff = register_module("ff", FeedForward(dim));
  }
  at::Tensor forward(at::Tensor h, const at::Tensor& context, int64_t height, int64_t width, const StepInfo* step) {
    auto a = attn1->forward(norm1->forward(h), only_cross_ ? context : at::Tensor(), height, width, step);
    h = a.add_(h);
    a = attn2->forward(norm2->forward(h), context, height, width, step);
    h = a.add_(h);
    a = ff->forward(norm3->forward(h));
    return a.add_(h);
  }
  nn::LayerNorm norm1{nullptr}, norm2{nullptr}, norm3{nullptr};
  Attention attn1{nullptr}, attn2{nullptr};
  FeedForward ff{nullptr};

 private:
  bool only_cross_;
};
TORCH_MODULE(BasicTransformerBlock);

}  // namespace

Transformer2DModelImpl::Transformer2DModelImpl(int64_t channels, int64_t heads, int64_t dim_head,
                                               int64_t cross_attention_dim, int64_t num_layers,
                                               int64_t norm_num_groups, bool use_linear_projection,
                                               bool upcast_attention, bool only_cross_attention)
    : use_linear_projection_(use_linear_projection) {
  const int64_t inner = heads * dim_head;
  norm = register_module("norm", nn::GroupNorm(nn::GroupNormOptions(norm_num_groups, channels).eps(1e-6)));
  if (use_linear_projection) {
    proj_in_linear = register_module("proj_in", nn::Linear(channels, inner));
  } else {
    proj_in_conv = register_module("proj_in", nn::Conv2d(nn::Conv2dOptions(channels, inner, 1)));
  }
  transformer_blocks = register_module("transformer_blocks", nn::ModuleList());
  for (int64_t i = 0; i < num_layers; ++i)
    transformer_blocks->push_back(BasicTransformerBlock(inner, heads, dim_head, cross_attention_dim,
                                                        upcast_attention, only_cross_attention));
  if (use_linear_projection) {
    proj_out_linear = register_module("proj_out", nn::Linear(inner, channels));
  } else {
    proj_out_conv = register_module("proj_out", nn::Conv2d(nn::Conv2dOptions(inner, channels, 1)));
  }
}

at::Tensor Transformer2DModelImpl::forward(const at::Tensor& x, const at::Tensor& context, const StepInfo* step) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  auto h = norm->forward(x);
  if (!use_linear_projection_) {
    h = proj_in_conv->forward(h);
    h = h.permute({0, 2, 3, 1}).reshape({B, H * W, -1});
  } else {
    h = h.permute({0, 2, 3, 1}).reshape({B, H * W, C});
    h = proj_in_linear->forward(h);
  }
  for (const auto& block : *transformer_blocks)
    h = block->as<BasicTransformerBlockImpl>()->forward(h, context, H, W, step);
  if (!use_linear_projection_) {
    h = h.reshape({B, H, W, -1}).permute({0, 3, 1, 2}).contiguous(x.suggest_memory_format());
    h = proj_out_conv->forward(h);
  } else {
    h = proj_out_linear->forward(h);
    h = h.reshape({B, H, W, C}).permute({0, 3, 1, 2}).contiguous(x.suggest_memory_format());
  }
  return h.add_(x);
}

namespace {

// The up block (the down and mid blocks, shared with the ControlNet, are in unet_blocks.h); `attentions` is
// empty for the plain UpBlock2D.
class UpBlockImpl : public nn::Module {
 public:
  UpBlockImpl(const UNet2DConditionConfig& c, int64_t reversed_index, int64_t in, int64_t out, int64_t prev_out,
              int64_t temb, bool cross, bool add_upsample) {
    const int64_t n = c.num_blocks();
    const int64_t block = n - 1 - reversed_index;  // per-block lists are reversed for the up path
    const int64_t num_layers = c.layers_for_block(block) + 1;
    const int64_t heads = c.heads_for_block(block);
    resnets = register_module("resnets", nn::ModuleList());
    if (cross) attentions = register_module("attentions", nn::ModuleList());
    for (int64_t i = 0; i < num_layers; ++i) {
      const int64_t skip = (i == num_layers - 1) ? in : out;
      const int64_t res_in = (i == 0) ? prev_out : out;
      ResnetBlock2DOptions ro;
      ro.in_channels = res_in + skip;
      ro.out_channels = out;
      ro.temb_channels = temb;
      ro.groups = c.norm_num_groups;
      ro.eps = c.norm_eps;
      resnets->push_back(ResnetBlock2D(ro));
      if (cross)
        attentions->push_back(Transformer2DModel(out, heads, out / heads, c.cross_attention_dim,
                                                 c.transformer_layers_for_block(block), c.norm_num_groups,
                                                 c.use_linear_projection, c.upcast_attention,
                                                 c.only_cross_attention));
    }
    if (add_upsample) {
      upsamplers = register_module("upsamplers", nn::ModuleList());
      upsamplers->push_back(Upsample2D(out, out));
    }
  }
  at::Tensor forward(at::Tensor h, const at::Tensor& temb, const at::Tensor& context, const StepInfo* step,
                     std::vector<at::Tensor>& skips, at::IntArrayRef upsample_size) {
    for (size_t i = 0; i < resnets->size(); ++i) {
      auto skip = std::move(skips.back());
      skips.pop_back();
      h = at::cat({h, skip}, 1);
      skip.reset();
      h = resnets[i]->as<ResnetBlock2DImpl>()->forward(h, temb);
      if (attentions) h = attentions[i]->as<Transformer2DModelImpl>()->forward(h, context, step);
    }
    if (upsamplers) h = upsamplers[0]->as<Upsample2DImpl>()->forward(h, upsample_size);
    return h;
  }
  nn::ModuleList resnets{nullptr}, attentions{nullptr}, upsamplers{nullptr};
};
TORCH_MODULE(UpBlock);

}  // namespace

struct UNet2DConditionModelImpl::Blocks {
  nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  TimestepEmbedding time_embedding{nullptr};
  std::vector<DownBlock> down;
  MidBlock mid{nullptr};
  std::vector<UpBlock> up;
  nn::GroupNorm conv_norm_out{nullptr};
};

UNet2DConditionModelImpl::UNet2DConditionModelImpl(const UNet2DConditionConfig& c)
    : config_(c), blocks_(std::make_shared<Blocks>()) {
  auto& b = *blocks_;
  const auto& ch = c.block_out_channels;
  const int64_t n = c.num_blocks();
  const int64_t temb = ch[0] * 4;
  b.conv_in = register_module(
      "conv_in", nn::Conv2d(nn::Conv2dOptions(c.in_channels, ch[0], c.conv_in_kernel).padding((c.conv_in_kernel - 1) / 2)));
  b.time_embedding = register_module("time_embedding", TimestepEmbedding(ch[0], temb));
  auto down_blocks = register_module("down_blocks", nn::ModuleList());
  int64_t out = ch[0];
  for (int64_t i = 0; i < n; ++i) {
    const int64_t in = out;
    out = ch[i];
    DownBlock block(c, i, in, out, temb, c.down_block_types[i] == "CrossAttnDownBlock2D", i != n - 1);
    down_blocks->push_back(block);
    b.down.push_back(block);
  }
  b.mid = register_module("mid_block", MidBlock(c, ch[n - 1], temb));
  auto up_blocks = register_module("up_blocks", nn::ModuleList());
  out = ch[n - 1];
  for (int64_t i = 0; i < n; ++i) {
    const int64_t prev = out;
    out = ch[n - 1 - i];
    const int64_t in = ch[std::max<int64_t>(n - 2 - i, 0)];
    UpBlock block(c, i, in, out, prev, temb, c.up_block_types[i] == "CrossAttnUpBlock2D", i != n - 1);
    up_blocks->push_back(block);
    b.up.push_back(block);
  }
  b.conv_norm_out = register_module(
      "conv_norm_out", nn::GroupNorm(nn::GroupNormOptions(c.norm_num_groups, ch[0]).eps(c.norm_eps)));
  b.conv_out = register_module(
      "conv_out", nn::Conv2d(nn::Conv2dOptions(ch[0], c.out_channels, c.conv_out_kernel).padding((c.conv_out_kernel - 1) / 2)));
  attention_layers_ = collect_attention_layers(*this);
}

at::Tensor UNet2DConditionModelImpl::forward(const at::Tensor& sample_in, const at::Tensor& timestep,
                                             const at::Tensor& context, const StepInfo* step,
                                             std::map<std::string, at::Tensor>* debug,
                                             const UNetResiduals* residuals) {
  auto& b = *blocks_;
  const auto& c = config_;
  COLLAGE_CHECK(sample_in.dim() == 4 && sample_in.size(1) == c.in_channels,
                "UNet: sample must be (B, {}, H, W), got {}", c.in_channels, fmt::join(sample_in.sizes(), "x"));
  COLLAGE_CHECK(context.dim() == 3 && context.size(2) == c.cross_attention_dim && context.size(0) == sample_in.size(0),
                "UNet: encoder_hidden_states must be ({}, tokens, {}), got {}", sample_in.size(0),
                c.cross_attention_dim, fmt::join(context.sizes(), "x"));
  const int64_t B = sample_in.size(0);
  // Upsampling to the skip's size is needed when the latent is not divisible by 2^(number of upsamplers).
  const int64_t factor = int64_t(1) << (c.num_blocks() - 1);
  const bool forward_upsample_size = sample_in.size(2) % factor != 0 || sample_in.size(3) % factor != 0;

  auto [t_emb, emb] = embed_timestep(c, *b.time_embedding, timestep, B, sample_in.device(), sample_in.scalar_type());
  if (debug) {
    (*debug)["time_proj"] = t_emb;
    (*debug)["time_embedding"] = emb;
  }

  at::Tensor h = c.center_input_sample ? sample_in * 2.0 - 1.0 : sample_in;
  if (channels_last_) h = h.contiguous(at::MemoryFormat::ChannelsLast);
  h = b.conv_in->forward(h);
  if (debug) (*debug)["conv_in"] = h;
  std::vector<at::Tensor> skips{h};
  for (size_t i = 0; i < b.down.size(); ++i) {
    h = b.down[i]->forward(h, emb, context, step, skips);
    if (debug) (*debug)["down_blocks." + std::to_string(i)] = h;
  }
  h = b.mid->forward(h, emb, context, step);
  if (debug) (*debug)["mid_block"] = h;
  if (residuals) {
    COLLAGE_CHECK(residuals->down.size() == skips.size() && residuals->mid.defined(),
                  "UNet: {} down residuals (+ mid) given, the model has {} skip connections", residuals->down.size(),
                  skips.size());
    for (size_t k = 0; k < skips.size(); ++k) {
      COLLAGE_CHECK(residuals->down[k].sizes() == skips[k].sizes(), "UNet: down residual {} has shape {}, the skip "
                    "connection {}", k, fmt::join(residuals->down[k].sizes(), "x"), fmt::join(skips[k].sizes(), "x"));
      skips[k] = skips[k] + residuals->down[k];
    }
    COLLAGE_CHECK(residuals->mid.sizes() == h.sizes(), "UNet: mid residual has shape {}, the mid block output {}",
                  fmt::join(residuals->mid.sizes(), "x"), fmt::join(h.sizes(), "x"));
    h = h + residuals->mid;
  }
  for (size_t i = 0; i < b.up.size(); ++i) {
#ifdef __GLIBC__
    // CPU inference: glibc keeps the freed activations of the lower levels in its heap, fragmented, and the
    // peak of the full-resolution up block comes on top (SD 1.5 at 64x64: 4.2 GB peak -> see the bench).
    // Returning them before each up block costs a few page faults (~1 %).
    // Only where activations are large (SD sizes: 10 MB per full-resolution map), not for small models.
    if (sample_in.device().is_cpu() && !at::GradMode::is_enabled() &&
        B * sample_in.size(2) * sample_in.size(3) * c.block_out_channels[0] * sample_in.element_size() >= (8 << 20))
      malloc_trim(0);
#endif
    const bool is_final = i + 1 == b.up.size();
    std::vector<int64_t> size;
    if (!is_final && forward_upsample_size) {
      const auto& target = skips[skips.size() - b.up[i]->resnets->size() - 1];
      size = {target.size(2), target.size(3)};
    }
    h = b.up[i]->forward(h, emb, context, step, skips, size);
    if (debug) (*debug)["up_blocks." + std::to_string(i)] = h;
  }
  h = b.conv_norm_out->forward(h);
  if (debug) (*debug)["conv_norm_out"] = h.clone();
  at::silu_(h);
  return b.conv_out->forward(h).contiguous();
}

void UNet2DConditionModelImpl::set_channels_last(bool enable) {
  // oneDNN convolutions on CPU run without per-call layout reorders in NHWC, and the transformer blocks'
  // (B, C, H, W) <-> (B, H*W, C) permutes become free views.
  channels_last_ = enable;
  set_conv_weights_channels_last(*this, enable);
}

void set_conv_weights_channels_last(torch::nn::Module& module, bool enable) {
  torch::NoGradGuard no_grad;
  const auto format = enable ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  for (auto& p : module.parameters())
    if (p.dim() == 4) p.set_data(p.data().contiguous(format));
}

std::pair<at::Tensor, at::Tensor> embed_timestep(const UNet2DConditionConfig& c, TimestepEmbeddingImpl& embedding,
                                                 const at::Tensor& timestep, int64_t batch, const at::Device& device,
                                                 at::ScalarType dtype) {
  auto t = timestep.to(device);
  if (t.dim() == 0) t = t.reshape({1});
  t = t.expand({batch});
  auto t_emb = timestep_embedding(t, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift).to(dtype);
  auto emb = embedding.forward(t_emb);
  return {t_emb, emb};
}

int UNet2DConditionModelImpl::set_attn_processor(const std::function<bool(const Attention&)>& select,
                                                 std::shared_ptr<AttnProcessor> processor) {
  int count = 0;
  for (auto& layer : attention_layers_) {
    if (!select || select(layer)) {
      layer->set_processor(processor);
      ++count;
    }
  }
  COLLAGE_CHECK(count > 0, "set_attn_processor: no attention layer matched the selection");
  return count;
}

void UNet2DConditionModelImpl::set_attn_processors(
    const std::map<std::string, std::shared_ptr<AttnProcessor>>& by_path) {
  std::map<std::string, Attention> index;
  for (auto& layer : attention_layers_) index.emplace(layer->path(), layer);
  for (const auto& [path, proc] : by_path) {
    auto it = index.find(path);
    if (it == index.end()) {
      std::vector<std::string> some;
      for (auto& l : attention_layers_) {
        if (some.size() >= 3) break;
        some.push_back(l->path());
      }
      throw Error(fmt::format("unknown attention layer (valid paths look like: {})", fmt::join(some, ", ")), "",
                  path);
    }
    it->second->set_processor(proc);
  }
}

void UNet2DConditionModelImpl::reset_attn_processors() {
  for (auto& layer : attention_layers_) layer->set_processor(nullptr);
}

std::shared_ptr<UNet2DConditionModelImpl> UNet2DConditionModelImpl::load(const std::string& folder,
                                                                          const std::string& variant) {
  const auto config_path = (std::filesystem::path(folder) / "config.json").string();
  auto config = UNet2DConditionConfig::from_json_file(config_path);
  auto model = std::make_shared<UNet2DConditionModelImpl>(config);
  load_module_weights(*model, find_weight_files(folder, {"diffusion_pytorch_model", "model"}, variant));
  model->eval();
  return model;
}

}  // namespace collage
