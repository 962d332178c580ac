// Where shipped folders (assets/, tests/data/, experiments/) are found: the working directory first, then the
// checkout the binary was built in (build/collage -> the checkout), so commands work from anywhere.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace collage {

// The working directory, the binary's folder, its parent (the checkout for build/collage) and grandparent.
std::vector<std::filesystem::path> checkout_roots();

// The first root/relative that holds `marker` (a file inside it; empty marker: the folder itself), or "".
std::string find_in_checkout(const std::string& relative, const std::string& marker = {});

}  // namespace collage
