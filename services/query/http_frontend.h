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
  // cannot be bound.
  absl::Status Start();
  // Stops accepting, finishes the requests being served, joins.
  void Stop();

 private:
  serving::QueryCore* const core_;
  serving::Metrics* const metrics_;
  const HttpFrontendOptions options_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
};

}  // namespace imagesearch

#endif  // IMAGESEARCH_SERVICES_QUERY_HTTP_FRONTEND_H_
