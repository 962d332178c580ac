// Method::run: one sampling loop for every component combination. Bases choose the start (noise, SDEdit of
// the collage, a previous output); modifiers attach hooks (CA processor, LN callback, TI embeddings).
#include <ATen/ATen.h>
#include <torch/torch.h>

#include <chrono>
#include <filesystem>

#include "core/core.h"
#include "diffusion/guidance.h"
#include "methods/methods.h"

namespace fs = std::filesystem;

namespace collage {

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Removes the attention processors installed for one run, whatever happens.
struct ProcessorGuard {
  UNet2DConditionModel unet;
  ~ProcessorGuard() {
    if (unet) unet->reset_attn_processors();
  }
};

// Character offset of each layer text in the prompt: first occurrence not taken by an earlier layer.
std::vector<size_t> text_offsets(const std::string& prompt, const std::vector<std::string>& texts) {
  std::vector<size_t> out(texts.size(), std::string::npos);
  std::vector<std::pair<size_t, size_t>> taken;
  for (size_t i = 0; i < texts.size(); ++i) {
    if (texts[i].empty()) continue;
    size_t pos = prompt.find(texts[i]);
    size_t first = pos;
    while (pos != std::string::npos) {
      bool clash = false;
      for (auto [a, b] : taken) clash = clash || (pos < b && pos + texts[i].size() > a);
      if (!clash) break;
      pos = prompt.find(texts[i], pos + 1);
    }
    out[i] = pos == std::string::npos ? first : pos;
    if (out[i] != std::string::npos) taken.emplace_back(out[i], out[i] + texts[i].size());
  }
  return out;
}

// Layers textual inversion learns by default: every layer with text, except a background covering the canvas.
std::vector<int64_t> auto_ti_layers(const Collage& c, const at::Tensor& placed) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < static_cast<int64_t>(c.layers.size()); ++i) {
    if (c.layers[i].text.empty()) continue;
    if (i == 0 && placed[0][3].mean().item<double>() > 0.95) continue;
    out.push_back(i);
  }
  return out;
}

}  // namespace

MethodOutput Method::run(const Collage& collage, StableDiffusion& sd, const RunSettings& rs) const {
  torch::NoGradGuard no_grad;
  const double t_start = now();
  const auto& spec = spec_;
  const auto where = collage.where();
  COLLAGE_CHECK_AT(!rs.seeds.empty(), "", "--seeds", "no seeds given");
  COLLAGE_CHECK_AT(rs.steps > 0, "", "--steps", "steps must be positive, got {}", rs.steps);
  const int64_t B = static_cast<int64_t>(rs.seeds.size());
  const int64_t L = static_cast<int64_t>(collage.layers.size());
  const int64_t H = collage.height, W = collage.width;
  MethodOutput out;
  out.record = Json{{"method", spec.text},
                    {"params", spec.params},
                    {"collage", collage.file},
                    {"prompt", collage.prompt},
                    {"seeds", rs.seeds},
                    {"steps", rs.steps},
                    {"guidance_scale", rs.guidance_scale},
                    {"negative_prompt", rs.negative_prompt},
                    {"model", sd.name},
                    {"device", sd.device.str()},
                    {"dtype", c10::toString(sd.dtype)},
                    {"framework_version", framework_version()},
                    {"git_revision", git_revision()}};

  auto placed = place_layers(collage);
  auto visible = visible_masks(placed);
  auto flat = flatten_layers(placed, collage.background);
  out.artefacts["collage"] = flat;
  out.artefacts["visible_masks"] = visible;
  if (spec.base == "flatten") {
    out.images = flat.unsqueeze(0).expand({B, -1, -1, -1}).contiguous();
    out.timings["total"] = now() - t_start;
    return out;
  }
  const int64_t f = sd.vae_scale_factor();
  COLLAGE_CHECK_AT(H % f == 0 && W % f == 0, where, "width",
                   "canvas {}x{} must be divisible by {} (the model's VAE factor)", W, H, f);

  // ---- What the sampler starts from, and each pixel's strength ----
  at::Tensor init_image = flat;
  std::vector<double> strengths;
  double background_strength = spec.number("strength");
  const bool per_pixel = spec.ln || spec.base == "edit" || spec.base == "differential";
  if (spec.base == "edit") {
    const auto from = spec.string("edit_from");
    at::Tensor previous;
    try {
      previous = read_image(from);
    } catch (const Error& e) {
      throw Error(e.message(), from, "params.edit_from");
    }
    COLLAGE_CHECK_AT(previous.size(1) == H && previous.size(2) == W, from, "params.edit_from",
                     "previous output is {}x{}, the collage canvas is {}x{}", previous.size(2), previous.size(1), W, H);
    const auto regen = select_layers(collage, spec.string("edit_regenerate"), where, "params.edit_regenerate");
    init_image = previous;
    strengths.assign(L, spec.number("edit_keep_strength"));
    for (auto i : regen) {
      auto v = visible[i].unsqueeze(0);
      init_image = v * placed[i].narrow(0, 0, 3) + (1 - v) * init_image;
      strengths[i] = spec.number("edit_strength");
    }
    background_strength = spec.number("edit_keep_strength");
    out.record["regenerated_layers"] = regen;
  } else {
    for (const auto& l : collage.layers) strengths.push_back(l.noise_strength);
    // txt2img+ln: outside the layers the image comes from the text alone.
    if (spec.base == "txt2img") background_strength = 1.0;
  }

  // ---- Prompt, textual inversion ----
  ClipTokenizer tokenizer = *sd.tokenizer;
  std::map<int64_t, at::Tensor> learned;
  std::vector<std::string> texts;
  for (const auto& l : collage.layers) texts.push_back(l.text);
  std::string prompt = collage.prompt;
  std::vector<std::string> ti_tokens(L);
  if (spec.ti) {
    const double t0 = now();
    const auto sel = spec.string("ti_layers");
    const auto layers = sel == "auto" ? auto_ti_layers(collage, placed) : select_layers(collage, sel, where, "params.ti_layers");
    const auto ts = spec.ti_settings();
    const auto cache = rs.cache_dir.empty() ? default_cache_dir() : rs.cache_dir;
    Json ti_record = Json::array();
    const int64_t dim = sd.text_encoder->config().hidden_size;
    for (auto i : layers) {
      const auto& layer = collage.layers[i];
      at::Tensor emb;
      Json r{{"layer", i}};
      if (!layer.embedding.empty()) {
        const auto path = fs::path(layer.embedding).is_absolute() ? layer.embedding
                                                                   : (fs::path(collage.folder) / layer.embedding).string();
        emb = load_embedding(path, dim);
        r["source"] = path;
      } else {
        auto label = fmt::format("TI layer {} '{}'", i, layer.text);
        int64_t last_logged = -1;
        auto res = train_layer_embedding(
            sd, flatten_layers(placed, collage.background, i), visible[i], layer.text, ts, cache,
            [&](int64_t done, int64_t total, double loss) {
              if (!rs.log) return;
              const int64_t decile = done * 10 / std::max<int64_t>(total, 1);
              if (decile != last_logged && (done == total || decile > last_logged)) {
                last_logged = decile;
                rs.log(fmt::format("{}: step {}/{} loss {:.4f}", label, done, total, loss));
              }
            });
        if (rs.log && res.from_cache) rs.log(fmt::format("{}: learned embedding from cache {}", label, res.cache_file));
        emb = res.embedding;
        r["source"] = res.from_cache ? "cache" : "trained";
        r["cache_file"] = res.cache_file;
        r["seconds"] = res.seconds;
        if (!res.from_cache) {
          r["eval_loss_before"] = res.eval_loss_before;
          r["eval_loss_after"] = res.eval_loss_after;
          out.artefacts[fmt::format("ti_losses.{}", i)] = at::tensor(res.losses, at::kDouble);
        }
      }
      ti_tokens[i] = fmt::format("<layer_{}>", i);
      learned[tokenizer.add_token(ti_tokens[i])] = emb;
      out.artefacts[fmt::format("ti_embedding.{}", i)] = emb;
      ti_record.push_back(r);
    }
    // "... c_i ..." -> "... <layer_i> c_i ...", inserted right to left so earlier offsets stay valid.
    auto offsets = text_offsets(prompt, texts);
    std::vector<int64_t> order;
    for (int64_t i = 0; i < L; ++i)
      if (!ti_tokens[i].empty()) order.push_back(i);
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      auto oa = offsets[a] == std::string::npos ? prompt.size() : offsets[a];
      auto ob = offsets[b] == std::string::npos ? prompt.size() : offsets[b];
      return oa > ob;
    });
    for (auto i : order) {
      if (offsets[i] == std::string::npos)
        prompt += " " + ti_tokens[i];
      else
        prompt.insert(offsets[i], ti_tokens[i] + " ");
    }
    out.record["ti"] = ti_record;
    out.timings["ti_train"] = now() - t0;
  }
  out.record["prompt_used"] = prompt;

  // ---- Text conditioning ----
  auto token_positions = layer_token_positions(tokenizer, prompt, texts, where);
  const bool cfg = rs.guidance_scale > 1.0;
  auto encode = [&](const std::string& text) {
    return learned.empty() ? sd.encode_prompt({text}) : encode_prompt_with_embeddings(sd, tokenizer, {text}, learned);
  };
  if (spec.ti) {
    const auto ids = tokenizer.encode_padded(prompt, tokenizer.model_max_length());
    for (int64_t i = 0; i < L; ++i)
      if (!ti_tokens[i].empty()) {
        const int64_t id = *tokenizer.token_to_id(ti_tokens[i]);
        for (size_t p = 0; p < ids.size(); ++p)
          if (ids[p] == id) token_positions[i].insert(token_positions[i].begin(), static_cast<int64_t>(p));
      }
  }
  out.record["layer_tokens"] = token_positions;
  auto cond = encode(prompt);
  auto uncond = sd.encode_prompt({rs.negative_prompt});
  auto batch_of = [&](const at::Tensor& e) { return e.expand({B, e.size(1), e.size(2)}); };
  auto prompt_embeds = cfg ? at::cat({batch_of(uncond), batch_of(cond)}, 0) : batch_of(cond).contiguous();

  // ---- Scheduler and start ----
  std::unique_ptr<Scheduler> own_scheduler;
  Scheduler* scheduler = sd.scheduler.get();
  if (!rs.scheduler.empty() && rs.scheduler != scheduler->name()) {
    own_scheduler = make_scheduler(rs.scheduler, scheduler->config());
    scheduler = own_scheduler.get();
  }
  out.record["scheduler"] = scheduler->name();
  scheduler->set_timesteps(rs.steps);
  SeededNoise noise(rs.seeds);
  const auto latent_opts = at::TensorOptions().dtype(at::kFloat).device(sd.device);
  at::Tensor latents, x0;
  int64_t begin = 0;
  std::unique_ptr<LayerNoiseSampler> layer_noise;
  double start_strength = 1.0;
  if (spec.base == "txt2img" && !per_pixel) {
    latents = noise.draw({B, sd.vae->latent_channels(), H / f, W / f}, latent_opts, "initial_latents") *
              scheduler->init_noise_sigma();
  } else {
    const double t0 = now();
    x0 = sd.encode_image(init_image.unsqueeze(0).expand({B, -1, -1, -1}).contiguous(), noise);
    out.timings["encode"] = now() - t0;
    if (per_pixel) {
      at::Tensor map;
      if (spec.base == "differential") {
        const auto path = spec.string("diff_map");
        if (path.empty()) {
          map = noise_map(visible, strengths, background_strength, 0.0);
        } else {
          try {
            map = read_image(path).mean(0);
          } catch (const Error& e) {
            throw Error(e.message(), path, "params.diff_map");
          }
          COLLAGE_CHECK_AT(map.size(0) == H && map.size(1) == W, path, "params.diff_map",
                           "strength map is {}x{}, the canvas is {}x{}", map.size(1), map.size(0), W, H);
        }
      } else {
        map = noise_map(visible, strengths, background_strength, spec.has("ln") ? spec.number("ln_blur") : -1.0);
      }
      const bool dilate = spec.base != "differential" && (!spec.ln || spec.flag("ln_dilate"));
      layer_noise = std::make_unique<LayerNoiseSampler>(*scheduler, x0, map, noise, dilate);
      start_strength = layer_noise->start_strength();
      out.artefacts["noise_map"] = map;
    } else {
      start_strength = spec.number("strength");
    }
    COLLAGE_CHECK_AT(start_strength > 0, where, "noise_strength",
                     "every pixel has strength 0: nothing would change (raise a layer's noise_strength or strength)");
    auto start = scheduler->img2img_start(start_strength);
    COLLAGE_CHECK_AT(!start.timesteps.empty(), "", "--steps", "strength {} with {} steps runs no step",
                     start_strength, rs.steps);
    begin = start.begin_index;
    auto eps = noise.draw(x0.sizes(), latent_opts, "img2img_noise");
    latents = scheduler->add_noise(x0, eps, start.timesteps.front());
  }
  out.record["start_strength"] = start_strength;

  // ---- Hooks: CA / attention recording, LN ----
  ProcessorGuard guard{nullptr};
  std::shared_ptr<CollageAttentionProcessor> processor;
  if (spec.ca || spec.paint_with_words || rs.record_attention) {
    std::vector<CaLayer> ca_layers;
    for (int64_t i = 0; i < L; ++i) {
      CaLayer c;
      c.tokens = token_positions[i];
      if (spec.paint_with_words) {
        c.w_pos = spec.number("pww_weight");
        c.w_neg = 0;
      } else if (spec.ca) {
        c.w_pos = spec.number("ca_w_pos") >= 0 ? spec.number("ca_w_pos") : collage.layers[i].w_pos;
        c.w_neg = spec.number("ca_w_neg") >= 0 ? spec.number("ca_w_neg") : collage.layers[i].w_neg;
      }
      ca_layers.push_back(c);
    }
    const auto schedule = spec.paint_with_words ? CaSchedule::EDiffI
                          : spec.ca             ? parse_ca_schedule(spec.string("ca_schedule"))
                                                : CaSchedule::LogLog;
    processor = std::make_shared<CollageAttentionProcessor>(visible, ca_layers, schedule,
                                                            spec.ca || spec.paint_with_words, rs.record_attention,
                                                            spec.ca ? spec.integer("ca_min_size") : 0);
    guard.unet = sd.unet;
    sd.unet->set_attn_processor([](const Attention& a) { return a->is_cross(); }, processor);
  }
  SamplerHooks hooks;
  if (layer_noise) hooks.on_step_end = [&](StepState& s) { layer_noise->on_step_end(s); };

  // ---- Denoiser ----
  DenoiseFn denoise;
  if (spec.base == "regional") {
    // Each layer's region follows its own prompt; the global prompt fills the rest and mixes in everywhere.
    std::vector<at::Tensor> region_embeds;
    std::vector<int64_t> region_layers;
    for (int64_t i = 0; i < L; ++i) {
      if (collage.layers[i].text.empty()) continue;
      const auto text = ti_tokens[i].empty() ? collage.layers[i].text : ti_tokens[i] + " " + collage.layers[i].text;
      region_embeds.push_back(batch_of(encode(text)).contiguous());
      region_layers.push_back(i);
    }
    auto masks = downsample_masks(visible, H / f, W / f).to(sd.device);
    const double wg = spec.number("regional_global_weight");
    auto unet = sd.unet;
    auto cond_b = batch_of(cond).contiguous(), uncond_b = batch_of(uncond).contiguous();
    const double g = rs.guidance_scale;
    denoise = [=](const at::Tensor& x, double t, const StepInfo& step_in) mutable {
      torch::NoGradGuard ng;
      auto ts = at::scalar_tensor(t, at::TensorOptions().dtype(at::kFloat).device(x.device()));
      auto run = [&](const at::Tensor& ctx, bool conditional) {
        StepInfo step = step_in;
        step.conditional.assign(x.size(0), conditional);
        return unet->forward(x.to(ctx.scalar_type()), ts, ctx, &step).to(x.scalar_type());
      };
      at::Tensor u = cfg ? run(uncond_b, false) : at::Tensor();
      auto guided = [&](const at::Tensor& ctx) {
        auto c = run(ctx, true);
        return cfg ? u + g * (c - u) : c;
      };
      auto global = guided(cond_b);
      auto covered = at::zeros({1, 1, masks.size(1), masks.size(2)}, x.options());
      auto regional = at::zeros_like(global);
      for (size_t k = 0; k < region_layers.size(); ++k) {
        auto m = masks[region_layers[k]].view({1, 1, masks.size(1), masks.size(2)}).to(x.scalar_type());
        regional = regional + m * guided(region_embeds[k]);
        covered = covered + m;
      }
      regional = regional + (1 - covered).clamp_min(0) * global;
      return wg * global + (1 - wg) * regional;
    };
  } else {
    denoise = make_cfg_denoiser(sd, prompt_embeds, rs.guidance_scale);
  }

  const double t_sample = now();
  auto result = run_sampler(*scheduler, denoise, latents, begin, noise, hooks, rs.progress);
  out.timings["sampling"] = now() - t_sample;
  out.record["timesteps"] = result.timesteps;
  const double t_decode = now();
  out.latents = result.latents;
  out.images = sd.decode_latents(result.latents);
  out.timings["decode"] = now() - t_decode;
  if (processor && rs.record_attention) {
    auto maps = processor->attention_maps(H / f, W / f);
    if (maps.defined()) out.artefacts["attention"] = maps;
  }
  if (layer_noise) {
    std::vector<at::Tensor> keeps(layer_noise->keep_masks().begin(), layer_noise->keep_masks().end());
    if (!keeps.empty()) out.artefacts["ln_keep_masks"] = at::stack(keeps);
  }
  if (x0.defined()) out.artefacts["init_latents"] = x0.to(at::kCPU);
  out.timings["total"] = now() - t_start;
  return out;
}

}  // namespace collage
