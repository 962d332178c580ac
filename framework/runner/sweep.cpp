// Sweeps: every (collage, run) unit with all its seeds as one batch, scored and written to the HDF5 store at once.
#include <ATen/ATen.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>

#include "core/core.h"
#include "diffusion/diffusion.h"
#include "metrics/metrics.h"
#include "runner/h5.h"
#include "runner/runner.h"

namespace fs = std::filesystem;
namespace cm = collage::metrics;

namespace collage::runner {

namespace {
// Per-layer values of a score are stored beside it as "<metric>.per_layer".
const std::string kPerLayer = ".per_layer";
bool is_per_layer(const std::string& name) {
  return name.size() > kPerLayer.size() && name.compare(name.size() - kPerLayer.size(), kPerLayer.size(), kPerLayer) == 0;
}
}  // namespace

namespace {

double now() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

std::string find_shipped(const std::string& relative, const std::string& marker) {
  return find_in_checkout(relative, marker);
}

// A path from the config: as given when it exists, else relative to the config's folder.
std::string resolve_path(const std::string& p, const std::string& config_path) {
  if (p.empty() || fs::exists(p) || fs::path(p).is_absolute() || config_path.empty()) return p;
  auto alt = fs::path(config_path).parent_path() / p;
  return fs::exists(alt) ? alt.string() : p;
}

std::string item_name(const std::string& collage, const std::string& run, uint64_t seed) {
  return fmt::format("{}__{}__seed{}", collage, run, seed);
}

bool needs_any(const std::vector<std::string>& names, cm::Need need) {
  for (const auto& n : names)
    if (cm::builtin_metrics().info(n).needs.has(need)) return true;
  return false;
}

// Everything (besides the image) written for one item.
struct ItemRecord {
  std::string name, collage, run_id, method, label;
  uint64_t seed = 0;
  Json params, timings;
  Json extra = Json::object();  // editing rounds: round, regenerated_layer, edit_from_item, picked
  cm::Scores scores;
  at::Tensor image;      // (3, H, W) float in [0, 1]
  at::Tensor latents;    // optional (C, h, w)
  at::Tensor attention;  // optional (L, h, w)
  at::Tensor noise_map;  // optional (H, W): per-pixel start strength of per-pixel methods (ln, edit, differential)
};

void write_float_tensor(hid_t loc, const std::string& name, const at::Tensor& t) {
  auto c = t.detach().to(at::kCPU, at::kFloat).contiguous();
  std::vector<hsize_t> dims;
  for (auto d : c.sizes()) dims.push_back(static_cast<hsize_t>(d));
  h5::write_array(loc, name, H5T_NATIVE_FLOAT, dims, c.data_ptr<float>());
}

void write_item(hid_t file, const ItemRecord& r) {
  const std::string path = "items/" + r.name;
  h5::remove(file, path);
  h5::Handle g = h5::ensure_group(file, path);
  auto img = to_uint8_hwc(r.image).contiguous();
  std::vector<hsize_t> dims{static_cast<hsize_t>(img.size(0)), static_cast<hsize_t>(img.size(1)),
                            static_cast<hsize_t>(img.size(2))};
  h5::write_array(g, "image", H5T_NATIVE_UINT8, dims, img.data_ptr<uint8_t>());
  h5::set_attr(g, "collage", r.collage);
  h5::set_attr(g, "run_id", r.run_id);
  h5::set_attr(g, "method", r.method);
  h5::set_attr(g, "label", r.label);
  h5::set_attr(g, "seed", static_cast<int64_t>(r.seed));
  h5::set_attr(g, "params", r.params.dump());
  h5::set_attr(g, "timings", r.timings.dump());
  for (auto it = r.extra.begin(); it != r.extra.end(); ++it)
    if (it.value().is_number_integer())
      h5::set_attr(g, it.key(), it.value().get<int64_t>());
    else
      h5::set_attr(g, it.key(), it.value().is_string() ? it.value().get<std::string>() : it.value().dump());
  h5::Handle s = h5::ensure_group(g, "scores");
  for (const auto& [metric, v] : r.scores) {
    h5::write_double(s, metric, v.skipped ? cm::kNaN : v.value);
    if (v.skipped) {
      h5::Handle d(H5Dopen2(s, metric.c_str(), H5P_DEFAULT));
      h5::set_attr(d, "skip_reason", v.skip_reason);
    }
    if (!v.per_layer.empty()) h5::write_doubles(s, metric + kPerLayer, v.per_layer);
  }
  if (r.latents.defined()) write_float_tensor(g, "latents", r.latents);
  if (r.attention.defined()) write_float_tensor(g, "attention", r.attention);
  if (r.noise_map.defined()) write_float_tensor(g, "noise_map", r.noise_map);
  h5::set_attr(g, "complete", static_cast<int64_t>(1));  // written last: the item is whole
}

bool item_complete(hid_t file, const std::string& name) {
  const std::string path = "items/" + name;
  if (!h5::exists(file, path)) return false;
  h5::Handle g = h5::open_group(file, path);
  return h5::has_attr(g, "complete");
}

Json layer_entries(const Collage& c) {
  Json layers = Json::array();
  for (const auto& l : c.layers)
    layers.push_back({{"name", l.name}, {"text", l.text}, {"noise_strength", l.noise_strength}, {"meta", l.meta}});
  return layers;
}

// The same layers as recorded, up to what the record lacks: names and texts agree, and noise strengths where
// recorded (older stores recorded neither them nor meta).
bool same_layers_as_recorded(const Json& recorded, const Json& fresh) {
  if (!recorded.is_array() || !fresh.is_array() || recorded.size() != fresh.size()) return false;
  for (size_t i = 0; i < recorded.size(); ++i) {
    const Json &r = recorded[i], &f = fresh[i];
    if (r.value("name", Json()) != f["name"] || r.value("text", Json()) != f["text"]) return false;
    if (r.contains("noise_strength") && r["noise_strength"] != f["noise_strength"]) return false;
  }
  return true;
}

void write_collage_entry(hid_t file, const NamedCollage& nc) {
  const std::string path = "collages/" + nc.name;
  if (h5::exists(file, path)) {
    // Resuming: refresh the layers' record (a store written before a meta key existed gains it, so `report
    // --layers KEY` works on it without recomputing anything), but only for the layers it recorded.
    h5::Handle g = h5::open_group(file, path);
    const Json fresh = layer_entries(nc.collage);
    if (h5::has_attr(g, "layers") && same_layers_as_recorded(Json::parse(h5::attr_string(g, "layers")), fresh))
      h5::set_attr(g, "layers", fresh.dump());
    return;
  }
  h5::Handle g = h5::ensure_group(file, path);
  const auto placed = place_layers(nc.collage);
  write_float_tensor(g, "visible_masks", visible_masks(placed));
  auto composite = to_uint8_hwc(flatten_layers(placed, nc.collage.background).clamp(0, 1)).contiguous();
  std::vector<hsize_t> dims{static_cast<hsize_t>(composite.size(0)), static_cast<hsize_t>(composite.size(1)),
                            static_cast<hsize_t>(composite.size(2))};
  h5::write_array(g, "composite", H5T_NATIVE_UINT8, dims, composite.data_ptr<uint8_t>());
  h5::set_attr(g, "prompt", nc.collage.prompt);
  h5::set_attr(g, "layers", layer_entries(nc.collage).dump());
  h5::set_attr(g, "source", nc.collage.file.empty() ? std::string("generated") : nc.collage.file);
}

void write_run_entry(hid_t file, const RunSpec& r, int64_t editing_round = 0) {
  const std::string path = "runs/" + r.id;
  if (h5::exists(file, path)) return;
  h5::Handle g = h5::ensure_group(file, path);
  h5::set_attr(g, "method", r.method);
  h5::set_attr(g, "params", r.params.dump());
  h5::set_attr(g, "label", r.label);
  if (editing_round > 0) h5::set_attr(g, "editing_round", editing_round);
}

// The index of the best value (NaN counts as worst; ties go to the earlier one): the editing protocol's pick.
size_t best_index(const std::vector<double>& values, bool higher) {
  size_t best = 0;
  for (size_t i = 1; i < values.size(); ++i) {
    const double v = values[i], w = values[best];
    if (!std::isnan(v) && (std::isnan(w) || (higher ? v > w : v < w))) best = i;
  }
  return best;
}

// The item of `run` for this collage that the editing protocol continues from: the best seed by `pick`.
// "" when any of the run's items is not in the store.
std::string pick_item(hid_t file, const std::string& collage, const std::string& run_id,
                      const std::vector<uint64_t>& seeds, const EditingSpec& ed) {
  std::vector<std::string> names;
  std::vector<double> values;
  for (auto seed : seeds) {
    names.push_back(item_name(collage, run_id, seed));
    if (!item_complete(file, names.back())) return "";
    h5::Handle s = h5::open_group(file, "items/" + names.back() + "/scores");
    values.push_back(h5::exists(s, ed.pick) ? h5::read_double(s, ed.pick) : cm::kNaN);
  }
  return names.empty() ? "" : names[best_index(values, ed.pick_higher)];
}

at::Tensor read_item_image(hid_t file, const std::string& item) {
  const std::string name = "items/" + item + "/image";
  const auto dims = h5::dataset_dims(file, name);
  if (dims.size() != 3) throw Error(name + " is not (H, W, 3)");
  auto img = at::empty({int64_t(dims[0]), int64_t(dims[1]), int64_t(dims[2])}, at::kByte);
  h5::read_array(file, name, H5T_NATIVE_UINT8, img.data_ptr<uint8_t>());
  return img.permute({2, 0, 1}).to(at::kFloat) / 255.0;
}

}  // namespace

// ------------------------------------------------------------------------------------------------

std::vector<SweepUnit> sweep_units(const ExperimentConfig& config, size_t collages, int shard_index, int shard_count) {
  // Units are numbered collage-major; a collage's editing chain belongs to the shard of its start-run unit, so
  // each shard holds whole chains (round r runs after round r - 1 of its collage).
  std::vector<SweepUnit> units;
  int64_t index = 0;
  for (size_t c = 0; c < collages; ++c)
    for (size_t r = 0; r < config.runs.size(); ++r, ++index)
      if (index % shard_count == shard_index) units.push_back({c, r, 0});
  const auto& ed = config.editing;
  if (ed.enabled)
    for (size_t c = 0; c < collages; ++c)
      if (int64_t(c * config.runs.size() + ed.start_run) % shard_count == shard_index)
        for (int64_t r = 1; r <= int64_t(ed.rounds.size()); ++r) units.push_back({c, size_t(r - 1), r});
  return units;
}

const RunSpec& sweep_unit_run(const ExperimentConfig& config, const SweepUnit& unit) {
  return unit.round > 0 ? config.editing.rounds[static_cast<size_t>(unit.round - 1)] : config.runs[unit.run];
}

std::string sweep_item_name(const std::string& collage, const std::string& run_id, uint64_t seed) {
  return item_name(collage, run_id, seed);
}

namespace {

// The sweep's models, loaded once: the pipeline, the metric models and the segmenters made so far.
struct SweepModels {
  std::shared_ptr<StableDiffusion> sd;
  cm::ModelSetup base_setup;
  std::map<std::string, std::shared_ptr<cm::Segmenter>> segmenters;
  cm::SegmenterRegistry seg_registry = cm::all_segmenters();
};

// What an editing round starts from: the previous round's pick, the layer regenerated now.
struct EditingInput {
  std::string from;          // item name of the pick ("" = the chain cannot continue)
  at::Tensor previous_image; // (3, H, W) in [0, 1], as stored
  at::Tensor keep;           // 1 - the regenerated layer's visible mask
  int64_t layer = -1;
};

// The model of the sweep: --model, else the config's, else the embedded default; checked before any work.
std::string sweep_model(const ExperimentConfig& config, const SweepOptions& options) {
  std::string model = options.model_override.empty() ? resolve_path(config.model, config.path) : options.model_override;
  if (model.empty()) model = find_shipped("assets/shapesworld/model", "model_index.json");
  COLLAGE_CHECK_AT(!model.empty(), config.path, "model",
                   "no model given and no embedded default model found in assets/shapesworld/model");
  COLLAGE_CHECK_AT(fs::exists(fs::path(model) / "model_index.json"), config.path, "model",
                   "'{}' is not a diffusers pipeline folder (no model_index.json)", model);
  return model;
}

// Creates the store, or resumes it: the settings must match, incomplete items left by a kill are removed.
void open_store(const ExperimentConfig& config, const SweepOptions& options, const std::vector<NamedCollage>& collages,
                const std::string& model, const std::function<void(const std::string&)>& log) {
  if (!fs::path(options.out).parent_path().empty()) fs::create_directories(fs::path(options.out).parent_path());
  Json settings = config.settings();
  settings["model"] = model;
  h5::Handle file;
  if (fs::exists(options.out)) {
    file = h5::open_file(options.out, true);
    COLLAGE_CHECK_AT(h5::has_attr(file, "settings"), options.out, "", "not a sweep store (no 'settings' attribute)");
    const Json old = Json::parse(h5::attr_string(file, "settings"));
    for (auto it = settings.begin(); it != settings.end(); ++it)
      COLLAGE_CHECK_AT(old.contains(it.key()) && old[it.key()] == it.value(), options.out, it.key(),
                       "the store was written with {} = {}, this config has {}: use another --out", it.key(),
                       old.value(it.key(), Json()).dump(), it.value().dump());
    int64_t removed = 0;
    for (const auto& name : h5::children(file, "items"))
      if (!item_complete(file, name)) {
        h5::remove(file, "items/" + name);
        ++removed;
      }
    if (removed) log(fmt::format("removed {} incomplete item(s) left by an interrupted sweep", removed));
  } else {
    file = h5::create_file(options.out);
    h5::set_attr(file, "config", config.json.dump(2));
    h5::set_attr(file, "config_path", config.path);
    h5::set_attr(file, "settings", settings.dump());
    h5::set_attr(file, "model", model);
    h5::set_attr(file, "framework_version", framework_version());
    h5::set_attr(file, "git_revision", git_revision());
    h5::set_attr(file, "metrics", Json(config.metrics).dump());
  }
  for (const auto& r : config.runs) write_run_entry(file, r);
  for (size_t r = 0; r < config.editing.rounds.size(); ++r) write_run_entry(file, config.editing.rounds[r], int64_t(r) + 1);
  for (const auto& nc : collages) write_collage_entry(file, nc);
  H5Fflush(file, H5F_SCOPE_GLOBAL);
}

// The units whose items are not all complete in the store.
std::vector<SweepUnit> pending_units(const ExperimentConfig& config, const std::string& store,
                                     const std::vector<NamedCollage>& collages, const std::vector<SweepUnit>& units,
                                     int64_t& done_before) {
  std::vector<SweepUnit> todo;
  h5::Handle file = h5::open_file(store, false);
  for (const auto& u : units) {
    bool done = true;
    for (auto seed : config.seeds)
      done = done && item_complete(file, item_name(collages[u.collage].name, sweep_unit_run(config, u).id, seed));
    if (done)
      ++done_before;
    else
      todo.push_back(u);
  }
  return todo;
}

SweepModels load_models(const ExperimentConfig& config, const SweepOptions& options, const std::string& model) {
  SweepModels m;
  PipelineOptions po;
  po.device = options.device;
  po.dtype = options.dtype;
  m.sd = StableDiffusion::load(model, po);
  cm::MetricModelPaths metric_paths;
  metric_paths.clip = resolve_path(config.clip, config.path);
  metric_paths.clip_tokenizer = resolve_path(config.clip_tokenizer, config.path);
  metric_paths.lpips = resolve_path(config.lpips, config.path);
  m.base_setup = cm::load_metric_models(config.metrics, metric_paths);
  return m;
}

// The pick of the previous round of this unit's editing chain (read from the store) and the layer of this round.
EditingInput editing_input(const ExperimentConfig& config, const std::string& store, const NamedCollage& nc,
                           const SweepUnit& unit) {
  const auto& ed = config.editing;
  EditingInput in;
  const std::string prev_run = unit.round == 1 ? config.runs[ed.start_run].id : ed.rounds[size_t(unit.round - 2)].id;
  {
    h5::Handle file = h5::open_file(store, false);
    in.from = pick_item(file, nc.name, prev_run, config.seeds, ed);
    if (!in.from.empty()) in.previous_image = read_item_image(file, in.from);
  }
  if (in.from.empty()) return in;
  std::vector<int64_t> cycle = ed.layers;
  if (cycle.empty())
    for (int64_t l = 1; l < int64_t(nc.collage.layers.size()); ++l) cycle.push_back(l);
  if (cycle.empty()) cycle.push_back(0);
  in.layer = cycle[size_t(unit.round - 1) % cycle.size()];
  in.keep = 1 - visible_masks(place_layers(nc.collage))[in.layer].unsqueeze(0);
  return in;
}

// One item per seed of a unit's output: the stored (8-bit) image, its scores and the saved artefacts.
std::vector<ItemRecord> score_items(const ExperimentConfig& config, SweepModels& models, const NamedCollage& nc,
                                    const RunSpec& run, const MethodOutput& out, const Json& extra,
                                    const EditingInput& edit) {
  const auto& names = config.metrics;
  std::vector<ItemRecord> records;
  for (size_t b = 0; b < config.seeds.size(); ++b) {
    ItemRecord r;
    r.collage = nc.name;
    r.run_id = run.id;
    r.method = run.method;
    r.label = run.label;
    r.seed = config.seeds[b];
    r.name = item_name(nc.name, run.id, r.seed);
    r.params = run.params;
    r.extra = extra;
    // Scored as stored (8-bit), so that the scores are a function of the stored image: rescoring the file
    // reproduces them, and a resumed editing chain picks exactly as an uninterrupted one.
    r.image = to_uint8_hwc(out.images[static_cast<int64_t>(b)].to(at::kCPU, at::kFloat).clamp(0, 1))
                  .permute({2, 0, 1})
                  .to(at::kFloat) / 255.0;
    if (!names.empty()) {
      auto input = cm::score_input_from_collage(nc.collage, r.image);
      cm::ModelSetup setup = models.base_setup;
      if (needs_any(names, cm::Need::segmenter)) {
        std::string seg = config.segmenter == "auto" ? cm::auto_segmenter_name(input) : config.segmenter;
        if (!models.segmenters.count(seg)) models.segmenters[seg] = models.seg_registry.create(seg, Json::object());
        setup.segmenter_name = seg;
        setup.context.segmenter = models.segmenters[seg];
      }
      r.scores = cm::score_with_setup(input, names, setup);
    }
    if (!edit.from.empty()) {
      r.params["edit_from"] = "items/" + edit.from;
      r.params["edit_regenerate"] = std::to_string(edit.layer);
      // How much of what was kept changed: mean absolute difference to the edited image, weighted by
      // 1 - the regenerated layer's visible mask (0 = the rest stayed exactly as it was).
      const double change = ((r.image - edit.previous_image).abs() * edit.keep).sum().item<double>() /
                            std::max(1e-9, 3.0 * edit.keep.sum().item<double>());
      cm::MetricValue mv;
      mv.value = change;
      r.scores["edit_outside_change"] = mv;
    }
    if (config.save_latents && out.latents.defined()) r.latents = out.latents[static_cast<int64_t>(b)];
    if (config.save_noise_map && out.artefacts.count("noise_map"))
      r.noise_map = out.artefacts.at("noise_map").to(at::kCPU, at::kFloat).squeeze();
    if (config.save_attention && out.artefacts.count("attention"))
      r.attention = out.artefacts.at("attention")[static_cast<int64_t>(b)];
    records.push_back(std::move(r));
  }
  return records;
}

// Writes a unit's items at once: open, write every seed's item, flush, close (a kill loses at most this unit).
void write_unit(const std::string& store, std::vector<ItemRecord>& records, const Json& timings, SweepSummary& summary) {
  h5::Handle file = h5::open_file(store, true);
  for (auto& r : records) {
    r.timings = timings;
    write_item(file, r);
    ++summary.items_written;
  }
  H5Fflush(file, H5F_SCOPE_GLOBAL);
}

// The editing round's pick (what the next round edits), marked before "complete" is written.
void mark_pick(const EditingSpec& ed, std::vector<ItemRecord>& records) {
  std::vector<double> values;
  for (const auto& r : records) {
    auto it = r.scores.find(ed.pick);
    values.push_back(it != r.scores.end() && !it->second.skipped ? it->second.value : cm::kNaN);
  }
  const size_t best = best_index(values, ed.pick_higher);
  for (size_t b = 0; b < records.size(); ++b) records[b].extra["picked"] = int64_t(b == best);
}

// One unit: run the method on the collage for every seed (an editing round continues from its previous pick, handed
// over in memory), score and write. Returns false when an editing chain cannot continue.
bool run_sweep_unit(const ExperimentConfig& config, const SweepOptions& options, SweepModels& models,
                    const NamedCollage& nc, const SweepUnit& unit, const std::string& cache_dir,
                    const std::function<void(const std::string&)>& log, SweepSummary& summary, double& unit_seconds,
                    double& method_s, double& scoring_s) {
  const auto& run = sweep_unit_run(config, unit);
  const double t_unit = now();
  Json params = run.params;
  Json extra = Json::object();
  EditingInput edit;
  RunSettings rs;
  if (unit.round > 0) {
    edit = editing_input(config, options.out, nc, unit);
    if (edit.from.empty()) return false;
    params["edit_from"] = "items/" + edit.from;
    params["edit_regenerate"] = std::to_string(edit.layer);
    rs.images["edit_from"] = edit.previous_image;
    extra["round"] = unit.round;
    extra["regenerated_layer"] = edit.layer;
    extra["edit_from_item"] = edit.from;
  }
  rs.seeds = config.seeds;
  rs.steps = config.steps;
  rs.guidance_scale = config.guidance;
  rs.scheduler = config.scheduler;
  rs.negative_prompt = config.negative_prompt;
  rs.record_attention = config.save_attention;
  rs.cache_dir = cache_dir;
  if (!options.quiet) rs.log = [&](const std::string& s) { log("    " + s); };
  Method method(MethodSpec::parse(run.method, params, config.path + ": " + run.where));
  MethodOutput out;
  try {
    out = method.run(nc.collage, *models.sd, rs);
  } catch (const Error& e) {
    throw Error(fmt::format("{} on collage {}: {}", run.label, nc.name, e.what()), config.path, run.where);
  }
  method_s = out.timings.count("total") ? out.timings.at("total") : now() - t_unit;
  summary.method_s += method_s;
  const double t_score = now();
  auto records = score_items(config, models, nc, run, out, extra, edit);
  scoring_s = now() - t_score;
  summary.scoring_s += scoring_s;
  Json timings = Json::object();
  for (const auto& [key, v] : out.timings) timings["method_" + key] = v;
  timings["method_total"] = method_s;
  timings["scoring"] = scoring_s;
  timings["unit_wall"] = now() - t_unit;
  timings["batch"] = config.seeds.size();
  if (unit.round > 0) mark_pick(config.editing, records);
  const double t_write = now();
  write_unit(options.out, records, timings, summary);
  summary.write_s += now() - t_write;
  ++summary.units_run;
  unit_seconds = now() - t_unit;
  return true;
}

}  // namespace

SweepSummary run_sweep(const ExperimentConfig& config, const SweepOptions& options) {
  const double t_start = now();
  SweepSummary summary;
  auto log = options.log ? options.log : [](const std::string& s) { std::cerr << s << "\n"; };
  COLLAGE_CHECK_AT(!options.out.empty(), "", "--out", "no output file given");
  COLLAGE_CHECK_AT(options.shard_count >= 1 && options.shard_index >= 0 && options.shard_index < options.shard_count,
                   "", "--shard", "bad shard {}/{}", options.shard_index, options.shard_count);
  // ---- expand: everything that can fail cheaply, before any model work
  const auto collages = load_dataset(config);
  const std::string model = sweep_model(config, options);
  const auto& ed = config.editing;
  for (size_t c = 0; c < collages.size(); ++c) {
    const int64_t L = static_cast<int64_t>(collages[c].collage.layers.size());
    for (auto l : ed.layers)
      COLLAGE_CHECK_AT(!ed.enabled || l < L, config.path, "editing.layers",
                       "layer {} does not exist in collage {} ({} layers)", l, collages[c].name, L);
  }
  const auto units = sweep_units(config, collages.size(), options.shard_index, options.shard_count);
  summary.units_total = static_cast<int64_t>(units.size());
  // ---- open the store
  open_store(config, options, collages, model, log);
  auto todo = pending_units(config, options.out, collages, units, summary.units_done_before);
  if (options.limit >= 0 && static_cast<int64_t>(todo.size()) > options.limit) todo.resize(static_cast<size_t>(options.limit));
  log(fmt::format("sweep {}: {} collages x {} runs{} x {} seeds; shard {}/{}: {} units, {} done, {} to run now",
                  config.path, collages.size(), config.runs.size(),
                  ed.enabled ? fmt::format(" + {} editing rounds", ed.rounds.size()) : "", config.seeds.size(),
                  options.shard_index, options.shard_count, units.size(), summary.units_done_before, todo.size()));
  // ---- run the units
  if (!todo.empty()) {
    const double t_load = now();
    auto models = load_models(config, options, model);
    summary.load_s = now() - t_load;
    log(fmt::format("loaded {} and the metric models in {:.1f} s", model, summary.load_s));
    std::string cache_dir = options.cache_dir;
    if (cache_dir.empty()) {
      auto p = fs::path(options.out);
      cache_dir = (p.parent_path() / (p.stem().string() + ".cache")).string();
    }
    const double t_loop = now();
    std::set<size_t> broken_chains;  // collages whose editing chain cannot continue (a round is missing)
    for (size_t k = 0; k < todo.size(); ++k) {
      const auto& unit = todo[k];
      const auto& nc = collages[unit.collage];
      const auto& run = sweep_unit_run(config, unit);
      if (unit.round > 0 && broken_chains.count(unit.collage)) continue;
      double unit_s = 0, method_s = 0, scoring_s = 0;
      if (!run_sweep_unit(config, options, models, nc, unit, cache_dir, log, summary, unit_s, method_s, scoring_s)) {
        // e.g. --limit or another shard stopped before the start run of this collage
        log(fmt::format("[{}/{}] {} | {}: skipped: the previous round is not complete in the store", k + 1, todo.size(),
                        nc.name, run.label));
        broken_chains.insert(unit.collage);
        continue;
      }
      const double elapsed = now() - t_loop;
      const double eta = elapsed / static_cast<double>(k + 1) * static_cast<double>(todo.size() - k - 1);
      log(fmt::format("[{}/{}] {} | {} ({}): {:.1f} s (method {:.1f} s, scoring {:.2f} s); elapsed {:.0f} s, ETA {:.0f} s",
                      k + 1, todo.size(), nc.name, run.label, run.id, unit_s, method_s, scoring_s, elapsed, eta));
    }
    log(fmt::format("prompt encodings: {} reused from the cache, {} computed", models.sd->prompt_cache_hits,
                    models.sd->prompt_cache_misses));
  }
  // ---- write the scores table
  rebuild_scores_table(options.out);
  summary.wall_s = now() - t_start;
  log(fmt::format("done: {} units run ({} items), {} already present; wall {:.1f} s = model/metric loading {:.1f} s + "
                  "method calls {:.1f} s + scoring {:.1f} s + writing {:.2f} s + other {:.1f} s",
                  summary.units_run, summary.items_written, summary.units_done_before, summary.wall_s, summary.load_s,
                  summary.method_s, summary.scoring_s, summary.write_s,
                  summary.wall_s - summary.load_s - summary.method_s - summary.scoring_s - summary.write_s));
  return summary;
}

// ------------------------------------------------------------------------------------------------
// Reading back, the scores table, merging

std::vector<std::string> list_items(const std::string& store) {
  h5::Handle file = h5::open_file(store, false);
  std::vector<std::string> out;
  for (const auto& name : h5::children(file, "items"))
    if (item_complete(file, name)) out.push_back(name);
  return out;
}

Json read_item_attrs(const std::string& store, const std::string& item) {
  h5::Handle file = h5::open_file(store, false);
  h5::Handle g = h5::open_group(file, "items/" + item);
  Json j = Json::object();
  for (const char* k : {"collage", "run_id", "method", "label"}) j[k] = h5::attr_string(g, k);
  j["seed"] = h5::attr_int(g, "seed");
  j["params"] = Json::parse(h5::attr_string(g, "params"));
  j["timings"] = Json::parse(h5::attr_string(g, "timings"));
  return j;
}

namespace {

// An item's identifying columns (everything but metric and value).
ScoreRow item_row(hid_t item, const std::string& name) {
  ScoreRow r;
  r.item = name;
  r.collage = h5::attr_string(item, "collage");
  r.run_id = h5::attr_string(item, "run_id");
  r.method = h5::attr_string(item, "method");
  r.label = h5::attr_string(item, "label");
  r.seed = static_cast<uint64_t>(h5::attr_int(item, "seed"));
  return r;
}

}  // namespace

std::vector<ScoreRow> read_scores(const std::string& store) {
  h5::Handle file = h5::open_file(store, false);
  std::vector<ScoreRow> rows;
  for (const auto& name : h5::children(file, "items")) {
    if (!item_complete(file, name)) continue;
    h5::Handle g = h5::open_group(file, "items/" + name);
    const ScoreRow base = item_row(g, name);
    h5::Handle s = h5::open_group(g, "scores");
    for (const auto& metric : h5::children(g, "scores")) {
      if (is_per_layer(metric)) continue;
      ScoreRow r = base;
      r.metric = metric;
      r.value = h5::read_double(s, metric);
      rows.push_back(r);
    }
  }
  return rows;
}

std::vector<ScoreRow> read_layer_scores(const std::string& store, const std::string& layer_key) {
  h5::Handle file = h5::open_file(store, false);
  std::map<std::string, std::vector<size_t>> selected;  // collage -> indices of the flagged layers
  std::set<std::string> keys_seen;
  bool any_key = false;
  for (const auto& name : h5::children(file, "collages")) {
    h5::Handle g = h5::open_group(file, "collages/" + name);
    if (!h5::has_attr(g, "layers")) continue;
    const Json layers = Json::parse(h5::attr_string(g, "layers"));
    for (size_t i = 0; i < layers.size(); ++i) {
      const Json meta = layers[i].value("meta", Json());
      if (meta.is_object())
        for (const auto& [k, v] : meta.items()) keys_seen.insert(k);
      bool has = false;
      if (json_flag(meta, layer_key, &has)) selected[name].push_back(i);
      any_key = any_key || has;
    }
  }
  if (!any_key) {
    const std::string found =
        keys_seen.empty() ? "its layers carry no meta" : fmt::format("keys found: {}", fmt::join(keys_seen, ", "));
    throw Error(fmt::format("no layer in the store has the meta key '{}' ({}); a store written before the key existed "
                            "lacks it: run the same sweep command on the store again (it refreshes the layers' meta, "
                            "recomputing nothing)",
                            layer_key, found),
                store, "--layers");
  }
  std::vector<ScoreRow> rows;
  for (const auto& name : h5::children(file, "items")) {
    if (!item_complete(file, name)) continue;
    h5::Handle g = h5::open_group(file, "items/" + name);
    const ScoreRow base = item_row(g, name);
    auto sel = selected.find(base.collage);
    if (sel == selected.end()) continue;
    h5::Handle s = h5::open_group(g, "scores");
    for (const auto& d : h5::children(g, "scores")) {
      if (!is_per_layer(d)) continue;
      const auto per_layer = h5::read_doubles(s, d);
      double sum = 0;
      int64_t n = 0;
      for (size_t i : sel->second)
        if (i < per_layer.size() && std::isfinite(per_layer[i])) {
          sum += per_layer[i];
          ++n;
        }
      ScoreRow r = base;
      r.metric = d.substr(0, d.size() - kPerLayer.size());
      r.value = n > 0 ? sum / static_cast<double>(n) : std::nan("");
      rows.push_back(r);
    }
  }
  return rows;
}

void rebuild_scores_table(const std::string& store) {
  const auto rows = read_scores(store);
  h5::Handle file = h5::open_file(store, true);
  h5::remove(file, "scores_table");
  h5::Handle g = h5::ensure_group(file, "scores_table");
  std::vector<std::string> item, collage, run, method, label, metric;
  std::vector<int64_t> seed;
  std::vector<double> value;
  for (const auto& r : rows) {
    item.push_back(r.item);
    collage.push_back(r.collage);
    run.push_back(r.run_id);
    method.push_back(r.method);
    label.push_back(r.label);
    metric.push_back(r.metric);
    seed.push_back(static_cast<int64_t>(r.seed));
    value.push_back(r.value);
  }
  h5::write_strings(g, "item", item);
  h5::write_strings(g, "collage", collage);
  h5::write_strings(g, "run_id", run);
  h5::write_strings(g, "method", method);
  h5::write_strings(g, "label", label);
  h5::write_strings(g, "metric", metric);
  h5::write_int64s(g, "seed", seed);
  h5::write_doubles(g, "value", value);
  h5::set_attr(g, "rows", static_cast<int64_t>(rows.size()));
  H5Fflush(file, H5F_SCOPE_GLOBAL);
}

std::vector<ScoreRow> read_scores_table(const std::string& store) {
  h5::Handle file = h5::open_file(store, false);
  std::vector<ScoreRow> rows;
  if (!h5::exists(file, "scores_table")) return rows;
  h5::Handle g = h5::open_group(file, "scores_table");
  const auto item = h5::read_strings(g, "item"), collage = h5::read_strings(g, "collage"),
             run = h5::read_strings(g, "run_id"), method = h5::read_strings(g, "method"),
             label = h5::read_strings(g, "label"), metric = h5::read_strings(g, "metric");
  const auto seed = h5::read_int64s(g, "seed");
  const auto value = h5::read_doubles(g, "value");
  for (size_t i = 0; i < value.size(); ++i)
    rows.push_back({item[i], collage[i], run[i], method[i], label[i], static_cast<uint64_t>(seed[i]), metric[i], value[i]});
  return rows;
}

void merge_stores(const std::string& out, const std::vector<std::string>& inputs) {
  COLLAGE_CHECK_AT(!inputs.empty(), "", "inputs", "nothing to merge");
  for (const auto& in : inputs)
    COLLAGE_CHECK_AT(fs::absolute(in) != fs::absolute(out), out, "", "the output is also an input");
  std::string settings;
  {
    h5::Handle first = h5::open_file(inputs[0], false);
    settings = h5::attr_string(first, "settings");
    h5::Handle dst = h5::create_file(out);
    for (const char* k : {"config", "config_path", "settings", "model", "framework_version", "git_revision", "metrics"})
      if (h5::has_attr(first, k)) h5::set_attr(dst, k, h5::attr_string(first, k));
    h5::set_attr(dst, "merged_from", Json(inputs).dump());
  }
  h5::Handle dst = h5::open_file(out, true);
  for (const auto& in : inputs) {
    h5::Handle src = h5::open_file(in, false);
    COLLAGE_CHECK_AT(Json::parse(h5::attr_string(src, "settings")) == Json::parse(settings), in, "settings",
                     "written with other settings than {} ({} vs {})", inputs[0], h5::attr_string(src, "settings"),
                     settings);
    for (const char* group : {"runs", "collages", "items"}) {
      h5::ensure_group(dst, group);
      for (const auto& name : h5::children(src, group)) {
        const std::string path = std::string(group) + "/" + name;
        if (std::string(group) == "items" && !item_complete(src, name)) continue;
        if (h5::exists(dst, path)) continue;
        if (H5Ocopy(src, path.c_str(), dst, path.c_str(), H5P_DEFAULT, H5P_DEFAULT) < 0)
          throw Error("HDF5: copying " + path + " failed", in);
      }
    }
  }
  dst.close();
  rebuild_scores_table(out);
}

}  // namespace collage::runner
