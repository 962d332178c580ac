// Loading diffusers / transformers checkpoints into modules whose parameter names are the checkpoint keys.
#pragma once

#include <torch/nn/module.h>

#include <functional>
#include <set>
#include <string>
#include <vector>

namespace collage {

struct LoadOptions {
  // Keys a file may contain that the module does not have (e.g. transformers' position_ids buffer).
  std::set<std::string> ignorable_file_keys;
  // Module parameters/buffers a file may lack (they keep their initial values).
  std::set<std::string> optional_module_keys;
  // Maps a file key to the module key it loads into (legacy names, e.g. the VAE's old attention keys
  // query/key/value/proj_attn); unset = identity. ignorable_file_keys are matched before renaming.
  std::function<std::string(const std::string&)> rename_key;
};

// Copies every tensor of `files` (safetensors; several for sharded checkpoints) into the module's
// parameters and buffers, converting dtype (F16/BF16 -> the module's dtype) with a single copy from the
// memory-mapped file. Missing, unexpected and wrong-shaped keys are collected and reported together in one
// collage::Error that names the key, the file and both shapes.
void load_module_weights(torch::nn::Module& module, const std::vector<std::string>& files,
                         const LoadOptions& options = {});

// The weights file(s) of a diffusers component folder: `<stem>.safetensors`, or `<stem>.<variant>.safetensors`
// when variant is set (e.g. "fp16"), or the shards listed in `<stem>.safetensors.index.json`. `stems` are
// tried in order (e.g. {"diffusion_pytorch_model", "model"}). A folder with only .bin weights is an error that
// says how to convert them.
std::vector<std::string> find_weight_files(const std::string& folder, const std::vector<std::string>& stems,
                                           const std::string& variant = "");

}  // namespace collage
