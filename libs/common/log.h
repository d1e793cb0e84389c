// Minimal structured logging to stderr (Debian's Abseil has no absl/log).
// Two formats, chosen once per process (binaries take --log_format):
//   text: "<UTC time> <I|W|E> <message>"
//   json: {"time":"<UTC time>","level":"info|warning|error","msg":"<message>"}
//         (invalid UTF-8 in the message is written as U+FFFD, so a line is
//         always valid JSON)
// one line per record either way.
//
// Thread-safe: each line is written with one write(2). libimagesearch_common
// is a shared library, so the format is one setting per process, plugins
// included.
#ifndef IMAGESEARCH_LIBS_COMMON_LOG_H_
#define IMAGESEARCH_LIBS_COMMON_LOG_H_

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace imagesearch {

enum class LogLevel { kInfo, kWarning, kError };
enum class LogFormat { kText, kJson };

// "text" or "json"; INVALID_ARGUMENT otherwise.
absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view name);
// Default: kText.
void SetLogFormat(LogFormat format);

void LogLine(LogLevel level, absl::string_view message);

template <typename... Args>
void LogInfo(const Args&... args) {
  LogLine(LogLevel::kInfo, absl::StrCat(args...));
}
template <typename... Args>
void LogWarning(const Args&... args) {
  LogLine(LogLevel::kWarning, absl::StrCat(args...));
}
template <typename... Args>
void LogError(const Args&... args) {
  LogLine(LogLevel::kError, absl::StrCat(args...));
}

}  // namespace imagesearch

#endif  // IMAGESEARCH_LIBS_COMMON_LOG_H_
