// Progress of sweep stores, and sweeps on SLURM: a job array whose task i runs shard i of N into its own store,
// then a merge job (afterany) that merges what completed and records what did not.
#include <sys/wait.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "core/core.h"
#include "runner/h5.h"
#include "runner/runner.h"

namespace fs = std::filesystem;

namespace collage::runner {

namespace {

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs a shell command; returns its exit status and what it printed (stdout and stderr).
int run_command(const std::string& command, std::string& output) {
  output.clear();
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return -1;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, n);
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

std::string last_line(const std::string& path) {
  std::ifstream in(path);
  std::string line, last;
  while (std::getline(in, line))
    if (!trim(line).empty()) last = trim(line);
  return last;
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

// The queue's state of each listed job and array task ("123_4" -> RUNNING). Jobs that left the queue are
// absent. Throws when squeue fails for another reason than unknown job ids (purged jobs).
std::map<std::string, std::string> queue_states(const std::vector<std::string>& jobs) {
  std::map<std::string, std::string> states;
  std::vector<std::string> ids;
  for (const auto& j : jobs)
    if (!j.empty()) ids.push_back(j);
  if (ids.empty()) return states;
  std::string out;
  const int rc = run_command(fmt::format("squeue -h -r -o '%i|%T' -j {}", fmt::join(ids, ",")), out);
  if (rc != 0) {
    if (out.find("Invalid job id") != std::string::npos) return states;
    throw Error(fmt::format("squeue failed (exit {}): {}", rc, trim(out)), "", "squeue");
  }
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    const auto bar = line.find('|');
    if (bar != std::string::npos) states[line.substr(0, bar)] = trim(line.substr(bar + 1));
  }
  return states;
}

// A job id from `sbatch --parsable` ("123" or "123;cluster").
std::string submit(const std::string& command) {
  std::string out;
  const int rc = run_command(command, out);
  COLLAGE_CHECK_AT(rc == 0, "", "sbatch", "submitting failed (exit {}): {}\n  command: {}", rc, trim(out), command);
  std::string id = trim(out);
  if (const auto nl = id.rfind('\n'); nl != std::string::npos) id = id.substr(nl + 1);  // warnings first
  id = id.substr(0, id.find(';'));
  COLLAGE_CHECK_AT(!id.empty() && id.find_first_not_of("0123456789") == std::string::npos, "", "sbatch",
                   "unexpected answer '{}' to: {}", trim(out), command);
  return id;
}

ExperimentConfig config_of_state(const Json& state) {
  fs::path config = state.at("config").get<std::string>();
  const fs::path cwd = state.value("cwd", std::string());
  // The config path as typed, relative to the folder the sweep was submitted from (the tasks run there too).
  if (config.is_relative() && !cwd.empty() && !fs::exists(config)) config = cwd / config;
  return load_config(config.string());
}

// The units of a shard that are done, and whether each item of them exists and is complete. Read unlocked;
// a read that meets a write in progress fails and is retried.
StoreProgress read_progress_once(const ExperimentConfig& config, const std::vector<NamedCollage>& collages,
                                 const std::string& store, int shard_index, int shard_count) {
  StoreProgress p;
  p.store = store;
  std::map<std::string, size_t> run_index;
  auto add_run = [&](const RunSpec& r) {
    if (run_index.count(r.id)) return;
    run_index[r.id] = p.runs.size();
    p.runs.push_back({r.id, r.label, 0, 0});
  };
  for (const auto& r : config.runs) add_run(r);
  for (const auto& r : config.editing.rounds) add_run(r);
  const auto units = sweep_units(config, collages.size(), shard_index, shard_count);
  p.total = static_cast<int64_t>(units.size());
  for (const auto& u : units) ++p.runs[run_index.at(sweep_unit_run(config, u).id)].total;
  p.exists = fs::exists(store);
  if (!p.exists) return p;
  h5::Handle file = h5::open_file_unlocked(store);
  for (const auto& u : units) {
    const auto& run = sweep_unit_run(config, u);
    bool done = true;
    double wall = 0;
    for (auto seed : config.seeds) {
      const std::string path = "items/" + sweep_item_name(collages[u.collage].name, run.id, seed);
      if (!h5::exists(file, path)) {
        done = false;
        break;
      }
      h5::Handle g = h5::open_group(file, path);
      if (!h5::has_attr(g, "complete")) {
        done = false;
        break;
      }
      if (wall == 0 && h5::has_attr(g, "timings"))
        wall = Json::parse(h5::attr_string(g, "timings")).value("unit_wall", 0.0);
    }
    if (!done) continue;
    ++p.done;
    ++p.runs[run_index.at(run.id)].done;
    p.unit_seconds += wall;
  }
  return p;
}

std::string task_name(const std::string& store) { return "collage-" + fs::path(store).stem().string(); }

}  // namespace

StoreProgress store_progress(const ExperimentConfig& config, const std::vector<NamedCollage>& collages,
                             const std::string& store, int shard_index, int shard_count) {
  for (int attempt = 0;; ++attempt) {
    try {
      return read_progress_once(config, collages, store, shard_index, shard_count);
    } catch (const Error&) {
      if (attempt >= 20) throw;  // not a write in progress (~10 ms per unit): a damaged file
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
}

// ------------------------------------------------------------------------------------------------

std::string SlurmLayout::shard_store(int index) const {
  return (fs::path(folder) / fmt::format("shard-{}-of-{}.h5", index, tasks)).string();
}

std::string SlurmLayout::task_log(int index) const { return (fs::path(logs) / fmt::format("task-{}.log", index)).string(); }

SlurmLayout slurm_layout(const std::string& store, int tasks) {
  SlurmLayout l;
  const fs::path p = fs::absolute(store).lexically_normal();
  l.store = p.string();
  l.folder = (p.parent_path() / (p.stem().string() + ".slurm")).string();
  l.task_script = (fs::path(l.folder) / "task.sbatch").string();
  l.merge_script = (fs::path(l.folder) / "merge.sbatch").string();
  l.state = (fs::path(l.folder) / "state.json").string();
  l.merge_result = (fs::path(l.folder) / "merge.json").string();
  l.logs = (fs::path(l.folder) / "logs").string();
  l.tasks = tasks;
  return l;
}

namespace {

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  COLLAGE_CHECK_AT(out.good(), path, "", "cannot write");
}

// #SBATCH lines shared by the task and merge scripts.
std::string common_directives(const SlurmOptions& o) {
  std::string s;
  if (!o.partition.empty()) s += "#SBATCH --partition=" + o.partition + "\n";
  if (!o.time.empty()) s += "#SBATCH --time=" + o.time + "\n";
  return s;
}

std::string task_script(const ExperimentConfig& config, const SweepOptions& sweep, const SlurmOptions& o,
                        const SlurmLayout& l, const std::string& cwd, const std::string& cache_dir) {
  int threads = 0;
  for (size_t i = 0; i + 1 < o.global_args.size(); ++i)
    if (o.global_args[i] == "--threads") threads = std::stoi(o.global_args[i + 1]);
  std::string s = "#!/bin/bash\n";
  s += fmt::format(
      "# collage sweep on SLURM: array task i runs shard i of {} of {} into its own store,\n"
      "# {}/shard-<i>-of-{}.h5; the merge job (merge.sbatch) then merges them into {}.\n"
      "# Written by `collage sweep ... --slurm {}`; rerunning that command resumes (it submits only the\n"
      "# unfinished shards). To resubmit by hand:\n"
      "#   sbatch --array=0-{} {}\n"
      "#   sbatch --dependency=afterany:<the array's job id> {}\n",
      l.tasks, config.path, l.folder, l.tasks, l.store, l.tasks, l.tasks - 1, l.task_script, l.merge_script);
  s += "#SBATCH --job-name=" + task_name(l.store) + "\n";
  s += fmt::format("#SBATCH --array=0-{}\n", l.tasks - 1);
  s += "#SBATCH --output=" + l.logs + "/task-%a.log\n";
  s += "#SBATCH --open-mode=append\n";
  s += common_directives(o);
  if (!o.gres.empty()) s += "#SBATCH --gres=" + o.gres + "\n";
  if (threads > 0) s += fmt::format("#SBATCH --cpus-per-task={}\n", threads);
  s += "set -euo pipefail\n";
  s += "cd " + shell_quote(cwd) + "\n";
  s += "i=$SLURM_ARRAY_TASK_ID\n";
  s += "echo \"== task $i of " + std::to_string(l.tasks) + " on $(hostname) at $(date -u +%FT%TZ) (job $SLURM_JOB_ID)\"\n";
  std::string cmd = "exec " + shell_quote(o.binary);
  for (const auto& a : o.global_args) cmd += " " + shell_quote(a);
  cmd += " sweep " + shell_quote(config.path);
  cmd += " --out " + shell_quote(l.folder) + "/shard-$i-of-" + std::to_string(l.tasks) + ".h5";
  cmd += " --shard $i/" + std::to_string(l.tasks);
  cmd += " --cache-dir " + shell_quote(cache_dir);
  if (!sweep.model_override.empty()) cmd += " --model " + shell_quote(sweep.model_override);
  if (sweep.limit >= 0) cmd += " --limit " + std::to_string(sweep.limit);
  return s + cmd + "\n";
}

std::string merge_script(const SlurmOptions& o, const SlurmLayout& l, const std::string& cwd) {
  std::string s = "#!/bin/bash\n";
  s += "# Merges the shard stores of " + l.folder + " into " + l.store + " (what completed) and\n";
  s += "# records what did not in merge.json; runs after the array (afterany), exits 1 when units are missing.\n";
  s += "#SBATCH --job-name=" + task_name(l.store) + "-merge\n";
  s += "#SBATCH --output=" + l.logs + "/merge.log\n";
  s += "#SBATCH --open-mode=append\n";
  s += common_directives(o);
  s += "set -uo pipefail\n";
  s += "cd " + shell_quote(cwd) + "\n";
  s += "echo \"== merge on $(hostname) at $(date -u +%FT%TZ) (job $SLURM_JOB_ID)\"\n";
  return s + "exec " + shell_quote(o.binary) + " --threads 1 status " + shell_quote(l.store) + " --merge\n";
}

// Refuses a second submission while the first one's jobs are queued (two tasks writing one shard store would
// damage it), and a change of the task count (the shard stores of N tasks do not fit M).
void check_previous_submission(const SlurmLayout& l) {
  if (!fs::exists(l.state)) return;
  const Json state = read_json_file(l.state);
  const int tasks = state.value("tasks", 0);
  COLLAGE_CHECK_AT(tasks == l.tasks, l.state, "tasks",
                   "this sweep was set up for --slurm {} (shard stores shard-<i>-of-{}.h5): rerun with --slurm {}, "
                   "or remove {} to start over",
                   tasks, tasks, tasks, l.folder);
  const std::string array_job = state.value("array_job", ""), merge_job = state.value("merge_job", "");
  const auto states = queue_states({array_job, merge_job});
  COLLAGE_CHECK_AT(states.empty(), l.state, "",
                   "jobs of the previous submission are still queued ({} {}): wait for them (collage status {}) or "
                   "cancel them (scancel {} {}) before resubmitting",
                   array_job, merge_job, l.store, array_job, merge_job);
}

void check_store_is_merge(const SlurmLayout& l) {
  if (!fs::exists(l.store)) return;
  h5::Handle f = h5::open_file_unlocked(l.store);
  COLLAGE_CHECK_AT(h5::has_attr(f, "merged_from"), l.store, "",
                   "the store exists and is not a merge of SLURM shards; a SLURM sweep writes its shards to {} and "
                   "merges them into the store: use another --out",
                   l.folder);
}

}  // namespace

SlurmSubmission submit_slurm_sweep(const ExperimentConfig& config, const SweepOptions& sweep, const SlurmOptions& o) {
  COLLAGE_CHECK_AT(o.tasks >= 1, "", "--slurm", "the number of tasks must be at least 1 (got {})", o.tasks);
  COLLAGE_CHECK_AT(sweep.shard_count == 1, "", "--shard", "--slurm shards the sweep itself; leave out --shard");
  COLLAGE_CHECK_AT(!o.binary.empty() && fs::exists(o.binary), "", "--slurm", "the collage executable '{}' is not found",
                   o.binary);
  SlurmSubmission sub;
  const SlurmLayout l = slurm_layout(sweep.out, o.tasks);
  sub.layout = l;
  check_previous_submission(l);
  check_store_is_merge(l);
  const auto collages = load_dataset(config);
  std::vector<std::string> pending;
  for (int i = 0; i < o.tasks; ++i) {
    sub.shards.push_back(store_progress(config, collages, l.shard_store(i), i, o.tasks));
    if (sub.shards.back().done < sub.shards.back().total || !sub.shards.back().exists) {
      sub.tasks.push_back(i);
      pending.push_back(std::to_string(i));
    }
  }
  fs::create_directories(l.logs);
  const std::string cwd = fs::current_path().string();
  std::string cache_dir = sweep.cache_dir;
  if (cache_dir.empty()) {  // one TI cache for all tasks, where a local sweep into the store keeps it
    const fs::path p = l.store;
    cache_dir = (p.parent_path() / (p.stem().string() + ".cache")).string();
  }
  cache_dir = fs::absolute(cache_dir).string();
  write_text(l.task_script, task_script(config, sweep, o, l, cwd, cache_dir));
  write_text(l.merge_script, merge_script(o, l, cwd));
  fs::remove(l.merge_result);  // a stale outcome must not answer for this submission
  const std::string extra = o.sbatch_args.empty() ? "" : " " + o.sbatch_args;  // as typed: the shell splits it
  if (!sub.tasks.empty())
    sub.array_job = submit(fmt::format("sbatch --parsable --array={}{} {}", fmt::join(pending, ","), extra,
                                       shell_quote(l.task_script)));
  const std::string dependency = sub.array_job.empty() ? "" : " --dependency=afterany:" + sub.array_job;
  try {
    sub.merge_job = submit(fmt::format("sbatch --parsable{}{} {}", dependency, extra, shell_quote(l.merge_script)));
  } catch (const Error&) {
    std::string ignored;
    if (!sub.array_job.empty()) run_command("scancel " + sub.array_job, ignored);  // no array without its merge
    throw;
  }
  Json state = {{"config", config.path},   {"cwd", cwd},          {"store", l.store},
                {"tasks", o.tasks},        {"array_job", sub.array_job}, {"merge_job", sub.merge_job},
                {"submitted_tasks", sub.tasks}, {"submitted_at", utc_now()}};
  write_json_file(l.state, state);
  return sub;
}

// ------------------------------------------------------------------------------------------------

namespace {

void sum_runs(std::vector<RunProgress>& into, const std::vector<RunProgress>& add) {
  if (into.empty()) {
    into = add;
    return;
  }
  for (size_t i = 0; i < into.size() && i < add.size(); ++i) {
    into[i].done += add[i].done;
    into[i].total += add[i].total;
  }
}

void finish_totals(SweepStatus& s) {
  double seconds = 0;
  for (const auto& t : s.tasks) {
    s.done += t.progress.done;
    s.total += t.progress.total;
    seconds += t.progress.unit_seconds;
    sum_runs(s.runs, t.progress.runs);
  }
  if (s.running > 0 && s.done > 0 && s.done < s.total)  // only while tasks run (a plain store: unknown)
    s.eta_s = static_cast<double>(s.total - s.done) * seconds / static_cast<double>(s.done) /
              static_cast<double>(std::max<int64_t>(1, s.running));
}

SweepStatus plain_store_status(const std::string& store) {
  SweepStatus s;
  s.store = store;
  std::string config_text, config_path;
  {
    h5::Handle f = h5::open_file_unlocked(store);
    COLLAGE_CHECK_AT(h5::has_attr(f, "config"), store, "config", "not a sweep store (no 'config' attribute)");
    config_text = h5::attr_string(f, "config");
    config_path = h5::has_attr(f, "config_path") ? h5::attr_string(f, "config_path") : "";
  }
  s.config_path = config_path;
  const auto config = parse_config_text(config_text, config_path);
  TaskStatus t;
  t.progress = store_progress(config, load_dataset(config), store, 0, 1);
  t.state = t.progress.done == t.progress.total ? "done" : "incomplete";
  s.tasks.push_back(t);
  finish_totals(s);
  return s;
}

}  // namespace

SweepStatus sweep_status(const std::string& store) {
  const SlurmLayout probe = slurm_layout(store, 0);
  if (!fs::exists(probe.state)) {
    COLLAGE_CHECK_AT(fs::exists(store), store, "", "no such store, and no SLURM sweep into it ({} is missing)", probe.state);
    return plain_store_status(store);
  }
  const Json state = read_json_file(probe.state);
  SweepStatus s;
  s.slurm = true;
  s.store = probe.store;
  s.layout = slurm_layout(store, state.value("tasks", 0));
  s.config_path = state.value("config", "");
  s.array_job = state.value("array_job", "");
  s.merge_job = state.value("merge_job", "");
  const auto config = config_of_state(state);
  const auto collages = load_dataset(config);
  const auto queue = queue_states({s.array_job, s.merge_job});
  const auto submitted = state.value("submitted_tasks", std::vector<int>());
  for (int i = 0; i < s.layout.tasks; ++i) {
    TaskStatus t;
    t.index = i;
    t.progress = store_progress(config, collages, s.layout.shard_store(i), i, s.layout.tasks);
    const bool complete = t.progress.exists && t.progress.done == t.progress.total;
    const auto q = queue.find(s.array_job + "_" + std::to_string(i));
    if (q != queue.end()) {
      t.state = q->second;
    } else if (complete) {
      t.state = "done";
    } else if (std::find(submitted.begin(), submitted.end(), i) != submitted.end()) {
      t.state = "failed";
      t.log_tail = last_line(s.layout.task_log(i));
      s.failed.push_back(i);
    } else {
      t.state = "not submitted";
    }
    if (t.state == "RUNNING") ++s.running;
    s.tasks.push_back(t);
  }
  const auto m = queue.find(s.merge_job);
  if (fs::exists(s.layout.merge_result)) s.merge_result = read_json_file(s.layout.merge_result);
  s.merge_state = m != queue.end() ? m->second : (s.merge_result.is_null() ? "not run" : "done");
  finish_totals(s);
  return s;
}

std::string format_status(const SweepStatus& s) {
  std::string out;
  if (s.slurm) {
    out += fmt::format("{}: SLURM sweep of {} in {} tasks (array job {}, merge job {}: {})\n", s.store, s.config_path,
                       s.layout.tasks, s.array_job.empty() ? "-" : s.array_job, s.merge_job, s.merge_state);
    out += "  task  state          units\n";
    for (const auto& t : s.tasks) {
      out += fmt::format("  {:>4}  {:<13}  {}/{}", t.index, t.state, t.progress.done, t.progress.total);
      if (!t.log_tail.empty()) out += "   log: " + t.log_tail;
      out += "\n";
    }
  } else {
    out += fmt::format("{}: store of {}\n", s.store, s.config_path);
  }
  out += "  run         units  label\n";
  for (const auto& r : s.runs) out += fmt::format("  {:<10}  {:>5}  {}\n", r.run_id, fmt::format("{}/{}", r.done, r.total), r.label);
  out += fmt::format("  total: {}/{} units done", s.done, s.total);
  if (s.slurm) out += fmt::format(", {} task(s) running", s.running);
  if (s.eta_s >= 0) out += fmt::format(", ETA {:.0f} s", s.eta_s);
  out += "\n";
  if (!s.failed.empty())
    out += fmt::format("  failed tasks: {} (their logs: {}/task-<i>.log); rerun the same `collage sweep ... --slurm {}` "
                       "command to resume them\n",
                       fmt::join(s.failed, ", "), s.layout.logs, s.layout.tasks);
  if (s.merge_result.is_object())
    out += fmt::format("  last merge ({}): {}/{} units, {}\n", s.merge_result.value("at", ""),
                       s.merge_result.value("units_done", 0), s.merge_result.value("units_total", 0),
                       s.merge_result.value("complete", false) ? "complete" : "incomplete");
  return out;
}

SweepStatus merge_slurm_shards(const std::string& store) {
  const SlurmLayout probe = slurm_layout(store, 0);
  COLLAGE_CHECK_AT(fs::exists(probe.state), probe.state, "", "no SLURM sweep into {} (its state file is missing)", store);
  check_store_is_merge(probe);
  SweepStatus before = sweep_status(store);
  std::vector<std::string> shards;
  for (const auto& t : before.tasks)
    if (t.progress.exists) shards.push_back(t.progress.store);
  if (!shards.empty()) merge_stores(before.layout.store, shards);
  std::vector<int> incomplete;
  for (const auto& t : before.tasks)
    if (t.progress.done < t.progress.total) incomplete.push_back(t.index);
  write_json_file(before.layout.merge_result, {{"complete", before.done == before.total && !shards.empty()},
                                               {"units_done", before.done},
                                               {"units_total", before.total},
                                               {"incomplete_tasks", incomplete},
                                               {"merged_shards", shards.size()},
                                               {"at", utc_now()}});
  return sweep_status(store);
}

void wait_for_job(const std::string& job, double poll_s, const std::function<void()>& tick) {
  for (int failures = 0;;) {
    std::map<std::string, std::string> states;
    try {
      states = queue_states({job});
      failures = 0;
    } catch (const Error&) {
      // The controller may be briefly unreachable: keep waiting, but not forever.
      if (++failures >= 30) throw;
      states[job] = "unknown";
    }
    bool queued = false;
    for (const auto& [id, state] : states) queued = queued || id == job || id.rfind(job + "_", 0) == 0;
    if (!queued) return;
    if (tick) tick();
    std::this_thread::sleep_for(std::chrono::duration<double>(poll_s));
  }
}

}  // namespace collage::runner
