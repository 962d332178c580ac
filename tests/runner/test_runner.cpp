// The experiment runner: configs (grids, stable ids, validation before work), sweeps into the HDF5 store,
// resume after an interruption, shards + merge, reports. Uses the tiny golden model and the 32x32 collage.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/version.h"
#include "runner/h5.h"
#include "runner/runner.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace collage;
using namespace collage::runner;

namespace {

std::string make_temp(const std::string& tag) {
  auto p = fs::temp_directory_path() / fmt::format("collage_runner_{}_{}", tag, ::getpid());
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

// A diffusers-layout folder of symlinks to the golden tiny components (as tests/cli/cli_smoke.sh builds).
std::string tiny_model(const std::string& dir) {
  const std::string m = dir + "/model";
  fs::create_directories(m);
  const std::string g = test::golden();
  fs::create_directory_symlink(g + "/tokenizer", m + "/tokenizer");
  fs::create_directory_symlink(g + "/text_encoder_sd1", m + "/text_encoder");
  fs::create_directory_symlink(g + "/unet_sd1", m + "/unet");
  fs::create_directory_symlink(g + "/vae", m + "/vae");
  fs::create_directory_symlink(g + "/pipeline/scheduler", m + "/scheduler");
  fs::copy_file(g + "/pipeline/model_index.json", m + "/model_index.json");
  return m;
}

// Two collages (the tiny one under two names).
std::string tiny_dataset(const std::string& dir) {
  const std::string d = dir + "/data";
  fs::create_directories(d);
  const std::string tiny = std::string(COLLAGE_TEST_DATA) + "/collages/tiny";
  fs::create_directory_symlink(tiny, d + "/a_tiny");
  fs::create_directory_symlink(tiny, d + "/b_tiny");
  return d;
}

std::string config_text(const std::string& dataset, const std::string& model, const std::string& extra_run = "") {
  return R"({
  // a comment: configs accept them
  "dataset": ")" + dataset + R"(",
  "model": ")" + model + R"(",
  "seeds": [1, 2],
  "steps": 3,
  "guidance": 5.0,
  "metrics": ["ssim", "ciede2000", "mask_iou"],
  "segmenter": "appearance",
  "runs": [
    {"method": "sdedit", "grid": {"strength": [0.5, 0.7]}},
    {"method": "sdedit+ca+ln", "params": {"ca_w_pos": 0.5}})" + extra_run + R"(
  ]
})";
}

std::map<std::string, double> score_map(const std::string& store) {
  std::map<std::string, double> m;
  for (const auto& r : read_scores(store)) m[r.item + "/" + r.metric] = r.value;
  return m;
}

void expect_same_scores(const std::string& a, const std::string& b) {
  const auto ma = score_map(a), mb = score_map(b);
  ASSERT_EQ(ma.size(), mb.size());
  for (const auto& [k, v] : ma) {
    ASSERT_TRUE(mb.count(k)) << k;
    if (std::isnan(v))
      EXPECT_TRUE(std::isnan(mb.at(k))) << k;
    else
      EXPECT_NEAR(v, mb.at(k), 1e-9) << k;
  }
  EXPECT_EQ(list_items(a), list_items(b));
}

SweepOptions quiet(const std::string& out) {
  SweepOptions o;
  o.out = out;
  o.quiet = true;
  o.log = [](const std::string&) {};
  return o;
}

}  // namespace

TEST(RunnerConfig, GridExpansionAndStableIds) {
  const auto dir = make_temp("grid");
  const auto data = tiny_dataset(dir);
  const auto c1 = parse_config_text(config_text(data, ""), "x.json");
  ASSERT_EQ(c1.runs.size(), 3u);
  EXPECT_EQ(c1.runs[0].method, "sdedit");
  EXPECT_EQ(c1.runs[0].params["strength"], 0.5);
  EXPECT_EQ(c1.runs[1].params["strength"], 0.7);
  EXPECT_EQ(c1.runs[2].method, "sdedit+ca+ln");
  EXPECT_NE(c1.runs[0].id, c1.runs[1].id);
  EXPECT_EQ(c1.runs[0].label, "sdedit strength=0.5");
  // Adding a run keeps the old ids; a spec spelled differently with the defaults written out is the same run.
  const auto c2 = parse_config_text(
      config_text(data, "", R"(, {"method": "ln+SDEDIT+ca", "params": {"ca_w_pos": 0.5, "strength": 0.8}},
                               {"method": "sdedit+ti", "grid": {"strength": [0.5], "ti_steps": [2, 3]}})"),
      "x.json");
  ASSERT_EQ(c2.runs.size(), 5u);  // the respelled run is a duplicate
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(c1.runs[i].id, c2.runs[i].id);
  EXPECT_EQ(c2.runs[3].params["ti_steps"], 2);
  EXPECT_EQ(c2.runs[4].params["ti_steps"], 3);
  EXPECT_EQ(c2.runs[3].id.size(), 10u);
  // Ids written by earlier versions stay valid: parameters added later (ca_min_size) count only when set.
  const auto ca = MethodSpec::parse("sdedit+ca", Json{{"strength", 0.8}});
  EXPECT_EQ(run_id(ca), "4068949be0");  // sdedit+ca strength=0.8 in stores written before ca_min_size
  EXPECT_EQ(run_id(MethodSpec::parse("sdedit+ca", Json{{"strength", 0.8}, {"ca_min_size", 0}})), "4068949be0");
  EXPECT_NE(run_id(MethodSpec::parse("sdedit+ca", Json{{"strength", 0.8}, {"ca_min_size", 8}})), "4068949be0");
  fs::remove_all(dir);
}

// Generated datasets: w_pos defaults to 1; a config that says w_pos 0 (what collages carried before that default)
// records the same settings as before the option existed, so stores written then still resume.
TEST(RunnerConfig, GeneratedWPosAndStoreSettings) {
  auto parse = [](const std::string& generate) {
    return parse_config_text(R"({"dataset": {"generate": )" + generate + R"(}, "runs": [{"method": "sdedit"}]})", "g.json");
  };
  const auto fresh = parse(R"({"n": 2, "seed": 1, "size": 32})");
  EXPECT_DOUBLE_EQ(fresh.dataset.w_pos, 1.0);
  EXPECT_EQ(fresh.settings()["dataset_generate"]["w_pos"], 1.0);
  for (const auto& c : load_dataset(fresh))
    for (const auto& l : c.collage.layers) EXPECT_DOUBLE_EQ(l.w_pos, 1.0);
  const auto old = parse(R"({"n": 2, "seed": 1, "size": 32, "w_pos": 0})");
  EXPECT_FALSE(old.settings().contains("dataset_generate")) << old.settings().dump();
  for (const auto& c : load_dataset(old))
    for (const auto& l : c.collage.layers) EXPECT_DOUBLE_EQ(l.w_pos, 0.0);
  const auto old_kept = parse(R"({"n": 2, "seed": 1, "size": 32, "w_pos": 0, "kept_strength": 0.3})");
  EXPECT_EQ(old_kept.settings()["dataset_generate"].dump(), R"({"kept_strength":0.3,"unnamed_probability":0.5})");
  auto e = test::expect_error([&] { parse(R"({"n": 2, "w_pos": 2})"); });
  EXPECT_NE(e.find("dataset.generate.w_pos"), std::string::npos) << e;
}

// Claims name runs by label and a metric of the config; mistakes are refused naming claims[i].key.
TEST(RunnerConfig, ClaimsAreValidatedAgainstRunsAndMetrics) {
  auto parse = [](const std::string& claims) {
    return parse_config_text(R"({"dataset": {"generate": {"n": 1}}, "metrics": ["mask_iou"],
      "runs": [{"method": "sdedit"}, {"method": "sdedit+ca"}], "claims": )" + claims + "}", "c.json");
  };
  const auto ok = parse(R"([{"text": "CA helps", "run": "sdedit+ca", "base": "sdedit", "metric": "mask_iou"}])");
  ASSERT_EQ(ok.claims.size(), 1u);
  EXPECT_EQ(ok.claims[0].run, "sdedit+ca");
  EXPECT_EQ(ok.claims[0].layers, "");
  auto e = test::expect_error([&] { parse(R"([{"text": "x", "run": "sdedit+ln", "base": "sdedit", "metric": "mask_iou"}])"); });
  EXPECT_NE(e.find("claims[0].run"), std::string::npos) << e;
  EXPECT_NE(e.find("sdedit+ca"), std::string::npos) << e;  // lists the labels
  e = test::expect_error([&] { parse(R"([{"text": "x", "run": "sdedit+ca", "base": "sdedit", "metric": "ssim"}])"); });
  EXPECT_NE(e.find("claims[0].metric"), std::string::npos) << e;
  e = test::expect_error([&] { parse(R"([{"text": "x", "run": "sdedit+ca", "base": "sdedit"}])"); });
  EXPECT_NE(e.find("claims[0].metric"), std::string::npos) << e;
  e = test::expect_error([&] { parse(R"([{"text": "x", "run": "sdedit+ca", "base": "sdedit", "metric": "mask_iou", "layer": "kept"}])"); });
  EXPECT_NE(e.find("claims[0].layer"), std::string::npos) << e;
}

TEST(RunnerConfig, MalformedConfigsFailBeforeWorkNamingPathAndKey) {
  const auto dir = make_temp("bad");
  const auto data = tiny_dataset(dir);
  auto err = [&](const std::string& runs, const std::string& extra = "") {
    return test::expect_error([&] {
      parse_config_text(R"({"dataset": ")" + data + R"(", "metrics": ["ssim"], )" + extra + R"( "runs": )" + runs + "}",
                        "experiments/x.json");
    });
  };
  auto e = err(R"([{"method": "sdedit"}, {"method": "sdedit+cax"}])");
  EXPECT_NE(e.find("experiments/x.json"), std::string::npos) << e;
  EXPECT_NE(e.find("runs[1].method"), std::string::npos) << e;
  EXPECT_NE(e.find("cax"), std::string::npos) << e;
  e = err(R"([{"method": "sdedit", "grid": {"strength": []}}])");
  EXPECT_NE(e.find("'runs[0].grid.strength'"), std::string::npos) << e;
  e = err(R"([{"method": "sdedit", "grid": {"strength": 0.5}}])");
  EXPECT_NE(e.find("'runs[0].grid.strength'"), std::string::npos) << e;
  e = err(R"([{"method": "sdedit", "grid": {"strenght": [0.5]}}])");
  EXPECT_NE(e.find("'runs[0].grid.strenght'"), std::string::npos) << e;
  e = err(R"([{"method": "sdedit+ca", "params": {"ca_w_pos": "x"}}])");
  EXPECT_NE(e.find("'runs[0].params.ca_w_pos'"), std::string::npos) << e;
  e = err(R"([{"method": "sdedit", "grid": {"strength": [0.5, 1.5]}}])");
  EXPECT_NE(e.find("'runs[0].grid.strength'"), std::string::npos) << e;
  e = err(R"([{"method": "sdedit"}])", R"("metrics": ["ssim", "nope"],)");
  EXPECT_NE(e.find("'metrics[1]'"), std::string::npos) << e;
  e = test::expect_error(
      [&] { parse_config_text(R"({"dataset": "/no/such/folder", "runs": [{"method": "sdedit"}]})", "experiments/x.json"); });
  EXPECT_NE(e.find("experiments/x.json: 'dataset'"), std::string::npos) << e;
  e = test::expect_error([&] { parse_config_text("{ not json", "experiments/x.json"); });
  EXPECT_NE(e.find("experiments/x.json"), std::string::npos) << e;
  // The editing protocol's block.
  const std::string two = R"([{"method": "sdedit", "grid": {"strength": [0.5, 0.7]}}, {"method": "sdedit+ca"}])";
  e = err(two, R"("editing": {"start_run": 1, "pick": "mask_iou"},)");
  EXPECT_NE(e.find("'editing.pick'"), std::string::npos) << e;  // not among the config's metrics
  e = err(two, R"("editing": {"start_run": 0, "pick": "ssim"},)");
  EXPECT_NE(e.find("'editing.start_run'"), std::string::npos) << e;  // a grid: more than one run
  e = err(two, R"("editing": {"start_run": 5, "pick": "ssim"},)");
  EXPECT_NE(e.find("'editing.start_run'"), std::string::npos) << e;
  e = err(two, R"("editing": {"start_run": 1, "pick": "ssim", "params": {"edit_from": "x.png"}},)");
  EXPECT_NE(e.find("'editing.params.edit_from'"), std::string::npos) << e;
  e = err(two, R"("editing": {"start_run": 1, "pick": "ssim", "params": {"edit_strenght": 0.5}},)");
  EXPECT_NE(e.find("'editing.params.edit_strenght'"), std::string::npos) << e;
  e = err(two, R"("editing": {"start_run": 1, "pick": "ssim", "method": "sdedit"},)");
  EXPECT_NE(e.find("'editing.method'"), std::string::npos) << e;
  e = err(two, R"("editing": {"start_run": 1, "pick": "ssim", "round": 2},)");
  EXPECT_NE(e.find("'editing.round'"), std::string::npos) << e;
  e = test::expect_error([&] { parse_shard("2/2"); });
  EXPECT_NE(e.find("--shard"), std::string::npos) << e;
  fs::remove_all(dir);
}

TEST(RunnerSweep, ResumeAfterInterruptionAndShardsMergeEqualOneRun) {
  const auto dir = make_temp("sweep");
  const auto data = tiny_dataset(dir);
  const auto model = tiny_model(dir);
  const auto config = parse_config_text(config_text(data, model), dir + "/x.json");
  const int64_t units = 2 * 3;

  // Uninterrupted.
  const auto full = dir + "/full.h5";
  auto s = run_sweep(config, quiet(full));
  EXPECT_EQ(s.units_run, units);
  EXPECT_EQ(s.items_written, units * 2);
  EXPECT_GT(s.method_s, 0);
  const auto items = list_items(full);
  ASSERT_EQ(items.size(), static_cast<size_t>(units * 2));
  const auto attrs = read_item_attrs(full, items[0]);
  EXPECT_EQ(attrs["seed"], 1);
  EXPECT_TRUE(attrs["timings"].contains("method_total"));
  EXPECT_EQ(read_scores_table(full).size(), static_cast<size_t>(units * 2 * 3));
  {
    h5::Handle f = h5::open_file(full, false);
    EXPECT_TRUE(h5::exists(f, "collages/a_tiny/visible_masks"));
    EXPECT_TRUE(h5::exists(f, "items/" + items[0] + "/image"));
    EXPECT_TRUE(h5::exists(f, "items/" + items[0] + "/scores/mask_iou.per_layer"));
    EXPECT_EQ(h5::attr_string(f, "git_revision"), git_revision());
  }
  // Rerun: nothing to do.
  s = run_sweep(config, quiet(full));
  EXPECT_EQ(s.units_run, 0);
  EXPECT_EQ(s.units_done_before, units);

  // Interrupted: two units, then a half-written item (as a kill mid-write leaves it), then resumed.
  const auto part = dir + "/part.h5";
  auto o = quiet(part);
  o.limit = 2;
  s = run_sweep(config, o);
  EXPECT_EQ(s.units_run, 2);
  {
    h5::Handle f = h5::open_file(part, true);
    const std::string half = "items/b_tiny__" + config.runs[2].id + "__seed1";
    h5::Handle g = h5::ensure_group(f, half);
    h5::write_double(g, "junk", 1.0);  // no "complete" attribute
  }
  s = run_sweep(config, quiet(part));
  EXPECT_EQ(s.units_run, units - 2);
  expect_same_scores(full, part);

  // Two shards merged.
  auto o0 = quiet(dir + "/s0.h5"), o1 = quiet(dir + "/s1.h5");
  o0.shard_count = o1.shard_count = 2;
  o1.shard_index = 1;
  EXPECT_EQ(run_sweep(config, o0).units_run, units / 2);
  EXPECT_EQ(run_sweep(config, o1).units_run, units / 2);
  merge_stores(dir + "/merged.h5", {dir + "/s0.h5", dir + "/s1.h5"});
  expect_same_scores(full, dir + "/merged.h5");
  EXPECT_EQ(read_scores_table(dir + "/merged.h5").size(), read_scores_table(full).size());

  // A resumed store refuses other settings.
  auto changed = config;
  changed.steps = 4;
  auto e = test::expect_error([&] { run_sweep(changed, quiet(full)); });
  EXPECT_NE(e.find("steps"), std::string::npos) << e;

  // Report.
  const auto md = report_markdown(full);
  EXPECT_NE(md.find("sdedit strength=0.5"), std::string::npos) << md;
  EXPECT_NE(md.find("ssim"), std::string::npos) << md;
  EXPECT_NE(md.find("±"), std::string::npos) << md;
  write_report_csv(full, dir + "/r.csv");
  std::ifstream csv(dir + "/r.csv");
  std::string header;
  std::getline(csv, header);
  EXPECT_EQ(header, "run_id,method,label,metric,n,mean,sd,ci95_low,ci95_high");
  const auto summary = summarise(read_scores(full));
  ASSERT_FALSE(summary.empty());
  EXPECT_EQ(summary[0].n, 4);  // 2 collages x 2 seeds
  EXPECT_LE(summary[0].lo, summary[0].mean);
  fs::remove_all(dir);
}

// The real thing: `collage sweep` as a child process, killed with SIGKILL mid-sweep, then resumed. Needs the
// collage binary next to the tests folder (build/collage); skipped when it is not built.
TEST(RunnerSweep, SigkilledCliSweepResumesToTheSameStore) {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  ASSERT_GT(n, 0);
  buf[n] = 0;
  const auto binary = fs::path(buf).parent_path().parent_path() / "collage";
  if (!fs::exists(binary)) GTEST_SKIP() << binary << " is not built";
  const auto dir = make_temp("kill");
  const auto data = tiny_dataset(dir);
  const auto model = tiny_model(dir);
  std::string text = config_text(data, model);
  text.replace(text.find("\"steps\": 3"), 10, "\"steps\": 12");
  const auto cfg_path = dir + "/x.json";
  std::ofstream(cfg_path) << text;
  const auto config = load_config(cfg_path);
  const auto killed = dir + "/killed.h5", log = dir + "/log.txt";
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string cmd = fmt::format("exec '{}' --threads 1 sweep '{}' --out '{}' > '{}' 2>&1", binary.string(),
                                        cfg_path, killed, log);
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Kill once the second unit is reported done (the third is then in flight).
  bool seen = false;
  for (int i = 0; i < 600 && !seen; ++i) {
    ::usleep(50000);
    std::ifstream in(log);
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    seen = all.find("[2/6]") != std::string::npos;
  }
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(seen) << "the child never reported its second unit";
  EXPECT_LT(list_items(killed).size(), 12u);
  const auto s = run_sweep(config, quiet(killed));
  EXPECT_GE(s.units_done_before, 2);
  const auto full = dir + "/full.h5";
  run_sweep(config, quiet(full));
  expect_same_scores(full, killed);
  fs::remove_all(dir);
}

// The editing protocol: per collage, the start run's best seed (by the pick metric) is edited layer by layer,
// each round with every seed, each round continuing from the previous round's pick. Interrupted and resumed, or
// split into shards and merged, it gives the same store as one run.
TEST(RunnerSweep, EditingChainsContinueFromTheBestSeedAndResume) {
  const auto dir = make_temp("editing");
  const auto data = tiny_dataset(dir);
  const auto model = tiny_model(dir);
  std::string text = config_text(data, model);
  text.insert(text.rfind('}'), R"(, "editing": {"start_run": 1, "pick": "mask_iou", "rounds": 3,
                                              "params": {"edit_keep_strength": 0.05}},
                                  "save": {"noise_map": true})");
  const auto config = parse_config_text(text, dir + "/x.json");
  ASSERT_TRUE(config.editing.enabled);
  ASSERT_EQ(config.editing.start_run, 2u);  // runs[1] of the file is the third run after the grid
  ASSERT_EQ(config.editing.rounds.size(), 3u);
  EXPECT_NE(config.editing.rounds[0].id, config.editing.rounds[1].id);
  EXPECT_NE(config.editing.rounds[0].label.find("edit round 1"), std::string::npos);

  const auto full = dir + "/full.h5";
  auto s = run_sweep(config, quiet(full));
  EXPECT_EQ(s.units_run, 2 * (3 + 3));
  ASSERT_EQ(list_items(full).size(), 2u * (3 + 3) * 2);
  h5::Handle f = h5::open_file(full, false);
  auto value = [&](const std::string& item, const std::string& metric) {
    h5::Handle g = h5::open_group(f, "items/" + item + "/scores");
    return h5::read_double(g, metric);
  };
  for (const std::string collage : {"a_tiny", "b_tiny"}) {
    // the start run's best seed by mask_iou (higher is better; ties: the first seed)
    std::string expected = collage + "__" + config.runs[2].id + "__seed1";
    const std::string other = collage + "__" + config.runs[2].id + "__seed2";
    if (value(other, "mask_iou") > value(expected, "mask_iou")) expected = other;
    for (size_t r = 0; r < 3; ++r) {
      std::string picked;
      for (uint64_t seed : {1, 2}) {
        const std::string item = fmt::format("{}__{}__seed{}", collage, config.editing.rounds[r].id, seed);
        h5::Handle g = h5::open_group(f, "items/" + item);
        EXPECT_EQ(h5::attr_string(g, "edit_from_item"), expected) << item;
        EXPECT_EQ(h5::attr_int(g, "round"), int64_t(r) + 1);
        EXPECT_EQ(h5::attr_int(g, "regenerated_layer"), int64_t(r % 2) + 1);  // layers 1, 2, 1: not the background
        const double change = value(item, "edit_outside_change");
        EXPECT_TRUE(change >= 0 && change < 1) << item << " " << change;
        if (h5::attr_int(g, "picked")) {
          EXPECT_TRUE(picked.empty()) << "two picks in one round";
          picked = item;
        }
      }
      ASSERT_FALSE(picked.empty());
      expected = picked;  // what the next round must continue from
    }
  }
  // The collage composite is stored once; noise maps (asked for) with the per-pixel methods' items only.
  EXPECT_TRUE(h5::exists(f, "collages/a_tiny/composite"));
  EXPECT_TRUE(h5::exists(f, fmt::format("items/a_tiny__{}__seed1/noise_map", config.editing.rounds[0].id)));
  EXPECT_TRUE(h5::exists(f, fmt::format("items/a_tiny__{}__seed1/noise_map", config.runs[2].id)));  // +ln
  EXPECT_FALSE(h5::exists(f, fmt::format("items/a_tiny__{}__seed1/noise_map", config.runs[0].id)));  // sdedit
  f.close();
  EXPECT_NE(report_markdown(full).find("edit_outside_change"), std::string::npos);

  // Interrupted in the middle of the chains (after the first editing round), then resumed.
  const auto part = dir + "/part.h5";
  auto o = quiet(part);
  o.limit = 7;
  EXPECT_EQ(run_sweep(config, o).units_run, 7);
  EXPECT_EQ(run_sweep(config, quiet(part)).units_run, 2 * (3 + 3) - 7);
  expect_same_scores(full, part);

  // Two shards merged.
  auto o0 = quiet(dir + "/s0.h5"), o1 = quiet(dir + "/s1.h5");
  o0.shard_count = o1.shard_count = 2;
  o1.shard_index = 1;
  run_sweep(config, o0);
  run_sweep(config, o1);
  merge_stores(dir + "/merged.h5", {dir + "/s0.h5", dir + "/s1.h5"});
  expect_same_scores(full, dir + "/merged.h5");
  fs::remove_all(dir);
}

TEST(RunnerReport, PairedDifferencesMatchItemsAndFollowTheMetricDirection) {
  std::vector<ScoreRow> rows;
  auto add = [&](const std::string& run, const std::string& collage, uint64_t seed, const std::string& metric,
                 double v) {
    ScoreRow r;
    r.run_id = run;
    r.label = run == "b0" ? "base run" : "other run";
    r.method = "m";
    r.collage = collage;
    r.seed = seed;
    r.item = collage + run + std::to_string(seed);
    r.metric = metric;
    r.value = v;
    rows.push_back(r);
  };
  // ciede2000: lower is better. Pairs (a,0) -3, (a,1) +1, (b,0) 0 (a tie); (b,1) has NaN; (c,0) has no base.
  add("b0", "a", 0, "ciede2000", 10), add("r1", "a", 0, "ciede2000", 7);
  add("b0", "a", 1, "ciede2000", 12), add("r1", "a", 1, "ciede2000", 13);
  add("b0", "b", 0, "ciede2000", 8), add("r1", "b", 0, "ciede2000", 8);
  add("b0", "b", 1, "ciede2000", std::nan("")), add("r1", "b", 1, "ciede2000", 1);
  add("r1", "c", 0, "ciede2000", 0);
  // ssim: higher is better.
  add("b0", "a", 0, "ssim", 0.5), add("r1", "a", 0, "ssim", 0.6);
  add("b0", "a", 1, "ssim", 0.5), add("r1", "a", 1, "ssim", 0.7);
  for (const std::string base : {"b0", "base run"}) {
    const auto p = paired_differences(rows, base);
    ASSERT_EQ(p.size(), 2u);
    EXPECT_EQ(p[0].metric, "ciede2000");
    EXPECT_EQ(p[0].run_id, "r1");
    EXPECT_EQ(p[0].n, 3);
    EXPECT_NEAR(p[0].mean, -2.0 / 3.0, 1e-12);
    EXPECT_EQ(p[0].better, 1);  // lower
    EXPECT_EQ(p[0].worse, 1);
    const double sd = std::sqrt(((-3 + 2.0 / 3) * (-3 + 2.0 / 3) + (1 + 2.0 / 3) * (1 + 2.0 / 3) + (2.0 / 3) * (2.0 / 3)) / 2);
    EXPECT_NEAR(p[0].hi - p[0].mean, 1.96 * sd / std::sqrt(3.0), 1e-12);
    EXPECT_EQ(p[1].metric, "ssim");
    EXPECT_NEAR(p[1].mean, 0.15, 1e-12);
    EXPECT_EQ(p[1].better, 2);
  }
  auto e = test::expect_error([&] { paired_differences(rows, "nope"); });
  EXPECT_NE(e.find("--paired"), std::string::npos) << e;
  EXPECT_NE(e.find("base run"), std::string::npos) << e;  // lists the runs
}

// A generated dataset with a kept layer: the store records layer meta, `--layers kept` scores exactly the kept
// layer's per-layer values, and `--paired` compares the runs item by item.
TEST(RunnerReport, LayersSelectedByTheirMetaOnAGeneratedDataset) {
  const auto dir = make_temp("layers");
  const auto model = tiny_model(dir);
  const auto config = parse_config_text(R"({
  "dataset": {"generate": {"world": "shapesworld", "n": 2, "seed": 4, "size": 32, "kept_strength": 0.2}},
  "model": ")" + model + R"(",
  "seeds": [0, 1],
  "steps": 3,
  "metrics": ["ciede2000", "ssim", "mask_iou"],
  "segmenter": "appearance",
  "runs": [{"method": "sdedit", "params": {"strength": 0.8}}, {"method": "sdedit+ln", "params": {"strength": 0.8}}],
  "claims": [{"text": "LN keeps the kept layer", "run": "sdedit+ln strength=0.8", "base": "sdedit strength=0.8",
              "metric": "ciede2000", "layers": "kept"}]
})", "layers.json");
  const std::string store = dir + "/s.h5";
  run_sweep(config, quiet(store));

  h5::Handle file = h5::open_file(store, false);
  std::map<std::string, size_t> kept_layer;  // collage -> index of its kept layer
  for (const auto& name : h5::children(file, "collages")) {
    h5::Handle g = h5::open_group(file, "collages/" + name);
    const auto layers = Json::parse(h5::attr_string(g, "layers"));
    for (size_t i = 0; i < layers.size(); ++i) {
      ASSERT_TRUE(layers[i].contains("noise_strength"));
      if (layers[i]["meta"].value("kept", false)) {
        kept_layer[name] = i;
        EXPECT_DOUBLE_EQ(layers[i]["noise_strength"].get<double>(), 0.2);
      }
    }
  }
  ASSERT_EQ(kept_layer.size(), 2u);
  const auto rows = read_layer_scores(store, "kept");
  EXPECT_EQ(rows.size(), list_items(store).size() * 3);  // every item x the three per-layer metrics
  for (const auto& r : rows) {
    h5::Handle s = h5::open_group(file, "items/" + r.item + "/scores");
    const auto per_layer = h5::read_doubles(s, r.metric + ".per_layer");
    const double expected = per_layer.at(kept_layer.at(r.collage));
    if (std::isnan(expected))
      EXPECT_TRUE(std::isnan(r.value)) << r.item << " " << r.metric;
    else
      EXPECT_DOUBLE_EQ(r.value, expected) << r.item << " " << r.metric;
  }
  ReportOptions o;
  o.layers = "kept";
  o.paired = "sdedit strength=0.8";
  const auto md = report_markdown(store, o);
  EXPECT_NE(md.find("meta has 'kept'"), std::string::npos) << md;
  EXPECT_NE(md.find("paired with 'sdedit strength=0.8'"), std::string::npos) << md;
  EXPECT_NE(md.find("| sdedit+ln strength=0.8 | ciede2000 | 4 |"), std::string::npos) << md;

  // The config's claim: the same paired difference as the kept-layer table, its verdict by the interval, and the
  // claim's base is the default base of a plain report.
  const auto claims = evaluate_claims(store);
  ASSERT_EQ(claims.size(), 1u);
  const auto& claim = claims[0];
  bool found = false;
  for (const auto& p : paired_differences(rows, "sdedit strength=0.8"))
    if (p.label == "sdedit+ln strength=0.8" && p.metric == "ciede2000") {
      found = true;
      EXPECT_EQ(claim.paired.n, p.n);
      EXPECT_DOUBLE_EQ(claim.paired.mean, p.mean);
      EXPECT_DOUBLE_EQ(claim.paired.hi, p.hi);
    }
  EXPECT_TRUE(found);
  EXPECT_EQ(claim.holds, claim.paired.hi < 0);  // CIEDE2000: lower is better
  EXPECT_EQ(claim.verdict, claim.holds ? "holds" : "not shown");
  EXPECT_EQ(claim_line(claim).rfind(claim.verdict + ": LN keeps the kept layer (sdedit+ln strength=0.8 vs", 0), 0u)
      << claim_line(claim);
  EXPECT_EQ(default_paired_base(store), "sdedit strength=0.8");
  const auto plain_md = report_markdown(store);
  EXPECT_NE(plain_md.find("paired with 'sdedit strength=0.8'"), std::string::npos) << plain_md;
  EXPECT_NE(plain_md.find("- " + claim_line(claim)), std::string::npos) << plain_md;

  auto e = test::expect_error([&] { read_layer_scores(store, "no_such_key"); });
  EXPECT_NE(e.find("--layers"), std::string::npos) << e;
  EXPECT_NE(e.find("kept"), std::string::npos) << e;  // lists the keys there are

  // A store written before layer meta existed (simulated: meta stripped) is refreshed by running the same
  // sweep on it again, which recomputes nothing.
  const auto items_before = list_items(store);
  file = h5::Handle();
  {
    h5::Handle w = h5::open_file(store, true);
    for (const auto& name : h5::children(w, "collages")) {
      h5::Handle g = h5::open_group(w, "collages/" + name);
      auto layers = Json::parse(h5::attr_string(g, "layers"));
      for (auto& l : layers) l.erase("meta"), l.erase("noise_strength");
      h5::set_attr(g, "layers", layers.dump());
    }
  }
  e = test::expect_error([&] { read_layer_scores(store, "kept"); });
  EXPECT_NE(e.find("same sweep command"), std::string::npos) << e;
  const auto again = run_sweep(config, quiet(store));
  EXPECT_EQ(again.units_run, 0);
  EXPECT_EQ(list_items(store), items_before);
  EXPECT_EQ(read_layer_scores(store, "kept").size(), rows.size());
  fs::remove_all(dir);
}
