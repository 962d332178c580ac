#include "diffusion/scheduler.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "core/core.h"
#include "diffusion/scheduler_util.h"

namespace collage {

// ---------------------------------------------------------------------------------------------
// JSON with Python's non-finite literals (diffusers writes "lambda_min_clipped": -Infinity).

namespace {

// A tagged string stands in for the literal while nlohmann parses (written with \u0001 in JSON).
const char* kNonFiniteTag = "\001collage-nonfinite:";
const char* kNonFiniteTagJson = "\\u0001collage-nonfinite:";

void restore_nonfinite(Json& j) {
  if (j.is_string()) {
    const std::string& s = j.get_ref<const std::string&>();
    const std::string tag = kNonFiniteTag;
    if (s.compare(0, tag.size(), tag) != 0) return;
    const std::string lit = s.substr(tag.size());
    if (lit == "NaN") j = std::numeric_limits<double>::quiet_NaN();
    else if (lit == "Infinity") j = std::numeric_limits<double>::infinity();
    else j = -std::numeric_limits<double>::infinity();
  } else if (j.is_array() || j.is_object()) {
    for (auto& v : j) restore_nonfinite(v);
  }
}

}  // namespace

Json parse_json_allow_nonfinite(const std::string& text, const std::string& file) {
  // Quote the bare literals (outside strings) with a tag, parse, then turn tagged strings into numbers.
  std::string out;
  out.reserve(text.size() + 64);
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size()) out += text[++i];
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
      out += c;
      continue;
    }
    bool replaced = false;
    for (const char* lit : {"-Infinity", "Infinity", "NaN"}) {
      const size_t n = std::char_traits<char>::length(lit);
      if (text.compare(i, n, lit) == 0) {
        out += '"';
        out += kNonFiniteTagJson;
        out += lit;
        out += '"';
        i += n - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += c;
  }
  Json j;
  try {
    j = Json::parse(out, nullptr, true, /*ignore_comments=*/true);
  } catch (const Json::parse_error& e) {
    throw Error(fmt::format("invalid JSON: {}", e.what()), file);
  }
  restore_nonfinite(j);
  return j;
}

Json read_json_file_allow_nonfinite(const std::string& path) {
  std::ifstream in(path);
  COLLAGE_CHECK_AT(in.good(), path, "", "cannot open JSON file (missing?)");
  std::stringstream buffer;
  buffer << in.rdbuf();
  return parse_json_allow_nonfinite(buffer.str(), path);
}

// ---------------------------------------------------------------------------------------------
// SchedulerConfig

SchedulerConfig SchedulerConfig::from_json(const Json& j, const std::string& file) {
  JsonReader r(j, file);
  SchedulerConfig c;
  c.source = file;
  c.num_train_timesteps = r.get<int64_t>("num_train_timesteps", c.num_train_timesteps);
  c.beta_start = r.get<double>("beta_start", c.beta_start);
  c.beta_end = r.get<double>("beta_end", c.beta_end);
  c.beta_schedule = r.get<std::string>("beta_schedule", c.beta_schedule);
  c.trained_betas = r.get<std::vector<double>>("trained_betas", {});
  c.prediction_type = r.get<std::string>("prediction_type", c.prediction_type);
  c.timestep_spacing = r.get<std::string>("timestep_spacing", "");
  c.steps_offset = r.get<int64_t>("steps_offset", c.steps_offset);
  if (r.has("set_alpha_to_one")) c.set_alpha_to_one = r.get<bool>("set_alpha_to_one");
  c.clip_sample = r.get<bool>("clip_sample", c.clip_sample);
  c.clip_sample_range = r.get<double>("clip_sample_range", c.clip_sample_range);
  c.thresholding = r.get<bool>("thresholding", c.thresholding);
  c.dynamic_thresholding_ratio = r.get<double>("dynamic_thresholding_ratio", c.dynamic_thresholding_ratio);
  c.sample_max_value = r.get<double>("sample_max_value", c.sample_max_value);
  c.rescale_betas_zero_snr = r.get<bool>("rescale_betas_zero_snr", c.rescale_betas_zero_snr);
  c.skip_prk_steps = r.get<bool>("skip_prk_steps", c.skip_prk_steps);
  c.variance_type = r.get<std::string>("variance_type", "");
  c.solver_order = r.get<int>("solver_order", c.solver_order);
  c.algorithm_type = r.get<std::string>("algorithm_type", c.algorithm_type);
  c.solver_type = r.get<std::string>("solver_type", c.solver_type);
  c.lower_order_final = r.get<bool>("lower_order_final", c.lower_order_final);
  c.use_karras_sigmas = r.get<bool>("use_karras_sigmas", c.use_karras_sigmas);
  c.lambda_min_clipped = r.get<double>("lambda_min_clipped", c.lambda_min_clipped);
  c.interpolation_type = r.get<std::string>("interpolation_type", c.interpolation_type);
  c.class_name = r.get<std::string>("_class_name", "");
  c.unknown_keys = r.unused_keys();

  auto one_of = [&](const std::string& key, const std::string& value, std::vector<std::string> allowed) {
    if (value.empty() || std::find(allowed.begin(), allowed.end(), value) != allowed.end()) return;
    throw Error(fmt::format("unknown value '{}' (known: {})", value, fmt::join(allowed, ", ")), file, key);
  };
  one_of("beta_schedule", c.beta_schedule, {"linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"});
  one_of("prediction_type", c.prediction_type, {"epsilon", "v_prediction", "sample", "original_sample"});
  one_of("timestep_spacing", c.timestep_spacing, {"linspace", "leading", "trailing"});
  one_of("algorithm_type", c.algorithm_type, {"dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++", "deis"});
  one_of("solver_type", c.solver_type, {"midpoint", "heun", "logrho", "bh1", "bh2"});
  one_of("interpolation_type", c.interpolation_type, {"linear", "log_linear"});
  COLLAGE_CHECK_AT(c.num_train_timesteps >= 1, file, "num_train_timesteps", "must be >= 1, got {}",
                   c.num_train_timesteps);
  COLLAGE_CHECK_AT(c.trained_betas.empty() || (int64_t)c.trained_betas.size() == c.num_train_timesteps, file,
                   "trained_betas", "has {} values, num_train_timesteps is {}", c.trained_betas.size(),
                   c.num_train_timesteps);
  return c;
}

// ---------------------------------------------------------------------------------------------
// Scheduler base

namespace {

// betas_for_alpha_bar(N, max_beta=0.999, "cosine"), in Python float64 then float32.
at::Tensor cosine_betas(int64_t n) {
  auto alpha_bar = [](double t) {
    double c = std::cos((t + 0.008) / 1.008 * M_PI / 2);
    return std::pow(c, 2.0);
  };
  std::vector<double> betas(n);
  for (int64_t i = 0; i < n; ++i) {
    double t1 = (double)i / n, t2 = (double)(i + 1) / n;
    betas[i] = std::min(1 - alpha_bar(t2) / alpha_bar(t1), 0.999);
  }
  return at::tensor(betas, at::kDouble).to(at::kFloat);
}

}  // namespace

Scheduler::Scheduler(SchedulerConfig config, const std::string& class_name,
                     const std::vector<std::string>& beta_schedules,
                     const std::vector<std::string>& prediction_types)
    : config_(std::move(config)) {
  const auto& c = config_;
  const int64_t n = c.num_train_timesteps;
  if (n < 1) config_error("num_train_timesteps", fmt::format("must be >= 1, got {}", n));
  if (std::find(prediction_types.begin(), prediction_types.end(), c.prediction_type) == prediction_types.end())
    config_error("prediction_type", fmt::format("'{}' is not supported by {} (supported: {})", c.prediction_type,
                                                class_name, fmt::join(prediction_types, ", ")));
  if (!c.trained_betas.empty()) {
    if ((int64_t)c.trained_betas.size() != n)
      config_error("trained_betas", fmt::format("has {} values, num_train_timesteps is {}", c.trained_betas.size(), n));
    betas_ = at::tensor(c.trained_betas, at::kDouble).to(at::kFloat);
  } else {
    if (std::find(beta_schedules.begin(), beta_schedules.end(), c.beta_schedule) == beta_schedules.end())
      config_error("beta_schedule", fmt::format("'{}' is not implemented for {} (supported: {})", c.beta_schedule,
                                                class_name, fmt::join(beta_schedules, ", ")));
    auto f32 = at::TensorOptions().dtype(at::kFloat);
    if (c.beta_schedule == "linear") {
      betas_ = at::linspace(c.beta_start, c.beta_end, n, f32);
    } else if (c.beta_schedule == "scaled_linear") {
      // Specific to the latent diffusion model: linear in sqrt(beta).
      betas_ = at::linspace(std::pow(c.beta_start, 0.5), std::pow(c.beta_end, 0.5), n, f32).pow(2);
    } else if (c.beta_schedule == "squaredcos_cap_v2") {
      betas_ = cosine_betas(n);
    } else {  // sigmoid (DDPM)
      auto b = at::linspace(-6, 6, n, f32);
      betas_ = at::sigmoid(b) * (c.beta_end - c.beta_start) + c.beta_start;
    }
  }
  set_betas(betas_);
}

void Scheduler::set_betas(const at::Tensor& betas) {
  betas_ = betas;
  alphas_ = 1.0 - betas_;
  alphas_cumprod_ = at::cumprod(alphas_, 0);
  auto s = ((1 - alphas_cumprod_) / alphas_cumprod_).pow(0.5).contiguous();
  train_sigmas_.assign(s.data_ptr<float>(), s.data_ptr<float>() + s.numel());
}

void Scheduler::config_error(const std::string& key, const std::string& message) const {
  throw Error(message, config_.source, key);
}

void Scheduler::require_timesteps() const {
  COLLAGE_CHECK(num_inference_steps_ > 0 && timesteps_.defined(), "{}: set_timesteps() must be called first",
                name());
}

std::vector<double> Scheduler::timestep_values() const {
  if (!timesteps_.defined()) return {};
  auto t = timesteps_.to(at::kDouble).contiguous();
  return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
}

at::Tensor Scheduler::add_noise(const at::Tensor& original, const at::Tensor& noise, double timestep) const {
  const int64_t t = sched::integer_timestep(timestep, name());
  COLLAGE_CHECK(t >= 0 && t < config_.num_train_timesteps, "{}: add_noise timestep {} outside [0, {})", name(), t,
                config_.num_train_timesteps);
  COLLAGE_CHECK(original.sizes() == noise.sizes(), "{}: add_noise shapes differ: [{}] vs noise [{}]", name(),
                fmt::join(original.sizes(), ","), fmt::join(noise.sizes(), ","));
  auto ac = alphas_cumprod_.to(original.options())[t];
  auto sqrt_alpha_prod = ac.pow(0.5);
  auto sqrt_one_minus_alpha_prod = (1 - ac).pow(0.5);
  return sqrt_alpha_prod * original + sqrt_one_minus_alpha_prod * noise;
}

Scheduler::Img2ImgStart Scheduler::img2img_start(double strength) const {
  require_timesteps();
  COLLAGE_CHECK(strength >= 0.0 && strength <= 1.0, "img2img strength must be in [0, 1], got {}", strength);
  const int64_t n = num_inference_steps_;
  const int64_t init_timestep = std::min(static_cast<int64_t>(n * strength), n);  // Python int() truncates
  const int64_t t_start = std::max<int64_t>(n - init_timestep, 0);
  Img2ImgStart out;
  out.begin_index = t_start * order();
  auto all = timestep_values();
  if (out.begin_index < (int64_t)all.size()) out.timesteps.assign(all.begin() + out.begin_index, all.end());
  out.num_effective_steps = n - t_start;
  return out;
}

double Scheduler::sigma_at(double timestep) const { return sched::np_interp(timestep, train_sigmas_); }

// ---------------------------------------------------------------------------------------------
// Registry

namespace {

struct Entry {
  const char* name;
  const char* class_name;
  std::unique_ptr<Scheduler> (*make)(const SchedulerConfig&);
};

const std::vector<Entry>& registry() {
  static const std::vector<Entry> entries = {
      {"euler_ancestral", "EulerAncestralDiscreteScheduler", sched::make_euler_ancestral_discrete},
      {"euler", "EulerDiscreteScheduler", sched::make_euler_discrete},
      {"ddim", "DDIMScheduler", sched::make_ddim},
      {"ddpm", "DDPMScheduler", sched::make_ddpm},
      {"pndm", "PNDMScheduler", sched::make_pndm},
      {"dpmsolver_multistep", "DPMSolverMultistepScheduler", sched::make_dpmsolver_multistep},
  };
  return entries;
}

}  // namespace

std::vector<std::string> scheduler_names() {
  std::vector<std::string> out;
  for (const auto& e : registry()) out.push_back(e.name);
  return out;
}

std::unique_ptr<Scheduler> make_scheduler(const std::string& name, const SchedulerConfig& config) {
  for (const auto& e : registry())
    if (name == e.name || name == e.class_name) return e.make(config);
  std::vector<std::string> known;
  for (const auto& e : registry()) known.push_back(fmt::format("{} ({})", e.name, e.class_name));
  throw Error(fmt::format("unknown scheduler '{}' (known: {})", name, fmt::join(known, ", ")), config.source,
              "_class_name");
}

std::unique_ptr<Scheduler> load_scheduler(const std::string& path, const std::string& name_override) {
  auto config = SchedulerConfig::from_json(read_json_file_allow_nonfinite(path), path);
  const std::string name = name_override.empty() ? config.class_name : name_override;
  COLLAGE_CHECK_AT(!name.empty(), path, "_class_name",
                   "no scheduler class named and no name given (known: {})", fmt::join(scheduler_names(), ", "));
  return make_scheduler(name, config);
}

// ---------------------------------------------------------------------------------------------
// numpy arithmetic and shared helpers

namespace sched {

std::vector<double> np_linspace(double start, double stop, int64_t num) {
  std::vector<double> y(std::max<int64_t>(num, 0));
  if (num <= 0) return y;
  const int64_t div = num - 1;
  const double delta = stop - start;
  if (div > 0) {
    const double step = delta / div;
    for (int64_t i = 0; i < num; ++i) y[i] = (step == 0 ? ((double)i / div) * delta : (double)i * step) + start;
    y[num - 1] = stop;
  } else {
    y[0] = 0.0 * delta + start;
  }
  return y;
}

std::vector<double> np_arange(double start, double stop, double step) {
  COLLAGE_CHECK(step != 0, "arange step is zero");
  const double len_f = std::ceil((stop - start) / step);
  const int64_t len = len_f > 0 ? (int64_t)len_f : 0;
  std::vector<double> y(len);
  if (len > 0) y[0] = start;
  if (len > 1) y[1] = start + step;
  const double delta = len > 1 ? y[1] - y[0] : step;
  for (int64_t i = 2; i < len; ++i) y[i] = start + (double)i * delta;
  return y;
}

double np_round(double x) { return std::nearbyint(x); }

double np_interp(double x, const std::vector<double>& fp) {
  const int64_t n = fp.size();
  COLLAGE_CHECK(n > 0, "interp on an empty table");
  if (std::isnan(x)) return x;
  if (x < 0) return fp[0];
  if (x >= (double)(n - 1)) return fp[n - 1];
  const int64_t j = (int64_t)std::floor(x);
  if ((double)j == x) return fp[j];
  const double slope = (fp[j + 1] - fp[j]) / ((double)(j + 1) - (double)j);
  double r = slope * (x - (double)j) + fp[j];
  if (std::isnan(r)) {
    r = slope * (x - (double)(j + 1)) + fp[j + 1];
    if (std::isnan(r) && fp[j] == fp[j + 1]) r = fp[j];
  }
  return r;
}

std::vector<double> spaced_timesteps(const Scheduler& s, const std::string& spacing, int64_t n) {
  const auto& c = s.config();
  const int64_t N = c.num_train_timesteps;
  std::vector<double> t;
  if (spacing == "linspace") {
    t = np_linspace(0, (double)(N - 1), n);
    std::reverse(t.begin(), t.end());
  } else if (spacing == "leading") {
    const int64_t ratio = N / n;
    for (int64_t i = n - 1; i >= 0; --i) t.push_back((double)(i * ratio));
    for (auto& v : t) v += (double)c.steps_offset;
  } else if (spacing == "trailing") {
    const double ratio = (double)N / (double)n;
    t = np_arange((double)N, 0, -ratio);
    for (auto& v : t) v = np_round(v) - 1;
  } else {
    throw Error(fmt::format("unknown value '{}' (known: linspace, leading, trailing)", spacing), c.source,
                "timestep_spacing");
  }
  return t;
}

std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int64_t n) {
  const double rho = 7.0;
  auto ramp = np_linspace(0, 1, n);
  const double min_inv_rho = std::pow(sigma_min, 1 / rho);
  const double max_inv_rho = std::pow(sigma_max, 1 / rho);
  std::vector<double> out(n);
  for (int64_t i = 0; i < n; ++i) out[i] = std::pow(max_inv_rho + ramp[i] * (min_inv_rho - max_inv_rho), rho);
  return out;
}

double sigma_to_t(double sigma, const std::vector<float>& log_sigmas) {
  // numpy 1.24 value-based casting: the float64 log_sigma meets float32 arrays, so dists and w are
  // float32; only the final blend of the integer indices is float64.
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  const float log_sigma_f = (float)log_sigma;
  const int64_t n = log_sigmas.size();
  COLLAGE_CHECK(n >= 2, "sigma table too short");
  // argmax of cumsum(dists >= 0) = the last index where dists >= 0 (0 when there is none).
  int64_t low_idx = 0, count = 0, best = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (log_sigma_f - log_sigmas[i] >= 0.0f) ++count;
    if (count > best) {
      best = count;
      low_idx = i;
    }
  }
  low_idx = std::min(low_idx, n - 2);
  const int64_t high_idx = low_idx + 1;
  const float low = log_sigmas[low_idx], high = log_sigmas[high_idx];
  float w = (low - log_sigma_f) / (low - high);
  w = std::min(std::max(w, 0.0f), 1.0f);
  return (double)(1.0f - w) * (double)low_idx + (double)w * (double)high_idx;
}

int64_t integer_timestep(double t, const std::string& scheduler) {
  COLLAGE_CHECK(std::isfinite(t) && t == std::floor(t), "{}: timestep {} is not an integer (this scheduler uses "
                "integer timesteps)", scheduler, t);
  return (int64_t)t;
}

at::Tensor step_noise(const at::Tensor& like, const at::Tensor& noise, const c10::optional<at::Generator>& gen,
                      const std::string& scheduler) {
  if (noise.defined()) {
    COLLAGE_CHECK(noise.sizes() == like.sizes(), "{}: step noise has shape [{}], the model output [{}]", scheduler,
                  fmt::join(noise.sizes(), ","), fmt::join(like.sizes(), ","));
    COLLAGE_CHECK(noise.scalar_type() == like.scalar_type() && noise.device() == like.device(),
                  "{}: step noise is {} on {}, the model output {} on {}", scheduler,
                  c10::toString(noise.scalar_type()), noise.device().str(), c10::toString(like.scalar_type()),
                  like.device().str());
    return noise;
  }
  // randn_tensor draws on the generator's device (CPU generators for CUDA latents) and moves the result.
  auto opts = like.options();
  if (gen.has_value() && gen->defined()) opts = opts.device(gen->device());
  return at::randn(like.sizes(), gen, opts).to(like.device());
}

at::Tensor threshold_sample(const at::Tensor& sample, const SchedulerConfig& c) {
  const auto dtype = sample.scalar_type();
  at::Tensor x = sample;
  if (dtype != at::kFloat && dtype != at::kDouble) x = x.to(at::kFloat);
  const int64_t b = x.size(0);
  auto flat = x.reshape({b, -1});
  auto s = at::quantile(flat.abs(), c.dynamic_thresholding_ratio, 1);
  s = at::clamp(s, 1, c.sample_max_value).unsqueeze(1);
  flat = at::clamp(flat, -s, s) / s;
  return flat.reshape(sample.sizes()).to(dtype);
}

at::Tensor f32(double v) { return at::scalar_tensor(v, at::kFloat); }

}  // namespace sched
}  // namespace collage
