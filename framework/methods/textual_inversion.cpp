#include "methods/textual_inversion.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>

#include "collage/collage.h"
#include "core/core.h"
#include "diffusion/diffusion.h"
#include "models/models.h"

namespace fs = std::filesystem;

namespace collage {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// FNV-1a over 64-bit words (plus the tail bytes): fast enough for a 150 MB embedding table.
struct Hasher {
  uint64_t h = 1469598103934665603ull;
  void bytes(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    size_t words = n / 8;
    for (size_t i = 0; i < words; ++i) {
      uint64_t w;
      std::memcpy(&w, p + 8 * i, 8);
      h = (h ^ w) * 1099511628211ull;
      h ^= h >> 29;
    }
    for (size_t i = words * 8; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  }
  void text(const std::string& s) {
    bytes(s.data(), s.size());
    bytes("\0", 1);
  }
  void tensor(const at::Tensor& t) {
    auto c = t.detach().to(at::kCPU).contiguous();
    bytes(c.data_ptr(), c.numel() * c.element_size());
    text(fmt::format("{}", fmt::join(c.sizes(), "x")));
  }
  std::string hex() const { return fmt::format("{:016x}", h); }
};

const std::vector<std::string>& templates() {
  static const std::vector<std::string> t = {
      "a photo of a {} {}",     "a picture of the {} {}",  "an image of a {} {}",     "a close-up of the {} {}",
      "a rendering of a {} {}", "a photo of one {} {}",    "the {} {} in a scene",    "a cropped photo of a {} {}"};
  return t;
}

std::string fill_template(const std::string& tpl, const std::string& token, const std::string& text) {
  std::string out = tpl;
  auto p = out.find("{}");
  out.replace(p, 2, token);
  p = out.find("{}", p + token.size());
  out.replace(p, 2, text);
  // An empty layer text leaves a double space.
  while ((p = out.find("  ")) != std::string::npos) out.erase(p, 1);
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

// Restores the UNet's gradient flags and packed convolutions when training ends (normally or not).
struct UnetTrainingGuard {
  StableDiffusion& sd;
  std::vector<std::pair<at::Tensor, bool>> flags;
  bool repack = false;
  explicit UnetTrainingGuard(StableDiffusion& s) : sd(s) {
    for (auto& p : sd.unet->parameters()) {
      flags.emplace_back(p, p.requires_grad());
      p.set_requires_grad(false);
    }
    for (const auto& m : sd.unet->modules())
      if (auto conv = std::dynamic_pointer_cast<Conv2dPackedImpl>(m)) repack = repack || conv->packed();
    if (repack) unpack_convs(*sd.unet);  // packed oneDNN weights have no backward
  }
  ~UnetTrainingGuard() {
    for (auto& [p, f] : flags) p.set_requires_grad(f);
    if (repack) pack_large_convs(*sd.unet);
  }
};

// Batch of augmented copies: colour jitter and a random crop resized back, applied to image and mask alike.
std::pair<at::Tensor, at::Tensor> augment_batch(const at::Tensor& image, const at::Tensor& mask, int64_t batch,
                                                bool augment, at::Generator& gen) {
  std::vector<at::Tensor> imgs, masks;
  const int64_t H = image.size(1), W = image.size(2);
  for (int64_t b = 0; b < batch; ++b) {
    auto img = image;
    auto m = mask.unsqueeze(0);
    if (augment) {
      auto r = at::rand({5}, gen, at::kDouble);
      const double frac = 0.8 + 0.2 * r[0].item<double>();
      const int64_t ch = std::max<int64_t>(1, std::lround(H * frac)), cw = std::max<int64_t>(1, std::lround(W * frac));
      const int64_t top = std::lround((H - ch) * r[1].item<double>()), left = std::lround((W - cw) * r[2].item<double>());
      img = at::upsample_bilinear2d(img.narrow(1, top, ch).narrow(2, left, cw).unsqueeze(0), {H, W}, false)[0];
      m = at::upsample_bilinear2d(m.narrow(1, top, ch).narrow(2, left, cw).unsqueeze(0), {H, W}, false)[0];
      const double brightness = 0.8 + 0.4 * r[3].item<double>();
      const double contrast = 0.9 + 0.2 * r[4].item<double>();
      img = img * brightness;
      img = ((img - img.mean()) * contrast + img.mean()).clamp(0, 1);
    }
    imgs.push_back(img);
    masks.push_back(m);
  }
  return {at::stack(imgs), at::stack(masks)};
}

}  // namespace

Json TextualInversionSettings::to_json() const {
  return Json{{"steps", steps},         {"batch", batch},     {"warmup_steps", warmup_steps},
              {"learning_rate", learning_rate}, {"weight_decay", weight_decay}, {"grad_clip", grad_clip},
              {"init", init},           {"augment", augment}, {"seed", seed}};
}

std::string default_cache_dir() {
  if (const char* d = std::getenv("COLLAGE_CACHE_DIR"); d && *d) return d;
  if (const char* d = std::getenv("XDG_CACHE_HOME"); d && *d) return (fs::path(d) / "collage").string();
  if (const char* d = std::getenv("HOME"); d && *d) return (fs::path(d) / ".cache" / "collage").string();
  return ".collage_cache";
}

std::string model_fingerprint(StableDiffusion& sd) {
  Hasher h;
  h.tensor(sd.text_encoder->token_embedding_weight());
  int64_t count = 0;
  for (const auto& p : sd.unet->named_parameters()) {
    count += p.value().numel();
    if (p.key().rfind("conv_in.", 0) == 0 || p.key().rfind("conv_out.", 0) == 0) h.tensor(p.value());
  }
  for (const auto& p : sd.text_encoder->parameters()) count += p.numel();
  h.text(std::to_string(count));
  h.text(c10::toString(sd.dtype));
  return h.hex();
}

void save_embedding(const std::string& path, const at::Tensor& embedding, const std::map<std::string, std::string>& meta) {
  fs::create_directories(fs::path(path).parent_path());
  save_safetensors(path, {{"embedding", embedding.detach().to(at::kCPU, at::kFloat).contiguous()}}, meta);
}

at::Tensor load_embedding(const std::string& path, int64_t dim) {
  auto file = SafetensorsFile::open(path);
  COLLAGE_CHECK_AT(file->contains("embedding"), path, "embedding", "not a learned-embedding file");
  auto e = file->tensor("embedding").to(at::kFloat).reshape({-1});
  COLLAGE_CHECK_AT(e.size(0) == dim, path, "embedding",
                   "embedding has width {}, the model's text encoder expects {} (trained for another model?)",
                   e.size(0), dim);
  COLLAGE_CHECK_AT(at::isfinite(e).all().item<bool>(), path, "embedding", "embedding has NaN or infinite values");
  return e;
}

at::Tensor encode_prompt_with_embeddings(StableDiffusion& sd, const ClipTokenizer& tokenizer,
                                         const std::vector<std::string>& prompts,
                                         const std::map<int64_t, at::Tensor>& extra) {
  const int64_t len = tokenizer.model_max_length();
  auto ids = at::empty({static_cast<int64_t>(prompts.size()), len}, at::kLong);
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto row = tokenizer.encode_padded(prompts[i], len);
    std::copy(row.begin(), row.end(), ids[static_cast<int64_t>(i)].data_ptr<int64_t>());
  }
  ids = ids.to(sd.device);
  auto table = sd.text_encoder->token_embedding_weight();
  const int64_t vocab = table.size(0);
  auto embeds = table.index_select(0, ids.clamp_max(vocab - 1).reshape({-1})).view({ids.size(0), len, -1});
  for (const auto& [id, vec] : extra) {
    auto hit = ids.eq(id).unsqueeze(-1);
    embeds = at::where(hit, vec.to(embeds.device(), embeds.scalar_type()).view({1, 1, -1}), embeds);
  }
  auto unknown = ids.ge(vocab);
  for (const auto& kv : extra) unknown = unknown.logical_and(ids.ne(kv.first));
  COLLAGE_CHECK(!unknown.any().item<bool>(), "a prompt contains an added token that has no learned embedding");
  return sd.text_encoder->forward_embeddings(embeds, ids).last_hidden_state.to(sd.dtype);
}

namespace {

// The cache key of a learned embedding: the model, the layer's pixels and mask (8-bit), its text, the settings.
std::string cache_key(StableDiffusion& sd, const at::Tensor& image, const at::Tensor& mask, const std::string& layer_text,
                      const TextualInversionSettings& st) {
  Hasher key;
  key.text(model_fingerprint(sd));
  key.tensor(image.mul(255).round().to(at::kByte));
  key.tensor(mask.mul(255).round().to(at::kByte));
  key.text(layer_text);
  key.text(st.to_json().dump());
  return key.hex();
}

// The trainable row, initialised from a word's embedding ("head" = the layer text's last word).
at::Tensor initial_embedding(StableDiffusion& sd, const ClipTokenizer& tok, const std::string& init,
                             const std::string& layer_text) {
  std::string init_word = init;
  if (init_word == "head") {
    auto p = layer_text.find_last_of(' ');
    init_word = layer_text.empty() ? "a" : (p == std::string::npos ? layer_text : layer_text.substr(p + 1));
  }
  auto init_ids = tok.encode(init_word);
  COLLAGE_CHECK(init_ids.size() >= 3, "TI: the init word '{}' has no tokens", init_word);
  auto table = sd.text_encoder->token_embedding_weight();
  return table[init_ids[1]].detach().to(at::kFloat).clone().to(sd.device).set_requires_grad(true);
}

// The masked epsilon (or v) loss of one batch, with the learned row substituted for the new token.
struct MaskedLoss {
  StableDiffusion& sd;
  const ClipTokenizer& tok;
  int64_t token_id;
  at::Tensor embedding, table, alphas_cumprod;
  bool v_pred;

  at::Tensor operator()(const at::Tensor& images, const at::Tensor& masks, const at::Tensor& t, const at::Tensor& eps_vae,
                        const at::Tensor& eps, const std::vector<std::string>& prompts) const {
    at::Tensor x0;
    {
      torch::NoGradGuard ng;
      auto post = sd.vae->encode(images.to(sd.device) * 2.0 - 1.0);
      x0 = post.sample(eps_vae.to(sd.device)) * sd.vae->scaling_factor();
    }
    auto m = downsample_masks(masks.squeeze(1), x0.size(2), x0.size(3)).unsqueeze(1).to(sd.device);
    auto a = alphas_cumprod.index_select(0, t).to(sd.device).view({-1, 1, 1, 1});
    auto e = eps.to(sd.device);
    auto xt = a.sqrt() * x0 + (1 - a).sqrt() * e;
    auto target = v_pred ? a.sqrt() * e - (1 - a).sqrt() * x0 : e;
    auto pred = sd.unet->forward(xt.to(sd.dtype), t.to(sd.device), text_states(prompts)).to(at::kFloat);
    return ((pred * m - target * m).pow(2)).mean();
  }

  at::Tensor text_states(const std::vector<std::string>& prompts) const {
    const int64_t len = tok.model_max_length();
    auto ids = at::empty({static_cast<int64_t>(prompts.size()), len}, at::kLong);
    for (size_t i = 0; i < prompts.size(); ++i) {
      auto row = tok.encode_padded(prompts[i], len);
      std::copy(row.begin(), row.end(), ids[static_cast<int64_t>(i)].data_ptr<int64_t>());
    }
    ids = ids.to(sd.device);
    auto rows = table.index_select(0, ids.clamp_max(table.size(0) - 1).reshape({-1})).view({ids.size(0), len, -1});
    auto tok_embeds = at::where(ids.eq(token_id).unsqueeze(-1), embedding.to(rows.scalar_type()).view({1, 1, -1}), rows);
    return sd.text_encoder->forward_embeddings(tok_embeds, ids).last_hidden_state.to(sd.dtype);
  }
};

// A fixed evaluation batch (no augmentation) to report the loss before and after training.
struct EvaluationBatch {
  at::Tensor images, masks, t, eps_vae, eps;
  std::vector<std::string> prompts;

  EvaluationBatch(StableDiffusion& sd, const at::Tensor& image, const at::Tensor& mask, const std::string& token,
                  const std::string& layer_text, uint64_t seed, int64_t T) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed + 7919);
    const int64_t n = 4;
    images = image.unsqueeze(0).expand({n, -1, -1, -1}).contiguous();
    masks = mask.unsqueeze(0).unsqueeze(0).expand({n, 1, -1, -1}).contiguous();
    t = at::linspace(T * 0.1, T * 0.9, n, at::kDouble).round().to(at::kLong);
    const int64_t f = sd.vae_scale_factor();
    const std::vector<int64_t> lat{n, sd.vae->latent_channels(), image.size(1) / f, image.size(2) / f};
    eps_vae = at::randn(lat, gen, at::kFloat);
    eps = at::randn(lat, gen, at::kFloat);
    for (int64_t i = 0; i < n; ++i) prompts.push_back(fill_template(templates()[i], token, layer_text));
  }
  double loss(const MaskedLoss& masked_loss) const {
    torch::NoGradGuard ng;
    return masked_loss(images, masks, t, eps_vae, eps, prompts).item<double>();
  }
};

}  // namespace

TextualInversionResult train_layer_embedding(StableDiffusion& sd, const at::Tensor& image_in, const at::Tensor& mask_in,
                                             const std::string& layer_text, const TextualInversionSettings& st,
                                             const std::string& cache_dir,
                                             const std::function<void(int64_t, int64_t, double)>& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  COLLAGE_CHECK(image_in.dim() == 3 && image_in.size(0) == 3, "TI: image must be (3, H, W)");
  COLLAGE_CHECK(mask_in.dim() == 2 && mask_in.size(0) == image_in.size(1) && mask_in.size(1) == image_in.size(2),
                "TI: mask must be (H, W) like the image");
  COLLAGE_CHECK(st.steps >= 0 && st.batch > 0 && st.learning_rate > 0, "TI: steps >= 0, batch > 0, lr > 0 needed");
  const auto image = image_in.to(at::kFloat).contiguous();
  const auto mask = mask_in.to(at::kFloat).contiguous();
  COLLAGE_CHECK(mask.sum().item<double>() > 0, "TI: layer '{}' is not visible anywhere (empty mask)", layer_text);
  TextualInversionResult res;
  if (!cache_dir.empty()) {
    res.cache_file = (fs::path(cache_dir) / "ti" / (cache_key(sd, image, mask, layer_text, st) + ".safetensors")).string();
    if (fs::exists(res.cache_file)) {
      res.embedding = load_embedding(res.cache_file, sd.text_encoder->config().hidden_size);
      res.from_cache = true;
      res.seconds = seconds_since(t0);
      return res;
    }
  }

  ClipTokenizer tok = *sd.tokenizer;
  const std::string token = "<collage-layer>";
  const int64_t token_id = tok.add_token(token);
  auto embedding = initial_embedding(sd, tok, st.init, layer_text);
  torch::AutoGradMode grad_mode(true);  // callers (Method::run) sample under no_grad
  UnetTrainingGuard guard(sd);
  const auto& ac = sd.scheduler->alphas_cumprod();
  const int64_t T = ac.size(0);
  const MaskedLoss masked_loss{sd,  tok, token_id, embedding, sd.text_encoder->token_embedding_weight(), ac,
                               sd.scheduler->config().prediction_type == "v_prediction"};
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(st.seed);
  const EvaluationBatch eval(sd, image, mask, token, layer_text, st.seed, T);
  res.eval_loss_before = eval.loss(masked_loss);

  torch::optim::AdamW opt({embedding}, torch::optim::AdamWOptions(st.learning_rate)
                                           .betas({0.9, 0.999})
                                           .weight_decay(st.weight_decay)
                                           .eps(1e-8));
  const std::vector<int64_t> shape{st.batch, eval.eps.size(1), eval.eps.size(2), eval.eps.size(3)};
  for (int64_t step = 0; step < st.steps; ++step) {
    const double lr = st.learning_rate * (st.warmup_steps > 0 ? std::min(1.0, double(step + 1) / st.warmup_steps) : 1.0);
    for (auto& g : opt.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
    auto [images, masks] = augment_batch(image, mask, st.batch, st.augment, gen);
    auto t = at::randint(T, {st.batch}, gen, at::kLong);
    auto eps_vae = at::randn(shape, gen, at::kFloat);
    auto eps = at::randn(shape, gen, at::kFloat);
    std::vector<std::string> prompts;
    auto r = at::randint(static_cast<int64_t>(templates().size()), {st.batch}, gen, at::kLong);
    for (int64_t i = 0; i < st.batch; ++i)
      prompts.push_back(fill_template(templates()[r[i].item<int64_t>()], token, layer_text));
    opt.zero_grad();
    auto loss = masked_loss(images, masks, t, eps_vae, eps, prompts);
    loss.backward();
    COLLAGE_CHECK(at::isfinite(embedding.grad()).all().item<bool>(),
                  "TI: non-finite gradient at step {} (layer '{}'); lower ti_lr", step, layer_text);
    if (st.grad_clip > 0) torch::nn::utils::clip_grad_norm_(std::vector<at::Tensor>{embedding}, st.grad_clip);
    opt.step();
    res.losses.push_back(loss.item<double>());
    if (progress) progress(step + 1, st.steps, res.losses.back());
  }
  res.eval_loss_after = eval.loss(masked_loss);
  res.embedding = embedding.detach().to(at::kCPU, at::kFloat).clone();
  if (!res.cache_file.empty())
    save_embedding(res.cache_file, res.embedding,
                   {{"layer_text", layer_text},
                    {"settings", st.to_json().dump()},
                    {"model", sd.name},
                    {"eval_loss_before", fmt::format("{}", res.eval_loss_before)},
                    {"eval_loss_after", fmt::format("{}", res.eval_loss_after)}});
  res.seconds = seconds_since(t0);
  return res;
}

}  // namespace collage
