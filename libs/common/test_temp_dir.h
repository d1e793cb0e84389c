// Test helper: fresh directories under /tmp that are removed when the test
// process exits normally, so test runs do not pile up directories there. A
// test that crashes leaves its directories behind for a post-mortem.
// Header-only; not for production code.
#ifndef IMAGESEARCH_LIBS_COMMON_TEST_TEMP_DIR_H_
#define IMAGESEARCH_LIBS_COMMON_TEST_TEMP_DIR_H_

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace imagesearch::testing {
namespace internal {

// Every directory NewTempDir made, removed at exit by the process that made
// it: a forked child that exits normally removes only its own.
class TempDirRegistry {
 public:
  static TempDirRegistry& Get() {
    static TempDirRegistry registry;
    return registry;
  }
  void Add(std::string path) {
    std::lock_guard<std::mutex> lock(mu_);
    made_.emplace_back(::getpid(), std::move(path));
  }
  ~TempDirRegistry() {
    const pid_t self = ::getpid();
    for (const auto& [maker, path] : made_) {
      std::error_code ec;
      if (maker == self) std::filesystem::remove_all(path, ec);
    }
  }

 private:
  TempDirRegistry() = default;
  std::mutex mu_;
  std::vector<std::pair<pid_t, std::string>> made_;
};

}  // namespace internal

// A new empty directory "/tmp/imagesearch_<tag>.XXXXXX" (mkdtemp), removed
// with its contents when the process exits; "" if it cannot be made.
inline std::string NewTempDir(const std::string& tag) {
  std::string path = "/tmp/imagesearch_" + tag + ".XXXXXX";
  if (::mkdtemp(path.data()) == nullptr) return "";
  internal::TempDirRegistry::Get().Add(path);
  return path;
}

}  // namespace imagesearch::testing

#endif  // IMAGESEARCH_LIBS_COMMON_TEST_TEMP_DIR_H_
