// The imagesearch.v1.ImageSearch gRPC service: a thin adapter that converts
// protobuf to and from the transport-neutral query core
// (libs/serving/query_core.h), which does all admission, validation,
// deadlines and dispatch.
//
// Served on gRPC's asynchronous API and completion threads of our own
// (libs/rpc): a call is taken from the queue, searched and answered on the
// thread that polls it, with no hand-off between threads (gRPC's callback
// API hands each call between its own threads, which cost a unary call
// about 10 us of CPU on this project's VMs; tools/bench/results/LOG.md, "The
// replica on its own completion threads"). An image or text query waits for
// the model on the batcher's threads and is answered from there.
//
// Every method is registered raw (grpc::ByteBuffer in and out) and parses
// its request itself, for two reasons:
//   - a request whose bytes do not parse gets INVALID_ARGUMENT saying which
//     message did not parse (gRPC's typed handlers answer UNIMPLEMENTED or
//     INTERNAL with no message);
//   - with a bearer token (--auth_token_file), the call's metadata is checked
//     first, so an unauthenticated caller's bytes are never parsed and never
//     reach the core. A gRPC server interceptor cannot end a call, and an
//     AuthMetadataProcessor needs TLS; the token must also work on plaintext
//     behind a TLS-terminating proxy.
// grpc.health.v1.Health and server reflection are other services
// (libs/rpc/health_reflection.h), open without a token (Kubernetes gRPC
// probes cannot send metadata; reflection describes the public API, no
// data).
//
// Thread-safe; holds no per-call state. The core, token and metrics outlive it.
#ifndef IMAGESEARCH_SERVICES_QUERY_IMAGE_SEARCH_SERVICE_H_
#define IMAGESEARCH_SERVICES_QUERY_IMAGE_SEARCH_SERVICE_H_

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "imagesearch/v1/imagesearch.grpc.pb.h"
#include "libs/rpc/completion_threads.h"
#include "libs/rpc/served_call.h"
#include "libs/serving/metrics.h"
#include "libs/serving/query_core.h"
#include "services/query/auth.h"
#include "services/query/call_gate.h"

namespace imagesearch {

class ImageSearchService {
 public:
  // `token` null: no authentication. The calls refused here
  // (unauthenticated, unparseable) are counted in `metrics` by a CallGate;
  // the core counts the rest.
  ImageSearchService(serving::QueryCore* core, const BearerToken* token, serving::Metrics* metrics);

  // To register with the server's builder.
  grpc::Service* service() { return &service_; }
  // Metadata every answer carries from now on (snapshot::ShardStamp: which
  // shard of which collection answered). Before Start only.
  void StampAnswers(std::string key, std::string value);
  // Once the server is built: asks each of `threads`' queues for the calls
  // of every method. `threads` outlives the server.
  void Start(rpc::CompletionThreads* threads);

 private:
  using Async = v1::ImageSearch::WithRawMethod_Search<v1::ImageSearch::WithRawMethod_SearchBatch<
      v1::ImageSearch::WithRawMethod_Embed<v1::ImageSearch::WithRawMethod_GetInfo<
          v1::ImageSearch::WithRawMethod_GetThumbnail<v1::ImageSearch::Service>>>>>;
  using RawMethod = rpc::Method<grpc::ByteBuffer, grpc::ByteBuffer>;
  using RequestFn = void (Async::*)(grpc::ServerContext*, grpc::ByteBuffer*,
                                    grpc::ServerAsyncResponseWriter<grpc::ByteBuffer>*,
                                    grpc::CompletionQueue*, grpc::ServerCompletionQueue*, void*);
  using Done = std::function<void(absl::Status)>;

  // A method: checks the token, parses a Request, runs `handle` and
  // serializes its Response; any refusal ends the call with a precise
  // status.
  template <typename Request, typename Response>
  RawMethod Make(const char* name, RequestFn request,
                 void (ImageSearchService::*handle)(const serving::CallContext&, const Request&,
                                                    Response*, Done));

  void HandleSearch(const serving::CallContext& context, const v1::SearchRequest& request,
                    v1::SearchResponse* response, Done done);
  void HandleSearchBatch(const serving::CallContext& context, const v1::SearchBatchRequest& request,
                         v1::SearchBatchResponse* response, Done done);
  void HandleEmbed(const serving::CallContext& context, const v1::EmbedRequest& request,
                   v1::EmbedResponse* response, Done done);
  void HandleGetInfo(const serving::CallContext& context, const v1::GetInfoRequest& request,
                     v1::GetInfoResponse* response, Done done);
  void HandleGetThumbnail(const serving::CallContext& context,
                          const v1::GetThumbnailRequest& request,
                          v1::GetThumbnailResponse* response, Done done);

  serving::QueryCore* const core_;
  const CallGate gate_;
  Async service_;
  std::vector<std::pair<std::string, std::string>> stamp_;  // Fixed once Start runs.
  RawMethod search_;
  RawMethod search_batch_;
  RawMethod embed_;
  RawMethod get_info_;
  RawMethod thumbnail_;
};

}  // namespace imagesearch

#endif  // IMAGESEARCH_SERVICES_QUERY_IMAGE_SEARCH_SERVICE_H_
