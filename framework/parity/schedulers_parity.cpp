// Scheduler parity against a golden schedulers/ folder: schedules (timesteps, sigmas, init_noise_sigma),
// scale_model_input, img2img start + add_noise, and each scheduler's trajectory replayed with the
// recorded noise and the documented fake model. Every size, step count and name comes from the folder.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/core.h"
#include "diffusion/diffusion.h"
#include "parity/parity.h"

namespace collage::parity {
namespace {

namespace fs = std::filesystem;

// eps(x, t) = x * float32(0.3 cos(t/300)) + 0.1 sin(x), all tensor math in float32 (README "Fake model").
at::Tensor fake_model(const at::Tensor& x, double t) {
  const float a = static_cast<float>(0.3 * std::cos(t / 300.0));
  return x * static_cast<double>(a) + 0.1 * at::sin(x);
}

// Distance in float32 units in the last place (0 = bitwise equal as float32).
int64_t ulp_distance(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return (std::isnan(a) && std::isnan(b)) ? 0 : INT64_MAX;
  auto key = [](float f) {
    int32_t i;
    std::memcpy(&i, &f, sizeof i);
    return i < 0 ? (int64_t)INT32_MIN - (int64_t)i : (int64_t)i;  // monotonic integer ordering
  };
  return std::llabs(key(a) - key(b));
}

// Schedule values (betas, alphas_cumprod, sigmas) are float32 pow/cumprod/interp results: libtorch 1.13
// reproduces the reference bit for bit, libtorch 2.11 (CUDA wheel, seen on the GPU machine) is 2-3 ulp off
// (3.6e-7 relative), far inside the project's rtol 1e-4. Allow a few ulp, still much stricter than rtol.
constexpr int64_t kScheduleUlps = 4;

// Float32 values equal to within `max_ulps` (0: exact).
void check_f32_values(Recorder& rec, const std::string& name, const std::vector<double>& got,
                      const std::vector<double>& ref, int64_t max_ulps) {
  if (got.size() != ref.size()) {
    rec.exact(name, false, fmt::format("{} values, reference has {}", got.size(), ref.size()));
    return;
  }
  int64_t worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const int64_t d = ulp_distance((float)got[i], (float)ref[i]);
    if (d > worst) {
      worst = d;
      at = i;
    }
  }
  rec.exact(name, worst <= max_ulps,
            worst == 0 ? "" : fmt::format("max {} float32 ulp at [{}]: {:.9g} vs reference {:.9g}", worst, at,
                                          got[at], ref[at]));
}

void check_exact_values(Recorder& rec, const std::string& name, const std::vector<double>& got,
                        const std::vector<double>& ref) {
  if (got.size() != ref.size()) {
    rec.exact(name, false,
              fmt::format("{} values, reference has {} ([{}] vs [{}])", got.size(), ref.size(), fmt::join(got, ", "),
                          fmt::join(ref, ", ")));
    return;
  }
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != ref[i]) {
      rec.exact(name, false, fmt::format("first mismatch at [{}]: {:.9g} vs reference {:.9g}", i, got[i], ref[i]));
      return;
    }
  }
  rec.exact(name, true);
}

std::vector<double> tensor_values(const at::Tensor& t) {
  auto d = t.to(at::kDouble).contiguous().reshape({-1});
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    default: return c10::toString(t);
  }
}

// Runs `fn`, turning an exception into a failure of case `name`.
template <typename Fn>
void guarded(Recorder& rec, const std::string& name, Fn&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    rec.failure(name, e.what());
  }
}

// An exact check whose detail (what differed) is kept only on failure.
void expect(Recorder& rec, const std::string& name, bool ok, const std::string& detail) {
  rec.exact(name, ok, ok ? std::string() : detail);
}

void check_schedule(Recorder& rec, const std::string& prefix, Scheduler& s, const Json& e) {
  const int64_t n = e.at("num_inference_steps").get<int64_t>();
  s.set_timesteps(n);
  check_exact_values(rec, prefix + ".timesteps", s.timestep_values(), e.at("timesteps").get<std::vector<double>>());
  if (e.contains("timesteps_dtype")) {
    const auto want = e.at("timesteps_dtype").get<std::string>();
    const auto got = dtype_name(s.timesteps().scalar_type());
    expect(rec, prefix + ".timesteps_dtype", got == want, got + " vs reference " + want);
  }
  check_f32_values(rec, prefix + ".init_noise_sigma", {s.init_noise_sigma()},
                   {e.at("init_noise_sigma").get<double>()}, kScheduleUlps);
  if (e.contains("sigmas")) {
    const auto got = s.sigmas().defined() ? tensor_values(s.sigmas()) : std::vector<double>{};
    check_f32_values(rec, prefix + ".sigmas", got, e.at("sigmas").get<std::vector<double>>(), kScheduleUlps);
  }
}

void check_trajectory(Recorder& rec, const std::string& folder, const std::string& key, Scheduler& s,
                      const Json& meta, int64_t num_inference_steps) {
  const auto path = (fs::path(folder) / meta.at("file").get<std::string>()).string();
  auto file = SafetensorsFile::open(path);
  s.set_timesteps(num_inference_steps);
  auto ref_timesteps = file->view("timesteps");
  check_exact_values(rec, key + ".trajectory.timesteps", s.timestep_values(), tensor_values(ref_timesteps));
  if (file->contains("sigmas")) {
    const auto got = s.sigmas().defined() ? tensor_values(s.sigmas()) : std::vector<double>{};
    check_f32_values(rec, key + ".trajectory.sigmas", got, tensor_values(file->view("sigmas")), kScheduleUlps);
  }
  const auto x_T_noise = file->view("x_T_noise");
  const auto x_T = file->view("x_T");
  rec.tensor(key + ".x_T", x_T_noise * s.init_noise_sigma(), x_T);

  const auto& steps = meta.at("steps");
  const int64_t num_steps = meta.value("num_steps", (int64_t)steps.size());
  expect(rec, key + ".trajectory.num_steps", num_steps == (int64_t)steps.size() && num_steps == s.timesteps().size(0),
            fmt::format("json num_steps {}, {} step records, schedule has {}", num_steps, steps.size(),
                        s.timesteps().size(0)));
  const auto ts = s.timestep_values();
  at::Tensor x = x_T;
  for (const auto& step : steps) {
    const int64_t i = step.at("step").get<int64_t>();
    const std::string p = fmt::format("{}.step_{:02d}", key, i);
    const std::string tensor_prefix = fmt::format("step_{:02d}.", i);
    const double t = step.at("timestep").get<double>();
    if (i >= (int64_t)ts.size() || ts[i] != t)
      rec.exact(p + ".timestep", false,
                fmt::format("reference timestep {} vs schedule {}", t, i < (int64_t)ts.size() ? ts[i] : NAN));
    auto model_input = s.scale_model_input(x, t);
    rec.tensor(p + ".model_input", model_input, file->view(tensor_prefix + "model_input"));
    auto model_output = fake_model(model_input, t);
    rec.tensor(p + ".model_output", model_output, file->view(tensor_prefix + "model_output"));
    const bool has_noise = file->contains(tensor_prefix + "noise");
    const bool drawn = step.value("noise_drawn", has_noise);
    if (drawn != has_noise)
      rec.exact(p + ".noise", false, fmt::format("noise_drawn={} but tensor {}present", drawn, has_noise ? "" : "not "));
    at::Tensor noise = has_noise ? file->view(tensor_prefix + "noise") : at::Tensor();
    auto out = s.step(model_output, t, x, noise);
    rec.tensor(p + ".prev_sample", out.prev_sample, file->view(tensor_prefix + "prev_sample"));
    const bool ref_has_x0 = file->contains(tensor_prefix + "pred_original_sample");
    if (ref_has_x0 && out.pred_original_sample.defined())
      rec.tensor(p + ".pred_original_sample", out.pred_original_sample,
                 file->view(tensor_prefix + "pred_original_sample"));
    else if (ref_has_x0 != out.pred_original_sample.defined())
      rec.exact(p + ".pred_original_sample", false,
                ref_has_x0 ? "reference has a pred_original_sample, this step returns none"
                           : "this step returns a pred_original_sample, the reference has none");
    x = out.prev_sample;
  }
  rec.tensor(key + ".x_final", x, file->view("x_final"));
}

void check_one(Recorder& rec, const std::string& folder, const std::string& json_path, const std::string& key,
               const Json& entry, const Json& root, const std::shared_ptr<SafetensorsFile>& extra) {
  const auto config = SchedulerConfig::from_json(entry.at("resolved_config"), json_path);
  const auto class_name = entry.at("class_name").get<std::string>();
  auto s = make_scheduler(class_name, config);
  expect(rec, key + ".class_name", s->class_name() == class_name, s->class_name() + " vs " + class_name);
  if (entry.contains("order"))
    expect(rec, key + ".order", s->order() == entry.at("order").get<int>(),
              fmt::format("{} vs reference {}", s->order(), entry.at("order").get<int>()));

  // Schedules: every "steps_*" record.
  int64_t n_scale = 0;
  for (const auto& [name, e] : entry.items()) {
    if (name.rfind("steps_", 0) != 0 || !e.is_object()) continue;
    guarded(rec, key + "." + name, [&] { check_schedule(rec, key + "." + name, *s, e); });
  }
  if (entry.contains("steps_50")) n_scale = entry.at("steps_50").at("num_inference_steps").get<int64_t>();

  if (entry.contains("scale_model_input_50")) {
    guarded(rec, key + ".scale_model_input_50", [&] {
      COLLAGE_CHECK(n_scale > 0, "scale_model_input_50 without steps_50");
      const auto x = extra->view("scale_input_x");
      for (const auto& c : entry.at("scale_model_input_50")) {
        const int64_t idx = c.at("index").get<int64_t>();
        const double t = c.at("timestep").get<double>();
        const std::string name = key + ".scale_model_input_50.idx" + std::to_string(idx);
        s->set_timesteps(n_scale);  // fresh step state: the index comes from this timestep
        const auto ts = s->timestep_values();
        if (idx >= (int64_t)ts.size() || ts[idx] != t) rec.exact(name + ".timestep", false, "timestep/index mismatch");
        rec.tensor(name, s->scale_model_input(x, t), extra->view(c.at("tensor").get<std::string>()));
      }
    });
  }

  if (entry.contains("img2img_50")) {
    for (const auto& [strength_key, c] : entry.at("img2img_50").items()) {
      const std::string name = key + ".img2img_50." + strength_key;
      guarded(rec, name, [&] {
        COLLAGE_CHECK(n_scale > 0, "img2img_50 without steps_50");
        s->set_timesteps(n_scale);
        const auto start = s->img2img_start(std::stod(strength_key));
        check_exact_values(rec, name + ".timesteps", start.timesteps, c.at("timesteps").get<std::vector<double>>());
        const auto eff = c.at("num_inference_steps_effective").get<int64_t>();
        expect(rec, name + ".num_inference_steps_effective", start.num_effective_steps == eff,
                  fmt::format("{} vs reference {}", start.num_effective_steps, eff));
        COLLAGE_CHECK(!start.timesteps.empty(), "no timesteps left at this strength");
        const double t0 = c.at("first_timestep").get<double>();
        expect(rec, name + ".first_timestep", start.timesteps.front() == t0,
                  fmt::format("{} vs reference {}", start.timesteps.front(), t0));
        auto noisy = s->add_noise(extra->view("img2img.init_latents"), extra->view("img2img.noise"),
                                  start.timesteps.front());
        rec.tensor(name + ".add_noise", noisy, extra->view(c.at("add_noise_result").get<std::string>()));
      });
    }
  }

  if (entry.contains("trajectory_20")) {
    const auto& meta = entry.at("trajectory_20");
    const int64_t n = root.value("trajectory_steps", (int64_t)20);
    guarded(rec, key + ".trajectory", [&] { check_trajectory(rec, folder, key, *s, meta, n); });
  }
}

}  // namespace

void check_schedulers(const std::string& folder, Recorder& rec) {
  const auto json_path = (fs::path(folder) / "schedulers.json").string();
  Json root;
  std::shared_ptr<SafetensorsFile> extra;
  try {
    root = read_json_file_allow_nonfinite(json_path);
    extra = SafetensorsFile::open((fs::path(folder) / "img2img_and_scale.safetensors").string());
  } catch (const std::exception& e) {
    rec.failure("load", e.what());
    return;
  }

  guarded(rec, "train_schedule", [&] {
    const auto path = (fs::path(folder) / "train_schedule.safetensors").string();
    auto ref = SafetensorsFile::open(path);
    auto base = SchedulerConfig::from_json(root.at("base_config"), json_path);
    auto s = make_scheduler("ddpm", base);  // every class builds the same float32 betas / alphas_cumprod
    check_f32_values(rec, "train_schedule.betas", tensor_values(s->betas()), tensor_values(ref->view("betas")),
                     kScheduleUlps);
    check_f32_values(rec, "train_schedule.alphas_cumprod", tensor_values(s->alphas_cumprod()),
                     tensor_values(ref->view("alphas_cumprod")), kScheduleUlps);
  });

  const auto& schedulers = root.at("schedulers");
  COLLAGE_CHECK_AT(schedulers.is_object() && !schedulers.empty(), json_path, "schedulers", "no scheduler entries");
  for (const auto& [key, entry] : schedulers.items())
    guarded(rec, key, [&] { check_one(rec, folder, json_path, key, entry, root, extra); });
}

}  // namespace collage::parity
