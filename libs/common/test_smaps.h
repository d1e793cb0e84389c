// Test helper: how this process maps a file, from /proc/self/smaps.
// Header-only; not for production code.
#ifndef IMAGESEARCH_LIBS_COMMON_TEST_SMAPS_H_
#define IMAGESEARCH_LIBS_COMMON_TEST_SMAPS_H_

#include <fstream>
#include <string>
#include <vector>

namespace imagesearch::testing {

// The VmFlags line of each mapping of this process whose file is `path`,
// with a space appended, so that a flag is found as " hg " (VM_HUGEPAGE).
inline std::vector<std::string> VmFlagsOfFile(const std::string& path) {
  std::ifstream smaps("/proc/self/smaps");
  std::vector<std::string> flags;
  bool in = false;
  for (std::string line; std::getline(smaps, line);) {
    const size_t space = line.find(' ');
    if (space != std::string::npos && line.find('-') < space) {  // A mapping's header line.
      in = line.size() >= path.size() &&
           line.compare(line.size() - path.size(), path.size(), path) == 0;
    } else if (in && line.rfind("VmFlags:", 0) == 0) {
      flags.push_back(line + " ");
    }
  }
  return flags;
}

}  // namespace imagesearch::testing

#endif  // IMAGESEARCH_LIBS_COMMON_TEST_SMAPS_H_
