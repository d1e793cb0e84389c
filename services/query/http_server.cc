#include "services/query/http_server.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "absl/algorithm/container.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "libs/common/client_text.h"
#include "libs/common/log.h"

namespace imagesearch {
namespace {

// The longest chunk-size or trailer line of a chunked body.
constexpr size_t kMaxChunkLine = 4096;
// Input buffered beyond a request head's limit before reading pauses (while a
// request is handled, pipelined requests wait in the buffer up to this).
constexpr size_t kReadSlack = 64 << 10;
// Answers waiting to go out to one client beyond which its next pipelined
// request is not read until they are down to the low mark: a client that
// sends many requests and reads none would otherwise have the server hold
// every answer (thumbnails: hundreds of MB).
constexpr size_t kOutputHighWater = 1 << 20;
constexpr size_t kOutputLowWater = 256 << 10;

const char* Reason(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 204:
      return "No Content";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 412:
      return "Precondition Failed";
    case 413:
      return "Payload Too Large";
    case 415:
      return "Unsupported Media Type";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 499:
      return "Client Closed Request";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Status";
  }
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decodes `in` ('+' is a space in query strings only); false on a
// malformed escape.
bool PercentDecode(absl::string_view in, bool plus_is_space, std::string* out) {
  out->clear();
  out->reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '%') {
      if (i + 2 >= in.size()) return false;
      const int hi = HexValue(in[i + 1]), lo = HexValue(in[i + 2]);
      if (hi < 0 || lo < 0) return false;
      out->push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (in[i] == '+' && plus_is_space) {
      out->push_back(' ');
    } else {
      out->push_back(in[i]);
    }
  }
  return true;
}

bool IsToken(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c <= ' ' || c >= 127 ||
        absl::string_view("()<>@,;:\\\"/[]?={}").find(c) != absl::string_view::npos) {
      return false;
    }
  }
  return true;
}

// True if the comma-separated header value holds `token` (case-insensitive).
bool HasToken(absl::string_view value, absl::string_view token) {
  for (absl::string_view part : absl::StrSplit(value, ',')) {
    if (absl::EqualsIgnoreCase(absl::StripAsciiWhitespace(part), token)) return true;
  }
  return false;
}

struct HeadError {
  int status;
  std::string message;
};

// Parses the request line and headers (without the blank line ending them).
// Sets *keep_alive from the version and the Connection header.
std::optional<HeadError> ParseHead(absl::string_view head, HttpRequest* req, bool* keep_alive) {
  std::vector<absl::string_view> lines = absl::StrSplit(head, "\r\n");
  std::vector<absl::string_view> first = absl::StrSplit(lines[0], ' ');
  if (first.size() != 3 || !IsToken(first[0]) || first[1].empty()) {
    return HeadError{400, absl::StrCat("malformed request line ", QuoteClientText(lines[0]),
                                       "; expected METHOD /path HTTP/1.1")};
  }
  const absl::string_view version = first[2];
  if (version != "HTTP/1.1" && version != "HTTP/1.0") {
    return HeadError{505, absl::StrCat("HTTP version ", QuoteClientText(version),
                                       " is not supported; use HTTP/1.1")};
  }
  req->method = std::string(first[0]);
  req->target = std::string(first[1]);
  if (req->target[0] != '/') {
    return HeadError{400, absl::StrCat("request target ", QuoteClientText(req->target),
                                       " must be a path starting with '/'")};
  }
  const size_t q = req->target.find('?');
  if (!PercentDecode(absl::string_view(req->target).substr(0, q), false, &req->path)) {
    return HeadError{400, "malformed percent-escape in the request path"};
  }
  if (q != std::string::npos) {
    for (absl::string_view pair :
         absl::StrSplit(absl::string_view(req->target).substr(q + 1), '&', absl::SkipEmpty())) {
      const size_t eq = pair.find('=');
      std::string key, value;
      if (!PercentDecode(pair.substr(0, eq), true, &key) ||
          !PercentDecode(eq == absl::string_view::npos ? "" : pair.substr(eq + 1), true, &value)) {
        return HeadError{400, "malformed percent-escape in the query string"};
      }
      req->params.emplace_back(std::move(key), std::move(value));
    }
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    const absl::string_view line = lines[i];
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos || !IsToken(line.substr(0, colon))) {
      return HeadError{400, absl::StrCat("malformed header line ", QuoteClientText(line))};
    }
    req->headers.emplace_back(absl::AsciiStrToLower(line.substr(0, colon)),
                              std::string(absl::StripAsciiWhitespace(line.substr(colon + 1))));
  }
  const absl::string_view connection = req->Header("connection");
  *keep_alive =
      version == "HTTP/1.1" ? !HasToken(connection, "close") : HasToken(connection, "keep-alive");
  return std::nullopt;
}

timeval PositiveTimeval(absl::Duration d) {
  return absl::ToTimeval(std::max(d, absl::Milliseconds(1)));
}

// Raises the soft limit on open files to the hard limit.
void RaiseFileLimit() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur >= lim.rlim_max) return;
  const rlim_t was = lim.rlim_cur;
  lim.rlim_cur = lim.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &lim) != 0) {
    LogWarning("cannot raise the open-file limit from ", was, ": ", std::strerror(errno));
  }
}

}  // namespace

absl::string_view HttpRequest::Header(absl::string_view lower_name) const {
  for (const auto& [name, value] : headers) {
    if (name == lower_name) return value;
  }
  return {};
}

// Answers posted to the loop thread. Outlives the server while responders do.
struct HttpResponder::Mailbox {
  std::mutex mu;
  bool closed = false;    // The loop has stopped: answers are dropped.
  event* wake = nullptr;  // Activated when `answers` becomes non-empty.
  std::vector<std::pair<uint64_t, HttpResponse>> answers;
};

void HttpResponder::Send(HttpResponse response) {
  std::shared_ptr<Mailbox> mailbox = std::move(mailbox_);
  if (mailbox == nullptr) return;
  std::lock_guard<std::mutex> lock(mailbox->mu);
  if (mailbox->closed) return;
  mailbox->answers.emplace_back(connection_, std::move(response));
  if (mailbox->answers.size() == 1) event_active(mailbox->wake, EV_READ, 0);
}

struct HttpServer::Impl {
  enum class State {
    kHead,      // Waiting for (the rest of) a request line and headers.
    kBody,      // Reading a body (or dropping one, see `refusal`).
    kHandling,  // The handler has the request; reading is off.
    kClosing,   // Writing a last answer; closed once it is out.
  };
  enum class ChunkPhase { kSize, kData, kDataEnd, kTrailer };

  // Bytes of one body counted in a server's total; given back when the
  // last holder (the connection, then the request) lets go.
  struct BodyHold {
    std::shared_ptr<std::atomic<size_t>> total;
    size_t bytes = 0;
    ~BodyHold() { total->fetch_sub(bytes, std::memory_order_relaxed); }
  };

  struct Conn {
    Impl* server = nullptr;
    uint64_t id = 0;
    bufferevent* bev = nullptr;
    State state = State::kHead;
    HttpRequest req;
    bool keep_alive = true;
    bool http10 = false;     // An HTTP/1.0 request: keep-alive is said explicitly.
    bool head_only = false;  // A HEAD request: the answer has no body.
    bool chunked = false;
    ChunkPhase phase = ChunkPhase::kSize;
    uint64_t remaining = 0;  // Content-Length bytes, or the chunk's bytes, still to read.
    bool drop_body = false;  // Read the body and keep none of it.
    // When the first byte of the request head being read came in.
    absl::Time head_started = absl::InfinitePast();
    bool peer_eof = false;  // The client has closed its sending side.
    // Set when the client closes while its request is handled (HttpRequest::client_gone).
    std::shared_ptr<std::atomic<bool>> gone;
    std::optional<HttpResponse> refusal;  // Sent once the dropped body is read.
    // Its answers are over kOutputHighWater: no request is read or parsed
    // until they are down to kOutputLowWater (OnWrite).
    bool output_blocked = false;
    // This request's body bytes in Impl::bodies_held, while it is read;
    // handed to the request (HttpRequest::body_hold) at Dispatch.
    std::shared_ptr<BodyHold> hold;
  };

  Impl(HttpServerOptions o, CheckHead c, Handle h, ErrorBody e)
      : options(std::move(o)),
        check_head(std::move(c)),
        handle(std::move(h)),
        error_body(std::move(e)),
        mailbox(std::make_shared<HttpResponder::Mailbox>()) {}

  // --- Connections (loop thread) ---

  void Accept(evutil_socket_t fd) {
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    bufferevent* bev = nullptr;
    if (ssl_ctx != nullptr) {
      SSL* ssl = SSL_new(ssl_ctx);
      if (ssl != nullptr) {
        bev = bufferevent_openssl_socket_new(base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                             BEV_OPT_CLOSE_ON_FREE);
        if (bev == nullptr) SSL_free(ssl);
      }
    } else {
      bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    if (bev == nullptr) {
      evutil_closesocket(fd);
      return;
    }
    if (ssl_ctx != nullptr) bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    auto conn = std::make_unique<Conn>();
    conn->server = this;
    conn->id = next_id++;
    conn->bev = bev;
    // bufferevent_free clears the callbacks, so none sees a closed Conn.
    bufferevent_setcb(bev, &Impl::OnRead, &Impl::OnWrite, &Impl::OnEvent, conn.get());
    const timeval read_tv = PositiveTimeval(options.read_timeout);
    const timeval write_tv = PositiveTimeval(options.write_timeout);
    bufferevent_set_timeouts(bev, &read_tv, &write_tv);
    bufferevent_setwatermark(bev, EV_READ, 0, options.max_header_bytes + kReadSlack);
    bufferevent_enable(bev, EV_READ);
    conns[conn->id] = std::move(conn);
  }

  void Close(Conn* c) {
    bufferevent_free(c->bev);
    conns.erase(c->id);  // Frees c.
    if (stopping && conns.empty()) event_base_loopbreak(base);
  }

  // An error found by the server: answer it and close.
  void Fail(Conn* c, int status, absl::string_view message) {
    c->keep_alive = false;
    Respond(c, error_body(status, message));
  }

  // Parses and reads as far as the input allows.
  void Process(Conn* c) {
    evbuffer* in = bufferevent_get_input(c->bev);
    while (true) {
      if (c->output_blocked) return;  // OnWrite goes on once its answers are out.
      if (c->state == State::kHead) {
        // Blank lines before a request are allowed (RFC 9112, 2.2).
        while (evbuffer_get_length(in) > 0) {
          const char first = static_cast<char>(*evbuffer_pullup(in, 1));
          if (first != '\r' && first != '\n') break;
          evbuffer_drain(in, 1);
        }
        const size_t available = evbuffer_get_length(in);
        if (available == 0) {
          if (c->peer_eof) EndAfterOutput(c);
          return;
        }
        const evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, nullptr);
        const size_t head_bytes = end.pos < 0 ? available : static_cast<size_t>(end.pos) + 4;
        if (head_bytes > options.max_header_bytes) {
          return Fail(
              c, 431,
              absl::StrCat("request line and headers exceed ", options.max_header_bytes, " bytes"));
        }
        if (end.pos < 0) {
          if (c->peer_eof) return EndAfterOutput(c);  // It will never be complete.
          // A head trickled in a byte at a time never trips the read
          // timeout; it gets read_timeout in all.
          const absl::Time now = absl::Now();
          if (c->head_started == absl::InfinitePast()) c->head_started = now;
          if (now - c->head_started > options.read_timeout) {
            return Fail(c, 408,
                        absl::StrCat("request line and headers not complete within ",
                                     absl::FormatDuration(options.read_timeout)));
          }
          return;
        }
        c->head_started = absl::InfinitePast();
        std::string head(static_cast<size_t>(end.pos), '\0');
        evbuffer_remove(in, head.data(), head.size());
        evbuffer_drain(in, 4);
        if (!StartRequest(c, head)) return;
      } else if (c->state == State::kBody) {
        if (!ReadBody(c, in)) {
          if (c->peer_eof && c->state == State::kBody) EndAfterOutput(c);
          return;
        }
        if (c->refusal.has_value()) {
          HttpResponse refusal = *std::move(c->refusal);
          c->refusal.reset();
          Respond(c, std::move(refusal));
        } else {
          Dispatch(c);
        }
      } else {
        return;
      }
    }
  }

  // After the head: refuses, dispatches, or goes on to the body. False when
  // processing must stop here (handled, closing).
  bool StartRequest(Conn* c, absl::string_view head) {
    c->req = HttpRequest();
    c->chunked = false;
    c->remaining = 0;
    c->drop_body = false;
    c->refusal.reset();
    c->req.received = absl::Now();
    if (std::optional<HeadError> e = ParseHead(head, &c->req, &c->keep_alive)) {
      Fail(c, e->status, e->message);
      return false;
    }
    c->head_only = c->req.method == "HEAD";
    c->http10 = absl::EndsWith(head.substr(0, head.find("\r\n")), "HTTP/1.0");
    const absl::string_view te = c->req.Header("transfer-encoding");
    const absl::string_view cl = c->req.Header("content-length");
    if (absl::c_count_if(c->req.headers,
                         [](const auto& h) { return h.first == "content-length"; }) > 1) {
      Fail(c, 400, "a request must carry at most one Content-Length");
      return false;
    }
    bool has_body = false;
    if (!te.empty()) {
      if (!absl::EqualsIgnoreCase(te, "chunked")) {
        Fail(c, 501,
             absl::StrCat("Transfer-Encoding ", QuoteClientText(te),
                          " is not supported; send chunked or a Content-Length"));
        return false;
      }
      if (!cl.empty()) {
        Fail(c, 400, "a request must not carry both Transfer-Encoding and Content-Length");
        return false;
      }
      c->chunked = true;
      c->phase = ChunkPhase::kSize;
      has_body = true;
    } else if (!cl.empty()) {
      uint64_t length = 0;
      if (!absl::c_all_of(cl, absl::ascii_isdigit) || !absl::SimpleAtoi(cl, &length)) {
        Fail(c, 400, absl::StrCat("Content-Length ", QuoteClientText(cl), " is not a number"));
        return false;
      }
      c->remaining = length;
      has_body = length > 0;
      c->req.body_too_large = length > options.max_body_bytes;
    }
    const bool expect_continue = absl::EqualsIgnoreCase(c->req.Header("expect"), "100-continue");
    if (std::optional<HttpResponse> refusal = check_head(c->req)) {
      if (!has_body) {
        Respond(c, *std::move(refusal));
        return c->state == State::kHead;
      }
      if (expect_continue) {
        // The client waits for a go-ahead that never comes: answer now, and
        // close, since the body may still follow.
        c->keep_alive = false;
        Respond(c, *std::move(refusal));
        return false;
      }
      c->refusal = std::move(refusal);
      c->drop_body = true;
    }
    if (!has_body) {
      Dispatch(c);
      return false;
    }
    if (c->req.body_too_large) c->drop_body = true;
    if (!c->drop_body) {
      c->hold = std::make_shared<BodyHold>();
      c->hold->total = bodies_held;
    }
    if (expect_continue && !c->drop_body && c->keep_alive) {
      bufferevent_write(c->bev, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    }
    // Not the whole declared length: a head costs nothing until its bytes come.
    if (!c->chunked && !c->drop_body)
      c->req.body.reserve(std::min<uint64_t>(c->remaining, 64 << 10));
    c->state = State::kBody;
    return true;
  }

  // The rest of c's body is read only to be dropped; none of it is held.
  static void DropBody(Conn* c) {
    c->drop_body = true;
    c->hold.reset();
    c->req.body.clear();
    c->req.body.shrink_to_fit();
  }

  // Takes up to c->remaining bytes of body.
  void TakeBody(Conn* c, evbuffer* in) {
    const size_t n = std::min<uint64_t>(evbuffer_get_length(in), c->remaining);
    if (!c->drop_body && c->req.body.size() + n > options.max_body_bytes) {
      c->req.body_too_large = true;
      DropBody(c);
    }
    if (!c->drop_body && n > 0) {
      // Counted as the bytes come (a head alone holds nothing); past the
      // total, the request is refused and the rest of its body dropped.
      const size_t budget = std::max(options.max_bodies_bytes, 4 * options.max_body_bytes);
      if (bodies_held->fetch_add(n, std::memory_order_relaxed) + n > budget) {
        bodies_held->fetch_sub(n, std::memory_order_relaxed);
        HttpResponse busy = error_body(
            503, "the server holds as many request bodies as it takes at once; retry shortly");
        busy.headers.emplace_back("Retry-After", "1");
        c->refusal = std::move(busy);
        DropBody(c);
      } else {
        c->hold->bytes += n;
      }
    }
    if (c->drop_body) {
      evbuffer_drain(in, n);
    } else {
      const size_t old = c->req.body.size();
      c->req.body.resize(old + n);
      evbuffer_remove(in, c->req.body.data() + old, n);
    }
    c->remaining -= n;
  }

  // True once the whole body is in; false if more is needed or the
  // connection failed (c->state says which).
  bool ReadBody(Conn* c, evbuffer* in) {
    if (!c->chunked) {
      TakeBody(c, in);
      return c->remaining == 0;
    }
    while (true) {
      switch (c->phase) {
        case ChunkPhase::kSize:
        case ChunkPhase::kTrailer: {
          size_t len = 0;
          char* line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF);
          if (line == nullptr) {
            if (evbuffer_get_length(in) > kMaxChunkLine) {
              Fail(c, 400, "chunked body: a chunk-size or trailer line is too long");
            }
            return false;
          }
          const std::string text(line, len);
          free(line);
          if (c->phase == ChunkPhase::kTrailer) {
            if (text.empty()) return true;
            continue;  // Trailer fields are ignored.
          }
          const absl::string_view size =
              absl::StripAsciiWhitespace(absl::string_view(text).substr(0, text.find(';')));
          uint64_t n = 0;
          if (size.empty() || size.size() > 15 || !absl::SimpleHexAtoi(size, &n) ||
              !absl::c_all_of(size, absl::ascii_isxdigit)) {
            Fail(c, 400, absl::StrCat("chunked body: bad chunk size ", QuoteClientText(size)));
            return false;
          }
          c->remaining = n;
          c->phase = n == 0 ? ChunkPhase::kTrailer : ChunkPhase::kData;
          break;
        }
        case ChunkPhase::kData:
          TakeBody(c, in);
          if (c->remaining > 0) return false;
          c->phase = ChunkPhase::kDataEnd;
          break;
        case ChunkPhase::kDataEnd: {
          if (evbuffer_get_length(in) < 2) return false;
          char crlf[2];
          evbuffer_remove(in, crlf, 2);
          if (crlf[0] != '\r' || crlf[1] != '\n') {
            Fail(c, 400, "chunked body: a chunk does not end with CRLF");
            return false;
          }
          c->phase = ChunkPhase::kSize;
          break;
        }
      }
    }
  }

  void Dispatch(Conn* c) {
    c->state = State::kHandling;
    // Reading goes on, without a timeout, to see the client close; pipelined
    // requests wait in the buffer (reading pauses when it is full).
    const timeval write_tv = PositiveTimeval(options.write_timeout);
    bufferevent_set_timeouts(c->bev, nullptr, &write_tv);
    c->gone = std::make_shared<std::atomic<bool>>(false);
    c->req.client_gone = c->gone;
    c->req.body_hold = std::move(c->hold);  // Held until the handler lets go of the request.
    HttpResponder responder;
    responder.mailbox_ = mailbox;
    responder.connection_ = c->id;
    handle(std::move(c->req), std::move(responder));
  }

  // Writes an answer; then reads the next request, or closes.
  void Respond(Conn* c, HttpResponse r) {
    c->hold.reset();  // A refused body, dropped: nothing of it is held.
    const bool close = !c->keep_alive || stopping;
    std::string head = absl::StrCat("HTTP/1.1 ", r.status, " ", Reason(r.status), "\r\n");
    if (!r.content_type.empty()) absl::StrAppend(&head, "Content-Type: ", r.content_type, "\r\n");
    for (const auto& [name, value] : r.headers) absl::StrAppend(&head, name, ": ", value, "\r\n");
    const bool has_body = r.status != 204 && r.status != 304;
    if (has_body) absl::StrAppend(&head, "Content-Length: ", r.body.size(), "\r\n");
    absl::StrAppend(&head,
                    close       ? "Connection: close\r\n"
                    : c->http10 ? "Connection: keep-alive\r\n"
                                : "",
                    "\r\n");
    evbuffer* out = bufferevent_get_output(c->bev);
    evbuffer_add(out, head.data(), head.size());
    if (has_body && !c->head_only) evbuffer_add(out, r.body.data(), r.body.size());
    if (close) {
      c->state = State::kClosing;
      bufferevent_disable(c->bev, EV_READ);
    } else {
      c->state = State::kHead;
      c->req = HttpRequest();
      c->gone.reset();
      const timeval read_tv = PositiveTimeval(options.read_timeout);
      const timeval write_tv = PositiveTimeval(options.write_timeout);
      bufferevent_set_timeouts(c->bev, &read_tv, &write_tv);
      if (evbuffer_get_length(out) > kOutputHighWater) {
        // The write timeout still closes a client that reads nothing.
        c->output_blocked = true;
        bufferevent_disable(c->bev, EV_READ);
        bufferevent_setwatermark(c->bev, EV_WRITE, kOutputLowWater, 0);
      } else if (!c->peer_eof) {
        bufferevent_enable(c->bev, EV_READ);
      }
    }
  }

  // Closes once what is written has gone out.
  void EndAfterOutput(Conn* c) {
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) return Close(c);
    c->state = State::kClosing;
    bufferevent_disable(c->bev, EV_READ);
  }

  // Answers from handlers, on the loop thread.
  void DeliverAnswers() {
    std::vector<std::pair<uint64_t, HttpResponse>> answers;
    {
      std::lock_guard<std::mutex> lock(mailbox->mu);
      answers.swap(mailbox->answers);
    }
    for (auto& [id, response] : answers) {
      auto it = conns.find(id);
      if (it == conns.end() || it->second->state != State::kHandling) continue;
      Conn* c = it->second.get();
      Respond(c, std::move(response));
      if (c->state == State::kHead && !c->output_blocked) Process(c);
    }
    if (stopping && conns.empty()) event_base_loopbreak(base);
  }

  static void OnRead(bufferevent*, void* arg) {
    auto* c = static_cast<Conn*>(arg);
    c->server->Process(c);
  }

  static void OnWrite(bufferevent* bev, void* arg) {
    auto* c = static_cast<Conn*>(arg);
    if (c->state == State::kClosing && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
      c->server->Close(c);
      return;
    }
    if (c->output_blocked && evbuffer_get_length(bufferevent_get_output(bev)) <= kOutputLowWater) {
      c->output_blocked = false;
      bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
      if (!c->peer_eof) bufferevent_enable(bev, EV_READ);
      c->server->Process(c);  // The requests already read, then reading goes on.
    }
  }

  static void OnEvent(bufferevent* bev, short events, void* arg) {
    auto* c = static_cast<Conn*>(arg);
    if ((events & BEV_EVENT_EOF) && (events & BEV_EVENT_READING)) {
      // The client closed, or only finished sending: requests it sent are
      // still answered, then the connection closes. One that sent nothing
      // after the request being handled has given up on it.
      c->peer_eof = true;
      bufferevent_disable(bev, EV_READ);
      if (c->state == State::kHandling) {
        if (evbuffer_get_length(bufferevent_get_input(bev)) == 0) c->gone->store(true);
        return;
      }
      if (c->state == State::kHead) {
        if (c->output_blocked) return;  // OnWrite goes on once its answers are out.
        return c->server->Process(c);
      }
      if (c->state == State::kClosing) return;
      return c->server->Close(c);  // A body cut short.
    }
    if (events & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) c->server->Close(c);
  }

  static void OnAccept(evconnlistener*, evutil_socket_t fd, sockaddr*, int, void* arg) {
    static_cast<Impl*>(arg)->Accept(fd);
  }

  // accept() failed (EMFILE, ENFILE, ...): pause accepting briefly rather
  // than spin on a listening socket that stays readable.
  static void OnAcceptError(evconnlistener* listener, void* arg) {
    auto* self = static_cast<Impl*>(arg);
    const int err = EVUTIL_SOCKET_ERROR();
    const absl::Time now = absl::Now();
    if (now - self->last_accept_warning > absl::Seconds(10)) {
      self->last_accept_warning = now;
      LogWarning("HTTP accept failed (", evutil_socket_error_to_string(err), "); ",
                 self->conns.size(), " connections open; pausing accepts for 100 ms");
    }
    evconnlistener_disable(listener);
    const timeval pause = PositiveTimeval(absl::Milliseconds(100));
    event_add(self->resume_accepting, &pause);
  }

  static void OnResumeAccepting(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<Impl*>(arg);
    if (!self->stopping) evconnlistener_enable(self->listener);
  }

  static void OnWake(evutil_socket_t, short, void* arg) {
    static_cast<Impl*>(arg)->DeliverAnswers();
  }

  // Stop, on the loop thread: no new connections; connections not being
  // answered are closed; the loop ends when the rest are done.
  static void OnStop(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<Impl*>(arg);
    self->stopping = true;
    evconnlistener_disable(self->listener);
    std::vector<Conn*> idle;
    for (auto& [id, c] : self->conns) {
      if (c->state == State::kHead || c->state == State::kBody) idle.push_back(c.get());
    }
    // One whose answers still wait to go out (a pipelining client) gets them
    // first.
    for (Conn* c : idle) self->EndAfterOutput(c);
    if (self->conns.empty()) event_base_loopbreak(self->base);
  }

  static void OnGraceOver(evutil_socket_t, short, void* arg) {
    event_base_loopbreak(static_cast<Impl*>(arg)->base);
  }

  const HttpServerOptions options;
  const CheckHead check_head;
  const Handle handle;
  const ErrorBody error_body;
  const std::shared_ptr<HttpResponder::Mailbox> mailbox;

  event_base* base = nullptr;
  evconnlistener* listener = nullptr;
  event* resume_accepting = nullptr;
  SSL_CTX* ssl_ctx = nullptr;
  int bound_port = 0;
  std::thread thread;

  // Loop thread only.
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns;
  uint64_t next_id = 1;
  // Body bytes held (max_bodies_bytes): read on the loop thread, given back
  // by requests wherever their handlers let go of them.
  const std::shared_ptr<std::atomic<size_t>> bodies_held = std::make_shared<std::atomic<size_t>>(0);
  bool stopping = false;
  absl::Time last_accept_warning = absl::InfinitePast();
};

HttpServer::HttpServer(HttpServerOptions options, CheckHead check_head, Handle handle,
                       ErrorBody error_body)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(check_head), std::move(handle),
                                   std::move(error_body))) {}

HttpServer::~HttpServer() { Stop(absl::ZeroDuration()); }

int HttpServer::port() const { return impl_->bound_port; }

size_t HttpServer::bodies_held() const { return impl_->bodies_held->load(); }

absl::Status HttpServer::Start() {
  Impl& s = *impl_;
  static std::once_flag threads_once;
  std::call_once(threads_once, [] { evthread_use_pthreads(); });
  RaiseFileLimit();
  std::signal(SIGPIPE, SIG_IGN);

  if (s.options.configure_tls) {
    s.ssl_ctx = SSL_CTX_new(TLS_server_method());
    if (s.ssl_ctx == nullptr)
      return absl::InvalidArgumentError("cannot set up HTTPS: SSL_CTX_new failed");
    if (absl::Status st = s.options.configure_tls(s.ssl_ctx); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("cannot set up HTTPS: ", st.message()));
    }
  }

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* addrs = nullptr;
  const std::string port = std::to_string(s.options.port);
  const std::string where = absl::StrCat(s.options.host, ":", s.options.port);
  if (int rc = getaddrinfo(s.options.host.c_str(), port.c_str(), &hints, &addrs); rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for HTTP on ", where, ": ", gai_strerror(rc)));
  }
  s.base = event_base_new();
  if (s.base == nullptr) {
    freeaddrinfo(addrs);
    return absl::UnavailableError("cannot create the HTTP event loop");
  }
  // Backlog -1: SOMAXCONN, so bursts of connections queue rather than drop.
  s.listener =
      evconnlistener_new_bind(s.base, &Impl::OnAccept, &s,
                              LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC, -1,
                              addrs->ai_addr, static_cast<int>(addrs->ai_addrlen));
  const int bind_error = errno;
  freeaddrinfo(addrs);
  if (s.listener == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for HTTP on ", where, ": ", std::strerror(bind_error)));
  }
  evconnlistener_set_error_cb(s.listener, &Impl::OnAcceptError);
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  if (getsockname(evconnlistener_get_fd(s.listener), reinterpret_cast<sockaddr*>(&bound), &len) ==
      0) {
    s.bound_port =
        ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                          : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  }
  s.resume_accepting = evtimer_new(s.base, &Impl::OnResumeAccepting, &s);
  s.mailbox->wake = event_new(s.base, -1, 0, &Impl::OnWake, &s);
  s.thread = std::thread([base = s.base] { event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY); });
  pthread_setname_np(s.thread.native_handle(), "http-loop");  // For top -H, perf, renice.
  return absl::OkStatus();
}

void HttpServer::Stop(absl::Duration grace) {
  Impl& s = *impl_;
  if (s.thread.joinable()) {
    const timeval now{0, 0};
    const timeval grace_tv = absl::ToTimeval(std::max(grace, absl::ZeroDuration()));
    event_base_once(s.base, -1, EV_TIMEOUT, &Impl::OnStop, &s, &now);
    event_base_once(s.base, -1, EV_TIMEOUT, &Impl::OnGraceOver, &s, &grace_tv);
    s.thread.join();
  }
  {
    std::lock_guard<std::mutex> lock(s.mailbox->mu);
    s.mailbox->closed = true;
    s.mailbox->answers.clear();
  }
  for (auto& [id, c] : s.conns) bufferevent_free(c->bev);
  s.conns.clear();
  if (s.mailbox->wake != nullptr) event_free(s.mailbox->wake);
  s.mailbox->wake = nullptr;
  if (s.resume_accepting != nullptr) event_free(s.resume_accepting);
  s.resume_accepting = nullptr;
  if (s.listener != nullptr) evconnlistener_free(s.listener);
  s.listener = nullptr;
  if (s.base != nullptr) event_base_free(s.base);
  s.base = nullptr;
  if (s.ssl_ctx != nullptr) SSL_CTX_free(s.ssl_ctx);
  s.ssl_ctx = nullptr;
}

}  // namespace imagesearch
