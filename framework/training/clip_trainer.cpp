#include "training/clip_trainer.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>

#include "core/core.h"
#include "datasets/shapesworld/shapesworld.h"
#include "nets/nets.h"
#include "models/models.h"
#include "training/common.h"

namespace fs = std::filesystem;

namespace collage::training {

using detail::dtype_of;
using detail::mix64;
using detail::wall;
using detail::write_text;

namespace {

// Training scenes: seeds below 2^41; evaluation scenes: at and above 2^42 (never trained on).
uint64_t train_scene_seed(uint64_t seed, int64_t step, int64_t batch, int64_t i) {
  return mix64(seed ^ 0xC11Full) % (uint64_t(1) << 40) + uint64_t(step) * uint64_t(batch) + uint64_t(i);
}
uint64_t eval_scene_seed(uint64_t seed, int64_t i) { return (uint64_t(1) << 42) + mix64(seed) % (1u << 30) + uint64_t(i); }

ClipImageProcessorConfig processor_config(int64_t size) {
  ClipImageProcessorConfig p;  // CLIPImageProcessor defaults (OpenAI mean / std, bicubic) at the world's size
  p.shortest_edge = size;
  p.crop_height = p.crop_width = size;
  return p;
}

Json processor_json(const ClipImageProcessorConfig& p) {
  Json j;
  j["image_processor_type"] = "CLIPImageProcessor";
  j["do_resize"] = p.do_resize;
  j["size"] = Json{{"shortest_edge", p.shortest_edge}};
  j["resample"] = int(p.resample);
  j["do_center_crop"] = p.do_center_crop;
  j["crop_size"] = Json{{"height", p.crop_height}, {"width", p.crop_width}};
  j["do_rescale"] = p.do_rescale;
  j["rescale_factor"] = p.rescale_factor;
  j["do_normalize"] = p.do_normalize;
  j["image_mean"] = Json::array({p.image_mean[0], p.image_mean[1], p.image_mean[2]});
  j["image_std"] = Json::array({p.image_std[0], p.image_std[1], p.image_std[2]});
  j["do_convert_rgb"] = p.do_convert_rgb;
  return j;
}

at::Tensor tokenize(const ClipTokenizer& tok, const std::vector<std::string>& texts, int64_t length) {
  auto ids = at::empty({int64_t(texts.size()), length}, at::kLong);
  for (size_t i = 0; i < texts.size(); ++i) {
    auto v = tok.encode_padded(texts[i], length);
    std::copy(v.begin(), v.end(), ids[int64_t(i)].data_ptr<int64_t>());
  }
  return ids;
}

// One object of the scene gets another shape: the "hard negative" twin of a scene. Without twins, colour,
// background and object count already tell the captions of a batch apart, and the shape is never learned
// (measured: 26-29 % shape accuracy, chance 25 %, after 300 steps while colour reached 98 %).
shapesworld::SceneSpec shape_twin(shapesworld::SceneSpec scene, uint64_t seed) {
  if (scene.objects.empty()) return scene;
  const auto shapes = shapesworld::shape_names();
  const uint64_t h = mix64(seed ^ 0x5A5Eull);
  auto& o = scene.objects[h % scene.objects.size()];
  size_t k = 0;
  while (shapes[k] != o.shape) ++k;
  o.shape = shapes[(k + 1 + (h >> 8) % (shapes.size() - 1)) % shapes.size()];
  return scene;
}

// Another view of the same scene: objects nudged (position, size, rotation), another background texture. Used as
// the positive of an image-image contrastive term whose negatives include the shape twins; see ClipTrainConfig.
shapesworld::SceneSpec jittered_view(shapesworld::SceneSpec scene, uint64_t seed) {
  uint64_t h = mix64(seed ^ 0x7133Eull);
  auto uniform = [&h](double lo, double hi) {
    h = mix64(h);
    return lo + (hi - lo) * double(h >> 11) / double(uint64_t(1) << 53);
  };
  scene.texture_seed = mix64(scene.texture_seed + 1);
  for (auto& o : scene.objects) {
    o.size = std::clamp(o.size * uniform(0.9, 1.1), 0.05, 0.45);
    o.cx = std::clamp(o.cx + uniform(-0.04, 0.04), o.size, 1 - o.size);
    o.cy = std::clamp(o.cy + uniform(-0.04, 0.04), o.size, 1 - o.size);
    o.rotation_deg += uniform(-30, 30);
  }
  return scene;
}

// Renders scenes in parallel; images (B, 3, S, S) in [0, 1] and their captions. `twins` > 0: the last `twins`
// scenes are shape twins of the first ones (same seed, same caption choices, one object's shape changed).
void render_scenes(const std::vector<uint64_t>& seeds, const shapesworld::SampleOptions& so, int64_t size,
                   const shapesworld::CaptionOptions& co, std::vector<at::Tensor>& images,
                   std::vector<std::string>& captions, std::vector<shapesworld::SceneSpec>* scenes = nullptr,
                   int64_t twins = 0, std::vector<at::Tensor>* views = nullptr, int64_t n_views = 0) {
  const int64_t n = int64_t(seeds.size());
  images.assign(n, {});
  captions.assign(n, {});
  if (scenes) scenes->assign(n, {});
  if (views) views->assign(n_views, {});
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      auto scene = shapesworld::sample_scene(seeds[i], so);
      if (views && i < n_views) (*views)[i] = shapesworld::render(jittered_view(scene, seeds[i]), int(size), int(size)).image;
      if (i >= n - twins) scene = shape_twin(scene, seeds[i]);
      images[i] = shapesworld::render(scene, int(size), int(size)).image;
      captions[i] = shapesworld::caption(scene, seeds[i], co);
      if (scenes) (*scenes)[i] = scene;
    }
  });
}

// Targets of the contrastive loss: pairs with identical captions are both positives (short captions such as
// "a star" repeat within a batch), each row normalised.
at::Tensor caption_targets(const std::vector<std::string>& captions) {
  const int64_t n = int64_t(captions.size());
  auto t = at::zeros({n, n}, at::kFloat);
  auto a = t.accessor<float, 2>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) a[i][j] = captions[i] == captions[j] ? 1.f : 0.f;
  return t / t.sum(1, true);
}

void export_clip(ClipModel& model, const ClipTrainConfig& c, const fs::path& out) {
  fs::create_directories(out);
  const auto dtype = dtype_of(c.save_dtype, "");
  std::map<std::string, at::Tensor> w;
  for (const auto& p : model->named_parameters(true)) w[p.key()] = p.value().detach().cpu().to(dtype).contiguous();
  Json cfg = c.clip;
  cfg["architectures"] = Json::array({"CLIPModel"});
  cfg["model_type"] = "clip";
  cfg["torch_dtype"] = c.save_dtype;
  cfg["text_config"]["model_type"] = "clip_text_model";
  cfg["vision_config"]["model_type"] = "clip_vision_model";
  write_json_file((out / "config.json").string(), cfg);
  save_safetensors((out / "model.safetensors").string(), w, {{"format", "pt"}});
  write_json_file((out / "preprocessor_config.json").string(), processor_json(processor_config(c.image_size)));
  detail::export_tokenizer(c.tokenizer_source, out, model->config().text.max_position_embeddings);
}

}  // namespace

// ------------------------------------------------------------------------------------------------ config

ClipTrainConfig ClipTrainConfig::from_json(const Json& j, const std::string& file) {
  ClipTrainConfig c;
  JsonReader r(j, file);
  detail::read_shared_keys(r, c);
  c.export_every = r.get<int64_t>("export_every", c.export_every);
  c.shape_twins = r.get<double>("shape_twins", c.shape_twins);
  c.image_loss_weight = r.get<double>("image_loss_weight", c.image_loss_weight);
  COLLAGE_CHECK_AT(c.shape_twins >= 0 && c.shape_twins <= 1, file, "shape_twins", "must be in [0, 1]");
  COLLAGE_CHECK_AT(j.contains("clip") && j["clip"].is_object(), file, "clip",
                   "required CLIPModel config object missing (text_config, vision_config, projection_dim)");
  c.clip = j["clip"];
  r.ignore({"clip"});
  auto unused = r.unused_keys();
  COLLAGE_CHECK_AT(unused.empty(), file, unused.empty() ? "" : unused.front(), "unknown CLIP training config key");
  COLLAGE_CHECK_AT(c.batch_size > 1, file, "batch_size", "a contrastive batch needs at least 2 pairs");
  COLLAGE_CHECK_AT(c.min_objects >= 1 && c.max_objects >= c.min_objects && c.max_objects <= 4, file, "max_objects",
                   "need 1 <= min_objects <= max_objects <= 4");
  const auto parsed = ClipConfig::from_json(c.clip, file);  // validates the architecture now, not mid-run
  COLLAGE_CHECK_AT(parsed.vision.image_size == c.image_size, file, "clip.vision_config.image_size",
                   "must equal image_size ({})", c.image_size);
  c.raw = j;
  return c;
}

ClipTrainConfig ClipTrainConfig::from_json_file(const std::string& path) {
  return from_json(read_json_file(path), path);
}

// ------------------------------------------------------------------------------------------------ evaluation

Json ClipEvalResult::to_json() const {
  Json j;
  j["images"] = images;
  j["group"] = group;
  j["colour_accuracy"] = colour_accuracy;
  j["shape_accuracy"] = shape_accuracy;
  j["joint_accuracy"] = joint_accuracy;
  j["image_to_text_top1"] = image_to_text;
  j["text_to_image_top1"] = text_to_image;
  j["shape_twin_accuracy"] = twin_accuracy;
  j["shape_twin_image_cosine"] = twin_image_cosine;
  j["shape_twin_text_cosine"] = twin_text_cosine;
  j["seconds"] = seconds;
  return j;
}

std::string ClipEvalResult::summary() const {
  return fmt::format(
      "zero-shot on {} single-object renders (32 prompts \"a <colour> <shape>\"): colour {:.1f} %, shape {:.1f} %, "
      "both {:.1f} %; retrieval in groups of {} (1-4 objects, full captions): image->text {:.1f} %, "
      "text->image {:.1f} % (chance {:.1f} %); own caption over its shape twin's {:.1f} % (chance 50 %; cosine "
      "of twin images {:.4f}, of twin captions {:.4f})",
      images, 100 * colour_accuracy, 100 * shape_accuracy, 100 * joint_accuracy, group, 100 * image_to_text,
      100 * text_to_image, 100.0 / double(group), 100 * twin_accuracy, twin_image_cosine, twin_text_cosine);
}

ClipEvalResult evaluate_clip(const std::string& model_dir, int64_t images, uint64_t seed, int64_t group) {
  const double t0 = wall();
  torch::NoGradGuard no_grad;
  auto model = ClipModelImpl::load(model_dir);
  model->eval();
  model->to(at::kFloat);
  auto tok = ClipTokenizer::from_folder(
      fs::exists(fs::path(model_dir) / "vocab.json") ? model_dir : (fs::path(model_dir) / "tokenizer").string());
  const auto pp = fs::path(model_dir) / "preprocessor_config.json";
  ClipImageProcessor processor = fs::exists(pp) ? ClipImageProcessor::from_folder(model_dir)
                                                : ClipImageProcessor(processor_config(model->config().vision.image_size));
  const int64_t length = model->config().text.max_position_embeddings;
  const int64_t size = model->config().vision.image_size;
  auto text_features = [&](const std::vector<std::string>& texts) {
    auto ids = tokenize(tok, texts, length);
    return clip_l2_normalize(model->get_text_features(ids, clip_attention_mask_from_ids(ids)));
  };
  ClipEvalResult r;
  r.images = images;
  r.group = group;

  // Zero-shot colour x shape on single-object scenes.
  const auto colours = shapesworld::colour_names(), shapes = shapesworld::shape_names();
  std::vector<std::string> prompts;
  for (const auto& c : colours)
    for (const auto& s : shapes) prompts.push_back("a " + c + " " + s);
  auto prompt_emb = text_features(prompts);
  shapesworld::SampleOptions one;
  one.min_objects = one.max_objects = 1;
  shapesworld::CaptionOptions full;
  full.colour_probability = full.pattern_probability = full.background_probability = full.tint_probability = 1;
  int64_t colour_ok = 0, shape_ok = 0, joint_ok = 0;
  for (int64_t start = 0; start < images; start += 128) {
    std::vector<uint64_t> seeds;
    for (int64_t i = start; i < std::min(images, start + 128); ++i) seeds.push_back(eval_scene_seed(seed, i));
    std::vector<at::Tensor> imgs;
    std::vector<std::string> caps;
    std::vector<shapesworld::SceneSpec> scenes;
    render_scenes(seeds, one, size, full, imgs, caps, &scenes);
    auto emb = clip_l2_normalize(model->get_image_features(processor.preprocess(at::stack(imgs))));
    auto best = emb.matmul(prompt_emb.t()).argmax(1);
    for (size_t i = 0; i < seeds.size(); ++i) {
      const int64_t k = best[int64_t(i)].item<int64_t>();
      const auto& o = scenes[i].objects.at(0);
      const bool cok = colours[size_t(k) / shapes.size()] == o.colour, sok = shapes[size_t(k) % shapes.size()] == o.shape;
      colour_ok += cok;
      shape_ok += sok;
      joint_ok += cok && sok;
    }
  }
  r.colour_accuracy = double(colour_ok) / double(std::max<int64_t>(1, images));
  r.shape_accuracy = double(shape_ok) / double(std::max<int64_t>(1, images));
  r.joint_accuracy = double(joint_ok) / double(std::max<int64_t>(1, images));

  // Retrieval among `group` scenes of 1-4 objects with their full captions.
  shapesworld::SampleOptions many;
  many.min_objects = 1;
  many.max_objects = 4;
  int64_t i2t = 0, t2i = 0, counted = 0;
  for (int64_t start = 0; start + group <= images; start += group) {
    std::vector<uint64_t> seeds;
    for (int64_t i = start; i < start + group; ++i) seeds.push_back(eval_scene_seed(seed + 1, i));
    std::vector<at::Tensor> imgs;
    std::vector<std::string> caps;
    render_scenes(seeds, many, size, full, imgs, caps);
    auto ie = clip_l2_normalize(model->get_image_features(processor.preprocess(at::stack(imgs))));
    auto sim = ie.matmul(text_features(caps).t());
    auto labels = at::arange(group, at::kLong);
    i2t += sim.argmax(1).eq(labels).sum().item<int64_t>();
    t2i += sim.argmax(0).eq(labels).sum().item<int64_t>();
    counted += group;
  }
  // Shape twins: each scene's caption against the caption of the same scene with one object's shape changed.
  {
    const int64_t n = std::min<int64_t>(images, 256);
    std::vector<uint64_t> seeds;
    for (int64_t i = 0; i < n; ++i) seeds.push_back(eval_scene_seed(seed + 2, i));
    for (int64_t i = 0; i < n; ++i) seeds.push_back(seeds[size_t(i)]);
    std::vector<at::Tensor> imgs;
    std::vector<std::string> caps;
    render_scenes(seeds, many, size, full, imgs, caps, nullptr, n);
    auto ie = clip_l2_normalize(model->get_image_features(processor.preprocess(at::stack(imgs).slice(0, 0, n))));
    auto te = text_features(caps);
    auto own = (ie * te.slice(0, 0, n)).sum(1), twin = (ie * te.slice(0, n, 2 * n)).sum(1);
    r.twin_accuracy = own.gt(twin).to(at::kDouble).mean().item<double>();
    auto twin_ie = clip_l2_normalize(model->get_image_features(processor.preprocess(at::stack(imgs).slice(0, n, 2 * n))));
    r.twin_image_cosine = (ie * twin_ie).sum(1).mean().item<double>();
    r.twin_text_cosine = (te.slice(0, 0, n) * te.slice(0, n, 2 * n)).sum(1).mean().item<double>();
  }
  r.image_to_text = double(i2t) / double(std::max<int64_t>(1, counted));
  r.text_to_image = double(t2i) / double(std::max<int64_t>(1, counted));
  r.seconds = wall() - t0;
  return r;
}

// ------------------------------------------------------------------------------------------------ training

ClipTrainResult train_clip(const ClipTrainConfig& config_in, const ClipTrainOptions& options) {
  ClipTrainConfig c = config_in;
  if (options.steps >= 0) c.max_steps = options.steps;
  if (options.minutes >= 0) c.max_minutes = options.minutes;
  auto log = [&](const std::string& s) {
    if (!options.quiet) std::cerr << s << std::endl;
  };
  const fs::path out(options.out_dir);
  fs::create_directories(out);

  torch::manual_seed(c.seed);
  const auto cfg = ClipConfig::from_json(c.clip, "CLIP training config: clip");
  ClipModel model(cfg);
  {
    torch::NoGradGuard no_grad;  // CLIP's initialisation of the embeddings (torch's N(0, 1) is far too large)
    auto& text = model->text_tower()->text_model->embeddings;
    text->token_embedding->weight.normal_(0, 0.02);
    text->position_embedding->weight.normal_(0, 0.01);
    auto& vis = model->vision_tower()->vision_model->embeddings;
    vis->class_embedding.normal_(0, 1.0 / std::sqrt(double(cfg.vision.hidden_size)));
    vis->patch_embedding->weight.normal_(0, 0.02);
    vis->position_embedding->weight.normal_(0, 0.02);
  }
  model->train();
  auto tok = ClipTokenizer::from_folder(c.tokenizer_source);
  COLLAGE_CHECK(tok.vocab_size() <= cfg.text.vocab_size, "tokenizer has {} tokens, text_config.vocab_size {}",
                tok.vocab_size(), cfg.text.vocab_size);
  const ClipImageProcessor processor(processor_config(c.image_size));
  const int64_t length = cfg.text.max_position_embeddings;

  std::vector<at::Tensor> decay, no_decay;
  int64_t n_params = 0;
  for (const auto& p : model->named_parameters(true)) {
    n_params += p.value().numel();
    const bool is_matrix = p.value().dim() >= 2 && p.key().find("embedding") == std::string::npos;
    (is_matrix ? decay : no_decay).push_back(p.value());
  }
  auto base = torch::optim::AdamWOptions(c.learning_rate).betas({c.adam_beta1, c.adam_beta2}).eps(c.adam_eps);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(base.weight_decay(c.weight_decay)));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(base.weight_decay(0)));
  torch::optim::AdamW optimizer(groups, base);

  shapesworld::SampleOptions so;
  so.min_objects = c.min_objects;
  so.max_objects = c.max_objects;
  const shapesworld::CaptionOptions co;  // attributes omitted at random, as the diffusion model's captions
  log(fmt::format("CLIP: {} parameters (text {} x {} layers, vision {} x {} layers, patch {}), projection {}, "
                  "batch {}, {} threads",
                  n_params, cfg.text.hidden_size, cfg.text.num_hidden_layers, cfg.vision.hidden_size,
                  cfg.vision.num_hidden_layers, cfg.vision.patch_size, cfg.projection_dim, c.batch_size,
                  at::get_num_threads()));

  // ---- checkpoint (written with every export) and resume
  const fs::path ckpt = out / "checkpoint";
  int64_t step = 0;
  double seconds_before = 0;  // wall time of the earlier runs of this folder
  COLLAGE_CHECK_AT(options.resume || !fs::exists(ckpt / "state.json"), ckpt.string(), "",
                   "the output folder already has a checkpoint: pass --resume, or choose another --out");
  if (options.resume && fs::exists(ckpt / "state.json")) {
    const auto state = read_json_file((ckpt / "state.json").string());
    auto weights = load_safetensors((ckpt / "params.safetensors").string());
    torch::NoGradGuard no_grad;
    for (auto& p : model->named_parameters(true)) {
      COLLAGE_CHECK_AT(weights.count(p.key()) && weights.at(p.key()).sizes() == p.value().sizes(),
                       (ckpt / "params.safetensors").string(), p.key(), "missing or of another shape (another config?)");
      p.value().copy_(weights.at(p.key()));
    }
    torch::load(optimizer, (ckpt / "optimizer.pt").string());
    step = state.at("step").get<int64_t>();
    seconds_before = state.value("train_seconds", 0.0);
    log(fmt::format("resumed at step {}", step));
  }
  auto save_checkpoint = [&](double seconds) {
    const fs::path tmp = out / ".checkpoint.tmp";
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    std::map<std::string, at::Tensor> w;
    for (const auto& p : model->named_parameters(true)) w[p.key()] = p.value().detach().contiguous();
    save_safetensors((tmp / "params.safetensors").string(), w);
    torch::save(optimizer, (tmp / "optimizer.pt").string());
    write_json_file((tmp / "state.json").string(), Json{{"step", step}, {"train_seconds", seconds}, {"config", c.raw}});
    fs::remove_all(ckpt);
    fs::rename(tmp, ckpt);
  };

  // loss.csv: a resumed run keeps the rows up to its checkpoint (a killed run may have logged past it)
  std::vector<std::string> kept;
  if (step > 0 && fs::exists(out / "loss.csv")) {
    std::ifstream in(out / "loss.csv");
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line))
      if (!line.empty() && std::stoll(line.substr(0, line.find(','))) <= step) kept.push_back(line);
  }
  std::ofstream csv(out / "loss.csv");
  COLLAGE_CHECK_AT(csv.good(), (out / "loss.csv").string(), "", "cannot write");
  csv << "step,loss,accuracy,logit_scale,lr,seconds\n";
  for (const auto& line : kept) csv << line << "\n";
  const double start = wall() - seconds_before;
  const double budget = c.max_minutes > 0 ? c.max_minutes * 60.0 : 1e30;
  const double max_logit = std::log(100.0);
  std::vector<double> window;
  double window_start = start;
  int64_t window_steps = 0;
  ClipTrainResult result;
  result.model_dir = (out / "model").string();
  while (step < c.max_steps && wall() - start < budget) {
    std::vector<uint64_t> seeds;
    const int64_t twins = int64_t(double(c.batch_size) * c.shape_twins / 2);
    for (int64_t i = 0; i < c.batch_size - twins; ++i) seeds.push_back(train_scene_seed(c.seed, step, c.batch_size, i));
    for (int64_t i = 0; i < twins; ++i) seeds.push_back(seeds[size_t(i)]);
    std::vector<at::Tensor> imgs;
    std::vector<std::string> caps;
    std::vector<at::Tensor> view_imgs;
    const int64_t n_views = c.image_loss_weight > 0 ? twins : 0;
    render_scenes(seeds, so, c.image_size, co, imgs, caps, nullptr, twins, &view_imgs, n_views);
    for (auto& v : view_imgs) imgs.push_back(v);
    auto pixels = processor.preprocess(at::stack(imgs));
    auto ids = tokenize(tok, caps, length);
    auto targets = caption_targets(caps);

    // Linear warm-up, then cosine decay to a tenth over max_steps (constant when only a time budget is set).
    double lr = c.learning_rate * std::min(1.0, double(step + 1) / double(std::max<int64_t>(1, c.warmup_steps)));
    if (c.max_steps < 1000000 && step >= c.warmup_steps) {
      const double f = double(step - c.warmup_steps) / double(std::max<int64_t>(1, c.max_steps - c.warmup_steps));
      lr = c.learning_rate * detail::cosine_to_tenth(f);
    }
    for (auto& g : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);

    optimizer.zero_grad();
    auto all_img = clip_l2_normalize(model->get_image_features(pixels));
    auto img = all_img.slice(0, 0, c.batch_size);
    auto txt = clip_l2_normalize(model->get_text_features(ids, clip_attention_mask_from_ids(ids)));
    auto logits = model->logit_scale.exp() * img.matmul(txt.t());
    auto loss = -(targets * at::log_softmax(logits, 1)).sum(1).mean() * 0.5 -
                (targets * at::log_softmax(logits.t(), 1)).sum(1).mean() * 0.5;
    if (n_views > 0) {  // view i must pick its own scene i among the batch's images, its shape twin included
      auto v = all_img.slice(0, c.batch_size, c.batch_size + n_views);
      auto view_logits = model->logit_scale.exp() * v.matmul(img.t());
      loss = loss - c.image_loss_weight * at::log_softmax(view_logits, 1).diagonal().mean();
    }
    const double lv = loss.item<double>();
    COLLAGE_CHECK(std::isfinite(lv), "CLIP training: the loss is not finite at step {} (lr {:.3g}, logit scale {:.3f})",
                  step + 1, lr, model->logit_scale.item<double>());
    loss.backward();
    if (c.grad_clip > 0) torch::nn::utils::clip_grad_norm_(model->parameters(), c.grad_clip);
    optimizer.step();
    {
      torch::NoGradGuard no_grad;
      model->logit_scale.clamp_(0, max_logit);  // as CLIP: temperature at most 100
    }
    ++step;
    const double acc = logits.argmax(1).eq(at::arange(c.batch_size, at::kLong)).to(at::kFloat).mean().item<double>();
    csv << fmt::format("{},{:.5f},{:.4f},{:.3f},{:.3g},{:.1f}\n", step, lv, acc, model->logit_scale.exp().item<double>(),
                       lr, wall() - start);
    window.push_back(lv);
    if (int64_t(window.size()) > std::max<int64_t>(c.log_every, 1)) window.erase(window.begin());
    ++window_steps;
    if (c.log_every > 0 && step % c.log_every == 0) {
      csv.flush();
      double mean = 0;
      for (double v : window) mean += v;
      const double dt = wall() - window_start;
      const double rate = double(window_steps) / dt;
      const double left = c.max_steps < 1000000 ? double(c.max_steps - step) / rate : budget - (wall() - start);
      log(fmt::format("step {:6d}  loss {:.4f}  batch top-1 {:.2f}  scale {:.1f}  lr {:.2e}  {:.1f} pairs/s  "
                      "{:.0f} s  ETA {:.0f} s",
                      step, mean / double(window.size()), acc, model->logit_scale.exp().item<double>(), lr,
                      rate * double(c.batch_size), wall() - start, std::min(left, budget - (wall() - start))));
      window_start = wall();
      window_steps = 0;
    }
    if (c.export_every > 0 && step % c.export_every == 0) {
      export_clip(model, c, result.model_dir);
      save_checkpoint(wall() - start);
    }
  }
  if (c.export_every <= 0 || step % c.export_every != 0) save_checkpoint(wall() - start);
  csv.flush();
  double mean = 0;
  for (double v : window) mean += v;
  result.final_loss = window.empty() ? 0.0 : mean / double(window.size());
  result.steps = step;
  result.seconds = wall() - start;
  export_clip(model, c, result.model_dir);
  if (options.eval_images > 0) {
    result.eval = evaluate_clip(result.model_dir, options.eval_images, c.seed + 17);
    log(result.eval.summary());
  }

  Json info;
  info["command"] = options.command_line;
  info["seed"] = c.seed;
  info["steps"] = step;
  info["train_seconds"] = result.seconds;
  info["threads"] = at::get_num_threads();
  info["final_loss"] = result.final_loss;
  info["pairs_seen"] = step * c.batch_size;
  info["parameters"] = n_params;
  info["logit_scale"] = model->logit_scale.exp().item<double>();
  if (options.eval_images > 0) info["evaluation"] = result.eval.to_json();
  info["config"] = c.raw;
  write_json_file((fs::path(result.model_dir) / "TRAINING.json").string(), info);
  write_text(fs::path(result.model_dir) / "TRAINING.md",
             fmt::format("# Sandbox CLIP (ShapesWorld): training record\n\n"
                         "- command: `{}`\n- seed: {}\n- steps: {} (batch {}, {} image-caption pairs), {:.1f} min on "
                         "{} threads\n- final loss (mean of the last {} steps): {:.4f}; temperature {:.1f}\n"
                         "- parameters: {}\n- evaluation: {}\n\nThe exact configuration is in TRAINING.json.\n",
                         options.command_line, c.seed, step, c.batch_size, step * c.batch_size, result.seconds / 60.0,
                         at::get_num_threads(), window.size(), result.final_loss,
                         model->logit_scale.exp().item<double>(), n_params,
                         options.eval_images > 0 ? result.eval.summary() : std::string("not run")));
  log(fmt::format("done: {} steps, final loss {:.4f}, model in {}", step, result.final_loss, result.model_dir));
  return result;
}

}  // namespace collage::training
