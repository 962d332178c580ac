// DDPMScheduler (diffusers 0.21.4): ancestral sampling with the posterior variance; noise for t > 0.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>

#include "core/core.h"
#include "diffusion/scheduler_util.h"

namespace collage::sched {
namespace {

class DDPMScheduler : public Scheduler {
 public:
  explicit DDPMScheduler(const SchedulerConfig& c)
      : Scheduler(c, "DDPMScheduler", {"linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"},
                  {"epsilon", "sample", "v_prediction"}) {
    if (config_.variance_type.empty()) config_.variance_type = "fixed_small";
    static const std::vector<std::string> kinds = {"fixed_small", "fixed_small_log", "fixed_large",
                                                   "fixed_large_log", "learned", "learned_range"};
    if (std::find(kinds.begin(), kinds.end(), config_.variance_type) == kinds.end())
      config_error("variance_type", fmt::format("unknown value '{}' (known: {})", config_.variance_type,
                                                fmt::join(kinds, ", ")));
    one_ = at::scalar_tensor(1.0, at::kFloat);
    timesteps_ = at::arange(config_.num_train_timesteps - 1, -1, -1, at::kLong);
  }
  std::string name() const override { return "ddpm"; }
  std::string class_name() const override { return "DDPMScheduler"; }
  bool needs_noise() const override { return true; }

  void set_timesteps(int64_t n) override {
    const int64_t N = config_.num_train_timesteps;
    COLLAGE_CHECK(n >= 1 && n <= N, "ddpm: num_inference_steps {} must be in [1, num_train_timesteps={}]", n, N);
    const std::string spacing = config_.timestep_spacing.empty() ? "leading" : config_.timestep_spacing;
    std::vector<int64_t> t;
    for (double v : spaced_timesteps(*this, spacing, n)) t.push_back((int64_t)np_round(v));
    timesteps_ = at::tensor(t, at::kLong);
    num_inference_steps_ = n;
  }

  SchedulerOutput step(const at::Tensor& model_output_in, double timestep_d, const at::Tensor& sample,
                       const at::Tensor& noise_in, c10::optional<at::Generator> generator) override {
    require_timesteps();
    const int64_t N = config_.num_train_timesteps;
    const int64_t t = integer_timestep(timestep_d, name());
    COLLAGE_CHECK(t >= 0 && t < N, "ddpm: timestep {} outside [0, {})", t, N);
    const int64_t prev_t = previous_timestep(t);
    const auto& vt = config_.variance_type;

    at::Tensor model_output = model_output_in, predicted_variance;
    if (model_output.size(1) == sample.size(1) * 2 && (vt == "learned" || vt == "learned_range")) {
      auto parts = at::split(model_output_in, sample.size(1), 1);
      model_output = parts[0];
      predicted_variance = parts[1];
    }
    // 1. alphas, betas
    auto alpha_prod_t = alphas_cumprod_[t];
    auto alpha_prod_t_prev = prev_t >= 0 ? alphas_cumprod_[prev_t] : one_;
    auto beta_prod_t = 1 - alpha_prod_t;
    auto beta_prod_t_prev = 1 - alpha_prod_t_prev;
    auto current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
    auto current_beta_t = 1 - current_alpha_t;
    // 2. predicted x_0, formula (15)
    at::Tensor pred_original_sample;
    const auto& p = config_.prediction_type;
    if (p == "epsilon") {
      pred_original_sample = (sample - beta_prod_t.pow(0.5) * model_output) / alpha_prod_t.pow(0.5);
    } else if (p == "sample") {
      pred_original_sample = model_output;
    } else {  // v_prediction
      pred_original_sample = alpha_prod_t.pow(0.5) * sample - beta_prod_t.pow(0.5) * model_output;
    }
    // 3. clip or threshold x_0
    if (config_.thresholding) {
      pred_original_sample = threshold_sample(pred_original_sample, config_);
    } else if (config_.clip_sample) {
      pred_original_sample = pred_original_sample.clamp(-config_.clip_sample_range, config_.clip_sample_range);
    }
    // 4-5. posterior mean, formula (7)
    auto pred_original_sample_coeff = (alpha_prod_t_prev.pow(0.5) * current_beta_t) / beta_prod_t;
    auto current_sample_coeff = current_alpha_t.pow(0.5) * beta_prod_t_prev / beta_prod_t;
    auto pred_prev_sample = pred_original_sample_coeff * pred_original_sample + current_sample_coeff * sample;
    // 6. noise
    if (t > 0) {
      auto noise = step_noise(model_output, noise_in, generator, name());
      at::Tensor variance;
      if (vt == "fixed_small_log") {
        variance = get_variance(t, predicted_variance) * noise;
      } else if (vt == "learned_range") {
        variance = at::exp(0.5 * get_variance(t, predicted_variance)) * noise;
      } else {
        variance = get_variance(t, predicted_variance).pow(0.5) * noise;
      }
      pred_prev_sample = pred_prev_sample + variance;
    }
    return {pred_prev_sample, pred_original_sample};
  }

 private:
  int64_t previous_timestep(int64_t t) const { return t - config_.num_train_timesteps / num_inference_steps_; }

  at::Tensor get_variance(int64_t t, const at::Tensor& predicted_variance) const {
    const int64_t prev_t = previous_timestep(t);
    auto alpha_prod_t = alphas_cumprod_[t];
    auto alpha_prod_t_prev = prev_t >= 0 ? alphas_cumprod_[prev_t] : one_;
    auto current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev;
    // beta~_t of formula (7); clamped because some variants take its log
    auto variance = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t;
    variance = at::clamp(variance, c10::optional<at::Scalar>(1e-20), c10::nullopt);
    const auto& vt = config_.variance_type;
    if (vt == "fixed_small") return variance;
    if (vt == "fixed_small_log") return at::exp(0.5 * at::log(variance));
    if (vt == "fixed_large") return current_beta_t;
    if (vt == "fixed_large_log") return at::log(current_beta_t);
    COLLAGE_CHECK(predicted_variance.defined(), "ddpm: variance_type '{}' needs a model output with twice the "
                  "sample's channels", vt);
    if (vt == "learned") return predicted_variance;
    // learned_range
    auto min_log = at::log(variance);
    auto max_log = at::log(current_beta_t);
    auto frac = (predicted_variance + 1) / 2;
    return frac * max_log + (1 - frac) * min_log;
  }

  at::Tensor one_;
};

}  // namespace

std::unique_ptr<Scheduler> make_ddpm(const SchedulerConfig& c) { return std::make_unique<DDPMScheduler>(c); }

}  // namespace collage::sched
