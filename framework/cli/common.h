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
namespace runner {
struct ExperimentConfig;
struct SweepOptions;
struct SlurmOptions;
}  // namespace runner
}  // namespace collage

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

// The OpenMP wait policy set when the user set none (docs/threading.md).
inline constexpr const char* kDefaultOmpWaitPolicy = "passive";
// Re-executes the binary once with OMP_WAIT_POLICY set (the OpenMP runtime reads it only when it loads),
// unless the user set OMP_WAIT_POLICY, GOMP_SPINCOUNT or COLLAGE_NO_REEXEC. Returns only when it did not.
void reexec_with_openmp_policy(char** argv);

// `collage sweep --slurm N`: submits the sweep as a job array + merge job; `wait` blocks until the merge is
// done and throws when units are unfinished.
void run_sweep_on_slurm(const runner::ExperimentConfig& config, const runner::SweepOptions& sweep,
                        runner::SlurmOptions slurm, bool wait, const GlobalOptions& global);

// Subcommand registration (one file each).
void add_generate_commands(CLI::App& app, GlobalOptions& global);
void add_parity_command(CLI::App& app, GlobalOptions& global);
void add_bench_commands(CLI::App& bench_group, GlobalOptions& global);         // unet, attention, txt2img
void add_metrics_bench_command(CLI::App& bench_group, GlobalOptions& global);  // metrics
void add_bench_controlnet_command(CLI::App& bench_group, GlobalOptions& global);  // controlnet
void add_collage_commands(CLI::App& app, GlobalOptions& global);
void add_score_commands(CLI::App& app, GlobalOptions& global);
void add_train_commands(CLI::App& sandbox_group, GlobalOptions& global);       // train, train-clip, eval-clip, eval
void add_shapesworld_commands(CLI::App& sandbox_group, GlobalOptions& global);  // render, analyse, make-dataset
void add_text_diff_command(CLI::App& app, GlobalOptions& global);
// The sandbox and bench commands under their pre-grouping names (train-model, render-shapesworld, bench-metrics,
// ...), hidden from --help and with a note naming the new command; kept for one release.
void add_old_command_names(CLI::App& app, GlobalOptions& global);
void add_sweep_commands(CLI::App& app, GlobalOptions& global);
void add_status_command(CLI::App& app, GlobalOptions& global);
void add_import_commands(CLI::App& app, GlobalOptions& global);

}  // namespace collage::cli
