#include <ATen/ATen.h>

#include "core/core.h"
#include "parity/parity.h"

namespace collage::parity {

void Recorder::tensor(const std::string& name, const at::Tensor& got, const at::Tensor& ref, double rtol,
                      double atol) {
  CaseResult r;
  r.component = component_;
  r.name = name;
  r.rtol = rtol;
  r.atol = atol;
  auto c = compare_tensors(got, ref, rtol, atol);
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
