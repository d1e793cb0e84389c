// The transport-neutral query core: everything a query goes through between
// a front end's decoding of the request and its encoding of the answer.
//
//   admission (in-flight limit, draining) -> the live snapshot -> validation
//   of everything checkable (kind, top_k, ef, sizes, dimension, id, model)
//   -> deadline -> [image/text: BatchingEmbedder] -> search
//
// Every call (Search, SearchBatch, Embed, Info, Thumbnail) goes through the
// same admission and is counted in the same metrics. gRPC
// (services/query/image_search_service.cc) and HTTP
// (services/query/http_frontend.cc) are thin adapters over it, sharing one
// mapping of the API's messages (services/query/proto_adapter.h), so both
// answer the same query the same way with the same error text.
//
// Errors: INVALID_ARGUMENT (bad request), NOT_FOUND (unknown id),
// FAILED_PRECONDITION (text on an image-only model, image/text on a
// vector-only snapshot), UNIMPLEMENTED (no model runtime), UNAVAILABLE
// (nothing loaded yet, or shutting down), RESOURCE_EXHAUSTED (overload),
// DEADLINE_EXCEEDED / CANCELLED (the call expired before work was done).
//
// Thread-safe. The manager and metrics outlive the core.
#ifndef IMAGESEARCH_LIBS_SERVING_QUERY_CORE_H_
#define IMAGESEARCH_LIBS_SERVING_QUERY_CORE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "libs/serving/call_context.h"
#include "libs/serving/filter.h"
#include "libs/serving/metrics.h"
#include "libs/serving/query_engine.h"
#include "libs/serving/snapshot_manager.h"

namespace imagesearch::serving {

struct QueryCoreOptions {
  // Calls being worked on at once (of every kind: an image query holds its
  // place while it waits for the model); beyond it a call gets
  // RESOURCE_EXHAUSTED at once.
  int max_inflight_requests = 256;
  size_t max_image_bytes = 16 << 20;
  size_t max_text_bytes = 16 << 10;
  int max_batch_queries = 256;  // Per SearchBatch call.
  int max_embed_inputs = 64;    // Per Embed call.
};

// One query. The views must stay valid until the call's callback runs.
struct Query {
  enum class Kind { kNone, kVector, kId, kImage, kText };
  Kind kind = Kind::kNone;
  absl::Span<const float> vector;
  absl::string_view id;
  absl::string_view data;  // Image bytes or text.
  SearchParams params;     // top_k, ef; exclude_row and allowed are set by the core.
  bool include_self = false;
  // Optional. Read (evaluated against the snapshot) before Search,
  // SearchBatch or Embed returns, so it only has to outlive that call.
  const Filter* filter = nullptr;
};

struct SearchResult {
  std::vector<Hit> hits;
  uint64_t snapshot_version = 0;
  uint32_t collapsed = 0;  // Hits dropped as near-duplicates (params.dedup).
};

// A row's stored thumbnail. `bytes` points into the snapshot's mapping,
// which `state` keeps alive.
struct ThumbnailResult {
  absl::string_view bytes;
  std::string media_type;
  uint64_t snapshot_version = 0;
  std::shared_ptr<const ServingState> state;
};

struct EmbedResult {
  std::vector<std::vector<float>> vectors;
  uint64_t snapshot_version = 0;
  std::string model_name;
};

class QueryCore {
 public:
  template <typename T>
  using Done = std::function<void(absl::StatusOr<T>)>;

  QueryCore(SnapshotManager* manager, Metrics* metrics, QueryCoreOptions options);

  // Each calls `done` exactly once, on this thread (vector/id queries and
  // every refusal) or on a model thread (image/text queries).
  void Search(const Query& query, const CallContext& context, Done<SearchResult> done);
  // Vector and id queries only; all-or-nothing: the first failing query's
  // error, prefixed "requests[i]: ".
  void SearchBatch(absl::Span<const Query> queries, const CallContext& context,
                   Done<std::vector<SearchResult>> done);
  // items: Query::Kind kImage or kText each (vector/params unused).
  void Embed(absl::Span<const Query> items, const CallContext& context, Done<EmbedResult> done);
  // The live state, for GetInfo-style answers. Admitted like every other
  // call: while draining (or past the in-flight limit) it is refused too, so
  // a client never takes a draining replica for a serving one.
  absl::StatusOr<std::shared_ptr<const ServingState>> Info(const CallContext& context);
  // The thumbnail the indexer stored for `id` in the live snapshot; nothing
  // else can be read this way. NOT_FOUND if the snapshot has no thumbnails,
  // the id is unknown, or its row has none.
  absl::StatusOr<ThumbnailResult> Thumbnail(absl::string_view id, const CallContext& context);

  // True while a snapshot is loaded and the core is not draining. gRPC
  // health and HTTP /ping both follow it.
  bool Serving() const;
  // From now on new calls get UNAVAILABLE; calls in flight finish.
  void StartDraining();
  // Waits until no call is in flight, or `timeout`; true if none is.
  bool WaitIdle(absl::Duration timeout) const;

 private:
  template <typename T>
  Done<T> Track(absl::string_view method, const CallContext& context, Done<T> done);
  // Why a call cannot start now (draining, overloaded), or OK.
  absl::Status Admit() const;

  SnapshotManager* const manager_;
  Metrics* const metrics_;
  const QueryCoreOptions options_;
  std::atomic<int> inflight_{0};
  std::atomic<bool> draining_{false};
};

}  // namespace imagesearch::serving

#endif  // IMAGESEARCH_LIBS_SERVING_QUERY_CORE_H_
