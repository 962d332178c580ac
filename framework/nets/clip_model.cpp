#include "nets/clip_model.h"

#include <torch/torch.h>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>

#include "core/core.h"
#include "models/models.h"

namespace fs = std::filesystem;

namespace collage {

namespace nn = torch::nn;

namespace {

// PretrainedConfig bookkeeping and training-only settings that do not change inference.
const std::vector<std::string> kIrrelevantConfigKeys = {
    "architectures", "attention_dropout", "dropout", "initializer_factor", "initializer_range", "model_type",
    "torch_dtype", "transformers_version", "return_dict", "output_hidden_states", "output_attentions",
    "use_bfloat16", "tie_word_embeddings", "is_encoder_decoder", "is_decoder", "add_cross_attention",
    "chunk_size_feed_forward", "id2label", "label2id", "problem_type", "tokenizer_class", "prefix",
    "task_specific_params", "finetuning_task", "pruned_heads", "torchscript", "tf_legacy_loss",
    "cross_attention_hidden_size", "decoder_start_token_id", "sep_token_id", "bos_token_id", "eos_token_id",
    "pad_token_id", "bad_words_ids", "begin_suppress_tokens", "diversity_penalty", "do_sample", "early_stopping",
    "encoder_no_repeat_ngram_size", "exponential_decay_length_penalty", "forced_bos_token_id",
    "forced_eos_token_id", "length_penalty", "max_length", "min_length", "no_repeat_ngram_size",
    "num_beam_groups", "num_beams", "num_return_sequences", "output_scores", "remove_invalid_values",
    "repetition_penalty", "return_dict_in_generate", "suppress_tokens", "temperature", "top_k", "top_p",
    "typical_p"};

std::string shape_of(const at::Tensor& t) { return fmt::format("[{}]", fmt::join(t.sizes(), ",")); }

// Every tensor name of the weight files.
std::vector<std::string> weight_keys(const std::vector<std::string>& files) {
  std::vector<std::string> keys;
  for (const auto& f : files) {
    auto names = SafetensorsFile::open(f)->names();
    keys.insert(keys.end(), names.begin(), names.end());
  }
  return keys;
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

void freeze(nn::Module& m) {
  for (auto& p : m.parameters()) p.set_requires_grad(false);
  m.eval();
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Configs

ClipVisionConfig ClipVisionConfig::from_json_file(const std::string& path) {
  auto json = read_json_file(path);
  if (json.is_object() && (json.value("model_type", std::string()) == "clip" || json.contains("vision_config"))) {
    auto full = ClipConfig::from_json(json, path);
    auto c = full.vision;
    c.projection_dim = full.projection_dim;
    return c;
  }
  return from_json(json, path);
}

ClipVisionConfig ClipVisionConfig::from_json(const Json& object, const std::string& file, const std::string& prefix,
                                             bool fill_defaults) {
  COLLAGE_CHECK_AT(object.is_object(), file, prefix, "expected a JSON object");
  JsonReader r(object, file, prefix);
  ClipVisionConfig c;
  auto size = [&](const char* key, int64_t fallback) {
    return fill_defaults ? r.get<int64_t>(key, fallback) : r.get<int64_t>(key);
  };
  c.hidden_size = size("hidden_size", c.hidden_size);
  c.intermediate_size = size("intermediate_size", c.intermediate_size);
  c.num_hidden_layers = size("num_hidden_layers", c.num_hidden_layers);
  c.num_attention_heads = size("num_attention_heads", c.num_attention_heads);
  c.image_size = size("image_size", c.image_size);
  c.patch_size = size("patch_size", c.patch_size);
  c.projection_dim = r.get<int64_t>("projection_dim", c.projection_dim);
  c.num_channels = r.get<int64_t>("num_channels", c.num_channels);
  c.hidden_act = r.get<std::string>("hidden_act", c.hidden_act);
  c.layer_norm_eps = r.get<double>("layer_norm_eps", c.layer_norm_eps);
  r.ignore(kIrrelevantConfigKeys);
  c.unknown_keys = r.unused_keys();

  const std::vector<std::pair<int64_t, const char*>> sizes = {
      {c.hidden_size, "hidden_size"}, {c.intermediate_size, "intermediate_size"},
      {c.num_hidden_layers, "num_hidden_layers"}, {c.num_attention_heads, "num_attention_heads"},
      {c.image_size, "image_size"}, {c.patch_size, "patch_size"}, {c.projection_dim, "projection_dim"},
      {c.num_channels, "num_channels"}};
  for (const auto& [v, key] : sizes) COLLAGE_CHECK_AT(v > 0, file, prefix + key, "must be positive, got {}", v);
  COLLAGE_CHECK_AT(c.hidden_size % c.num_attention_heads == 0, file, prefix + "num_attention_heads",
                   "hidden_size {} is not divisible by num_attention_heads {}", c.hidden_size,
                   c.num_attention_heads);
  COLLAGE_CHECK_AT(c.image_size % c.patch_size == 0, file, prefix + "patch_size",
                   "image_size {} is not divisible by patch_size {}", c.image_size, c.patch_size);
  COLLAGE_CHECK_AT(c.layer_norm_eps > 0, file, prefix + "layer_norm_eps", "must be positive, got {}",
                   c.layer_norm_eps);
  parse_clip_activation(c.hidden_act, file, prefix + "hidden_act");
  return c;
}

ClipEncoderOptions ClipVisionConfig::encoder_options() const {
  ClipEncoderOptions o;
  o.hidden_size = hidden_size;
  o.intermediate_size = intermediate_size;
  o.num_hidden_layers = num_hidden_layers;
  o.num_attention_heads = num_attention_heads;
  o.hidden_act = parse_clip_activation(hidden_act);
  o.layer_norm_eps = layer_norm_eps;
  return o;
}

ClipConfig ClipConfig::from_json_file(const std::string& path) { return from_json(read_json_file(path), path); }

ClipConfig ClipConfig::from_json(const Json& object, const std::string& file) {
  COLLAGE_CHECK_AT(object.is_object(), file, "", "expected a JSON object");
  JsonReader r(object, file);
  ClipConfig c;
  c.projection_dim = r.get<int64_t>("projection_dim", c.projection_dim);
  c.logit_scale_init_value = r.get<double>("logit_scale_init_value", c.logit_scale_init_value);
  COLLAGE_CHECK_AT(c.projection_dim > 0, file, "projection_dim", "must be positive, got {}", c.projection_dim);

  // CLIPConfig: a sub-config given as `*_config_dict` (legacy) overrides the same keys of `*_config`.
  auto merged = [&](const std::string& name) {
    Json sub = Json::object();
    for (const auto& key : {name, name + "_dict"}) {
      auto v = r.get<Json>(key, Json());
      if (v.is_null()) continue;
      COLLAGE_CHECK_AT(v.is_object(), file, key, "expected a JSON object");
      for (auto it = v.begin(); it != v.end(); ++it) sub[it.key()] = it.value();
    }
    return sub;
  };
  const Json text = merged("text_config"), vision = merged("vision_config");
  c.text = ClipTextConfig::from_json(text, file, "text_config.", /*fill_defaults=*/true);
  c.vision = ClipVisionConfig::from_json(vision, file, "vision_config.", /*fill_defaults=*/true);
  r.ignore(kIrrelevantConfigKeys);
  c.unknown_keys = r.unused_keys();
  for (const auto& k : c.text.unknown_keys) c.unknown_keys.push_back("text_config." + k);
  for (const auto& k : c.vision.unknown_keys) c.unknown_keys.push_back("vision_config." + k);
  return c;
}

// ---------------------------------------------------------------------------------------------------------------
// Vision tower

ClipVisionEmbeddingsImpl::ClipVisionEmbeddingsImpl(const ClipVisionConfig& c)
    : image_size_(c.image_size), num_channels_(c.num_channels) {
  // Registration order follows transformers (class_embedding, patch_embedding, position_embedding).
  class_embedding = register_parameter("class_embedding", torch::zeros({c.hidden_size}));
  patch_embedding = register_module(
      "patch_embedding",
      nn::Conv2d(nn::Conv2dOptions(c.num_channels, c.hidden_size, c.patch_size).stride(c.patch_size).bias(false)));
  position_embedding = register_module("position_embedding", nn::Embedding(c.num_positions(), c.hidden_size));
}

at::Tensor ClipVisionEmbeddingsImpl::forward(const at::Tensor& pixel_values) {
  COLLAGE_CHECK(pixel_values.dim() == 4 && pixel_values.size(1) == num_channels_ &&
                    pixel_values.size(2) == image_size_ && pixel_values.size(3) == image_size_,
                "pixel_values must be (batch, {}, {}, {}), got shape {}", num_channels_, image_size_, image_size_,
                shape_of(pixel_values));
  const auto& w = patch_embedding->weight;
  auto x = pixel_values.to(w.device(), w.scalar_type());
  auto patches = patch_embedding->forward(x).flatten(2).transpose(1, 2);  // (B, N, D), row-major grid order
  const int64_t B = patches.size(0), D = patches.size(2);
  auto cls = class_embedding.view({1, 1, D}).expand({B, 1, D});
  return at::cat({cls, patches}, 1) + position_embedding->weight.unsqueeze(0);
}

ClipVisionTransformerImpl::ClipVisionTransformerImpl(const ClipVisionConfig& c) {
  auto ln = [&] { return nn::LayerNorm(nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps)); };
  embeddings = register_module("embeddings", ClipVisionEmbeddings(c));
  pre_layrnorm = register_module("pre_layrnorm", ln());
  encoder = register_module("encoder", ClipEncoder(c.encoder_options()));
  post_layernorm = register_module("post_layernorm", ln());
}

ClipVisionOutput ClipVisionTransformerImpl::forward(const at::Tensor& pixel_values, bool output_hidden_states) {
  ClipVisionOutput out;
  out.embeddings = embeddings->forward(pixel_values);
  auto h = pre_layrnorm->forward(out.embeddings);
  out.last_hidden_state = encoder->forward(h, {}, output_hidden_states ? &out.hidden_states : nullptr);
  out.pooler_output = post_layernorm->forward(out.last_hidden_state.select(1, 0));
  return out;
}

ClipVisionModelWithProjectionImpl::ClipVisionModelWithProjectionImpl(const ClipVisionConfig& config)
    : config_(config) {
  vision_model = register_module("vision_model", ClipVisionTransformer(config));
  visual_projection = register_module(
      "visual_projection", nn::Linear(nn::LinearOptions(config.hidden_size, config.projection_dim).bias(false)));
}

ClipVisionOutput ClipVisionModelWithProjectionImpl::forward(const at::Tensor& pixel_values,
                                                            bool output_hidden_states) {
  auto out = vision_model->forward(pixel_values, output_hidden_states);
  out.image_embeds = visual_projection->forward(out.pooler_output);
  return out;
}

at::Tensor ClipVisionModelWithProjectionImpl::get_image_features(const at::Tensor& pixel_values) {
  return forward(pixel_values).image_embeds;
}

ClipVisionModelWithProjection ClipVisionModelWithProjectionImpl::load(const std::string& folder,
                                                                      const std::string& variant) {
  const auto config_path = (fs::path(folder) / "config.json").string();
  COLLAGE_CHECK_AT(fs::exists(config_path), config_path, "", "CLIP vision model config.json not found");
  ClipVisionModelWithProjection model(ClipVisionConfig::from_json_file(config_path));
  const auto files = find_weight_files(folder, {"model", "pytorch_model"}, variant);
  LoadOptions options;
  options.ignorable_file_keys = {"vision_model.embeddings.position_ids"};
  // A CLIPModel checkpoint: skip the text tower (as transformers does when loading this class from it).
  for (const auto& key : weight_keys(files))
    if (starts_with(key, "text_model.") || starts_with(key, "text_projection.") || key == "logit_scale")
      options.ignorable_file_keys.insert(key);
  load_module_weights(*model, files, options);
  freeze(*model);
  return model;
}

// ---------------------------------------------------------------------------------------------------------------
// Full CLIPModel

ClipModelImpl::ClipModelImpl(const ClipConfig& config) : config_(config) {
  text_ = ClipTextModel(config.text);
  auto vision_config = config.vision;
  vision_config.projection_dim = config.projection_dim;  // CLIPModel sizes visual_projection by the top level
  vision_ = ClipVisionModelWithProjection(vision_config);
  // The towers' modules are registered here under the checkpoint names (shared, not copied).
  register_module("text_model", text_->text_model);
  register_module("vision_model", vision_->vision_model);
  register_module("visual_projection", vision_->visual_projection);
  text_projection = register_module(
      "text_projection",
      nn::Linear(nn::LinearOptions(config.text.hidden_size, config.projection_dim).bias(false)));
  logit_scale = register_parameter("logit_scale", torch::scalar_tensor(config.logit_scale_init_value, torch::kFloat));
}

at::Tensor ClipModelImpl::get_text_features(const at::Tensor& input_ids, const at::Tensor& attention_mask) {
  const auto device = text_projection->weight.device();
  auto out = text_->forward(input_ids.to(device), false,
                            attention_mask.defined() ? attention_mask.to(device) : attention_mask);
  return text_projection->forward(out.pooler_output);
}

at::Tensor ClipModelImpl::get_image_features(const at::Tensor& pixel_values) {
  return vision_->get_image_features(pixel_values);
}

at::Tensor ClipModelImpl::logit_scale_exp() { return logit_scale.exp(); }

ClipOutput ClipModelImpl::forward(const at::Tensor& input_ids, const at::Tensor& pixel_values,
                                  const at::Tensor& attention_mask) {
  ClipOutput out;
  const auto device = text_projection->weight.device();
  out.text_output = text_->forward(input_ids.to(device), false,
                                   attention_mask.defined() ? attention_mask.to(device) : attention_mask);
  out.vision_output = vision_->forward(pixel_values);
  out.text_embeds = clip_l2_normalize(text_projection->forward(out.text_output.pooler_output));
  out.image_embeds = clip_l2_normalize(out.vision_output.image_embeds);
  out.logits_per_text = at::matmul(out.text_embeds, out.image_embeds.t()) * logit_scale.exp();
  out.logits_per_image = out.logits_per_text.t();
  return out;
}

ClipModel ClipModelImpl::load(const std::string& folder, const std::string& variant) {
  const auto config_path = (fs::path(folder) / "config.json").string();
  COLLAGE_CHECK_AT(fs::exists(config_path), config_path, "", "CLIP model config.json not found");
  ClipModel model(ClipConfig::from_json_file(config_path));
  LoadOptions options;
  options.ignorable_file_keys = {"text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"};
  load_module_weights(*model, find_weight_files(folder, {"model", "pytorch_model"}, variant), options);
  freeze(*model);
  return model;
}

at::Tensor clip_l2_normalize(const at::Tensor& x) { return x / at::linalg_vector_norm(x, 2, at::IntArrayRef{-1}, /*keepdim=*/true); }

at::Tensor clip_cos100(const at::Tensor& image_embeds, const at::Tensor& text_embeds) {
  COLLAGE_CHECK(image_embeds.dim() == 2 && image_embeds.sizes() == text_embeds.sizes(),
                "clip_cos100: expected two (N, dim) tensors of the same shape, got {} and {}", shape_of(image_embeds),
                shape_of(text_embeds));
  return 100 * (clip_l2_normalize(image_embeds) * clip_l2_normalize(text_embeds)).sum(-1);
}

at::Tensor clip_attention_mask_from_ids(const at::Tensor& input_ids, int64_t eos_token_id) {
  COLLAGE_CHECK(input_ids.dim() == 2, "input_ids must be (batch, length), got shape {}", shape_of(input_ids));
  auto is_eos = input_ids.eq(eos_token_id).to(at::kLong);
  // Number of eos tokens strictly before each position: 0 means "not after the first eos".
  auto before = is_eos.cumsum(1) - is_eos;
  return before.eq(0).to(at::kLong);
}

// ---------------------------------------------------------------------------------------------------------------
// PIL resampling (Pillow 9.4 libImaging/Resample.c, 8 bits per channel), re-implemented from its documented
// arithmetic.

namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // 22 fractional bits; 2 spare bits for negative lobes / overshoot

double filter_support(PilFilter f) {
  switch (f) {
    case PilFilter::Box: return 0.5;
    case PilFilter::Bilinear: return 1.0;
    case PilFilter::Hamming: return 1.0;
    case PilFilter::Bicubic: return 2.0;
    case PilFilter::Lanczos: return 3.0;
  }
  throw Error("unknown PIL filter");
}

double sinc(double x) {
  if (x == 0.0) return 1.0;
  x *= M_PI;
  return std::sin(x) / x;
}

double filter_weight(PilFilter f, double x) {
  switch (f) {
    case PilFilter::Box:
      return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0;
    case PilFilter::Bilinear:
      x = std::fabs(x);
      return x < 1.0 ? 1.0 - x : 0.0;
    case PilFilter::Hamming:
      x = std::fabs(x);
      if (x == 0.0) return 1.0;
      if (x >= 1.0) return 0.0;
      x *= M_PI;
      return std::sin(x) / x * (0.54f + 0.46f * std::cos(x));
    case PilFilter::Bicubic: {
      constexpr double a = -0.5;  // Keys cubic
      x = std::fabs(x);
      if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
      if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
      return 0.0;
    }
    case PilFilter::Lanczos:
      return (-3.0 <= x && x < 3.0) ? sinc(x) * sinc(x / 3) : 0.0;
  }
  throw Error("unknown PIL filter");
}

// Fixed-point taps of one axis: output index i reads inputs first[i] .. first[i] + count[i] - 1.
struct AxisCoeffs {
  int64_t ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> k;  // out_size * ksize
};

AxisCoeffs axis_coeffs(int64_t in_size, int64_t out_size, PilFilter filter) {
  AxisCoeffs c;
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  const double filterscale = scale < 1.0 ? 1.0 : scale;  // widened support when downscaling (antialiasing)
  const double support = filter_support(filter) * filterscale;
  c.ksize = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.k.assign(out_size * c.ksize, 0);
  std::vector<double> w(c.ksize);
  const double ss = 1.0 / filterscale;
  for (int64_t i = 0; i < out_size; ++i) {
    const double center = (static_cast<double>(i) + 0.5) * scale;
    int xmin = static_cast<int>(center - support + 0.5);  // C cast: truncation toward zero
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = static_cast<int>(in_size);
    const int n = xmax - xmin;
    double total = 0.0;
    for (int j = 0; j < n; ++j) {
      w[j] = filter_weight(filter, (j + xmin - center + 0.5) * ss);
      total += w[j];
    }
    for (int j = 0; j < n; ++j) {
      if (total != 0.0) w[j] /= total;
      const double scaled = w[j] * (1 << kPrecisionBits);
      c.k[i * c.ksize + j] = static_cast<int32_t>(w[j] < 0 ? -0.5 + scaled : 0.5 + scaled);
    }
    c.first[i] = xmin;
    c.count[i] = n;
  }
  return c;
}

inline uint8_t clip8(int32_t v) {
  if (v >= (1 << kPrecisionBits << 8)) return 255;
  if (v <= 0) return 0;
  return static_cast<uint8_t>(v >> kPrecisionBits);
}

// One separable pass along `axis` (0 = rows / vertical, 1 = columns / horizontal) of an (H, W, C) uint8 image.
at::Tensor resample_axis(const at::Tensor& in, int axis, int64_t out_size, PilFilter filter) {
  const int64_t H = in.size(0), W = in.size(1), C = in.size(2);
  const int64_t in_size = axis == 0 ? H : W;
  const auto co = axis_coeffs(in_size, out_size, filter);
  const int64_t OH = axis == 0 ? out_size : H, OW = axis == 0 ? W : out_size;
  auto out = at::empty({OH, OW, C}, in.options());
  const uint8_t* src = in.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const int32_t half = 1 << (kPrecisionBits - 1);
  if (axis == 1) {
    for (int64_t y = 0; y < H; ++y)
      for (int64_t x = 0; x < OW; ++x) {
        const int32_t* k = &co.k[x * co.ksize];
        const uint8_t* row = src + (y * W + co.first[x]) * C;
        for (int64_t c = 0; c < C; ++c) {
          int32_t acc = half;
          for (int j = 0; j < co.count[x]; ++j) acc += static_cast<int32_t>(row[j * C + c]) * k[j];
          dst[(y * OW + x) * C + c] = clip8(acc);
        }
      }
  } else {
    for (int64_t y = 0; y < OH; ++y) {
      const int32_t* k = &co.k[y * co.ksize];
      for (int64_t x = 0; x < W; ++x)
        for (int64_t c = 0; c < C; ++c) {
          int32_t acc = half;
          const uint8_t* col = src + (co.first[y] * W + x) * C + c;
          for (int j = 0; j < co.count[y]; ++j) acc += static_cast<int32_t>(col[j * W * C]) * k[j];
          dst[(y * W + x) * C + c] = clip8(acc);
        }
    }
  }
  return out;
}

// Python's floor division by 2 (negative numerators round down).
int64_t floor_half(int64_t v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); }

}  // namespace

at::Tensor pil_resize(const at::Tensor& hwc, int64_t out_h, int64_t out_w, PilFilter filter) {
  COLLAGE_CHECK(hwc.dim() == 3 && hwc.scalar_type() == at::kByte,
                "pil_resize: expected a uint8 (H, W, C) image, got {} {}", c10::toString(hwc.scalar_type()),
                shape_of(hwc));
  COLLAGE_CHECK(out_h > 0 && out_w > 0 && hwc.size(0) > 0 && hwc.size(1) > 0,
                "pil_resize: sizes must be positive (input {}x{}, output {}x{})", hwc.size(0), hwc.size(1), out_h,
                out_w);
  auto img = hwc.to(at::kCPU).contiguous();
  // PIL: horizontal pass first (only if the width changes), uint8 intermediate, then the vertical pass.
  if (out_w != img.size(1)) img = resample_axis(img, 1, out_w, filter);
  if (out_h != img.size(0)) img = resample_axis(img, 0, out_h, filter);
  return img.data_ptr() == hwc.data_ptr() ? img.clone() : img;
}

// ---------------------------------------------------------------------------------------------------------------
// CLIPImageProcessor

ClipImageProcessorConfig ClipImageProcessorConfig::from_json_file(const std::string& path) {
  return from_json(read_json_file(path), path);
}

ClipImageProcessorConfig ClipImageProcessorConfig::from_json(const Json& object, const std::string& file) {
  COLLAGE_CHECK_AT(object.is_object(), file, "", "expected a JSON object");
  JsonReader r(object, file);
  ClipImageProcessorConfig c;
  c.do_resize = r.get<bool>("do_resize", c.do_resize);
  const Json size = r.get<Json>("size", Json());
  if (size.is_number_integer()) {
    c.shortest_edge = size.get<int64_t>();
  } else if (size.is_object()) {
    COLLAGE_CHECK_AT(size.contains("shortest_edge") && size["shortest_edge"].is_number_integer(), file, "size",
                     "CLIPImageProcessor resizes by the shortest edge: expected {{\"shortest_edge\": n}}, got {}",
                     size.dump());
    c.shortest_edge = size["shortest_edge"].get<int64_t>();
  } else {
    COLLAGE_CHECK_AT(size.is_null(), file, "size", "expected an int or {{\"shortest_edge\": n}}, got {}",
                     size.dump());
  }
  COLLAGE_CHECK_AT(c.shortest_edge > 0, file, "size", "must be positive, got {}", c.shortest_edge);

  const int resample = r.get<int>("resample", static_cast<int>(c.resample));
  COLLAGE_CHECK_AT(resample >= 1 && resample <= 5, file, "resample",
                   "unsupported PIL filter {} (supported: 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming)",
                   resample);
  c.resample = static_cast<PilFilter>(resample);

  c.do_center_crop = r.get<bool>("do_center_crop", c.do_center_crop);
  const Json crop = r.get<Json>("crop_size", Json());
  if (crop.is_number_integer()) {
    c.crop_height = c.crop_width = crop.get<int64_t>();
  } else if (crop.is_object()) {
    COLLAGE_CHECK_AT(crop.contains("height") && crop.contains("width") && crop["height"].is_number_integer() &&
                         crop["width"].is_number_integer(),
                     file, "crop_size", "expected {{\"height\": h, \"width\": w}}, got {}", crop.dump());
    c.crop_height = crop["height"].get<int64_t>();
    c.crop_width = crop["width"].get<int64_t>();
  } else {
    COLLAGE_CHECK_AT(crop.is_null(), file, "crop_size", "expected an int or {{\"height\", \"width\"}}, got {}",
                     crop.dump());
  }
  COLLAGE_CHECK_AT(c.crop_height > 0 && c.crop_width > 0, file, "crop_size", "must be positive, got {}x{}",
                   c.crop_height, c.crop_width);

  c.do_rescale = r.get<bool>("do_rescale", c.do_rescale);
  c.rescale_factor = r.get<double>("rescale_factor", c.rescale_factor);
  c.do_normalize = r.get<bool>("do_normalize", c.do_normalize);
  auto triple = [&](const char* key, std::array<double, 3> fallback) {
    const Json v = r.get<Json>(key, Json());
    if (v.is_null()) return fallback;
    if (v.is_number()) {
      const double x = v.get<double>();
      return std::array<double, 3>{x, x, x};
    }
    COLLAGE_CHECK_AT(v.is_array() && v.size() == 3, file, key, "expected 3 numbers (one per RGB channel), got {}",
                     v.dump());
    std::array<double, 3> out{};
    for (size_t i = 0; i < 3; ++i) {
      COLLAGE_CHECK_AT(v[i].is_number(), file, key, "expected numbers, got {}", v.dump());
      out[i] = v[i].get<double>();
    }
    return out;
  };
  c.image_mean = triple("image_mean", c.image_mean);
  c.image_std = triple("image_std", c.image_std);
  for (double s : c.image_std) COLLAGE_CHECK_AT(s != 0.0, file, "image_std", "must not contain 0");
  c.do_convert_rgb = r.get<bool>("do_convert_rgb", c.do_convert_rgb);
  r.ignore({"image_processor_type", "feature_extractor_type", "processor_class"});
  c.unknown_keys = r.unused_keys();
  return c;
}

std::pair<int64_t, int64_t> clip_resize_output_size(int64_t height, int64_t width, int64_t shortest_edge) {
  COLLAGE_CHECK(height > 0 && width > 0, "image size must be positive, got {}x{}", height, width);
  const int64_t s = std::min(height, width), l = std::max(height, width);
  const auto long_side = static_cast<int64_t>(static_cast<double>(shortest_edge) * static_cast<double>(l) /
                                              static_cast<double>(s));
  return height <= width ? std::pair{shortest_edge, long_side} : std::pair{long_side, shortest_edge};
}

ClipImageProcessor ClipImageProcessor::from_folder(const std::string& folder) {
  const auto path = (fs::path(folder) / "preprocessor_config.json").string();
  COLLAGE_CHECK_AT(fs::exists(path), path, "", "preprocessor_config.json not found");
  return ClipImageProcessor(ClipImageProcessorConfig::from_json_file(path));
}

at::Tensor convert_rgb_u8(const at::Tensor& hwc) {
  COLLAGE_CHECK(hwc.dim() == 3 && hwc.scalar_type() == at::kByte && hwc.size(2) >= 1 && hwc.size(2) <= 4,
                "expected a uint8 (H, W, C) image with C in 1..4, got {} {}", c10::toString(hwc.scalar_type()),
                shape_of(hwc));
  switch (hwc.size(2)) {
    case 1: return hwc.expand({hwc.size(0), hwc.size(1), 3}).contiguous();              // L
    case 2: return hwc.narrow(2, 0, 1).expand({hwc.size(0), hwc.size(1), 3}).contiguous();  // LA
    default: return hwc.narrow(2, 0, 3).contiguous();                                    // RGB, RGBA
  }
}

at::Tensor float_image_to_u8(const at::Tensor& chw01) { return to_uint8_hwc(chw01); }

at::Tensor read_image_u8(const std::string& path) {
  COLLAGE_CHECK_AT(fs::exists(path), path, "", "image file not found");
  cv::Mat m = cv::imread(path, cv::IMREAD_UNCHANGED);
  COLLAGE_CHECK_AT(!m.empty(), path, "", "cannot decode image (not a PNG/JPEG file, or corrupt)");
  if (m.depth() == CV_16U) m.convertTo(m, CV_8U, 1.0 / 257.0);
  COLLAGE_CHECK_AT(m.depth() == CV_8U, path, "", "unsupported pixel depth (8 or 16 bits expected)");
  cv::Mat rgb;
  if (m.channels() == 1)
    rgb = m;
  else if (m.channels() == 3)
    cv::cvtColor(m, rgb, cv::COLOR_BGR2RGB);
  else if (m.channels() == 4)
    cv::cvtColor(m, rgb, cv::COLOR_BGRA2RGBA);
  else
    throw Error(fmt::format("unsupported channel count {}", m.channels()), path);
  rgb = rgb.isContinuous() ? rgb : rgb.clone();
  return at::from_blob(rgb.data, {rgb.rows, rgb.cols, rgb.channels()}, at::kByte).clone();
}

at::Tensor ClipImageProcessor::preprocess_u8(const at::Tensor& hwc_u8, ClipPreprocessTrace* trace) const {
  const auto& c = config_;
  COLLAGE_CHECK(hwc_u8.dim() == 3 && hwc_u8.scalar_type() == at::kByte,
                "expected a uint8 (H, W, C) image, got {} {}", c10::toString(hwc_u8.scalar_type()),
                shape_of(hwc_u8));
  auto img = hwc_u8.to(at::kCPU).contiguous();
  if (c.do_convert_rgb || img.size(2) != 3) img = convert_rgb_u8(img);
  if (trace) trace->rgb_u8 = img;

  if (c.do_resize) {
    const auto [h, w] = clip_resize_output_size(img.size(0), img.size(1), c.shortest_edge);
    img = pil_resize(img, h, w, c.resample);  // an unchanged size is a plain copy, as in PIL
  }
  if (trace) trace->resized_u8 = img;

  if (c.do_center_crop) {
    // transformers center_crop: floor offsets; a crop larger than the image pads it with zeros first.
    const int64_t H = img.size(0), W = img.size(1), ch = c.crop_height, cw = c.crop_width;
    int64_t top = floor_half(H - ch), left = floor_half(W - cw);
    int64_t bottom = top + ch, right = left + cw;
    if (top >= 0 && bottom <= H && left >= 0 && right <= W) {
      img = img.slice(0, top, bottom).slice(1, left, right).contiguous();
    } else {
      const int64_t NH = std::max(ch, H), NW = std::max(cw, W);
      auto padded = at::zeros({NH, NW, img.size(2)}, img.options());
      const int64_t top_pad = (NH - H) / 2, left_pad = (NW - W) / 2;
      padded.slice(0, top_pad, top_pad + H).slice(1, left_pad, left_pad + W).copy_(img);
      top += top_pad, bottom += top_pad, left += left_pad, right += left_pad;
      img = padded.slice(0, std::max<int64_t>(0, top), std::min(NH, bottom))
                .slice(1, std::max<int64_t>(0, left), std::min(NW, right))
                .contiguous();
    }
  }
  if (trace) trace->cropped_u8 = img;

  auto x = img.permute({2, 0, 1});  // CHW
  at::Tensor out;
  if (c.do_rescale)
    out = (x.to(at::kDouble) * c.rescale_factor).to(at::kFloat);  // numpy: u8 * float64, then astype(float32)
  else
    out = x.to(at::kFloat);
  if (c.do_normalize) {
    COLLAGE_CHECK(out.size(0) == 3, "normalisation needs 3 channels, got {}", out.size(0));
    auto mean = at::tensor(std::vector<float>(c.image_mean.begin(), c.image_mean.end())).view({3, 1, 1});
    auto stdev = at::tensor(std::vector<float>(c.image_std.begin(), c.image_std.end())).view({3, 1, 1});
    out = (out - mean) / stdev;  // float32, as numpy with float32 mean/std
  }
  return out.unsqueeze(0).contiguous();
}

at::Tensor ClipImageProcessor::preprocess(const at::Tensor& images01) const {
  COLLAGE_CHECK(images01.dim() == 3 || images01.dim() == 4,
                "expected a (C, H, W) image or a (B, C, H, W) batch in [0, 1], got shape {}", shape_of(images01));
  COLLAGE_CHECK(images01.is_floating_point(), "expected a float image in [0, 1], got {}",
                c10::toString(images01.scalar_type()));
  if (images01.dim() == 3) return preprocess_u8(float_image_to_u8(images01));
  std::vector<at::Tensor> outs;
  for (int64_t b = 0; b < images01.size(0); ++b) outs.push_back(preprocess_u8(float_image_to_u8(images01[b])));
  COLLAGE_CHECK(!outs.empty(), "empty image batch");
  return at::cat(outs, 0);
}

at::Tensor ClipImageProcessor::preprocess_files(const std::vector<std::string>& paths) const {
  COLLAGE_CHECK(!paths.empty(), "no image files given");
  std::vector<at::Tensor> outs;
  for (const auto& p : paths) {
    try {
      outs.push_back(preprocess_u8(read_image_u8(p)));
    } catch (const Error& e) {
      throw e.with_context(p);
    }
  }
  return at::cat(outs, 0);
}

}  // namespace collage
