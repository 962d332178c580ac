// Experiment configs: parsing, validation (before any work), grid expansion and stable run ids.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/core.h"
#include "datasets/collage_datasets.h"
#include "metrics/metrics.h"
#include "runner/runner.h"

namespace fs = std::filesystem;

namespace collage::runner {

namespace {

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  // splitmix64 finaliser: every input bit reaches every output bit (FNV alone keeps close inputs close).
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

std::string value_text(const Json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_float()) {
    std::string s = fmt::format("{:g}", v.get<double>());
    return s;
  }
  return v.dump();
}

// Re-throws a MethodSpec::parse error with the config path and a config key.
[[noreturn]] void rethrow_spec_error(const Error& e, const std::string& path, const std::string& run_where,
                                     const Json& grid_keys) {
  std::string field = e.field();
  std::string key;
  if (field.rfind("params.", 0) == 0) {
    const std::string name = field.substr(7);
    key = run_where + (grid_keys.contains(name) ? ".grid." : ".params.") + name;
  } else if (field == "params") {
    key = run_where + ".params";
  } else {
    key = run_where + ".method";
    if (!field.empty() && field != e.message()) key += " (" + field + ")";
  }
  throw Error(e.message(), path, key);
}

}  // namespace

namespace {

// "editing": {"start_run": 0, "pick": "mask_iou", "rounds": 3, "layers": [1, 2], "method": "edit",
//             "params": {"edit_keep_strength": 0.05}}
void parse_editing(const Json& e, const std::string& path, ExperimentConfig& c) {
  COLLAGE_CHECK_AT(e.is_object(), path, "editing", "must be an object {{start_run, pick, rounds, layers, method, params}}");
  JsonReader r(e, path, "editing.");
  EditingSpec& ed = c.editing;
  ed.enabled = true;
  COLLAGE_CHECK_AT(e.contains("start_run") && e["start_run"].is_number_integer(), path, "editing.start_run",
                   "required: the index in 'runs' of the run whose outputs start each chain");
  const int64_t start = e["start_run"].get<int64_t>();
  COLLAGE_CHECK_AT(start >= 0 && start < int64_t(c.json["runs"].size()), path, "editing.start_run",
                   "{} is not an index into runs (0..{})", start, c.json["runs"].size() - 1);
  r.ignore({"start_run", "layers", "params"});
  ed.pick = r.get<std::string>("pick", "");
  COLLAGE_CHECK_AT(!ed.pick.empty(), path, "editing.pick", "required: the metric that picks the image to edit next");
  COLLAGE_CHECK_AT(std::find(c.metrics.begin(), c.metrics.end(), ed.pick) != c.metrics.end(), path, "editing.pick",
                   "'{}' is not one of the config's metrics ({})", ed.pick, fmt::join(c.metrics, ", "));
  ed.pick_higher = metrics::builtin_metrics().info(ed.pick).direction == metrics::Direction::higher_is_better;
  const int64_t rounds = r.get<int64_t>("rounds", 3);
  COLLAGE_CHECK_AT(rounds >= 1 && rounds <= 100, path, "editing.rounds", "must be in 1..100, got {}", rounds);
  if (e.contains("layers")) {
    const Json& l = e["layers"];
    COLLAGE_CHECK_AT(l.is_array() && !l.empty(), path, "editing.layers", "must be a non-empty list of layer indices");
    for (size_t i = 0; i < l.size(); ++i) {
      COLLAGE_CHECK_AT(l[i].is_number_integer() && l[i].get<int64_t>() >= 0, path, fmt::format("editing.layers[{}]", i),
                       "a layer index is a non-negative integer, got {}", l[i].dump());
      ed.layers.push_back(l[i].get<int64_t>());
    }
  }
  const std::string method = r.get<std::string>("method", "edit");
  Json params = e.value("params", Json::object());
  COLLAGE_CHECK_AT(params.is_object(), path, "editing.params", "must be an object of parameter values");
  for (const char* k : {"edit_from", "edit_regenerate"})
    COLLAGE_CHECK_AT(!params.contains(k), path, std::string("editing.params.") + k,
                     "set by the protocol (the previous round's pick and the layer of the round)");
  for (const auto& k : r.unused_keys())
    throw Error("unknown key (valid: start_run, pick, rounds, layers, method, params)", path, "editing." + k);
  {
    std::string lower = "+" + method + "+";
    for (auto& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    COLLAGE_CHECK_AT(lower.find("+edit+") != std::string::npos, path, "editing.method",
                     "'{}' does not regenerate layers: use edit (+ca, ...)", method);
  }
  const RunSpec& start_run = c.runs[ed.start_run];
  for (int64_t round = 1; round <= rounds; ++round) {
    Json all = params;
    all["edit_from"] = "(the pick of the previous round)";
    all["edit_regenerate"] = "(the layer of the round)";
    MethodSpec spec;
    try {
      spec = MethodSpec::parse(method, all, path);
    } catch (const Error& err) {
      std::string field = err.field();
      throw Error(err.message(), path, field.rfind("params.", 0) == 0 ? "editing." + field : "editing.method");
    }
    COLLAGE_CHECK_AT(spec.base == "edit", path, "editing.method", "'{}' does not regenerate layers: use edit (+ca, ...)",
                     spec.text);
    RunSpec rs;
    rs.method = spec.text;
    rs.params = spec.params;
    rs.overrides = params;
    rs.where = "editing";
    // The id covers what the round depends on: the start run, the pick rule, the layers, the round number.
    MethodSpec keyed = spec;
    keyed.text = fmt::format("{}|editing:{}|pick:{}|layers:{}|round:{}", spec.text, start_run.id, ed.pick,
                             Json(ed.layers).dump(), round);
    rs.id = run_id(keyed);
    std::string edit_text = spec.text;
    for (auto it = params.begin(); it != params.end(); ++it) edit_text += " " + it.key() + "=" + value_text(it.value());
    rs.label = fmt::format("edit round {} ({} from {}, best {})", round, edit_text, start_run.label, ed.pick);
    c.editing.rounds.push_back(std::move(rs));
  }
}

}  // namespace

std::vector<ClaimSpec> parse_claims(const Json& claims, const std::string& path,
                                    const std::vector<std::string>& run_labels) {
  COLLAGE_CHECK_AT(claims.is_array(), path, "claims", "must be a list of {{text, run, base, metric, layers}}");
  std::vector<ClaimSpec> out;
  for (size_t i = 0; i < claims.size(); ++i) {
    const std::string where = fmt::format("claims[{}]", i);
    COLLAGE_CHECK_AT(claims[i].is_object(), path, where, "a claim is an object {{text, run, base, metric, layers}}");
    JsonReader r(claims[i], path, where + ".");
    ClaimSpec c;
    c.text = r.get<std::string>("text", "");
    c.run = r.get<std::string>("run", "");
    c.base = r.get<std::string>("base", "");
    c.metric = r.get<std::string>("metric", "");
    c.layers = r.get<std::string>("layers", "");
    for (const auto& k : r.unused_keys()) throw Error("unknown key (valid: text, run, base, metric, layers)", path, where + "." + k);
    for (const auto& [key, value] : {std::pair<const char*, std::string>{"text", c.text}, {"run", c.run},
                                     {"base", c.base}, {"metric", c.metric}})
      COLLAGE_CHECK_AT(!value.empty(), path, where + "." + key, "required");
    for (const auto& [key, value] : {std::pair<const char*, std::string>{"run", c.run}, {"base", c.base}})
      COLLAGE_CHECK_AT(run_labels.empty() || std::find(run_labels.begin(), run_labels.end(), value) != run_labels.end(),
                       path, where + "." + key, "'{}' is not the label of a run (labels: {})", value,
                       fmt::join(run_labels, "; "));
    out.push_back(c);
  }
  return out;
}

std::string run_id(const MethodSpec& spec) {
  Json params = spec.params;
  for (const auto& c : method_components())
    for (const auto& p : c.params)
      if (!p.in_id_at_default && params.contains(p.name) && params[p.name] == p.default_value) params.erase(p.name);
  const std::string canon = spec.text + "|" + params.dump();
  return fmt::format("{:010x}", fnv1a(canon) & 0xffffffffffull);
}

Json ExperimentConfig::settings() const {
  Json s = Json::object();
  s["model"] = model;
  s["seeds"] = seeds;
  s["steps"] = steps;
  s["guidance"] = guidance;
  s["scheduler"] = scheduler;
  s["negative_prompt"] = negative_prompt;
  // A generated dataset's collages are named by seed and index only: options that change them must match.
  // Options at the values collages had before the option existed are left out, so older stores still resume
  // (w_pos: 0, what every generated collage carried before the generator's default became 1).
  if (dataset.generate && (dataset.kept_strength >= 0 || dataset.unnamed_probability != 0.5 ||
                           dataset.unnamed_colour_probability != 0 || dataset.w_pos != 0)) {
    s["dataset_generate"] = {{"kept_strength", dataset.kept_strength},
                             {"unnamed_probability", dataset.unnamed_probability}};
    if (dataset.unnamed_colour_probability != 0)
      s["dataset_generate"]["unnamed_colour_probability"] = dataset.unnamed_colour_probability;
    if (dataset.w_pos != 0) s["dataset_generate"]["w_pos"] = dataset.w_pos;
  }
  return s;
}

ExperimentConfig parse_config_text(const std::string& text, const std::string& path) {
  Json j;
  try {
    j = Json::parse(text, nullptr, true, /*ignore_comments=*/true);
  } catch (const std::exception& e) {
    throw Error(fmt::format("not valid JSON: {}", e.what()), path);
  }
  return parse_config(j, path);
}

ExperimentConfig load_config(const std::string& path) {
  std::ifstream in(path);
  COLLAGE_CHECK_AT(in.good(), path, "", "cannot read the experiment config");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config_text(ss.str(), path);
}

namespace {

// dataset.generate: a ShapesWorld collage dataset made in memory.
void parse_generated_dataset(const Json& g, const std::string& path, ExperimentConfig& c) {
  COLLAGE_CHECK_AT(g.is_object(), path, "dataset.generate", "must be an object {{world, n, seed, size}}");
  JsonReader gr(g, path, "dataset.generate.");
  c.dataset.generate = true;
  c.dataset.world = gr.get<std::string>("world", "shapesworld");
  c.dataset.n = gr.get<int64_t>("n", 8);
  c.dataset.seed = gr.get<uint64_t>("seed", 0);
  c.dataset.size = gr.get<int64_t>("size", 64);
  c.dataset.kept_strength = gr.get<double>("kept_strength", -1.0);
  c.dataset.unnamed_probability = gr.get<double>("unnamed_probability", 0.5);
  c.dataset.unnamed_colour_probability = gr.get<double>("unnamed_colour_probability", 0.0);
  c.dataset.w_pos = gr.get<double>("w_pos", 1.0);
  for (const auto& k : gr.unused_keys())
    throw Error("unknown key (valid: world, n, seed, size, kept_strength, unnamed_probability, "
                "unnamed_colour_probability, w_pos)",
                path, "dataset.generate." + k);
  COLLAGE_CHECK_AT(c.dataset.kept_strength < 0 || c.dataset.kept_strength <= 1, path, "dataset.generate.kept_strength",
                   "must be in [0, 1] (or negative: no kept layer), got {}", c.dataset.kept_strength);
  COLLAGE_CHECK_AT(c.dataset.unnamed_probability >= 0 && c.dataset.unnamed_probability <= 1, path,
                   "dataset.generate.unnamed_probability", "must be in [0, 1], got {}",
                   c.dataset.unnamed_probability);
  COLLAGE_CHECK_AT(c.dataset.unnamed_colour_probability >= 0 && c.dataset.unnamed_colour_probability <= 1, path,
                   "dataset.generate.unnamed_colour_probability", "must be in [0, 1], got {}",
                   c.dataset.unnamed_colour_probability);
  COLLAGE_CHECK_AT(c.dataset.w_pos >= 0 && c.dataset.w_pos <= 1, path, "dataset.generate.w_pos",
                   "must be in [0, 1], got {}", c.dataset.w_pos);
  COLLAGE_CHECK_AT(c.dataset.world == "shapesworld", path, "dataset.generate.world",
                   "unknown world '{}' (valid: shapesworld)", c.dataset.world);
  COLLAGE_CHECK_AT(c.dataset.n > 0, path, "dataset.generate.n", "must be positive");
  COLLAGE_CHECK_AT(c.dataset.size >= 16 && c.dataset.size % 8 == 0, path, "dataset.generate.size",
                   "must be a multiple of 8, at least 16");
}

void parse_dataset(const Json& j, const std::string& path, ExperimentConfig& c) {
  COLLAGE_CHECK_AT(j.contains("dataset"), path, "dataset", "required key is missing");
  const Json& d = j["dataset"];
  if (d.is_string()) {
    std::string folder = d.get<std::string>();
    fs::path p(folder);
    if (!fs::exists(p) && !path.empty() && p.is_relative()) {
      auto alt = fs::path(path).parent_path() / p;
      if (fs::exists(alt)) p = alt;
    }
    COLLAGE_CHECK_AT(fs::is_directory(p), path, "dataset", "dataset folder '{}' does not exist", folder);
    c.dataset.folder = p.string();
  } else if (d.is_object() && d.contains("generate")) {
    parse_generated_dataset(d["generate"], path, c);
  } else {
    throw Error("expected a dataset folder or {\"generate\": {\"world\": \"shapesworld\", \"n\": 8, \"seed\": 0}}",
                path, "dataset");
  }
}

void parse_sampling_settings(const Json& j, const std::string& path, ExperimentConfig& c) {
  JsonReader r(j, path);
  c.model = r.get<std::string>("model", "");
  if (j.contains("seeds")) {
    const Json& s = j["seeds"];
    COLLAGE_CHECK_AT(s.is_array() && !s.empty(), path, "seeds", "must be a non-empty list of seeds");
    c.seeds.clear();
    for (size_t i = 0; i < s.size(); ++i) {
      COLLAGE_CHECK_AT(s[i].is_number_integer() && s[i].get<int64_t>() >= 0, path, fmt::format("seeds[{}]", i),
                       "a seed is a non-negative integer, got {}", s[i].dump());
      c.seeds.push_back(s[i].get<uint64_t>());
    }
  }
  c.steps = r.get<int64_t>("steps", 30);
  COLLAGE_CHECK_AT(c.steps > 0, path, "steps", "must be positive");
  c.guidance = r.get<double>("guidance", 5.0);
  c.scheduler = r.get<std::string>("scheduler", "");
  c.negative_prompt = r.get<std::string>("negative_prompt", "");
  c.segmenter = r.get<std::string>("segmenter", "auto");
  c.clip = r.get<std::string>("clip", "");
  c.lpips = r.get<std::string>("lpips", "");
  c.clip_tokenizer = r.get<std::string>("clip_tokenizer", "");
  c.limit_collages = r.get<int64_t>("max_collages", -1);
}

void parse_metric_list(const Json& j, const std::string& path, ExperimentConfig& c) {
  const auto& reg = metrics::builtin_metrics();
  if (j.contains("metrics")) {
    const Json& m = j["metrics"];
    COLLAGE_CHECK_AT(m.is_array(), path, "metrics", "must be a list of metric names");
    for (size_t i = 0; i < m.size(); ++i) {
      const std::string key = fmt::format("metrics[{}]", i);
      COLLAGE_CHECK_AT(m[i].is_string(), path, key, "a metric name is a string, got {}", m[i].dump());
      const auto name = m[i].get<std::string>();
      if (!reg.has(name) || reg.info(name).kind != metrics::MetricKind::per_image)
        throw Error(fmt::format("unknown per-image metric '{}' (valid: {})", name,
                                fmt::join(metrics::per_image_metric_names(reg), ", ")),
                    path, key);
      c.metrics.push_back(name);
    }
  }
}

void parse_save(const Json& j, const std::string& path, ExperimentConfig& c) {
  if (j.contains("save")) {
    const Json& s = j["save"];
    COLLAGE_CHECK_AT(s.is_object(), path, "save", "must be an object {{latents, attention, noise_map}}");
    JsonReader sr(s, path, "save.");
    c.save_latents = sr.get<bool>("latents", false);
    c.save_attention = sr.get<bool>("attention", false);
    c.save_noise_map = sr.get<bool>("noise_map", false);
    for (const auto& k : sr.unused_keys())
      throw Error("unknown key (valid: latents, attention, noise_map)", path, "save." + k);
  }
}

// runs[i]: one run, or a grid expanded to its Cartesian product; a run spelled twice is kept once.
void parse_run(const Json& run, size_t i, const std::string& path, int64_t editing_start, std::set<std::string>& ids,
               ExperimentConfig& c) {
  const std::string where = fmt::format("runs[{}]", i);
  COLLAGE_CHECK_AT(run.is_object(), path, where, "a run is an object {{method, params, grid}}");
  for (auto it = run.begin(); it != run.end(); ++it)
    if (it.key() != "method" && it.key() != "params" && it.key() != "grid" && it.key().rfind("_", 0) != 0)
      throw Error("unknown key (valid: method, params, grid)", path, where + "." + it.key());
  COLLAGE_CHECK_AT(run.contains("method") && run["method"].is_string(), path, where + ".method",
                   "required: a method spec string such as \"sdedit+ca\"");
  const std::string method = run["method"].get<std::string>();
  Json params = run.value("params", Json::object());
  COLLAGE_CHECK_AT(params.is_object(), path, where + ".params", "must be an object of parameter values");
  Json grid = run.value("grid", Json::object());
  COLLAGE_CHECK_AT(grid.is_object(), path, where + ".grid", "must be an object {{parameter: [values...]}}");
  std::vector<std::pair<std::string, Json>> axes;
  for (auto it = grid.begin(); it != grid.end(); ++it) {
    const std::string key = where + ".grid." + it.key();
    COLLAGE_CHECK_AT(it.value().is_array(), path, key, "a grid entry must be a list of values, got {}",
                     it.value().dump());
    COLLAGE_CHECK_AT(!it.value().empty(), path, key, "the grid list is empty");
    COLLAGE_CHECK_AT(!params.contains(it.key()), path, key, "set both in params and in grid");
    axes.emplace_back(it.key(), it.value());
  }
  // Cartesian product, the first axis varying slowest.
  std::vector<Json> points{Json::object()};
  for (const auto& [name, values] : axes) {
    std::vector<Json> next;
    for (const auto& p : points)
      for (const auto& v : values) {
        Json q = p;
        q[name] = v;
        next.push_back(q);
      }
    points = std::move(next);
  }
  COLLAGE_CHECK_AT(editing_start != int64_t(i) || points.size() == 1,
                   path, "editing.start_run", "runs[{}] has a grid ({} runs): the editing chains start from one run",
                   i, points.size());
  for (const auto& point : points) {
    Json all = params;
    for (auto it = point.begin(); it != point.end(); ++it) all[it.key()] = it.value();
    MethodSpec spec;
    try {
      spec = MethodSpec::parse(method, all, path);
    } catch (const Error& e) {
      rethrow_spec_error(e, path, where, grid);
    }
    RunSpec rs;
    rs.method = spec.text;
    rs.params = spec.params;
    rs.overrides = all;
    rs.id = run_id(spec);
    rs.where = where;
    rs.label = spec.text;
    for (auto it = all.begin(); it != all.end(); ++it) rs.label += " " + it.key() + "=" + value_text(it.value());
    if (ids.count(rs.id)) {  // the same run twice (e.g. a default repeated in a grid): run once
      if (editing_start == int64_t(i))
        for (size_t k = 0; k < c.runs.size(); ++k)
          if (c.runs[k].id == rs.id) c.editing.start_run = k;
      continue;
    }
    ids.insert(rs.id);
    if (editing_start == int64_t(i))
      c.editing.start_run = c.runs.size();
    c.runs.push_back(std::move(rs));
  }
}

void parse_runs(const Json& j, const std::string& path, ExperimentConfig& c) {
  COLLAGE_CHECK_AT(j.contains("runs"), path, "runs", "required key is missing");
  const Json& runs = j["runs"];
  COLLAGE_CHECK_AT(runs.is_array() && !runs.empty(), path, "runs", "must be a non-empty list of runs");
  std::set<std::string> ids;
  const int64_t editing_start = j.contains("editing") && j["editing"].is_object() && j["editing"].contains("start_run") &&
                                        j["editing"]["start_run"].is_number_integer()
                                    ? j["editing"]["start_run"].get<int64_t>()
                                    : -1;
  for (size_t i = 0; i < runs.size(); ++i) parse_run(runs[i], i, path, editing_start, ids, c);
}

}  // namespace

ExperimentConfig parse_config(const Json& j, const std::string& path) {
  COLLAGE_CHECK_AT(j.is_object(), path, "", "an experiment config must be a JSON object");
  ExperimentConfig c;
  c.path = path;
  c.json = j;
  static const std::set<std::string> known = {"dataset", "model",   "seeds",     "steps",   "guidance",
                                              "scheduler", "negative_prompt", "metrics", "segmenter", "clip", "clip_tokenizer",
                                              "lpips",   "save",    "runs",      "max_collages", "description", "editing",
                                              "claims"};
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!known.count(it.key()) && it.key().rfind("_", 0) != 0)
      throw Error(fmt::format("unknown key (valid keys: {})", fmt::join(known, ", ")), path, it.key());
  parse_dataset(j, path, c);
  parse_sampling_settings(j, path, c);
  parse_metric_list(j, path, c);
  parse_save(j, path, c);
  parse_runs(j, path, c);
  if (j.contains("editing")) parse_editing(j["editing"], path, c);
  if (j.contains("claims")) {
    std::vector<std::string> labels;
    for (const auto& r : c.runs) labels.push_back(r.label);
    c.claims = parse_claims(j["claims"], path, labels);
    for (size_t i = 0; i < c.claims.size(); ++i)
      COLLAGE_CHECK_AT(std::find(c.metrics.begin(), c.metrics.end(), c.claims[i].metric) != c.metrics.end(), path,
                       fmt::format("claims[{}].metric", i), "'{}' is not one of the config's metrics ({})",
                       c.claims[i].metric, fmt::join(c.metrics, ", "));
  }
  return c;
}

std::vector<NamedCollage> load_dataset(const ExperimentConfig& config) {
  std::vector<NamedCollage> out;
  if (config.dataset.generate) {
    datasets::ShapesWorldCollageOptions o;
    o.size = static_cast<int>(config.dataset.size);
    o.seed = config.dataset.seed;
    o.kept_strength = config.dataset.kept_strength;
    o.unnamed_probability = config.dataset.unnamed_probability;
    o.unnamed_colour_probability = config.dataset.unnamed_colour_probability;
    o.w_pos = config.dataset.w_pos;
    for (int64_t i = 0; i < config.dataset.n; ++i) {
      NamedCollage nc;
      nc.name = fmt::format("sw{}_{:05d}", config.dataset.seed, i);
      nc.collage = datasets::make_shapesworld_collage(static_cast<uint64_t>(i), o);
      out.push_back(std::move(nc));
    }
  } else {
    for (const auto& folder : list_collages(config.dataset.folder)) {
      NamedCollage nc;
      nc.name = fs::path(folder).filename().string();
      if (nc.name.empty() || nc.name == "collage.json") nc.name = fs::path(folder).parent_path().filename().string();
      nc.collage = load_collage(folder);
      out.push_back(std::move(nc));
    }
  }
  if (config.limit_collages >= 0 && static_cast<int64_t>(out.size()) > config.limit_collages)
    out.resize(static_cast<size_t>(config.limit_collages));
  for (auto& nc : out)
    for (auto& ch : nc.name)
      if (ch == '/' || ch == '.' || ch == ' ') ch = '_';
  COLLAGE_CHECK_AT(!out.empty(), config.path, "dataset", "the dataset has no collages");
  return out;
}

std::pair<int, int> parse_shard(const std::string& text) {
  const auto slash = text.find('/');
  try {
    COLLAGE_CHECK(slash != std::string::npos, "x");
    const int i = std::stoi(text.substr(0, slash)), n = std::stoi(text.substr(slash + 1));
    COLLAGE_CHECK_AT(n >= 1 && i >= 0 && i < n, "", "--shard", "expected i/N with 0 <= i < N, got '{}'", text);
    return {i, n};
  } catch (const Error& e) {
    if (e.field() == "--shard") throw;
  } catch (const std::exception&) {
  }
  throw Error(fmt::format("expected i/N with 0 <= i < N, got '{}'", text), "", "--shard");
}

}  // namespace collage::runner
