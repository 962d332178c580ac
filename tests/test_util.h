// Helpers shared by the tests.
#pragma once

#include <string>

#ifndef COLLAGE_TEST_DATA
#error "COLLAGE_TEST_DATA must be defined by the build"
#endif

namespace collage::test {

// Path of the copied golden reference data: tests/data/golden/<sub>.
inline std::string golden(const std::string& sub = {}) {
  return std::string(COLLAGE_TEST_DATA) + "/golden" + (sub.empty() ? "" : "/" + sub);
}

// A fresh temporary directory for one test.
std::string temp_dir(const std::string& tag);

}  // namespace collage::test
