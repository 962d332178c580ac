// Collage dataset generators. A dataset is a folder of collage folders (collage.json + layer PNGs, see
// datasets/README.md) plus an index.json naming them in order, with the generator's settings.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "collage/collage.h"
#include "core/core.h"

namespace collage::datasets {

struct ShapesWorldCollageOptions {
  int size = 64;                  // canvas side
  int min_objects = 1, max_objects = 3;
  double noise_strength = 0.8;    // s_i written into every layer (the runner may override)
  double unnamed_probability = 0.5;  // chance a striped / dotted object's pattern is left out of its text
  // Chance an object's colour is left out of its text ("a square"): an unnamed appearance the model can draw,
  // a positive control for TI next to patterns and shades. 0 keeps the collages as without it.
  double unnamed_colour_probability = 0;
  // >= 0: one object layer per collage (drawn at random) is the "kept" layer: its noise_strength is this value
  // and its meta has "kept": true (what per-layer noise is for: keep one object, harmonise the rest).
  // < 0: none. Drawn from a stream of its own, so the collages are otherwise the same as without it.
  double kept_strength = -1;
  // CA strength inside each layer (the layers' "w_pos", the authors' "cacStrength"), written into every layer.
  // 1 by default: measured on the embedded model, CA with w_pos 1 gains about twice the mask IoU of
  // suppression alone (w_pos 0, the authors' UI default): +0.157 against +0.083 (docs/results.md). 0 reproduces collages generated before.
  double w_pos = 1;
  uint64_t seed = 0;
};

// One collage whose layers are objects cut from OTHER scenes (other light, other tint, no shadow), stacked
// on the background of yet another scene, placed where a target scene has them. The target scene (its
// caption, light, tint and objects) is the ground truth; each layer's meta records its object (shape,
// colour, pattern, shade), what its text leaves unnamed ("unnamed_pattern", "unnamed_shade", "unnamed_colour",
// and any of them: "unnamed_appearance") and whether it is the kept layer ("kept"); the collage's meta records the target
// scene. Deterministic in `index` and options.seed.
Collage make_shapesworld_collage(uint64_t index, const ShapesWorldCollageOptions& options);

// Writes `n` collages to out/collage_00000/... and out/index.json; returns the collage folders.
std::vector<std::string> make_shapesworld_dataset(int64_t n, const ShapesWorldCollageOptions& options,
                                                  const std::string& out);

// A rendered ShapesWorld scene (2-3 objects) as a collage: the background layer plus one layer per object, placed
// as rendered, with the full caption; and the render itself (shadows included) as an "output" to score against it.
std::pair<Collage, at::Tensor> rendered_scene_collage(uint64_t seed, int size);

}  // namespace collage::datasets
