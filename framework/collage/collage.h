// Collages: the input of every harmonisation method. A collage is a global text plus an ordered stack of
// RGBA layers (bottom to top), each placed on the canvas by a transform and tied to a span of the text.
// On disk: a folder with collage.json and the layer images (format in datasets/README.md).
#pragma once

#include <ATen/Tensor.h>

#include <array>
#include <optional>
#include <string>
#include <vector>

#include "core/core.h"

namespace collage {

class ClipTokenizer;

struct LayerTransform {
  double x = 0, y = 0;    // canvas position (pixels) of the scaled image's top-left corner
  double scale = 1;       // uniform scale of the layer image
  double rotation = 0;    // degrees, counter-clockwise as seen on screen, about the scaled image's centre
};

struct Layer {
  std::string name;                          // optional label (logs, records)
  std::string image;                         // path of the RGBA PNG, relative to the collage folder
  std::string text;                          // c_i: must occur verbatim in the collage text
  LayerTransform transform;
  std::vector<std::array<double, 2>> polygon;  // optional crop, in layer-image pixels (x, y); empty = none
  double w_pos = 0;                          // CA strength inside the layer ("cacStrength")
  double w_neg = 1;                          // CA suppression outside the layer ("negativeStrength")
  double noise_strength = 0.8;               // s_i: SDEdit strength of this layer's region
  double control_strength = 0;               // ControlNet strength in this layer's region ("cannyStrength")
  bool keep = false;                         // a fixed layer (editing: kept, not regenerated)
  std::string embedding;                     // optional learned TI embedding (.safetensors), relative path
  Json meta;                                 // free-form (e.g. ground truth from a dataset generator)

  at::Tensor rgba;                           // (4, h, w) float32 in [0, 1], the image as loaded
};

struct Collage {
  std::string file;                          // collage.json it was read from ("" when built in memory)
  std::string folder;                        // folder that relative paths resolve against
  std::string prompt;                        // c
  int64_t width = 512, height = 512;         // canvas
  std::array<double, 3> background{150.0 / 255, 150.0 / 255, 150.0 / 255};  // canvas under all layers
  std::vector<Layer> layers;                 // bottom (0) to top
  Json meta;

  // "collage.json: layers[2].text" style location for errors.
  std::string where() const { return file.empty() ? std::string("<collage>") : file; }
};

// Reads and validates DIR/collage.json (or a path to the json itself) and loads the layer images.
// Errors name the collage file and the field (e.g. "layers[1].noise_strength"): unknown fields, layer
// texts not in the prompt, missing or non-RGBA images, strengths outside [0, 1], bad sizes.
Collage load_collage(const std::string& path);
// Validates an in-memory collage (the checks of load_collage, images included).
void validate_collage(const Collage& collage);
// Writes collage.json and the layer images (layer_<i>.png unless a layer already names its image) into `folder`;
// an embedding file that lies elsewhere is copied in (layer_<i>_embedding.<ext>).
void save_collage(const Collage& collage, const std::string& folder);
Json collage_to_json(const Collage& collage);

// The collage folders of a dataset, in order: the "collages" list of DIR/index.json when present (paths
// relative to DIR), else every sub-folder holding a collage.json, sorted by name. Errors name the dataset.
std::vector<std::string> list_collages(const std::string& dataset_dir);

// A collage's own sampling settings (the authors' seed, numInferenceSteps, guidanceScale), kept in its meta
// by `import_demo_collages`; commands use them where the command line sets none. Only collages whose
// meta.generator is "import-demo" have them (a ShapesWorld collage's meta.seed is its dataset's seed).
struct SamplingDefaults {
  std::optional<uint64_t> seed;
  std::optional<int64_t> steps;
  std::optional<double> guidance_scale;
};
SamplingDefaults sampling_defaults(const Collage& collage);

// ---- The authors' demo format (datasets/README.md, "The authors' demo format") ------------------------

struct DemoImportOptions {
  std::string images_dir;  // where a URL's image is found, by the URL's last path segment (extension optional)
  std::string prompt;      // the collage text for a bare layer list; overrides the file's text when set
  int64_t size = 512;      // canvas side: the authors' 512, their geometry scaled with it
};

// Every collage of a file of the authors' demo: a list of examples [{"collage": {...}}, ...], one collage
// (request) {prompt or collagePrompt, layers, ...}, or a bare list of layer objects. Each layer is placed as
// their server places it (polygon mask and crop, resize, paste, rotation inside its box), baked into the
// layer image and an integer-pixel transform, so that place_layers() reproduces it. Errors name the file,
// the collage (index) and the layer; every collage is validated.
std::vector<Collage> import_demo_collages(const std::string& json_path, const DemoImportOptions& options = {});

// Writes collages as a dataset: DIR/<k>/ (collage.json + layer images) for the k-th and DIR/index.json
// listing them, with `index_info` merged into the index. Each folder is written under a temporary name and
// renamed into place, so an interrupted write leaves no half collage.
void save_collage_dataset(const std::vector<Collage>& collages, const std::string& dir, const Json& index_info = {});

// ---- Compositing -----------------------------------------------------------------------------------

// Each layer transformed onto the canvas: (L, 4, H, W), straight (not premultiplied) colour + alpha, with
// the polygon crop applied.
at::Tensor place_layers(const Collage& collage);
// One layer's canvas RGBA (4, H, W).
at::Tensor place_layer(const Layer& layer, int64_t height, int64_t width);
// Visible masks v_i = alpha_i * prod_{j>i} (1 - alpha_j): (L, H, W).
at::Tensor visible_masks(const at::Tensor& placed);
// Alpha "over", back to front, onto the background colour: (3, H, W). `up_to` < 0 = all layers, else
// layers 0..up_to only.
at::Tensor flatten_layers(const at::Tensor& placed, const std::array<double, 3>& background, int64_t up_to = -1);
at::Tensor flatten(const Collage& collage);

// Masks (L, H, W) averaged down to (L, h, w) (area resampling: each cell is the mean of the pixels it covers).
at::Tensor downsample_masks(const at::Tensor& masks, int64_t h, int64_t w);

// Area-downsampled masks for every attention resolution, computed on first use and cached.
class MaskPyramid {
 public:
  MaskPyramid() = default;
  explicit MaskPyramid(at::Tensor masks) : masks_(std::move(masks)) {}
  // (L, h, w) on `device`.
  const at::Tensor& at_size(int64_t h, int64_t w, const at::Device& device);
  const at::Tensor& full() const { return masks_; }
  bool defined() const { return masks_.defined(); }

 private:
  at::Tensor masks_;
  std::vector<std::pair<std::array<int64_t, 3>, at::Tensor>> cache_;  // (h, w, device index) -> masks
};

// Per-layer noise map (LN): N = sum_i v_i s_i + (1 - sum_i v_i) b, Gaussian-blurred with `blur_sigma_px`
// (< 0: the default 10 px at 512, scaled with the canvas' longer side; 0: no blur). (H, W) in [0, 1].
at::Tensor noise_map(const at::Tensor& visible, const std::vector<double>& strengths, double global_strength,
                     double blur_sigma_px = -1);
double default_blur_sigma(int64_t height, int64_t width);

// ---- Layer tokens ----------------------------------------------------------------------------------

// Positions (in the padded 77-token sequence, bos = 0) of each layer's text inside the tokenised prompt.
// A text occurring several times takes the first occurrence not already taken by an earlier layer. Errors
// (naming the layer) when a text is not a whole-token span of the prompt or lies beyond the token limit.
// Empty texts give no tokens.
std::vector<std::vector<int64_t>> layer_token_positions(const ClipTokenizer& tokenizer, const std::string& prompt,
                                                        const std::vector<std::string>& layer_texts,
                                                        const std::string& where = "");

}  // namespace collage
