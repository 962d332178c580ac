#include "core/compare.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

namespace collage {

Comparison compare_tensors(const at::Tensor& got, const at::Tensor& ref, double rtol, double atol) {
  Comparison c;
  if (got.sizes() != ref.sizes()) {
    c.shape_ok = false;
    c.pass = false;
    return c;
  }
  auto g = got.detach().to(at::kCPU, at::kDouble);
  auto r = ref.detach().to(at::kCPU, at::kDouble);
  c.finite = g.isfinite().all().item<bool>();
  if (r.numel() == 0) {
    c.pass = true;
    return c;
  }
  auto diff = (g - r).abs().reshape({-1});
  auto arg = diff.argmax();
  c.worst_index = arg.item<int64_t>();
  c.max_abs_diff = diff[c.worst_index].item<double>();
  c.max_abs_ref = r.abs().max().item<double>();
  c.rel = c.max_abs_ref > 0 ? c.max_abs_diff / c.max_abs_ref : 0.0;
  c.pass = c.finite && c.max_abs_diff <= atol + rtol * c.max_abs_ref;
  return c;
}

std::string Comparison::describe() const {
  if (!shape_ok) return "shape mismatch";
  return fmt::format("max_abs {:.3e} (at {}), max|ref| {:.3e}, rel {:.3e}{}", max_abs_diff, worst_index,
                     max_abs_ref, rel, finite ? "" : ", NON-FINITE values");
}

}  // namespace collage
