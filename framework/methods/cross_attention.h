// CA: cross-attention manipulation as an attention processor (METHOD.md, "CA"). On the conditional rows
// only, for each layer's tokens j:  S'[h,p,j] = S + g(sigma) * |m_j| * (w_pos M(p) - w_neg (1 - M(p))),
// m_j = max over heads and pixels of S[., ., j] of that row. The same processor can record how much
// attention each layer's tokens receive (for tests, figures and the `attention` artefact).
#pragma once

#include <ATen/Tensor.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "collage/collage.h"
#include "models/models.h"

namespace collage {

enum class CaSchedule { LogLog, EDiffI };  // ln(1 + ln(sigma + 1.01)) (authors) | ln(sigma + 1.01) (eDiff-I)
CaSchedule parse_ca_schedule(const std::string& name, const std::string& where = "", const std::string& field = "");
double ca_weight(CaSchedule schedule, double sigma);

struct CaLayer {
  std::vector<int64_t> tokens;  // positions in the 77-token sequence
  double w_pos = 0, w_neg = 1;
};

class CollageAttentionProcessor : public ScoreHookProcessor {
 public:
  // `masks`: visible masks (L, H, W) at canvas resolution; `layers`: one entry per mask.
  // `min_size` > 0: bias only the maps whose shorter side has at least that many cells (an ablation of the
  // resolutions CA acts on; 0 = every cross-attention map, as the method has it).
  CollageAttentionProcessor(at::Tensor masks, std::vector<CaLayer> layers, CaSchedule schedule, bool apply_bias,
                            bool record, int64_t min_size = 0);

  void modify_scores(at::Tensor& scores, const AttnContext& ctx) override;
  void observe_probs(const at::Tensor& probs, const AttnContext& ctx) override;

  // Mean attention probability mass of each layer's tokens per query pixel, averaged over heads, every
  // recorded cross-attention call and step, resampled to (h, w): (B_cond, L, h, w). Undefined before any call.
  at::Tensor attention_maps(int64_t h, int64_t w) const;
  int64_t calls_recorded() const { return calls_; }

 private:
  MaskPyramid masks_;
  std::vector<CaLayer> layers_;
  CaSchedule schedule_;
  bool apply_bias_, record_;
  int64_t min_size_;
  // Recorded maps are accumulated at the largest query grid seen.
  mutable std::mutex mutex_;
  at::Tensor accum_;   // (B_cond, L, h, w)
  int64_t calls_ = 0;
};

// Fraction of a layer's attention mass that falls inside its mask: sum(M * A) / sum(A), per row and layer
// ((B, L, h, w) maps, (L, H, W) masks) -> (B, L).
at::Tensor attention_mass_inside(const at::Tensor& maps, const at::Tensor& masks);

}  // namespace collage
