// PNDMScheduler (diffusers 0.21.4): Runge-Kutta warm-up steps (unless skip_prk_steps) then linear
// multistep (PLMS). With skip_prk_steps the second timestep is repeated: n steps run n+1 model calls.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>

#include "core/core.h"
#include "diffusion/scheduler_util.h"

namespace collage::sched {
namespace {

constexpr int64_t kPndmOrder = 4;

class PNDMScheduler : public Scheduler {
 public:
  explicit PNDMScheduler(const SchedulerConfig& c)
      : Scheduler(c, "PNDMScheduler", {"linear", "scaled_linear", "squaredcos_cap_v2"}, {"epsilon", "v_prediction"}) {
    final_alpha_cumprod_ = config_.set_alpha_to_one.value_or(false) ? at::scalar_tensor(1.0, at::kFloat)
                                                                    : alphas_cumprod_[0].clone();
  }
  std::string name() const override { return "pndm"; }
  std::string class_name() const override { return "PNDMScheduler"; }

  void set_timesteps(int64_t n) override {
    const int64_t N = config_.num_train_timesteps;
    COLLAGE_CHECK(n >= 1, "pndm: num_inference_steps must be >= 1, got {}", n);
    const std::string spacing = config_.timestep_spacing.empty() ? "leading" : config_.timestep_spacing;
    // _timesteps, ascending.
    std::vector<int64_t> asc;
    for (double v : spaced_timesteps(*this, spacing, n)) asc.push_back((int64_t)np_round(v));
    std::reverse(asc.begin(), asc.end());
    const int64_t len = asc.size();

    prk_timesteps_.clear();
    std::vector<int64_t> plms;
    if (config_.skip_prk_steps) {
      // concat(_t[:-1], _t[-2:-1], _t[-1:]) reversed: the second timestep repeats.
      std::vector<int64_t> cat(asc.begin(), asc.end() - std::min<int64_t>(len, 1));
      if (len >= 2) cat.push_back(asc[len - 2]);
      if (len >= 1) cat.push_back(asc[len - 1]);
      plms.assign(cat.rbegin(), cat.rend());
    } else {
      COLLAGE_CHECK(len >= kPndmOrder, "pndm: Runge-Kutta warm-up needs at least {} timesteps, got {} "
                    "(set skip_prk_steps)", kPndmOrder, len);
      // _t[-4:].repeat(2) + tile([0, N//n//2], 4), then [:-1].repeat(2)[1:-1] reversed.
      std::vector<int64_t> prk;
      for (int64_t i = len - kPndmOrder; i < len; ++i) {
        prk.push_back(asc[i]);
        prk.push_back(asc[i] + N / n / 2);
      }
      prk.pop_back();
      std::vector<int64_t> rep;
      for (int64_t v : prk) {
        rep.push_back(v);
        rep.push_back(v);
      }
      std::vector<int64_t> mid(rep.begin() + 1, rep.end() - 1);
      prk_timesteps_.assign(mid.rbegin(), mid.rend());
      if (len > 3) plms.assign(asc.rbegin() + 3, asc.rend());
    }
    std::vector<int64_t> all(prk_timesteps_);
    all.insert(all.end(), plms.begin(), plms.end());
    timesteps_ = at::tensor(all, at::kLong);
    num_inference_steps_ = n;
    ets_.clear();
    counter_ = 0;
    cur_model_output_ = at::Tensor();
    cur_sample_ = at::Tensor();
  }

  SchedulerOutput step(const at::Tensor& model_output, double timestep_d, const at::Tensor& sample,
                       const at::Tensor& noise_in, c10::optional<at::Generator> generator) override {
    require_timesteps();
    const int64_t t = integer_timestep(timestep_d, name());
    if (counter_ < (int64_t)prk_timesteps_.size() && !config_.skip_prk_steps) return step_prk(model_output, t, sample);
    return step_plms(model_output, t, sample);
  }

 private:
  SchedulerOutput step_prk(const at::Tensor& model_output_in, int64_t timestep, const at::Tensor& sample) {
    const int64_t N = config_.num_train_timesteps;
    const int64_t diff_to_prev = counter_ % 2 ? 0 : N / num_inference_steps_ / 2;
    const int64_t prev_timestep = timestep - diff_to_prev;
    timestep = prk_timesteps_[counter_ / 4 * 4];
    at::Tensor model_output = model_output_in;
    auto accumulate = [&](double w) {
      auto term = w * model_output_in;
      cur_model_output_ = cur_model_output_.defined() ? cur_model_output_ + term : term;
    };
    if (counter_ % 4 == 0) {
      accumulate(1.0 / 6);
      ets_.push_back(model_output_in);
      cur_sample_ = sample;
    } else if ((counter_ - 1) % 4 == 0) {
      accumulate(1.0 / 3);
    } else if ((counter_ - 2) % 4 == 0) {
      accumulate(1.0 / 3);
    } else {
      model_output = cur_model_output_ + (1.0 / 6) * model_output_in;
      cur_model_output_ = at::Tensor();
    }
    const at::Tensor& cur_sample = cur_sample_.defined() ? cur_sample_ : sample;
    auto prev_sample = get_prev_sample(cur_sample, timestep, prev_timestep, model_output);
    ++counter_;
    return {prev_sample, at::Tensor()};
  }

  SchedulerOutput step_plms(const at::Tensor& model_output_in, int64_t timestep, const at::Tensor& sample_in) {
    const int64_t N = config_.num_train_timesteps;
    COLLAGE_CHECK(config_.skip_prk_steps || ets_.size() >= 3,
                  "pndm: the linear multistep method needs 3 Runge-Kutta steps first");
    int64_t prev_timestep = timestep - N / num_inference_steps_;
    if (counter_ != 1) {
      if (ets_.size() > 3) ets_.erase(ets_.begin(), ets_.end() - 3);
      ets_.push_back(model_output_in);
    } else {
      prev_timestep = timestep;
      timestep = timestep + N / num_inference_steps_;
    }
    at::Tensor model_output = model_output_in, sample = sample_in;
    const size_t k = ets_.size();
    auto e = [&](size_t back) -> const at::Tensor& { return ets_[k - back]; };
    if (k == 1 && counter_ == 0) {
      cur_sample_ = sample_in;
    } else if (k == 1 && counter_ == 1) {
      model_output = (model_output_in + e(1)) / 2;
      COLLAGE_CHECK(cur_sample_.defined(), "pndm: internal state lost (cur_sample)");
      sample = cur_sample_;
      cur_sample_ = at::Tensor();
    } else if (k == 2) {
      model_output = (3 * e(1) - e(2)) / 2;
    } else if (k == 3) {
      model_output = (23 * e(1) - 16 * e(2) + 5 * e(3)) / 12;
    } else {
      model_output = (1.0 / 24) * (55 * e(1) - 59 * e(2) + 37 * e(3) - 9 * e(4));
    }
    auto prev_sample = get_prev_sample(sample, timestep, prev_timestep, model_output);
    ++counter_;
    return {prev_sample, at::Tensor()};
  }

  // Formula (9) of the PNDM paper: x_{t-delta} from x_t and the (combined) model output.
  at::Tensor get_prev_sample(const at::Tensor& sample, int64_t timestep, int64_t prev_timestep,
                             at::Tensor model_output) const {
    const int64_t N = config_.num_train_timesteps;
    COLLAGE_CHECK(timestep >= 0 && timestep < N && prev_timestep < N, "pndm: timestep {} -> {} outside [0, {})",
                  timestep, prev_timestep, N);
    auto alpha_prod_t = alphas_cumprod_[timestep];
    auto alpha_prod_t_prev = prev_timestep >= 0 ? alphas_cumprod_[prev_timestep] : final_alpha_cumprod_;
    auto beta_prod_t = 1 - alpha_prod_t;
    auto beta_prod_t_prev = 1 - alpha_prod_t_prev;
    if (config_.prediction_type == "v_prediction")
      model_output = alpha_prod_t.pow(0.5) * model_output + beta_prod_t.pow(0.5) * sample;
    auto sample_coeff = (alpha_prod_t_prev / alpha_prod_t).pow(0.5);
    auto model_output_denom_coeff =
        alpha_prod_t * beta_prod_t_prev.pow(0.5) + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev).pow(0.5);
    return sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * model_output / model_output_denom_coeff;
  }

  at::Tensor final_alpha_cumprod_;
  std::vector<int64_t> prk_timesteps_;
  std::vector<at::Tensor> ets_;
  int64_t counter_ = 0;
  at::Tensor cur_model_output_, cur_sample_;
};

}  // namespace

std::unique_ptr<Scheduler> make_pndm(const SchedulerConfig& c) { return std::make_unique<PNDMScheduler>(c); }

}  // namespace collage::sched
