// collage sweep / merge / report: experiment configs run into an HDF5 store (framework/runner).
#include <iostream>

#include "cli/common.h"
#include "core/core.h"
#include "runner/runner.h"

namespace collage::cli {

void add_sweep_commands(CLI::App& app, GlobalOptions& global) {
  struct SweepArgs {
    std::string config, out, shard = "0/1", model, cache_dir;
    int64_t limit = -1;
    bool dry_run = false, wait = false;
    runner::SlurmOptions slurm;
  };
  auto a = std::make_shared<SweepArgs>();
  auto* sweep = app.add_subcommand(
      "sweep", "run an experiment config (methods x grids x collages x seeds) into an HDF5 store; resumes, shards");
  sweep->add_option("config", a->config, "experiment config (JSON with comments), e.g. experiments/quick.json")
      ->required();
  sweep->add_option("--out", a->out, "the HDF5 store, e.g. results/quick.h5 (an existing one is resumed)")->required();
  sweep->add_option("--shard", a->shard, "i/N: run only the units whose index mod N == i")->capture_default_str();
  sweep->add_option("--limit", a->limit, "run at most K units (collage x run, or an editing round) now; rerun to continue");
  sweep->add_option("--model", a->model, "diffusers pipeline folder overriding the config's model");
  sweep->add_option("--cache-dir", a->cache_dir, "textual-inversion cache (default: OUT without .h5 + .cache)");
  sweep->add_flag("--dry-run", a->dry_run, "validate the config and list the runs, no model work");
  auto* slurm = sweep->add_option("--slurm", a->slurm.tasks,
                    "submit to SLURM as a job array of N tasks (task i runs --shard i/N into its own store) plus a "
                    "merge job; rerun to resume (docs/cluster.md)");
  sweep->add_option("--partition", a->slurm.partition, "--slurm: the partition")->needs(slurm);
  sweep->add_option("--time", a->slurm.time, "--slurm: each task's time limit (e.g. 4:00:00)")->needs(slurm);
  sweep->add_option("--gres", a->slurm.gres, "--slurm: each task's generic resources (e.g. gpu:1)")->needs(slurm);
  sweep->add_option("--sbatch", a->slurm.sbatch_args, "--slurm: more sbatch arguments, e.g. \"--account=x --mem=8G\"")->needs(slurm);
  sweep->add_flag("--wait", a->wait, "--slurm: wait for the merge; exit 1 when a task left units unfinished")->needs(slurm);
  sweep->callback([a, &global] {
    const auto config = runner::load_config(a->config);  // every config error before any work
    const auto [index, count] = runner::parse_shard(a->shard);
    if (a->dry_run) {
      const auto collages = runner::load_dataset(config);
      const size_t runs = config.runs.size() + config.editing.rounds.size();
      std::cout << fmt::format("{}: {} collages x {} runs{} x {} seeds = {} images\n", a->config, collages.size(), runs,
                               config.editing.enabled
                                   ? fmt::format(" ({} of them editing rounds)", config.editing.rounds.size())
                                   : "",
                               config.seeds.size(), collages.size() * runs * config.seeds.size());
      for (const auto& r : config.runs) std::cout << fmt::format("  {}  {}\n", r.id, r.label);
      for (const auto& r : config.editing.rounds) std::cout << fmt::format("  {}  {}\n", r.id, r.label);
      return;
    }
    runner::SweepOptions o;
    o.out = a->out;
    o.shard_index = index;
    o.shard_count = count;
    o.limit = a->limit;
    o.model_override = a->model;
    o.cache_dir = a->cache_dir;
    o.device = global.device;
    o.dtype = global.dtype;
    if (a->slurm.tasks > 0) return run_sweep_on_slurm(config, o, a->slurm, a->wait, global);
    apply_runtime(global);
    runner::run_sweep(config, o);
  });

  auto m = std::make_shared<std::vector<std::string>>();
  auto* merge = app.add_subcommand("merge", "combine sweep stores (shards) into one: collage merge OUT.h5 IN1.h5 IN2.h5 ...");
  merge->add_option("files", *m, "OUT.h5 then the inputs")->required()->expected(3, -1);
  merge->callback([m] {
    std::vector<std::string> inputs(m->begin() + 1, m->end());
    runner::merge_stores(m->front(), inputs);
    std::cout << fmt::format("{}: {} items from {} stores\n", m->front(), runner::list_items(m->front()).size(),
                             inputs.size());
  });

  struct ReportArgs {
    std::string store, csv, html;
    runner::ReportOptions options;
  };
  auto r = std::make_shared<ReportArgs>();
  auto* report = app.add_subcommand("report", "a sweep store's scores per run and metric: mean and 95 % interval");
  report->add_option("store", r->store, "the HDF5 store")->required()->check(CLI::ExistingFile);
  report->add_option("--csv", r->csv, "also write the table (long form) as CSV");
  report->add_option("--layers", r->options.layers,
                     "score only the layers whose meta has this key true (e.g. unnamed_appearance, kept): per-layer "
                     "values averaged over those layers");
  report->add_option("--paired", r->options.paired,
                     "a run id or label: pair every other run with it (same collage and seed) and report the "
                     "differences, their 95 % interval and how many pairs got better / worse");
  report->add_option("--html", r->html,
                     "also write a static results page: DIR/index.html + DIR/img/ (tables, claims, every image with its "
                     "scores, noise maps, editing chains; DIR/figures/*.png when present)");
  report->callback([r] {
    std::cout << runner::report_markdown(r->store, r->options);
    if (!r->csv.empty()) {
      runner::write_report_csv(r->store, r->csv, r->options);
      std::cout << "wrote " << r->csv << "\n";
    }
    if (!r->html.empty()) std::cout << "results page: " << runner::write_report_html(r->store, r->html, r->options) << "\n";
  });
}

}  // namespace collage::cli
