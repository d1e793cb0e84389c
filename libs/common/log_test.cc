#include "libs/common/log.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <string>

#include "nlohmann/json.hpp"

namespace imagesearch {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD in UTF-8

// What LogLine writes to stderr while `level` and `message` are logged in
// `format`. The format goes back to text afterwards.
std::string CaptureLogLine(LogFormat format, LogLevel level, const std::string& message) {
  std::FILE* tmp = std::tmpfile();
  REQUIRE(tmp != nullptr);
  std::fflush(stderr);
  const int saved = ::dup(STDERR_FILENO);
  REQUIRE(saved >= 0);
  REQUIRE(::dup2(::fileno(tmp), STDERR_FILENO) >= 0);
  SetLogFormat(format);
  LogLine(level, message);
  SetLogFormat(LogFormat::kText);
  ::dup2(saved, STDERR_FILENO);
  ::close(saved);
  std::string out;
  std::rewind(tmp);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), tmp)) > 0) out.append(buf, n);
  std::fclose(tmp);
  return out;
}

// Checks that `line` is one newline-terminated JSON object with the
// documented keys, in order, and returns it.
nlohmann::ordered_json ParseJsonLine(const std::string& line) {
  REQUIRE(!line.empty());
  REQUIRE(line.back() == '\n');
  REQUIRE(line.find('\n') == line.size() - 1);
  // parse() throws on invalid UTF-8 and on unescaped control characters.
  nlohmann::ordered_json record;
  REQUIRE_NOTHROW(record = nlohmann::ordered_json::parse(line));
  REQUIRE(record.is_object());
  REQUIRE(record.size() == 3);
  auto it = record.begin();
  CHECK(it->is_string());
  CHECK((it++).key() == "time");
  CHECK((it++).key() == "level");
  CHECK((it++).key() == "msg");
  return record;
}

TEST_CASE("json log line with invalid UTF-8, control characters and quotes parses") {
  const std::string message =
      "quote \" backslash \\ newline \n tab \t bell \x07 del \x7f stray \xFF lone \x80 end";
  const std::string line = CaptureLogLine(LogFormat::kJson, LogLevel::kWarning, message);
  const auto record = ParseJsonLine(line);
  CHECK(record["level"] == "warning");
  const std::string want =
      std::string("quote \" backslash \\ newline \n tab \t bell \x07 del \x7f stray ") +
      kReplacement + " lone " + kReplacement + " end";
  CHECK(record["msg"].get<std::string>() == want);
  // Control characters travel escaped, never raw.
  CHECK(line.find('\x07') == std::string::npos);
  CHECK(line.find("\\u0007") != std::string::npos);
}

TEST_CASE("json log line with a truncated UTF-8 sequence at the end parses") {
  // The first two bytes of U+20AC (EUR SIGN), then the end of the message.
  const std::string line =
      CaptureLogLine(LogFormat::kJson, LogLevel::kError, std::string("price 5 \xE2\x82"));
  const auto record = ParseJsonLine(line);
  CHECK(record["level"] == "error");
  const std::string msg = record["msg"].get<std::string>();
  REQUIRE(msg.size() >= 3);
  CHECK(msg.rfind("price 5 ", 0) == 0);
  CHECK(msg.substr(msg.size() - 3) == kReplacement);
}

TEST_CASE("json log line keeps valid UTF-8 as it is") {
  const std::string message = "caf\xC3\xA9 \xE2\x9C\x93 \xF0\x9F\x93\xB7";  // café ✓ 📷
  const auto record = ParseJsonLine(CaptureLogLine(LogFormat::kJson, LogLevel::kInfo, message));
  CHECK(record["level"] == "info");
  CHECK(record["msg"].get<std::string>() == message);
}

TEST_CASE("text log line is the time, a level letter and the raw message") {
  const std::string line = CaptureLogLine(LogFormat::kText, LogLevel::kWarning, "disk \"full\"");
  // 2024-01-02T03:04:05.678Z W disk "full"
  REQUIRE(line.size() == 24 + std::string(" W disk \"full\"\n").size());
  CHECK(line[4] == '-');
  CHECK(line[10] == 'T');
  CHECK(line[23] == 'Z');
  CHECK(line.substr(24) == " W disk \"full\"\n");
}

TEST_CASE("ParseLogFormat accepts text and json only") {
  CHECK(ParseLogFormat("text").value() == LogFormat::kText);
  CHECK(ParseLogFormat("json").value() == LogFormat::kJson);
  const auto bad = ParseLogFormat("xml");
  REQUIRE(!bad.ok());
  CHECK(bad.status().code() == absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace imagesearch
