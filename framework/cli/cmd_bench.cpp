// collage bench unet: one UNet evaluation at a real model's size with random weights, timed against a large
// matmul measured in the same run (the ratio is what is comparable across machines).
#include <ATen/ATen.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <iostream>

#include "cli/common.h"
#include "core/core.h"
#include "diffusion/diffusion.h"
#include "models/models.h"
#include "parity/parity.h"

namespace fs = std::filesystem;

namespace collage::cli {

namespace {

// The checkout root holding `must_exist` (a path relative to it).
fs::path checkout_root(const std::string& must_exist) {
  for (const auto& r : checkout_roots())
    if (fs::exists(r / must_exist)) return r;
  throw Error("cannot find " + must_exist + " (run from the checkout)");
}

// sd15 / sd21 -> the real model's config folder under assets/configs.
fs::path model_configs(const std::string& name) {
  std::string sub;
  if (name == "sd15") sub = "stable-diffusion-v1-5";
  else if (name == "sd21") sub = "stable-diffusion-2-1";
  else throw Error("unknown config (use sd15, sd21 or a path to a UNet config.json)", "", "--config");
  return checkout_root("assets/configs/" + sub) / "assets" / "configs" / sub;
}

std::string resolve_config(const std::string& name) {
  if (fs::exists(name)) return fs::is_directory(name) ? (fs::path(name) / "config.json").string() : name;
  return (model_configs(name) / "unet" / "config.json").string();
}

template <class Args>
void add_unet_bench_callback(CLI::App* unet, std::shared_ptr<Args> a, GlobalOptions& global) {
  unet->callback([a, &global] {
    apply_runtime(global);
    parity::UnetBenchOptions o;
    o.config_path = resolve_config(a->config);
    o.device = parse_device(global.device);
    o.dtype = parse_dtype(global.dtype, o.device);
    o.latent = a->latent;
    o.batch = a->batch;
    o.tokens = a->tokens;
    o.repeat = a->repeat;
    o.channels_last = !a->nchw;
    o.pack_convs = !a->no_pack;
    o.profile = a->profile;
    std::cout << fmt::format("device {}, dtype {}, {} threads\n", o.device.str(), c10::toString(o.dtype),
                             at::get_num_threads());
    const double mm = parity::matmul_gflops(a->matmul, o.device);
    std::cout << fmt::format("matmul {}x{} float32: {:.1f} GFLOPS\n", a->matmul, a->matmul, mm);
    const auto r = parity::bench_unet(o);
    std::cout << fmt::format("UNet from {}: {:.1f} M parameters, built in {:.1f} s\n", o.config_path, r.parameters / 1e6,
                             r.build_seconds);
    if (o.device.is_cpu() && o.pack_convs) std::cout << fmt::format("packed {} large convolutions for oneDNN\n", r.packed_convs);
    std::cout << fmt::format("UNet eval: batch {}, latent {}x{}, {:.1f} GFLOP\n", o.batch, o.latent, o.latent, r.gflop);
    std::cout << fmt::format("  warm-up {:.2f} s; best of {} {:.2f} s (mean {:.2f} s)\n", r.warmup_seconds, o.repeat,
                             r.best_seconds, r.mean_seconds);
    std::cout << fmt::format("  achieved {:.1f} GFLOPS = {:.1f} % of the matmul throughput\n", r.gflops(),
                             100.0 * r.gflops() / mm);
    if (o.device.is_cpu())
      std::cout << fmt::format("  peak RSS during evaluation {:.2f} GB (weights and inputs resident before: {:.2f} GB)\n",
                               r.peak_bytes / 1e9, r.resident_before_bytes / 1e9);
  });
}

void add_unet_bench(CLI::App& bench, GlobalOptions& global) {
  struct Args {
    std::string config = "sd15";
    int64_t latent = 64, batch = 2, repeat = 2, tokens = 77, matmul = 2048;
    std::string profile;
    bool nchw = false, no_pack = false;
  };
  auto a = std::make_shared<Args>();
  auto* unet = bench.add_subcommand("unet", "time one UNet evaluation with random weights from a real config");
  unet->add_option("--config", a->config, "sd15, sd21 or a UNet config.json")->capture_default_str();
  unet->add_option("--latent", a->latent, "latent side (64 = 512x512 images)")->capture_default_str();
  unet->add_option("--batch", a->batch, "batch (2 = one image with classifier-free guidance)")->capture_default_str();
  unet->add_option("--repeat", a->repeat, "timed evaluations after one warm-up")->capture_default_str();
  unet->add_option("--matmul", a->matmul, "side of the reference float32 matmul")->capture_default_str();
  unet->add_option("--profile", a->profile, "write a Chrome trace of one extra evaluation to this file");
  unet->add_flag("--nchw", a->nchw, "keep NCHW activations on the CPU (default: channels-last)");
  unet->add_flag("--no-pack", a->no_pack, "do not pre-pack large convolution weights for oneDNN");
  add_unet_bench_callback(unet, a, global);
}

void add_txt2img_bench(CLI::App& bench, GlobalOptions& global) {
  struct PipeArgs {
    std::string config = "sd15";
    int64_t steps = 2, size = 0;
  };
  auto pa = std::make_shared<PipeArgs>();
  auto* pipe = bench.add_subcommand(
      "txt2img", "a full txt2img run (text encoder, UNet with CFG, VAE decode) with random weights at a real "
                 "model's size: time per step and peak memory");
  pipe->add_option("--config", pa->config, "sd15 or sd21")->capture_default_str();
  pipe->add_option("--steps", pa->steps, "denoising steps")->capture_default_str();
  pipe->add_option("--size", pa->size, "image side (default: the model's native size)");
  pipe->callback([pa, &global] {
    apply_runtime(global);
    torch::NoGradGuard no_grad;
    const auto dir = model_configs(pa->config);
    const auto root = checkout_root("tests/data/golden/tokenizer/vocab.json");
    double t0 = now_seconds();
    PipelineOptions po;
    po.device = global.device;
    po.dtype = global.dtype;
    auto sd = StableDiffusion::random(dir.string(), (root / "tests/data/golden/tokenizer").string(), po);
    std::cout << fmt::format("random {} pipeline built in {:.1f} s; resident {:.2f} GB\n", pa->config,
                             now_seconds() - t0, process_memory_bytes("VmRSS") / 1e9);
    GenerateRequest req;
    req.prompt = "a red barn in a field, highly detailed";
    req.negative_prompt = "blurry";
    req.steps = pa->steps;
    req.height = req.width = pa->size;
    SeededNoise noise({0});
    reset_peak_memory();
    t0 = now_seconds();
    auto out = txt2img(*sd, req, noise, 1);
    const double seconds = now_seconds() - t0;
    std::cout << fmt::format("txt2img {}x{}, {} steps with CFG: {:.2f} s ({:.2f} s per step incl. text encoder "
                             "and VAE decode)\n",
                             out.images.size(2), out.images.size(3), out.timesteps.size(), seconds,
                             seconds / out.timesteps.size());
    if (sd->device.is_cpu())
      std::cout << fmt::format("  peak RSS during the run {:.2f} GB\n", process_memory_bytes("VmHWM") / 1e9);
  });
}

void add_attention_bench(CLI::App& bench, GlobalOptions& global) {
  struct AttnArgs {
    int64_t batch = 2, heads = 8, queries = 4096, keys = 4096, dim = 40, repeat = 3;
  };
  auto aa = std::make_shared<AttnArgs>();
  auto* attn = bench.add_subcommand(
      "attention", "forward + backward of one attention layer (as in training and textual inversion): the "
                   "blockwise attention against the plain autograd graph, time and peak memory of each");
  attn->add_option("--batch", aa->batch, "batch")->capture_default_str();
  attn->add_option("--heads", aa->heads, "heads")->capture_default_str();
  attn->add_option("--queries", aa->queries, "query tokens (4096 = SD 1.5's 64x64 self-attention)")
      ->capture_default_str();
  attn->add_option("--keys", aa->keys, "key tokens (77 = cross-attention)")->capture_default_str();
  attn->add_option("--dim", aa->dim, "head dimension")->capture_default_str();
  attn->add_option("--repeat", aa->repeat, "timed runs of each (the best counts)")->capture_default_str();
  attn->callback([aa, &global] {
    apply_runtime(global);
    const auto device = parse_device(global.device);
    const auto opts = at::TensorOptions().dtype(parse_dtype(global.dtype, device)).device(device);
    const double flops = 2.0 * 2.0 * aa->batch * aa->heads * aa->queries * aa->keys * aa->dim;  // forward GEMMs
    std::cout << fmt::format("attention fwd+bwd: batch {} x {} heads, {} queries x {} keys, head dim {}, {}, "
                             "{} threads\n",
                             aa->batch, aa->heads, aa->queries, aa->keys, aa->dim,
                             c10::toString(opts.dtype().toScalarType()), at::get_num_threads());
    const auto r = parity::check_attention_gradients(aa->batch, aa->heads, aa->queries, aa->keys, aa->dim, opts,
                                                     aa->repeat);
    const bool cpu = device.is_cpu();
    std::cout << fmt::format("  plain autograd graph: {:.3f} s{}\n", r.graph_seconds,
                             cpu ? fmt::format(", peak RSS {:.2f} GB", r.graph_peak_bytes / 1e9) : "");
    std::cout << fmt::format("  blockwise:            {:.3f} s{}\n", r.blockwise_seconds,
                             cpu ? fmt::format(", peak RSS {:.2f} GB", r.blockwise_peak_bytes / 1e9) : "");
    std::cout << fmt::format("  speed-up {:.2f}x; forward GEMMs alone {:.1f} GFLOP; largest difference relative "
                             "to the plain graph's largest value: {}\n",
                             r.graph_seconds / r.blockwise_seconds, flops / 1e9, r.summary());
    COLLAGE_CHECK(r.worst < 1e-3, "blockwise attention disagrees with the plain graph (relative {:.2e})", r.worst);
  });
}

}  // namespace

void add_bench_commands(CLI::App& bench, GlobalOptions& global) {
  add_unet_bench(bench, global);
  add_txt2img_bench(bench, global);
  add_attention_bench(bench, global);
}

}  // namespace collage::cli
