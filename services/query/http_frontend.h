// The HTTP front end of the query service (cpp-httplib), over the same query
// core as gRPC. Routes:
//
//   GET  /ping         200, empty body, while the core is serving; else 503
//   POST /invocations  image/jpeg|png|webp bytes (top_k, ef as query
//                      parameters), or application/json
//                      {"text"|"vector"|"id"|"image_b64", "top_k", "ef",
//                       "include_self"}; answers
//                      {"hits":[{"id","score","distance","uri","attributes"}],
//                       "snapshot_version"}
//   GET  /metrics      Prometheus text format
//   GET  /             the search page (web/index.html, compiled in)
//   GET  /info         what gRPC GetInfo answers, as JSON (same field names)
//   GET  /thumbs/{id}  the thumbnail the indexer stored for that id (JPEG,
//                      ETag + Cache-Control; 404 if the snapshot has none)
//
// This is the SageMaker inference-container contract (/ping, /invocations
// on port 8080). Every error is {"error":{"code","message"}} with the core's
// canonical code name and message, and an HTTP status mapped from it (see
// HttpStatusOf). A body over max_body_bytes is refused with 413 from its
// Content-Length, before it is read.
//
// With options.tls it serves HTTPS only (httplib::SSLServer; with mTLS a
// verified client certificate is required on every connection, /ping
// included). With options.token every request but GET /ping must carry
// "Authorization: Bearer <token>", else 401 with the usual error body and
// "WWW-Authenticate: Bearer". Bodiless requests are refused before routing;
// requests with a body (POST...) after httplib has read the body, so that the
// connection stays in step (see the 413 note in http_frontend.cc).
//
// Thread-safe. The core and metrics outlive it.
#ifndef IMAGESEARCH_SERVICES_QUERY_HTTP_FRONTEND_H_
#define IMAGESEARCH_SERVICES_QUERY_HTTP_FRONTEND_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "libs/serving/metrics.h"
#include "libs/serving/query_core.h"
#include "services/query/auth.h"

namespace httplib {
class Server;
}

namespace imagesearch {

struct HttpFrontendOptions {
  std::string host = "0.0.0.0";
  int port = 8080;
  int threads = 16;                            // Connections served at once.
  size_t max_body_bytes = 6 << 20;             // Larger bodies get 413.
  absl::Duration timeout = absl::Seconds(60);  // Deadline of each request.
  const TlsFiles* tls = nullptr;               // HTTPS with these files; null = plain HTTP.
  const BearerToken* token = nullptr;          // Required on every request but /ping; null = none.
};

// The HTTP status for a core status code.
int HttpStatusOf(absl::StatusCode code);

class HttpFrontend {
 public:
  HttpFrontend(serving::QueryCore* core, serving::Metrics* metrics, HttpFrontendOptions options);
  ~HttpFrontend();  // Stops.
  HttpFrontend(const HttpFrontend&) = delete;
  HttpFrontend& operator=(const HttpFrontend&) = delete;

  // Binds and starts serving on a background thread. UNAVAILABLE if the port
  // cannot be bound; INVALID_ARGUMENT if the TLS context could not be set up.
  absl::Status Start();
  // Stops accepting, finishes the requests being served, joins.
  void Stop();

 private:
  serving::QueryCore* const core_;
  serving::Metrics* const metrics_;
  const HttpFrontendOptions options_;
  std::unique_ptr<httplib::Server> server_;
  std::string tls_error_;  // Why the TLS context could not be set up.
  std::thread thread_;
};

}  // namespace imagesearch

#endif  // IMAGESEARCH_SERVICES_QUERY_HTTP_FRONTEND_H_
