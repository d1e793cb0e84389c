// The imagesearch.v1.ImageSearch gRPC service (callback API): a thin adapter
// that converts protobuf to and from the transport-neutral query core
// (libs/serving/query_core.h), which does all admission, validation,
// deadlines and dispatch.
//
// Thread-safe; holds no state. The core outlives it.
#ifndef IMAGESEARCH_SERVICES_QUERY_IMAGE_SEARCH_SERVICE_H_
#define IMAGESEARCH_SERVICES_QUERY_IMAGE_SEARCH_SERVICE_H_

#include "imagesearch/v1/imagesearch.grpc.pb.h"
#include "libs/serving/query_core.h"

namespace imagesearch {

class ImageSearchService final : public v1::ImageSearch::CallbackService {
 public:
  explicit ImageSearchService(serving::QueryCore* core) : core_(core) {}

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
  serving::QueryCore* const core_;
};

}  // namespace imagesearch

#endif  // IMAGESEARCH_SERVICES_QUERY_IMAGE_SEARCH_SERVICE_H_
