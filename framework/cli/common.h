// Shared pieces of the CLI subcommands.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace collage {
class StableDiffusion;
}

namespace collage::cli {

struct GlobalOptions {
  int threads = 0;          // 0 = all cores
  std::string device = "cpu";
  std::string dtype = "auto";
};

// Applies --threads (all cores by default) and flushes denormals (random or near-converged weights
// otherwise hit the slow denormal path).
void apply_runtime(const GlobalOptions& options);

// "7", "1-10", "1,4,9", "1-3,8" -> seeds. Errors name the flag.
std::vector<uint64_t> parse_seeds(const std::string& text);

// A progress line on stderr: "  label  12/50 [=====>     ] 3.1 s, ETA 9.8 s".
class Progress {
 public:
  explicit Progress(std::string label);
  void operator()(int64_t done, int64_t total);
  std::function<void(int64_t, int64_t)> callback();

 private:
  std::string label_;
  double start_;
};

double now_seconds();

// The model a command uses when --model is not given: the embedded default, if the checkout ships it.
std::string default_model_dir();
// Loads a pipeline folder (the embedded default when `model` is empty) with the global device/dtype and
// reports the load time on stderr. `scheduler` overrides the folder's ("" = keep).
std::shared_ptr<StableDiffusion> load_pipeline(const std::string& model, const std::string& variant,
                                               const std::string& scheduler, const GlobalOptions& global);

// Subcommand registration (one file each).
void add_generate_commands(CLI::App& app, GlobalOptions& global);
void add_parity_command(CLI::App& app, GlobalOptions& global);
void add_bench_command(CLI::App& app, GlobalOptions& global);
void add_bench_controlnet_command(CLI::App& app, GlobalOptions& global);  // after add_bench_command
void add_collage_commands(CLI::App& app, GlobalOptions& global);
void add_score_commands(CLI::App& app, GlobalOptions& global);
void add_train_commands(CLI::App& app, GlobalOptions& global);
void add_shapesworld_commands(CLI::App& app, GlobalOptions& global);
void add_sweep_commands(CLI::App& app, GlobalOptions& global);

}  // namespace collage::cli
