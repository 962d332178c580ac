#include "core/version.h"

// Defined for this file only (see CMakeLists.txt), so a new revision recompiles one file, not the tree.
#ifndef COLLAGE_VERSION
#define COLLAGE_VERSION "unknown"
#endif
#ifndef COLLAGE_GIT_REVISION
#define COLLAGE_GIT_REVISION "unknown"
#endif

namespace collage {

std::string framework_version() { return COLLAGE_VERSION; }
std::string git_revision() { return COLLAGE_GIT_REVISION; }

}  // namespace collage
