// Tensor comparison with the tolerance rule of the golden data: max|a-b| <= atol + rtol*max|ref|.
#pragma once

#include <ATen/Tensor.h>

#include <string>

namespace collage {

struct Comparison {
  double max_abs_diff = 0;  // max |got - ref|
  double max_abs_ref = 0;   // max |ref|
  double rel = 0;           // max_abs_diff / max_abs_ref (0 when ref is all zero)
  int64_t worst_index = -1; // flat index of the largest difference
  bool shape_ok = true;
  bool finite = true;
  bool pass = false;
  std::string describe() const;  // "max_abs 1.2e-06 (at 17), max|ref| 1.4, rel 8.6e-07"
};

Comparison compare_tensors(const at::Tensor& got, const at::Tensor& ref, double rtol, double atol);

}  // namespace collage
