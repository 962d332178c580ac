// CLIP for the metrics (transformers 4.33 modeling_clip): the vision tower (CLIPVisionModelWithProjection), the
// full CLIPModel (text tower = collage::ClipTextModel, vision tower, both projections, logit_scale) and the exact
// CLIPImageProcessor preprocessing (PIL 9.4 fixed-point bicubic resize included).
//
// Parameter names are the checkpoint keys (`vision_model.encoder.layers.0.self_attn.q_proj.weight`,
// `text_projection.weight`, `logit_scale`, ...), so loading is a lookup. The `*.embeddings.position_ids` buffers
// that older transformers versions saved are accepted and ignored.
//
// Images for the metrics: float (C, H, W) tensors in [0, 1] are first turned into uint8 exactly as
// collage::write_image does (clamp to [0, 1], * 255, round half to even), so preprocessing a tensor equals
// preprocessing the PNG written from it; PNG files are decoded straight to uint8. From uint8 on, every step is the
// reference arithmetic (bit-exact on the golden data).
#pragma once

#include <ATen/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <array>
#include <string>
#include <vector>

#include "core/core.h"
#include "models/models.h"

namespace collage {

// ---------------------------------------------------------------------------------------------------------------
// Configs

// transformers CLIPVisionConfig (defaults as in 4.33 = openai/clip-vit-base-patch32).
struct ClipVisionConfig {
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t projection_dim = 512;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t num_channels = 3;
  int64_t image_size = 224;
  int64_t patch_size = 32;
  std::string hidden_act = "quick_gelu";
  double layer_norm_eps = 1e-5;
  std::vector<std::string> unknown_keys;  // keys neither read nor known to be irrelevant

  // A CLIPVisionModel[WithProjection] config.json: the architecture sizes are required (save_pretrained writes
  // them); a CLIPModel config.json (model_type "clip") is also accepted: its vision_config is read with defaults
  // and the top-level projection_dim is used (the size of CLIPModel's visual_projection).
  static ClipVisionConfig from_json_file(const std::string& path);
  // `fill_defaults` = true gives every missing key its CLIPVisionConfig default (the `vision_config` sub-dict of
  // a CLIPModel config.json is stored as differences from the defaults). Errors name file and prefix + key.
  static ClipVisionConfig from_json(const Json& object, const std::string& file, const std::string& prefix = {},
                                    bool fill_defaults = false);

  int64_t grid() const { return image_size / patch_size; }
  int64_t num_positions() const { return grid() * grid() + 1; }  // patches + CLS
  ClipEncoderOptions encoder_options() const;
};

// transformers CLIPConfig (a CLIPModel's config.json): the sub-configs with their defaults filled in exactly as
// CLIPConfig does (legacy `text_config_dict` / `vision_config_dict` override `text_config` / `vision_config`).
struct ClipConfig {
  ClipTextConfig text;
  ClipVisionConfig vision;
  int64_t projection_dim = 512;
  double logit_scale_init_value = 2.6592;  // documentation only: the checkpoint's logit_scale is used
  std::vector<std::string> unknown_keys;   // top-level, "text_config.x" and "vision_config.x"

  static ClipConfig from_json_file(const std::string& path);
  static ClipConfig from_json(const Json& object, const std::string& file);
};

// ---------------------------------------------------------------------------------------------------------------
// Vision tower

struct ClipVisionOutput {
  at::Tensor embeddings;                  // (B, N+1, D): cat(CLS, patches) + positions, before pre_layrnorm
  std::vector<at::Tensor> hidden_states;  // pre_layrnorm(embeddings), then every layer (when requested)
  at::Tensor last_hidden_state;           // (B, N+1, D), no final LayerNorm over the sequence
  at::Tensor pooler_output;               // (B, D) = post_layernorm(last_hidden_state[:, 0])
  at::Tensor image_embeds;                // (B, projection_dim) = visual_projection(pooler_output), unnormalised
                                          // (only from ClipVisionModelWithProjection / ClipModel)
};

class ClipVisionEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit ClipVisionEmbeddingsImpl(const ClipVisionConfig& config);
  // pixel_values (B, C, image_size, image_size) -> (B, N+1, D).
  at::Tensor forward(const at::Tensor& pixel_values);

  at::Tensor class_embedding;  // (D)
  torch::nn::Conv2d patch_embedding{nullptr};  // (D, C, P, P), stride P, no bias
  torch::nn::Embedding position_embedding{nullptr};  // (N+1, D)

 private:
  int64_t image_size_, num_channels_;
};
TORCH_MODULE(ClipVisionEmbeddings);

// transformers CLIPVisionTransformer (the `vision_model.` prefix).
class ClipVisionTransformerImpl : public torch::nn::Module {
 public:
  explicit ClipVisionTransformerImpl(const ClipVisionConfig& config);
  // Everything except image_embeds.
  ClipVisionOutput forward(const at::Tensor& pixel_values, bool output_hidden_states = false);

  ClipVisionEmbeddings embeddings{nullptr};
  torch::nn::LayerNorm pre_layrnorm{nullptr};  // (sic) the checkpoint's name
  ClipEncoder encoder{nullptr};
  torch::nn::LayerNorm post_layernorm{nullptr};
};
TORCH_MODULE(ClipVisionTransformer);

class ClipVisionModelWithProjection;

// transformers CLIPVisionModelWithProjection: `vision_model.*` + `visual_projection.weight` (no bias).
class ClipVisionModelWithProjectionImpl : public torch::nn::Module {
 public:
  explicit ClipVisionModelWithProjectionImpl(const ClipVisionConfig& config);

  // pixel_values (B, C, image_size, image_size) (moved to the model's device and dtype).
  ClipVisionOutput forward(const at::Tensor& pixel_values, bool output_hidden_states = false);
  // visual_projection(pooler_output), not normalised (= transformers' image_embeds / get_image_features).
  at::Tensor get_image_features(const at::Tensor& pixel_values);

  const ClipVisionConfig& config() const { return config_; }

  // Loads `folder`/config.json and model.safetensors (or shards). The folder may also be a CLIPModel folder: the
  // text tower's keys are then skipped. Parameters are frozen; the model is in eval mode.
  static ClipVisionModelWithProjection load(const std::string& folder, const std::string& variant = "");

  ClipVisionTransformer vision_model{nullptr};
  torch::nn::Linear visual_projection{nullptr};

 private:
  ClipVisionConfig config_;
};
TORCH_MODULE(ClipVisionModelWithProjection);

// ---------------------------------------------------------------------------------------------------------------
// Full CLIPModel

struct ClipOutput {
  at::Tensor text_embeds;          // (T, proj) L2-normalised
  at::Tensor image_embeds;         // (I, proj) L2-normalised
  at::Tensor logits_per_text;      // (T, I) = text_embeds @ image_embeds^T * exp(logit_scale)
  at::Tensor logits_per_image;     // (I, T) = logits_per_text^T
  ClipTextOutput text_output;      // last_hidden_state, pooler_output
  ClipVisionOutput vision_output;  // last_hidden_state, pooler_output, image_embeds (unnormalised)
};

class ClipModel;

class ClipModelImpl : public torch::nn::Module {
 public:
  explicit ClipModelImpl(const ClipConfig& config);

  // Text features: text_projection(pooled eos state) (T, proj), unnormalised (= get_text_features). input_ids
  // (T, L) int64; attention_mask (T, L) optional (only changes the hidden states after the first eos, never the
  // pooled state).
  at::Tensor get_text_features(const at::Tensor& input_ids, const at::Tensor& attention_mask = {});
  // Image features: visual_projection(post_layernorm(CLS)) (I, proj), unnormalised (= get_image_features).
  at::Tensor get_image_features(const at::Tensor& pixel_values);
  // CLIPModel.forward: both towers, normalised embeddings and logits.
  ClipOutput forward(const at::Tensor& input_ids, const at::Tensor& pixel_values,
                     const at::Tensor& attention_mask = {});
  // exp(logit_scale) (0-dim).
  at::Tensor logit_scale_exp();

  const ClipConfig& config() const { return config_; }
  // The towers (they share their parameters with this module).
  ClipTextModel& text_tower() { return text_; }
  ClipVisionModelWithProjection& vision_tower() { return vision_; }

  // Loads `folder`/config.json and model.safetensors (or shards); frozen, eval mode.
  static ClipModel load(const std::string& folder, const std::string& variant = "");

  // Registered children (checkpoint names): text_model, vision_model, text_projection, visual_projection and the
  // 0-dim parameter logit_scale.
  torch::nn::Linear text_projection{nullptr};
  at::Tensor logit_scale;

 private:
  ClipConfig config_;
  ClipTextModel text_{nullptr};
  ClipVisionModelWithProjection vision_{nullptr};
};
TORCH_MODULE(ClipModel);

// x / ||x||_2 along the last dimension (transformers: `x / x.norm(p=2, dim=-1, keepdim=True)`, no epsilon).
at::Tensor clip_l2_normalize(const at::Tensor& x);
// Row-wise 100 * cos(image_embeds[i], text_embeds[i]) of two (N, proj) tensors (normalised here), unclamped: the
// per-pair quantity of the CLIP score (torchmetrics' `_clip_score_update`).
at::Tensor clip_cos100(const at::Tensor& image_embeds, const at::Tensor& text_embeds);
// The attention_mask a transformers CLIP tokenizer returns for padded ids: 1 up to and including the first
// `eos_token_id` of each row, 0 after it (all ones when a row has no eos). Works for SD1 (pad = eos) and SD2
// (pad "!") padding alike.
at::Tensor clip_attention_mask_from_ids(const at::Tensor& input_ids, int64_t eos_token_id = 49407);

// ---------------------------------------------------------------------------------------------------------------
// Image preprocessing (transformers 4.33 CLIPImageProcessor)

// PIL resampling filters (Image.Resampling values). Only the antialiased convolution filters are supported.
enum class PilFilter { Lanczos = 1, Bilinear = 2, Bicubic = 3, Box = 4, Hamming = 5 };

// Pillow 9.4 `Image.resize((out_w, out_h), filter)` of an 8-bit image, bit-exact: separable fixed-point
// convolution (22 fractional bits), horizontal pass first (only when the width changes), a uint8 intermediate,
// then the vertical pass (only when the height changes). hwc: (H, W, C) uint8 (any C; channels are independent).
at::Tensor pil_resize(const at::Tensor& hwc, int64_t out_h, int64_t out_w, PilFilter filter = PilFilter::Bicubic);

// preprocessor_config.json of a CLIPImageProcessor (also the older CLIPFeatureExtractor files).
struct ClipImageProcessorConfig {
  bool do_resize = true;
  int64_t shortest_edge = 224;  // `size`: an int or {"shortest_edge": n}
  PilFilter resample = PilFilter::Bicubic;
  bool do_center_crop = true;
  int64_t crop_height = 224, crop_width = 224;  // `crop_size`: an int or {"height": h, "width": w}
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  std::array<double, 3> image_mean = {0.48145466, 0.4578275, 0.40821073};
  std::array<double, 3> image_std = {0.26862954, 0.26130258, 0.27577711};
  bool do_convert_rgb = true;
  std::vector<std::string> unknown_keys;

  static ClipImageProcessorConfig from_json_file(const std::string& path);
  static ClipImageProcessorConfig from_json(const Json& object, const std::string& file);
};

// Output size of the shortest-edge resize (transformers get_resize_output_image_size, default_to_square=False):
// short side -> `shortest_edge`, long side -> int(shortest_edge * long / short) (float64, truncated).
std::pair<int64_t, int64_t> clip_resize_output_size(int64_t height, int64_t width, int64_t shortest_edge);

// The intermediate results of one image (for tests and debugging).
struct ClipPreprocessTrace {
  at::Tensor rgb_u8;      // (H, W, 3) after convert("RGB")
  at::Tensor resized_u8;  // after the resize (== rgb_u8 when do_resize is false)
  at::Tensor cropped_u8;  // after the centre crop
};

class ClipImageProcessor {
 public:
  ClipImageProcessor() = default;  // CLIPImageProcessor() defaults = openai CLIP at 224
  explicit ClipImageProcessor(ClipImageProcessorConfig config) : config_(std::move(config)) {}
  // `folder`/preprocessor_config.json.
  static ClipImageProcessor from_folder(const std::string& folder);

  // One uint8 image (H, W, C) with C = 1 (L), 3 (RGB) or 4 (RGBA: alpha dropped, not composited) ->
  // pixel_values (1, 3, crop_h, crop_w) float32: RGB -> resize -> centre crop (floor offsets, zero padding when
  // the crop is larger, as transformers) -> rescale (float64 product, rounded to float32) -> normalise (float32).
  at::Tensor preprocess_u8(const at::Tensor& hwc_u8, ClipPreprocessTrace* trace = nullptr) const;
  // Float images in [0, 1]: (C, H, W) or a batch (B, C, H, W), C in {1, 3, 4}; converted to uint8 by
  // clamp(0, 1) * 255 and round (half to even), as collage::write_image. Returns (B, 3, crop_h, crop_w).
  at::Tensor preprocess(const at::Tensor& images01) const;
  // Image files (PNG/JPEG, 8-bit) decoded straight to uint8 (no float round trip). Returns (n, 3, crop_h, crop_w).
  at::Tensor preprocess_files(const std::vector<std::string>& paths) const;

  const ClipImageProcessorConfig& config() const { return config_; }

 private:
  ClipImageProcessorConfig config_;
};

// Decodes an 8-bit image file to uint8 (H, W, C) with C = 1, 3 (RGB order) or 4 (RGBA); errors name the path.
at::Tensor read_image_u8(const std::string& path);
// PIL convert("RGB") of a uint8 (H, W, C) image: L -> R = G = B, RGBA -> alpha dropped, RGB unchanged.
at::Tensor convert_rgb_u8(const at::Tensor& hwc_u8);
// A float (C, H, W) image in [0, 1] -> uint8 (H, W, C): clamp(0, 1), * 255, round half to even.
at::Tensor float_image_to_u8(const at::Tensor& chw01);

}  // namespace collage
