#include "core/image.h"

#include <ATen/ATen.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <cstdio>
#include <filesystem>

#include "core/error.h"

namespace collage {

namespace {
cv::Mat read_mat(const std::string& path) {
  COLLAGE_CHECK_AT(std::filesystem::exists(path), path, "", "image file not found");
  cv::Mat m = cv::imread(path, cv::IMREAD_UNCHANGED);
  COLLAGE_CHECK_AT(!m.empty(), path, "", "cannot decode image (not a PNG/JPEG file, or corrupt)");
  if (m.depth() == CV_16U) m.convertTo(m, CV_8U, 1.0 / 257.0);
  COLLAGE_CHECK_AT(m.depth() == CV_8U, path, "", "unsupported pixel depth (8 or 16 bits expected)");
  return m;
}
}  // namespace

bool image_has_alpha(const std::string& path) { return read_mat(path).channels() == 4; }

at::Tensor read_image(const std::string& path, bool keep_alpha) {
  cv::Mat m = read_mat(path);
  cv::Mat rgb;
  const bool alpha = keep_alpha && m.channels() == 4;
  if (m.channels() == 1)
    cv::cvtColor(m, rgb, cv::COLOR_GRAY2RGB);
  else if (m.channels() == 3)
    cv::cvtColor(m, rgb, cv::COLOR_BGR2RGB);
  else if (alpha)
    cv::cvtColor(m, rgb, cv::COLOR_BGRA2RGBA);
  else
    cv::cvtColor(m, rgb, cv::COLOR_BGRA2RGB);
  rgb = rgb.isContinuous() ? rgb : rgb.clone();
  auto t = at::from_blob(rgb.data, {rgb.rows, rgb.cols, rgb.channels()}, at::kByte).clone();
  return t.permute({2, 0, 1}).to(at::kFloat).div_(255.0).contiguous();
}

at::Tensor to_uint8_hwc(const at::Tensor& image_in) {
  auto image = image_in.detach().to(at::kCPU, at::kFloat);
  if (image.dim() == 4) {
    COLLAGE_CHECK(image.size(0) == 1, "to_uint8_hwc: expected one image, got a batch of {}", image.size(0));
    image = image[0];
  }
  COLLAGE_CHECK(image.dim() == 3 && (image.size(0) == 1 || image.size(0) == 3 || image.size(0) == 4),
                "expected a (C, H, W) image with C in {{1,3,4}}, got {}", fmt::join(image.sizes(), "x"));
  return image.clamp(0, 1).mul(255.0).round().to(at::kByte).permute({1, 2, 0}).contiguous();
}

void write_image(const std::string& path, const at::Tensor& image) {
  auto hwc = to_uint8_hwc(image);
  const int c = static_cast<int>(hwc.size(2));
  cv::Mat m(static_cast<int>(hwc.size(0)), static_cast<int>(hwc.size(1)), CV_8UC(c), hwc.data_ptr());
  cv::Mat bgr;
  if (c == 3)
    cv::cvtColor(m, bgr, cv::COLOR_RGB2BGR);
  else if (c == 4)
    cv::cvtColor(m, bgr, cv::COLOR_RGBA2BGRA);
  else
    bgr = m;
  auto ext = std::filesystem::path(path).extension().string();
  const std::string tmp = path + ".tmp" + ext;
  COLLAGE_CHECK_AT(cv::imwrite(tmp, bgr), path, "", "cannot write image (folder missing or unsupported extension)");
  COLLAGE_CHECK_AT(std::rename(tmp.c_str(), path.c_str()) == 0, path, "", "cannot move image into place");
}

}  // namespace collage
