// Reports: per run and metric, the mean and 95 % interval over items (Markdown and CSV).
#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <tuple>

#include "core/core.h"
#include "metrics/metrics.h"
#include "runner/h5.h"
#include "runner/runner.h"

namespace cm = collage::metrics;

namespace collage::runner {

namespace {

// Mean, sd (n - 1) and the 95 % interval mean +- 1.96 sd / sqrt(n) of a non-empty sample.
struct MeanInterval {
  double mean = 0, sd = 0, lo = 0, hi = 0;
};
MeanInterval mean_interval(const std::vector<double>& v) {
  MeanInterval m;
  for (double x : v) m.mean += x;
  m.mean /= static_cast<double>(v.size());
  double ss = 0;
  for (double x : v) ss += (x - m.mean) * (x - m.mean);
  m.sd = v.size() > 1 ? std::sqrt(ss / static_cast<double>(v.size() - 1)) : 0.0;
  const double half = 1.96 * m.sd / std::sqrt(static_cast<double>(v.size()));
  m.lo = m.mean - half;
  m.hi = m.mean + half;
  return m;
}

// Whether a difference (run - base) of `metric` is an improvement (unknown metrics: higher is better).
bool improves(const std::string& metric, double diff) {
  const bool higher = !cm::builtin_metrics().has(metric) ||
                      cm::builtin_metrics().info(metric).direction == cm::Direction::higher_is_better;
  return (diff > 0) == higher;
}

// The id of the run named by `base` (an id or a label); errors name --paired and list the runs.
std::string resolve_run(const std::vector<ScoreRow>& rows, const std::string& base) {
  std::map<std::string, std::string> labels;  // run id -> label
  for (const auto& r : rows) labels[r.run_id] = r.label;
  std::string id;
  for (const auto& [run_id, label] : labels)
    if (run_id == base || label == base) {
      COLLAGE_CHECK_AT(id.empty(), "", "--paired", "'{}' names more than one run: give its id", base);
      id = run_id;
    }
  if (id.empty()) {
    std::string runs;
    for (const auto& [run_id, label] : labels) runs += fmt::format("\n  {}  {}", run_id, label);
    throw Error(fmt::format("no run has the id or label '{}'; the runs are:{}", base, runs), "", "--paired");
  }
  return id;
}

}  // namespace

std::vector<ReportRow> summarise(const std::vector<ScoreRow>& rows) {
  // Runs in order of first appearance sorted by label; metrics in order of first appearance.
  std::map<std::pair<std::string, std::string>, std::vector<double>> values;
  std::map<std::string, const ScoreRow*> run_info;
  std::vector<std::string> metric_order;
  for (const auto& r : rows) {
    if (!run_info.count(r.run_id)) run_info[r.run_id] = &r;
    if (std::find(metric_order.begin(), metric_order.end(), r.metric) == metric_order.end())
      metric_order.push_back(r.metric);
    auto& v = values[{r.run_id, r.metric}];
    if (std::isfinite(r.value)) v.push_back(r.value);
  }
  std::vector<std::pair<std::string, std::string>> runs;  // (label, id)
  for (const auto& [id, r] : run_info) runs.emplace_back(r->label, id);
  std::sort(runs.begin(), runs.end());
  std::vector<ReportRow> out;
  for (const auto& [label, id] : runs)
    for (const auto& metric : metric_order) {
      auto it = values.find({id, metric});
      if (it == values.end()) continue;
      const auto& v = it->second;
      ReportRow rr;
      rr.run_id = id;
      rr.method = run_info[id]->method;
      rr.label = label;
      rr.metric = metric;
      rr.n = static_cast<int64_t>(v.size());
      if (v.empty()) {
        rr.mean = rr.sd = rr.lo = rr.hi = std::nan("");
      } else {
        const auto m = mean_interval(v);
        rr.mean = m.mean;
        rr.sd = m.sd;
        rr.lo = m.lo;
        rr.hi = m.hi;
      }
      out.push_back(rr);
    }
  return out;
}


std::vector<PairedRow> paired_differences(const std::vector<ScoreRow>& rows, const std::string& base) {
  const std::string base_id = resolve_run(rows, base);
  std::map<std::string, std::string> labels;  // run id -> label
  for (const auto& r : rows) labels[r.run_id] = r.label;
  // (collage, seed, metric) -> base value
  std::map<std::tuple<std::string, uint64_t, std::string>, double> base_values;
  for (const auto& r : rows)
    if (r.run_id == base_id) base_values[{r.collage, r.seed, r.metric}] = r.value;
  std::map<std::pair<std::string, std::string>, std::vector<double>> diffs;  // (run id, metric) -> differences
  std::vector<std::pair<std::string, std::string>> order;
  for (const auto& r : rows) {
    if (r.run_id == base_id) continue;
    auto it = base_values.find({r.collage, r.seed, r.metric});
    if (it == base_values.end() || !std::isfinite(it->second) || !std::isfinite(r.value)) continue;
    const std::pair<std::string, std::string> key{r.run_id, r.metric};
    if (!diffs.count(key)) order.push_back(key);
    diffs[key].push_back(r.value - it->second);
  }
  std::sort(order.begin(), order.end(), [&](const auto& a, const auto& b) {
    return std::tie(labels[a.first], a.second) < std::tie(labels[b.first], b.second);
  });
  std::vector<PairedRow> out;
  for (const auto& key : order) {
    const auto& d = diffs[key];
    PairedRow p;
    p.run_id = key.first;
    p.label = labels[key.first];
    p.metric = key.second;
    p.n = static_cast<int64_t>(d.size());
    const auto m = mean_interval(d);
    p.mean = m.mean;
    p.lo = m.lo;
    p.hi = m.hi;
    for (double x : d)
      if (x != 0) (improves(p.metric, x) ? p.better : p.worse)++;
    out.push_back(p);
  }
  return out;
}

namespace {
std::vector<ScoreRow> store_rows(const std::string& store, const ReportOptions& options) {
  if (!options.layers.empty()) return read_layer_scores(store, options.layers);
  auto rows = read_scores_table(store);
  if (rows.empty()) rows = read_scores(store);
  return rows;
}
// The store's config as written by the sweep (root attribute "config"); null when absent or unreadable.
Json store_config(const std::string& store) {
  h5::Handle file = h5::open_file(store, false);
  if (!h5::has_attr(file, "config")) return Json();
  try {
    return Json::parse(h5::attr_string(file, "config"), nullptr, true, /*ignore_comments=*/true);
  } catch (const std::exception&) {
    return Json();
  }
}

}  // namespace

std::vector<ClaimResult> evaluate_claims(const std::string& store) {
  const Json config = store_config(store);
  std::vector<ClaimResult> out;
  if (!config.is_object() || !config.contains("claims")) return out;
  const auto claims = parse_claims(config["claims"], store + " (config attribute)", {});
  std::map<std::string, std::vector<ScoreRow>> rows_by_layers;  // "" = whole images
  for (const auto& claim : claims) {
    if (!rows_by_layers.count(claim.layers)) {
      ReportOptions o;
      o.layers = claim.layers;
      rows_by_layers[claim.layers] = store_rows(store, o);
    }
    const auto& rows = rows_by_layers[claim.layers];
    ClaimResult result;
    result.claim = claim;
    result.paired.metric = claim.metric;
    const std::string run_id = resolve_run(rows, claim.run);
    for (const auto& p : paired_differences(rows, claim.base))
      if (p.run_id == run_id && p.metric == claim.metric) result.paired = p;
    // Holds when the whole 95 % interval is on the better side of zero.
    result.holds = result.paired.n > 1 && (improves(claim.metric, 1.0) ? result.paired.lo > 0 : result.paired.hi < 0);
    result.verdict = result.holds ? "holds" : "not shown";
    out.push_back(result);
  }
  return out;
}

std::string claim_line(const ClaimResult& r) {
  const auto& c = r.claim;
  const std::string scored = c.layers.empty() ? c.metric : fmt::format("{} on the '{}' layers", c.metric, c.layers);
  if (r.paired.n == 0) return fmt::format("{}: {} ({} vs {}, {}: no pairs)", r.verdict, c.text, c.run, c.base, scored);
  return fmt::format("{}: {} ({} vs {}, {} {:+.3f}, 95 % {:+.3f}..{:+.3f}, {} pairs, better in {}, worse in {})",
                     r.verdict, c.text, c.run, c.base, scored, r.paired.mean, r.paired.lo, r.paired.hi, r.paired.n,
                     r.paired.better, r.paired.worse);
}

std::string default_paired_base(const std::string& store) {
  const Json config = store_config(store);
  if (!config.is_object() || !config.contains("claims")) return "";
  const auto claims = parse_claims(config["claims"], store + " (config attribute)", {});
  return claims.empty() ? "" : claims.front().base;
}

std::string report_markdown(const std::string& store, const ReportOptions& options) {
  const auto rows = store_rows(store, options);
  const auto summary = summarise(rows);
  std::vector<std::string> metrics_order, runs_order;
  std::map<std::string, std::string> labels;
  std::map<std::pair<std::string, std::string>, const ReportRow*> cell;
  std::map<std::string, int64_t> items_per_run;
  for (const auto& r : summary) {
    if (std::find(metrics_order.begin(), metrics_order.end(), r.metric) == metrics_order.end())
      metrics_order.push_back(r.metric);
    if (std::find(runs_order.begin(), runs_order.end(), r.run_id) == runs_order.end()) runs_order.push_back(r.run_id);
    labels[r.run_id] = r.label;
    cell[{r.run_id, r.metric}] = &r;
    items_per_run[r.run_id] = std::max(items_per_run[r.run_id], r.n);
  }
  std::ostringstream os;
  std::set<std::string> items;
  for (const auto& r : rows) items.insert(r.item);
  os << fmt::format("{}: {} items, {} runs; mean and 95 % interval (mean +- 1.96 sd/sqrt(n)) over items\n", store,
                    items.size(), runs_order.size());
  if (!options.layers.empty())
    os << fmt::format("per-layer scores of the layers whose meta has '{}' (each item: the mean over its such layers; "
                      "metrics without per-layer values are left out)\n",
                      options.layers);
  os << "\n";
  os << "| run | id | n |";
  for (const auto& m : metrics_order) {
    std::string arrow;
    if (cm::builtin_metrics().has(m))
      arrow = cm::builtin_metrics().info(m).direction == cm::Direction::higher_is_better ? " (higher better)"
                                                                                          : " (lower better)";
    os << " " << m << arrow << " |";
  }
  os << "\n|---|---|---:|";
  for (size_t i = 0; i < metrics_order.size(); ++i) os << "---:|";
  os << "\n";
  for (const auto& id : runs_order) {
    os << "| " << labels[id] << " | " << id << " | " << items_per_run[id] << " |";
    for (const auto& m : metrics_order) {
      auto it = cell.find({id, m});
      if (it == cell.end() || it->second->n == 0)
        os << " - |";
      else
        os << fmt::format(" {:.4f} ± {:.4f} |", it->second->mean, it->second->hi - it->second->mean);
    }
    os << "\n";
  }
  const std::string paired_base = options.paired.empty() ? default_paired_base(store) : options.paired;
  if (!paired_base.empty()) {
    const auto paired = paired_differences(rows, paired_base);
    const std::string base_id = resolve_run(rows, paired_base);
    std::string base_label;
    for (const auto& r : rows)
      if (r.run_id == base_id) base_label = r.label;
    os << fmt::format("\npaired with '{}' (same collage and seed): difference run - base, mean and 95 % interval; "
                      "better / worse = pairs where the run scores better / worse by the metric's direction\n\n",
                      base_label);
    os << "| run | metric | pairs | mean difference | 95 % interval | better | worse |\n|---|---|---:|---:|---|---:|---:|\n";
    for (const auto& p : paired)
      os << fmt::format("| {} | {} | {} | {:+.4f} | {:+.4f} .. {:+.4f} | {} | {} |\n", p.label, p.metric, p.n, p.mean,
                        p.lo, p.hi, p.better, p.worse);
  }
  const auto claims = evaluate_claims(store);
  if (!claims.empty()) {
    os << "\nclaims of the experiment (paired with their base run, same collage and seed; holds = the 95 % interval "
          "of the difference lies on the better side of zero):\n";
    for (const auto& c : claims) os << "- " << claim_line(c) << "\n";
  }
  // Why a column shows '-': the skip reasons the store recorded (first reason per metric, item count).
  std::map<std::string, std::pair<std::string, int64_t>> skipped;
  {
    h5::Handle file = h5::open_file(store, false);
    for (const auto& name : h5::children(file, "items")) {
      h5::Handle g = h5::open_group(file, "items/" + name);
      if (!h5::has_attr(g, "complete") || !h5::exists(g, "scores")) continue;
      h5::Handle sg = h5::open_group(g, "scores");
      for (const auto& metric : h5::children(g, "scores")) {
        h5::Handle d(H5Dopen2(sg, metric.c_str(), H5P_DEFAULT));
        if (!d.valid() || !h5::has_attr(d, "skip_reason")) continue;
        auto& entry = skipped[metric];
        if (entry.second++ == 0) entry.first = h5::attr_string(d, "skip_reason");
      }
    }
  }
  if (!skipped.empty()) {
    os << "\nskipped:\n";
    for (const auto& [metric, e] : skipped) os << fmt::format("- {} ({} items): {}\n", metric, e.second, e.first);
  }
  return os.str();
}

void write_report_csv(const std::string& store, const std::string& csv_path, const ReportOptions& options) {
  const auto summary = summarise(store_rows(store, options));
  std::ofstream out(csv_path);
  COLLAGE_CHECK_AT(out.good(), csv_path, "", "cannot write the CSV file");
  auto quote = [](const std::string& s) {
    std::string q = "\"";
    for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
    return q + "\"";
  };
  out << "run_id,method,label,metric,n,mean,sd,ci95_low,ci95_high\n";
  for (const auto& r : summary)
    out << fmt::format("{},{},{},{},{},{:.8g},{:.8g},{:.8g},{:.8g}\n", r.run_id, quote(r.method), quote(r.label),
                       r.metric, r.n, r.mean, r.sd, r.lo, r.hi);
}

}  // namespace collage::runner
