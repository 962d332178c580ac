#include "core/canny.h"

#include <ATen/ATen.h>

#include <opencv2/imgproc.hpp>

#include "core/error.h"
#include "core/image.h"

namespace collage {

at::Tensor canny_edges_u8(const at::Tensor& image, const CannyThresholds& t) {
  COLLAGE_CHECK(image.scalar_type() == at::kByte && (image.dim() == 2 || (image.dim() == 3 && (image.size(2) == 3 ||
                                                                                                 image.size(2) == 1))),
                "canny: expected a uint8 (H, W, 3) or (H, W) image, got {} {}", c10::toString(image.scalar_type()),
                fmt::join(image.sizes(), "x"));
  auto src = image.to(at::kCPU).contiguous();
  const int h = static_cast<int>(src.size(0)), w = static_cast<int>(src.size(1));
  const int channels = src.dim() == 3 ? static_cast<int>(src.size(2)) : 1;
  cv::Mat in(h, w, CV_8UC(channels), src.data_ptr());
  auto edges = at::empty({src.size(0), src.size(1)}, at::kByte);
  cv::Mat out(h, w, CV_8UC1, edges.data_ptr());
  cv::Canny(in, out, t.low, t.high, 3, false);
  COLLAGE_CHECK(out.data == edges.data_ptr(), "canny: OpenCV reallocated the output");
  return edges;
}

at::Tensor canny_control_image(const at::Tensor& image01, const CannyThresholds& t) {
  auto edges = canny_edges_u8(to_uint8_hwc(image01), t);
  return edges.to(at::kFloat).div_(255.0).unsqueeze(0).unsqueeze(0).expand({1, 3, -1, -1}).contiguous();
}

}  // namespace collage
