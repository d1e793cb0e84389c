// How many CPUs this process may use: the smallest of the cores it may run
// on (sched_getaffinity, i.e. cpusets and taskset), and its cgroup's CPU
// quota rounded up (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us` /
// `cpu.cfs_period_us`), as a container runtime or Kubernetes sets it from a
// CPU limit. std::thread::hardware_concurrency() is the host's count, so
// thread pools sized from it oversubscribe a container with a quota.
//
// Every default thread count in imagesearch comes from EffectiveCpuCount().
// Thread-safe.
#ifndef IMAGESEARCH_LIBS_COMMON_CPU_QUOTA_H_
#define IMAGESEARCH_LIBS_COMMON_CPU_QUOTA_H_

#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace imagesearch {

// The CPUs this process may use, at least 1. Read once and cached.
int EffectiveCpuCount();

// The pieces, exposed for tests. Each returns nullopt when the text sets no
// limit ("max", -1, malformed or empty).
//   cgroup v2 cpu.max: "<quota> <period>" or "max <period>".
std::optional<double> CpuLimitFromCgroupV2(absl::string_view cpu_max);
//   cgroup v1: cpu.cfs_quota_us ("-1" = none) and cpu.cfs_period_us.
std::optional<double> CpuLimitFromCgroupV1(absl::string_view quota_us, absl::string_view period_us);
// The cgroup (v2 unified "0::/path" line, or v1 "N:...cpu...:/path" line)
// named in /proc/self/cgroup text, for `controller` ("" for v2).
std::optional<std::string> CgroupPath(absl::string_view proc_self_cgroup,
                                      absl::string_view controller);
// Combines: the smaller of `cores` and ceil(limit), at least 1.
int CombineCpuCount(int cores, std::optional<double> limit);

}  // namespace imagesearch

#endif  // IMAGESEARCH_LIBS_COMMON_CPU_QUOTA_H_
