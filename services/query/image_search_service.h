// The imagesearch.v1.ImageSearch gRPC service (callback API): a thin adapter
// that converts protobuf to and from the transport-neutral query core
// (libs/serving/query_core.h), which does all admission, validation,
// deadlines and dispatch.
//
// Every method is registered raw (grpc::ByteBuffer in and out) and parses
// its request itself, for two reasons:
//   - gRPC's typed callback handler answers a request whose bytes do not
//     parse with UNIMPLEMENTED and no message; here it is INVALID_ARGUMENT
//     saying which message did not parse;
//   - with a bearer token (--auth_token_file), the call's metadata is checked
//     first, so an unauthenticated caller's bytes are never parsed and never
//     reach the core. A gRPC server interceptor cannot end a call, and an
//     AuthMetadataProcessor needs TLS; the token must also work on plaintext
//     behind a TLS-terminating proxy.
// grpc.health.v1.Health and server reflection are other services, open
// without a token (Kubernetes gRPC probes cannot send metadata; reflection
// describes the public API, no data).
//
// Thread-safe; holds no per-call state. The core, token and metrics outlive it.
#ifndef IMAGESEARCH_SERVICES_QUERY_IMAGE_SEARCH_SERVICE_H_
#define IMAGESEARCH_SERVICES_QUERY_IMAGE_SEARCH_SERVICE_H_

#include <functional>

#include "imagesearch/v1/imagesearch.grpc.pb.h"
#include "libs/serving/metrics.h"
#include "libs/serving/query_core.h"
#include "services/query/auth.h"
#include "services/query/call_gate.h"

namespace imagesearch {

using RawImageSearchBase = v1::ImageSearch::WithRawCallbackMethod_Search<
    v1::ImageSearch::WithRawCallbackMethod_SearchBatch<
        v1::ImageSearch::WithRawCallbackMethod_Embed<v1::ImageSearch::WithRawCallbackMethod_GetInfo<
            v1::ImageSearch::WithRawCallbackMethod_GetThumbnail<v1::ImageSearch::Service>>>>>;

class ImageSearchService final : public RawImageSearchBase {
 public:
  // `token` null: no authentication. The calls refused here
  // (unauthenticated, unparseable) are counted in `metrics` by a CallGate;
  // the core counts the rest.
  ImageSearchService(serving::QueryCore* core, const BearerToken* token, serving::Metrics* metrics)
      : core_(core), gate_(token, metrics) {}

  grpc::ServerUnaryReactor* Search(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* SearchBatch(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Embed(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetInfo(grpc::CallbackServerContext* context,
                                    const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetThumbnail(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;

 private:
  using Done = std::function<void(grpc::Status)>;
  // Checks the token, parses a Request, runs `handle` and serializes its
  // Response; any refusal finishes the call with a precise status.
  template <typename Request, typename Response>
  grpc::ServerUnaryReactor* Serve(grpc::CallbackServerContext* context, const grpc::ByteBuffer* in,
                                  grpc::ByteBuffer* out, const char* method,
                                  void (ImageSearchService::*handle)(grpc::CallbackServerContext*,
                                                                     const Request&, Response*,
                                                                     Done));

  void HandleSearch(grpc::CallbackServerContext* context, const v1::SearchRequest& request,
                    v1::SearchResponse* response, Done done);
  void HandleSearchBatch(grpc::CallbackServerContext* context,
                         const v1::SearchBatchRequest& request, v1::SearchBatchResponse* response,
                         Done done);
  void HandleEmbed(grpc::CallbackServerContext* context, const v1::EmbedRequest& request,
                   v1::EmbedResponse* response, Done done);
  void HandleGetInfo(grpc::CallbackServerContext* context, const v1::GetInfoRequest& request,
                     v1::GetInfoResponse* response, Done done);
  void HandleGetThumbnail(grpc::CallbackServerContext* context,
                          const v1::GetThumbnailRequest& request,
                          v1::GetThumbnailResponse* response, Done done);

  serving::QueryCore* const core_;
  const CallGate gate_;
};

}  // namespace imagesearch

#endif  // IMAGESEARCH_SERVICES_QUERY_IMAGE_SEARCH_SERVICE_H_
