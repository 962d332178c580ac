#include "models/clip_text_model.h"

#include <torch/torch.h>

#include <filesystem>

#include "core/core.h"
#include "models/load.h"

namespace collage {

namespace nn = torch::nn;

namespace {
// PretrainedConfig bookkeeping and training-only settings that do not change inference.
const std::vector<std::string> kIrrelevantKeys = {
    "architectures", "attention_dropout", "dropout", "initializer_factor", "initializer_range", "model_type",
    "torch_dtype", "transformers_version", "return_dict", "output_hidden_states", "output_attentions",
    "use_bfloat16", "tie_word_embeddings", "is_encoder_decoder", "is_decoder", "add_cross_attention",
    "chunk_size_feed_forward", "id2label", "label2id", "problem_type", "tokenizer_class", "prefix",
    "task_specific_params", "finetuning_task", "pruned_heads", "torchscript", "tf_legacy_loss",
    "cross_attention_hidden_size", "decoder_start_token_id", "sep_token_id", "bad_words_ids",
    "begin_suppress_tokens", "diversity_penalty", "do_sample", "early_stopping", "encoder_no_repeat_ngram_size",
    "exponential_decay_length_penalty", "forced_bos_token_id", "forced_eos_token_id", "length_penalty",
    "max_length", "min_length", "no_repeat_ngram_size", "num_beam_groups", "num_beams", "num_return_sequences",
    "output_scores", "remove_invalid_values", "repetition_penalty", "return_dict_in_generate",
    "suppress_tokens", "temperature", "top_k", "top_p", "typical_p"};
}  // namespace

ClipTextConfig ClipTextConfig::from_json_file(const std::string& path) {
  return from_json(read_json_file(path), path);
}

ClipTextConfig ClipTextConfig::from_json(const Json& object, const std::string& file, const std::string& prefix,
                                         bool fill_defaults) {
  JsonReader r(object, file, prefix);
  ClipTextConfig c;
  auto size = [&](const char* key, int64_t fallback) {
    return fill_defaults ? r.get<int64_t>(key, fallback) : r.get<int64_t>(key);
  };
  c.vocab_size = size("vocab_size", c.vocab_size);
  c.hidden_size = size("hidden_size", c.hidden_size);
  c.intermediate_size = size("intermediate_size", c.intermediate_size);
  c.num_hidden_layers = size("num_hidden_layers", c.num_hidden_layers);
  c.num_attention_heads = size("num_attention_heads", c.num_attention_heads);
  c.max_position_embeddings = size("max_position_embeddings", c.max_position_embeddings);
  c.projection_dim = r.get<int64_t>("projection_dim", c.projection_dim);
  c.hidden_act = r.get<std::string>("hidden_act", c.hidden_act);
  c.layer_norm_eps = r.get<double>("layer_norm_eps", c.layer_norm_eps);
  c.pad_token_id = r.get<int64_t>("pad_token_id", c.pad_token_id);
  c.bos_token_id = r.get<int64_t>("bos_token_id", c.bos_token_id);
  c.eos_token_id = r.get<int64_t>("eos_token_id", c.eos_token_id);
  r.ignore(kIrrelevantKeys);
  c.unknown_keys = r.unused_keys();

  auto positive = [&](int64_t v, const char* key) {
    COLLAGE_CHECK_AT(v > 0, file, prefix + key, "must be positive, got {}", v);
  };
  positive(c.vocab_size, "vocab_size");
  positive(c.hidden_size, "hidden_size");
  positive(c.intermediate_size, "intermediate_size");
  positive(c.num_hidden_layers, "num_hidden_layers");
  positive(c.num_attention_heads, "num_attention_heads");
  positive(c.max_position_embeddings, "max_position_embeddings");
  COLLAGE_CHECK_AT(c.hidden_size % c.num_attention_heads == 0, file, prefix + "num_attention_heads",
                   "hidden_size {} is not divisible by num_attention_heads {}", c.hidden_size,
                   c.num_attention_heads);
  COLLAGE_CHECK_AT(c.layer_norm_eps > 0, file, prefix + "layer_norm_eps", "must be positive, got {}",
                   c.layer_norm_eps);
  parse_clip_activation(c.hidden_act, file, prefix + "hidden_act");  // validates the name
  return c;
}

ClipEncoderOptions ClipTextConfig::encoder_options() const {
  ClipEncoderOptions o;
  o.hidden_size = hidden_size;
  o.intermediate_size = intermediate_size;
  o.num_hidden_layers = num_hidden_layers;
  o.num_attention_heads = num_attention_heads;
  o.hidden_act = parse_clip_activation(hidden_act);
  o.layer_norm_eps = layer_norm_eps;
  return o;
}

ClipTextEmbeddingsImpl::ClipTextEmbeddingsImpl(int64_t vocab_size, int64_t hidden_size,
                                               int64_t max_position_embeddings) {
  token_embedding = register_module("token_embedding", nn::Embedding(vocab_size, hidden_size));
  position_embedding = register_module("position_embedding", nn::Embedding(max_position_embeddings, hidden_size));
}

at::Tensor ClipTextEmbeddingsImpl::add_positions(const at::Tensor& token_embeds) {
  const int64_t L = token_embeds.size(1);
  return token_embeds + position_embedding->weight.narrow(0, 0, L).unsqueeze(0);
}

ClipTextTransformerImpl::ClipTextTransformerImpl(const ClipTextConfig& c) {
  embeddings = register_module("embeddings",
                               ClipTextEmbeddings(c.vocab_size, c.hidden_size, c.max_position_embeddings));
  encoder = register_module("encoder", ClipEncoder(c.encoder_options()));
  final_layer_norm = register_module(
      "final_layer_norm", nn::LayerNorm(nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps)));
}

ClipTextModelImpl::ClipTextModelImpl(const ClipTextConfig& config) : config_(config) {
  text_model = register_module("text_model", ClipTextTransformer(config));
}

at::Tensor ClipTextModelImpl::token_embedding_weight() {
  return text_model->embeddings->token_embedding->weight;
}

ClipTextOutput ClipTextModelImpl::forward(const at::Tensor& input_ids, bool output_hidden_states,
                                          const at::Tensor& attention_mask) {
  COLLAGE_CHECK(input_ids.dim() == 2, "input_ids must be (batch, length), got shape [{}]",
                fmt::join(input_ids.sizes(), ","));
  COLLAGE_CHECK(!input_ids.is_floating_point(), "input_ids must be an integer tensor");
  if (input_ids.numel() > 0) {
    const int64_t lo = input_ids.min().item<int64_t>(), hi = input_ids.max().item<int64_t>();
    COLLAGE_CHECK(lo >= 0 && hi < config_.vocab_size, "token ids must lie in [0, {}), got range [{}, {}]",
                  config_.vocab_size, lo, hi);
  }
  auto embeds = text_model->embeddings->token_embedding->forward(input_ids);
  return forward_embeddings(embeds, input_ids, output_hidden_states, attention_mask);
}

ClipTextOutput ClipTextModelImpl::forward_embeddings(const at::Tensor& token_embeds, const at::Tensor& input_ids,
                                                     bool output_hidden_states,
                                                     const at::Tensor& attention_mask) {
  COLLAGE_CHECK(token_embeds.dim() == 3 && token_embeds.size(2) == config_.hidden_size,
                "token embeddings must be (batch, length, {}), got shape [{}]", config_.hidden_size,
                fmt::join(token_embeds.sizes(), ","));
  COLLAGE_CHECK(input_ids.dim() == 2 && input_ids.size(0) == token_embeds.size(0) &&
                    input_ids.size(1) == token_embeds.size(1),
                "input_ids shape [{}] does not match the token embeddings [{}]", fmt::join(input_ids.sizes(), ","),
                fmt::join(token_embeds.sizes(), ","));
  const int64_t B = token_embeds.size(0), L = token_embeds.size(1), D = config_.hidden_size;
  COLLAGE_CHECK(L >= 1 && L <= config_.max_position_embeddings,
                "sequence length {} outside [1, max_position_embeddings = {}]", L, config_.max_position_embeddings);

  auto h = text_model->embeddings->add_positions(token_embeds);
  auto mask = clip_causal_mask(L, h.options());
  if (attention_mask.defined()) {
    COLLAGE_CHECK(attention_mask.dim() == 2 && attention_mask.size(0) == B && attention_mask.size(1) == L,
                  "attention_mask shape [{}] must be (batch, length) = ({}, {})",
                  fmt::join(attention_mask.sizes(), ","), B, L);
    // Both masks are finfo.min where they mask, so the sum only affects already-masked scores.
    mask = mask + clip_padding_mask(attention_mask.to(h.device()), h.scalar_type());
  }

  ClipTextOutput out;
  h = text_model->encoder->forward(h, mask, output_hidden_states ? &out.hidden_states : nullptr);
  out.last_hidden_state = text_model->final_layer_norm->forward(h);

  // transformers 4.33: configs with the legacy eos_token_id 2 pool at argmax(input_ids) (the eos id 49407 is the
  // largest id of the original vocabulary); otherwise at the first occurrence of eos_token_id.
  auto ids = input_ids.to(out.last_hidden_state.device(), at::kInt);
  auto pos = config_.eos_token_id == 2 ? ids.argmax(-1) : ids.eq(config_.eos_token_id).to(at::kInt).argmax(-1);
  out.pooler_output =
      out.last_hidden_state.gather(1, pos.view({B, 1, 1}).expand({B, 1, D})).squeeze(1);
  return out;
}

ClipTextModel ClipTextModelImpl::load(const std::string& folder, const std::string& variant) {
  const auto config_path = (std::filesystem::path(folder) / "config.json").string();
  COLLAGE_CHECK_AT(std::filesystem::exists(config_path), config_path, "",
                   "text encoder config.json not found");
  // A full CLIPModel folder (model_type "clip") also serves, as transformers' CLIPTextModel.from_pretrained
  // allows: its text_config (with CLIPTextConfig's defaults for what save_pretrained left out) and the
  // text_model.* weights; the vision tower and the projections are not loaded.
  const Json json = read_json_file(config_path);
  const bool clip_model = json.value("model_type", std::string()) == "clip" && json.contains("text_config");
  ClipTextModel model(clip_model ? ClipTextConfig::from_json(json["text_config"], config_path, "text_config.", true)
                                 : ClipTextConfig::from_json(json, config_path));
  LoadOptions options;
  // transformers < 4.31 saved the position_ids buffer; newer versions recompute it.
  options.ignorable_file_keys = {"text_model.embeddings.position_ids"};
  const auto files = find_weight_files(folder, {"model", "pytorch_model"}, variant);
  if (clip_model)
    for (const auto& file : files)
      for (const auto& name : SafetensorsFile::open(file)->names())
        if (name.rfind("text_model.", 0) != 0) options.ignorable_file_keys.insert(name);
  load_module_weights(*model, files, options);
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  model->eval();
  return model;
}

}  // namespace collage
