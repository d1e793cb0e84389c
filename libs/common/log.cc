#include "libs/common/log.h"

#include <unistd.h>

#include <atomic>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace imagesearch {
namespace {

std::atomic<LogFormat> g_format{LogFormat::kText};

}  // namespace

absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view name) {
  if (name == "text") return LogFormat::kText;
  if (name == "json") return LogFormat::kJson;
  return absl::InvalidArgumentError(
      absl::StrCat("log format must be 'text' or 'json', got '", name, "'"));
}

void SetLogFormat(LogFormat format) { g_format = format; }

void LogLine(LogLevel level, absl::string_view message) {
  const std::string time =
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
  std::string line;
  if (g_format.load() == LogFormat::kJson) {
    const char* name = level == LogLevel::kInfo      ? "info"
                       : level == LogLevel::kWarning ? "warning"
                                                     : "error";
    // ordered_json keeps the documented key order. Invalid UTF-8 in the
    // message becomes U+FFFD, so every line parses as JSON.
    const nlohmann::ordered_json record = {
        {"time", time}, {"level", name}, {"msg", std::string(message)}};
    line = record.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
    line.push_back('\n');
  } else {
    const char tag = level == LogLevel::kInfo ? 'I' : level == LogLevel::kWarning ? 'W' : 'E';
    line = absl::StrCat(time, " ", std::string(1, tag), " ", message, "\n");
  }
  ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;  // Nothing useful to do if stderr is gone.
}

}  // namespace imagesearch
