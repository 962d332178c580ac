// Memory of the running process, for benchmarks (Linux /proc).
#pragma once

#include <string>

namespace collage {

// A size line of /proc/self/status in bytes: "VmRSS" (resident now) or "VmHWM" (peak resident since the
// start or the last reset_peak_memory()); 0 when the line is missing.
double process_memory_bytes(const std::string& key);

// Starts a new peak window for "VmHWM" (writes 5 to /proc/self/clear_refs).
void reset_peak_memory();

}  // namespace collage
