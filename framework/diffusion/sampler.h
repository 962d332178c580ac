// The one denoising loop. txt2img, img2img (SDEdit) and every Collage Diffusion method run through it;
// methods change it only through hooks (per-layer noise is an on_step_end hook, never a second loop).
#pragma once

#include <ATen/Tensor.h>
#include <ATen/core/Generator.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "diffusion/scheduler.h"
#include "models/models.h"

namespace collage {

// Source of the Gaussian draws of a run (initial latents, stochastic scheduler steps, img2img noise).
class NoiseSource {
 public:
  virtual ~NoiseSource() = default;
  // A draw of `shape` (batch first). `what` names the purpose ("initial_latents", "step_3", ...) for logs.
  virtual at::Tensor draw(at::IntArrayRef shape, const at::TensorOptions& options, const std::string& what) = 0;
};

// One CPU generator per batch item, seeded with that item's seed: item b of every draw comes from
// generator b alone, so an image depends on its seed only, never on the batch it was run in. With one
// seed this reproduces torch.randn(shape, generator=torch.Generator().manual_seed(seed)).
class SeededNoise : public NoiseSource {
 public:
  explicit SeededNoise(std::vector<uint64_t> seeds);
  at::Tensor draw(at::IntArrayRef shape, const at::TensorOptions& options, const std::string& what) override;
  size_t batch() const { return generators_.size(); }

 private:
  std::vector<at::Generator> generators_;
};

// Replays recorded draws in order (parity checks against reference runs).
class RecordedNoise : public NoiseSource {
 public:
  explicit RecordedNoise(std::vector<at::Tensor> draws) : draws_(std::move(draws)) {}
  at::Tensor draw(at::IntArrayRef shape, const at::TensorOptions& options, const std::string& what) override;
  size_t used() const { return next_; }

 private:
  std::vector<at::Tensor> draws_;
  size_t next_ = 0;
};

// The state a hook sees at one step.
struct StepState {
  int64_t index = 0;            // position in the loop (0 = first step run)
  int64_t num_steps = 0;        // steps this loop runs
  double timestep = 0;          // timestep of this step
  double next_timestep = -1;    // timestep the latents are at after this step (-1 after the last step)
  double sigma = 0;             // k-diffusion sigma at `timestep`
  at::Tensor latents;           // before the step in on_step_begin, after it in on_step_end (hooks may replace)
  at::Tensor noise_pred;        // guided model output of this step (on_step_end)
  at::Tensor pred_original_sample;  // the scheduler's x0 estimate, when it has one (on_step_end)
};

struct SamplerHooks {
  std::function<void(StepState&)> on_step_begin;
  std::function<void(StepState&)> on_step_end;
};

// The denoiser the loop calls: scaled model input + step info -> guided noise prediction (same shape).
using DenoiseFn = std::function<at::Tensor(const at::Tensor& model_input, double timestep, const StepInfo& step)>;

struct SampleResult {
  at::Tensor latents;
  std::vector<double> timesteps;  // the timesteps actually run
};

// Runs `scheduler` from `latents` over its timesteps starting at `begin_index` (0 = full txt2img loop;
// img2img passes Scheduler::img2img_start(strength).begin_index). set_timesteps must have been called.
SampleResult run_sampler(Scheduler& scheduler, const DenoiseFn& denoise, at::Tensor latents, int64_t begin_index,
                         NoiseSource& noise, const SamplerHooks& hooks = {},
                         const std::function<void(int64_t done, int64_t total)>& progress = {});

}  // namespace collage
