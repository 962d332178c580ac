// DDIMScheduler (diffusers 0.21.4). eta comes from StepOptions (0 = deterministic DDIM).
#include <ATen/ATen.h>
#include <fmt/format.h>

#include "core/core.h"
#include "diffusion/scheduler_util.h"

namespace collage::sched {
namespace {

// rescale_zero_terminal_snr (arXiv:2305.08891 Algorithm 1), float32 as diffusers.
at::Tensor rescale_zero_terminal_snr(const at::Tensor& betas) {
  auto alphas = 1.0 - betas;
  auto alphas_cumprod = at::cumprod(alphas, 0);
  auto alphas_bar_sqrt = alphas_cumprod.sqrt();
  auto a0 = alphas_bar_sqrt[0].clone();
  auto aT = alphas_bar_sqrt[-1].clone();
  alphas_bar_sqrt -= aT;
  alphas_bar_sqrt *= a0 / (a0 - aT);
  auto alphas_bar = alphas_bar_sqrt.pow(2);
  auto rest = alphas_bar.slice(0, 1) / alphas_bar.slice(0, 0, -1);
  alphas = at::cat({alphas_bar.slice(0, 0, 1), rest});
  return 1 - alphas;
}

class DDIMScheduler : public Scheduler {
 public:
  explicit DDIMScheduler(const SchedulerConfig& c)
      : Scheduler(c, "DDIMScheduler", {"linear", "scaled_linear", "squaredcos_cap_v2"},
                  {"epsilon", "sample", "v_prediction"}) {
    if (config_.rescale_betas_zero_snr) set_betas(rescale_zero_terminal_snr(betas_));
    // The "previous" alphabar of the final step: 1 or alphabar_0.
    final_alpha_cumprod_ = config_.set_alpha_to_one.value_or(true) ? at::scalar_tensor(1.0, at::kFloat)
                                                                   : alphas_cumprod_[0].clone();
    timesteps_ = at::arange(config_.num_train_timesteps - 1, -1, -1, at::kLong);
  }
  std::string name() const override { return "ddim"; }
  std::string class_name() const override { return "DDIMScheduler"; }
  bool needs_noise() const override { return step_options_.eta > 0; }

  void set_timesteps(int64_t n) override {
    const int64_t N = config_.num_train_timesteps;
    COLLAGE_CHECK(n >= 1 && n <= N, "ddim: num_inference_steps {} must be in [1, num_train_timesteps={}]", n, N);
    const std::string spacing = config_.timestep_spacing.empty() ? "leading" : config_.timestep_spacing;
    std::vector<int64_t> t;
    for (double v : spaced_timesteps(*this, spacing, n)) t.push_back((int64_t)np_round(v));
    timesteps_ = at::tensor(t, at::kLong);
    num_inference_steps_ = n;
  }

  SchedulerOutput step(const at::Tensor& model_output, double timestep_d, const at::Tensor& sample,
                       const at::Tensor& noise_in, c10::optional<at::Generator> generator) override {
    require_timesteps();
    const int64_t N = config_.num_train_timesteps;
    const int64_t t = integer_timestep(timestep_d, name());
    COLLAGE_CHECK(t >= 0 && t < N, "ddim: timestep {} outside [0, {})", t, N);
    const double eta = step_options_.eta;
    // 1. previous step value (t - N // n, as 0.21.4, whatever the spacing)
    const int64_t prev_t = t - N / num_inference_steps_;
    // 2. alphas, betas
    auto alpha_prod_t = alphas_cumprod_[t];
    auto alpha_prod_t_prev = prev_t >= 0 ? alphas_cumprod_[prev_t] : final_alpha_cumprod_;
    auto beta_prod_t = 1 - alpha_prod_t;
    // 3. predicted x_0 and epsilon
    at::Tensor pred_original_sample, pred_epsilon;
    const auto& p = config_.prediction_type;
    if (p == "epsilon") {
      pred_original_sample = (sample - beta_prod_t.pow(0.5) * model_output) / alpha_prod_t.pow(0.5);
      pred_epsilon = model_output;
    } else if (p == "sample") {
      pred_original_sample = model_output;
      pred_epsilon = (sample - alpha_prod_t.pow(0.5) * pred_original_sample) / beta_prod_t.pow(0.5);
    } else {  // v_prediction
      pred_original_sample = alpha_prod_t.pow(0.5) * sample - beta_prod_t.pow(0.5) * model_output;
      pred_epsilon = alpha_prod_t.pow(0.5) * model_output + beta_prod_t.pow(0.5) * sample;
    }
    // 4. clip or threshold x_0
    if (config_.thresholding) {
      pred_original_sample = threshold_sample(pred_original_sample, config_);
    } else if (config_.clip_sample) {
      pred_original_sample = pred_original_sample.clamp(-config_.clip_sample_range, config_.clip_sample_range);
    }
    // 5. sigma_t(eta), formula (16)
    auto beta_prod_t_prev = 1 - alpha_prod_t_prev;
    auto variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev);
    auto std_dev_t = eta * variance.pow(0.5);
    if (step_options_.use_clipped_model_output)
      pred_epsilon = (sample - alpha_prod_t.pow(0.5) * pred_original_sample) / beta_prod_t.pow(0.5);
    // 6. direction pointing to x_t, formula (12)
    auto pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t.pow(2)).pow(0.5) * pred_epsilon;
    // 7. x_{t-1} without noise
    auto prev_sample = alpha_prod_t_prev.pow(0.5) * pred_original_sample + pred_sample_direction;
    if (eta > 0) {
      auto noise = step_noise(model_output, noise_in, generator, name());
      prev_sample = prev_sample + std_dev_t * noise;
    }
    return {prev_sample, pred_original_sample};
  }

 private:
  at::Tensor final_alpha_cumprod_;
};

}  // namespace

std::unique_ptr<Scheduler> make_ddim(const SchedulerConfig& c) { return std::make_unique<DDIMScheduler>(c); }

}  // namespace collage::sched
