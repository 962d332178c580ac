// The scores table `collage score` prints: one row per metric with its direction, the value and the per-layer values.
#include <cmath>

#include "core/core.h"
#include "metrics/metrics.h"

namespace collage::metrics {

namespace {

std::string value_text(double v) { return std::isfinite(v) ? fmt::format("{:.4f}", v) : std::string("-"); }

}  // namespace

std::string format_scores_table(const Scores& scores, const std::vector<std::string>& names,
                                const std::vector<std::string>& layer_labels, const MetricRegistry& registry) {
  std::string header = fmt::format("| {:<21} | {:<6} | {:>9} |", "metric", "better", "value");
  std::string rule = fmt::format("|{:-<23}|{:-<8}|{:->11}|", "", "", "");
  for (const auto& l : layer_labels) {
    header += fmt::format(" {:>12} |", l.substr(0, 12));
    rule += fmt::format("{:->14}|", "");
  }
  std::string out = header + "\n" + rule + "\n";
  std::vector<std::string> skipped;
  for (const auto& name : names) {
    const auto& v = scores.at(name);
    const char* dir = registry.info(name).direction == Direction::higher_is_better ? "higher" : "lower";
    std::string line = fmt::format("| {:<21} | {:<6} | {:>9} |", name, dir, v.skipped ? "skipped" : value_text(v.value));
    for (size_t i = 0; i < layer_labels.size(); ++i)
      line += fmt::format(" {:>12} |", !v.skipped && i < v.per_layer.size() ? value_text(v.per_layer[i]) : "");
    out += line + "\n";
    if (v.skipped) skipped.push_back(fmt::format("  {}: {}", name, v.skip_reason));
  }
  if (!skipped.empty()) out += "skipped:\n" + fmt::format("{}\n", fmt::join(skipped, "\n"));
  return out;
}

}  // namespace collage::metrics
