// Image files <-> tensors. Tensors are float32 CHW in [0, 1]; files are 8-bit PNG/JPEG via OpenCV.
#pragma once

#include <ATen/Tensor.h>

#include <string>

namespace collage {

// Reads an image as (C, H, W) float32 in [0, 1] with C = 3 (RGB) or 4 (RGBA when `keep_alpha` and the file
// has alpha; otherwise alpha is dropped, grayscale is expanded to RGB). Errors name the path.
at::Tensor read_image(const std::string& path, bool keep_alpha = false);
// Whether the file has an alpha channel.
bool image_has_alpha(const std::string& path);
// Writes a (3 or 4, H, W) or (1, C, H, W) tensor in [0, 1] as an 8-bit image (rounded, clamped). Atomic.
void write_image(const std::string& path, const at::Tensor& image);
// uint8 HWC (what a viewer sees) from a float CHW tensor in [0, 1].
at::Tensor to_uint8_hwc(const at::Tensor& image);

}  // namespace collage
