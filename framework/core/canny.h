// Canny edge maps as the Collage Diffusion authors make their ControlNet control images: OpenCV's Canny on the
// 8-bit RGB array (with 3 channels OpenCV takes, per pixel, the channel with the largest gradient), then the
// edge map stacked to 3 channels.
#pragma once

#include <ATen/Tensor.h>

namespace collage {

struct CannyThresholds {
  double low = 100, high = 200;  // the authors' cv2.Canny(image, 100, 200)
};

// Edge map (H, W) uint8, 0 or 255: cv::Canny(rgb, low, high) with aperture 3 and the L1 gradient. `rgb_u8` is
// (H, W, 3) uint8 in RGB order (channel order matters where channels tie), or (H, W) / (H, W, 1) grey.
at::Tensor canny_edges_u8(const at::Tensor& rgb_u8, const CannyThresholds& thresholds = {});

// The control image of an image in [0, 1] ((3, H, W) or (1, 3, H, W) float): rounded to 8 bits
// (to_uint8_hwc), Canny, edges stacked to 3 channels, / 255 -> (1, 3, H, W) float32 in {0, 1}.
at::Tensor canny_control_image(const at::Tensor& image01, const CannyThresholds& thresholds = {});

}  // namespace collage
