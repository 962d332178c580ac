// The metrics wired to the project's real models and data ("metrics as plugins", integration part):
//
//  - ClipEmbedder: metrics::ImageTextEmbedder over collage::ClipModel + the exact ClipImageProcessor + the CLIP
//    BPE tokenizer (a transformers CLIPModel folder).
//  - LpipsDistance: metrics::PerceptualDistance over collage::Lpips (alex / vgg / squeeze).
//  - ShapesWorldSegmenter: metrics::Segmenter over the ShapesWorld analyser (datasets/shapesworld), registered as
//    "shapesworld"; "auto" picks it for collages whose object layers are ShapesWorld shapes.
//  - score_input_from_collage: a ScoreInput from a Collage and an output image.
//  - ModelSetup / score_with_setup: models that could not be loaded are reported as skipped with the reason
//    (e.g. the missing LPIPS backbone file), never replaced by a made-up number.
//
// See metrics/README.md, section "Plugins: real models, ShapesWorld segmenter, collages".
#pragma once

#include <ATen/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "metrics/metrics.h"
#include "nets/nets.h"
#include "models/models.h"

namespace collage {
struct Collage;
}

namespace collage::metrics {

// ------------------------------------------------------------------------------------------------
// CLIP

class ClipEmbedder : public ImageTextEmbedder {
 public:
  // `model_dir`: a transformers CLIPModel folder (config.json + model.safetensors). Tokenizer (vocab.json +
  // merges.txt): `tokenizer_dir` when given, else `model_dir` itself when it holds vocab.json, else
  // `model_dir`/tokenizer; missing: collage::Error naming the paths tried. Image preprocessing:
  // `model_dir`/preprocessor_config.json when present, else CLIPImageProcessor defaults with
  // shortest_edge = crop = the vision tower's image_size.
  static std::shared_ptr<ClipEmbedder> load(const std::string& model_dir, const std::string& tokenizer_dir = "");
  ClipEmbedder(ClipModel model, ClipTokenizer tokenizer, ClipImageProcessor processor);

  // (B, 3, H, W) float in [0, 1] -> (B, proj) unnormalised image features (exact CLIPImageProcessor first).
  at::Tensor embed_images(const at::Tensor& images) override;
  // texts -> (B, proj) unnormalised text features (padded to max_position_embeddings, truncated, SD1-style
  // attention mask = 1 up to and including the first eos).
  at::Tensor embed_texts(const std::vector<std::string>& texts) override;
  // Already preprocessed pixel_values (B, 3, S, S) -> (B, proj).
  at::Tensor embed_pixel_values(const at::Tensor& pixel_values);
  // The padded ids embed_texts feeds the text tower: (B, max_position_embeddings) int64.
  at::Tensor tokenize(const std::vector<std::string>& texts) const;

  ClipModel& model() { return model_; }
  const ClipImageProcessor& processor() const { return processor_; }

 private:
  ClipModel model_;
  ClipTokenizer tokenizer_;
  ClipImageProcessor processor_;
  int64_t max_length_ = 77;
};

// ------------------------------------------------------------------------------------------------
// LPIPS

class LpipsDistance : public PerceptualDistance {
 public:
  // `folder`/heads_<net>.safetensors + backbone_<torchvision name>.safetensors (the backbone in
  // `backbone_folder` when given). A missing file: collage::Error whose file() is that path.
  static std::shared_ptr<LpipsDistance> load(const std::string& folder, LpipsNet net = LpipsNet::Alex,
                                             const std::string& backbone_folder = "");
  explicit LpipsDistance(Lpips model) : model_(std::move(model)) {}

  // a, b (B, 3, H, W) in [0, 1] -> (B, 1, H, W): the LPIPS spatial map (normalize = true).
  at::Tensor distance_map(const at::Tensor& a, const at::Tensor& b) override;
  // The LPIPS distance (B, 1, 1, 1) of inputs in [0, 1].
  at::Tensor distance(const at::Tensor& a, const at::Tensor& b);

  Lpips& model() { return model_; }

 private:
  Lpips model_;
};

// ------------------------------------------------------------------------------------------------
// ShapesWorld segmenter

// The ShapesWorld colour named by a layer text ("striped red circle" -> "red"); "" when none (the last one wins
// when several are named: "a red ... blue star" phrases are not expected in layer texts).
std::string shapesworld_colour_of(const std::string& text);
// The ShapesWorld shape named by a text ("circle", "square", "triangle", "star"); "" when none.
std::string shapesworld_shape_of(const std::string& text);

// Analyses the output image once per prepare() (shapesworld::analyse_scene) and gives each layer the visible
// mask of the detected object of the layer text's colour that overlaps the layer's v_i the most
// (shapesworld::segment_near; "" colour = any object). Options (JSON): background, tint (the scene's, when known;
// default estimated from the image), min_area (0.005), threshold (0.15).
class ShapesWorldSegmenter : public Segmenter {
 public:
  explicit ShapesWorldSegmenter(const Json& options = Json::object());
  void prepare(const ScoreInput& input) override;
  at::Tensor segment_layer(const at::Tensor& image, const at::Tensor& layer_rgba, const at::Tensor& visible_mask,
                           int layer_index) override;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

// Adds "shapesworld" (above) to `registry`.
void register_plugin_segmenters(SegmenterRegistry& registry);
// A registry with the built-in segmenters ("appearance", "dnn") and the plugins ("shapesworld").
SegmenterRegistry all_segmenters();

// "auto": "shapesworld" when every object layer (the background layer excluded, see background_layer) has a text
// naming a ShapesWorld shape, else "appearance". Without layer texts: "appearance".
std::string auto_segmenter_name(const ScoreInput& input);
inline constexpr const char* kAutoSegmenterDescription =
    "shapesworld when every object layer's text names a ShapesWorld shape (circle, square, triangle, star), "
    "else appearance";

// ------------------------------------------------------------------------------------------------
// Collages

// ScoreInput of `image` (3, H, W) in [0, 1] against `collage`: layers = place_layers, visible_masks = v_i,
// collage = the flattened collage (over collage.background), layer_texts, prompt. The image must have the
// collage's canvas size (an Error naming both sizes otherwise); an alpha channel is dropped.
ScoreInput score_input_from_collage(const Collage& collage, const at::Tensor& image);

// ------------------------------------------------------------------------------------------------
// Models that may be missing

// The context of a scoring run plus why a model is absent (empty reason = not requested / not needed).
struct ModelSetup {
  ScoreContext context;
  std::string segmenter_name;        // what was created ("shapesworld", "appearance", ...)
  std::string embedder_skip_reason;  // e.g. "no CLIP model: assets/shapesworld/clip does not exist"
  std::string perceptual_skip_reason;
  std::string segmenter_skip_reason;
  std::string clip_dir, lpips_dir;   // the model folders load_metric_models used ("" = none)
};

// Loads LPIPS, or returns null and sets `reason` ("LPIPS alex weights missing: <file> does not exist").
std::shared_ptr<LpipsDistance> try_load_lpips(const std::string& folder, LpipsNet net, std::string& reason,
                                              const std::string& backbone_folder = "");
// Loads CLIP, or returns null and sets `reason`.
std::shared_ptr<ClipEmbedder> try_load_clip(const std::string& model_dir, const std::string& tokenizer_dir,
                                            std::string& reason);

// Where the metric models come from. An empty path falls back to the shipped asset (assets/shapesworld/clip,
// assets/lpips) and, with `reference_fallback`, then to the tiny reference models (tests/data/golden/{clip,lpips}).
struct MetricModelPaths {
  std::string clip, clip_tokenizer, lpips;
  LpipsNet lpips_net = LpipsNet::Alex;
  bool reference_fallback = false;
};
// Loads the CLIP and LPIPS models that `names` need. A model that is missing or fails to load leaves a skip reason
// instead of an error, so its metrics are recorded as skipped with that reason. The segmenter is not set here: it
// depends on each input (auto_segmenter_name).
ModelSetup load_metric_models(const std::vector<std::string>& names, const MetricModelPaths& paths,
                              const MetricRegistry& registry = builtin_metrics());

// score_image, then the metrics skipped for want of a model get the setup's reason for its absence instead of
// the generic "none was set".
Scores score_with_setup(const ScoreInput& input, const std::vector<std::string>& metric_names, const ModelSetup& setup,
                        const MetricRegistry& registry = builtin_metrics());

// The names of every per-image metric of `registry`, in registry order.
std::vector<std::string> per_image_metric_names(const MetricRegistry& registry = builtin_metrics());

}  // namespace collage::metrics
