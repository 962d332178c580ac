#include "cli/common.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <sched.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <thread>

#include "core/core.h"
#include "diffusion/diffusion.h"

namespace collage::cli {

void apply_runtime(const GlobalOptions& options) {
  int threads = options.threads;
  if (threads <= 0) {
    // The cores this process may use (a SLURM task or `taskset` gets fewer than the machine has).
    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    threads = sched_getaffinity(0, sizeof allowed, &allowed) == 0 ? CPU_COUNT(&allowed) : 0;
    if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }
  at::set_num_threads(threads);
  at::globalContext().setFlushDenormal(true);
}

std::vector<uint64_t> parse_seeds(const std::string& text) {
  std::vector<uint64_t> seeds;
  std::stringstream ss(text);
  std::string part;
  try {
    while (std::getline(ss, part, ',')) {
      if (part.empty()) continue;
      const auto dash = part.find('-', 1);
      if (dash == std::string::npos) {
        seeds.push_back(std::stoull(part));
      } else {
        const auto a = std::stoull(part.substr(0, dash)), b = std::stoull(part.substr(dash + 1));
        COLLAGE_CHECK_AT(a <= b && b - a < 100000, "", "--seeds", "bad seed range '{}'", part);
        for (auto s = a; s <= b; ++s) seeds.push_back(s);
      }
    }
  } catch (const std::logic_error&) {
    throw Error(fmt::format("cannot parse '{}' (use e.g. 7, 1-10 or 1,4,9)", text), "", "--seeds");
  }
  COLLAGE_CHECK_AT(!seeds.empty(), "", "--seeds", "no seed given");
  return seeds;
}

double now_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

Progress::Progress(std::string label) : label_(std::move(label)), start_(now_seconds()) {}

void Progress::operator()(int64_t done, int64_t total) {
  const double elapsed = now_seconds() - start_;
  const int width = 24;
  const int filled = total > 0 ? static_cast<int>(width * done / total) : width;
  const double eta = done > 0 ? elapsed / done * (total - done) : 0;
  std::cerr << "\r  " << label_ << " " << done << "/" << total << " [" << std::string(filled, '=')
            << std::string(width - filled, ' ') << "] " << fmt::format("{:.1f} s, ETA {:.1f} s   ", elapsed, eta);
  if (done == total) std::cerr << "\n";
  std::cerr.flush();
}

std::function<void(int64_t, int64_t)> Progress::callback() {
  return [this](int64_t d, int64_t t) { (*this)(d, t); };
}

std::string default_model_dir() {
  // The embedded model ships in the checkout's assets/ folder.
  return find_in_checkout("assets/shapesworld/model", "model_index.json");
}

std::shared_ptr<StableDiffusion> load_pipeline(const std::string& model_arg, const std::string& variant,
                                               const std::string& scheduler, const GlobalOptions& g) {
  const std::string model = model_arg.empty() ? default_model_dir() : model_arg;
  COLLAGE_CHECK_AT(!model.empty(), "", "--model",
                   "no model given and no embedded default model found in assets/shapesworld/model");
  PipelineOptions po;
  po.device = g.device;
  po.dtype = g.dtype;
  po.variant = variant;
  po.scheduler = scheduler;
  const double t0 = now_seconds();
  auto sd = StableDiffusion::load(model, po);
  std::cerr << fmt::format("loaded {} in {:.1f} s ({} on {})\n", model, now_seconds() - t0, c10::toString(sd->dtype),
                           sd->device.str());
  return sd;
}

}  // namespace collage::cli
