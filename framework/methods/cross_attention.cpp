#include "methods/cross_attention.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "core/core.h"

namespace collage {

CaSchedule parse_ca_schedule(const std::string& name, const std::string& where, const std::string& field) {
  if (name == "loglog" || name == "collage") return CaSchedule::LogLog;
  if (name == "ediff" || name == "ediffi") return CaSchedule::EDiffI;
  throw Error(fmt::format("unknown CA schedule '{}' (loglog = ln(1+ln(sigma+1.01)), ediff = ln(sigma+1.01))", name),
              where, field);
}

double ca_weight(CaSchedule schedule, double sigma) {
  const double inner = std::log(sigma + 1.01);
  return schedule == CaSchedule::EDiffI ? inner : std::log(1.0 + inner);
}

CollageAttentionProcessor::CollageAttentionProcessor(at::Tensor masks, std::vector<CaLayer> layers,
                                                     CaSchedule schedule, bool apply_bias, bool record,
                                                     int64_t min_size)
    : masks_(masks.to(at::kFloat)), layers_(std::move(layers)), schedule_(schedule), apply_bias_(apply_bias),
      record_(record), min_size_(min_size) {
  COLLAGE_CHECK(masks.dim() == 3 && masks.size(0) == static_cast<int64_t>(layers_.size()),
                "CA: {} masks for {} layers", masks.dim() == 3 ? masks.size(0) : -1, layers_.size());
}

namespace {
// Conditional batch rows of this call (all rows when the step info says nothing).
std::vector<int64_t> conditional_rows(const AttnContext& ctx, int64_t batch) {
  std::vector<int64_t> rows;
  const bool known = ctx.step && !ctx.step->conditional.empty();
  if (known)
    COLLAGE_CHECK(static_cast<int64_t>(ctx.step->conditional.size()) == batch,
                  "CA: step info describes {} rows, attention has {}", ctx.step->conditional.size(), batch);
  for (int64_t b = 0; b < batch; ++b)
    if (!known || ctx.step->conditional[b]) rows.push_back(b);
  return rows;
}
}  // namespace

void CollageAttentionProcessor::modify_scores(at::Tensor& scores, const AttnContext& ctx) {
  if (!apply_bias_ || !ctx.is_cross || ctx.height * ctx.width != scores.size(2)) return;
  if (std::min(ctx.height, ctx.width) < min_size_) return;
  const auto rows = conditional_rows(ctx, scores.size(0));
  if (rows.empty()) return;
  const double sigma = ctx.step ? ctx.step->sigma : 0.0;
  const double g = ca_weight(schedule_, sigma);
  const auto& m = masks_.at_size(ctx.height, ctx.width, scores.device());  // (L, h, w)
  auto row_index = at::tensor(rows, at::kLong).to(scores.device());
  auto cond = scores.index_select(0, row_index);  // (Bc, H, Nq, Nk), a copy
  const int64_t Nk = scores.size(3);
  for (size_t i = 0; i < layers_.size(); ++i) {
    const auto& layer = layers_[i];
    if (layer.tokens.empty() || (layer.w_pos == 0 && layer.w_neg == 0)) continue;
    for (auto t : layer.tokens) COLLAGE_CHECK(t >= 0 && t < Nk, "CA: token position {} outside {} keys", t, Nk);
    auto tok = at::tensor(layer.tokens, at::kLong).to(scores.device());
    auto sub = cond.index_select(3, tok);                              // (Bc, H, Nq, T)
    // |max| so that a negative maximum cannot flip the bias (METHOD.md: do not copy the authors' sign flip).
    auto max_scores = sub.amax({1, 2}, /*keepdim=*/true).abs();        // (Bc, 1, 1, T)
    auto mask = m[static_cast<int64_t>(i)].reshape({1, 1, -1, 1}).to(sub.scalar_type());  // (1, 1, Nq, 1)
    auto shape = mask * layer.w_pos - (1 - mask) * layer.w_neg;
    cond.index_copy_(3, tok, sub + max_scores * shape * g);
  }
  scores.index_copy_(0, row_index, cond);
}

void CollageAttentionProcessor::observe_probs(const at::Tensor& probs, const AttnContext& ctx) {
  if (!record_ || !ctx.is_cross || ctx.height * ctx.width != probs.size(2)) return;
  const auto rows = conditional_rows(ctx, probs.size(0));
  if (rows.empty()) return;
  auto row_index = at::tensor(rows, at::kLong).to(probs.device());
  auto p = probs.index_select(0, row_index).to(at::kFloat).mean(1);  // (Bc, Nq, Nk)
  std::vector<at::Tensor> per_layer;
  for (const auto& layer : layers_) {
    if (layer.tokens.empty()) {
      per_layer.push_back(at::zeros({p.size(0), p.size(1)}, p.options()));
      continue;
    }
    auto tok = at::tensor(layer.tokens, at::kLong).to(p.device());
    per_layer.push_back(p.index_select(2, tok).sum(2));  // (Bc, Nq)
  }
  auto maps = at::stack(per_layer, 1).view({p.size(0), -1, ctx.height, ctx.width}).to(at::kCPU);
  std::lock_guard<std::mutex> lock(mutex_);
  if (accum_.defined() && accum_.size(0) != maps.size(0)) {
    accum_ = at::Tensor();
    calls_ = 0;
  }
  if (!accum_.defined() || ctx.height * ctx.width > accum_.size(2) * accum_.size(3)) {
    // A larger grid: resample what was accumulated so far up to it.
    accum_ = accum_.defined() ? at::upsample_bilinear2d(accum_, {ctx.height, ctx.width}, false)
                              : at::zeros_like(maps);
  }
  if (maps.size(2) != accum_.size(2) || maps.size(3) != accum_.size(3))
    maps = at::upsample_bilinear2d(maps, {accum_.size(2), accum_.size(3)}, false);
  accum_.add_(maps);
  ++calls_;
}

at::Tensor CollageAttentionProcessor::attention_maps(int64_t h, int64_t w) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!accum_.defined() || calls_ == 0) return {};
  auto maps = accum_ / static_cast<double>(calls_);
  if (maps.size(2) != h || maps.size(3) != w) maps = at::upsample_bilinear2d(maps, {h, w}, false);
  return maps;
}

at::Tensor attention_mass_inside(const at::Tensor& maps, const at::Tensor& masks) {
  auto m = downsample_masks(masks, maps.size(2), maps.size(3)).unsqueeze(0);  // (1, L, h, w)
  auto inside = (maps * m).sum({2, 3});
  return inside / maps.sum({2, 3}).clamp_min(1e-12);
}

}  // namespace collage
