#include "libs/serving/process_stats.h"

#include <dirent.h>
#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "libs/common/file_util.h"

// Under ASan or TSan the heap is the sanitizer's allocator, not glibc's
// (mallinfo2 then reads zeros); the sanitizer runtimes answer the same two
// questions (declared here: GCC 12 does not ship allocator_interface.h).
#if defined(__SANITIZE_ADDRESS__) || defined(IMAGESEARCH_TSAN_BUILD)
#define IMAGESEARCH_SANITIZER_HEAP 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define IMAGESEARCH_SANITIZER_HEAP 1
#endif
#endif
#ifdef IMAGESEARCH_SANITIZER_HEAP
extern "C" size_t __sanitizer_get_current_allocated_bytes();
extern "C" size_t __sanitizer_get_heap_size();
#endif

namespace imagesearch::serving {
namespace {

// The value of "Key:  N [kB]" in a /proc status-style file, in bytes when the
// unit is kB.
absl::StatusOr<uint64_t> StatusField(absl::string_view text, absl::string_view key,
                                     absl::string_view file) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::ConsumePrefix(&line, key) || !absl::ConsumePrefix(&line, ":")) continue;
    std::vector<absl::string_view> parts =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    uint64_t v = 0;
    if (parts.empty() || !absl::SimpleAtoi(parts[0], &v)) break;
    return parts.size() > 1 && parts[1] == "kB" ? v * 1024 : v;
  }
  return absl::InternalError(absl::StrCat(file, ": no readable '", key, "' line"));
}

absl::StatusOr<uint64_t> CountFds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return absl::InternalError("cannot list /proc/self/fd");
  uint64_t n = 0;
  while (const dirent* e = ::readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(dir);
  return n - 1;  // The directory stream's own descriptor.
}

}  // namespace

absl::StatusOr<ProcessStats> ReadProcessStats() {
  ProcessStats s;
  auto status = ReadFileToString("/proc/self/status");
  if (!status.ok()) return status.status();
  for (auto [key, field] :
       {std::pair{"VmRSS", &s.resident_bytes}, std::pair{"VmSize", &s.virtual_bytes},
        std::pair{"Threads", &s.threads}}) {
    auto v = StatusField(*status, key, "/proc/self/status");
    if (!v.ok()) return v.status();
    *field = *v;
  }

  // /proc/self/stat: "pid (comm) state ppid ...". comm may hold spaces and
  // parentheses, so fields are counted from the last ')'. After it: field 3
  // (state) first; utime 14, stime 15 and starttime 22, in clock ticks.
  auto stat = ReadFileToString("/proc/self/stat");
  if (!stat.ok()) return stat.status();
  const size_t close = stat->rfind(')');
  if (close == std::string::npos) return absl::InternalError("/proc/self/stat: no ')'");
  std::vector<absl::string_view> f =
      absl::StrSplit(absl::string_view(*stat).substr(close + 1), ' ', absl::SkipEmpty());
  uint64_t utime = 0, stime = 0, start_ticks = 0;
  if (f.size() < 20 || !absl::SimpleAtoi(f[14 - 3], &utime) ||
      !absl::SimpleAtoi(f[15 - 3], &stime) || !absl::SimpleAtoi(f[22 - 3], &start_ticks)) {
    return absl::InternalError("/proc/self/stat: unreadable utime/stime/starttime");
  }
  const double hz = static_cast<double>(::sysconf(_SC_CLK_TCK));
  s.cpu_seconds = static_cast<double>(utime + stime) / hz;
  auto boot = ReadFileToString("/proc/stat");
  if (!boot.ok()) return boot.status();
  for (absl::string_view line : absl::StrSplit(*boot, '\n')) {
    uint64_t btime = 0;
    if (absl::ConsumePrefix(&line, "btime ") && absl::SimpleAtoi(line, &btime)) {
      s.start_time_seconds = static_cast<double>(btime) + static_cast<double>(start_ticks) / hz;
    }
  }
  if (s.start_time_seconds == 0) return absl::InternalError("/proc/stat: no btime line");

  auto fds = CountFds();
  if (!fds.ok()) return fds.status();
  s.open_fds = *fds;
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0) s.max_fds = limit.rlim_cur;

#ifdef IMAGESEARCH_SANITIZER_HEAP
  s.malloc_in_use_bytes = __sanitizer_get_current_allocated_bytes();
  s.malloc_system_bytes = __sanitizer_get_heap_size();
#else
  const struct mallinfo2 m = ::mallinfo2();
  s.malloc_in_use_bytes = m.uordblks + m.hblkhd;
  s.malloc_system_bytes = m.arena + m.hblkhd;
#endif
  return s;
}

}  // namespace imagesearch::serving
