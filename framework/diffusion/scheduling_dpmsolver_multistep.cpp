// DPMSolverMultistepScheduler (diffusers 0.21.4): DPM-Solver / DPM-Solver++ (and SDE variants) of
// order 1-3 on the VP schedule alpha_t = sqrt(alphabar), sigma_t = sqrt(1-alphabar),
// lambda_t = log(alpha_t) - log(sigma_t), indexed by integer timestep.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "core/core.h"
#include "diffusion/scheduler_util.h"

namespace collage::sched {
namespace {

class DPMSolverMultistepScheduler : public Scheduler {
 public:
  explicit DPMSolverMultistepScheduler(const SchedulerConfig& c)
      : Scheduler(c, "DPMSolverMultistepScheduler", {"linear", "scaled_linear", "squaredcos_cap_v2"},
                  {"epsilon", "sample", "v_prediction"}) {
    alpha_t_ = at::sqrt(alphas_cumprod_);
    sigma_t_ = at::sqrt(1 - alphas_cumprod_);
    lambda_t_ = at::log(alpha_t_) - at::log(sigma_t_);
    // Legacy names diffusers maps onto the supported ones.
    if (config_.algorithm_type == "deis") config_.algorithm_type = "dpmsolver++";
    const auto& a = config_.algorithm_type;
    if (a != "dpmsolver" && a != "dpmsolver++" && a != "sde-dpmsolver" && a != "sde-dpmsolver++")
      config_error("algorithm_type", fmt::format("'{}' is not implemented (known: dpmsolver, dpmsolver++, "
                                                 "sde-dpmsolver, sde-dpmsolver++)", a));
    const auto& s = config_.solver_type;
    if (s == "logrho" || s == "bh1" || s == "bh2") config_.solver_type = "midpoint";
    else if (s != "midpoint" && s != "heun")
      config_error("solver_type", fmt::format("'{}' is not implemented (known: midpoint, heun)", s));
    if (config_.solver_order < 1 || config_.solver_order > 3)
      config_error("solver_order", fmt::format("must be 1, 2 or 3, got {}", config_.solver_order));
    if (config_.solver_order == 3 && is_sde())
      config_error("solver_order", "third order is not implemented for the SDE variants (use 1 or 2)");
    const auto& v = config_.variance_type;
    if (!v.empty() && v != "learned" && v != "learned_range")
      config_error("variance_type", fmt::format("unknown value '{}' (known: null, learned, learned_range)", v));
    auto t = np_linspace(0, (double)(c.num_train_timesteps - 1), c.num_train_timesteps);
    std::reverse(t.begin(), t.end());
    timesteps_ = at::tensor(std::vector<float>(t.begin(), t.end()), at::kFloat);
    model_outputs_.assign(config_.solver_order, at::Tensor());
  }
  std::string name() const override { return "dpmsolver_multistep"; }
  std::string class_name() const override { return "DPMSolverMultistepScheduler"; }
  bool needs_noise() const override { return is_sde(); }

  void set_timesteps(int64_t n) override {
    const auto& c = config_;
    const int64_t N = c.num_train_timesteps;
    COLLAGE_CHECK(n >= 1, "dpmsolver_multistep: num_inference_steps must be >= 1, got {}", n);
    // Clip the smallest lambda(t) for numerical stability (matters for the cosine schedule).
    const int64_t clipped_idx =
        at::searchsorted(at::flip(lambda_t_, {0}), at::Scalar(c.lambda_min_clipped)).item<int64_t>();
    const int64_t last_timestep = N - clipped_idx;
    const std::string spacing = c.timestep_spacing.empty() ? "linspace" : c.timestep_spacing;
    std::vector<double> ts;
    if (spacing == "linspace") {
      auto lin = np_linspace(0, (double)(last_timestep - 1), n + 1);
      for (int64_t i = n; i >= 1; --i) ts.push_back(np_round(lin[i]));
    } else if (spacing == "leading") {
      const int64_t ratio = last_timestep / (n + 1);
      for (int64_t i = n; i >= 1; --i) ts.push_back((double)(i * ratio + c.steps_offset));
    } else if (spacing == "trailing") {
      const double ratio = (double)N / (double)n;
      for (double v : np_arange((double)last_timestep, 0, -ratio)) ts.push_back(np_round(v) - 1);
    } else {
      config_error("timestep_spacing", fmt::format("unknown value '{}' (known: linspace, leading, trailing)", spacing));
    }
    if (c.use_karras_sigmas) {
      std::vector<float> log_sigmas(train_sigmas_.size());
      for (size_t i = 0; i < train_sigmas_.size(); ++i) log_sigmas[i] = std::log((float)train_sigmas_[i]);
      // in_sigmas is the ascending training table here, so "sigma_min" is its largest value.
      auto sig = karras_sigmas(train_sigmas_.back(), train_sigmas_.front(), n);
      ts.clear();
      for (auto it = sig.rbegin(); it != sig.rend(); ++it) ts.push_back(np_round(sigma_to_t(*it, log_sigmas)));
    }
    // Drop repeated timesteps (possible when n approaches num_train_timesteps), keeping first occurrences.
    std::vector<int64_t> unique;
    std::set<int64_t> seen;
    for (double v : ts)
      if (seen.insert((int64_t)v).second) unique.push_back((int64_t)v);
    timesteps_ = at::tensor(unique, at::kLong);
    num_inference_steps_ = n;
    model_outputs_.assign(c.solver_order, at::Tensor());
    lower_order_nums_ = 0;
  }

  SchedulerOutput step(const at::Tensor& model_output_in, double timestep_d, const at::Tensor& sample,
                       const at::Tensor& noise_in, c10::optional<at::Generator> generator) override {
    require_timesteps();
    const auto& c = config_;
    const int64_t timestep = integer_timestep(timestep_d, name());
    COLLAGE_CHECK(timestep >= 0 && timestep < c.num_train_timesteps, "dpmsolver_multistep: timestep {} outside "
                  "[0, {})", timestep, c.num_train_timesteps);
    const int64_t len = timesteps_.size(0);
    auto hits = (timesteps_ == timestep).nonzero();
    // A timestep outside the schedule is treated as the last step, as diffusers does.
    const int64_t step_index = hits.size(0) == 0 ? len - 1 : hits[0][0].item<int64_t>();
    const int64_t prev_timestep = step_index == len - 1 ? 0 : timesteps_[step_index + 1].item<int64_t>();
    const bool lower_order_final = step_index == len - 1 && c.lower_order_final && len < 15;
    const bool lower_order_second = step_index == len - 2 && c.lower_order_final && len < 15;

    auto model_output = convert_model_output(model_output_in, timestep, sample);
    for (int i = 0; i + 1 < c.solver_order; ++i) model_outputs_[i] = model_outputs_[i + 1];
    model_outputs_.back() = model_output;

    at::Tensor noise;
    if (is_sde()) noise = step_noise(model_output_in, noise_in, generator, name());

    at::Tensor prev_sample;
    if (c.solver_order == 1 || lower_order_nums_ < 1 || lower_order_final) {
      prev_sample = first_order_update(model_output, timestep, prev_timestep, sample, noise);
    } else if (c.solver_order == 2 || lower_order_nums_ < 2 || lower_order_second) {
      const int64_t s1 = timesteps_[step_index - 1].item<int64_t>();
      prev_sample = second_order_update({s1, timestep}, prev_timestep, sample, noise);
    } else {
      const int64_t s2 = timesteps_[step_index - 2].item<int64_t>();
      const int64_t s1 = timesteps_[step_index - 1].item<int64_t>();
      prev_sample = third_order_update({s2, s1, timestep}, prev_timestep, sample);
    }
    if (lower_order_nums_ < c.solver_order) ++lower_order_nums_;
    return {prev_sample, at::Tensor()};
  }

 private:
  bool is_sde() const {
    return config_.algorithm_type == "sde-dpmsolver" || config_.algorithm_type == "sde-dpmsolver++";
  }
  bool is_data_prediction() const {
    return config_.algorithm_type == "dpmsolver++" || config_.algorithm_type == "sde-dpmsolver++";
  }

  // DPM-Solver++ integrates the data prediction x0, DPM-Solver the noise prediction.
  at::Tensor convert_model_output(const at::Tensor& model_output_in, int64_t t, const at::Tensor& sample) const {
    const auto& p = config_.prediction_type;
    const bool learned = config_.variance_type == "learned" || config_.variance_type == "learned_range";
    auto alpha_t = alpha_t_[t], sigma_t = sigma_t_[t];
    if (is_data_prediction()) {
      at::Tensor x0_pred;
      if (p == "epsilon") {
        // Only the mean is used; diffusers keeps the first 3 channels of a learned-variance output.
        auto model_output = learned ? model_output_in.slice(1, 0, 3) : model_output_in;
        x0_pred = (sample - sigma_t * model_output) / alpha_t;
      } else if (p == "sample") {
        x0_pred = model_output_in;
      } else {
        x0_pred = alpha_t * sample - sigma_t * model_output_in;
      }
      if (config_.thresholding) x0_pred = threshold_sample(x0_pred, config_);
      return x0_pred;
    }
    at::Tensor epsilon;
    if (p == "epsilon") {
      epsilon = learned ? model_output_in.slice(1, 0, 3) : model_output_in;
    } else if (p == "sample") {
      epsilon = (sample - alpha_t * model_output_in) / sigma_t;
    } else {
      epsilon = alpha_t * model_output_in + sigma_t * sample;
    }
    if (config_.thresholding) {
      auto x0_pred = (sample - sigma_t * epsilon) / alpha_t;
      x0_pred = threshold_sample(x0_pred, config_);
      epsilon = (sample - alpha_t * x0_pred) / sigma_t;
    }
    return epsilon;
  }

  at::Tensor first_order_update(const at::Tensor& model_output, int64_t timestep, int64_t prev_timestep,
                                const at::Tensor& sample, const at::Tensor& noise) const {
    auto lambda_t = lambda_t_[prev_timestep], lambda_s = lambda_t_[timestep];
    auto alpha_t = alpha_t_[prev_timestep], alpha_s = alpha_t_[timestep];
    auto sigma_t = sigma_t_[prev_timestep], sigma_s = sigma_t_[timestep];
    auto h = lambda_t - lambda_s;
    const auto& a = config_.algorithm_type;
    if (a == "dpmsolver++") return (sigma_t / sigma_s) * sample - (alpha_t * (at::exp(-h) - 1.0)) * model_output;
    if (a == "dpmsolver") return (alpha_t / alpha_s) * sample - (sigma_t * (at::exp(h) - 1.0)) * model_output;
    if (a == "sde-dpmsolver++")
      return (sigma_t / sigma_s * at::exp(-h)) * sample + (alpha_t * (1 - at::exp(-2.0 * h))) * model_output +
             sigma_t * at::sqrt(1.0 - at::exp(-2 * h)) * noise;
    // sde-dpmsolver
    return (alpha_t / alpha_s) * sample - 2.0 * (sigma_t * (at::exp(h) - 1.0)) * model_output +
           sigma_t * at::sqrt(at::exp(2 * h) - 1.0) * noise;
  }

  at::Tensor second_order_update(const std::vector<int64_t>& timestep_list, int64_t prev_timestep,
                                 const at::Tensor& sample, const at::Tensor& noise) const {
    const int64_t t = prev_timestep, s0 = timestep_list[1], s1 = timestep_list[0];
    const auto& m0 = model_outputs_[model_outputs_.size() - 1];
    const auto& m1 = model_outputs_[model_outputs_.size() - 2];
    auto lambda_t = lambda_t_[t], lambda_s0 = lambda_t_[s0], lambda_s1 = lambda_t_[s1];
    auto alpha_t = alpha_t_[t], alpha_s0 = alpha_t_[s0];
    auto sigma_t = sigma_t_[t], sigma_s0 = sigma_t_[s0];
    auto h = lambda_t - lambda_s0, h_0 = lambda_s0 - lambda_s1;
    auto r0 = h_0 / h;
    const auto& D0 = m0;
    auto D1 = (1.0 / r0) * (m0 - m1);
    const bool midpoint = config_.solver_type == "midpoint";
    const auto& a = config_.algorithm_type;
    if (a == "dpmsolver++") {
      if (midpoint)
        return (sigma_t / sigma_s0) * sample - (alpha_t * (at::exp(-h) - 1.0)) * D0 -
               0.5 * (alpha_t * (at::exp(-h) - 1.0)) * D1;
      return (sigma_t / sigma_s0) * sample - (alpha_t * (at::exp(-h) - 1.0)) * D0 +
             (alpha_t * ((at::exp(-h) - 1.0) / h + 1.0)) * D1;
    }
    if (a == "dpmsolver") {
      if (midpoint)
        return (alpha_t / alpha_s0) * sample - (sigma_t * (at::exp(h) - 1.0)) * D0 -
               0.5 * (sigma_t * (at::exp(h) - 1.0)) * D1;
      return (alpha_t / alpha_s0) * sample - (sigma_t * (at::exp(h) - 1.0)) * D0 -
             (sigma_t * ((at::exp(h) - 1.0) / h - 1.0)) * D1;
    }
    if (a == "sde-dpmsolver++") {
      if (midpoint)
        return (sigma_t / sigma_s0 * at::exp(-h)) * sample + (alpha_t * (1 - at::exp(-2.0 * h))) * D0 +
               0.5 * (alpha_t * (1 - at::exp(-2.0 * h))) * D1 + sigma_t * at::sqrt(1.0 - at::exp(-2.0 * h)) * noise;
      return (sigma_t / sigma_s0 * at::exp(-h)) * sample + (alpha_t * (1 - at::exp(-2.0 * h))) * D0 +
             (alpha_t * ((1.0 - at::exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * D1 +
             sigma_t * at::sqrt(1.0 - at::exp(-2.0 * h)) * noise;
    }
    // sde-dpmsolver
    if (midpoint)
      return (alpha_t / alpha_s0) * sample - 2.0 * (sigma_t * (at::exp(h) - 1.0)) * D0 -
             (sigma_t * (at::exp(h) - 1.0)) * D1 + sigma_t * at::sqrt(at::exp(2 * h) - 1.0) * noise;
    return (alpha_t / alpha_s0) * sample - 2.0 * (sigma_t * (at::exp(h) - 1.0)) * D0 -
           2.0 * (sigma_t * ((at::exp(h) - 1.0) / h - 1.0)) * D1 + sigma_t * at::sqrt(at::exp(2 * h) - 1.0) * noise;
  }

  at::Tensor third_order_update(const std::vector<int64_t>& timestep_list, int64_t prev_timestep,
                                const at::Tensor& sample) const {
    const int64_t t = prev_timestep, s0 = timestep_list[2], s1 = timestep_list[1], s2 = timestep_list[0];
    const size_t k = model_outputs_.size();
    const auto& m0 = model_outputs_[k - 1];
    const auto& m1 = model_outputs_[k - 2];
    const auto& m2 = model_outputs_[k - 3];
    auto lambda_t = lambda_t_[t], lambda_s0 = lambda_t_[s0], lambda_s1 = lambda_t_[s1], lambda_s2 = lambda_t_[s2];
    auto alpha_t = alpha_t_[t], alpha_s0 = alpha_t_[s0];
    auto sigma_t = sigma_t_[t], sigma_s0 = sigma_t_[s0];
    auto h = lambda_t - lambda_s0, h_0 = lambda_s0 - lambda_s1, h_1 = lambda_s1 - lambda_s2;
    auto r0 = h_0 / h, r1 = h_1 / h;
    const auto& D0 = m0;
    auto D1_0 = (1.0 / r0) * (m0 - m1), D1_1 = (1.0 / r1) * (m1 - m2);
    auto D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1);
    auto D2 = (1.0 / (r0 + r1)) * (D1_0 - D1_1);
    if (config_.algorithm_type == "dpmsolver++")
      return (sigma_t / sigma_s0) * sample - (alpha_t * (at::exp(-h) - 1.0)) * D0 +
             (alpha_t * ((at::exp(-h) - 1.0) / h + 1.0)) * D1 -
             (alpha_t * ((at::exp(-h) - 1.0 + h) / h.pow(2) - 0.5)) * D2;
    return (alpha_t / alpha_s0) * sample - (sigma_t * (at::exp(h) - 1.0)) * D0 -
           (sigma_t * ((at::exp(h) - 1.0) / h - 1.0)) * D1 - (sigma_t * ((at::exp(h) - 1.0 - h) / h.pow(2) - 0.5)) * D2;
  }

  at::Tensor alpha_t_, sigma_t_, lambda_t_;
  std::vector<at::Tensor> model_outputs_;
  int lower_order_nums_ = 0;
};

}  // namespace

std::unique_ptr<Scheduler> make_dpmsolver_multistep(const SchedulerConfig& c) {
  return std::make_unique<DPMSolverMultistepScheduler>(c);
}

}  // namespace collage::sched
