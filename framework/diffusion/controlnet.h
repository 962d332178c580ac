// A ControlNet in the sampling loop: a ModelFn (pipeline.h) that runs the ControlNet on the model input and
// hands its residuals to the UNet, as diffusers 0.21.4's StableDiffusionControlNet(Img2Img)Pipeline does.
#pragma once

#include <ATen/Tensor.h>

#include <functional>

#include "diffusion/pipeline.h"
#include "models/models.h"

namespace collage {

struct ControlNetCall {
  ControlNetModel net{nullptr};
  at::Tensor image;          // prepared control image (N, 3, H, W) in [0, 1]; N = 1 or the number of images
  ControlScale scale{1.0};   // a number or a per-pixel map (models/controlnet.h)
  bool guess_mode = false;
  // Called with the residuals of every step before the UNet gets them (records, tests).
  std::function<void(const StepInfo&, const UNetResiduals&)> on_residuals;
};

// The model function "ControlNet residuals, then the UNet". With classifier-free guidance the rows of the model
// input are [unconditional; conditional] (StepInfo::conditional): without guess mode every row gets the control
// image (the image batch repeated to the rows, i.e. the unconditional half too); in guess mode the ControlNet runs
// on the conditional rows only and the unconditional rows get zero residuals.
ModelFn controlnet_model_fn(StableDiffusion& sd, const ControlNetCall& call);

// What a ControlNet adds to a sampling step: per round, interleaved (so a shared machine's load hits all three
// alike), one plain UNet evaluation, one ControlNet evaluation alone and one ControlNet step (ControlNet, then
// the UNet with its residuals); medians over the rounds after one warm-up round.
struct ControlNetStepTiming {
  double unet_seconds = 0, controlnet_seconds = 0, step_seconds = 0;
  int64_t rounds = 0;
  // (ControlNet step - plain UNet step) / plain UNet step: the cost on top of a step.
  double extra_ratio() const { return (step_seconds - unet_seconds) / unet_seconds; }
};
ControlNetStepTiming time_controlnet_step(UNet2DConditionModelImpl& unet, ControlNetModelImpl& net, int64_t batch,
                                          int64_t latent, int64_t tokens, int64_t rounds);

}  // namespace collage
