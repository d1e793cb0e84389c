// Minimal structured logging to stderr (Debian's Abseil has no absl/log).
// Thread-safe: each line is written with one write(2).
#ifndef IMAGESEARCH_LIBS_COMMON_LOG_H_
#define IMAGESEARCH_LIBS_COMMON_LOG_H_

#include "absl/strings/string_view.h"

#include "absl/strings/str_cat.h"

namespace imagesearch {

enum class LogLevel { kInfo, kWarning, kError };

// Writes "<UTC time> <I|W|E> <message>\n" to stderr.
void LogLine(LogLevel level, absl::string_view message);

template <typename... Args>
void LogInfo(const Args&... args) { LogLine(LogLevel::kInfo, absl::StrCat(args...)); }
template <typename... Args>
void LogWarning(const Args&... args) { LogLine(LogLevel::kWarning, absl::StrCat(args...)); }
template <typename... Args>
void LogError(const Args&... args) { LogLine(LogLevel::kError, absl::StrCat(args...)); }

}  // namespace imagesearch

#endif  // IMAGESEARCH_LIBS_COMMON_LOG_H_
