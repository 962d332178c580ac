#include "core/paths.h"

#include <unistd.h>

namespace collage {

std::vector<std::filesystem::path> checkout_roots() {
  std::vector<std::filesystem::path> roots{std::filesystem::current_path()};
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n > 0) {
    const auto exe_dir = std::filesystem::path(std::string(buf, static_cast<size_t>(n))).parent_path();
    roots.push_back(exe_dir.parent_path());
    roots.push_back(exe_dir);
    roots.push_back(exe_dir.parent_path().parent_path());
  }
  return roots;
}

std::string find_in_checkout(const std::string& relative, const std::string& marker) {
  for (const auto& root : checkout_roots()) {
    const auto candidate = root / relative;
    if (marker.empty() ? std::filesystem::is_directory(candidate) : std::filesystem::exists(candidate / marker))
      return candidate.string();
  }
  return {};
}

}  // namespace collage
