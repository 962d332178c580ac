#include "training/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>

#include "core/core.h"
#include "datasets/shapesworld/shapesworld.h"
#include "diffusion/diffusion.h"
#include "models/models.h"
#include "training/common.h"

namespace fs = std::filesystem;

namespace collage::training {

using detail::dtype_of;
using detail::mix64;
using detail::wall;
using detail::write_text;

namespace {

shapesworld::SampleOptions sample_options(const TrainConfig& c) {
  shapesworld::SampleOptions so;
  so.min_objects = c.min_objects;
  so.max_objects = c.max_objects;
  so.excluded_colour_shapes = c.held_out;
  return so;
}

uint64_t scene_seed(const TrainConfig& c, int64_t step, int64_t i) {
  return mix64(c.seed) % (uint64_t(1) << 40) + uint64_t(step) * uint64_t(c.batch_size) + uint64_t(i);
}

}  // namespace

// ------------------------------------------------------------------------------------------------ config

TrainConfig TrainConfig::from_json(const Json& j, const std::string& file) {
  TrainConfig c;
  JsonReader r(j, file);
  detail::read_shared_keys(r, c);
  c.ema_decay = r.get<double>("ema_decay", c.ema_decay);
  c.lr_decay = r.get<std::string>("lr_decay", c.lr_decay);
  COLLAGE_CHECK_AT(c.lr_decay == "constant" || c.lr_decay == "cosine", file, "lr_decay",
                   "'{}': expected \"constant\" or \"cosine\"", c.lr_decay);
  c.caption_dropout = r.get<double>("caption_dropout", c.caption_dropout);
  c.checkpoint_every = r.get<int64_t>("checkpoint_every", c.checkpoint_every);
  c.keep_checkpoints = r.get<int64_t>("keep_checkpoints", c.keep_checkpoints);
  c.channels_last = r.get<bool>("channels_last", c.channels_last);
  if (j.contains("held_out")) {
    COLLAGE_CHECK_AT(j["held_out"].is_array(), file, "held_out", "expected [[colour, shape], ...]");
    for (const auto& p : j["held_out"]) {
      COLLAGE_CHECK_AT(p.is_array() && p.size() == 2 && p[0].is_string() && p[1].is_string(), file, "held_out",
                       "expected [[colour, shape], ...]");
      c.held_out.emplace_back(p[0].get<std::string>(), p[1].get<std::string>());
    }
    r.ignore({"held_out"});
  }
  for (const char* key : {"unet", "text_encoder", "scheduler"})
    COLLAGE_CHECK_AT(j.contains(key) && j[key].is_object(), file, key, "required component config object missing");
  c.unet = j["unet"];
  c.text_encoder = j["text_encoder"];
  c.scheduler = j["scheduler"];
  r.ignore({"unet", "text_encoder", "scheduler"});
  c.vae_factor = r.get<int64_t>("vae_factor", c.vae_factor);
  c.scaling_factor = r.get<double>("scaling_factor", c.scaling_factor);
  c.text_encoder_from = r.get<std::string>("text_encoder_from", c.text_encoder_from);
  c.train_text_encoder = r.get<bool>("train_text_encoder", c.train_text_encoder);
  c.unet_from = r.get<std::string>("unet_from", c.unet_from);
  COLLAGE_CHECK_AT(c.unet_from.empty() || fs::exists(c.unet_from), file, "unet_from", "'{}' does not exist",
                   c.unet_from);
  COLLAGE_CHECK_AT(c.text_encoder_from.empty() || fs::exists(fs::path(c.text_encoder_from) / "config.json"), file,
                   "text_encoder_from", "'{}' has no config.json (a CLIPModel or CLIPTextModel folder)",
                   c.text_encoder_from);
  auto unused = r.unused_keys();
  COLLAGE_CHECK_AT(unused.empty(), file, unused.empty() ? "" : unused.front(), "unknown training config key");
  COLLAGE_CHECK_AT(c.batch_size > 0, file, "batch_size", "must be positive");
  COLLAGE_CHECK_AT(c.image_size % c.vae_factor == 0, file, "image_size", "must be divisible by vae_factor");
  c.raw = j;
  return c;
}

TrainConfig TrainConfig::from_json_file(const std::string& path) { return from_json(read_json_file(path), path); }

// ------------------------------------------------------------------------------------------------ trainer

Trainer::Trainer(TrainConfig config, std::string out_dir, at::Device device)
    : config_(std::move(config)), out_dir_(std::move(out_dir)), device_(device) {
  if (device_.is_cuda())
    COLLAGE_CHECK(torch::cuda::is_available(), "training on {} needs a CUDA build of libtorch and a visible GPU",
                  device_.str());
  torch::manual_seed(config_.seed);
  unet = UNet2DConditionModel(UNet2DConditionConfig::from_json(config_.unet, "training config: unet"));
  auto tcfg = ClipTextConfig::from_json(config_.text_encoder, "training config: text_encoder");
  text_encoder = ClipTextModel(tcfg);
  {
    torch::NoGradGuard no_grad;  // CLIP's initialisation of the embeddings (torch's N(0, 1) is far too large)
    text_encoder->text_model->embeddings->token_embedding->weight.normal_(0, 0.02);
    text_encoder->text_model->embeddings->position_embedding->weight.normal_(0, 0.01);
  }
  if (!config_.text_encoder_from.empty()) load_text_encoder(config_.text_encoder_from, tcfg);
  if (!config_.unet_from.empty()) load_unet(config_.unet_from);
  if (!config_.train_text_encoder)
    for (auto& p : text_encoder->parameters(true)) p.set_requires_grad(false);
  max_length_ = tcfg.max_position_embeddings;
  tokenizer_ = std::make_shared<ClipTokenizer>(ClipTokenizer::from_folder(config_.tokenizer_source));
  COLLAGE_CHECK(tokenizer_->vocab_size() <= tcfg.vocab_size, "tokenizer has {} tokens, text encoder vocab_size {}",
                tokenizer_->vocab_size(), tcfg.vocab_size);
  const auto ucfg = unet->config();
  COLLAGE_CHECK(ucfg.cross_attention_dim == tcfg.hidden_size, "unet cross_attention_dim {} != text hidden_size {}",
                ucfg.cross_attention_dim, tcfg.hidden_size);
  const int64_t lc = 3 * config_.vae_factor * config_.vae_factor;
  COLLAGE_CHECK(ucfg.in_channels == lc && ucfg.out_channels == lc, "unet in/out channels must be {} (3 x {}^2)", lc,
                config_.vae_factor);
  if (ucfg.block_out_channels.front() < lc)  // run1 of the embedded model: stuck at the trivial-denoiser loss
    std::cerr << fmt::format("warning: unet block_out_channels[0] = {} < {} latent channels: the full-resolution "
                             "path is a bottleneck and the loss plateaus near the trivial denoiser's\n",
                             ucfg.block_out_channels.front(), lc);

  auto scfg = SchedulerConfig::from_json(config_.scheduler, "training config: scheduler");
  COLLAGE_CHECK(scfg.prediction_type == "epsilon" || scfg.prediction_type == "v_prediction",
                "training config: scheduler.prediction_type '{}' cannot be trained (epsilon or v_prediction)",
                scfg.prediction_type);
  v_prediction_ = scfg.prediction_type == "v_prediction";
  auto sched = make_scheduler(scfg.class_name.empty() ? "ddpm" : scfg.class_name, scfg);
  alphas_cumprod_ = sched->alphas_cumprod().to(at::kFloat).to(device_).clone();

  scaling_factor_ = config_.scaling_factor;
  if (scaling_factor_ <= 0) {  // 1 / std of the latents of 256 training renders (fixed scenes)
    std::vector<at::Tensor> imgs;
    auto so = sample_options(config_);
    for (int i = 0; i < 256; ++i)
      imgs.push_back(shapesworld::render(shapesworld::sample_scene(1000000007ull + i, so), config_.image_size,
                                         config_.image_size).image);
    auto x = at::stack(imgs) * 2.0 - 1.0;
    scaling_factor_ = 1.0 / x.std().item<double>();
  }

  for (const auto& p : unet->named_parameters(true)) param_names_.push_back("unet." + p.key());
  for (const auto& p : text_encoder->named_parameters(true)) param_names_.push_back("text_encoder." + p.key());
  unet->to(device_);
  text_encoder->to(device_);
  if (config_.channels_last) unet->set_channels_last(true);
  unet->train();
  text_encoder->train();
  auto params = parameters();
  for (auto& p : params) ema_.push_back(p.detach().clone());
  optimizer_ = std::make_unique<torch::optim::AdamW>(
      params, torch::optim::AdamWOptions(config_.learning_rate)
                  .betas({config_.adam_beta1, config_.adam_beta2})
                  .eps(config_.adam_eps)
                  .weight_decay(config_.weight_decay));
}

void Trainer::load_text_encoder(const std::string& folder, const ClipTextConfig& expected) {
  // A CLIPModel or CLIPTextModel folder, as the pipelines load it (a CLIPModel gives its text tower).
  const auto config_path = (fs::path(folder) / "config.json").string();
  const auto json = read_json_file(config_path);
  const std::string prefix = json.value("model_type", std::string()) == "clip" ? "text_config." : "";
  auto source = ClipTextModelImpl::load(folder);
  const ClipTextConfig& found = source->config();
  auto same = [&](const char* key, int64_t a, int64_t b) {
    COLLAGE_CHECK_AT(a == b, config_path, prefix + key, "is {}, the training config's text_encoder.{} is {}", a, key,
                     b);
  };
  same("vocab_size", found.vocab_size, expected.vocab_size);
  same("hidden_size", found.hidden_size, expected.hidden_size);
  same("intermediate_size", found.intermediate_size, expected.intermediate_size);
  same("num_hidden_layers", found.num_hidden_layers, expected.num_hidden_layers);
  same("num_attention_heads", found.num_attention_heads, expected.num_attention_heads);
  same("max_position_embeddings", found.max_position_embeddings, expected.max_position_embeddings);
  COLLAGE_CHECK_AT(found.hidden_act == expected.hidden_act, config_path, prefix + "hidden_act",
                   "is {}, the training config's text_encoder.hidden_act is {}", found.hidden_act, expected.hidden_act);
  torch::NoGradGuard no_grad;
  auto params = source->named_parameters(true);
  for (auto& p : text_encoder->named_parameters(true)) p.value().copy_(params[p.key()]);
}

void Trainer::load_unet(const std::string& path) {
  if (fs::is_directory(path)) {
    load_module_weights(*unet, find_weight_files(path, {"diffusion_pytorch_model", "model"}));
    return;
  }
  auto file = load_safetensors(path);  // a checkpoint: unet.* and text_encoder.* keys
  torch::NoGradGuard no_grad;
  for (auto& p : unet->named_parameters(true)) {
    const auto key = "unet." + p.key();
    COLLAGE_CHECK_AT(file.count(key), path, key, "missing (a checkpoint of a different UNet config?)");
    COLLAGE_CHECK_AT(file.at(key).sizes() == p.value().sizes(), path, key, "shape [{}] in the file, [{}] in the config",
                     fmt::join(file.at(key).sizes(), ","), fmt::join(p.value().sizes(), ","));
    p.value().copy_(file.at(key));
  }
}

std::vector<at::Tensor> Trainer::parameters() const {
  std::vector<at::Tensor> out;
  for (const auto& p : unet->parameters(true)) out.push_back(p);
  for (const auto& p : text_encoder->parameters(true)) out.push_back(p);
  return out;
}

int64_t Trainer::unet_parameters() const {
  int64_t n = 0;
  for (const auto& p : unet->parameters(true)) n += p.numel();
  return n;
}

int64_t Trainer::text_encoder_parameters() const {
  int64_t n = 0;
  for (const auto& p : text_encoder->parameters(true)) n += p.numel();
  return n;
}

Batch Trainer::make_batch(int64_t step, bool caption_dropout) const {
  const int64_t B = config_.batch_size, H = config_.image_size;
  auto so = sample_options(config_);
  Batch b;
  // Scenes are independent: render them in parallel (on a GPU the renderer is otherwise the bottleneck).
  std::vector<at::Tensor> imgs(B);
  b.captions.resize(B);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint64_t s = scene_seed(config_, step, i);
      auto scene = shapesworld::sample_scene(s, so);
      imgs[i] = shapesworld::render(scene, int(H), int(H)).image;
      b.captions[i] = shapesworld::caption(scene, s);
    }
  });
  auto gen = at::make_generator<at::CPUGeneratorImpl>(mix64(config_.seed * 0x100000001B3ull + uint64_t(step)));
  auto drop = at::rand({B}, gen, at::kFloat);
  for (int64_t i = 0; i < B; ++i)
    if (caption_dropout && drop[i].item<float>() < config_.caption_dropout) b.captions[i].clear();
  b.input_ids = at::empty({B, max_length_}, at::kLong);
  for (int64_t i = 0; i < B; ++i) {
    auto ids = tokenizer_->encode_padded(b.captions[i], max_length_);
    std::copy(ids.begin(), ids.end(), b.input_ids[i].data_ptr<int64_t>());
  }
  b.latents = at::pixel_unshuffle(at::stack(imgs) * 2.0 - 1.0, config_.vae_factor) * scaling_factor_;
  b.noise = at::randn(b.latents.sizes(), gen, at::kFloat);
  b.timesteps = at::randint(0, alphas_cumprod_.size(0), {B}, gen, at::kLong);
  return b;
}

Trainer::Prediction Trainer::predict(const Batch& b, std::map<std::string, at::Tensor>* debug) {
  const bool nb = device_.is_cuda();  // pinned-free async copies are fine: the batch outlives the step
  auto timesteps = b.timesteps.to(device_, nb), latents = b.latents.to(device_, nb), noise = b.noise.to(device_, nb);
  auto ac = alphas_cumprod_.index_select(0, timesteps).view({-1, 1, 1, 1});
  auto noisy = ac.sqrt() * latents + (1 - ac).sqrt() * noise;
  auto emb = text_encoder->forward(b.input_ids.to(device_, nb)).last_hidden_state;
  if (debug) (*debug)["text_encoder"] = emb;
  auto out = unet->forward(noisy, timesteps, emb, nullptr, debug);
  if (debug) (*debug)["conv_out"] = out;
  return {out.to(at::kFloat), noisy, ac};
}

at::Tensor diffusion_target(bool v_prediction, const at::Tensor& latents, const at::Tensor& noise,
                            const at::Tensor& alphabar) {
  // In x0 terms the v loss weighs a step by 1 + SNR where epsilon's weighs it by SNR, so the high-noise steps
  // (where only the caption says what to draw) are not drowned out.
  return v_prediction ? alphabar.sqrt() * noise - (1 - alphabar).sqrt() * latents : noise;
}

at::Tensor Trainer::loss_tensor(const Batch& b, std::map<std::string, at::Tensor>* debug) {
  auto p = predict(b, debug);
  return at::mse_loss(p.output, diffusion_target(v_prediction_, b.latents.to(device_), b.noise.to(device_), p.alphabar));
}

double Trainer::x0_error(const Batch& b, bool use_ema) {
  torch::NoGradGuard no_grad;
  if (use_ema) swap_ema();
  auto p = predict(b);
  if (use_ema) swap_ema();
  const auto& ac = p.alphabar;
  auto x0 = v_prediction_ ? ac.sqrt() * p.noisy - (1 - ac).sqrt() * p.output
                          : (p.noisy - (1 - ac).sqrt() * p.output) / ac.sqrt();
  return at::mse_loss(x0, b.latents.to(device_)).item<double>();
}

std::string Trainer::first_non_finite_output(const Batch& b) {
  std::map<std::string, at::Tensor> debug;
  loss_tensor(b, &debug);
  // in the order they are computed
  for (const char* k : {"text_encoder", "time_proj", "time_embedding", "conv_in", "down_blocks.0", "down_blocks.1",
                        "down_blocks.2", "down_blocks.3", "mid_block", "up_blocks.0", "up_blocks.1", "up_blocks.2",
                        "up_blocks.3", "conv_norm_out", "conv_out"})
    if (debug.count(k) && !at::isfinite(debug.at(k)).all().item<bool>()) return k;
  return "";
}

void Trainer::swap_ema() {
  torch::NoGradGuard no_grad;
  auto params = parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    auto tmp = params[i].detach().clone();
    params[i].detach().copy_(ema_[i]);
    ema_[i].copy_(tmp);
  }
}

double Trainer::loss_on(const Batch& batch, bool use_ema) {
  torch::NoGradGuard no_grad;
  if (use_ema) swap_ema();
  double loss = loss_tensor(batch).item<double>();
  if (use_ema) swap_ema();
  return loss;
}

std::pair<double, double> Trainer::text_probe(bool use_ema) {
  const int64_t probe_step = int64_t(1) << 32;  // scene seeds far past any training step
  Batch cond = make_batch(probe_step, false);
  const int64_t B = cond.timesteps.size(0);
  cond.timesteps = at::linspace(500, double(alphas_cumprod_.size(0) - 1), B).round().to(at::kLong);
  Batch uncond = cond;
  const auto empty = tokenizer_->encode_padded("", max_length_);
  uncond.input_ids = cond.input_ids.clone();
  for (int64_t i = 0; i < B; ++i) std::copy(empty.begin(), empty.end(), uncond.input_ids[i].data_ptr<int64_t>());
  return {x0_error(cond, use_ema), x0_error(uncond, use_ema)};
}

StepStats Trainer::train_step(const Batch* fixed) {
  StepStats st;
  st.lr = config_.learning_rate *
          std::min(1.0, double(step_ - warmup_start_ + 1) / double(std::max<int64_t>(1, config_.warmup_steps)));
  const int64_t warm_end = warmup_start_ + config_.warmup_steps;
  if (config_.lr_decay == "cosine" && step_ >= warm_end && config_.max_steps > warm_end) {
    st.lr = config_.learning_rate *
            detail::cosine_to_tenth(double(step_ - warm_end) / double(config_.max_steps - warm_end));
  }
  for (auto& group : optimizer_->param_groups())
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(st.lr);
  const Batch batch = fixed ? *fixed : make_batch(step_);
  optimizer_->zero_grad();
  auto loss = loss_tensor(batch);
  st.loss = loss.item<double>();
  if (!std::isfinite(st.loss)) return st;  // no update: the weights stay as they were, for the diagnosis
  loss.backward();
  auto params = parameters();
  st.grad_norm = config_.grad_clip > 0 ? torch::nn::utils::clip_grad_norm_(params, config_.grad_clip) : 0.0;
  optimizer_->step();
  {
    torch::NoGradGuard no_grad;
    const double d = std::min(config_.ema_decay, double(1 + step_) / double(10 + step_));
    for (size_t i = 0; i < params.size(); ++i) ema_[i].mul_(d).add_(params[i].detach(), 1.0 - d);
  }
  ++step_;
  return st;
}

std::map<std::string, at::Tensor> Trainer::named_state(bool ema) const {
  std::map<std::string, at::Tensor> out;
  auto params = parameters();
  for (size_t i = 0; i < params.size(); ++i) out[param_names_[i]] = (ema ? ema_[i] : params[i]).detach().cpu();
  return out;
}

std::string Trainer::save_checkpoint() {
  const fs::path root = fs::path(out_dir_) / "checkpoints";
  fs::create_directories(root);
  const fs::path dir = root / fmt::format("step_{:07d}", step_);
  const fs::path tmp = root / fmt::format(".tmp_step_{:07d}", step_);
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  auto contiguous = [](std::map<std::string, at::Tensor> m) {
    for (auto& [k, v] : m) v = v.contiguous();
    return m;
  };
  save_safetensors((tmp / "params.safetensors").string(), contiguous(named_state(false)));
  save_safetensors((tmp / "ema.safetensors").string(), contiguous(named_state(true)));
  torch::save(*optimizer_, (tmp / "optimizer.pt").string());
  Json state;
  state["step"] = step_;
  state["seed"] = config_.seed;
  state["scaling_factor"] = scaling_factor_;
  state["train_seconds"] = train_seconds;
  state["config"] = config_.raw;
  write_json_file((tmp / "state.json").string(), state);
  fs::remove_all(dir);
  fs::rename(tmp, dir);
  std::vector<fs::path> all;
  for (const auto& e : fs::directory_iterator(root))
    if (e.is_directory() && e.path().filename().string().rfind("step_", 0) == 0) all.push_back(e.path());
  std::sort(all.begin(), all.end());
  for (size_t i = 0; i + size_t(std::max<int64_t>(1, config_.keep_checkpoints)) < all.size(); ++i)
    fs::remove_all(all[i]);
  return dir.string();
}

bool Trainer::resume_latest() {
  const fs::path root = fs::path(out_dir_) / "checkpoints";
  if (!fs::is_directory(root)) return false;
  std::vector<fs::path> all;
  for (const auto& e : fs::directory_iterator(root))
    if (e.is_directory() && e.path().filename().string().rfind("step_", 0) == 0 &&
        fs::exists(e.path() / "state.json"))
      all.push_back(e.path());
  if (all.empty()) return false;
  std::sort(all.begin(), all.end());
  const fs::path dir = all.back();
  auto state = read_json_file((dir / "state.json").string());
  // A checkpoint may hold the EMA weights alone (that is what comes back from a short GPU lease, within its
  // per-file size limit): then training continues from the EMA weights with a fresh optimiser.
  const bool has_params = fs::exists(dir / "params.safetensors");
  auto ema_file = load_safetensors((dir / "ema.safetensors").string());
  auto params_file = has_params ? load_safetensors((dir / "params.safetensors").string()) : ema_file;
  auto params = parameters();
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& name = param_names_[i];
    COLLAGE_CHECK_AT(params_file.count(name) && ema_file.count(name), dir.string(), name,
                     "checkpoint lacks this parameter (different config?)");
    COLLAGE_CHECK_AT(params_file[name].sizes() == params[i].sizes(), dir.string(), name, "shape mismatch");
    params[i].detach().copy_(params_file[name]);
    ema_[i].copy_(ema_file[name]);
  }
  if (has_params && fs::exists(dir / "optimizer.pt"))
    torch::load(*optimizer_, (dir / "optimizer.pt").string(), device_);
  else
    std::cerr << "note: " << dir.string() << " has no params/optimizer state: continuing from its EMA weights "
              << "with a fresh optimiser (and a new learning-rate warm-up)\n";
  step_ = state["step"].get<int64_t>();
  if (!(has_params && fs::exists(dir / "optimizer.pt"))) warmup_start_ = step_;
  scaling_factor_ = state["scaling_factor"].get<double>();
  train_seconds = state.value("train_seconds", 0.0);
  return true;
}

void Trainer::export_model(const std::string& folder, bool use_ema) const {
  const fs::path out(folder);
  for (const char* sub : {"unet", "text_encoder", "tokenizer", "vae", "scheduler"}) fs::create_directories(out / sub);
  const auto dtype = dtype_of(config_.save_dtype, "");
  std::map<std::string, at::Tensor> unet_w, text_w;
  for (const auto& [name, t] : named_state(use_ema)) {
    auto v = t.to(dtype).contiguous();
    if (name.rfind("unet.", 0) == 0) unet_w[name.substr(5)] = v;
    else text_w[name.substr(13)] = v;
  }
  Json ucfg = config_.unet;
  ucfg["_class_name"] = "UNet2DConditionModel";
  ucfg["_diffusers_version"] = "0.21.4";
  write_json_file((out / "unet" / "config.json").string(), ucfg);
  save_safetensors((out / "unet" / "diffusion_pytorch_model.safetensors").string(), unet_w, {{"format", "pt"}});
  Json tcfg = config_.text_encoder;
  tcfg["architectures"] = Json::array({"CLIPTextModel"});
  tcfg["model_type"] = "clip_text_model";
  tcfg["torch_dtype"] = config_.save_dtype;
  write_json_file((out / "text_encoder" / "config.json").string(), tcfg);
  save_safetensors((out / "text_encoder" / "model.safetensors").string(), text_w, {{"format", "pt"}});
  detail::export_tokenizer(config_.tokenizer_source, out / "tokenizer", max_length_);
  SpaceToDepthConfig vae;
  vae.factor = config_.vae_factor;
  vae.in_channels = 3;
  vae.scaling_factor = scaling_factor_;
  write_json_file((out / "vae" / "config.json").string(), vae.to_json());
  Json scfg = config_.scheduler;
  scfg["_diffusers_version"] = "0.21.4";
  write_json_file((out / "scheduler" / "scheduler_config.json").string(), scfg);
  Json index;
  index["_class_name"] = "StableDiffusionPipeline";
  index["_diffusers_version"] = "0.21.4";
  index["feature_extractor"] = Json::array({nullptr, nullptr});
  index["safety_checker"] = Json::array({nullptr, nullptr});
  index["requires_safety_checker"] = false;
  index["scheduler"] = Json::array({"diffusers", scfg.value("_class_name", std::string("EulerAncestralDiscreteScheduler"))});
  index["text_encoder"] = Json::array({"transformers", "CLIPTextModel"});
  index["tokenizer"] = Json::array({"transformers", "CLIPTokenizer"});
  index["unet"] = Json::array({"diffusers", "UNet2DConditionModel"});
  index["vae"] = Json::array({"collage", "SpaceToDepthAutoencoder"});
  write_json_file((out / "model_index.json").string(), index);
}

// ------------------------------------------------------------------------------------------------ run

TrainResult train(const TrainConfig& config_in, const TrainOptions& options) {
  TrainConfig config = config_in;
  if (options.steps >= 0) config.max_steps = options.steps;
  if (options.minutes >= 0) config.max_minutes = options.minutes;
  fs::create_directories(options.out_dir);
  const at::Device device(options.device);
  if (device.is_cuda()) {
    // TF32 tensor cores for the convolutions and GEMMs: training noise dwarfs the 1e-3 relative rounding.
    at::globalContext().setAllowTF32CuBLAS(true);
    at::globalContext().setAllowTF32CuDNN(true);
    at::globalContext().setBenchmarkCuDNN(true);
  }
  Trainer trainer(config, options.out_dir, device);
  auto log = [&](const std::string& s) {
    if (!options.quiet) std::cerr << s << std::endl;
  };
  const fs::path csv_path = fs::path(options.out_dir) / "loss.csv";
  bool resumed = false;
  if (options.resume) {
    resumed = trainer.resume_latest();
    log(resumed ? fmt::format("resumed at step {}", trainer.step()) : "no checkpoint to resume; starting fresh");
  } else {
    COLLAGE_CHECK_AT(!fs::exists(fs::path(options.out_dir) / "checkpoints"), options.out_dir, "",
                     "the output folder already has checkpoints: pass --resume, or choose another --out");
  }
  if (!resumed) write_text(csv_path, "step,loss,grad_norm,lr,seconds\n");
  std::ofstream csv(csv_path, std::ios::app);
  log(fmt::format("unet {} parameters, text encoder {} parameters, scaling_factor {:.5f}, batch {}, device {}",
                  trainer.unet_parameters(), trainer.text_encoder_parameters(), trainer.scaling_factor(),
                  config.batch_size, device.str()));

  const double start = wall();
  const double seconds_before = trainer.train_seconds;
  const double budget = config.max_minutes > 0 ? config.max_minutes * 60.0 : 1e30;
  std::vector<double> window;
  double window_start = wall();
  int64_t window_steps = 0;
  int64_t last_checkpoint = trainer.step();
  TrainResult result;
  // On a GPU the scenes of the next step are rendered (on the CPU cores) while the GPU runs this one; the
  // batch depends on the step index only, so results are the same as without prefetching.
  std::future<Batch> next;
  auto prefetch = [&trainer](int64_t step) {
    return std::async(std::launch::async, [&trainer, step] { return trainer.make_batch(step); });
  };
  const bool use_prefetch = options.prefetch < 0 ? device.is_cuda() : options.prefetch > 0;
  if (use_prefetch && trainer.step() < config.max_steps) next = prefetch(trainer.step());
  while (trainer.step() < config.max_steps && wall() - start < budget) {
    StepStats st;
    if (next.valid()) {
      const Batch batch = next.get();
      if (trainer.step() + 1 < config.max_steps) next = prefetch(trainer.step() + 1);
      st = trainer.train_step(&batch);
    } else {
      st = trainer.train_step();
    }
    trainer.train_seconds = seconds_before + (wall() - start);
    if (!std::isfinite(st.loss)) {  // say where the NaN came from: the data, the weights, or the step itself
      const auto b = trainer.make_batch(trainer.step());  // the step that failed (not counted)
      std::string bad_param;
      for (const auto& [name, t] : trainer.named_state(false))
        if (!at::isfinite(t).all().item<bool>()) {
          bad_param = name;
          break;
        }
      std::string where = trainer.first_non_finite_output(b);
      throw Error(fmt::format("loss is not finite at step {}{}: batch images {}, {}", trainer.step() + 1,
                              where.empty() ? " (a replay of its forward pass is finite: the non-finite value was transient)"
                                            : " (replayed: first non-finite output in " + where + ")",
                              at::isfinite(b.latents).all().item<bool>() ? "finite" : "NOT finite",
                              bad_param.empty() ? "all weights finite"
                                                : "first non-finite weight " + bad_param));
    }
    window.push_back(st.loss);
    if (int64_t(window.size()) > std::max<int64_t>(config.log_every, 1)) window.erase(window.begin());
    ++window_steps;
    csv << fmt::format("{},{:.6f},{:.4f},{:.3g},{:.1f}\n", trainer.step(), st.loss, st.grad_norm, st.lr,
                       trainer.train_seconds);
    if (config.log_every > 0 && trainer.step() % config.log_every == 0) {
      csv.flush();
      const double dt = wall() - window_start;
      double mean = 0;
      for (double v : window) mean += v;
      mean /= double(window.size());
      log(fmt::format("step {:6d}  loss {:.4f}  |g| {:.3f}  lr {:.2e}  {:.2f} steps/s  {:.1f} img/s  {:.0f} s",
                      trainer.step(), mean, st.grad_norm, st.lr, window_steps / dt,
                      window_steps * config.batch_size / dt, trainer.train_seconds));
      window_start = wall();
      window_steps = 0;
    }
    if (config.checkpoint_every > 0 && trainer.step() % config.checkpoint_every == 0) {
      const auto [cond, uncond] = trainer.text_probe(true);
      log(fmt::format("step {:6d}  text probe (EMA, x0 error at t = 500..999): {:.4f} with captions, {:.4f} without: "
                      "the text removes {:.1f} % of it", trainer.step(), cond, uncond, 100.0 * (uncond - cond) / uncond));
      trainer.save_checkpoint();
      last_checkpoint = trainer.step();
    }
  }
  csv.flush();
  if (last_checkpoint != trainer.step()) trainer.save_checkpoint();
  if (window.empty()) {  // nothing trained in this run (e.g. exporting a resumed checkpoint): the log's tail
    std::ifstream in(csv_path);
    std::string line;
    std::vector<double> losses;
    while (std::getline(in, line))
      if (!line.empty() && std::isdigit(static_cast<unsigned char>(line[0])))
        losses.push_back(std::stod(line.substr(line.find(',') + 1)));
    for (size_t i = losses.size() > size_t(config.log_every) ? losses.size() - config.log_every : 0; i < losses.size(); ++i)
      window.push_back(losses[i]);
  }
  double mean = 0;
  for (double v : window) mean += v;
  result.final_loss = window.empty() ? 0.0 : mean / double(window.size());
  result.steps = trainer.step();
  result.seconds = wall() - start;
  result.model_dir = (fs::path(options.out_dir) / "model").string();
  trainer.export_model(result.model_dir, true);

  Json info;
  info["command"] = options.command_line;
  info["seed"] = config.seed;
  info["steps"] = result.steps;
  info["train_seconds"] = trainer.train_seconds;
  info["final_loss"] = result.final_loss;
  const auto [probe_cond, probe_uncond] = trainer.text_probe(true);
  info["text_probe"] = Json{{"measure", "x0 mean squared error, EMA weights, fixed unseen scenes, t = 500..999"},
                            {"with_captions", probe_cond},
                            {"without_captions", probe_uncond}};
  info["prediction_type"] = trainer.v_prediction() ? "v_prediction" : "epsilon";
  info["batch_size"] = config.batch_size;
  info["images_seen"] = result.steps * config.batch_size;
  info["unet_parameters"] = trainer.unet_parameters();
  info["text_encoder_parameters"] = trainer.text_encoder_parameters();
  info["scaling_factor"] = trainer.scaling_factor();
  Json held = Json::array();
  for (const auto& [c, s] : config.held_out) held.push_back(Json::array({c, s}));
  info["held_out"] = held;
  info["config"] = config.raw;
  write_json_file((fs::path(result.model_dir) / "TRAINING.json").string(), info);
  std::string held_text;
  for (const auto& [c, s] : config.held_out) held_text += fmt::format("{}{} {}", held_text.empty() ? "" : ", ", c, s);
  write_text(fs::path(result.model_dir) / "TRAINING.md",
             fmt::format("# Embedded ShapesWorld model: training record\n\n"
                         "- command: `{}`\n- seed: {}\n- steps: {} (batch {}, {} images)\n"
                         "- wall time: {:.1f} min (all runs of this output folder)\n"
                         "- final loss (mean of the last {} steps): {:.4f}\n"
                         "- text probe (x0 mean squared error of the EMA weights on fixed unseen scenes, t = 500..999): "
                         "{:.4f} with captions, {:.4f} without\n"
                         "- parameters: UNet {}, text encoder {}\n- latent scaling_factor: {:.5f}\n"
                         "- held-out (colour, shape) combinations, never rendered in training: {}\n\n"
                         "The exact configuration is in TRAINING.json.\n",
                         options.command_line, config.seed, result.steps, config.batch_size,
                         result.steps * config.batch_size, trainer.train_seconds / 60.0, window.size(),
                         result.final_loss, probe_cond, probe_uncond, trainer.unet_parameters(), trainer.text_encoder_parameters(),
                         trainer.scaling_factor(), held_text));
  log(fmt::format("done: {} steps, final loss {:.4f}, model in {}", result.steps, result.final_loss,
                  result.model_dir));
  return result;
}

}  // namespace collage::training
