// collage: the command-line front end. Only this file catches errors and prints them: a usage error (unknown
// flag, missing argument) exits 2, a runtime error (bad file, bad value, failed check) 1, each with one line.
#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>

#include <array>
#include <iostream>

#include "cli/common.h"
#include "core/core.h"

namespace {

// The commands, grouped the way users think of them: generation and methods at the top, the sandbox world and
// the benchmarks in their own groups.
void add_commands(CLI::App& app, collage::cli::GlobalOptions& global) {
  using namespace collage::cli;
  add_generate_commands(app, global);
  add_collage_commands(app, global);
  add_sweep_commands(app, global);
  add_status_command(app, global);
  add_import_commands(app, global);
  add_score_commands(app, global);
  add_parity_command(app, global);
  add_text_diff_command(app, global);
  auto* sandbox = app.add_subcommand(
      "sandbox", "the ShapesWorld sandbox: render, analyse, make-dataset, train, eval, train-clip, eval-clip");
  sandbox->require_subcommand(1);
  sandbox->fallthrough();
  add_shapesworld_commands(*sandbox, global);
  add_train_commands(*sandbox, global);
  auto* bench = app.add_subcommand("bench", "benchmarks: unet, attention, txt2img, metrics");
  bench->require_subcommand(1);
  bench->fallthrough();
  add_bench_commands(*bench, global);
  add_metrics_bench_command(*bench, global);
  add_bench_controlnet_command(*bench, global);
  add_old_command_names(app, global);
}

}  // namespace

namespace collage::cli {

void add_old_command_names(CLI::App& app, GlobalOptions& global) {
  // Registered once more in a holder, then moved to the top level under their old names.
  auto holder = std::make_shared<CLI::App>();
  add_shapesworld_commands(*holder, global);
  add_train_commands(*holder, global);
  add_metrics_bench_command(*holder, global);
  const std::vector<std::array<std::string, 3>> renamed = {
      {"render", "render-shapesworld", "sandbox render"},  {"analyse", "analyse-shapesworld", "sandbox analyse"},
      {"make-dataset", "make-dataset", "sandbox make-dataset"}, {"train", "train-model", "sandbox train"},
      {"eval", "eval-shapesworld", "sandbox eval"},        {"train-clip", "train-clip", "sandbox train-clip"},
      {"eval-clip", "eval-clip", "sandbox eval-clip"},     {"metrics", "bench-metrics", "bench metrics"}};
  for (const auto& [name, old_name, now] : renamed) {
    auto sub = holder->get_subcommand_ptr(name);
    holder->remove_subcommand(sub.get());
    sub->name(old_name);
    sub->group("");  // hidden from --help
    sub->preparse_callback([old = old_name, now = now](size_t) {
      std::cerr << "note: `collage " << old << "` is now `collage " << now << "`; the old name goes in the next release\n";
    });
    app.add_subcommand(sub);
  }
}

}  // namespace collage::cli

int main(int argc, char** argv) {
  collage::cli::reexec_with_openmp_policy(argv);  // first: before any thread pool starts (docs/threading.md)
  CLI::App app{"collage: Collage Diffusion research framework (Stable Diffusion in libtorch)"};
  app.require_subcommand(1);
  app.fallthrough();  // global options may follow the subcommand too
  app.set_version_flag("--version", collage::framework_version() + " (" + collage::git_revision() + ")");
  collage::cli::GlobalOptions global;
  app.add_option("--threads", global.threads, "CPU threads (default: the cores this process may use)")->check(CLI::NonNegativeNumber);
  app.add_option("--device", global.device, "cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--dtype", global.dtype, "auto (fp16 on CUDA, fp32 on CPU), float32, float16, bfloat16")
      ->capture_default_str();
  add_commands(app, global);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);  // prints the usage message
    return 2;
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
