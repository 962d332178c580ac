// Private to framework/diffusion: numpy arithmetic the schedulers reproduce, shared step helpers
// and the per-family factories.
#pragma once

#include <ATen/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "diffusion/scheduler.h"

namespace collage::sched {

// np.linspace(start, stop, num) (float64; last element exactly stop).
std::vector<double> np_linspace(double start, double stop, int64_t num);
// np.arange(start, stop, step) for float64 (numpy's fill: start + i*(a[1]-a[0])).
std::vector<double> np_arange(double start, double stop, double step);
// np.round (half to even).
double np_round(double x);
// np.interp(x, arange(len(fp)), fp).
double np_interp(double x, const std::vector<double>& fp);

// Timesteps for "linspace" / "leading" / "trailing" as most 0.21.4 schedulers compute them (float64
// values before the class's dtype cast), descending. Errors name the config key.
std::vector<double> spaced_timesteps(const Scheduler& s, const std::string& spacing, int64_t n);

// Karras et al. sigmas (rho 7) from in_sigmas' last/first element, as _convert_to_karras.
std::vector<double> karras_sigmas(double sigma_last, double sigma_first, int64_t n);
// _sigma_to_t with float32 log_sigmas.
double sigma_to_t(double sigma, const std::vector<float>& log_sigmas);

// An integral timestep for the integer-timestep schedulers.
int64_t integer_timestep(double t, const std::string& scheduler);

// The step's random tensor: `noise` (checked against `like`) or a randn draw as randn_tensor.
at::Tensor step_noise(const at::Tensor& like, const at::Tensor& noise, const c10::optional<at::Generator>& gen,
                      const std::string& scheduler);

// Dynamic thresholding (_threshold_sample) and clip_sample as DDIM/DDPM/DPMSolver apply them.
at::Tensor threshold_sample(const at::Tensor& sample, const SchedulerConfig& c);

// A float32 0-dim tensor, for scalar arithmetic that must round like diffusers' tensor scalars.
at::Tensor f32(double v);

std::unique_ptr<Scheduler> make_euler_ancestral_discrete(const SchedulerConfig& c);
std::unique_ptr<Scheduler> make_euler_discrete(const SchedulerConfig& c);
std::unique_ptr<Scheduler> make_ddim(const SchedulerConfig& c);
std::unique_ptr<Scheduler> make_ddpm(const SchedulerConfig& c);
std::unique_ptr<Scheduler> make_pndm(const SchedulerConfig& c);
std::unique_ptr<Scheduler> make_dpmsolver_multistep(const SchedulerConfig& c);

// Shared by EulerDiscrete and EulerAncestralDiscrete: sigma table, step index found from the first
// timestep seen (0.21.4 _init_step_index), scale_model_input, init_noise_sigma, add_noise.
class EulerFamily : public Scheduler {
 public:
  double init_noise_sigma() const override;
  at::Tensor scale_model_input(const at::Tensor& sample, double timestep) override;
  at::Tensor add_noise(const at::Tensor& original, const at::Tensor& noise, double timestep) const override;
  bool needs_noise() const override { return true; }

 protected:
  using Scheduler::Scheduler;
  // Builds timesteps_ (F32, or F64 for Karras) and sigmas_ (F32, n+1); resets the step index.
  void set_euler_timesteps(int64_t n, bool karras, const std::string& interpolation);
  void init_step_index(double timestep);
  int64_t index_of(double timestep) const;  // all matches must be unique (add_noise)
  int64_t step_index_ = -1;
};

}  // namespace collage::sched
