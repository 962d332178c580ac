// Noise schedulers of diffusers 0.21.4 (EulerAncestralDiscrete, EulerDiscrete, DDIM, DDPM, PNDM,
// DPMSolverMultistep), reproducing its float32/float64 arithmetic so that trajectories match the
// reference to float32 rounding. State (step index, multistep history) lives in the object;
// set_timesteps() resets it.
#pragma once

#include <ATen/Tensor.h>
#include <ATen/core/Generator.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/core.h"

namespace collage {

// Mirrors scheduler_config.json. Defaults are diffusers' constructor defaults; fields whose default
// differs between scheduler classes are empty/unset and resolved by the class.
struct SchedulerConfig {
  int64_t num_train_timesteps = 1000;
  double beta_start = 0.0001, beta_end = 0.02;
  std::string beta_schedule = "linear";  // linear | scaled_linear | squaredcos_cap_v2 | sigmoid (DDPM)
  std::vector<double> trained_betas;     // non-empty overrides beta_schedule
  std::string prediction_type = "epsilon";  // epsilon | v_prediction | sample (| original_sample: Euler)
  std::string timestep_spacing;  // linspace | leading | trailing; empty = class default
                                 // (Euler family, DPMSolver: linspace; DDIM, DDPM, PNDM: leading)
  int64_t steps_offset = 0;
  std::optional<bool> set_alpha_to_one;  // unset = class default (DDIM true, PNDM false)
  bool clip_sample = true;               // DDIM, DDPM
  double clip_sample_range = 1.0;
  bool thresholding = false;             // DDIM, DDPM, DPMSolver
  double dynamic_thresholding_ratio = 0.995;
  double sample_max_value = 1.0;
  bool rescale_betas_zero_snr = false;   // DDIM
  bool skip_prk_steps = false;           // PNDM
  std::string variance_type;             // DDPM: fixed_small (default) | fixed_small_log | fixed_large |
                                         // fixed_large_log | learned | learned_range; DPMSolver: empty | learned | learned_range
  int solver_order = 2;                  // DPMSolver
  std::string algorithm_type = "dpmsolver++";  // dpmsolver | dpmsolver++ | sde-dpmsolver | sde-dpmsolver++
  std::string solver_type = "midpoint";        // midpoint | heun
  bool lower_order_final = true;
  bool use_karras_sigmas = false;        // Euler, DPMSolver
  double lambda_min_clipped = -std::numeric_limits<double>::infinity();
  std::string interpolation_type = "linear";  // Euler

  std::string class_name;                 // "_class_name" when read from a file
  std::string source;                     // file it was read from (named in errors)
  std::vector<std::string> unknown_keys;  // keys no scheduler here knows (diffusers ignores them too)

  // Reads a scheduler config object. Wrong types and unknown enum values throw collage::Error naming
  // `file` and the key; unknown keys are tolerated and listed in unknown_keys.
  static SchedulerConfig from_json(const Json& j, const std::string& file);
};

struct SchedulerOutput {
  at::Tensor prev_sample;
  at::Tensor pred_original_sample;  // undefined when the diffusers step output has none (PNDM, DPMSolver)
};

// Per-call keyword arguments of diffusers' step() that are not config fields.
struct StepOptions {
  double eta = 0.0;                         // DDIM
  bool use_clipped_model_output = false;    // DDIM
  double s_churn = 0.0, s_tmin = 0.0;       // Euler
  double s_tmax = std::numeric_limits<double>::infinity();
  double s_noise = 1.0;
};

class Scheduler {
 public:
  virtual ~Scheduler() = default;
  virtual std::string name() const = 0;        // registry name: "euler_ancestral", ...
  virtual std::string class_name() const = 0;  // diffusers class: "EulerAncestralDiscreteScheduler", ...

  // Computes the inference schedule and resets all step state.
  virtual void set_timesteps(int64_t num_inference_steps) = 0;
  // Dtype as diffusers: I64 (DDIM, DDPM, PNDM, DPMSolver), F32 (Euler family; F64 with Karras sigmas).
  const at::Tensor& timesteps() const { return timesteps_; }
  std::vector<double> timestep_values() const;
  // The count given to set_timesteps (0 before the first call).
  int64_t num_inference_steps() const { return num_inference_steps_; }
  // Euler family: F32 (n+1,) sigmas, last 0; undefined for the others.
  const at::Tensor& sigmas() const { return sigmas_; }

  virtual double init_noise_sigma() const { return 1.0; }
  virtual at::Tensor scale_model_input(const at::Tensor& sample, double timestep) { return sample; }
  // `noise`: the random tensor a stochastic step uses (EulerAncestral, Euler (drawn, unused when
  // s_churn == 0), DDPM for t > 0, DDIM with eta > 0, SDE DPM-Solver); if undefined it is drawn
  // with randn from `generator` (default CPU generator when absent) as diffusers' randn_tensor does.
  virtual SchedulerOutput step(const at::Tensor& model_output, double timestep, const at::Tensor& sample,
                               const at::Tensor& noise = {},
                               c10::optional<at::Generator> generator = c10::nullopt) = 0;
  // Whether step() consumes a random draw (DDPM: for t > 0 only).
  virtual bool needs_noise() const { return false; }
  // Noises `original` to `timestep` as the class's add_noise does (Euler family: x + sigma*noise;
  // others: sqrt(alphabar)*x + sqrt(1-alphabar)*noise). Euler family needs set_timesteps first.
  virtual at::Tensor add_noise(const at::Tensor& original, const at::Tensor& noise, double timestep) const;
  virtual int order() const { return 1; }

  void set_step_options(const StepOptions& options) { step_options_ = options; }
  const StepOptions& step_options() const { return step_options_; }

  // StableDiffusionImg2ImgPipeline.get_timesteps on the current schedule: t_start = n - min(int(n*strength), n),
  // timesteps[t_start*order:]; num_effective_steps = n - t_start (what diffusers returns as the new step count).
  struct Img2ImgStart {
    int64_t begin_index = 0;
    std::vector<double> timesteps;
    int64_t num_effective_steps = 0;
  };
  Img2ImgStart img2img_start(double strength) const;

  // k-diffusion sigma sqrt((1-alphabar_t)/alphabar_t) (float32 table, linearly interpolated for
  // fractional t as np.interp).
  double sigma_at(double timestep) const;

  const SchedulerConfig& config() const { return config_; }
  const at::Tensor& betas() const { return betas_; }                    // F32 (num_train_timesteps,)
  const at::Tensor& alphas_cumprod() const { return alphas_cumprod_; }  // F32 (num_train_timesteps,)

 protected:
  Scheduler(SchedulerConfig config, const std::string& class_name,
            const std::vector<std::string>& beta_schedules, const std::vector<std::string>& prediction_types);
  // Errors about the config name its source file and the key.
  [[noreturn]] void config_error(const std::string& key, const std::string& message) const;
  // Throws unless set_timesteps() has been called.
  void require_timesteps() const;
  // Replaces the beta schedule (DDIM's rescale_betas_zero_snr) and recomputes what derives from it.
  void set_betas(const at::Tensor& betas);

  SchedulerConfig config_;
  StepOptions step_options_;
  at::Tensor betas_, alphas_, alphas_cumprod_;  // F32
  at::Tensor timesteps_, sigmas_;
  int64_t num_inference_steps_ = 0;
  std::vector<double> train_sigmas_;  // float32 sqrt((1-ac)/ac), widened
};

// By registry name ("euler_ancestral", "euler", "ddim", "ddpm", "pndm", "dpmsolver_multistep") or by
// diffusers class name ("EulerAncestralDiscreteScheduler", ...). Unknown names: error listing the valid ones.
std::unique_ptr<Scheduler> make_scheduler(const std::string& name, const SchedulerConfig& config);
// Reads scheduler_config.json (NaN/Infinity literals allowed, as Python's json writes them) and builds
// the scheduler named by name_override, or else by its "_class_name".
std::unique_ptr<Scheduler> load_scheduler(const std::string& scheduler_config_json_path,
                                          const std::string& name_override = "");
std::vector<std::string> scheduler_names();

// JSON as Python's json module writes it: bare NaN, Infinity and -Infinity become non-finite numbers.
Json read_json_file_allow_nonfinite(const std::string& path);
Json parse_json_allow_nonfinite(const std::string& text, const std::string& file);

}  // namespace collage
