// EulerDiscreteScheduler (diffusers 0.21.4) and the sigma machinery it shares with
// EulerAncestralDiscreteScheduler. Scalar math runs on float32 0-dim tensors as in diffusers.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/core.h"
#include "diffusion/scheduler_util.h"

namespace collage::sched {

// ---------------------------------------------------------------------------------------------
// EulerFamily

void EulerFamily::set_euler_timesteps(int64_t n, bool karras, const std::string& interpolation) {
  COLLAGE_CHECK(n >= 1, "{}: num_inference_steps must be >= 1, got {}", name(), n);
  const std::string spacing = config_.timestep_spacing.empty() ? "linspace" : config_.timestep_spacing;
  // 0.21.4 builds the spaced timesteps as float32 numpy arrays and interpolates sigmas at those values.
  std::vector<double> spaced = spaced_timesteps(*this, spacing, n);
  std::vector<float> ts(spaced.begin(), spaced.end());
  if (interpolation != "linear")
    config_error("interpolation_type", fmt::format("'{}' is not supported (supported: linear)", interpolation));
  std::vector<double> sig(ts.size());
  for (size_t i = 0; i < ts.size(); ++i) sig[i] = np_interp((double)ts[i], train_sigmas_);

  if (karras) {
    std::vector<float> log_sigmas(train_sigmas_.size());
    for (size_t i = 0; i < train_sigmas_.size(); ++i) log_sigmas[i] = std::log((float)train_sigmas_[i]);
    sig = karras_sigmas(sig.back(), sig.front(), n);
    std::vector<double> t64(sig.size());
    for (size_t i = 0; i < sig.size(); ++i) t64[i] = sigma_to_t(sig[i], log_sigmas);
    timesteps_ = at::tensor(t64, at::kDouble);  // diffusers keeps the float64 array here
  } else {
    timesteps_ = at::tensor(std::vector<float>(ts.begin(), ts.end()), at::kFloat);
  }
  sig.push_back(0.0);
  sigmas_ = at::tensor(sig, at::kDouble).to(at::kFloat);
  num_inference_steps_ = n;
  step_index_ = -1;
}

int64_t EulerFamily::index_of(double timestep) const {
  require_timesteps();
  auto hits = (timesteps_ == at::scalar_tensor(timestep, at::kDouble).to(timesteps_.scalar_type())).nonzero();
  COLLAGE_CHECK(hits.size(0) == 1, "{}: timestep {} occurs {} times in the schedule (needs exactly one)", name(),
                timestep, hits.size(0));
  return hits[0][0].item<int64_t>();
}

void EulerFamily::init_step_index(double timestep) {
  require_timesteps();
  auto hits = (timesteps_ == at::scalar_tensor(timestep, at::kDouble).to(timesteps_.scalar_type())).nonzero();
  COLLAGE_CHECK(hits.size(0) >= 1, "{}: timestep {} is not in the schedule set by set_timesteps({})", name(),
                timestep, num_inference_steps_);
  // The very first step takes the second match when a timestep repeats, so that starting mid-schedule
  // (img2img) never skips a sigma.
  step_index_ = hits[hits.size(0) > 1 ? 1 : 0][0].item<int64_t>();
}

double EulerFamily::init_noise_sigma() const {
  auto max_sigma = sigmas_.max();
  const std::string spacing = config_.timestep_spacing.empty() ? "linspace" : config_.timestep_spacing;
  if (spacing == "linspace" || spacing == "trailing") return max_sigma.item<double>();
  return (max_sigma.pow(2) + 1).pow(0.5).item<double>();
}

at::Tensor EulerFamily::scale_model_input(const at::Tensor& sample, double timestep) {
  if (step_index_ < 0) init_step_index(timestep);
  auto sigma = sigmas_[step_index_];
  return sample / (sigma.pow(2) + 1).pow(0.5);
}

at::Tensor EulerFamily::add_noise(const at::Tensor& original, const at::Tensor& noise, double timestep) const {
  COLLAGE_CHECK(original.sizes() == noise.sizes(), "{}: add_noise shapes differ: [{}] vs noise [{}]", name(),
                fmt::join(original.sizes(), ","), fmt::join(noise.sizes(), ","));
  auto sigma = sigmas_.to(original.options())[index_of(timestep)];
  return original + noise * sigma;
}

// ---------------------------------------------------------------------------------------------
// EulerDiscreteScheduler

namespace {

class EulerDiscreteScheduler : public EulerFamily {
 public:
  explicit EulerDiscreteScheduler(const SchedulerConfig& c)
      : EulerFamily(c, "EulerDiscreteScheduler", {"linear", "scaled_linear", "squaredcos_cap_v2"},
                    {"epsilon", "v_prediction", "sample", "original_sample"}) {
    if (config_.interpolation_type != "linear")
      config_error("interpolation_type",
                   fmt::format("'{}' is not supported (supported: linear)", config_.interpolation_type));
    // As __init__: the full training schedule until set_timesteps is called.
    auto t = np_linspace(0, (double)(c.num_train_timesteps - 1), c.num_train_timesteps);
    std::reverse(t.begin(), t.end());
    timesteps_ = at::tensor(t, at::kDouble);
    std::vector<double> s(train_sigmas_.rbegin(), train_sigmas_.rend());
    s.push_back(0.0);
    sigmas_ = at::tensor(s, at::kDouble).to(at::kFloat);
  }
  std::string name() const override { return "euler"; }
  std::string class_name() const override { return "EulerDiscreteScheduler"; }

  void set_timesteps(int64_t n) override {
    set_euler_timesteps(n, config_.use_karras_sigmas, config_.interpolation_type);
  }

  SchedulerOutput step(const at::Tensor& model_output, double timestep, const at::Tensor& sample,
                       const at::Tensor& noise_in, c10::optional<at::Generator> generator) override {
    require_timesteps();
    if (step_index_ < 0) init_step_index(timestep);
    COLLAGE_CHECK(step_index_ + 1 < sigmas_.size(0), "euler: step() called past the end of the schedule");
    const auto& o = step_options_;
    auto sigma = sigmas_[step_index_];
    const float sigma_f = sigma.item<float>();
    double gamma = 0.0;
    if ((float)o.s_tmin <= sigma_f && sigma_f <= (float)o.s_tmax)
      gamma = std::min(o.s_churn / (double)(sigmas_.size(0) - 1), std::pow(2.0, 0.5) - 1);

    // Drawn even when unused (s_churn == 0) so the generator advances as in diffusers.
    auto noise = step_noise(model_output, noise_in, generator, name());
    auto eps = noise * o.s_noise;
    auto sigma_hat = sigma * (gamma + 1);
    at::Tensor x = sample;
    if (gamma > 0) x = x + eps * (sigma_hat.pow(2) - sigma.pow(2)).pow(0.5);

    at::Tensor pred_original_sample;
    const auto& p = config_.prediction_type;
    if (p == "original_sample" || p == "sample") {
      pred_original_sample = model_output;
    } else if (p == "epsilon") {
      pred_original_sample = x - sigma_hat * model_output;
    } else {  // v_prediction: c_out * output + c_skip * input
      pred_original_sample = model_output * (-sigma / (sigma.pow(2) + 1).pow(0.5)) + (x / (sigma.pow(2) + 1));
    }
    auto derivative = (x - pred_original_sample) / sigma_hat;
    auto dt = sigmas_[step_index_ + 1] - sigma_hat;
    auto prev_sample = x + derivative * dt;
    ++step_index_;
    return {prev_sample, pred_original_sample};
  }
};

}  // namespace

std::unique_ptr<Scheduler> make_euler_discrete(const SchedulerConfig& c) {
  return std::make_unique<EulerDiscreteScheduler>(c);
}

}  // namespace collage::sched
