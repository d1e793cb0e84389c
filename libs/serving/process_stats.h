// What the process holds, read from /proc/self and glibc's allocator: the
// figures behind the standard Prometheus process_* metrics (the ones every
// official client library exports) and the allocator's own split between
// memory in use and memory it keeps for reuse.
//
// The split matters for this service: it keeps freed heap memory rather than
// returning it (libs/encoder/encoder.cc sets M_TRIM_THRESHOLD, so a forward
// pass's activations are not faulted in again every batch), so its resident
// size is the heap's high-water mark, which fragmentation can raise under load
// with no byte leaked. `malloc_in_use_bytes` is what a leak would grow.
#ifndef IMAGESEARCH_LIBS_SERVING_PROCESS_STATS_H_
#define IMAGESEARCH_LIBS_SERVING_PROCESS_STATS_H_

#include <cstdint>

#include "absl/status/statusor.h"

namespace imagesearch::serving {

struct ProcessStats {
  uint64_t resident_bytes = 0;  // VmRSS.
  uint64_t virtual_bytes = 0;   // VmSize.
  uint64_t open_fds = 0;
  uint64_t max_fds = 0;  // RLIMIT_NOFILE, soft.
  uint64_t threads = 0;
  double cpu_seconds = 0;         // User + system, all threads.
  double start_time_seconds = 0;  // Unix time the process started.
  // glibc (mallinfo2): bytes in allocated chunks, and bytes the allocator
  // holds from the system, both counting chunks served by their own mmap.
  // Under ASan or TSan, the sanitizer allocator's own two figures.
  uint64_t malloc_in_use_bytes = 0;
  uint64_t malloc_system_bytes = 0;
};

// Reads /proc/self/{stat,status,fd} and mallinfo2(). An error only if /proc
// is unreadable or not what Linux writes.
absl::StatusOr<ProcessStats> ReadProcessStats();

}  // namespace imagesearch::serving

#endif  // IMAGESEARCH_LIBS_SERVING_PROCESS_STATS_H_
