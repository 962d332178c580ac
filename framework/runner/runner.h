// The experiment runner: JSON experiment configs (methods x parameter grids x collages x seeds), sweeps that
// write every finished item to an HDF5 store at once (resumable, shardable), merging shard files, and
// reports (mean and 95 % interval per run and metric). Store schema: framework/runner/README.md.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "collage/collage.h"
#include "core/core.h"
#include "methods/methods.h"

namespace collage {
class StableDiffusion;
}

namespace collage::runner {

// One run: a method spec with all its parameters (defaults filled in) and a stable id.
struct RunSpec {
  std::string id;            // short hash of (normalised spec, full params): stable across config edits
  std::string method;        // normalised spec, e.g. "sdedit+ca"
  Json params;               // every parameter, defaults filled in (MethodSpec::params)
  Json overrides;            // the parameters the config set (params + grid point), for labels
  std::string label;         // "sdedit+ca strength=0.5 ca_w_pos=0.3"
  std::string where;         // "runs[1]" (config location)
};

// The stable id of a method spec + parameters (10 hex digits of a 64-bit FNV-1a hash passed through a splitmix64 finaliser).
std::string run_id(const MethodSpec& spec);

struct DatasetSpec {
  std::string folder;              // a collage dataset folder (resolved), or "" when generated
  bool generate = false;           // generated in memory
  std::string world = "shapesworld";
  int64_t n = 8;
  uint64_t seed = 0;
  int64_t size = 64;
  double kept_strength = -1;         // see datasets::ShapesWorldCollageOptions
  double unnamed_probability = 0.5;
  double unnamed_colour_probability = 0;
  double w_pos = 1;                  // every layer's w_pos ("w_pos"; configs written before it existed say 0)
};

// The iterative editing protocol (config key "editing"): per collage, start from the outputs of one run (all
// seeds), pick the best seed by a metric, regenerate one layer from that image with every seed, pick again,
// and so on for `rounds` rounds, cycling through `layers`. Round r is a run of its own (its id and label).
struct EditingSpec {
  bool enabled = false;
  size_t start_run = 0;            // index into ExperimentConfig::runs: the outputs that start each chain
  std::string pick;                // per-image metric that chooses the image edited next (must be in metrics)
  bool pick_higher = true;         // the metric's direction
  std::vector<int64_t> layers;     // layer indices regenerated in turn; empty = every layer but the first
  std::vector<RunSpec> rounds;     // rounds[r - 1]: the run of round r (params: edit_from/edit_regenerate are
                                   // placeholders, set per collage when it runs)
};

// A claim the experiment tests (config key "claims"): `run` beats `base` on `metric` (by its direction), paired
// item by item; `layers` = "" scores whole images, else the layers whose meta has that key (ReportOptions::layers).
struct ClaimSpec {
  std::string text;    // "CA raises mask IoU"
  std::string run, base;  // run labels or ids
  std::string metric;
  std::string layers;
};
// Parses a config's "claims" list (errors name `path` and "claims[i].key"); `run_labels` non-empty: every run and
// base must be one of them.
std::vector<ClaimSpec> parse_claims(const Json& claims, const std::string& path,
                                    const std::vector<std::string>& run_labels);

struct ExperimentConfig {
  std::string path;               // the config file ("" when parsed from text)
  Json json;                      // the config as parsed
  DatasetSpec dataset;
  std::string model;              // "" = the embedded default model
  std::vector<uint64_t> seeds{0};
  int64_t steps = 30;
  double guidance = 5.0;
  std::string scheduler;          // "" = the model's own
  std::string negative_prompt;
  std::vector<std::string> metrics;
  std::string segmenter = "auto";
  std::string clip, clip_tokenizer, lpips;  // metric model folders ("" = assets/ defaults when present)
  bool save_latents = false, save_attention = false, save_noise_map = false;
  int64_t limit_collages = -1;    // "max_collages": use only the first K collages of the dataset
  std::vector<RunSpec> runs;
  EditingSpec editing;
  std::vector<ClaimSpec> claims;

  // Settings that must match when a sweep resumes into an existing store.
  Json settings() const;
};

// Parses and validates a config (no model work). Errors name `path` and the key, e.g.
// "experiments/x.json: 'runs[1].grid.strength': the grid list is empty".
ExperimentConfig parse_config(const Json& json, const std::string& path);
ExperimentConfig parse_config_text(const std::string& text, const std::string& path);
ExperimentConfig load_config(const std::string& path);

// A collage of the dataset, named for the store.
struct NamedCollage {
  std::string name;
  Collage collage;
};
// Loads (or generates) the dataset's collages, validated.
std::vector<NamedCollage> load_dataset(const ExperimentConfig& config);

struct SweepOptions {
  std::string out;                 // results/NAME.h5
  int shard_index = 0, shard_count = 1;
  int64_t limit = -1;              // at most this many units (collage x run) this invocation; -1 = all
  std::string model_override;      // --model
  std::string device = "cpu", dtype = "auto";
  std::string cache_dir;           // TI cache; "" = <out without .h5>.cache next to the output
  bool quiet = false;
  std::function<void(const std::string&)> log;  // progress lines (default: stderr)
};

struct SweepSummary {
  int64_t units_total = 0;         // units of this shard
  int64_t units_done_before = 0;   // already in the store
  int64_t units_run = 0;           // run this invocation
  int64_t items_written = 0;
  double wall_s = 0;               // the whole invocation (loading included)
  double load_s = 0;               // model + metric models
  double method_s = 0;             // sum of the method calls' "total" timings
  double scoring_s = 0, write_s = 0;
};

// Parses "i/N" (errors name --shard).
std::pair<int, int> parse_shard(const std::string& text);

SweepSummary run_sweep(const ExperimentConfig& config, const SweepOptions& options);

// A unit of a sweep: (collage, run), or (collage, editing round) when round > 0 (run = round - 1 then indexes
// config.editing.rounds). Units are numbered collage-major; shard i of N takes those with index % N == i (a
// collage's editing chain goes with its start-run unit).
struct SweepUnit {
  size_t collage = 0, run = 0;
  int64_t round = 0;
};
std::vector<SweepUnit> sweep_units(const ExperimentConfig& config, size_t collages, int shard_index, int shard_count);
const RunSpec& sweep_unit_run(const ExperimentConfig& config, const SweepUnit& unit);
std::string sweep_item_name(const std::string& collage, const std::string& run_id, uint64_t seed);  // "c__run__seed7"

// ---- progress of a store and sweeps on SLURM (slurm.cpp)

struct RunProgress {
  std::string run_id, label;
  int64_t done = 0, total = 0;  // units
};
// How far a store (one shard of a sweep) is: a unit is done when all its seeds' items are complete. Reads the
// store without locking it, so a sweep writing it is never disturbed (a read that meets a write in progress is
// retried).
struct StoreProgress {
  std::string store;
  bool exists = false;
  int64_t done = 0, total = 0;     // units
  double unit_seconds = 0;         // sum of the done units' wall times (items' timings.unit_wall)
  std::vector<RunProgress> runs;   // in config order
};
StoreProgress store_progress(const ExperimentConfig& config, const std::vector<NamedCollage>& collages,
                             const std::string& store, int shard_index, int shard_count);

// Where a SLURM sweep into STORE keeps its files: STORE without ".h5" + ".slurm/" holds the sbatch scripts
// (task.sbatch, merge.sbatch), state.json (the submission), merge.json (the last merge's outcome), logs/ and
// the shard stores shard-<i>-of-<N>.h5.
struct SlurmLayout {
  std::string store, folder, task_script, merge_script, state, merge_result, logs;
  int tasks = 0;
  std::string shard_store(int index) const;
  std::string task_log(int index) const;
};
SlurmLayout slurm_layout(const std::string& store, int tasks);

struct SlurmOptions {
  int tasks = 0;                     // --slurm N: the array's size (= shards)
  std::string partition, time, gres; // #SBATCH --partition / --time / --gres ("" = cluster default)
  std::string sbatch_args;           // --sbatch: further sbatch arguments, as typed on a shell
  std::string binary;                // the collage executable every task runs (absolute; on the shared filesystem)
  std::vector<std::string> global_args;  // global options every task gets: --threads, --device, --dtype
};

struct SlurmSubmission {
  SlurmLayout layout;
  std::vector<int> tasks;            // array indices submitted (the shards not yet complete)
  std::string array_job, merge_job;  // job ids ("" when nothing was submitted for the array)
  std::vector<StoreProgress> shards; // before the submission
};
// Writes the sbatch scripts and submits the array (only the shards with unfinished units: a rerun resumes)
// and a merge job that runs after it (afterany). Refuses while jobs of an earlier submission are still queued,
// when the layout was set up for another task count, and when STORE exists but is not a merge of the shards.
SlurmSubmission submit_slurm_sweep(const ExperimentConfig& config, const SweepOptions& sweep,
                                   const SlurmOptions& slurm);

// The status of a store: a SLURM sweep's shards (with the queue's view of their tasks) or a plain store.
struct TaskStatus {
  int index = 0;
  StoreProgress progress;
  std::string state;                 // the queue's state (PENDING, RUNNING, ...); "done" when the shard is
                                     // complete, "failed" when incomplete and no longer queued, "not submitted"
  std::string log_tail;              // failed: the last line of the task's log
};
struct SweepStatus {
  std::string store, config_path;
  bool slurm = false;                // a SLURM sweep (STORE.slurm/state.json exists)
  SlurmLayout layout;
  std::string array_job, merge_job, merge_state;  // merge_state: the queue's, else "done"/"not run"
  Json merge_result;                 // merge.json of the last merge (null before one ran)
  std::vector<TaskStatus> tasks;     // one per shard (a plain store: one)
  std::vector<RunProgress> runs;     // summed over the shards
  int64_t done = 0, total = 0;
  int64_t running = 0;               // tasks running now
  double eta_s = -1;                 // remaining units x mean unit time / running tasks; -1 = none running
  std::vector<int> failed;           // tasks that ended with units unfinished
};
SweepStatus sweep_status(const std::string& store);
std::string format_status(const SweepStatus& status);

// The merge job's step: merges the shard stores that exist into STORE, writes merge.json (complete, units,
// failed tasks) and returns the status after the merge.
SweepStatus merge_slurm_shards(const std::string& store);

// Waits until `job` has left the queue (polling squeue every `poll_s`); `tick` is called after each poll.
void wait_for_job(const std::string& job, double poll_s,
                  const std::function<void()>& tick = {});

// Combines shard stores into `out` (items, runs, collages; root attributes of the first input) and rebuilds
// the scores table. Inputs must come from the same experiment settings.
void merge_stores(const std::string& out, const std::vector<std::string>& inputs);

// ---- reading a store back

struct ScoreRow {
  std::string item, collage, run_id, method, label;
  uint64_t seed = 0;
  std::string metric;
  double value = 0;  // NaN when skipped / not scored
};
std::vector<ScoreRow> read_scores(const std::string& store);  // from the items (not the table)
std::vector<ScoreRow> read_scores_table(const std::string& store);
std::vector<std::string> list_items(const std::string& store);  // complete items, sorted
Json read_item_attrs(const std::string& store, const std::string& item);

// Rebuilds /scores_table from the items.
void rebuild_scores_table(const std::string& store);

struct ReportRow {
  std::string run_id, method, label, metric;
  int64_t n = 0;
  double mean = 0, sd = 0, lo = 0, hi = 0;  // 95 %: mean +- 1.96 sd / sqrt(n)
};
std::vector<ReportRow> summarise(const std::vector<ScoreRow>& rows);

// What a report aggregates.
struct ReportOptions {
  // "" = each item's value (the mean over its object layers). Otherwise a key of the layers' meta (e.g.
  // "unnamed_appearance", "kept"): each item's score is the mean of its per-layer values over the layers whose
  // meta has that key true (or a non-zero number); metrics without per-layer values and items without such a
  // layer drop out.
  std::string layers;
  // "" = no comparison. Otherwise a run id or label: every other run is paired with it item by item (same
  // collage and seed) and the differences (run - base) summarised.
  std::string paired;
};

// The per-layer scores of the layers selected by `layer_key` (see ReportOptions::layers), one row per item and
// metric. Throws collage::Error naming the store and --layers when no layer in the store has the key.
std::vector<ScoreRow> read_layer_scores(const std::string& store, const std::string& layer_key);

// One run against the base run: differences (run - base) over items matched on collage and seed.
struct PairedRow {
  std::string run_id, label, metric;
  int64_t n = 0;                // pairs where both values are finite
  double mean = 0, lo = 0, hi = 0;  // mean difference and its 95 % interval (mean +- 1.96 sd / sqrt(n))
  int64_t better = 0, worse = 0;    // pairs where the run is better / worse than the base (metric direction)
};
// `base`: a run id or label present in `rows` (else collage::Error listing the runs).
std::vector<PairedRow> paired_differences(const std::vector<ScoreRow>& rows, const std::string& base);

// A claim checked on a store: the paired difference (run - base) and the verdict by its 95 % interval.
struct ClaimResult {
  ClaimSpec claim;
  PairedRow paired;     // n = 0 when no pair was found
  bool holds = false;   // the whole interval lies on the better side of zero (metric direction)
  std::string verdict;  // "holds" / "not shown"
};
// The claims of the store's config (its "claims" key), each evaluated; empty when it has none.
std::vector<ClaimResult> evaluate_claims(const std::string& store);
// One line per claim: "holds: CA raises mask IoU (sdedit+ca vs sdedit, mask_iou +0.12, 95 % 0.06..0.18, 24 pairs)".
std::string claim_line(const ClaimResult& result);

// The base run of the paired tables when none is given: the base of the config's first claim, else "".
std::string default_paired_base(const std::string& store);

std::string report_markdown(const std::string& store, const ReportOptions& options = {});
void write_report_csv(const std::string& store, const std::string& csv_path, const ReportOptions& options = {});

// A self-contained static results page (framework/runner/report_html.cpp): DIR/index.html and DIR/img/*.png, no
// server or network needed: settings, per-run and paired tables, claims, per-collage rows with every run's
// image per seed (scores on hover), noise maps, editing chains, and the PNGs of DIR/figures/ when present.
// `options.paired` "" = default_paired_base. Returns the path of index.html.
std::string write_report_html(const std::string& store, const std::string& dir, const ReportOptions& options = {});

}  // namespace collage::runner
