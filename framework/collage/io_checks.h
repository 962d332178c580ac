// Checks shared by the collage readers (collage.json and the authors' demo format); not a public header.
#pragma once

#include <cmath>
#include <filesystem>
#include <string>

#include "core/core.h"

namespace collage::io {

inline void check_unit(double v, const std::string& file, const std::string& field) {
  COLLAGE_CHECK_AT(std::isfinite(v) && v >= 0.0 && v <= 1.0, file, field, "must be in [0, 1], got {}", v);
}

// Fails on the first key of the object that was neither read nor ignored, listing the valid ones.
inline void check_unknown(const JsonReader& r, const std::string& file, const std::string& prefix,
                          const std::string& valid) {
  auto unknown = r.unused_keys();
  if (!unknown.empty())
    throw Error(fmt::format("unknown field (valid fields: {})", valid), file, prefix + unknown.front());
}

// `p` relative to `folder` (absolute and empty paths as they are).
inline std::string resolve(const std::string& folder, const std::string& p) {
  if (p.empty() || std::filesystem::path(p).is_absolute()) return p;
  return (std::filesystem::path(folder) / p).string();
}

}  // namespace collage::io
