#include "libs/common/cpu_quota.h"

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace imagesearch {
namespace {

std::optional<std::string> ReadSmallFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::optional<double> Min(std::optional<double> a, std::optional<double> b) {
  if (!a) return b;
  if (!b) return a;
  return std::min(*a, *b);
}

// The tightest limit on `path` and its ancestors below `mount`: a parent's
// quota caps its children too. `read` gives the limit set on one directory.
template <typename ReadLimit>
std::optional<double> TightestOnPath(const std::string& mount, std::string path, ReadLimit read) {
  std::optional<double> limit;
  while (true) {
    limit = Min(limit, read(mount + path));
    if (path.empty() || path == "/") break;
    const size_t slash = path.find_last_of('/');
    path = slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
  }
  return limit;
}

std::optional<double> CgroupCpuLimit() {
  const std::optional<std::string> self = ReadSmallFile("/proc/self/cgroup");
  if (!self) return std::nullopt;
  std::optional<double> limit;
  // cgroup v2: /sys/fs/cgroup itself (unified), or /sys/fs/cgroup/unified (hybrid).
  if (std::optional<std::string> path = CgroupPath(*self, "")) {
    for (const std::string mount : {"/sys/fs/cgroup", "/sys/fs/cgroup/unified"}) {
      if (!ReadSmallFile(mount + "/cgroup.controllers")) continue;
      limit = Min(limit, TightestOnPath(mount, *path, [](const std::string& dir) {
                    const auto text = ReadSmallFile(dir + "/cpu.max");
                    return text ? CpuLimitFromCgroupV2(*text) : std::nullopt;
                  }));
      break;
    }
  }
  // cgroup v1: the cpu controller's hierarchy.
  if (std::optional<std::string> path = CgroupPath(*self, "cpu")) {
    for (const std::string mount : {"/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"}) {
      limit = Min(limit, TightestOnPath(mount, *path, [](const std::string& dir) {
                    const auto quota = ReadSmallFile(dir + "/cpu.cfs_quota_us");
                    const auto period = ReadSmallFile(dir + "/cpu.cfs_period_us");
                    return quota && period ? CpuLimitFromCgroupV1(*quota, *period) : std::nullopt;
                  }));
    }
  }
  return limit;
}

int AffinityCores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace

std::optional<double> CpuLimitFromCgroupV2(absl::string_view cpu_max) {
  std::vector<absl::string_view> parts =
      absl::StrSplit(absl::StripAsciiWhitespace(cpu_max), ' ', absl::SkipEmpty());
  if (parts.size() != 2 || parts[0] == "max") return std::nullopt;
  double quota = 0, period = 0;
  if (!absl::SimpleAtod(parts[0], &quota) || !absl::SimpleAtod(parts[1], &period) || quota <= 0 ||
      period <= 0) {
    return std::nullopt;
  }
  return quota / period;
}

std::optional<double> CpuLimitFromCgroupV1(absl::string_view quota_us,
                                           absl::string_view period_us) {
  double quota = 0, period = 0;
  if (!absl::SimpleAtod(absl::StripAsciiWhitespace(quota_us), &quota) ||
      !absl::SimpleAtod(absl::StripAsciiWhitespace(period_us), &period) || quota <= 0 ||
      period <= 0) {
    return std::nullopt;
  }
  return quota / period;
}

std::optional<std::string> CgroupPath(absl::string_view proc_self_cgroup,
                                      absl::string_view controller) {
  for (absl::string_view line : absl::StrSplit(proc_self_cgroup, '\n', absl::SkipEmpty())) {
    // hierarchy-ID:controller-list:path
    std::vector<absl::string_view> f = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (f.size() != 3) continue;
    if (controller.empty()) {
      if (f[0] == "0" && f[1].empty()) return std::string(f[2]);
      continue;
    }
    for (absl::string_view c : absl::StrSplit(f[1], ',')) {
      if (c == controller) return std::string(f[2]);
    }
  }
  return std::nullopt;
}

int CombineCpuCount(int cores, std::optional<double> limit) {
  int n = std::max(1, cores);
  if (limit) n = std::min(n, static_cast<int>(std::ceil(*limit - 1e-9)));
  return std::max(1, n);
}

int EffectiveCpuCount() {
  static const int count = CombineCpuCount(AffinityCores(), CgroupCpuLimit());
  return count;
}

}  // namespace imagesearch
