// Parity checks: this implementation against a folder of reference tensors laid out like
// shared/golden/ (tokenizer/, text_encoder_sd1/, unet_sd1/, vae/, schedulers/, pipeline/, ...).
// One implementation serves the `collage parity` CLI and the golden tests.
#pragma once

#include <ATen/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/core/TensorOptions.h>

#include <functional>
#include <string>
#include <vector>

namespace collage::parity {

struct CaseResult {
  std::string component;  // folder name, e.g. "unet_sd1"
  std::string name;       // case and field, e.g. "b2.out"
  double max_abs_diff = 0, max_abs_ref = 0, rel = 0;
  double rtol = 0, atol = 0;
  bool pass = false;
  bool skipped = false;   // a folder no checker knows: listed as not checked (pass stays true)
  std::string detail;     // why it failed, or what was compared
};

// Where the models run. The references are float32 from diffusers/transformers on the CPU; on CUDA in
// float32 (TF32 off) the project's tolerances still apply. In float16 / bfloat16 they cannot: comparisons
// use reduced_precision_tolerance() instead, and the report says so.
struct Target {
  at::Device device = at::kCPU;
  at::ScalarType dtype = at::kFloat;
  std::string str() const;
  // Moves a model input there: floating tensors also change dtype, integer ones (token ids) do not.
  at::Tensor in(const at::Tensor& t) const;
};
// (rtol, atol) used for a float32-tolerance check in `dtype`.
std::pair<double, double> reduced_precision_tolerance(at::ScalarType dtype, double rtol, double atol);

// Collects results. Tolerances default to the project's rtol 1e-4 / atol 1e-5.
class Recorder {
 public:
  explicit Recorder(std::string component, Target target = {})
      : component_(std::move(component)), target_(target) {}
  const Target& target() const { return target_; }
  // Results recorded from now on belong to `component` (a checker's sub-parts, e.g. "controlnet/canny": one
  // summary row each in the parity table).
  void set_component(std::string component) { component_ = std::move(component); }
  // Floating-point comparison: pass when max|got-ref| <= atol + rtol*max|ref|.
  void tensor(const std::string& name, const at::Tensor& got, const at::Tensor& ref,
              double rtol = 1e-4, double atol = 1e-5);
  // Exact equality (token ids, timesteps): detail names the first mismatch.
  void exact(const std::string& name, bool equal, const std::string& detail = {});
  // A case that could not be run (exception, missing file): recorded as a failure.
  void failure(const std::string& name, const std::string& message);

  const std::vector<CaseResult>& results() const { return results_; }
  std::vector<CaseResult> take() { return std::move(results_); }

 private:
  std::string component_;
  Target target_;
  std::vector<CaseResult> results_;
};

// A component checker: given the component folder (e.g. ".../golden/unet_sd1"), fill the recorder.
using Checker = std::function<void(const std::string& folder, Recorder&)>;

struct ComponentChecker {
  std::string kind;                               // "tokenizer", "text_encoder", "unet", ...
  std::function<bool(const std::string&)> claims; // does this folder belong to this checker?
  Checker check;
};

// All built-in checkers (explicit list, no static self-registration).
std::vector<ComponentChecker> builtin_checkers();

// Runs every checker on every sub-folder of `root` it claims; a sub-folder no checker claims gives one
// `skipped` row. Exceptions inside a checker become failures of that component, never a crash. `progress` (optional) is told each folder as it starts.
std::vector<CaseResult> run_parity(const std::string& root,
                                   const std::function<void(const std::string&)>& progress = {},
                                   const Target& target = {});

// The table `collage parity` prints: a summary row per component (its worst case) plus every failure, or every
// case with `all_rows`; then "N cases, P passed, F failed".
std::string format_table(const std::vector<CaseResult>& results, bool all_rows = false);
size_t count_failures(const std::vector<CaseResult>& results);

// Checkers, one per component kind (each in its own .cpp).
void check_tokenizer(const std::string& folder, Recorder& rec);
void check_text_encoder(const std::string& folder, Recorder& rec);
void check_unet(const std::string& folder, Recorder& rec);
void check_vae(const std::string& folder, Recorder& rec);
void check_schedulers(const std::string& folder, Recorder& rec);
void check_pipeline(const std::string& folder, Recorder& rec);
// controlnet/: ControlNet forward cases (with the UNet taking the residuals), per-pixel scale cases, the
// ControlNet txt2img / img2img pipeline runs and the Canny maps (exact).
void check_controlnet(const std::string& folder, Recorder& rec);

// The blockwise attention (what training and textual inversion differentiate through) against the plain
// autograd graph on random inputs of one shape: forward + backward time of each (best of `repeat` after a
// warm-up), peak resident memory on the CPU (0 on a GPU), and the largest difference of the output and of
// dq, dk, dv relative to the plain graph's largest value. Used by `collage bench attention` and by the
// device check before it trains on a GPU.
struct AttentionGradientCheck {
  double graph_seconds = 0, blockwise_seconds = 0;
  double graph_peak_bytes = 0, blockwise_peak_bytes = 0;
  double difference[4] = {0, 0, 0, 0};  // output, dq, dk, dv
  double worst = 0;
  std::string summary() const;          // "output 1.2e-07 dq ... dv ..."
};
AttentionGradientCheck check_attention_gradients(int64_t batch, int64_t heads, int64_t queries, int64_t keys,
                                                 int64_t dim, const at::TensorOptions& options, int64_t repeat);

// ---- Benchmarks (`collage bench`, scripts/device/device_check.cpp) ----

// Best GFLOPS of an n x n matmul in `dtype` over a few repetitions: the machine's reference rate.
double matmul_gflops(int64_t n, const at::Device& device, at::ScalarType dtype = at::kFloat);

struct UnetBenchOptions {
  std::string config_path;          // a UNet config.json
  at::Device device{at::kCPU};
  at::ScalarType dtype = at::kFloat;
  int64_t latent = 64, batch = 2, tokens = 77, repeat = 2;
  bool channels_last = true, pack_convs = true;  // the CPU fast paths (ignored on a GPU)
  std::string profile;              // a Chrome trace of one extra evaluation ("" = none)
};
struct UnetBenchResult {
  double parameters = 0, build_seconds = 0, packed_convs = 0;
  double gflop = 0;                 // one evaluation
  double warmup_seconds = 0, best_seconds = 0, mean_seconds = 0;
  double peak_bytes = 0, resident_before_bytes = 0;  // CPU only
  double gflops() const { return best_seconds > 0 ? gflop / best_seconds : 0; }
};
// One UNet evaluation at a real model's size with random weights: warm-up, then `repeat` timed evaluations.
UnetBenchResult bench_unet(const UnetBenchOptions& options);

}  // namespace collage::parity
