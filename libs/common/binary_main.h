// What every imagesearch binary does first: set its usage text, make --help
// list the binary's own flags (Abseil's default filter only matches flags
// defined in a file named after the program, so ours printed "No flags
// matched"), parse the command line, set the log format, turn off Abseil's
// mutex deadlock detection, and keep every allocation in glibc's main arena.
//
// Header-only: binaries link absl::flags_parse, absl::flags_usage and
// absl::synchronization.
#ifndef IMAGESEARCH_LIBS_COMMON_BINARY_MAIN_H_
#define IMAGESEARCH_LIBS_COMMON_BINARY_MAIN_H_

#include <malloc.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/internal/parse.h"
#include "absl/flags/internal/usage.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "libs/common/log.h"

namespace imagesearch {

// The release every binary reports (imagesearch_build_info's `version`).
inline constexpr char kImagesearchVersion[] = "0.1.0";

// Parses flags (exits on --help or a bad flag) and applies the binary's
// --log_format flag ("text" or "json"; exits with status 2 otherwise). Returns the positional
// arguments, argv[0] first.
inline std::vector<char*> InitBinary(absl::string_view usage, int argc, char** argv,
                                     const absl::Flag<std::string>& log_format) {
  // Debian's Abseil is built without NDEBUG, so every absl::Mutex (gRPC's
  // locks are absl::Mutex) keeps a global lock-order graph up to date: 0.9%
  // of the query service's CPU under pinned unary load (perf, GraphCycles::
  // GetId/InsertEdge/RemoveNode), with a global lock. Release builds of
  // Abseil skip it; so do we: it is a debugging aid, and the TSan build
  // (ci/build_tsan.sh) is what checks our own locking.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // One malloc arena for the whole process, set before any thread exists.
  // glibc gives other threads their own arenas, built from 64 MiB heaps that
  // are unmapped as soon as they fall empty, whatever M_TRIM_THRESHOLD says.
  // A forward pass on the batcher's thread frees tens of MB of activations at
  // its end, so some processes unmapped and faulted in up to ~100 MB per
  // batch (25k minor faults per batch of 4 against 1.4k in others) and ran
  // image queries at half the speed of the encoder on the main thread, which
  // uses the main arena (tools/bench/results/LOG.md, image queries). The main
  // arena grows with brk and keeps its top (libs/encoder/encoder.cc sets the
  // trim threshold). Our threads allocate little besides the activations, so
  // sharing one arena costs nothing measurable.
  mallopt(M_ARENA_MAX, 1);
  absl::SetProgramUsageMessage(usage);
  absl::FlagsUsageConfig config;
  auto ours = [](absl::string_view file) {
    return absl::StrContains(file, "services/") || absl::StrContains(file, "tools/");
  };
  config.contains_help_flags = ours;
  config.contains_helpshort_flags = ours;
  absl::SetFlagsUsageConfig(config);
  // absl::ParseCommandLine, except that --help (and --helpfull, ...) exits
  // 0 as a help request does elsewhere: Debian's Abseil (20220623) exits 1,
  // which scripts and `make` read as a failure. Newer Abseil exits 0 itself.
  std::vector<char*> positional = absl::flags_internal::ParseCommandLineImpl(
      argc, argv, absl::flags_internal::ArgvListAction::kRemoveParsedArgs,
      absl::flags_internal::UsageFlagsAction::kIgnoreUsage,
      absl::flags_internal::OnUndefinedFlag::kAbortIfUndefined);
  if (const int code = absl::flags_internal::HandleUsageFlags(std::cout, usage); code >= 0) {
    std::exit(0);  // 1 means "a usage flag was handled", not an error.
  }
  auto format = ParseLogFormat(absl::GetFlag(log_format));
  if (!format.ok()) {
    std::cerr << "--log_format: " << format.status().message() << "\n";
    std::exit(2);
  }
  SetLogFormat(*format);
  return positional;
}

// Ends the process now, without destructors or atexit handlers, after
// flushing what was logged: for a stop that must not wait on a thread stuck
// on a slow or stalled volume, when what the thread leaves is what a crash
// would leave.
[[noreturn]] inline void ExitWithoutCleanup(int code) {
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  std::_Exit(code);
}

}  // namespace imagesearch

#endif  // IMAGESEARCH_LIBS_COMMON_BINARY_MAIN_H_
