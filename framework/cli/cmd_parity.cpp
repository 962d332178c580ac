// collage parity DIR: this implementation against reference tensors laid out like shared/golden/.
#include <filesystem>
#include <iostream>

#include "cli/common.h"
#include "core/core.h"
#include <ATen/Context.h>

#include "diffusion/diffusion.h"
#include "parity/parity.h"

namespace collage::cli {

void add_parity_command(CLI::App& app, GlobalOptions& global) {
  struct Args {
    std::string dir;
    bool all_rows = false;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "parity", "check every component folder of DIR (tokenizer, text_encoder_*, unet_*, vae, schedulers, "
                "pipeline, controlnet, clip*, lpips) against its reference tensors; exit 1 if any case is out of tolerance");
  cmd->add_option("dir", a->dir, "reference folder (e.g. ../shared/golden)")->required()->check(CLI::ExistingDirectory);
  cmd->add_flag("--all", a->all_rows, "print every case (default: one summary row per component plus failures)");
  cmd->callback([a, &global] {
    apply_runtime(global);
    parity::Target target;
    target.device = parse_device(global.device);
    // Parity is about float32 equality: "auto" means float32 here, on CUDA too (TF32 off).
    target.dtype = global.dtype == "auto" ? at::kFloat : parse_dtype(global.dtype, target.device);
    if (target.device.is_cuda()) {
      at::globalContext().setAllowTF32CuBLAS(false);
      at::globalContext().setAllowTF32CuDNN(false);
    }
    std::cerr << "parity on " << target.str()
              << (target.dtype == at::kFloat ? "" : " (reduced-precision tolerances)")
              << "\n";
    auto results = parity::run_parity(
        a->dir, [](const std::string& folder) {
          std::cerr << "checking " << std::filesystem::path(folder).filename().string() << " ...\n";
        },
        target);
    COLLAGE_CHECK_AT(!results.empty(), a->dir, "", "no component folder found (expected tokenizer/, unet_*/, ...)");
    std::cout << parity::format_table(results, a->all_rows);
    const size_t failures = parity::count_failures(results);
    if (failures > 0) throw Error(fmt::format("{} case(s) outside tolerance", failures), a->dir);
  });
}

}  // namespace collage::cli
