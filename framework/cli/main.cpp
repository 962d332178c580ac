// collage: the command-line front end. Only this file catches errors and prints them.
#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>

#include <iostream>

#include "cli/common.h"
#include "core/error.h"
#include "core/version.h"

int main(int argc, char** argv) {
  CLI::App app{"collage: Collage Diffusion research framework (Stable Diffusion in libtorch)"};
  app.require_subcommand(1);
  app.fallthrough();  // global options may follow the subcommand too
  app.set_version_flag("--version", collage::framework_version() + " (" + collage::git_revision() + ")");
  collage::cli::GlobalOptions global;
  app.add_option("--threads", global.threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  app.add_option("--device", global.device, "cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--dtype", global.dtype, "auto (fp16 on CUDA, fp32 on CPU), float32, float16, bfloat16")
      ->capture_default_str();
  collage::cli::add_generate_commands(app, global);
  collage::cli::add_parity_command(app, global);
  collage::cli::add_bench_command(app, global);
  collage::cli::add_bench_controlnet_command(app, global);
  collage::cli::add_collage_commands(app, global);
  collage::cli::add_score_commands(app, global);
  collage::cli::add_train_commands(app, global);
  collage::cli::add_shapesworld_commands(app, global);
  collage::cli::add_sweep_commands(app, global);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const collage::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  } catch (const c10::Error& e) {
    std::cerr << "error (libtorch): " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
