// ti: per-layer textual inversion (METHOD.md, "TI"), a text hook. Each selected layer gets a new token, learned (or
// loaded from the layer's embedding file / the cache) and inserted before its text: "... <layer_i> c_i ...".
#include <chrono>
#include <filesystem>

#include "core/core.h"
#include "methods/builtin_components.h"

namespace fs = std::filesystem;

namespace collage {

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

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

// "... c_i ..." -> "... <layer_i> c_i ...", inserted right to left so earlier offsets stay valid.
void insert_tokens(TextPlan& plan) {
  auto offsets = text_offsets(plan.prompt, plan.layer_texts);
  std::vector<int64_t> order;
  for (int64_t i = 0; i < static_cast<int64_t>(plan.added_tokens.size()); ++i)
    if (!plan.added_tokens[i].empty()) order.push_back(i);
  const auto end = plan.prompt.size();
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return (offsets[a] == std::string::npos ? end : offsets[a]) > (offsets[b] == std::string::npos ? end : offsets[b]);
  });
  for (auto i : order) {
    if (offsets[i] == std::string::npos)
      plan.prompt += " " + plan.added_tokens[i];
    else
      plan.prompt.insert(offsets[i], plan.added_tokens[i] + " ");
  }
}

class TextualInversionModifier : public Component {
 public:
  TextualInversionModifier();
  void text(RunContext& ctx, TextPlan& plan) const override;

 private:
  static at::Tensor layer_embedding(RunContext& ctx, int64_t i, const TextualInversionSettings& ts, Json& record);
};

TextualInversionModifier::TextualInversionModifier()
    : Component({"ti", false, "per-layer textual inversion: a learned token per layer, inserted before its text",
                 {{"ti_layers", "string", "auto",
                   "layers to learn: auto (all with text except a full-canvas background), all, indices/names, or "
                   "meta:KEY (the layers whose meta KEY is true, e.g. meta:unnamed_appearance)"},
                  {"ti_steps", "int", 250, "optimisation steps", true, ParamRange{0}},
                  {"ti_lr", "number", 4e-4, "AdamW learning rate", true, ParamRange{0, 1e300, true}},
                  {"ti_warmup", "int", 25, "linear warm-up steps", true, ParamRange{0}},
                  {"ti_batch", "int", 4, "augmented copies per step", true, ParamRange{1}},
                  {"ti_weight_decay", "number", 1e-2, "AdamW weight decay"},
                  {"ti_grad_clip", "number", 1.0, "gradient-norm clip (0 = off)"},
                  {"ti_init", "string", "a", "initial embedding: a word, or 'head' (the layer text's last word)"},
                  {"ti_augment", "bool", true, "colour jitter and random crops"},
                  {"ti_seed", "int", 0, "seed of the training draws", true, ParamRange{0}}}}) {}

void TextualInversionModifier::text(RunContext& ctx, TextPlan& plan) const {
  const double t0 = now();
  const auto sel = ctx.spec.string("ti_layers");
  const auto layers =
      sel == "auto" ? auto_ti_layers(ctx.collage, ctx.placed) : select_layers(ctx.collage, sel, ctx.collage.where(), "params.ti_layers");
  const auto ts = ti_settings(ctx.spec);
  Json ti_record = Json::array();
  for (auto i : layers) {
    Json r{{"layer", i}};
    at::Tensor emb = layer_embedding(ctx, i, ts, r);
    plan.added_tokens[i] = fmt::format("<layer_{}>", i);
    plan.embeddings[plan.tokenizer->add_token(plan.added_tokens[i])] = emb;
    ctx.out.artefacts[fmt::format("ti_embedding.{}", i)] = emb;
    ti_record.push_back(r);
  }
  insert_tokens(plan);
  ctx.out.record["ti"] = ti_record;
  ctx.out.timings["ti_train"] = now() - t0;
}

// Layer i's embedding: its own embedding file, else learned (or from the cache). Fills the layer's TI record.
at::Tensor TextualInversionModifier::layer_embedding(RunContext& ctx, int64_t i, const TextualInversionSettings& ts,
                                                     Json& r) {
  const auto& layer = ctx.collage.layers[i];
  const auto& rs = ctx.settings;
  if (!layer.embedding.empty()) {
    const auto path = fs::path(layer.embedding).is_absolute() ? layer.embedding
                                                               : (fs::path(ctx.collage.folder) / layer.embedding).string();
    r["source"] = path;
    return load_embedding(path, ctx.sd.text_encoder->config().hidden_size);
  }
  const auto label = fmt::format("TI layer {} '{}'", i, layer.text);
  int64_t last_logged = -1;
  auto log_progress = [&](int64_t done, int64_t total, double loss) {
    if (!rs.log) return;
    const int64_t decile = done * 10 / std::max<int64_t>(total, 1);
    if (decile != last_logged && (done == total || decile > last_logged)) {
      last_logged = decile;
      rs.log(fmt::format("{}: step {}/{} loss {:.4f}", label, done, total, loss));
    }
  };
  const auto cache = rs.cache_dir.empty() ? default_cache_dir() : rs.cache_dir;
  auto res = train_layer_embedding(ctx.sd, flatten_layers(ctx.placed, ctx.collage.background, i), ctx.visible[i],
                                   layer.text, ts, cache, log_progress);
  if (rs.log && res.from_cache) rs.log(fmt::format("{}: learned embedding from cache {}", label, res.cache_file));
  r["source"] = res.from_cache ? "cache" : "trained";
  r["cache_file"] = res.cache_file;
  r["seconds"] = res.seconds;
  if (!res.from_cache) {
    r["eval_loss_before"] = res.eval_loss_before;
    r["eval_loss_after"] = res.eval_loss_after;
    ctx.out.artefacts[fmt::format("ti_losses.{}", i)] = at::tensor(res.losses, at::kDouble);
  }
  return res.embedding;
}

}  // namespace

TextualInversionSettings ti_settings(const MethodSpec& spec) {
  TextualInversionSettings ts;
  ts.steps = spec.integer("ti_steps");
  ts.batch = spec.integer("ti_batch");
  ts.warmup_steps = spec.integer("ti_warmup");
  ts.learning_rate = spec.number("ti_lr");
  ts.weight_decay = spec.number("ti_weight_decay");
  ts.grad_clip = spec.number("ti_grad_clip");
  ts.init = spec.string("ti_init");
  ts.augment = spec.flag("ti_augment");
  ts.seed = static_cast<uint64_t>(spec.integer("ti_seed"));
  return ts;
}

COLLAGE_REGISTER_COMPONENT(TextualInversionModifier)

}  // namespace collage
