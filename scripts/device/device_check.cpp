// device_check: the CUDA checks of the framework on a lent GPU machine, built by scripts/device/build.sh
// against that machine's CUDA libtorch. It links only the modules that need no OpenCV/HDF5 (core, models,
// diffusion, parity, training, the ShapesWorld renderer), because such a machine has none of our Debian
// packages; everything it runs is the same library code the `collage` CLI runs.
//
//   device_check parity GOLDEN_DIR [float32|float16|bfloat16]   golden parity on cuda (exit 1 on failure)
//   device_check bench-unet UNET_CONFIG [float32|float16] [latent] [batch] [repeat]
//   device_check train TRAIN_CONFIG OUT_DIR MINUTES [batch_size (0: the config's)] [resume]
//   device_check eval MODEL_DIR [n] [seed] [json]   eval-shapesworld, sampled on cuda (float32, 50 steps,
//                           guidance 5), analysed on the CPU
//   device_check attention [batch heads queries keys dim]   blockwise attention vs the plain graph, fwd + bwd
//                           (exit 1: they disagree, 3: blockwise over 2x slower; run_checks.sh then trains
//                           with COLLAGE_ATTENTION_GRADIENTS=graph)
#include <ATen/Context.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "core/core.h"
#include "diffusion/pipeline.h"
#include "models/unet_2d_condition.h"
#include "parity/parity.h"
#include "training/trainer.h"

using namespace collage;
namespace fs = std::filesystem;

namespace {

// DEVICE_CHECK_DEVICE=cpu rehearses the script on a machine without a GPU.
at::Device target_device() {
  const char* d = std::getenv("DEVICE_CHECK_DEVICE");
  return at::Device(d ? d : "cuda");
}
void synchronize() {
  if (target_device().is_cuda()) torch::cuda::synchronize();
}

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

int run_parity_on_cuda(const std::string& root, const std::string& dtype_name) {
  parity::Target target;
  target.device = target_device();
  target.dtype = parse_dtype(dtype_name, target.device);
  at::globalContext().setAllowTF32CuBLAS(false);
  at::globalContext().setAllowTF32CuDNN(false);
  // The checkers of the components this binary links (the CLIP/LPIPS metric nets need OpenCV).
  const std::vector<std::pair<std::string, parity::Checker>> checkers = {
      {"tokenizer", parity::check_tokenizer}, {"text_encoder", parity::check_text_encoder},
      {"unet", parity::check_unet},           {"vae", parity::check_vae},
      {"schedulers", parity::check_schedulers}, {"pipeline", parity::check_pipeline}};
  std::vector<std::string> folders;
  for (const auto& e : fs::directory_iterator(root))
    if (e.is_directory()) folders.push_back(e.path().string());
  std::sort(folders.begin(), folders.end());
  std::cout << "parity on " << target.str() << "\n";
  std::vector<parity::CaseResult> results;
  for (const auto& folder : folders) {
    const auto name = fs::path(folder).filename().string();
    for (const auto& [prefix, check] : checkers) {
      if (name.rfind(prefix, 0) != 0) continue;
      parity::Recorder rec(name, target);
      try {
        check(folder, rec);
      } catch (const std::exception& e) {
        rec.failure("(checker)", e.what());
      }
      results.insert(results.end(), rec.results().begin(), rec.results().end());
      break;
    }
  }
  std::cout << parity::format_table(results);
  return parity::count_failures(results) == 0 ? 0 : 1;
}

int bench_unet(const std::string& config_path, const std::string& dtype_name, int64_t latent, int64_t batch,
               int repeat) {
  parity::UnetBenchOptions o;
  o.config_path = config_path;
  o.device = target_device();
  o.dtype = parse_dtype(dtype_name, o.device);
  o.latent = latent;
  o.batch = batch;
  o.repeat = repeat;
  const auto r = parity::bench_unet(o);
  std::cout << fmt::format("UNet {} built and moved in {:.1f} s\n", config_path, r.build_seconds);
  std::cout << fmt::format("UNet eval {} batch {} latent {}: best of {} {:.2f} ms, {:.1f} TFLOP/s ({:.1f} GFLOP)\n",
                           c10::toString(o.dtype), batch, latent, repeat, r.best_seconds * 1e3, r.gflops() / 1e3,
                           r.gflop);
  return 0;
}

int train_on_cuda(const std::string& config_path, const std::string& out, double minutes, int64_t batch, bool resume) {
  auto config = training::TrainConfig::from_json_file(config_path);
  if (batch > 0) config.batch_size = batch;
  training::TrainOptions o;
  o.out_dir = out;
  o.minutes = minutes;
  o.device = target_device().str();
  o.resume = resume;
  o.command_line = fmt::format("collage --device {} train-model --world shapesworld --config {} --out {} --minutes {}"
                               "{}{} (run as scripts/device/device_check train)",
                               target_device().str(), config_path, out, minutes, resume ? " --resume" : "",
                               batch > 0 ? fmt::format(" (batch_size {})", batch) : "");
  auto r = training::train(config, o);
  std::cout << fmt::format("trained {} steps, final loss {:.4f}, {:.1f} s\n", r.steps, r.final_loss, r.seconds);
  return 0;
}

int eval_on_cuda(const std::vector<std::string>& a) {
  training::EvalOptions o;
  o.n = a.size() > 2 ? std::stoll(a[2]) : 100;
  o.seed = a.size() > 3 ? std::stoull(a[3]) : 0;
  o.device = target_device().str();
  auto r = training::evaluate_shapesworld(a[1], o);
  if (a.size() > 4) write_json_file(a[4], r.to_json());
  std::cout << fmt::format("eval {} ({} prompts, seed {}, sampled on {}): every named object found {}/{}, exact {}, "
                           "held-out found {}, objects {}/{}; {:.1f} s\n",
                           a[1], r.prompts, o.seed, o.device, r.all_found, r.prompts, r.exact, r.held_out_found,
                           r.objects_found, r.objects, r.seconds);
  return 0;
}

// Defaults: the embedded model's first self-attention at training batch 256 (4 heads of 24, 16x16 tokens).
int check_attention(const std::vector<std::string>& a) {
  auto arg = [&](size_t i, int64_t d) { return a.size() > i ? std::stoll(a[i]) : d; };
  const int64_t batch = arg(1, 256), heads = arg(2, 4), queries = arg(3, 256), keys = arg(4, 256), dim = arg(5, 24);
  at::globalContext().setAllowTF32CuBLAS(false);  // float32 GEMMs, so the difference measures the algorithm
  const auto r = parity::check_attention_gradients(batch, heads, queries, keys, dim,
                                                   at::TensorOptions().device(target_device()), 5);
  std::cout << fmt::format("attention fwd+bwd float32 batch {} x {} heads, {} x {} tokens, dim {}: plain graph "
                           "{:.2f} ms, blockwise {:.2f} ms; difference relative to the graph's largest value: {}\n",
                           batch, heads, queries, keys, dim, r.graph_seconds * 1e3, r.blockwise_seconds * 1e3,
                           r.summary());
  if (r.worst > 1e-3) return 1;
  return r.blockwise_seconds > 2 * r.graph_seconds ? 3 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::vector<std::string> a(argv + 1, argv + argc);
    if (a.empty()) throw std::runtime_error("usage: device_check parity|bench-unet|train|attention ...");
    std::cout << fmt::format("libtorch {}, CUDA available {}, {} device(s), {} CPU threads\n", TORCH_VERSION,
                             torch::cuda::is_available(), torch::cuda::device_count(), at::get_num_threads());
    if (a[0] == "parity" && a.size() >= 2) return run_parity_on_cuda(a[1], a.size() > 2 ? a[2] : "float32");
    if (a[0] == "bench-unet" && a.size() >= 2)
      return bench_unet(a[1], a.size() > 2 ? a[2] : "float16", a.size() > 3 ? std::stoll(a[3]) : 64,
                        a.size() > 4 ? std::stoll(a[4]) : 2, a.size() > 5 ? std::stoi(a[5]) : 10);
    if (a[0] == "train" && a.size() >= 4)
      return train_on_cuda(a[1], a[2], std::stod(a[3]), a.size() > 4 ? std::stoll(a[4]) : 0,
                           a.size() > 5 && a[5] == "resume");
    if (a[0] == "attention") return check_attention(a);
    if (a[0] == "eval" && a.size() >= 2) return eval_on_cuda(a);
    throw std::runtime_error("unknown or incomplete command: " + a[0]);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
}
