// gRPC front of the ingest service (imagesearch.v1.Ingest): converts requests
// to IngestShards calls and back; nothing else. Synchronous gRPC API, since a
// waiting Upsert holds its thread until the publish (about a second); a
// streaming upsert holds two (one reads and accepts, one waits and answers).
#ifndef IMAGESEARCH_SERVICES_INDEXER_INGEST_SERVICE_H_
#define IMAGESEARCH_SERVICES_INDEXER_INGEST_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <optional>

#include "imagesearch/v1/imagesearch.grpc.pb.h"
#include "services/indexer/ingest_shards.h"
#include "services/query/auth.h"

namespace imagesearch::indexer {

class IngestServiceImpl final : public v1::Ingest::Service {
 public:
  // `token`: null, or the bearer token every call must carry (else
  // UNAUTHENTICATED); health and reflection are other services, open.
  IngestServiceImpl(IngestShards* core, const BearerToken* token) : core_(core), token_(token) {}

  grpc::Status Upsert(grpc::ServerContext* context, const v1::UpsertRequest* request,
                      v1::UpsertResponse* response) override;
  grpc::Status UpsertStream(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::UpsertStreamResponse, v1::UpsertStreamRequest>* stream) override;
  grpc::Status Delete(grpc::ServerContext* context, const v1::DeleteRequest* request,
                      v1::DeleteResponse* response) override;
  grpc::Status Flush(grpc::ServerContext* context, const v1::FlushRequest* request,
                     v1::FlushResponse* response) override;
  grpc::Status Status(grpc::ServerContext* context, const v1::IngestStatusRequest* request,
                      v1::IngestStatusResponse* response) override;

 private:
  grpc::Status Authenticate(const grpc::ServerContext& context) const;

  IngestShards* core_;
  const BearerToken* token_;
};

// Runs `imagesearch-indexer serve`: the core, the gRPC server with health
// and reflection on host:port (0 = a free port; the port is printed as
// "listening on port N" and written to port_file as {"grpc": N} if set), until
// SIGTERM or SIGINT. Returns the process exit status.
struct ServeOptions {
  IngestOptions ingest;
  // A new sharded collection in an empty root (IngestShards::Start).
  uint32_t shard_count = 0;
  std::string collection;
  std::string host = "0.0.0.0";
  int port = 50052;
  std::string port_file;
  // gRPC over TLS (mTLS with a client CA), and the token every Ingest call
  // must carry; neither by default.
  ServerSecurity security;
};
int RunIngestServer(const ServeOptions& options);

}  // namespace imagesearch::indexer

#endif  // IMAGESEARCH_SERVICES_INDEXER_INGEST_SERVICE_H_
