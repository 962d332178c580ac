#include "parity/nets_parity.h"

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "core/core.h"
#include "nets/nets.h"
#include "models/models.h"

namespace fs = std::filesystem;

namespace collage::parity {

namespace {

// Tolerances (max|got - ref| <= atol + rtol * max|ref|), from the reference data's README: the float32 references
// are ~3e-7 relative from float64, so rtol 1e-5 keeps a wide margin while catching real errors.
constexpr double kModelRtol = 1e-5, kModelAtol = 1e-5;        // CLIP embeddings, hidden states, logits
constexpr double kScoreRtol = 1e-5, kScoreAtol = 1e-4;        // CLIP score values (x100)
constexpr double kPixelAtol = 1e-6;                           // pixel_values from identical uint8 (observed 0)
constexpr double kLpipsRtol = 1e-5, kLpipsAtol = 1e-6;        // value, perlayer, layer, spatial
constexpr double kFeatRtol = 1e-5, kFeatAtol = 1e-5;          // backbone features (|x| up to ~14)

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep))
    if (!item.empty()) out.push_back(item);
  return out;
}

std::string metadata(const SafetensorsFile& f, const std::string& key) {
  auto it = f.metadata().find(key);
  return it == f.metadata().end() ? std::string() : it->second;
}

// Cases of a file: the prefixes `C` of tensors named `C.<suffix>`.
std::vector<std::string> case_prefixes(const std::map<std::string, at::Tensor>& tensors, const std::string& suffix) {
  std::vector<std::string> out;
  const std::string tail = "." + suffix;
  for (const auto& [name, t] : tensors)
    if (name.size() > tail.size() && name.compare(name.size() - tail.size(), tail.size(), tail) == 0)
      out.push_back(name.substr(0, name.size() - tail.size()));
  return out;
}

bool is_index(const std::string& s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
}

// The processor of one preprocessing setting: the folder's preprocessor_config.json for "tiny" (the model's own),
// otherwise the processor dict recorded in preprocess.json, otherwise CLIPImageProcessor() defaults for "224".
ClipImageProcessor processor_for(const std::string& folder, const std::string& setting, const Json& info,
                                 const std::string& info_path) {
  const auto own = (fs::path(folder) / "preprocessor_config.json").string();
  if (setting == "tiny" && fs::exists(own)) return ClipImageProcessor::from_folder(folder);
  if (info.contains("processors") && info["processors"].contains(setting))
    return ClipImageProcessor(ClipImageProcessorConfig::from_json(info["processors"][setting], info_path));
  COLLAGE_CHECK_AT(setting == "224", info_path, "processors." + setting, "no processor recorded for this setting");
  return ClipImageProcessor();
}

void check_clip_preprocessing(const std::string& folder, Recorder& rec) {
  const auto st_path = (fs::path(folder) / "preprocess.safetensors").string();
  if (!fs::exists(st_path)) return;
  const auto json_path = (fs::path(folder) / "preprocess.json").string();
  const Json info = fs::exists(json_path) ? read_json_file(json_path) : Json::object();
  auto file = SafetensorsFile::open(st_path);
  auto refs = load_safetensors(st_path);

  // Images and settings: from the metadata, else from the tensor names NAME.FIELD.SETTING.
  std::vector<std::string> images = split(metadata(*file, "images"), ',');
  std::vector<std::string> settings = split(metadata(*file, "settings"), ',');
  if (images.empty() || settings.empty()) {
    std::set<std::string> im, se;
    for (const auto& [name, t] : refs) {
      auto parts = split(name, '.');
      if (parts.size() == 3) im.insert(parts[0]), se.insert(parts[2]);
    }
    images.assign(im.begin(), im.end());
    settings.assign(se.begin(), se.end());
  }
  std::set<std::string> used;
  std::map<std::string, ClipImageProcessor> processors;
  for (const auto& s : settings) {
    try {
      processors.emplace(s, processor_for(folder, s, info, json_path));
    } catch (const std::exception& e) {
      rec.failure("preprocess." + s, e.what());
    }
  }
  for (const auto& image : images) {
    std::string rel = "preprocess/" + image + ".png";
    if (info.contains("images") && info["images"].contains(image) && info["images"][image].contains("file"))
      rel = info["images"][image]["file"].get<std::string>();
    const auto png = (fs::path(folder) / rel).string();
    at::Tensor u8;
    try {
      u8 = read_image_u8(png);
    } catch (const std::exception& e) {
      rec.failure(image + ".png", e.what());
      continue;
    }
    for (const auto& [setting, processor] : processors) {
      ClipPreprocessTrace trace;
      at::Tensor pixel_values;
      try {
        pixel_values = processor.preprocess_u8(u8, &trace);
      } catch (const std::exception& e) {
        rec.failure(image + ".preprocess." + setting, e.what());
        continue;
      }
      const std::map<std::string, at::Tensor> got = {{"resized_u8", trace.resized_u8},
                                                     {"cropped_u8", trace.cropped_u8},
                                                     {"pixel_values", pixel_values}};
      for (const auto& [field, tensor] : got) {
        const auto name = image + "." + field + "." + setting;
        auto it = refs.find(name);
        if (it == refs.end()) {
          rec.failure(name, "reference tensor missing in " + st_path);
          continue;
        }
        used.insert(name);
        if (field == "pixel_values")
          rec.tensor(name, tensor, it->second, 0.0, kPixelAtol);
        else
          rec.tensor(name, tensor, it->second, 0.0, 0.0);  // uint8: exact
      }
    }
  }
  for (const auto& [name, t] : refs)
    if (!used.count(name)) rec.failure(name, "reference tensor not checked (unknown image, setting or field)");
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------

void check_clip_vision(const std::string& folder, Recorder& rec) {
  ClipVisionModelWithProjection model{nullptr};
  try {
    model = ClipVisionModelWithProjectionImpl::load(folder);
    model->to(rec.target().device, rec.target().dtype);
  } catch (const std::exception& e) {
    rec.failure("load", e.what());
    return;
  }
  const auto cases_path = (fs::path(folder) / "cases.safetensors").string();
  auto cases_file = SafetensorsFile::open(cases_path);
  auto cases = load_safetensors(cases_path);
  torch::NoGradGuard no_grad;
  std::set<std::string> used;
  for (const auto& c : case_prefixes(cases, "pixel_values")) {
    const auto& pixel_values = cases.at(c + ".pixel_values");
    used.insert(c + ".pixel_values");
    // End-to-end link: "<file> <image>.pixel_values.<setting>" = this case's input came from preprocess/<image>.png.
    const auto link = split(metadata(*cases_file, c + "_pixel_values"), ' ');
    if (link.size() == 2) {
      const auto parts = split(link[1], '.');
      try {
        COLLAGE_CHECK(parts.size() == 3 && parts[1] == "pixel_values", "cannot parse the link '{}'", link[1]);
        const Json info = fs::exists(fs::path(folder) / "preprocess.json")
                              ? read_json_file((fs::path(folder) / "preprocess.json").string())
                              : Json::object();
        auto processor = processor_for(folder, parts[2], info, (fs::path(folder) / "preprocess.json").string());
        auto px = processor.preprocess_files({(fs::path(folder) / "preprocess" / (parts[0] + ".png")).string()});
        rec.tensor(c + ".pixel_values (from preprocess/" + parts[0] + ".png)", px, pixel_values, 0.0, kPixelAtol);
      } catch (const std::exception& e) {
        rec.failure(c + ".pixel_values", e.what());
      }
    }
    ClipVisionOutput out;
    try {
      out = model->forward(rec.target().in(pixel_values), /*output_hidden_states=*/true);
    } catch (const std::exception& e) {
      rec.failure(c + ".forward", e.what());
      continue;
    }
    for (const auto& [name, ref] : cases) {
      if (!starts_with(name, c + ".") || name == c + ".pixel_values") continue;
      const auto field = name.substr(c.size() + 1);
      at::Tensor got;
      if (field == "embeddings")
        got = out.embeddings;
      else if (field == "last_hidden_state")
        got = out.last_hidden_state;
      else if (field == "pooler_output")
        got = out.pooler_output;
      else if (field == "image_embeds")
        got = out.image_embeds;
      else if (starts_with(field, "hidden_states.") && is_index(field.substr(14))) {
        const auto i = std::stoul(field.substr(14));
        if (i >= out.hidden_states.size()) {
          rec.failure(name, fmt::format("the model has {} hidden states (num_hidden_layers {} + 1)",
                                        out.hidden_states.size(), model->config().num_hidden_layers));
          used.insert(name);
          continue;
        }
        got = out.hidden_states[i];
      } else {
        continue;  // reported below as not checked
      }
      used.insert(name);
      rec.tensor(name, got, ref, kModelRtol, kModelAtol);
    }
  }
  for (const auto& [name, t] : cases)
    if (!used.count(name)) rec.failure(name, "reference tensor not checked (unknown case or field)");
  check_clip_preprocessing(folder, rec);
}

// ---------------------------------------------------------------------------------------------------------------

void check_clip(const std::string& folder, Recorder& rec) {
  ClipModel model{nullptr};
  try {
    model = ClipModelImpl::load(folder);
    model->to(rec.target().device, rec.target().dtype);
  } catch (const std::exception& e) {
    rec.failure("load", e.what());
    return;
  }
  const auto cases_path = (fs::path(folder) / "cases.safetensors").string();
  auto cases_file = SafetensorsFile::open(cases_path);
  auto cases = load_safetensors(cases_path);
  for (const char* required : {"input_ids", "attention_mask", "pixel_values"})
    COLLAGE_CHECK_AT(cases.count(required), cases_path, required, "tensor missing");
  const auto& ids = cases.at("input_ids");
  const auto& mask = cases.at("attention_mask");
  std::set<std::string> used = {"input_ids", "attention_mask", "pixel_values"};

  // Inputs: the ids against the sibling tokenizer (the recipe tokenizes with ../tokenizer), the mask against the
  // tokenizer's rule (1 up to and including the first eos).
  int64_t eos = 49407;
  const auto tok_dir = fs::path(folder).parent_path() / "tokenizer";
  const auto prompts_json = metadata(*cases_file, "prompts");
  if (fs::exists(tok_dir / "vocab.json") && fs::exists(tok_dir / "merges.txt") && !prompts_json.empty()) {
    try {
      auto tok = ClipTokenizer::from_folder(tok_dir.string());
      eos = tok.eos_id();
      auto prompts = Json::parse(prompts_json);
      COLLAGE_CHECK(prompts.is_array() && static_cast<int64_t>(prompts.size()) == ids.size(0),
                    "metadata 'prompts' must list {} prompts", ids.size(0));
      std::vector<int64_t> flat;
      for (const auto& p : prompts) {
        auto row = tok.encode_padded(p.get<std::string>(), ids.size(1));
        flat.insert(flat.end(), row.begin(), row.end());
      }
      auto got = at::tensor(flat, at::kLong).view(ids.sizes());
      rec.tensor("input_ids (tokenizer)", got, ids, 0.0, 0.0);
    } catch (const std::exception& e) {
      rec.failure("input_ids (tokenizer)", e.what());
    }
  }
  rec.tensor("attention_mask (first-eos rule)", clip_attention_mask_from_ids(ids, eos), mask, 0.0, 0.0);

  torch::NoGradGuard no_grad;
  ClipOutput out;
  at::Tensor text_features, image_features, text_no_mask;
  try {
    const auto& tg = rec.target();
    const auto pixels = tg.in(cases.at("pixel_values")), ids_t = tg.in(ids), mask_t = tg.in(mask);
    out = model->forward(ids_t, pixels, mask_t);
    text_features = model->get_text_features(ids_t, mask_t);
    image_features = model->get_image_features(pixels);
    text_no_mask = model->text_tower()->forward(ids_t).last_hidden_state;
  } catch (const std::exception& e) {
    rec.failure("forward", e.what());
    return;
  }
  const std::map<std::string, at::Tensor> model_tensors = {
      {"text_embeds_unnormalized", text_features},
      {"text_embeds", out.text_embeds},
      {"image_embeds_unnormalized", image_features},
      {"image_embeds", out.image_embeds},
      {"logits_per_text", out.logits_per_text},
      {"logits_per_image", out.logits_per_image},
      {"logit_scale_exp", model->logit_scale_exp()},
      {"text_last_hidden_state", out.text_output.last_hidden_state},
      {"text_last_hidden_state_no_attention_mask", text_no_mask},
      {"text_pooler_output", out.text_output.pooler_output},
      {"vision_last_hidden_state", out.vision_output.last_hidden_state},
      {"vision_pooler_output", out.vision_output.pooler_output},
  };
  for (const auto& [name, got] : model_tensors) {
    auto it = cases.find(name);
    if (it == cases.end()) continue;  // optional in other sets
    used.insert(name);
    rec.tensor(name, got, it->second, kModelRtol, kModelAtol);
  }
  // The (image, prompt) pairs of the CLIP score.
  if (cases.count("score.image_index") && cases.count("score.text_index")) {
    const auto ii = cases.at("score.image_index"), ti = cases.at("score.text_index");
    used.insert("score.image_index");
    used.insert("score.text_index");
    try {
      auto cos100 = clip_cos100(image_features.index_select(0, ii), text_features.index_select(0, ti));
      auto clamped = cos100.clamp_min(0);
      const std::map<std::string, at::Tensor> score = {
          {"score.cos100", cos100},
          {"score.clamped", clamped},
          {"score.mean_of_clamped", clamped.mean()},
          {"score.torchmetrics", cos100.mean().clamp_min(0)},  // torchmetrics clamps the mean, not each pair
      };
      for (const auto& [name, got] : score) {
        auto it = cases.find(name);
        if (it == cases.end()) continue;
        used.insert(name);
        rec.tensor(name, got, it->second, kScoreRtol, kScoreAtol);
      }
    } catch (const std::exception& e) {
      rec.failure("score", e.what());
    }
  }
  for (const auto& [name, t] : cases)
    if (!used.count(name)) rec.failure(name, "reference tensor not checked (unknown field)");
}

// ---------------------------------------------------------------------------------------------------------------

void check_lpips(const std::string& folder, Recorder& rec) {
  const auto cases_path = (fs::path(folder) / "cases.safetensors").string();
  auto cases_file = SafetensorsFile::open(cases_path);
  auto cases = load_safetensors(cases_path);
  std::vector<std::string> nets = split(metadata(*cases_file, "nets"), ',');
  if (nets.empty())
    for (const char* n : {"alex", "vgg", "squeeze"})
      for (const auto& [name, t] : cases)
        if (starts_with(name, std::string(n) + ".")) {
          nets.push_back(n);
          break;
        }
  const auto case_names = case_prefixes(cases, "in0");
  std::set<std::string> used;
  torch::NoGradGuard no_grad;

  for (const auto& c : case_names) {
    used.insert(c + ".in0");
    used.insert(c + ".in1");
    COLLAGE_CHECK_AT(cases.count(c + ".in1"), cases_path, c + ".in1", "tensor missing");
    auto it = cases.find(c + ".scaled0");
    if (it != cases.end()) {
      used.insert(it->first);
      rec.tensor(it->first, lpips_scaling_layer(cases.at(c + ".in0")), it->second, 0.0, kPixelAtol);
    }
  }

  for (const auto& net_name : nets) {
    Lpips model{nullptr};
    try {
      model = LpipsImpl::load_folder(folder, parse_lpips_net(net_name));
      model->to(rec.target().device, rec.target().dtype);
    } catch (const std::exception& e) {
      rec.failure(net_name + ".load", e.what());
      continue;
    }
    for (const auto& c : case_names) {
      const auto& in0 = cases.at(c + ".in0");
      const auto& in1 = cases.at(c + ".in1");
      LpipsOptions options;
      options.spatial = true;
      options.keep_features = true;
      LpipsOutput out;
      try {
        // value is computed exactly as with spatial=False
        out = model->forward(rec.target().in(in0), rec.target().in(in1), options);
      } catch (const std::exception& e) {
        rec.failure(net_name + "." + c + ".forward", e.what());
        continue;
      }
      const std::string prefix = net_name + "." + c + ".";
      for (const auto& [name, ref] : cases) {
        if (!starts_with(name, prefix)) continue;
        const auto field = name.substr(prefix.size());
        const auto dot = field.find('.');
        const auto kind = field.substr(0, dot);
        const auto index = dot == std::string::npos ? std::string() : field.substr(dot + 1);
        at::Tensor got;
        double rtol = kLpipsRtol, atol = kLpipsAtol;
        if (field == "value") {
          got = out.value;
        } else if (field == "spatial") {
          got = out.spatial;
        } else if ((kind == "layer" || kind == "perlayer" || kind == "feat" || kind == "normfeat") && is_index(index)) {
          const auto k = std::stoul(index);
          if (k >= out.layers.size()) {
            used.insert(name);
            rec.failure(name, fmt::format("the {} backbone has {} slices", net_name, out.layers.size()));
            continue;
          }
          // feat / normfeat: image 0 of in0
          if (kind == "layer") got = out.layers[k];
          if (kind == "perlayer") got = out.per_layer[k];
          if (kind == "feat") got = out.features0[k].narrow(0, 0, ref.size(0));
          if (kind == "normfeat") got = out.normalized0[k].narrow(0, 0, ref.size(0));
          if (kind == "feat" || kind == "normfeat") rtol = kFeatRtol, atol = kFeatAtol;
        } else {
          continue;  // reported below as not checked
        }
        used.insert(name);
        rec.tensor(name, got, ref, rtol, atol);
      }
      // Identical pairs give exactly 0 (value and spatial map).
      auto same = (in0 == in1).flatten(1).all(1);
      if (same.any().item<bool>()) {
        auto zero_value = out.value.flatten(1).index({same}).eq(0).all().item<bool>();
        auto zero_map = out.spatial.flatten(1).index({same}).eq(0).all().item<bool>();
        rec.exact(prefix + "identical_pairs_exactly_zero", zero_value && zero_map,
                  "an identical input pair does not give exactly 0");
      }
    }
  }
  for (const auto& [name, t] : cases)
    if (!used.count(name)) rec.failure(name, "reference tensor not checked (unknown case, network or field)");
}

// ---------------------------------------------------------------------------------------------------------------

std::vector<ComponentChecker> metric_net_checkers() {
  auto folder_name = [](const std::string& folder) { return fs::path(folder).filename().string(); };
  return {
      {"clip_vision", [=](const std::string& f) { return starts_with(folder_name(f), "clip_vision"); },
       check_clip_vision},
      {"clip",
       [=](const std::string& f) {
         const auto n = folder_name(f);
         return starts_with(n, "clip") && !starts_with(n, "clip_vision");
       },
       check_clip},
      {"lpips", [=](const std::string& f) { return starts_with(folder_name(f), "lpips"); }, check_lpips},
  };
}

}  // namespace collage::parity
