// The framework's version and the git revision it was built from (recorded in every result file).
#pragma once

#include <string>

namespace collage {

std::string framework_version();
std::string git_revision();

}  // namespace collage
