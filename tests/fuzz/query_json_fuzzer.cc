// libFuzzer target: HTTP POST /invocations JSON bodies through the query core.
//
// Input: the request body. It is parsed as the HTTP front end parses it
// (ParseJson: protobuf's proto3 JSON into a SearchRequest, with its error
// text bounded), converted with the shared ToQuery, run through
// QueryCore::Search over a small real snapshot built in-process
// (fuzz_util.h: vector-only, with attribute columns), and the answer is
// encoded as the front end does: hits with FillSearchResponse and ToJson,
// errors with ErrorResponse (which must not throw on any message).
//
// ParseJson, ToJson and ErrorResponse live in an anonymous namespace in
// services/query/http_frontend.cc; this file compiles that .cc into itself
// to reach them unchanged (nothing of it is copied).
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "services/query/http_frontend.cc"  // NOLINT: for its internal functions.
#include "services/query/proto_adapter.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  imagesearch::fuzz::World();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace serving = imagesearch::serving;
  auto& world = imagesearch::fuzz::World();
  const std::string body(reinterpret_cast<const char*>(data), size);
  imagesearch::v1::SearchRequest request;
  if (absl::Status s = imagesearch::ParseJson(body, "request body", &request); !s.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(s));
    // Bounded: the parser's text repeats client input, cut to a fixed size.
    FUZZ_CHECK(s.message().size() < 400);
    FUZZ_CHECK(imagesearch::ErrorResponse(s).status == 400);
    return 0;
  }
  serving::Filter filter;
  const serving::Query q = imagesearch::ToQuery(request, &filter);
  bool called = false;
  imagesearch::HttpRequest req;
  req.received = absl::Now();
  world.core->Search(q, imagesearch::HttpContext(req, absl::Seconds(60)),
                     [&](absl::StatusOr<serving::SearchResult> r) {
                       called = true;
                       imagesearch::fuzz::CheckAnswer(q.kind, r.status());
                       if (r.ok()) {
                         imagesearch::v1::SearchResponse response;
                         imagesearch::FillSearchResponse(*std::move(r), &response);
                         FUZZ_CHECK(!imagesearch::ToJson(&response).empty());
                       } else {
                         imagesearch::ErrorResponse(r.status());
                       }
                     });
  FUZZ_CHECK(called);
  return 0;
}
