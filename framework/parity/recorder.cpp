#include <ATen/ATen.h>

#include "core/core.h"
#include "parity/parity.h"

namespace collage::parity {

std::string Target::str() const { return fmt::format("{} {}", device.str(), c10::toString(dtype)); }

at::Tensor Target::in(const at::Tensor& t) const {
  return at::isFloatingType(t.scalar_type()) ? t.to(device, dtype) : t.to(device);
}

std::pair<double, double> reduced_precision_tolerance(at::ScalarType dtype, double rtol, double atol) {
  // float16 keeps 11 significant bits (2^-11 = 4.9e-4 per rounding) and bfloat16 8 (3.9e-3); a network of a
  // few dozen layers accumulates some tens of roundings relative to its largest activations.
  // Measured (CPU bfloat16, golden tiny pipeline, 10 steps): up to 10 % of max|ref| after the sampler.
  if (dtype == at::kHalf) return {std::max(rtol, 2e-2), std::max(atol, 2e-3)};
  if (dtype == at::kBFloat16) return {std::max(rtol, 1.5e-1), std::max(atol, 1e-2)};
  return {rtol, atol};
}

void Recorder::tensor(const std::string& name, const at::Tensor& got, const at::Tensor& ref, double rtol,
                      double atol) {
  CaseResult r;
  r.component = component_;
  r.name = name;
  // Outputs may be upcast (the pipeline returns float32 latents): the model's dtype decides the tolerance.
  if (got.is_floating_point() && got.scalar_type() != at::kDouble)  // double: schedule values, exact maths
    std::tie(rtol, atol) = reduced_precision_tolerance(target_.dtype, rtol, atol);
  r.rtol = rtol;
  r.atol = atol;
  const bool widen = got.is_floating_point() && got.scalar_type() != at::kDouble;
  auto c = compare_tensors(widen ? got.to(at::kCPU, at::kFloat) : got.cpu(), ref, rtol, atol);
  r.max_abs_diff = c.max_abs_diff;
  r.max_abs_ref = c.max_abs_ref;
  r.rel = c.rel;
  r.pass = c.pass;
  if (!c.shape_ok)
    r.detail = fmt::format("shape {} vs reference {}", fmt::join(got.sizes(), "x"), fmt::join(ref.sizes(), "x"));
  else if (!c.pass)
    r.detail = c.describe();
  results_.push_back(std::move(r));
}

void Recorder::exact(const std::string& name, bool equal, const std::string& detail) {
  CaseResult r;
  r.component = component_;
  r.name = name;
  r.pass = equal;
  r.detail = detail;
  results_.push_back(std::move(r));
}

void Recorder::failure(const std::string& name, const std::string& message) {
  CaseResult r;
  r.component = component_;
  r.name = name;
  r.pass = false;
  r.detail = message;
  results_.push_back(std::move(r));
}

}  // namespace collage::parity
