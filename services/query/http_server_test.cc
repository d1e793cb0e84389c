#include "services/query/http_server.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace imagesearch {
namespace {

// A server whose handler echoes the request: "METHOD path k=v,... body".
// /slow answers from another thread after 20 ms; /never does not answer;
// CheckHead refuses /refuse with 401, and bodies over 16 bytes with 413.
class EchoServer {
 public:
  explicit EchoServer(absl::Duration read_timeout = absl::Seconds(10),
                      size_t max_bodies_bytes = 256 << 20) {
    HttpServerOptions o;
    o.host = "127.0.0.1";
    o.port = 0;
    o.max_header_bytes = 1024;
    o.max_body_bytes = 16;
    o.max_bodies_bytes = max_bodies_bytes;
    o.read_timeout = read_timeout;
    server_ = std::make_unique<HttpServer>(
        o,
        [](const HttpRequest& req) -> std::optional<HttpResponse> {
          if (req.path == "/refuse") return Text(401, "refused");
          if (req.body_too_large) return Text(413, "too large");
          return std::nullopt;
        },
        [this](HttpRequest req, HttpResponder respond) {
          if (req.path == "/never") {
            std::lock_guard<std::mutex> lock(mu_);
            unanswered_.push_back(req.client_gone);
            return;
          }
          if (req.path == "/big") {  // 100 KB, counted.
            big_handled_.fetch_add(1);
            return respond.Send(Text(200, std::string(100 << 10, 'b')));
          }
          std::vector<std::string> params;
          for (const auto& [k, v] : req.params) params.push_back(absl::StrCat(k, "=", v));
          HttpResponse r = Text(req.body_too_large ? 413 : 200,
                                absl::StrCat(req.method, " ", req.path, " ",
                                             absl::StrJoin(params, ","), " ", req.body));
          if (req.path != "/slow") return respond.Send(std::move(r));
          std::thread([respond, r]() mutable {
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
            respond.Send(std::move(r));
          }).detach();
        },
        [](int status, absl::string_view message) { return Text(status, std::string(message)); });
    REQUIRE(server_->Start().ok());
  }

  static HttpResponse Text(int status, std::string body) {
    HttpResponse r;
    r.status = status;
    r.content_type = "text/plain";
    r.body = std::move(body);
    return r;
  }

  int port() const { return server_->port(); }
  // The client_gone flags of /never requests handed to the handler.
  std::vector<std::shared_ptr<const std::atomic<bool>>> unanswered() {
    std::lock_guard<std::mutex> lock(mu_);
    return unanswered_;
  }
  HttpServer& server() { return *server_; }
  int big_handled() const { return big_handled_.load(); }

 private:
  std::atomic<int> big_handled_{0};
  std::mutex mu_;
  std::vector<std::shared_ptr<const std::atomic<bool>>> unanswered_;
  std::unique_ptr<HttpServer> server_;
};

// `rcvbuf` > 0: the socket's receive buffer, set before connecting (a
// client that reads little of what it is sent).
int Connect(int port, int rcvbuf = 0) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (rcvbuf > 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

// Reads until the server closes (or 5 s pass without a byte).
std::string ReadAll(int fd) {
  std::string out;
  char buf[4096];
  while (true) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

void SendAll(int fd, const std::string& bytes) {
  REQUIRE(send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()));
}

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t i = text.find(what); i != std::string::npos; i = text.find(what, i + 1)) ++n;
  return n;
}

// Polls `done` for up to 10 s.
template <typename F>
bool WaitFor(F done) {
  for (int i = 0; i < 1000 && !done(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return done();
}

// Sends `bytes`, ends the sending side, and returns everything the server
// writes until it closes.
std::string Exchange(int port, const std::string& bytes) {
  const int fd = Connect(port);
  SendAll(fd, bytes);
  shutdown(fd, SHUT_WR);
  std::string out = ReadAll(fd);
  close(fd);
  return out;
}

TEST_CASE("HttpServer answers pipelined keep-alive requests in order, with decoded targets") {
  EchoServer s;
  const std::string out =
      Exchange(s.port(),
               "GET /a%20b?x=1&y=two+words&z=%2F HTTP/1.1\r\nHost: h\r\n\r\n"
               "GET /slow HTTP/1.1\r\n\r\nHEAD /h HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n");
  const size_t a = out.find("GET /a b x=1,y=two words,z=/ ");
  const size_t slow = out.find("GET /slow  ");
  const size_t c = out.find("GET /c  ");
  CHECK(a != std::string::npos);
  CHECK(slow != std::string::npos);
  CHECK(c != std::string::npos);
  CHECK((a < slow && slow < c));
  CHECK(out.find("HEAD /h") == std::string::npos);  // HEAD: headers only.
  CHECK(Count(out, "HTTP/1.1 200 ") == 4);
  CHECK(out.find("Connection: close") == std::string::npos);
}

TEST_CASE("HttpServer reads no more pipelined requests while a client's answers pile up") {
  EchoServer s;
  // A client that sends 400 requests for 100 KB each and reads nothing (a
  // small receive buffer, so that the kernel holds little of it).
  const int fd = Connect(s.port(), /*rcvbuf=*/16 << 10);
  constexpr int kRequests = 400;
  std::string requests;
  for (int i = 0; i < kRequests; ++i) requests += "GET /big HTTP/1.1\r\n\r\n";
  SendAll(fd, requests);
  // The server stops taking requests once about 1 MiB of answers (and the
  // kernel's socket buffers) wait: 40 MB would otherwise be held for it.
  // However slow the machine, the count settles there.
  int last = -1;
  REQUIRE(WaitFor([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const int now = s.big_handled();
    const bool settled = now > 0 && now == last;
    last = now;
    return settled;
  }));
  INFO(last);
  CHECK(last < kRequests / 2);
  // Once the client reads, every answer comes, in order.
  shutdown(fd, SHUT_WR);
  const std::string out = ReadAll(fd);
  close(fd);
  CHECK(Count(out, "HTTP/1.1 200 ") == kRequests);
  CHECK(s.big_handled() == kRequests);
}

TEST_CASE("HttpServer holds request bodies up to a total, and refuses 503 beyond it") {
  // The total is at least 4 bodies of the largest size: 4 x 16 bytes here.
  EchoServer s(absl::Seconds(10), /*max_bodies_bytes=*/1);
  // A head alone holds nothing: many may wait for their bodies.
  std::vector<int> fds;
  for (int i = 0; i < 8; ++i) {
    fds.push_back(Connect(s.port()));
    SendAll(fds.back(), "POST /h HTTP/1.1\r\nContent-Length: 16\r\n\r\n");
  }
  // Four bodies of 15 bytes each, their last byte not sent: 60 bytes held.
  std::vector<int> held;
  for (int i = 0; i < 4; ++i) {
    held.push_back(Connect(s.port()));
    SendAll(held.back(), "POST /a HTTP/1.1\r\nContent-Length: 16\r\n\r\n123456789012345");
  }
  REQUIRE(WaitFor([&] { return s.server().bodies_held() == 60; }));
  // 16 more would pass 64: 503, retry later; the body is read and dropped.
  const std::string b = Exchange(s.port(),
                                 "POST /b HTTP/1.1\r\nContent-Length: 16\r\n\r\n"
                                 "abcdefghabcdefgh");
  CHECK(b.find("HTTP/1.1 503 ") == 0);
  CHECK(b.find("Retry-After: 1") != std::string::npos);
  // One finishes: answered, and its bytes are free again once handled.
  SendAll(held[0], "X");
  shutdown(held[0], SHUT_WR);
  CHECK(ReadAll(held[0]).find("POST /a  123456789012345X") != std::string::npos);
  CHECK(WaitFor([&] { return s.server().bodies_held() == 45; }));
  const std::string c = Exchange(s.port(),
                                 "POST /c HTTP/1.1\r\nContent-Length: 16\r\n\r\n"
                                 "abcdefghabcdefgh");
  CHECK(c.find("POST /c  abcdefghabcdefgh") != std::string::npos);
  for (int fd : fds) close(fd);
  for (int fd : held) close(fd);
  CHECK(WaitFor([&] { return s.server().bodies_held() == 0; }));  // Closed: all given back.
}

TEST_CASE("HttpServer reads Content-Length and chunked bodies") {
  EchoServer s;
  CHECK(absl::StrContains(Exchange(s.port(), "POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
                          "POST /p  hello"));
  CHECK(absl::StrContains(Exchange(s.port(),
                                   "POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n"),
                          "POST /p  hello world"));
  const std::string chunked_over =
      Exchange(s.port(),
               "POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
               "10\r\n0123456789abcdef\r\n1\r\nX\r\n0\r\n\r\nGET /after HTTP/1.1\r\n\r\n");
  CHECK(absl::StartsWith(chunked_over, "HTTP/1.1 413 "));
  CHECK(absl::StrContains(chunked_over, "GET /after"));
}

TEST_CASE("HttpServer refuses before the body: dropped unread, or at once with Expect") {
  EchoServer s;
  // No Expect: the 100-byte body is read and dropped; the connection goes on.
  const std::string dropped =
      Exchange(s.port(), absl::StrCat("POST /p HTTP/1.1\r\nContent-Length: 100\r\n\r\n",
                                      std::string(100, 'x'), "GET /next HTTP/1.1\r\n\r\n"));
  CHECK(absl::StartsWith(dropped, "HTTP/1.1 413 "));
  CHECK(absl::StrContains(dropped, "GET /next"));
  CHECK(!absl::StrContains(dropped, "xxxx"));  // The body was not taken as a request.

  // Expect: the refusal comes before any body byte is sent, then the close.
  const int fd = Connect(s.port());
  const std::string head =
      "POST /refuse HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
  REQUIRE(send(fd, head.data(), head.size(), MSG_NOSIGNAL) > 0);
  const std::string refused = ReadAll(fd);
  close(fd);
  CHECK(absl::StartsWith(refused, "HTTP/1.1 401 "));
  CHECK(absl::StrContains(refused, "Connection: close"));

  // Expect on an accepted body: 100 Continue first.
  const std::string go =
      Exchange(s.port(), "POST /p HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nok");
  CHECK(absl::StartsWith(go, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 "));
}

TEST_CASE("HttpServer answers malformed requests with an error and closes") {
  EchoServer s;
  const std::pair<std::string, std::string> cases[] = {
      {"GARBAGE\r\n\r\nGET /x HTTP/1.1\r\n\r\n", "HTTP/1.1 400 "},
      {"GET /x HTTP/2.0\r\n\r\n", "HTTP/1.1 505 "},
      {"GET x HTTP/1.1\r\n\r\n", "HTTP/1.1 400 "},
      {"GET /%zz HTTP/1.1\r\n\r\n", "HTTP/1.1 400 "},
      {"GET /x HTTP/1.1\r\nno colon\r\n\r\n", "HTTP/1.1 400 "},
      {"POST /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
       "HTTP/1.1 400 "},
      {"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "HTTP/1.1 400 "},
      {"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "HTTP/1.1 400 "},
      {"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "HTTP/1.1 501 "},
      {"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "HTTP/1.1 400 "},
      {absl::StrCat("GET /x HTTP/1.1\r\nX: ", std::string(2000, 'a'), "\r\n\r\n"), "HTTP/1.1 431 "},
  };
  for (const auto& [request, status] : cases) {
    const std::string out = Exchange(s.port(), request);
    INFO(request.substr(0, 80) << " -> " << out.substr(0, 200));
    CHECK(absl::StartsWith(out, status));
    CHECK(absl::StrContains(out, "Connection: close"));
    CHECK(!absl::StrContains(out, "200 OK"));  // Nothing after it is answered.
  }
}

TEST_CASE("HttpServer quotes at most 64 bytes of a malformed request line or header") {
  EchoServer s;
  const std::string target(900, 'x');  // No leading '/' (the test server takes heads of 1 KiB).
  const std::string line(900, 'y');    // No colon.
  for (const std::string& request : {absl::StrCat("GET ", target, " HTTP/1.1\r\n\r\n"),
                                     absl::StrCat("GET /x HTTP/1.1\r\n", line, "\r\n\r\n")}) {
    const std::string out = Exchange(s.port(), request);
    INFO(out.substr(0, 300));
    CHECK(absl::StartsWith(out, "HTTP/1.1 400 "));
    CHECK(absl::StrContains(out, "(900 bytes)"));
    CHECK(out.size() < 600);
  }
}

TEST_CASE("HttpServer follows HTTP/1.0 and Connection: close") {
  EchoServer s;
  CHECK(absl::StrContains(Exchange(s.port(), "GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n"),
                          "Connection: close"));
  const std::string kept =
      Exchange(s.port(),
               "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.1\r\n"
               "Connection: close\r\n\r\nGET /c HTTP/1.1\r\n\r\n");
  CHECK(absl::StrContains(kept, "Connection: keep-alive"));
  CHECK(absl::StrContains(kept, "GET /b"));
  CHECK(!absl::StrContains(kept, "GET /c"));
}

TEST_CASE("HttpServer closes idle and half-sent connections after the read timeout") {
  EchoServer s(absl::Milliseconds(300));
  for (const std::string& sent : {std::string(), std::string("GET /x HTTP/1.1\r\nHost: h\r\n")}) {
    const int fd = Connect(s.port());
    if (!sent.empty()) REQUIRE(send(fd, sent.data(), sent.size(), MSG_NOSIGNAL) > 0);
    const auto start = std::chrono::steady_clock::now();
    char c;
    CHECK(recv(fd, &c, 1, 0) == 0);  // Closed by the server, with nothing sent.
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    CHECK(waited > 0.25);
    CHECK(waited < 4.0);
    close(fd);
  }
}

TEST_CASE("HttpServer answers 408 to a request head that trickles past the read timeout") {
  EchoServer s(absl::Milliseconds(300));
  const int fd = Connect(s.port());
  const std::string head = "GET /slowloris HTTP/1.1\r\nX-Trickle: ";
  REQUIRE(send(fd, head.data(), head.size(), MSG_NOSIGNAL) > 0);
  // One byte every 100 ms: never 300 ms without a byte, never a whole head.
  std::string answer;
  for (int i = 0; i < 40 && answer.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (send(fd, "a", 1, MSG_NOSIGNAL) != 1) break;
    char buf[512];
    const ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) answer.assign(buf, static_cast<size_t>(n));
  }
  close(fd);
  CHECK(absl::StartsWith(answer, "HTTP/1.1 408 "));
}

// Sends GET /never on a new connection and waits until the handler has it;
// returns the connection and the request's client_gone flag.
std::pair<int, std::shared_ptr<const std::atomic<bool>>> SendUnanswered(EchoServer& s) {
  const int fd = Connect(s.port());
  const std::string req = "GET /never HTTP/1.1\r\n\r\n";
  REQUIRE(send(fd, req.data(), req.size(), MSG_NOSIGNAL) > 0);
  for (int i = 0; i < 5000 && s.unanswered().empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  REQUIRE(s.unanswered().size() == 1);
  return {fd, s.unanswered()[0]};
}

TEST_CASE("HttpServer tells the handler when the client closes while its request is handled") {
  EchoServer s;
  const auto [fd, gone] = SendUnanswered(s);
  CHECK(!gone->load());
  close(fd);
  for (int i = 0; i < 5000 && !gone->load(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  CHECK(gone->load());
}

TEST_CASE("HttpServer::Stop gives up on a request that is never answered") {
  EchoServer s;
  const auto [fd, gone] = SendUnanswered(s);
  CHECK(!gone->load());
  const auto start = std::chrono::steady_clock::now();
  s.server().Stop(absl::Milliseconds(200));
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(3));
  CHECK(ReadAll(fd).empty());
  close(fd);
}

}  // namespace
}  // namespace imagesearch
