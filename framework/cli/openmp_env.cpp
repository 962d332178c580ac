// Sets the OpenMP runtime's wait policy before it starts: the runtime (libgomp, used by libtorch and OpenBLAS)
// reads OMP_WAIT_POLICY / GOMP_SPINCOUNT once, when it is loaded, i.e. before main() runs. So main() re-executes
// the binary once with the variable set. Why: by default idle OpenMP threads spin for a while before sleeping;
// on a machine where another process competes for the cores, spinning threads steal the time the working
// threads need and a run gets 4-10x slower (docs/threading.md has the measurements).
#include <unistd.h>

#include <cstdlib>

#include "cli/common.h"

namespace collage::cli {

void reexec_with_openmp_policy(char** argv) {
  // The user's own choice wins, and the marker makes sure this happens at most once.
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT") || std::getenv("COLLAGE_NO_REEXEC")) return;
  setenv("OMP_WAIT_POLICY", kDefaultOmpWaitPolicy, 1);
  setenv("COLLAGE_NO_REEXEC", "1", 1);
  execv("/proc/self/exe", argv);
  // exec failed (no /proc): go on with the runtime's default policy.
  unsetenv("OMP_WAIT_POLICY");
}

}  // namespace collage::cli
