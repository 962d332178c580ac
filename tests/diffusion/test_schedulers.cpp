// Scheduler golden parity (tests/data/golden/schedulers) and invariants of the scheduler API.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "core/core.h"
#include "diffusion/scheduler.h"
#include "parity/parity.h"
#include "test_util.h"

namespace collage {
namespace {

SchedulerConfig sd_config(const std::string& prediction_type = "epsilon") {
  SchedulerConfig c;
  c.beta_start = 0.00085;
  c.beta_end = 0.012;
  c.beta_schedule = "scaled_linear";
  c.steps_offset = 1;
  c.set_alpha_to_one = false;
  c.clip_sample = false;
  c.skip_prk_steps = true;
  c.prediction_type = prediction_type;
  return c;
}

at::Tensor fake_eps(const at::Tensor& x, double t) { return x * (0.3 * std::cos(t / 300.0)) + 0.1 * at::sin(x); }

// Full denoising loop; noise from `gen` when given.
at::Tensor run_loop(Scheduler& s, int64_t steps, const at::Tensor& x_T, c10::optional<at::Generator> gen) {
  s.set_timesteps(steps);
  at::Tensor x = x_T * s.init_noise_sigma();
  for (double t : s.timestep_values()) {
    auto out = s.step(fake_eps(s.scale_model_input(x, t), t), t, x, {}, gen);
    x = out.prev_sample;
  }
  return x;
}

TEST(Schedulers, GoldenParity) {
  parity::Recorder rec("schedulers");
  parity::check_schedulers(test::golden("schedulers"), rec);
  const auto& results = rec.results();
  ASSERT_GT(results.size(), 500u);  // every scheduler x (schedules, scale, img2img, ~20 steps x 4 fields)
  int failures = 0, tensor_cases = 0;
  double worst_rel = 0, worst_abs = 0;
  std::string worst;
  for (const auto& r : results) {
    if (!r.pass) {
      ++failures;
      ADD_FAILURE() << r.name << ": " << r.detail;
    } else if (!r.detail.empty()) {
      std::cout << "  note " << r.name << ": " << r.detail << "\n";  // e.g. sigmas within 1 ulp
    }
    if (r.max_abs_ref > 0) ++tensor_cases;
    worst_abs = std::max(worst_abs, r.max_abs_diff);
    if (r.rel > worst_rel) {
      worst_rel = r.rel;
      worst = r.name;
    }
  }
  std::cout << results.size() << " scheduler cases (" << tensor_cases << " tensor comparisons), " << failures
            << " failed; worst max_abs_diff " << worst_abs << ", worst rel " << worst_rel << " (" << worst << ")\n";
  EXPECT_GT(tensor_cases, 12 * 20 * 3);  // model_input/output, prev_sample, ... per step of every trajectory
  // Each of the six classes and both prediction types were exercised.
  for (const char* key : {"euler_ancestral_epsilon", "euler_v_prediction", "ddim_epsilon", "ddpm_v_prediction",
                          "pndm_epsilon", "dpmsolver_multistep_v_prediction"}) {
    bool seen = false;
    for (const auto& r : results) seen |= r.name == std::string(key) + ".x_final" && r.pass;
    EXPECT_TRUE(seen) << key << ".x_final not checked or failed";
  }
}

// The checker must notice a wrong scheduler: a copy of the folder with one config altered fails.
TEST(Schedulers, GoldenCheckerDetectsWrongConfig) {
  namespace fs = std::filesystem;
  const auto src = test::golden("schedulers");
  const auto dir = test::temp_dir("sched_golden_mutated");
  for (const auto& f : fs::directory_iterator(src)) fs::copy_file(f.path(), fs::path(dir) / f.path().filename());
  auto root = read_json_file_allow_nonfinite(src + "/schedulers.json");
  root["schedulers"]["euler_epsilon"]["resolved_config"]["prediction_type"] = "v_prediction";
  root["schedulers"]["ddim_epsilon"]["resolved_config"]["steps_offset"] = 0;
  root["schedulers"]["dpmsolver_multistep_epsilon"]["resolved_config"]["lambda_min_clipped"] = 0;  // any finite
  write_json_file(dir + "/schedulers.json", root);
  parity::Recorder rec("schedulers");
  parity::check_schedulers(dir, rec);
  std::set<std::string> failed;
  for (const auto& r : rec.results())
    if (!r.pass) failed.insert(r.name);
  EXPECT_TRUE(failed.count("euler_epsilon.x_final"));
  EXPECT_TRUE(failed.count("euler_epsilon.step_00.prev_sample"));
  EXPECT_TRUE(failed.count("ddim_epsilon.steps_20.timesteps"));
  EXPECT_FALSE(failed.count("euler_v_prediction.x_final"));
  EXPECT_TRUE(failed.count("dpmsolver_multistep_epsilon.steps_20.timesteps"));
  EXPECT_FALSE(failed.count("euler_ancestral_epsilon.x_final"));
  // (write_json_file turns the other entry's -Infinity into null, i.e. the default.)
  EXPECT_FALSE(failed.count("dpmsolver_multistep_v_prediction.x_final"));
}

// The recorded noise is what a torch.Generator seeded as documented draws, so a generator-driven run
// reproduces the golden trajectory too.
TEST(Schedulers, SeededGeneratorReproducesRecordedNoise) {
  const auto folder = test::golden("schedulers");
  auto root = read_json_file_allow_nonfinite(folder + "/schedulers.json");
  for (const char* key : {"euler_ancestral_epsilon", "ddpm_epsilon"}) {
    const auto& entry = root.at("schedulers").at(key);
    const auto& meta = entry.at("trajectory_20");
    auto file = SafetensorsFile::open(folder + "/" + meta.at("file").get<std::string>());
    auto x_gen = at::detail::createCPUGenerator(meta.at("x_T_seed").get<uint64_t>());
    auto x_T_noise = at::randn({file->view("x_T").sizes()}, x_gen, at::kFloat);
    ASSERT_TRUE(at::equal(x_T_noise, file->view("x_T_noise"))) << key;
    auto s = make_scheduler(entry.at("class_name").get<std::string>(),
                            SchedulerConfig::from_json(entry.at("resolved_config"), "schedulers.json"));
    auto gen = at::detail::createCPUGenerator(meta.at("step_generator_seed").get<uint64_t>());
    auto x = run_loop(*s, root.at("trajectory_steps").get<int64_t>(), x_T_noise, gen);
    EXPECT_LE((x - file->view("x_final")).abs().max().item<double>(),
              1e-4 * file->view("x_final").abs().max().item<double>() + 1e-5)
        << key;
  }
}

TEST(Schedulers, SetTimestepsResetsState) {
  auto x_T = at::randn({1, 4, 8, 8}, at::detail::createCPUGenerator(7), at::kFloat);
  for (const auto& name : scheduler_names()) {
    for (const char* pred : {"epsilon", "v_prediction"}) {
      auto s = make_scheduler(name, sd_config(pred));
      auto a = run_loop(*s, 12, x_T, at::detail::createCPUGenerator(11));
      auto b = run_loop(*s, 12, x_T, at::detail::createCPUGenerator(11));  // same object, reused
      EXPECT_TRUE(at::equal(a, b)) << name << " " << pred;
      EXPECT_TRUE(a.isfinite().all().item<bool>()) << name;
      // Fresh object gives the same as the reused one.
      auto fresh = make_scheduler(name, sd_config(pred));
      EXPECT_TRUE(at::equal(a, run_loop(*fresh, 12, x_T, at::detail::createCPUGenerator(11)))) << name;
    }
  }
}

TEST(Schedulers, TimestepsDecreasing) {
  for (const auto& name : scheduler_names()) {
    for (const char* spacing : {"linspace", "leading", "trailing"}) {
      auto c = sd_config();
      c.timestep_spacing = spacing;
      auto s = make_scheduler(name, c);
      // (diffusers' DPM-Solver "leading" with steps_offset reaches t = 1000 for n = 999, an index error there too.)
      for (int64_t n : {1, 7, 20, 50, 500}) {
        s->set_timesteps(n);
        auto t = s->timestep_values();
        ASSERT_FALSE(t.empty()) << name;
        EXPECT_EQ(s->num_inference_steps(), n);
        for (size_t i = 1; i < t.size(); ++i) {
          // PNDM's PLMS warm-up repeats its second timestep once.
          if (name == "pndm" && i == 2) {
            EXPECT_LE(t[i], t[i - 1]) << name << " " << spacing << " n=" << n;
            continue;
          }
          EXPECT_LT(t[i], t[i - 1]) << name << " " << spacing << " n=" << n << " i=" << i;
        }
        EXPECT_GE(t.back(), 0);
        EXPECT_LT(t.front(), 1000);
      }
    }
  }
}

TEST(Schedulers, AddNoiseWithZeroNoise) {
  auto x = at::randn({1, 4, 8, 8}, at::detail::createCPUGenerator(3), at::kFloat);
  auto zero = at::zeros_like(x);
  for (const auto& name : scheduler_names()) {
    auto s = make_scheduler(name, sd_config());
    s->set_timesteps(20);
    const double t_last = s->timestep_values().back();
    auto y = s->add_noise(x, zero, t_last);
    if (s->sigmas().defined()) {
      EXPECT_TRUE(at::equal(y, x)) << name;  // x + 0 * sigma
    } else {
      // sqrt(alphabar_t) * x: x up to the tiny signal loss at the last timestep.
      auto expect = x * s->alphas_cumprod()[(int64_t)t_last].sqrt();
      EXPECT_TRUE(at::allclose(y, expect, 0, 0)) << name;
      if (t_last <= 1) EXPECT_LT((y - x).abs().max().item<double>(), 2e-3 * x.abs().max().item<double>()) << name;
    }
    // With noise, larger timesteps noise more.
    auto noise = at::randn_like(x);
    auto near = s->add_noise(x, noise, s->timestep_values().back());
    auto far = s->add_noise(x, noise, s->timestep_values().front());
    EXPECT_GT((far - x).abs().mean().item<double>(), (near - x).abs().mean().item<double>()) << name;
  }
}

TEST(Schedulers, EulerAncestralSeededDeterministic) {
  auto x_T = at::randn({1, 4, 8, 8}, at::detail::createCPUGenerator(5), at::kFloat);
  auto s = make_scheduler("euler_ancestral", sd_config());
  auto a = run_loop(*s, 10, x_T, at::detail::createCPUGenerator(42));
  auto b = run_loop(*s, 10, x_T, at::detail::createCPUGenerator(42));
  auto c = run_loop(*s, 10, x_T, at::detail::createCPUGenerator(43));
  EXPECT_TRUE(at::equal(a, b));
  EXPECT_FALSE(at::equal(a, c));  // the noise really is used
  EXPECT_TRUE(s->needs_noise());
  // DDIM (eta 0) is deterministic whatever the generator.
  auto ddim = make_scheduler("ddim", sd_config());
  EXPECT_FALSE(ddim->needs_noise());
  EXPECT_TRUE(at::equal(run_loop(*ddim, 10, x_T, at::detail::createCPUGenerator(1)),
                        run_loop(*ddim, 10, x_T, at::detail::createCPUGenerator(2))));
}

TEST(Schedulers, UnknownNameListsValidOnes) {
  try {
    make_scheduler("eulr", sd_config());
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("eulr"), std::string::npos) << msg;
    for (const auto& n : scheduler_names()) EXPECT_NE(msg.find(n), std::string::npos) << msg;
  }
  // Both spellings resolve.
  EXPECT_EQ(make_scheduler("EulerAncestralDiscreteScheduler", sd_config())->name(), "euler_ancestral");
  EXPECT_EQ(make_scheduler("dpmsolver_multistep", sd_config())->class_name(), "DPMSolverMultistepScheduler");
  EXPECT_EQ(scheduler_names().size(), 6u);
}

TEST(Schedulers, ConfigErrorsNameFileAndKey) {
  Json j = {{"beta_schedule", "cubic"}};
  try {
    SchedulerConfig::from_json(j, "my_scheduler.json");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.file(), "my_scheduler.json");
    EXPECT_EQ(e.field(), "beta_schedule");
  }
  Json wrong_type = {{"steps_offset", "one"}};
  EXPECT_THROW(SchedulerConfig::from_json(wrong_type, "x.json"), Error);
  auto c = SchedulerConfig::from_json(Json{{"some_future_key", 1}, {"_class_name", "DDIMScheduler"}}, "x.json");
  EXPECT_EQ(c.unknown_keys, std::vector<std::string>{"some_future_key"});
  EXPECT_EQ(c.class_name, "DDIMScheduler");
  // A class that does not support a setting says so.
  auto bad = sd_config("sample");
  EXPECT_THROW(make_scheduler("pndm", bad), Error);
}

TEST(Schedulers, LoadsPythonJsonWithInfinity) {
  const auto dir = test::temp_dir("sched_json");
  const auto path = dir + "/scheduler_config.json";
  std::ofstream(path) << R"({"_class_name": "DPMSolverMultistepScheduler", "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "beta_end": 0.012, "lambda_min_clipped": -Infinity, "note": "NaN stays a string",
    "steps_offset": 1, "trained_betas": null})";
  auto s = load_scheduler(path);
  EXPECT_EQ(s->name(), "dpmsolver_multistep");
  EXPECT_TRUE(std::isinf(s->config().lambda_min_clipped) && s->config().lambda_min_clipped < 0);
  EXPECT_EQ(s->config().unknown_keys, std::vector<std::string>{"note"});
  auto o = load_scheduler(path, "euler");
  EXPECT_EQ(o->name(), "euler");
}

TEST(Schedulers, Img2ImgStart) {
  for (const auto& name : scheduler_names()) {
    auto s = make_scheduler(name, sd_config());
    s->set_timesteps(50);
    auto all = s->timestep_values();
    auto full = s->img2img_start(1.0);
    EXPECT_EQ(full.begin_index, 0) << name;
    EXPECT_EQ(full.timesteps, all) << name;
    EXPECT_EQ(full.num_effective_steps, 50);
    auto part = s->img2img_start(0.6);
    EXPECT_EQ(part.num_effective_steps, 30);
    EXPECT_EQ(part.begin_index, 20 * s->order());
    EXPECT_EQ(part.timesteps.size(), all.size() - part.begin_index);
    // int(50 * 0.01) == 0: nothing left to run, except PNDM's extra repeated timestep.
    auto tiny = s->img2img_start(0.01);
    EXPECT_EQ(tiny.num_effective_steps, 0);
    EXPECT_EQ(tiny.timesteps.size(), all.size() - 50) << name;
    EXPECT_THROW(s->img2img_start(1.5), Error);
  }
}

TEST(Schedulers, SigmaAt) {
  auto s = make_scheduler("euler", sd_config());
  s->set_timesteps(20);
  auto sig = s->sigmas();
  auto ts = s->timestep_values();
  for (size_t i = 0; i < ts.size(); ++i)
    EXPECT_EQ((float)s->sigma_at(ts[i]), sig[(int64_t)i].item<float>()) << i;
  // Integer t: the table value sqrt((1-ac)/ac).
  auto ac = s->alphas_cumprod();
  EXPECT_NEAR(s->sigma_at(500), std::sqrt((1 - ac[500].item<double>()) / ac[500].item<double>()), 1e-6);
  EXPECT_GT(s->sigma_at(999), s->sigma_at(0));
}

TEST(Schedulers, KarrasAndOtherOptionsRun) {
  auto x_T = at::randn({1, 4, 8, 8}, at::detail::createCPUGenerator(9), at::kFloat);
  for (const char* name : {"euler", "dpmsolver_multistep"}) {
    auto c = sd_config();
    c.use_karras_sigmas = true;
    auto s = make_scheduler(name, c);
    auto x = run_loop(*s, 15, x_T, at::detail::createCPUGenerator(1));
    EXPECT_TRUE(x.isfinite().all().item<bool>()) << name;
    auto t = s->timestep_values();
    for (size_t i = 1; i < t.size(); ++i) EXPECT_LT(t[i], t[i - 1]) << name;
  }
  // DPM-Solver variants and orders, cosine schedule, PNDM with Runge-Kutta warm-up, DDPM variances.
  for (const char* algo : {"dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"})
    for (const char* solver : {"midpoint", "heun"})
      for (int order : {1, 2, 3}) {
        auto c = sd_config();
        c.algorithm_type = algo;
        c.solver_type = solver;
        c.solver_order = order;
        if (order == 3 && std::string(algo).rfind("sde", 0) == 0) {
          EXPECT_THROW(make_scheduler("dpmsolver_multistep", c), Error);
          continue;
        }
        auto s = make_scheduler("dpmsolver_multistep", c);
        auto x = run_loop(*s, 10, x_T, at::detail::createCPUGenerator(1));
        EXPECT_TRUE(x.isfinite().all().item<bool>()) << algo << " " << solver << " " << order;
      }
  auto cosine = sd_config();
  cosine.beta_schedule = "squaredcos_cap_v2";
  for (const auto& name : scheduler_names()) {
    auto x = run_loop(*make_scheduler(name, cosine), 10, x_T, at::detail::createCPUGenerator(1));
    EXPECT_TRUE(x.isfinite().all().item<bool>()) << name;
  }
  auto prk = sd_config();
  prk.skip_prk_steps = false;
  auto pndm = make_scheduler("pndm", prk);
  pndm->set_timesteps(10);
  EXPECT_EQ(pndm->timesteps().size(0), 12 + 7);  // 12 Runge-Kutta timesteps + 7 PLMS
  EXPECT_TRUE(run_loop(*pndm, 10, x_T, c10::nullopt).isfinite().all().item<bool>());
  // (fixed_large_log yields sqrt(log beta) = NaN in diffusers' step as well: a training-only setting.)
  for (const char* v : {"fixed_small", "fixed_small_log", "fixed_large"}) {
    auto c = sd_config();
    c.variance_type = v;
    auto x = run_loop(*make_scheduler("ddpm", c), 10, x_T, at::detail::createCPUGenerator(1));
    EXPECT_TRUE(x.isfinite().all().item<bool>()) << v;
  }
}

}  // namespace
}  // namespace collage
