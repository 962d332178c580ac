// EulerAncestralDiscreteScheduler (diffusers 0.21.4): an Euler step to sigma_down plus fresh noise
// of scale sigma_up every step.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>

#include "core/core.h"
#include "diffusion/scheduler_util.h"

namespace collage::sched {
namespace {

class EulerAncestralDiscreteScheduler : public EulerFamily {
 public:
  explicit EulerAncestralDiscreteScheduler(const SchedulerConfig& c)
      : EulerFamily(c, "EulerAncestralDiscreteScheduler", {"linear", "scaled_linear", "squaredcos_cap_v2"},
                    {"epsilon", "v_prediction"}) {
    // 0.21.4 has neither Karras sigmas nor interpolation options for this class.
    if (config_.use_karras_sigmas)
      config_error("use_karras_sigmas", "not supported by EulerAncestralDiscreteScheduler in diffusers 0.21.4");
    auto t = np_linspace(0, (double)(c.num_train_timesteps - 1), c.num_train_timesteps);
    std::reverse(t.begin(), t.end());
    timesteps_ = at::tensor(t, at::kDouble);
    std::vector<double> s(train_sigmas_.rbegin(), train_sigmas_.rend());
    s.push_back(0.0);
    sigmas_ = at::tensor(s, at::kDouble).to(at::kFloat);
  }
  std::string name() const override { return "euler_ancestral"; }
  std::string class_name() const override { return "EulerAncestralDiscreteScheduler"; }

  void set_timesteps(int64_t n) override { set_euler_timesteps(n, false, "linear"); }

  SchedulerOutput step(const at::Tensor& model_output, double timestep, const at::Tensor& sample,
                       const at::Tensor& noise_in, c10::optional<at::Generator> generator) override {
    require_timesteps();
    if (step_index_ < 0) init_step_index(timestep);
    COLLAGE_CHECK(step_index_ + 1 < sigmas_.size(0), "euler_ancestral: step() called past the end of the schedule");
    auto sigma = sigmas_[step_index_];

    at::Tensor pred_original_sample;
    if (config_.prediction_type == "epsilon") {
      pred_original_sample = sample - sigma * model_output;
    } else {  // v_prediction: c_out * output + c_skip * input
      pred_original_sample =
          model_output * (-sigma / (sigma.pow(2) + 1).pow(0.5)) + (sample / (sigma.pow(2) + 1));
    }
    auto sigma_from = sigmas_[step_index_];
    auto sigma_to = sigmas_[step_index_ + 1];
    auto sigma_up = (sigma_to.pow(2) * (sigma_from.pow(2) - sigma_to.pow(2)) / sigma_from.pow(2)).pow(0.5);
    auto sigma_down = (sigma_to.pow(2) - sigma_up.pow(2)).pow(0.5);

    auto derivative = (sample - pred_original_sample) / sigma;
    auto dt = sigma_down - sigma;
    auto prev_sample = sample + derivative * dt;
    auto noise = step_noise(model_output, noise_in, generator, name());
    prev_sample = prev_sample + noise * sigma_up;
    ++step_index_;
    return {prev_sample, pred_original_sample};
  }
};

}  // namespace

std::unique_ptr<Scheduler> make_euler_ancestral_discrete(const SchedulerConfig& c) {
  return std::make_unique<EulerAncestralDiscreteScheduler>(c);
}

}  // namespace collage::sched
