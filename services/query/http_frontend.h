// The HTTP front end of the query service and of imagesearch-router, over an
// HttpBackend (http_backend.h: a replica's query core, or the router), as a
// table of routes on HttpServer (http_server.h, event-driven on
// libevent). Bodies and answers are the API's messages (proto/imagesearch/v1)
// in protobuf's proto3 JSON mapping, converted by the same proto adapter as
// gRPC (proto_adapter.h), so a field added to the .proto needs no change here.
// Routes:
//
//   GET  /ping         200, empty body, while the backend is serving; else 503
//   POST /invocations  a SearchRequest as application/json, or image/jpeg|
//                      png|webp bytes; query parameters set SearchRequest's
//                      scalar fields (top_k, ef, include_self, dedup, ...)
//                      over the body's, and timeout_ms the deadline; answers
//                      a SearchResponse (hits with id, score, distance, uri,
//                      attributes_json; snapshot_version; collapsed)
//   GET  /metrics      Prometheus text format
//   GET  /             the search page (web/index.html, compiled in)
//   GET  /info         a GetInfoResponse
//   GET  /thumbs/{id}  the thumbnail the indexer stored for that id (JPEG,
//                      ETag + Cache-Control; 404 if the snapshot has none)
//
// This is the SageMaker inference-container contract (/ping, /invocations
// on port 8080). Every error is {"error":{"code","message"}} with the backend's
// canonical code name and message, and an HTTP status mapped from it (see
// HttpStatusOf). A body over max_body_bytes is refused with 413 from its
// Content-Length, before it is read. Every refusal before the backend is
// decided and counted by a CallGate (call_gate.h) under the route's method.
//
// Threads: the server's loop thread answers /ping, /metrics, / and /info
// itself, so health answers however busy the model is and however many
// connections are open or stalled. /invocations and /thumbs (parsing,
// searching, reading the snapshot) go to a pool of `threads` workers through
// a queue of at most `max_queued` requests; a worker starts the query
// through the backend and is free again at once, and the backend's callback (on
// the worker, or on a model thread for image and text queries) sends the
// answer. A full queue, or the backend's admission, answers 429 at once.
//
// With options.tls it serves HTTPS only (with mTLS a verified client
// certificate is required on every connection, /ping included). With
// options.token every request but GET /ping must carry "Authorization:
// Bearer <token>", else 401 with the usual error body and "WWW-Authenticate:
// Bearer"; the token is checked from the headers, before any body is read.
//
// Thread-safe. The backend and metrics outlive it.
#ifndef IMAGESEARCH_SERVICES_QUERY_HTTP_FRONTEND_H_
#define IMAGESEARCH_SERVICES_QUERY_HTTP_FRONTEND_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "libs/serving/metrics.h"
#include "services/query/auth.h"
#include "services/query/call_gate.h"
#include "services/query/http_backend.h"
#include "services/query/http_server.h"

namespace imagesearch {

struct HttpFrontendOptions {
  std::string host = "0.0.0.0";
  int port = 8080;
  int threads = 4;                  // Workers that start /invocations and /thumbs requests.
  size_t max_queued = 1024;         // Requests waiting for a worker; beyond it 429.
  size_t max_body_bytes = 6 << 20;  // Larger bodies get 413.
  absl::Duration timeout = absl::Seconds(60);  // Deadline of each request.
  // A connection idle, or with a request half sent, for this long is closed.
  absl::Duration read_timeout = absl::Seconds(60);
  const TlsFiles* tls = nullptr;       // HTTPS with these files; null = plain HTTP.
  const BearerToken* token = nullptr;  // Required on every request but /ping; null = none.
};

// The HTTP status for a status code.
int HttpStatusOf(absl::StatusCode code);

class HttpFrontend {
 public:
  HttpFrontend(HttpBackend* backend, serving::Metrics* metrics, HttpFrontendOptions options);
  ~HttpFrontend();  // Stops.
  HttpFrontend(const HttpFrontend&) = delete;
  HttpFrontend& operator=(const HttpFrontend&) = delete;

  // Binds and starts serving on a background thread. UNAVAILABLE if the port
  // cannot be bound; INVALID_ARGUMENT if the TLS context could not be set up.
  absl::Status Start();
  // The bound port, after Start (options.port, or the one picked for 0).
  int port() const;
  // Stops accepting, finishes the requests being served, joins.
  void Stop();

 private:
  using Handler = void (HttpFrontend::*)(HttpRequest, HttpResponder);
  struct Route;
  // The routes, matched in order.
  static const std::vector<Route>& Routes();

  // On the server's loop thread.
  std::optional<HttpResponse> CheckHead(const HttpRequest& req);
  void Dispatch(HttpRequest req, HttpResponder respond);
  // Runs `task` on a worker; false if the queue is full.
  bool Enqueue(std::function<void()> task);
  void Work();

  // The handlers.
  void Ping(HttpRequest req, HttpResponder respond);
  void MetricsText(HttpRequest req, HttpResponder respond);
  void Page(HttpRequest req, HttpResponder respond);
  void Info(HttpRequest req, HttpResponder respond);
  void Thumbnail(HttpRequest req, HttpResponder respond);
  void InvocationsGet(HttpRequest req, HttpResponder respond);
  void Invocations(HttpRequest req, HttpResponder respond);

  // The route `req` names, or null.
  static const Route* FindRoute(const HttpRequest& req);
  // An answer for a request the backend never sees, counted under `method`.
  HttpResponse Refuse(absl::string_view method, const absl::Status& status,
                      int http_status = 0) const;

  HttpBackend* const backend_;
  serving::Metrics* const metrics_;
  const HttpFrontendOptions options_;
  const CallGate gate_;
  std::unique_ptr<HttpServer> server_;

  std::mutex mu_;
  std::condition_variable work_cv_;
  std::deque<std::function<void()>> queue_;  // Guarded by mu_.
  bool stopping_ = false;                    // Guarded by mu_.
  std::vector<std::thread> workers_;
};

}  // namespace imagesearch

#endif  // IMAGESEARCH_SERVICES_QUERY_HTTP_FRONTEND_H_
