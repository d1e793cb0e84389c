// libFuzzer target: HTTP POST /invocations JSON bodies through the query core.
//
// Input: the request body. It is parsed with the HTTP front end's own
// QueryFromJson (and FilterFromJson), run through QueryCore::Search over a
// small real snapshot built in-process (fuzz_util.h: vector-only, with
// attribute columns), and the answer is encoded as the front end does: hits
// with HitsJson, errors with ErrorResponse (both dump JSON, which throws on
// invalid UTF-8).
//
// The parsing functions live in an anonymous namespace in
// services/query/http_frontend.cc; this file compiles that .cc into itself to
// reach them unchanged (nothing of it is copied).
#include "services/query/http_frontend.cc"  // NOLINT: for its internal functions.

#include <cstddef>
#include <cstdint>
#include <string>

#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  imagesearch::fuzz::World();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace serving = imagesearch::serving;
  auto& world = imagesearch::fuzz::World();
  const std::string body(reinterpret_cast<const char*>(data), size);
  serving::Query q;
  std::vector<float> vector;
  std::string bytes;
  serving::Filter filter;
  if (absl::Status s = imagesearch::QueryFromJson(body, &q, &vector, &bytes, &filter); !s.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(s));
    FUZZ_CHECK(imagesearch::ErrorResponse(s).status == 400);
    return 0;
  }
  bool called = false;
  imagesearch::HttpRequest req;
  req.received = absl::Now();
  world.core->Search(q, imagesearch::HttpContext(req, absl::Seconds(60)),
                     [&](absl::StatusOr<serving::SearchResult> r) {
                       called = true;
                       imagesearch::fuzz::CheckAnswer(q.kind, r.status());
                       if (r.ok()) {
                         imagesearch::Content(imagesearch::HitsJson(*r).dump(
                                                  -1, ' ', false,
                                                  nlohmann::json::error_handler_t::replace),
                                              "application/json");
                       } else {
                         imagesearch::ErrorResponse(r.status());
                       }
                     });
  FUZZ_CHECK(called);
  return 0;
}
