// Helpers shared by the tests.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "core/error.h"
#include "parity/parity.h"

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

// Every case a parity checker recorded passed (and there was at least one); failures name the case.
inline void expect_all_pass(const parity::Recorder& rec) {
  ASSERT_FALSE(rec.results().empty());
  for (const auto& r : rec.results())
    EXPECT_TRUE(r.pass) << r.component << " " << r.name << ": " << r.detail << " (max_abs " << r.max_abs_diff
                        << ", max|ref| " << r.max_abs_ref << ")";
}

// The message of the collage::Error that `fn` throws (a test failure if it throws none).
inline std::string expect_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a collage::Error";
  return {};
}

}  // namespace collage::test
