// Where both front ends decide and count a call they refuse before the query
// core sees it. The core counts every call it receives; CallGate counts the
// rest, so every call is counted once, under its front ("grpc" or "http"),
// its method (the gRPC method, or the HTTP route's: Search for
// /invocations, GetInfo for /info, Thumbnail, Metrics, Page; Malformed for a
// request the HTTP server refused before it had a route: 400, 408, 431,
// 501, 505) and its code.
//
// Authentication: with a bearer token, every call but the open ones (HTTP
// /ping, gRPC health and reflection, which are other services) must carry
// "Authorization: Bearer <token>" as a header (HTTP) or metadata (gRPC).
// With mTLS the client's certificate is verified in the TLS handshake of
// either front, before any call exists; a client without a valid one never
// gets to send a call, so there is nothing to count here.
//
// Thread-safe. The token and metrics outlive it.
#ifndef IMAGESEARCH_SERVICES_QUERY_CALL_GATE_H_
#define IMAGESEARCH_SERVICES_QUERY_CALL_GATE_H_

#include <grpcpp/server_context.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "libs/serving/metrics.h"
#include "services/query/auth.h"

namespace imagesearch {

class CallGate {
 public:
  // `token` null: no authentication. `metrics` may be null (nothing counted).
  CallGate(const BearerToken* token, serving::Metrics* metrics)
      : token_(token), metrics_(metrics) {}

  // OK if no token is required or one of `authorization` (every value the
  // call carries under that name) is "Bearer <token>". Otherwise
  // UNAUTHENTICATED, telling the client how to send it, and counted.
  absl::Status Authenticate(absl::string_view front, absl::string_view method,
                            absl::Span<const absl::string_view> authorization) const;

  // Authenticate for a gRPC call: every "authorization" value in its metadata.
  absl::Status AuthenticateGrpc(const grpc::ServerContextBase& context,
                                absl::string_view method) const;

  // Counts `status` as a refusal of (front, method) and returns it.
  absl::Status Refuse(absl::string_view front, absl::string_view method, absl::Status status) const;

 private:
  const BearerToken* const token_;
  serving::Metrics* const metrics_;
};

}  // namespace imagesearch

#endif  // IMAGESEARCH_SERVICES_QUERY_CALL_GATE_H_
