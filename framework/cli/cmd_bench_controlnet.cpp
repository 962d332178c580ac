// collage bench controlnet: what a ControlNet adds to a sampling step at a real model's size, random weights
// (the ControlNet config derived from the UNet's, as diffusers' ControlNetModel.from_unet with the real SD
// ControlNets' conditioning encoder), as a ratio to the plain UNet step measured in the same run, interleaved.
#include <torch/torch.h>

#include <filesystem>
#include <iostream>

#include "cli/common.h"
#include "core/core.h"
#include "diffusion/diffusion.h"
#include "models/models.h"

namespace collage::cli {

void add_bench_controlnet_command(CLI::App& bench_group, GlobalOptions& global) {
  auto* bench = &bench_group;
  struct Args {
    std::string config;
    int64_t latent = 64, batch = 2, rounds = 3, tokens = 77;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = bench->add_subcommand(
      "controlnet", "time a ControlNet step (ControlNet + UNet with its residuals) against a plain UNet step, random "
                    "weights at a real model's size; prints the extra cost as a ratio");
  cmd->add_option("--config", a->config, "UNet config.json (default: the SD 1.5 one under assets/configs)");
  cmd->add_option("--latent", a->latent, "latent side (64 = 512x512 images)")->capture_default_str();
  cmd->add_option("--batch", a->batch, "batch (2 = one image with classifier-free guidance)")->capture_default_str();
  cmd->add_option("--rounds", a->rounds, "timed rounds (each: UNet, ControlNet, ControlNet step)")->capture_default_str();
  cmd->callback([a, &global] {
    apply_runtime(global);
    const auto device = parse_device(global.device);
    const auto dtype = parse_dtype(global.dtype, device);
    std::string path = a->config;
    if (path.empty()) {
      const auto dir = find_in_checkout("assets/configs/stable-diffusion-v1-5/unet", "config.json");
      COLLAGE_CHECK_AT(!dir.empty(), "assets/configs/stable-diffusion-v1-5/unet/config.json", "",
                       "not found (run from the checkout or give --config)");
      path = (std::filesystem::path(dir) / "config.json").string();
    }
    const auto unet_config = UNet2DConditionConfig::from_json_file(path);
    const double t0 = now_seconds();
    auto unet = std::make_shared<UNet2DConditionModelImpl>(unet_config);
    auto net = std::make_shared<ControlNetModelImpl>(ControlNetConfig::from_unet(unet_config));
    int64_t unet_params = 0, net_params = 0;
    for (const auto& p : unet->parameters()) unet_params += p.numel();
    for (const auto& p : net->parameters()) net_params += p.numel();
    for (torch::nn::Module* m : {static_cast<torch::nn::Module*>(unet.get()), static_cast<torch::nn::Module*>(net.get())}) {
      m->to(device, dtype);
      m->eval();
    }
    if (device.is_cpu() && dtype == at::kFloat) {  // the pipeline's CPU fast paths, for both nets alike
      unet->set_channels_last(true);
      net->set_channels_last(true);
      pack_large_convs(*unet);
      pack_large_convs(*net);
    }
    std::cout << fmt::format("UNet {:.1f} M parameters, ControlNet {:.1f} M ({:.0f} %), built in {:.1f} s; {} {}, {} "
                             "threads\n",
                             unet_params / 1e6, net_params / 1e6, 100.0 * net_params / unet_params, now_seconds() - t0,
                             device.str(), c10::toString(dtype), at::get_num_threads());
    auto t = time_controlnet_step(*unet, *net, a->batch, a->latent, a->tokens, a->rounds);
    std::cout << fmt::format("batch {}, latent {}x{}, medians of {} interleaved rounds:\n", a->batch, a->latent,
                             a->latent, t.rounds);
    std::cout << fmt::format("  UNet step        {:.3f} s\n  ControlNet alone {:.3f} s ({:.1f} % of a UNet step)\n"
                             "  ControlNet step  {:.3f} s\n  extra cost of the ControlNet: {:.1f} % of a UNet step\n",
                             t.unet_seconds, t.controlnet_seconds, 100.0 * t.controlnet_seconds / t.unet_seconds,
                             t.step_seconds, 100.0 * t.extra_ratio());
  });
}

}  // namespace collage::cli
