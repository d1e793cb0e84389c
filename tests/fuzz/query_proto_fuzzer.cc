// libFuzzer target: gRPC search requests through the query core.
//
// Input: the bytes of an imagesearch.v1.SearchRequest. They are parsed as
// the gRPC server would, converted with the front ends' shared ToQuery
// (services/query/proto_adapter.h), run through QueryCore::Search and
// SearchBatch over a small real snapshot built in-process (fuzz_util.h:
// vector-only, with attribute columns), and a successful answer is encoded
// with FillSearchResponse.
#include <cstddef>
#include <cstdint>
#include <utility>

#include "imagesearch/v1/imagesearch.pb.h"
#include "services/query/proto_adapter.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  imagesearch::fuzz::World();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace v1 = imagesearch::v1;
  namespace serving = imagesearch::serving;
  auto& world = imagesearch::fuzz::World();
  v1::SearchRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;

  serving::Filter filter;
  const serving::Query q = imagesearch::ToQuery(request, &filter);
  serving::CallContext context;
  context.front = "grpc";
  bool called = false;
  world.core->Search(q, context, [&](absl::StatusOr<serving::SearchResult> r) {
    called = true;
    imagesearch::fuzz::CheckAnswer(q.kind, r.status());
    if (r.ok()) {
      FUZZ_CHECK(r->hits.size() <= serving::kMaxTopK);
      v1::SearchResponse response;
      imagesearch::FillSearchResponse(*std::move(r), &response);
      std::string wire;
      FUZZ_CHECK(response.SerializeToString(&wire));
    }
  });
  // Without a model every query is answered on this thread.
  FUZZ_CHECK(called);

  // The same query twice as a batch (SearchBatch's own validation).
  serving::Filter filter2;
  const serving::Query queries[] = {q, imagesearch::ToQuery(request, &filter2)};
  called = false;
  world.core->SearchBatch(queries, context,
                          [&](absl::StatusOr<std::vector<serving::SearchResult>> r) {
                            called = true;
                            FUZZ_CHECK(r.ok() || !r.status().message().empty());
                            if (r.ok()) FUZZ_CHECK(r->size() == 2);
                          });
  FUZZ_CHECK(called);
  return 0;
}
