// collage status (progress of a sweep store or a SLURM sweep's shards; --merge is the merge job's step) and
// the SLURM side of `collage sweep --slurm N` (framework/runner/slurm.cpp does the work).
#include <unistd.h>

#include <filesystem>
#include <iostream>

#include "cli/common.h"
#include "core/core.h"
#include "runner/runner.h"

namespace fs = std::filesystem;

namespace collage::cli {

namespace {

std::string self_executable() {
  std::error_code ec;
  const auto p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : p.string();
}

// Throws (exit 1) when the last merge did not find every unit done.
void check_merge_complete(const runner::SweepStatus& s) {
  if (s.merge_result.is_null())
    throw Error(fmt::format("the merge job {} ended without recording a result: see {}/merge.log", s.merge_job,
                            s.layout.logs),
                s.store);
  if (!s.merge_result.value("complete", false))
    throw Error(fmt::format("{} of {} units done; unfinished tasks: {} (logs: {}/task-<i>.log); rerun the same command "
                            "to resume them",
                            s.merge_result.value("units_done", 0), s.merge_result.value("units_total", 0),
                            s.merge_result.value("incomplete_tasks", Json::array()).dump(), s.layout.logs),
                s.store);
}

}  // namespace

void run_sweep_on_slurm(const runner::ExperimentConfig& config, const runner::SweepOptions& sweep,
                        runner::SlurmOptions slurm, bool wait, const GlobalOptions& global) {
  slurm.binary = self_executable();
  if (global.threads > 0) slurm.global_args.insert(slurm.global_args.end(), {"--threads", std::to_string(global.threads)});
  if (global.device != "cpu") slurm.global_args.insert(slurm.global_args.end(), {"--device", global.device});
  if (global.dtype != "auto") slurm.global_args.insert(slurm.global_args.end(), {"--dtype", global.dtype});
  const auto sub = runner::submit_slurm_sweep(config, sweep, slurm);
  int64_t done = 0, total = 0;
  for (const auto& p : sub.shards) done += p.done, total += p.total;
  std::cout << fmt::format("{}: {} of {} units already done; ", sub.layout.store, done, total)
            << (sub.tasks.empty() ? std::string("no task to run")
                                  : fmt::format("array job {} runs task(s) {} of {}", sub.array_job,
                                                fmt::join(sub.tasks, ","), slurm.tasks))
            << fmt::format(", merge job {}\n  scripts and logs: {}\n  progress: collage status {}\n", sub.merge_job,
                           sub.layout.folder, sweep.out);
  std::cout.flush();
  if (!wait) return;
  std::string last;
  runner::wait_for_job(sub.merge_job, 2.0, [&] {
    const auto s = runner::sweep_status(sweep.out);
    const std::string line = fmt::format("{}/{} units done, {} task(s) running, merge {}", s.done, s.total, s.running,
                                         s.merge_state);
    if (line != last) std::cerr << "  " << line << (s.eta_s >= 0 ? fmt::format(", ETA {:.0f} s", s.eta_s) : "") << "\n";
    last = line;
  });
  const auto s = runner::sweep_status(sweep.out);
  std::cout << runner::format_status(s);
  check_merge_complete(s);
  std::cout << fmt::format("merged: {} ({} items)\n", s.store, runner::list_items(s.store).size());
}

void add_status_command(CLI::App& app, GlobalOptions&) {
  struct Args {
    std::string store;
    bool merge = false;
  };
  auto a = std::make_shared<Args>();
  auto* status = app.add_subcommand(
      "status", "progress of a sweep: units done / total per run, and for a SLURM sweep per task (failed tasks, ETA)");
  status->add_option("store", a->store, "the store given to `collage sweep --out`")->required();
  status->add_flag("--merge", a->merge,
                   "merge the SLURM shard stores that exist into the store (the merge job's step); exit 1 when "
                   "units are unfinished");
  status->callback([a] {
    if (!a->merge) {
      std::cout << runner::format_status(runner::sweep_status(a->store));
      return;
    }
    const auto s = runner::merge_slurm_shards(a->store);
    std::cout << runner::format_status(s);
    check_merge_complete(s);
    std::cout << fmt::format("merged: {} ({} items)\n", s.store, runner::list_items(s.store).size());
  });
}

}  // namespace collage::cli
