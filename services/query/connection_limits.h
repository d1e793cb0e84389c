// What one gRPC connection may hold on a server, shared by every server
// binary (imagesearch-query, imagesearch-router, imagesearch-indexer serve).
//
// A client that sends calls and stops reading (a stalled process, a host that
// is gone, a client that never takes its answers) makes the server hold every
// answer it cannot send. Measured on gRPC 1.51 without these limits: 20,000
// Search calls on one connection that never reads grew a replica from 20 MB
// to 309 MB in two seconds (tools/bench/results/LOG.md, "Stalled clients").
// So:
//   - at most kMaxConcurrentStreams calls open per connection (HTTP/2
//     MAX_CONCURRENT_STREAMS): a gRPC client queues its calls beyond it, and
//     the server resets a connection that opens more. It is above a
//     replica's --max_inflight_requests (256), so that a busy client (the
//     router, one connection per replica) is still refused at once by the
//     replica's own limit rather than queued in its channel;
//   - keepalive: while a connection has calls open, it is pinged every
//     kKeepaliveTimeMs and closed, with every call it holds, when a ping is
//     not answered within kKeepaliveTimeoutMs; pings go on however long its
//     calls send nothing (a streaming upsert waiting for a publish). A client
//     whose transport runs answers at once, however slowly its application
//     reads; nginx does too. Idle connections are not pinged.
// tests/e2e/stalled_client_test.py checks both.
//
// Not bounded by these: a client whose transport answers pings but whose
// application never takes its answers (at most kMaxConcurrentStreams of them,
// until --max_connection_age_ms where the binary has it); and a client that
// never acknowledges the server's HTTP/2 SETTINGS, which gRPC 1.51 does not
// hold to the stream limit, until the keepalive closes it (measured: ~1 GB of
// answers held for the ~15 s it took, from a client sending as fast as
// loopback allows).
#ifndef IMAGESEARCH_SERVICES_QUERY_CONNECTION_LIMITS_H_
#define IMAGESEARCH_SERVICES_QUERY_CONNECTION_LIMITS_H_

#include <grpcpp/grpcpp.h>

namespace imagesearch {

inline constexpr int kMaxConcurrentStreams = 1024;
inline constexpr int kKeepaliveTimeMs = 20'000;
inline constexpr int kKeepaliveTimeoutMs = 10'000;

inline void ApplyConnectionLimits(grpc::ServerBuilder* builder) {
  builder->AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, kMaxConcurrentStreams);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepaliveTimeMs);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepaliveTimeoutMs);
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
}

}  // namespace imagesearch

#endif  // IMAGESEARCH_SERVICES_QUERY_CONNECTION_LIMITS_H_
