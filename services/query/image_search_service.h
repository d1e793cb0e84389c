// The imagesearch.v1.ImageSearch gRPC service (callback API). A thin layer:
// it validates requests, picks the live snapshot, and searches with bounded
// concurrency, so that overload becomes RESOURCE_EXHAUSTED and requests whose
// deadline has passed are dropped before any work is done.
//
// Thread-safe; owns no state but the in-flight count. The manager and pool
// outlive it.
#ifndef IMAGESEARCH_SERVICES_QUERY_IMAGE_SEARCH_SERVICE_H_
#define IMAGESEARCH_SERVICES_QUERY_IMAGE_SEARCH_SERVICE_H_

#include <atomic>
#include <cstdint>

#include "imagesearch/v1/imagesearch.grpc.pb.h"
#include "libs/serving/snapshot_manager.h"
#include "libs/serving/work_pool.h"

namespace imagesearch {

class ImageSearchService final : public v1::ImageSearch::CallbackService {
 public:
  // `max_inflight`: vector/id searches running at once beyond which requests
  // get RESOURCE_EXHAUSTED.
  ImageSearchService(serving::SnapshotManager* manager, serving::WorkPool* pool,
                     int max_inflight)
      : manager_(manager), pool_(pool), max_inflight_(max_inflight) {}

  grpc::ServerUnaryReactor* Search(grpc::CallbackServerContext* context,
                                   const v1::SearchRequest* request,
                                   v1::SearchResponse* response) override;
  grpc::ServerUnaryReactor* SearchBatch(grpc::CallbackServerContext* context,
                                        const v1::SearchBatchRequest* request,
                                        v1::SearchBatchResponse* response) override;
  grpc::ServerUnaryReactor* Embed(grpc::CallbackServerContext* context,
                                  const v1::EmbedRequest* request,
                                  v1::EmbedResponse* response) override;
  grpc::ServerUnaryReactor* GetInfo(grpc::CallbackServerContext* context,
                                    const v1::GetInfoRequest* request,
                                    v1::GetInfoResponse* response) override;

 private:
  // Counts one more search in flight, or RESOURCE_EXHAUSTED if max_inflight
  // are already running. The caller decrements inflight_ when done.
  absl::Status Admit();

  serving::SnapshotManager* const manager_;
  serving::WorkPool* const pool_;
  const int max_inflight_;
  std::atomic<int> inflight_{0};
};

}  // namespace imagesearch

#endif  // IMAGESEARCH_SERVICES_QUERY_IMAGE_SEARCH_SERVICE_H_
