// Method::run: the composition of a method's components around the one pipeline and the one sampling loop. The
// hooks run in the order component.h lists; nothing here knows any component by name.
#include <ATen/ATen.h>
#include <torch/torch.h>

#include <chrono>

#include "core/core.h"
#include "diffusion/diffusion.h"
#include "methods/methods.h"

namespace collage {

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Removes the attention processors installed for one run, whatever happens.
struct ProcessorGuard {
  UNet2DConditionModel unet{nullptr};
  ~ProcessorGuard() {
    if (unet) unet->reset_attn_processors();
  }
};

Json base_record(const RunContext& ctx) {
  const auto& rs = ctx.settings;
  return Json{{"method", ctx.spec.text},
              {"params", ctx.spec.params},
              {"collage", ctx.collage.file},
              {"prompt", ctx.collage.prompt},
              {"seeds", rs.seeds},
              {"steps", rs.steps},
              {"guidance_scale", rs.guidance_scale},
              {"negative_prompt", rs.negative_prompt},
              {"model", ctx.sd.name},
              {"device", ctx.sd.device.str()},
              {"dtype", c10::toString(ctx.sd.dtype)},
              {"framework_version", framework_version()},
              {"git_revision", git_revision()}};
}

// The text conditioning from the text plan: layer token positions (tokens a component added for a layer join that
// layer's tokens, first), the prompt and negative-prompt states, the CFG batch.
Conditioning condition(RunContext& ctx) {
  auto& text = ctx.text;
  Conditioning c;
  c.layer_tokens = layer_token_positions(*text.tokenizer, text.prompt, text.layer_texts, ctx.collage.where());
  const auto ids = text.tokenizer->encode_padded(text.prompt, text.tokenizer->model_max_length());
  for (int64_t i = 0; i < ctx.L; ++i) {
    if (text.added_tokens[i].empty()) continue;
    const int64_t id = *text.tokenizer->token_to_id(text.added_tokens[i]);
    for (size_t p = 0; p < ids.size(); ++p)
      if (ids[p] == id) c.layer_tokens[i].insert(c.layer_tokens[i].begin(), static_cast<int64_t>(p));
  }
  auto& sd = ctx.sd;
  auto tokenizer = text.tokenizer;
  auto embeddings = text.embeddings;
  c.encode = [&sd, tokenizer, embeddings](const std::string& t) {
    return embeddings.empty() ? sd.encode_prompt({t}) : encode_prompt_with_embeddings(sd, *tokenizer, {t}, embeddings);
  };
  c.cfg = ctx.settings.guidance_scale > 1.0;
  c.cond = c.encode(text.prompt);
  c.uncond = sd.encode_prompt({ctx.settings.negative_prompt});
  c.prompt_embeds = c.cfg ? at::cat({c.batch(c.uncond, ctx.B), c.batch(c.cond, ctx.B)}, 0)
                          : c.batch(c.cond, ctx.B).contiguous();
  return c;
}

SamplerHooks compose(const SamplerPlan& plan) {
  SamplerHooks hooks;
  if (!plan.on_step_begin.empty())
    hooks.on_step_begin = [fns = plan.on_step_begin](StepState& s) {
      for (const auto& f : fns) f(s);
    };
  if (!plan.on_step_end.empty())
    hooks.on_step_end = [fns = plan.on_step_end](StepState& s) {
      for (const auto& f : fns) f(s);
    };
  return hooks;
}

}  // namespace

RunContext::RunContext(const Collage& c, StableDiffusion& model, const RunSettings& rs, const MethodSpec& s,
                       MethodOutput& o)
    : collage(c), sd(model), settings(rs), spec(s), out(o) {
  COLLAGE_CHECK_AT(!rs.seeds.empty(), "", "--seeds", "no seeds given");
  COLLAGE_CHECK_AT(rs.steps > 0, "", "--steps", "steps must be positive, got {}", rs.steps);
  B = static_cast<int64_t>(rs.seeds.size());
  L = static_cast<int64_t>(c.layers.size());
  H = c.height;
  W = c.width;
  placed = place_layers(c);
  visible = visible_masks(placed);
  flat = flatten_layers(placed, c.background);
}

Method::Method(MethodSpec spec) : spec_(std::move(spec)) {
  const auto& registry = method_registry();
  components_.push_back(registry.find(spec_.base));
  for (const auto& m : spec_.modifiers) components_.push_back(registry.find(m));
  for (size_t i = 0; i < components_.size(); ++i)
    COLLAGE_CHECK(components_[i], "method '{}': component '{}' is not registered", spec_.text,
                  i == 0 ? spec_.base : spec_.modifiers[i - 1]);
}

// One run: what every component contributes, prepared once, then the base's passes over the one sampling loop.
class MethodRun {
 public:
  MethodRun(const std::vector<const Component*>& components, RunContext& ctx) : parts_(components), ctx_(ctx) {}
  void prepare();
  PassOutput pass(const StartPlan& start);
  void finish(const PassOutput& last);

 private:
  Scheduler& scheduler();
  at::Tensor start_latents(const StartPlan& start, PassOutput& out, SamplerPlan& sampler, int64_t& begin);

  const std::vector<const Component*>& parts_;
  RunContext& ctx_;
  std::unique_ptr<Scheduler> own_scheduler_;
  std::unique_ptr<SeededNoise> noise_;
  std::shared_ptr<CollageAttentionProcessor> processor_;
  std::shared_ptr<LayerNoiseSampler> layer_noise_;  // the per-pixel start of the current pass
  ProcessorGuard guard_;
  DenoiseFn denoise_;
};

void MethodRun::prepare() {
  auto& ctx = ctx_;
  const int64_t f = ctx.sd.vae_scale_factor();
  COLLAGE_CHECK_AT(ctx.H % f == 0 && ctx.W % f == 0, ctx.collage.where(), "width",
                   "canvas {}x{} must be divisible by {} (the model's VAE factor)", ctx.W, ctx.H, f);
  for (const auto* c : parts_) c->start(ctx, ctx.start);
  ctx.text.tokenizer = std::make_shared<ClipTokenizer>(*ctx.sd.tokenizer);
  ctx.text.prompt = ctx.collage.prompt;
  for (const auto& l : ctx.collage.layers) ctx.text.layer_texts.push_back(l.text);
  ctx.text.added_tokens.assign(ctx.L, "");
  for (const auto* c : parts_) c->text(ctx, ctx.text);
  ctx.out.record["prompt_used"] = ctx.text.prompt;
  ctx.conditioning = condition(ctx);
  ctx.out.record["layer_tokens"] = ctx.conditioning.layer_tokens;
  ctx.out.record["scheduler"] = scheduler().name();
  noise_ = std::make_unique<SeededNoise>(ctx.settings.seeds);

  ctx.attention.layers.assign(ctx.L, CaLayer{});
  for (int64_t i = 0; i < ctx.L; ++i) ctx.attention.layers[i].tokens = ctx.conditioning.layer_tokens[i];
  for (const auto* c : parts_) c->attention(ctx, ctx.attention);
  if (ctx.attention.bias || ctx.settings.record_attention) {
    const auto& a = ctx.attention;
    processor_ = std::make_shared<CollageAttentionProcessor>(ctx.visible, a.layers, a.schedule, a.bias,
                                                             ctx.settings.record_attention, a.min_size);
    guard_.unet = ctx.sd.unet;
    ctx.sd.unet->set_attn_processor([](const Attention& at) { return at->is_cross(); }, processor_);
  }
  ctx.model_fn = unet_model_fn(ctx.sd);
  for (const auto* c : parts_) ctx.model_fn = c->model(ctx, ctx.model_fn);
  denoise_ = make_cfg_denoiser(ctx.model_fn, ctx.conditioning.prompt_embeds, ctx.settings.guidance_scale);
  for (const auto* c : parts_) denoise_ = c->denoiser(ctx, denoise_);
}

Scheduler& MethodRun::scheduler() {
  if (own_scheduler_) return *own_scheduler_;
  const auto& name = ctx_.settings.scheduler;
  if (!name.empty() && name != ctx_.sd.scheduler->name())
    own_scheduler_ = make_scheduler(name, ctx_.sd.scheduler->config());
  return own_scheduler_ ? *own_scheduler_ : *ctx_.sd.scheduler;
}

// The latents sampling starts from, and the loop index: pure noise, SDEdit at a uniform strength, or per-pixel
// strengths (the LN sampler callback joins `sampler`).
at::Tensor MethodRun::start_latents(const StartPlan& start, PassOutput& out, SamplerPlan& sampler, int64_t& begin) {
  auto& ctx = ctx_;
  auto& sd = ctx.sd;
  const int64_t f = sd.vae_scale_factor();
  const auto latent_opts = at::TensorOptions().dtype(at::kFloat).device(sd.device);
  if (start.from_noise && !start.per_pixel) {
    begin = 0;
    out.start_strength = 1.0;
    return noise_->draw({ctx.B, sd.vae->latent_channels(), ctx.H / f, ctx.W / f}, latent_opts, "initial_latents") *
           scheduler().init_noise_sigma();
  }
  const double t0 = now();
  const auto& image = start.init_image;
  auto x0 = sd.encode_image(image.dim() == 4 ? image.contiguous() : image.unsqueeze(0).expand({ctx.B, -1, -1, -1}).contiguous(),
                            *noise_);
  ctx.out.timings["encode"] = now() - t0;
  out.init_latents = x0;
  layer_noise_.reset();
  if (start.per_pixel) {
    out.noise_map = start.strength_map.defined()
                        ? start.strength_map
                        : noise_map(ctx.visible, start.layer_strengths, start.background_strength, start.map_blur);
    layer_noise_ = std::make_shared<LayerNoiseSampler>(scheduler(), x0, out.noise_map, *noise_, start.dilate);
    out.start_strength = layer_noise_->start_strength();
    sampler.on_step_end.insert(sampler.on_step_end.begin(),
                               [ln = layer_noise_](StepState& s) { ln->on_step_end(s); });
  } else {
    out.start_strength = start.strength;
  }
  COLLAGE_CHECK_AT(out.start_strength > 0, ctx.collage.where(), "noise_strength",
                   "every pixel has strength 0: nothing would change (raise a layer's noise_strength or strength)");
  auto img2img = scheduler().img2img_start(out.start_strength);
  COLLAGE_CHECK_AT(!img2img.timesteps.empty(), "", "--steps", "strength {} with {} steps runs no step",
                   out.start_strength, ctx.settings.steps);
  begin = img2img.begin_index;
  auto eps = noise_->draw(x0.sizes(), latent_opts, "img2img_noise");
  return scheduler().add_noise(x0, eps, img2img.timesteps.front());
}

PassOutput MethodRun::pass(const StartPlan& start) {
  auto& ctx = ctx_;
  PassOutput out;
  scheduler().set_timesteps(ctx.settings.steps);
  SamplerPlan sampler;
  int64_t begin = 0;
  auto latents = start_latents(start, out, sampler, begin);
  for (const auto* c : parts_) c->sampler(ctx, sampler);
  const double t_sample = now();
  auto result = run_sampler(scheduler(), denoise_, latents, begin, *noise_, compose(sampler), ctx.settings.progress);
  ctx.out.timings["sampling"] = now() - t_sample;
  out.timesteps = result.timesteps;
  out.latents = result.latents;
  const double t_decode = now();
  out.images = ctx.sd.decode_latents(result.latents);
  ctx.out.timings["decode"] = now() - t_decode;
  if (layer_noise_ && !layer_noise_->keep_masks().empty()) {
    const auto& keeps = layer_noise_->keep_masks();
    out.keep_masks = at::stack(std::vector<at::Tensor>(keeps.begin(), keeps.end()));
  }
  return out;
}

void MethodRun::finish(const PassOutput& last) {
  auto& out = ctx_.out;
  out.images = last.images;
  out.latents = last.latents;
  out.record["start_strength"] = last.start_strength;
  out.record["timesteps"] = last.timesteps;
  if (last.noise_map.defined()) out.artefacts["noise_map"] = last.noise_map;
  if (processor_ && ctx_.settings.record_attention) {
    const int64_t f = ctx_.sd.vae_scale_factor();
    auto maps = processor_->attention_maps(ctx_.H / f, ctx_.W / f);
    if (maps.defined()) out.artefacts["attention"] = maps;
  }
  if (last.keep_masks.defined()) out.artefacts["ln_keep_masks"] = last.keep_masks;
  if (last.init_latents.defined()) out.artefacts["init_latents"] = last.init_latents.to(at::kCPU);
  for (const auto* c : parts_) c->finish(ctx_, out);
}

MethodOutput Method::run(const Collage& collage, StableDiffusion& sd, const RunSettings& rs) const {
  torch::NoGradGuard no_grad;
  const double t_start = now();
  MethodOutput out;
  RunContext ctx(collage, sd, rs, spec_, out);
  out.record = base_record(ctx);
  out.artefacts["collage"] = ctx.flat;
  out.artefacts["visible_masks"] = ctx.visible;
  const Component& base = *components_.front();
  if (!base.samples()) {
    out.images = base.execute(ctx, [](const StartPlan&) -> PassOutput {
                       throw Error("a base that does not sample cannot run a sampling pass");
                     }).images;
    out.timings["total"] = now() - t_start;
    return out;
  }
  MethodRun run(components_, ctx);
  run.prepare();
  auto last = base.execute(ctx, [&](const StartPlan& start) { return run.pass(start); });
  run.finish(last);
  out.timings["total"] = now() - t_start;
  return out;
}

}  // namespace collage
