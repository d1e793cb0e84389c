// libFuzzer target: the request line and headers of an HTTP/1.1 request, as
// the query service's event-driven server parses them (ParseHead in
// services/query/http_server.cc) before it routes or reads a body.
//
// Input: the head without its final blank line, as the server hands it over.
// Checks, besides no crash or UB: a refusal has a 4xx/5xx status and a
// message that quotes a bounded amount of what the client sent; an accepted
// head has a method, an absolute path target and lower-case header names.
//
// ParseHead lives in an anonymous namespace; this file compiles that .cc
// into itself to reach it unchanged (nothing of it is copied).
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "services/query/http_server.cc"  // NOLINT: for its internal functions.

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view head(reinterpret_cast<const char*>(data), size);
  imagesearch::HttpRequest req;
  bool keep_alive = false;
  const std::optional<imagesearch::HeadError> error =
      imagesearch::ParseHead(head, &req, &keep_alive);
  if (error.has_value()) {
    if (error->status < 400 || error->status > 599) std::abort();
    if (error->message.size() > 512) std::abort();  // Client text is quoted, bounded.
    return 0;
  }
  if (req.method.empty() || req.target.empty() || req.target[0] != '/') std::abort();
  for (const auto& [name, value] : req.headers) {
    for (const char c : name) {
      if (c >= 'A' && c <= 'Z') std::abort();
    }
  }
  return 0;
}
