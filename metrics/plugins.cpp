// Adapters from the metric interfaces to the real networks, the ShapesWorld segmenter plugin and the collage
// helpers (see plugins.h).
#include "metrics/plugins.h"

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <cctype>
#include <filesystem>
#include <set>

#include "collage/collage.h"
#include "core/core.h"
#include "datasets/shapesworld/shapesworld.h"

namespace fs = std::filesystem;

namespace collage::metrics {

// ------------------------------------------------------------------------------------------------
// CLIP

namespace {

std::string find_tokenizer_dir(const std::string& model_dir, const std::string& tokenizer_dir) {
  if (!tokenizer_dir.empty()) {
    COLLAGE_CHECK_AT(fs::exists(fs::path(tokenizer_dir) / "vocab.json"), (fs::path(tokenizer_dir) / "vocab.json").string(),
                     "", "CLIP tokenizer vocabulary not found (the tokenizer folder needs vocab.json and merges.txt)");
    return tokenizer_dir;
  }
  std::vector<fs::path> tried{fs::path(model_dir), fs::path(model_dir) / "tokenizer"};
  for (const auto& dir : tried)
    if (fs::exists(dir / "vocab.json")) return dir.string();
  throw Error(fmt::format("no CLIP tokenizer found: neither {} nor {} exists; give the tokenizer folder "
                          "(vocab.json + merges.txt) explicitly",
                          (tried[0] / "vocab.json").string(), (tried[1] / "vocab.json").string()),
              model_dir);
}

ClipImageProcessor processor_for(const std::string& model_dir, const ClipConfig& config) {
  if (fs::exists(fs::path(model_dir) / "preprocessor_config.json")) return ClipImageProcessor::from_folder(model_dir);
  ClipImageProcessorConfig c;
  c.shortest_edge = config.vision.image_size;
  c.crop_height = c.crop_width = config.vision.image_size;
  return ClipImageProcessor(c);
}

}  // namespace

ClipEmbedder::ClipEmbedder(ClipModel model, ClipTokenizer tokenizer, ClipImageProcessor processor)
    : model_(std::move(model)), tokenizer_(std::move(tokenizer)), processor_(std::move(processor)) {
  max_length_ = model_->config().text.max_position_embeddings;
}

std::shared_ptr<ClipEmbedder> ClipEmbedder::load(const std::string& model_dir, const std::string& tokenizer_dir) {
  COLLAGE_CHECK_AT(fs::exists(fs::path(model_dir) / "config.json"), (fs::path(model_dir) / "config.json").string(), "",
                   "CLIP model config not found (expected a transformers CLIPModel folder)");
  const std::string tok_dir = find_tokenizer_dir(model_dir, tokenizer_dir);
  auto model = ClipModelImpl::load(model_dir);
  auto tokenizer = ClipTokenizer::from_folder(tok_dir);
  auto processor = processor_for(model_dir, model->config());
  return std::make_shared<ClipEmbedder>(std::move(model), std::move(tokenizer), std::move(processor));
}

at::Tensor ClipEmbedder::tokenize(const std::vector<std::string>& texts) const {
  std::vector<int64_t> flat;
  flat.reserve(texts.size() * static_cast<size_t>(max_length_));
  for (const auto& t : texts) {
    auto ids = tokenizer_.encode_padded(t, max_length_);
    flat.insert(flat.end(), ids.begin(), ids.end());
  }
  return torch::tensor(flat, torch::kLong).reshape({static_cast<int64_t>(texts.size()), max_length_});
}

at::Tensor ClipEmbedder::embed_pixel_values(const at::Tensor& pixel_values) {
  torch::NoGradGuard no_grad;
  return model_->get_image_features(pixel_values).to(at::kCPU, at::kFloat);
}

at::Tensor ClipEmbedder::embed_images(const at::Tensor& images) {
  COLLAGE_CHECK(images.dim() == 4 || images.dim() == 3, "ClipEmbedder: expected (B, C, H, W) images, got {}",
                fmt::join(images.sizes(), "x"));
  auto px = processor_.preprocess(images.detach().to(at::kCPU, at::kFloat));
  return embed_pixel_values(px);
}

at::Tensor ClipEmbedder::embed_texts(const std::vector<std::string>& texts) {
  torch::NoGradGuard no_grad;
  auto ids = tokenize(texts);
  auto mask = clip_attention_mask_from_ids(ids, tokenizer_.eos_id());
  return model_->get_text_features(ids, mask).to(at::kCPU, at::kFloat);
}

// ------------------------------------------------------------------------------------------------
// LPIPS

std::shared_ptr<LpipsDistance> LpipsDistance::load(const std::string& folder, LpipsNet net,
                                                   const std::string& backbone_folder) {
  return std::make_shared<LpipsDistance>(LpipsImpl::load_folder(folder, net, backbone_folder));
}

at::Tensor LpipsDistance::distance_map(const at::Tensor& a, const at::Tensor& b) {
  torch::NoGradGuard no_grad;
  return model_->spatial_map(a.to(at::kFloat), b.to(at::kFloat), /*normalize=*/true).to(at::kCPU, at::kFloat);
}

at::Tensor LpipsDistance::distance(const at::Tensor& a, const at::Tensor& b) {
  torch::NoGradGuard no_grad;
  return model_->distance(a.to(at::kFloat), b.to(at::kFloat), /*normalize=*/true).to(at::kCPU, at::kFloat);
}

// ------------------------------------------------------------------------------------------------
// ShapesWorld segmenter

namespace {

std::vector<std::string> words_of(const std::string& text) {
  std::vector<std::string> words;
  std::string cur;
  for (char ch : text) {
    if (std::isalpha(static_cast<unsigned char>(ch))) {
      cur += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    } else if (!cur.empty()) {
      words.push_back(cur);
      cur.clear();
    }
  }
  if (!cur.empty()) words.push_back(cur);
  return words;
}

std::string last_word_in(const std::string& text, const std::vector<std::string>& vocabulary) {
  std::string found;
  for (const auto& w : words_of(text)) {
    for (const auto& v : vocabulary)
      if (w == v || w == v + "s") found = v;
  }
  return found;
}

}  // namespace

std::string shapesworld_colour_of(const std::string& text) { return last_word_in(text, shapesworld::colour_names()); }
std::string shapesworld_shape_of(const std::string& text) { return last_word_in(text, shapesworld::shape_names()); }

struct ShapesWorldSegmenter::State {
  shapesworld::AnalyseOptions options;
  std::vector<shapesworld::Detection> detections;
  std::vector<std::string> colours;  // per layer
  const void* prepared_for = nullptr;  // data pointer of the analysed image
};

ShapesWorldSegmenter::ShapesWorldSegmenter(const Json& options) : state_(std::make_shared<State>()) {
  COLLAGE_CHECK(options.is_object() || options.is_null(), "shapesworld segmenter: options must be a JSON object");
  if (options.is_object()) {
    for (auto it = options.begin(); it != options.end(); ++it) {
      const std::string& key = it.key();
      if (key == "background") {
        state_->options.background = it.value().get<std::string>();
      } else if (key == "tint") {
        state_->options.tint = it.value().get<std::string>();
      } else if (key == "min_area") {
        state_->options.min_area = it.value().get<double>();
      } else if (key == "threshold") {
        state_->options.threshold = it.value().get<double>();
      } else {
        throw Error(fmt::format("shapesworld segmenter: unknown option '{}' (known: background, tint, min_area, threshold)",
                                key),
                    "", key);
      }
    }
  }
  state_->options.classify_pattern = false;  // not needed for masks
}

void ShapesWorldSegmenter::prepare(const ScoreInput& input) {
  state_->detections = shapesworld::analyse_scene(input.image.detach().to(at::kCPU, at::kFloat), state_->options).objects;
  state_->prepared_for = input.image.data_ptr();
  state_->colours.clear();
  for (const auto& t : input.layer_texts) state_->colours.push_back(shapesworld_colour_of(t));
}

at::Tensor ShapesWorldSegmenter::segment_layer(const at::Tensor& image, const at::Tensor& layer_rgba,
                                               const at::Tensor& visible_mask, int layer_index) {
  if (state_->prepared_for != image.data_ptr()) {
    // Called without prepare (or for another image): analyse now; the colour comes from nothing then.
    state_->detections = shapesworld::analyse_scene(image.detach().to(at::kCPU, at::kFloat), state_->options).objects;
    state_->prepared_for = image.data_ptr();
    state_->colours.clear();
  }
  const std::string colour =
      layer_index >= 0 && static_cast<size_t>(layer_index) < state_->colours.size() ? state_->colours[layer_index] : "";
  return shapesworld::segment_near(state_->detections, visible_mask, colour);
}

void register_plugin_segmenters(SegmenterRegistry& registry) {
  registry.add("shapesworld",
               "ShapesWorld analyser (datasets/shapesworld): the detected object of the layer text's colour "
               "(\"red circle\" -> red) overlapping v_i the most. Options: background, tint, min_area, threshold",
               [](const Json& options) { return std::make_unique<ShapesWorldSegmenter>(options); });
}

SegmenterRegistry all_segmenters() {
  SegmenterRegistry r;
  register_builtin_segmenters(r);
  register_plugin_segmenters(r);
  return r;
}

std::string auto_segmenter_name(const ScoreInput& input) {
  if (input.layer_texts.empty()) return "appearance";
  const int bg = input.layers.defined() ? background_layer(input) : -1;
  bool any = false;
  for (size_t i = 0; i < input.layer_texts.size(); ++i) {
    if (static_cast<int>(i) == bg) continue;
    if (shapesworld_shape_of(input.layer_texts[i]).empty()) return "appearance";
    any = true;
  }
  return any ? "shapesworld" : "appearance";
}

// ------------------------------------------------------------------------------------------------
// Collages

ScoreInput score_input_from_collage(const Collage& collage, const at::Tensor& image) {
  COLLAGE_CHECK(image.defined() && image.dim() == 3 && (image.size(0) == 3 || image.size(0) == 4),
                "score: expected a (3, H, W) image");
  COLLAGE_CHECK_AT(image.size(1) == collage.height && image.size(2) == collage.width, collage.where(), "",
                   "the image is {}x{} (W x H) but the collage canvas is {}x{}", image.size(2), image.size(1),
                   collage.width, collage.height);
  ScoreInput in;
  in.image = image.slice(0, 0, 3).to(at::kCPU, at::kFloat).contiguous();
  in.layers = place_layers(collage).to(at::kCPU, at::kFloat).contiguous();
  in.visible_masks = visible_masks(in.layers).contiguous();
  in.collage = flatten_layers(in.layers, collage.background).to(at::kCPU, at::kFloat).contiguous();
  for (const auto& l : collage.layers) in.layer_texts.push_back(l.text);
  in.prompt = collage.prompt;
  return in;
}

// ------------------------------------------------------------------------------------------------
// Models that may be missing

std::shared_ptr<LpipsDistance> try_load_lpips(const std::string& folder, LpipsNet net, std::string& reason,
                                              const std::string& backbone_folder) {
  reason.clear();
  try {
    return LpipsDistance::load(folder, net, backbone_folder);
  } catch (const Error& e) {
    if (!e.file().empty() && !fs::exists(e.file()))
      reason = fmt::format("LPIPS ({}) weights missing: {} does not exist", lpips_net_name(net), e.file());
    else
      reason = fmt::format("LPIPS ({}) could not be loaded: {}", lpips_net_name(net), e.what());
    return nullptr;
  }
}

std::shared_ptr<ClipEmbedder> try_load_clip(const std::string& model_dir, const std::string& tokenizer_dir,
                                            std::string& reason) {
  reason.clear();
  try {
    return ClipEmbedder::load(model_dir, tokenizer_dir);
  } catch (const Error& e) {
    reason = fmt::format("CLIP model could not be loaded: {}", e.what());
    return nullptr;
  }
}

namespace {

bool any_needs(const std::vector<std::string>& names, Need need, const MetricRegistry& registry) {
  for (const auto& n : names)
    if (registry.info(n).needs.has(need)) return true;
  return false;
}

}  // namespace

ModelSetup load_metric_models(const std::vector<std::string>& names, const MetricModelPaths& paths,
                              const MetricRegistry& registry) {
  ModelSetup setup;
  if (any_needs(names, Need::embedder, registry)) {
    std::string dir = paths.clip, tok = paths.clip_tokenizer;
    if (dir.empty()) dir = find_in_checkout("assets/shapesworld/clip", "config.json");
    if (dir.empty() && paths.reference_fallback) {
      dir = find_in_checkout("tests/data/golden/clip", "config.json");
      tok = find_in_checkout("tests/data/golden/tokenizer", "vocab.json");
    }
    if (dir.empty())
      setup.embedder_skip_reason = "no CLIP model: none given and assets/shapesworld/clip does not exist";
    else
      setup.context.embedder = try_load_clip(dir, tok, setup.embedder_skip_reason);
    setup.clip_dir = dir;
  }
  if (any_needs(names, Need::perceptual, registry)) {
    std::string dir = paths.lpips;
    if (dir.empty()) dir = find_in_checkout("assets/lpips", "");
    if (!dir.empty() && !fs::is_directory(dir)) dir.clear();
    if (dir.empty() && paths.reference_fallback)
      dir = find_in_checkout("tests/data/golden/lpips", "heads_alex.safetensors");
    if (dir.empty())
      setup.perceptual_skip_reason = "no LPIPS weights: none given and assets/lpips does not exist";
    else
      setup.context.perceptual = try_load_lpips(dir, paths.lpips_net, setup.perceptual_skip_reason);
    setup.lpips_dir = dir;
  }
  return setup;
}

Scores score_with_setup(const ScoreInput& input, const std::vector<std::string>& metric_names, const ModelSetup& setup,
                        const MetricRegistry& registry) {
  Scores scores = score_image(input, metric_names, setup.context, registry);
  for (auto& [name, value] : scores) {
    if (!value.skipped) continue;
    const Needs& needs = registry.info(name).needs;
    // Only replace the "none was set" reasons (a missing input, e.g. no prompt, keeps its own).
    if (needs.has(Need::perceptual) && !setup.context.perceptual && !setup.perceptual_skip_reason.empty() &&
        value.skip_reason.find("ScoreContext::perceptual") != std::string::npos)
      value.skip_reason = setup.perceptual_skip_reason;
    if (needs.has(Need::embedder) && !setup.context.embedder && !setup.embedder_skip_reason.empty() &&
        value.skip_reason.find("ScoreContext::embedder") != std::string::npos)
      value.skip_reason = setup.embedder_skip_reason;
    if (needs.has(Need::segmenter) && !setup.context.segmenter && !setup.segmenter_skip_reason.empty() &&
        value.skip_reason.find("ScoreContext::segmenter") != std::string::npos)
      value.skip_reason = setup.segmenter_skip_reason;
  }
  return scores;
}

std::vector<std::string> per_image_metric_names(const MetricRegistry& registry) {
  std::vector<std::string> out;
  for (const auto& n : registry.names())
    if (registry.info(n).kind == MetricKind::per_image) out.push_back(n);
  return out;
}

}  // namespace collage::metrics
