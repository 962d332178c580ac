// Internal helpers shared by the two trainers (trainer.cpp: the diffusion model, clip_trainer.cpp: the sandbox
// CLIP). Not part of the module's public headers.
#pragma once

#include <ATen/core/ATen_fwd.h>
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/core.h"

namespace collage::training::detail {

inline uint64_t mix64(uint64_t x) {  // splitmix64 finaliser
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Cosine decay from 1 to a tenth as `progress` goes 0 -> 1 (clamped): both trainers' schedule after warm-up.
inline double cosine_to_tenth(double progress) {
  return 0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * std::min(1.0, progress)));
}

inline double wall() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline at::ScalarType dtype_of(const std::string& name, const std::string& file) {
  if (name == "float16" || name == "fp16") return at::kHalf;
  if (name == "float32" || name == "fp32") return at::kFloat;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  throw Error(fmt::format("unknown dtype '{}' (float16, float32, bfloat16)", name), file, "save_dtype");
}

inline void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream f(path);
  COLLAGE_CHECK_AT(f.good(), path.string(), "", "cannot write");
  f << text;
}

// Copies the tokenizer files of `source` into `dest` (vocab.json, merges.txt, special_tokens_map.json) and writes
// its tokenizer_config.json with model_max_length = the text encoder's length.
inline void export_tokenizer(const std::string& source, const std::filesystem::path& dest, int64_t max_length) {
  namespace fs = std::filesystem;
  for (const char* f : {"vocab.json", "merges.txt", "special_tokens_map.json"}) {
    const auto src = fs::path(source) / f;
    if (fs::exists(src)) fs::copy_file(src, dest / f, fs::copy_options::overwrite_existing);
  }
  Json tok;
  const auto tok_src = fs::path(source) / "tokenizer_config.json";
  if (fs::exists(tok_src)) tok = read_json_file(tok_src.string());
  tok["model_max_length"] = max_length;
  write_json_file((dest / "tokenizer_config.json").string(), tok);
}

// The keys both training configs share (same names, same meaning): seed, sizes, optimiser, budget, logging,
// export dtype, objects per scene, tokenizer. A checkout-relative tokenizer_source also resolves when the
// command runs from another folder (e.g. ctest's build/).
template <typename Config>
void read_shared_keys(JsonReader& r, Config& c) {
  c.seed = r.get<uint64_t>("seed", c.seed);
  c.image_size = r.get<int64_t>("image_size", c.image_size);
  c.batch_size = r.get<int64_t>("batch_size", c.batch_size);
  c.learning_rate = r.get<double>("learning_rate", c.learning_rate);
  c.warmup_steps = r.get<int64_t>("warmup_steps", c.warmup_steps);
  c.weight_decay = r.get<double>("weight_decay", c.weight_decay);
  c.adam_beta1 = r.get<double>("adam_beta1", c.adam_beta1);
  c.adam_beta2 = r.get<double>("adam_beta2", c.adam_beta2);
  c.adam_eps = r.get<double>("adam_eps", c.adam_eps);
  c.grad_clip = r.get<double>("grad_clip", c.grad_clip);
  c.max_steps = r.get<int64_t>("max_steps", c.max_steps);
  c.max_minutes = r.get<double>("max_minutes", c.max_minutes);
  c.log_every = r.get<int64_t>("log_every", c.log_every);
  c.save_dtype = r.get<std::string>("save_dtype", c.save_dtype);
  dtype_of(c.save_dtype, r.file());
  c.min_objects = r.get<int>("min_objects", c.min_objects);
  c.max_objects = r.get<int>("max_objects", c.max_objects);
  c.tokenizer_source = r.get<std::string>("tokenizer_source", c.tokenizer_source);
  if (!std::filesystem::exists(c.tokenizer_source)) {
    const auto found = find_in_checkout(c.tokenizer_source, "vocab.json");
    COLLAGE_CHECK_AT(!found.empty(), r.file(), "tokenizer_source",
                     "'{}' not found (a folder with vocab.json, merges.txt)", c.tokenizer_source);
    c.tokenizer_source = found;
  }
}

}  // namespace collage::training::detail
