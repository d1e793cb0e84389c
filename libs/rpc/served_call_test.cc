// rpc::ServedCall on a real gRPC server on loopback: a call is answered on
// the completion threads, and a method that watches for cancellation sees
// its client leave (cancel, or a deadline that passes) while the answer is
// still being worked on elsewhere.
#include "libs/rpc/served_call.h"

#include <grpcpp/grpcpp.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "libs/rpc/completion_threads.h"

namespace imagesearch::rpc {
namespace {

namespace health = grpc::health::v1;
using Request = health::HealthCheckRequest;
using Response = health::HealthCheckResponse;
using Reply = std::function<void(absl::StatusOr<Response>)>;

// A server with one method (Health/Check) served by ServedCall on two
// completion threads and answered by `answer`.
class TestServer {
 public:
  TestServer(bool watch_cancellation,
             std::function<void(const CallInfo&, const Request&, Reply)> answer) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues;
    queues.push_back(builder.AddCompletionQueue());
    threads_ = std::make_unique<CompletionThreads>(std::move(queues), 2);
    builder.RegisterService(&service_);
    check_.watch_cancellation = watch_cancellation;
    check_.request = [this](grpc::ServerContext* c, Request* q,
                            grpc::ServerAsyncResponseWriter<Response>* w,
                            grpc::ServerCompletionQueue* queue,
                            void* tag) { service_.RequestCheck(c, q, w, queue, queue, tag); };
    check_.answer = std::move(answer);
    server_ = builder.BuildAndStart();
    REQUIRE(server_ != nullptr);
    ServedCall<Request, Response>::AwaitOnEveryQueue(&check_, threads_.get(), 4);
  }
  ~TestServer() { Stop(); }

  // gRPC's order: the server (calls in flight cancelled), then the queues.
  // An answer that comes later is dropped; the threads' object must outlive
  // it (here: the server's, destroyed after the answers' threads joined).
  void Stop() {
    server_->Shutdown(std::chrono::system_clock::now());
    threads_->Shutdown();
  }

  std::unique_ptr<health::Health::Stub> Stub() const {
    return health::Health::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port_), grpc::InsecureChannelCredentials()));
  }

 private:
  int port_ = 0;
  health::Health::AsyncService service_;
  Method<Request, Response> check_;
  std::unique_ptr<CompletionThreads> threads_;
  std::unique_ptr<grpc::Server> server_;
};

Response Serving() {
  Response r;
  r.set_status(Response::SERVING);
  return r;
}

// Polls `cancelled` for up to 20 s; true once it says so.
bool TurnsTrue(const std::function<bool()>& cancelled) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < until) {
    if (cancelled()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

// An answer that runs on a thread of its own, as an image query's does on
// the model's: it reports whether the call looked cancelled when it began,
// waits for `release` (or for the client to leave), and answers.
struct HeldAnswer {
  std::promise<bool> began;  // Cancelled() when the answer began.
  std::promise<bool> left;   // Whether Cancelled() turned true while held.
  std::promise<void> go;
  std::shared_future<void> release = go.get_future().share();
  bool released = false;
  std::vector<std::thread> workers;

  // Lets the held answers go and waits for their threads.
  void Release() {
    if (!released) go.set_value();
    released = true;
    for (auto& t : workers) t.join();
    workers.clear();
  }

  std::function<void(const CallInfo&, const Request&, Reply)> Answer(bool wait_for_cancel) {
    return [this, wait_for_cancel](const CallInfo& info, const Request&, Reply reply) {
      std::function<bool()> cancelled = info.Cancelled();
      const bool at_first = cancelled();
      workers.emplace_back([this, wait_for_cancel, cancelled, reply = std::move(reply)] {
        if (wait_for_cancel) left.set_value(TurnsTrue(cancelled));
        release.wait();
        reply(Serving());
      });
      began.set_value(at_first);  // After emplace_back: the test joins `workers` after this.
    };
  }
  ~HeldAnswer() { Release(); }
};

// Check on `stub` from a thread of its own; `context` outlives the call.
std::future<grpc::Status> CheckAsync(health::Health::Stub* stub, grpc::ClientContext* context) {
  return std::async(std::launch::async, [stub, context] {
    Request q;
    Response r;
    return stub->Check(context, q, &r);
  });
}

TEST_CASE("A served call is answered, and reads as not cancelled") {
  TestServer server(true, [](const CallInfo& info, const Request& q, Reply reply) {
    if (q.service() == "fail") return reply(absl::NotFoundError("no such service: fail"));
    CHECK_FALSE(info.Cancelled()());
    reply(Serving());
  });
  auto stub = server.Stub();
  for (int i = 0; i < 20; ++i) {  // More calls than are awaited at a time.
    grpc::ClientContext context;
    Request q;
    Response r;
    REQUIRE(stub->Check(&context, q, &r).ok());
    CHECK(r.status() == Response::SERVING);
  }
  grpc::ClientContext context;
  Request q;
  q.set_service("fail");
  Response r;
  const grpc::Status s = stub->Check(&context, q, &r);
  CHECK(s.error_code() == grpc::StatusCode::NOT_FOUND);
  CHECK(s.error_message() == "no such service: fail");
}

TEST_CASE("A method that watches for cancellation sees its client cancel") {
  HeldAnswer held;
  {
    TestServer server(true, held.Answer(/*wait_for_cancel=*/true));
    auto stub = server.Stub();
    grpc::ClientContext context;
    std::future<grpc::Status> call = CheckAsync(stub.get(), &context);
    CHECK_FALSE(held.began.get_future().get());  // Not cancelled when it arrived.
    context.TryCancel();
    CHECK(call.get().error_code() == grpc::StatusCode::CANCELLED);
    CHECK(held.left.get_future().get());  // The server saw the client leave.
    held.Release();                       // The late answer goes nowhere, and frees the call.
  }
}

TEST_CASE("A method that watches for cancellation sees the client's deadline pass") {
  HeldAnswer held;
  TestServer server(true, held.Answer(/*wait_for_cancel=*/true));
  auto stub = server.Stub();
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  Request q;
  Response r;
  CHECK(stub->Check(&context, q, &r).error_code() == grpc::StatusCode::DEADLINE_EXCEEDED);
  CHECK_FALSE(held.began.get_future().get());
  CHECK(held.left.get_future().get());
  held.Release();
}

TEST_CASE("Without watching, Cancelled() stays false and the call still ends cleanly") {
  HeldAnswer held;
  TestServer server(false, held.Answer(/*wait_for_cancel=*/false));
  auto stub = server.Stub();
  grpc::ClientContext context;
  std::future<grpc::Status> call = CheckAsync(stub.get(), &context);
  CHECK_FALSE(held.began.get_future().get());
  context.TryCancel();
  CHECK(call.get().error_code() == grpc::StatusCode::CANCELLED);
  held.Release();
}

TEST_CASE("A server that stops with calls awaited and one held frees them all") {
  // Under ASan (ci/build_sanitized.sh) a call left behind is a leak report.
  HeldAnswer held;
  TestServer server(true, held.Answer(/*wait_for_cancel=*/false));
  auto stub = server.Stub();
  grpc::ClientContext context;
  std::future<grpc::Status> call = CheckAsync(stub.get(), &context);
  CHECK_FALSE(held.began.get_future().get());
  server.Stop();  // Cancels the held call; the awaited ones are freed.
  CHECK(call.get().error_code() != grpc::StatusCode::OK);
  held.Release();  // Its answer comes after the stop: dropped, and the call freed.
}

}  // namespace
}  // namespace imagesearch::rpc
