// What one gRPC connection may hold on a server, shared by every server
// binary (imagesearch-query, imagesearch-router, imagesearch-indexer serve).
//
// A client that sends calls and stops reading (a stalled process, a host that
// is gone, a client that never takes its answers) makes the server hold every
// answer it cannot send. Measured on gRPC 1.51 without these limits: 20,000
// Search calls on one connection that never reads grew a replica from 20 MB
// to 309 MB in two seconds, and nothing closed the connection before
// --max_connection_age_ms (5 min). So:
//   - at most kMaxConcurrentStreams calls open per connection (HTTP/2
//     MAX_CONCURRENT_STREAMS): a gRPC client queues its calls beyond it, and
//     the server resets a connection that opens more;
//   - keepalive: a connection is pinged after kKeepaliveTimeMs without
//     traffic and closed, with every call it holds, when the ping is not
//     answered within kKeepaliveTimeoutMs. A client whose transport runs
//     answers at once, however slowly its application reads; nginx does too.
// tests/e2e/stalled_client_test.py checks both.
//
// Not bounded: a client that never acknowledges the server's HTTP/2
// SETTINGS is not held to the stream limit by gRPC 1.51; only the keepalive
// closes its connection (measured: ~1 GB of answers held for the ~15 s it
// took, from a client sending as fast as loopback allows).
#ifndef IMAGESEARCH_SERVICES_QUERY_CONNECTION_LIMITS_H_
#define IMAGESEARCH_SERVICES_QUERY_CONNECTION_LIMITS_H_

#include <grpcpp/grpcpp.h>

namespace imagesearch {

inline constexpr int kMaxConcurrentStreams = 256;
inline constexpr int kKeepaliveTimeMs = 20'000;
inline constexpr int kKeepaliveTimeoutMs = 10'000;

inline void ApplyConnectionLimits(grpc::ServerBuilder* builder) {
  builder->AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, kMaxConcurrentStreams);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepaliveTimeMs);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepaliveTimeoutMs);
}

}  // namespace imagesearch

#endif  // IMAGESEARCH_SERVICES_QUERY_CONNECTION_LIMITS_H_
