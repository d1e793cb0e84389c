// What the HTTP front end (http_frontend.h) answers from, in the API's own
// messages: one replica's query core (CoreHttpBackend, below), or
// imagesearch-router's fan-out over the shards of a collection
// (services/router). The front end parses and writes JSON, checks tokens and
// sizes, and queues work; everything about the query itself is the
// backend's, so both serve the same routes with the same errors.
//
// Each asynchronous method calls `done` exactly once, on any thread.
// Implementations record their own request metrics under context.front.
#ifndef IMAGESEARCH_SERVICES_QUERY_HTTP_BACKEND_H_
#define IMAGESEARCH_SERVICES_QUERY_HTTP_BACKEND_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "imagesearch/v1/imagesearch.pb.h"
#include "libs/serving/call_context.h"
#include "libs/serving/query_core.h"

namespace imagesearch {

class HttpBackend {
 public:
  template <typename T>
  using Done = std::function<void(absl::StatusOr<T>)>;

  virtual ~HttpBackend() = default;

  // True while it answers queries (GET /ping).
  virtual bool Serving() const = 0;
  virtual void Search(v1::SearchRequest request, const serving::CallContext& context,
                      Done<v1::SearchResponse> done) = 0;
  virtual void GetInfo(const serving::CallContext& context, Done<v1::GetInfoResponse> done) = 0;
  virtual void GetThumbnail(std::string id, const serving::CallContext& context,
                            Done<v1::GetThumbnailResponse> done) = 0;
};

// One replica: the query core over its live snapshot. The core outlives it.
class CoreHttpBackend final : public HttpBackend {
 public:
  explicit CoreHttpBackend(serving::QueryCore* core) : core_(core) {}

  bool Serving() const override { return core_->Serving(); }
  void Search(v1::SearchRequest request, const serving::CallContext& context,
              Done<v1::SearchResponse> done) override;
  void GetInfo(const serving::CallContext& context, Done<v1::GetInfoResponse> done) override;
  void GetThumbnail(std::string id, const serving::CallContext& context,
                    Done<v1::GetThumbnailResponse> done) override;

 private:
  serving::QueryCore* const core_;
};

}  // namespace imagesearch

#endif  // IMAGESEARCH_SERVICES_QUERY_HTTP_BACKEND_H_
