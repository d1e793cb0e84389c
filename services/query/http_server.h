// A small event-driven HTTP/1.1 server on libevent (event loop, listener,
// bufferevents, and bufferevent_openssl for HTTPS). It knows nothing of
// queries: HttpFrontend (http_frontend.h) gives it the routes.
//
// One loop thread accepts every connection, reads and parses requests, and
// writes every answer, so a connection costs a file descriptor and a few
// buffers, never a thread: idle, slow and stalled clients cannot hold up the
// others. Handlers run on the loop thread and must not block there; they
// answer through an HttpResponder, from any thread (the answer is posted to
// the loop). While a request is handled its connection is still read, to see
// the client close (HttpRequest::client_gone); pipelined requests wait.
//
//   accept (backlog SOMAXCONN) -> [TLS handshake] -> request line + headers
//   (at most max_header_bytes) -> check_head: refuse before the body (401,
//   413), or -> body (Content-Length or chunked, at most max_body_bytes)
//   -> handle -> HttpResponder::Send -> the answer is written -> the next
//   request on the same connection (keep-alive, pipelining)
//
// A refusal from check_head on a request with a body: if the client asked
// "Expect: 100-continue", it is answered at once and the connection closed
// (the body was never sent); otherwise the body is read and dropped, never
// held, and the connection stays usable. A connection that sends nothing
// for read_timeout (idle keep-alive, or a request or TLS handshake left
// unfinished) is closed, and one whose request line and headers trickle in
// for longer than read_timeout in all gets 408 and is closed; so is one that
// does not take its answer within write_timeout. Malformed requests get 400 (431 for an oversized
// head, 501 for an unknown Transfer-Encoding, 505 for a version other than HTTP/1.x) with a body
// from error_body, and the connection is closed.
//
// Start() raises the process's RLIMIT_NOFILE soft limit to its hard limit,
// so that thousands of connections fit, and ignores SIGPIPE (a peer that
// closes mid-answer is an error on that connection, not a signal).
//
// Thread-safe: Start and Stop from one thread; HttpResponder::Send from any.
#ifndef IMAGESEARCH_SERVICES_QUERY_HTTP_SERVER_H_
#define IMAGESEARCH_SERVICES_QUERY_HTTP_SERVER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

typedef struct ssl_ctx_st SSL_CTX;  // OpenSSL's, as <openssl/types.h> declares it.

namespace imagesearch {

struct HttpRequest {
  std::string method;                                        // As sent: "GET", "POST", ...
  std::string target;                                        // As sent: "/invocations?top_k=5".
  std::string path;                                          // The target's path, percent-decoded.
  std::vector<std::pair<std::string, std::string>> params;   // Query parameters, decoded, in order.
  std::vector<std::pair<std::string, std::string>> headers;  // Names lower-case, in order.
  std::string body;
  absl::Time received;  // When the request line and headers were in.
  // The body is (Content-Length) or grew (chunked) over max_body_bytes; it
  // was read and dropped, and `body` is empty.
  bool body_too_large = false;

  // Set once the client closes the connection (with nothing more sent)
  // while the request is handled; an answer then goes nowhere. Null outside
  // the handler.
  std::shared_ptr<const std::atomic<bool>> client_gone;
  // Counts `body` in HttpServerOptions::max_bodies_bytes while the request
  // (or a copy) lives: the handler holds the body until it is done.
  std::shared_ptr<const void> body_hold;

  // The first value of the header `lower_name` ("content-type"), or "".
  absl::string_view Header(absl::string_view lower_name) const;
};

struct HttpResponse {
  int status = 200;
  std::string content_type;  // Empty: no Content-Type header.
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // Besides Content-Type/-Length.
};

// Answers one request: call Send once, from any thread. Copyable (a copy
// answers the same request); dropping every copy unsent leaves the client
// waiting until the server stops.
class HttpResponder {
 public:
  void Send(HttpResponse response);

 private:
  friend class HttpServer;
  struct Mailbox;
  std::shared_ptr<Mailbox> mailbox_;
  uint64_t connection_ = 0;
};

struct HttpServerOptions {
  std::string host = "0.0.0.0";
  int port = 8080;                     // 0 picks a free port (see HttpServer::port).
  size_t max_header_bytes = 64 << 10;  // Request line + headers.
  size_t max_body_bytes = 6 << 20;
  // The request body bytes held at once, over all connections (being read,
  // or handled): a request whose body would pass it is answered 503 with
  // Retry-After (the rest of its body read and dropped), so that many
  // clients each sending a large body slowly cannot take the memory. At
  // least 4 x max_body_bytes, whatever is set here.
  size_t max_bodies_bytes = 256 << 20;
  // A connection that sends nothing for this long while the server waits for
  // a request (idle keep-alive, or a request or TLS handshake half sent) is
  // closed; so is one still sending a request head after this long (408). A
  // request being handled is not timed out here.
  absl::Duration read_timeout = absl::Seconds(60);
  // A connection that takes none of its pending answer for this long is closed.
  absl::Duration write_timeout = absl::Seconds(60);
  // HTTPS: sets up the server context (certificates, client verification).
  // Empty: plain HTTP.
  std::function<absl::Status(SSL_CTX*)> configure_tls;
};

class HttpServer {
 public:
  // On the loop thread, with the request line and headers (body empty):
  // an answer refuses the request before its body; nullopt goes on.
  using CheckHead = std::function<std::optional<HttpResponse>(const HttpRequest&)>;
  // On the loop thread, with the whole request; must not block.
  using Handle = std::function<void(HttpRequest, HttpResponder)>;
  // The answer for an error the server finds itself (400, 431, 501, 505).
  using ErrorBody = std::function<HttpResponse(int status, absl::string_view message)>;

  HttpServer(HttpServerOptions options, CheckHead check_head, Handle handle, ErrorBody error_body);
  ~HttpServer();  // Stops (no grace).
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds (backlog SOMAXCONN) and starts the loop thread. UNAVAILABLE if the
  // address cannot be bound; INVALID_ARGUMENT if configure_tls fails.
  absl::Status Start();
  // The bound port, after Start.
  int port() const;
  // Request body bytes held now, over all connections (max_bodies_bytes).
  size_t bodies_held() const;
  // Stops accepting and closes connections waiting for a request; requests
  // being handled get up to `grace` to be answered and written; then closes
  // the rest and joins the loop thread. Answers sent later are dropped.
  void Stop(absl::Duration grace);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace imagesearch

#endif  // IMAGESEARCH_SERVICES_QUERY_HTTP_SERVER_H_
