// collage parity DIR: this implementation against reference tensors laid out like shared/golden/.
#include <filesystem>
#include <iostream>

#include "cli/common.h"
#include "core/error.h"
#include <ATen/Context.h>

#include "diffusion/pipeline.h"
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
    std::cout << fmt::format("| {:<20} | {:<46} | {:>10} | {:>10} | {:>10} | {:>16} | {:<6} |\n", "component", "case",
                             "max_abs", "max|ref|", "rel", "tolerance", "status");
    std::cout << fmt::format("|{:-<22}|{:-<48}|{:->12}|{:->12}|{:->12}|{:->18}|{:-<8}|\n", "", "", "", "", "", "", "");
    auto row = [](const parity::CaseResult& r, const std::string& name) {
      const std::string tol = r.rtol > 0 || r.atol > 0 ? fmt::format("r{:.0e} a{:.0e}", r.rtol, r.atol) : "exact";
      if (r.skipped) {
        std::cout << fmt::format("| {:<20} | {:<46} | {:>10} | {:>10} | {:>10} | {:>16} | {:<6} |\n", r.component,
                                 name.substr(0, 46), "-", "-", "-", "-", "SKIP");
        return;
      }
      std::cout << fmt::format("| {:<20} | {:<46} | {:>10.3e} | {:>10.3e} | {:>10.3e} | {:>16} | {:<6} |\n",
                               r.component, name.substr(0, 46), r.max_abs_diff, r.max_abs_ref, r.rel, tol,
                               r.pass ? "ok" : "FAIL");
      if (!r.pass && !r.detail.empty()) std::cout << "    -> " << r.detail << "\n";
    };
    size_t failures = 0, skipped = 0;
    std::map<std::string, std::vector<const parity::CaseResult*>> by_component;
    for (const auto& r : results) {
      by_component[r.component].push_back(&r);
      failures += r.pass ? 0 : 1;
      skipped += r.skipped;
    }
    for (const auto& [component, rows] : by_component) {
      if (a->all_rows || rows.front()->skipped) {
        for (const auto* r : rows) row(*r, r->name);
        continue;
      }
      // Summary row: the case with the largest relative error, then every failure.
      const parity::CaseResult* worst = rows.front();
      size_t ok = 0;
      for (const auto* r : rows) {
        ok += r->pass;
        if (r->rel > worst->rel) worst = r;
      }
      row(*worst, fmt::format("{}/{} cases ok; worst: {}", ok, rows.size(), worst->name));
      for (const auto* r : rows)
        if (!r->pass && r != worst) row(*r, r->name);
    }
    std::cout << fmt::format("\n{} cases, {} passed, {} failed", results.size() - skipped,
                             results.size() - skipped - failures, failures);
    if (skipped) std::cout << fmt::format("; {} unknown folder(s) not checked", skipped);
    std::cout << "\n";
    if (failures > 0) throw Error(fmt::format("{} case(s) outside tolerance", failures), a->dir);
  });
}

}  // namespace collage::cli
