// `collage report STORE --html DIR`: a static results page. Everything the page shows is read from the store
// (framework/runner/README.md); images are written as PNGs under DIR/img/, so the page opens from disk with no
// server and no network. Small images (the sandbox's 64x64) are scaled up with nearest-neighbour pixels.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <tuple>

#include "core/core.h"
#include "metrics/metrics.h"
#include "runner/h5.h"
#include "runner/runner.h"

namespace fs = std::filesystem;
namespace cm = collage::metrics;

namespace collage::runner {

namespace {

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      case '\n': o += "&#10;"; break;
      default: o += c;
    }
  }
  return o;
}

// A string usable as an HTML id and a file name.
std::string slug(const std::string& s) {
  std::string o;
  for (char c : s) o += std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' ? c : '_';
  return o;
}

bool higher_is_better(const std::string& metric) {
  return !cm::builtin_metrics().has(metric) ||
         cm::builtin_metrics().info(metric).direction == cm::Direction::higher_is_better;
}
std::string direction_arrow(const std::string& metric) {
  if (!cm::builtin_metrics().has(metric)) return "";
  return higher_is_better(metric) ? " &uarr;" : " &darr;";
}

// One stored image of the page.
struct Picture {
  std::string src;        // relative to the page
  int64_t width = 0, height = 0;
};

// Writes an (H, W, C) uint8 dataset (C = 3) or an (H, W) float dataset in [0, 1] (a map) as DIR/img/FILE.png.
Picture save_dataset_png(hid_t loc, const std::string& dataset, const std::string& dir, const std::string& file) {
  const auto dims = h5::dataset_dims(loc, dataset);
  COLLAGE_CHECK(dims.size() == 3 || dims.size() == 2, "{} has {} dimensions (expected an image or a map)", dataset,
                dims.size());
  const int64_t h = static_cast<int64_t>(dims[0]), w = static_cast<int64_t>(dims[1]);
  at::Tensor chw;
  if (dims.size() == 3) {
    auto hwc = at::empty({h, w, static_cast<int64_t>(dims[2])}, at::kByte);
    h5::read_array(loc, dataset, H5T_NATIVE_UINT8, hwc.data_ptr<uint8_t>());
    chw = hwc.permute({2, 0, 1}).to(at::kFloat) / 255.0;
  } else {
    auto map = at::empty({h, w}, at::kFloat);
    h5::read_array(loc, dataset, H5T_NATIVE_FLOAT, map.data_ptr<float>());
    chw = map.clamp(0, 1).unsqueeze(0).expand({3, h, w}).contiguous();
  }
  write_image((fs::path(dir) / "img" / (file + ".png")).string(), chw);
  return {"img/" + file + ".png", w, h};
}

// An <img>: small images shown three times larger with square pixels, large ones at most 256 wide; a click opens
// the image itself.
std::string img_tag(const Picture& p, const std::string& title, const std::string& css = "") {
  const bool upscale = p.width < 128;
  const int64_t shown = upscale ? 3 * p.width : std::min<int64_t>(p.width, 256);
  const int64_t shown_h = p.width > 0 ? shown * p.height / p.width : shown;
  return fmt::format("<a href=\"{}\"><img src=\"{}\" width=\"{}\" height=\"{}\" class=\"{}{}\" title=\"{}\" alt=\"{}\"></a>",
                     esc(p.src), esc(p.src), shown, shown_h, upscale ? "px" : "", css.empty() ? "" : " " + css,
                     esc(title), esc(title.substr(0, title.find('\n'))));
}

struct Item {
  std::string name, collage, run_id, label;
  uint64_t seed = 0;
  int64_t round = 0, regenerated_layer = -1, picked = 0;
  std::string edit_from;
  std::string title;  // hover text: run, seed, every score
  Picture image, noise_map;
};

struct Run {
  std::string id, label;
  int64_t editing_round = 0;
};

struct StoreView {
  Json settings, config;
  std::map<std::string, std::string> root;  // root attributes shown as they are
  std::vector<Run> runs;                   // by label, editing rounds last (by round)
  std::vector<std::string> collages;
  std::map<std::string, std::string> collage_prompt;
  std::map<std::string, Json> collage_layers;
  std::map<std::string, Picture> composite;
  std::map<std::string, Item> items;       // by item name
};

std::string item_title(hid_t item, const Item& it) {
  std::string t = fmt::format("{}\nseed {}", it.label, it.seed);
  if (!h5::exists(item, "scores")) return t;
  h5::Handle s = h5::open_group(item, "scores");
  for (const auto& name : h5::children(item, "scores")) {
    const std::string suffix = ".per_layer";
    if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      std::vector<std::string> values;
      for (double v : h5::read_doubles(s, name)) values.push_back(std::isfinite(v) ? fmt::format("{:.3g}", v) : "-");
      t += fmt::format("\n{} per layer: {}", name.substr(0, name.size() - suffix.size()), fmt::join(values, ", "));
    } else {
      const double v = h5::read_double(s, name);
      t += fmt::format("\n{}: {}", name, std::isfinite(v) ? fmt::format("{:.4f}", v) : "skipped");
    }
  }
  return t;
}

StoreView read_store(const std::string& store, const std::string& dir) {
  StoreView v;
  h5::Handle file = h5::open_file(store, false);
  for (const char* k : {"config_path", "model", "framework_version", "git_revision", "merged_from"})
    if (h5::has_attr(file, k)) v.root[k] = h5::attr_string(file, k);
  if (h5::has_attr(file, "settings")) v.settings = Json::parse(h5::attr_string(file, "settings"));
  if (h5::has_attr(file, "config")) v.config = Json::parse(h5::attr_string(file, "config"), nullptr, false, true);
  for (const auto& id : h5::children(file, "runs")) {
    h5::Handle g = h5::open_group(file, "runs/" + id);
    v.runs.push_back({id, h5::attr_string(g, "label"), h5::has_attr(g, "editing_round") ? h5::attr_int(g, "editing_round") : 0});
  }
  std::sort(v.runs.begin(), v.runs.end(),
            [](const Run& a, const Run& b) { return std::tie(a.editing_round, a.label) < std::tie(b.editing_round, b.label); });
  std::map<std::string, std::string> label_of;
  for (const auto& r : v.runs) label_of[r.id] = r.label;
  for (const auto& name : h5::children(file, "collages")) {
    h5::Handle g = h5::open_group(file, "collages/" + name);
    v.collages.push_back(name);
    if (h5::has_attr(g, "prompt")) v.collage_prompt[name] = h5::attr_string(g, "prompt");
    if (h5::has_attr(g, "layers")) v.collage_layers[name] = Json::parse(h5::attr_string(g, "layers"));
    if (h5::exists(g, "composite")) v.composite[name] = save_dataset_png(g, "composite", dir, "collage_" + slug(name));
  }
  for (const auto& name : h5::children(file, "items")) {
    h5::Handle g = h5::open_group(file, "items/" + name);
    if (!h5::has_attr(g, "complete")) continue;
    Item it;
    it.name = name;
    it.collage = h5::attr_string(g, "collage");
    it.run_id = h5::attr_string(g, "run_id");
    it.label = label_of.count(it.run_id) ? label_of[it.run_id] : h5::attr_string(g, "label");
    it.seed = static_cast<uint64_t>(h5::attr_int(g, "seed"));
    if (h5::has_attr(g, "round")) {
      it.round = h5::attr_int(g, "round");
      it.regenerated_layer = h5::attr_int(g, "regenerated_layer");
      it.picked = h5::attr_int(g, "picked");
      it.edit_from = h5::attr_string(g, "edit_from_item");
    }
    it.title = item_title(g, it);
    it.image = save_dataset_png(g, "image", dir, slug(name));
    if (h5::exists(g, "noise_map")) it.noise_map = save_dataset_png(g, "noise_map", dir, "noise_" + slug(name));
    v.items[name] = std::move(it);
  }
  return v;
}

std::string item_key(const std::string& collage, const std::string& run_id, uint64_t seed) {
  return fmt::format("{}__{}__seed{}", collage, run_id, seed);
}

std::vector<uint64_t> seeds_of(const StoreView& v) {
  std::set<uint64_t> s;
  for (const auto& [name, it] : v.items) s.insert(it.seed);
  return {s.begin(), s.end()};
}


void write_settings(std::ostream& o, const StoreView& v, const std::string& store) {
  o << "<section id=\"settings\"><h2>Settings</h2><table class=\"kv\">\n";
  o << fmt::format("<tr><th>store</th><td>{}</td></tr>\n", esc(store));
  if (v.config.is_object() && v.config.contains("description"))
    o << fmt::format("<tr><th>description</th><td>{}</td></tr>\n", esc(v.config["description"].get<std::string>()));
  for (const auto& [k, val] : v.root) o << fmt::format("<tr><th>{}</th><td>{}</td></tr>\n", esc(k), esc(val));
  if (v.settings.is_object())
    for (const auto& [k, val] : v.settings.items())
      o << fmt::format("<tr><th>{}</th><td>{}</td></tr>\n", esc(k), esc(val.is_string() ? val.get<std::string>() : val.dump()));
  o << "</table>\n";
  if (!v.config.is_discarded() && !v.config.is_null())
    o << "<details><summary>the experiment config</summary><pre>" << esc(v.config.dump(2)) << "</pre></details>\n";
  o << "</section>\n";
}

void write_run_table(std::ostream& o, const std::vector<ScoreRow>& rows) {
  const auto summary = summarise(rows);
  std::vector<std::string> metrics, runs;
  std::map<std::string, std::string> labels;
  std::map<std::pair<std::string, std::string>, const ReportRow*> cell;
  std::map<std::string, double> best;  // metric -> best mean over runs
  for (const auto& r : summary) {
    if (std::find(metrics.begin(), metrics.end(), r.metric) == metrics.end()) metrics.push_back(r.metric);
    if (std::find(runs.begin(), runs.end(), r.run_id) == runs.end()) runs.push_back(r.run_id);
    labels[r.run_id] = r.label;
    cell[{r.run_id, r.metric}] = &r;
    if (r.n == 0 || !std::isfinite(r.mean)) continue;
    auto b = best.find(r.metric);
    if (b == best.end() || (higher_is_better(r.metric) ? r.mean > b->second : r.mean < b->second)) best[r.metric] = r.mean;
  }
  o << "<section id=\"runs\"><h2>Per run</h2><p>Mean and 95 % interval (mean &plusmn; 1.96 sd/&radic;n) over items "
       "(collages &times; seeds); &uarr; higher is better, &darr; lower is better; the best mean of each metric is "
       "<strong>bold</strong>.</p>\n<table class=\"scores\"><tr><th>run</th><th>id</th>";
  for (const auto& m : metrics) o << "<th>" << esc(m) << direction_arrow(m) << "</th>";
  o << "</tr>\n";
  for (const auto& id : runs) {
    o << fmt::format("<tr><td>{}</td><td><code>{}</code></td>", esc(labels[id]), esc(id));
    for (const auto& m : metrics) {
      auto it = cell.find({id, m});
      if (it == cell.end() || it->second->n == 0) {
        o << "<td>-</td>";
        continue;
      }
      const auto& r = *it->second;
      const bool is_best = best.count(m) && r.mean == best[m];
      const std::string text = fmt::format("{:.4f} &plusmn; {:.4f}", r.mean, r.hi - r.mean);
      o << fmt::format("<td title=\"n = {}\"{}>{}</td>", r.n, is_best ? " class=\"best\"" : "",
                       is_best ? "<strong>" + text + "</strong>" : text);
    }
    o << "</tr>\n";
  }
  o << "</table></section>\n";
}

void write_paired_table(std::ostream& o, const std::vector<ScoreRow>& rows, const std::string& base) {
  o << "<section id=\"paired\"><h2>Paired with " << esc(base) << "</h2>\n";
  const auto paired = paired_differences(rows, base);
  o << "<p>Differences run &minus; base over items matched on collage and seed: mean, 95 % interval, and how many "
       "pairs got better / worse by the metric's direction. Green: the interval lies on the better side of zero, "
       "red: on the worse side.</p>\n<table class=\"scores\"><tr><th>run</th><th>metric</th><th>pairs</th><th>mean "
       "difference</th><th>95 % interval</th><th>better</th><th>worse</th></tr>\n";
  for (const auto& p : paired) {
    const bool up = higher_is_better(p.metric);
    const bool better = p.n > 1 && (up ? p.lo > 0 : p.hi < 0), worse = p.n > 1 && (up ? p.hi < 0 : p.lo > 0);
    o << fmt::format("<tr{}><td>{}</td><td>{}{}</td><td>{}</td><td>{:+.4f}</td><td>{:+.4f} .. {:+.4f}</td><td>{}</td>"
                     "<td>{}</td></tr>\n",
                     better ? " class=\"better\"" : worse ? " class=\"worse\"" : "", esc(p.label), esc(p.metric),
                     direction_arrow(p.metric), p.n, p.mean, p.lo, p.hi, p.better, p.worse);
  }
  o << "</table></section>\n";
}

void write_claims(std::ostream& o, const std::vector<ClaimResult>& claims) {
  if (claims.empty()) return;
  o << "<section id=\"claims\"><h2>Claims</h2><p>Each claim pairs a run with its base run (same collage and seed); it "
       "<em>holds</em> when the 95 % interval of the difference lies on the better side of zero.</p><ul>\n";
  for (const auto& c : claims)
    o << fmt::format("<li class=\"{}\"><span class=\"verdict\">{}</span> {}</li>\n", c.holds ? "holds" : "not-shown",
                     esc(c.verdict), esc(claim_line(c).substr(c.verdict.size() + 2)));
  o << "</ul></section>\n";
}

void write_figures(std::ostream& o, const std::string& dir) {
  const fs::path figures = fs::path(dir) / "figures";
  if (!fs::is_directory(figures)) return;
  std::vector<std::string> pngs;
  for (const auto& e : fs::directory_iterator(figures))
    if (e.path().extension() == ".png") pngs.push_back(e.path().filename().string());
  if (pngs.empty()) return;
  std::sort(pngs.begin(), pngs.end());
  o << "<section id=\"figures\"><h2>Figures</h2><p>Drawn by <code>scripts/figures.py</code> from the same store.</p>\n";
  for (const auto& p : pngs)
    o << fmt::format("<figure><a href=\"figures/{0}\"><img src=\"figures/{0}\" class=\"figure\" alt=\"{0}\"></a>"
                     "<figcaption>{0}</figcaption></figure>\n",
                     esc(p));
  o << "</section>\n";
}

// The collage index and one section per collage: its layers, then a row per seed with every (non-editing) run's
// image, the noise maps of the runs that stored one, and the collage's editing chain.
void write_collages(std::ostream& o, const StoreView& v) {
  const auto seeds = seeds_of(v);
  std::vector<const Run*> plain;
  for (const auto& r : v.runs)
    if (!r.editing_round) plain.push_back(&r);
  o << "<section id=\"collages\"><h2>Collages</h2><p>Every collage with every run's image per seed; hover over an image "
       "for its scores, click it for the image itself.</p><div class=\"index\">\n";
  for (const auto& c : v.collages) {
    auto pic = v.composite.find(c);
    o << fmt::format("<a href=\"#c-{}\" title=\"{}\">", slug(c), esc(c));
    if (pic != v.composite.end()) o << fmt::format("<img src=\"{}\" width=\"64\" height=\"64\" class=\"px\" alt=\"{}\">", esc(pic->second.src), esc(c));
    o << "</a>\n";
  }
  o << "</div>\n";
  for (const auto& c : v.collages) {
    o << fmt::format("<section class=\"collage\" id=\"c-{}\"><h3>{}</h3>\n", slug(c), esc(c));
    if (v.collage_prompt.count(c)) o << "<p class=\"prompt\">&ldquo;" << esc(v.collage_prompt.at(c)) << "&rdquo;</p>\n";
    if (v.collage_layers.count(c)) {
      o << "<table class=\"layers\"><tr><th>layer</th><th>text</th><th>noise strength</th><th>kept</th></tr>\n";
      for (const auto& l : v.collage_layers.at(c)) {
        const Json meta = l.value("meta", Json::object());
        const bool kept = meta.is_object() && meta.value("kept", false);
        o << fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n", esc(l.value("name", "")),
                         esc(l.value("text", "")), l.contains("noise_strength") ? l["noise_strength"].dump() : "-",
                         kept ? "kept" : "");
      }
      o << "</table>\n";
    }
    o << "<table class=\"grid\"><tr><th>seed</th><th>collage</th>";
    for (const auto* r : plain) o << "<th>" << esc(r->label) << "</th>";
    o << "</tr>\n";
    for (size_t k = 0; k < seeds.size(); ++k) {
      o << "<tr><th>" << seeds[k] << "</th><td>";
      if (v.composite.count(c)) o << img_tag(v.composite.at(c), c + "\nthe collage (flattened layers)");
      o << "</td>";
      for (const auto* r : plain) {
        auto it = v.items.find(item_key(c, r->id, seeds[k]));
        o << "<td>" << (it == v.items.end() ? std::string("-") : img_tag(it->second.image, it->second.title)) << "</td>";
      }
      o << "</tr>\n";
    }
    bool any_noise = false;
    for (const auto* r : plain)
      if (!seeds.empty() && v.items.count(item_key(c, r->id, seeds[0])) &&
          !v.items.at(item_key(c, r->id, seeds[0])).noise_map.src.empty())
        any_noise = true;
    if (any_noise) {
      o << "<tr><th><a href=\"#noise\">noise map</a></th><td></td>";
      for (const auto* r : plain) {
        auto it = v.items.find(item_key(c, r->id, seeds[0]));
        const bool has = it != v.items.end() && !it->second.noise_map.src.empty();
        o << "<td>" << (has ? img_tag(it->second.noise_map, r->label + "\nnoise map: the strength each pixel starts "
                                                                      "denoising at (white = 1, black = 0)")
                            : std::string())
          << "</td>";
      }
      o << "</tr>\n";
    }
    o << "</table>\n<p class=\"nav\"><a href=\"#top\">top</a> &middot; <a href=\"#runs\">per-run table</a>";
    if (v.runs.size() > plain.size()) o << " &middot; <a href=\"#editing\">editing chains</a>";
    o << "</p></section>\n";
  }
  o << "</section>\n";
}

// Per collage: the collage, the first noise-storing run's noise map and image (first seed).
void write_noise(std::ostream& o, const StoreView& v) {
  std::vector<const Item*> rows;
  for (const auto& c : v.collages) {
    const Item* first = nullptr;
    for (const auto& r : v.runs) {
      if (r.editing_round) continue;
      for (const auto& [name, it] : v.items)
        if (it.collage == c && it.run_id == r.id && !it.noise_map.src.empty() && (!first || it.seed < first->seed)) first = &it;
      if (first) break;
    }
    if (first) rows.push_back(first);
  }
  if (rows.empty()) return;
  o << "<section id=\"noise\"><h2>Noise maps</h2><p>Per-layer noise: the strength each pixel starts denoising at "
       "(white = 1, black = 0; a kept layer is dark), next to the collage and the image.</p>\n<table class=\"grid\">"
       "<tr><th>collage</th><th></th><th>noise map</th><th>image</th></tr>\n";
  for (const auto* it : rows) {
    o << fmt::format("<tr><th><a href=\"#c-{}\">{}</a></th><td>", slug(it->collage), esc(it->collage));
    if (v.composite.count(it->collage)) o << img_tag(v.composite.at(it->collage), it->collage);
    o << "</td><td>" << img_tag(it->noise_map, it->label + "\nnoise map") << "</td><td>" << img_tag(it->image, it->title)
      << "</td></tr>\n";
  }
  o << "</table></section>\n";
}

// Per collage: the start image, then each round's picked image (the one the next round edits).
void write_editing(std::ostream& o, const StoreView& v) {
  std::map<std::string, std::vector<const Item*>> picks;  // collage -> picked items by round
  for (const auto& [name, it] : v.items)
    if (it.round > 0 && it.picked) picks[it.collage].push_back(&it);
  if (picks.empty()) return;
  o << "<section id=\"editing\"><h2>Editing chains</h2><p>Each round regenerates one layer of the previous round's "
       "pick and keeps the rest; shown: the start image and each round's pick.</p>\n<table class=\"grid\">\n";
  for (auto& [c, chain] : picks) {
    std::sort(chain.begin(), chain.end(), [](const Item* a, const Item* b) { return a->round < b->round; });
    o << fmt::format("<tr><th><a href=\"#c-{}\">{}</a></th>", slug(c), esc(c));
    auto start = v.items.find(chain.front()->edit_from);
    o << "<td>" << (start == v.items.end() ? std::string("-") : img_tag(start->second.image, "start\n" + start->second.title))
      << "<br>start</td>";
    for (const auto* it : chain)
      o << "<td>" << img_tag(it->image, it->title) << fmt::format("<br>round {}: layer {}", it->round, it->regenerated_layer)
        << "</td>";
    o << "</tr>\n";
  }
  o << "</table></section>\n";
}

const char* kStyle = R"(body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:110em}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}h3{margin-bottom:.2em}
nav a{margin-right:1em}table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ddd;padding:.25em .5em;
vertical-align:top}table.scores td{text-align:right;font-variant-numeric:tabular-nums}
table.scores td:first-child,table.scores td:nth-child(2){text-align:left}table.grid td{text-align:center}
td.best{background:#eef6ee}tr.better td{background:#e3f4e3}tr.worse td{background:#f8e2e2}img.px{image-rendering:pixelated}
img{display:block;margin:auto}img.figure{max-width:100%;height:auto}.index a{display:inline-block;margin:2px}
li.holds .verdict{background:#2e7d32;color:#fff;padding:0 .4em;border-radius:3px}
li.not-shown .verdict{background:#888;color:#fff;padding:0 .4em;border-radius:3px}.prompt{font-style:italic}
table.kv th{text-align:left}pre{background:#f6f6f6;padding:.5em;overflow:auto}figure{margin:.5em 0})";

// Marks <body> once every image has finished loading: data-images-loaded = how many loaded with pixels,
// data-images-total = how many there are (the page test compares them in a headless browser).
const char* kLoadCheck = R"(<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-total', String(imgs.length));
  document.body.setAttribute('data-images-loaded', String(ok));
});
</script>)";

}  // namespace

std::string write_report_html(const std::string& store, const std::string& dir, const ReportOptions& options) {
  fs::create_directories(fs::path(dir) / "img");
  const StoreView v = read_store(store, dir);
  std::vector<ScoreRow> rows;
  if (!options.layers.empty()) {
    rows = read_layer_scores(store, options.layers);
  } else {
    rows = read_scores_table(store);
    if (rows.empty()) rows = read_scores(store);
  }
  const std::string base = options.paired.empty() ? default_paired_base(store) : options.paired;
  const auto claims = evaluate_claims(store);
  // The sections in page order; the navigation names those with content.
  std::vector<std::tuple<std::string, std::string, std::string>> sections;  // id, name, html
  auto add = [&](const std::string& id, const std::string& name, auto&& write) {
    std::ostringstream part;
    write(part);
    sections.emplace_back(id, name, part.str());
  };
  add("claims", "claims", [&](std::ostream& s) { write_claims(s, claims); });
  add("figures", "figures", [&](std::ostream& s) { write_figures(s, dir); });
  add("runs", "per run", [&](std::ostream& s) { write_run_table(s, rows); });
  add("paired", "paired", [&](std::ostream& s) {
    if (!base.empty()) write_paired_table(s, rows, base);
  });
  add("collages", "collages", [&](std::ostream& s) { write_collages(s, v); });
  add("noise", "noise maps", [&](std::ostream& s) { write_noise(s, v); });
  add("editing", "editing chains", [&](std::ostream& s) { write_editing(s, v); });
  add("settings", "settings", [&](std::ostream& s) { write_settings(s, v, store); });
  const std::string title =
      v.config.is_object() && v.config.contains("description") ? v.config["description"].get<std::string>() : store;
  std::ostringstream o;
  o << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" << esc(title) << "</title><style>"
    << kStyle << "</style></head>\n<body id=\"top\">\n<h1>" << esc(title) << "</h1>\n<nav>";
  for (const auto& [id, name, html] : sections)
    if (!html.empty()) o << fmt::format("<a href=\"#{}\">{}</a>", id, name);
  o << "</nav>\n";
  if (!options.layers.empty())
    o << "<p>Scores of the layers whose meta has <code>" << esc(options.layers) << "</code> (per-layer values averaged "
      << "over those layers).</p>\n";
  for (const auto& [id, name, html] : sections) o << html;
  o << kLoadCheck << "\n</body></html>\n";
  const std::string path = (fs::path(dir) / "index.html").string();
  std::ofstream out(path);
  COLLAGE_CHECK_AT(out.good(), path, "", "cannot write the results page");
  out << o.str();
  COLLAGE_CHECK_AT(out.good(), path, "", "writing the results page failed");
  return path;
}

}  // namespace collage::runner
