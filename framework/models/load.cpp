#include "models/load.h"

#include <torch/torch.h>

#include <filesystem>
#include <map>

#include "core/core.h"

namespace fs = std::filesystem;

namespace collage {

namespace {
std::string shape_str(at::IntArrayRef s) { return "[" + fmt::format("{}", fmt::join(s, ",")) + "]"; }
}  // namespace

void load_module_weights(torch::nn::Module& module, const std::vector<std::string>& files,
                         const LoadOptions& options) {
  COLLAGE_CHECK(!files.empty(), "no weight files given");
  std::map<std::string, at::Tensor> targets;
  for (const auto& p : module.named_parameters(true)) targets[p.key()] = p.value();
  for (const auto& b : module.named_buffers(true)) targets[b.key()] = b.value();

  std::set<std::string> seen;
  std::vector<std::string> problems;
  torch::NoGradGuard no_grad;
  for (const auto& path : files) {
    auto file = SafetensorsFile::open(path);
    for (const auto& file_key : file->names()) {
      if (options.ignorable_file_keys.count(file_key)) continue;
      const std::string name = options.rename_key ? options.rename_key(file_key) : file_key;
      auto it = targets.find(name);
      if (it == targets.end()) {
        problems.push_back(fmt::format("{}: unexpected key '{}' (shape {}) not in the model", path, file_key,
                                       shape_str(file->entry(file_key).shape)));
        continue;
      }
      const auto& e = file->entry(file_key);
      auto& target = it->second;
      if (target.sizes() != at::IntArrayRef(e.shape)) {
        problems.push_back(fmt::format("{}: key '{}' has shape {}, model expects {}", path, file_key,
                                       shape_str(e.shape), shape_str(target.sizes())));
        continue;
      }
      auto src = file->view(file_key);
      if (!src.is_floating_point() && target.is_floating_point()) {
        problems.push_back(fmt::format("{}: key '{}' has dtype {}, model expects a float tensor", path, file_key,
                                       e.dtype));
        continue;
      }
      target.copy_(src);
      seen.insert(name);
    }
  }
  for (const auto& [name, t] : targets)
    if (!seen.count(name) && !options.optional_module_keys.count(name))
      problems.push_back(fmt::format("missing key '{}' (shape {}) in {}", name, shape_str(t.sizes()),
                                     fmt::join(files, ", ")));
  if (problems.size() == 1) throw Error(problems.front() + " (does config.json match the weights?)");
  if (!problems.empty()) {
    std::string msg = fmt::format("{} problem(s) loading weights (does config.json match the weights?):",
                                  problems.size());
    const size_t shown = std::min<size_t>(problems.size(), 20);
    for (size_t i = 0; i < shown; ++i) msg += "\n  " + problems[i];
    if (shown < problems.size()) msg += fmt::format("\n  ... and {} more", problems.size() - shown);
    throw Error(msg, files.front());
  }
}

std::vector<std::string> find_weight_files(const std::string& folder, const std::vector<std::string>& stems,
                                           const std::string& variant) {
  COLLAGE_CHECK_AT(fs::is_directory(folder), folder, "", "model component folder does not exist");
  const std::string infix = variant.empty() ? "" : "." + variant;
  for (const auto& stem : stems) {
    const auto single = fs::path(folder) / (stem + infix + ".safetensors");
    if (fs::exists(single)) return {single.string()};
    const auto index = fs::path(folder) / (stem + ".safetensors.index" + infix + ".json");
    const auto index2 = fs::path(folder) / (stem + infix + ".safetensors.index.json");
    for (const auto& idx : {index, index2}) {
      if (!fs::exists(idx)) continue;
      auto j = read_json_file(idx.string());
      COLLAGE_CHECK_AT(j.contains("weight_map") && j["weight_map"].is_object(), idx.string(), "weight_map",
                       "sharded checkpoint index without a weight_map object");
      std::set<std::string> shards;
      for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it)
        shards.insert((fs::path(folder) / it.value().get<std::string>()).string());
      return {shards.begin(), shards.end()};
    }
  }
  std::vector<std::string> tried;
  for (const auto& stem : stems) tried.push_back(stem + infix + ".safetensors");
  for (const auto& stem : stems)
    if (fs::exists(fs::path(folder) / (stem + infix + ".bin")))
      throw Error(fmt::format("only PyTorch pickle weights ({}.bin) found; convert them to safetensors "
                              "(e.g. diffusers save_pretrained(safe_serialization=True))",
                              stem + infix),
                  folder);
  throw Error(fmt::format("no weights file found (looked for {})", fmt::join(tried, ", ")), folder);
}

}  // namespace collage
