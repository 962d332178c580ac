// The parity table `collage parity` prints (and the device check): one summary row per component (its worst case),
// every failure, or every case.
#include <map>

#include "core/core.h"
#include "parity/parity.h"

namespace collage::parity {

namespace {

std::string row(const CaseResult& r, const std::string& name) {
  if (r.skipped)
    return fmt::format("| {:<20} | {:<46} | {:>10} | {:>10} | {:>10} | {:>16} | {:<6} |\n", r.component,
                       name.substr(0, 46), "-", "-", "-", "-", "SKIP");
  const std::string tol = r.rtol > 0 || r.atol > 0 ? fmt::format("r{:.0e} a{:.0e}", r.rtol, r.atol) : "exact";
  std::string out = fmt::format("| {:<20} | {:<46} | {:>10.3e} | {:>10.3e} | {:>10.3e} | {:>16} | {:<6} |\n", r.component,
                                name.substr(0, 46), r.max_abs_diff, r.max_abs_ref, r.rel, tol, r.pass ? "ok" : "FAIL");
  if (!r.pass && !r.detail.empty()) out += "    -> " + r.detail + "\n";
  return out;
}

}  // namespace

size_t count_failures(const std::vector<CaseResult>& results) {
  size_t failures = 0;
  for (const auto& r : results) failures += r.pass ? 0 : 1;
  return failures;
}

std::string format_table(const std::vector<CaseResult>& results, bool all_rows) {
  std::string out = fmt::format("| {:<20} | {:<46} | {:>10} | {:>10} | {:>10} | {:>16} | {:<6} |\n", "component", "case",
                                "max_abs", "max|ref|", "rel", "tolerance", "status");
  out += fmt::format("|{:-<22}|{:-<48}|{:->12}|{:->12}|{:->12}|{:->18}|{:-<8}|\n", "", "", "", "", "", "", "");
  std::map<std::string, std::vector<const CaseResult*>> by_component;
  for (const auto& r : results) by_component[r.component].push_back(&r);
  for (const auto& [component, rows] : by_component) {
    if (all_rows || rows.front()->skipped) {
      for (const auto* r : rows) out += row(*r, r->name);
      continue;
    }
    const CaseResult* worst = rows.front();
    size_t ok = 0;
    for (const auto* r : rows) {
      ok += r->pass;
      if (r->rel > worst->rel) worst = r;
    }
    out += row(*worst, fmt::format("{}/{} cases ok; worst: {}", ok, rows.size(), worst->name));
    for (const auto* r : rows)
      if (!r->pass && r != worst) out += row(*r, r->name);
  }
  const size_t failures = count_failures(results);
  size_t skipped = 0;
  for (const auto& r : results) skipped += r.skipped;
  out += fmt::format("\n{} cases, {} passed, {} failed", results.size() - skipped, results.size() - skipped - failures,
                     failures);
  if (skipped) out += fmt::format("; {} unknown folder(s) not checked", skipped);
  return out + "\n";
}

}  // namespace collage::parity
