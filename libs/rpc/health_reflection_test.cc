// rpc::HealthService and rpc::ReflectionService on a real gRPC server on
// loopback with two completion threads, as imagesearch-query runs them by
// default: Check, Watch streams told of every change while the status flips
// from other threads, watchers that leave, the end of every stream at
// Shutdown, and reflection streams of both versions in parallel. Also built
// under ASan and TSan (ci/build_sanitized.sh, ci/build_tsan.sh).
#include "libs/rpc/health_reflection.h"

#include <google/protobuf/descriptor.pb.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1/reflection.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "imagesearch/v1/imagesearch.pb.h"
#include "libs/rpc/completion_threads.h"

namespace imagesearch::rpc {
namespace {

namespace health = grpc::health::v1;
using Status = health::HealthCheckResponse::ServingStatus;
constexpr char kService[] = "imagesearch.v1.ImageSearch";

// Health and reflection, registered and started as imagesearch-query does,
// on one completion queue polled by two threads.
class TestServer {
 public:
  TestServer() {
    // Reflection answers from protobuf's generated pool: link the service's
    // file in, as the query binary does by serving it.
    REQUIRE(v1::SearchRequest::descriptor() != nullptr);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues;
    queues.push_back(builder.AddCompletionQueue());
    threads_ = std::make_unique<CompletionThreads>(std::move(queues), 2);
    health_ = std::make_unique<HealthService>(threads_.get(), std::vector<std::string>{kService});
    reflection_ = std::make_unique<ReflectionService>(
        threads_.get(), std::vector<std::string>{kService, "grpc.health.v1.Health"});
    builder.RegisterService(health_->service());
    for (grpc::Service* s : reflection_->services()) builder.RegisterService(s);
    server_ = builder.BuildAndStart();
    REQUIRE(server_ != nullptr);
    health_->Start();
    reflection_->Start();
    channel_ =
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port_), grpc::InsecureChannelCredentials());
  }
  ~TestServer() { Stop(); }

  // imagesearch-query's order: health says NOT_SERVING and ends its
  // streams, then the server stops, then its queues.
  void Stop() {
    if (server_ == nullptr) return;
    health_->Shutdown();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(10));
    threads_->Shutdown();
    server_.reset();
  }

  HealthService& health() { return *health_; }
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }

 private:
  int port_ = 0;
  std::unique_ptr<CompletionThreads> threads_;
  std::unique_ptr<HealthService> health_;
  std::unique_ptr<ReflectionService> reflection_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

// Check's answer for `service`: its status, or the error's code as a
// negative number.
int CheckOf(const std::shared_ptr<grpc::Channel>& channel, const std::string& service) {
  auto stub = health::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  health::HealthCheckRequest q;
  q.set_service(service);
  health::HealthCheckResponse r;
  const grpc::Status s = stub->Check(&context, q, &r);
  return s.ok() ? static_cast<int>(r.status()) : -static_cast<int>(s.error_code());
}

// A Watch stream read on a thread of its own; what it read, in order.
class Watcher {
 public:
  Watcher(const std::shared_ptr<grpc::Channel>& channel, const std::string& service)
      : stub_(health::Health::NewStub(channel)) {
    request_.set_service(service);
    context_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    reader_ = stub_->Watch(&context_, request_);
    thread_ = std::thread([this] {
      health::HealthCheckResponse r;
      while (reader_->Read(&r)) {
        std::lock_guard<std::mutex> lock(mu_);
        seen_.push_back(r.status());
        cv_.notify_all();
      }
      const grpc::Status end = reader_->Finish();
      std::lock_guard<std::mutex> lock(mu_);
      end_ = end;
      ended_ = true;
      cv_.notify_all();
    });
  }
  ~Watcher() {
    context_.TryCancel();
    thread_.join();
  }

  // Waits up to 20 s until the last status read is `want`.
  bool Sees(Status want) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(20),
                        [&] { return !seen_.empty() && seen_.back() == want; });
  }
  // Waits up to 20 s for the stream's end; its status.
  grpc::Status End() {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, std::chrono::seconds(20), [&] { return ended_; })) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "the stream did not end");
    }
    return end_;
  }
  std::vector<Status> Seen() {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }
  void Cancel() { context_.TryCancel(); }

 private:
  std::unique_ptr<health::Health::Stub> stub_;
  health::HealthCheckRequest request_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReader<health::HealthCheckResponse>> reader_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Status> seen_;  // Guarded by mu_.
  grpc::Status end_;          // Guarded by mu_.
  bool ended_ = false;        // Guarded by mu_.
};

// No two equal statuses in a row: Watch sends only changes.
bool OnlyChanges(const std::vector<Status>& seen) {
  for (size_t i = 1; i < seen.size(); ++i) {
    if (seen[i] == seen[i - 1]) return false;
  }
  return true;
}

TEST_CASE("Check answers the server's and the service's status, and NOT_FOUND for others") {
  TestServer server;
  CHECK(CheckOf(server.channel(), "") == health::HealthCheckResponse::NOT_SERVING);
  CHECK(CheckOf(server.channel(), kService) == health::HealthCheckResponse::NOT_SERVING);
  server.health().SetServing(true);
  CHECK(CheckOf(server.channel(), "") == health::HealthCheckResponse::SERVING);
  CHECK(CheckOf(server.channel(), kService) == health::HealthCheckResponse::SERVING);
  CHECK(CheckOf(server.channel(), "no.such.Service") == -grpc::StatusCode::NOT_FOUND);
  server.health().Shutdown();
  CHECK(CheckOf(server.channel(), "") == health::HealthCheckResponse::NOT_SERVING);
  server.health().SetServing(true);  // Ignored after Shutdown.
  CHECK(CheckOf(server.channel(), kService) == health::HealthCheckResponse::NOT_SERVING);
}

TEST_CASE("Watchers are told every change in order, and their streams end at Shutdown") {
  TestServer server;
  std::vector<std::unique_ptr<Watcher>> watchers;
  for (int i = 0; i < 6; ++i) {
    watchers.push_back(std::make_unique<Watcher>(server.channel(), i % 2 == 0 ? "" : kService));
  }
  Watcher unknown(server.channel(), "no.such.Service");
  for (auto& w : watchers) REQUIRE(w->Sees(health::HealthCheckResponse::NOT_SERVING));
  REQUIRE(unknown.Sees(health::HealthCheckResponse::SERVICE_UNKNOWN));

  // One change at a time, each seen by every watcher before the next.
  for (int round = 0; round < 3; ++round) {
    server.health().SetServing(true);
    for (auto& w : watchers) REQUIRE(w->Sees(health::HealthCheckResponse::SERVING));
    server.health().SetServing(false);
    for (auto& w : watchers) REQUIRE(w->Sees(health::HealthCheckResponse::NOT_SERVING));
  }
  for (auto& w : watchers) {
    const std::vector<Status> seen = w->Seen();
    CHECK(seen.size() == 7);  // NOT_SERVING, then 3 x (SERVING, NOT_SERVING).
    CHECK(OnlyChanges(seen));
  }

  // Changes from two threads at once, faster than the streams can send:
  // each watcher may skip a state, but only ever reads a change, and ends
  // on the last one.
  std::vector<std::thread> flippers;
  for (int t = 0; t < 2; ++t) {
    flippers.emplace_back([&server, t] {
      for (int i = 0; i < 200; ++i) server.health().SetServing((i + t) % 2 == 0);
    });
  }
  for (auto& f : flippers) f.join();
  server.health().SetServing(true);
  for (auto& w : watchers) {
    REQUIRE(w->Sees(health::HealthCheckResponse::SERVING));
    CHECK(OnlyChanges(w->Seen()));
  }

  // Shutdown says NOT_SERVING, then ends every stream with OK.
  server.health().Shutdown();
  for (auto& w : watchers) {
    CHECK(w->Sees(health::HealthCheckResponse::NOT_SERVING));
    const grpc::Status end = w->End();
    CHECK(end.ok());
    INFO(end.error_message());
  }
  CHECK(unknown.End().ok());
  CHECK(unknown.Seen() == std::vector<Status>{health::HealthCheckResponse::SERVICE_UNKNOWN});
}

TEST_CASE("A watcher that leaves is dropped, and the others are still told") {
  TestServer server;
  auto leaving = std::make_unique<Watcher>(server.channel(), "");
  Watcher staying(server.channel(), "");
  REQUIRE(leaving->Sees(health::HealthCheckResponse::NOT_SERVING));
  REQUIRE(staying.Sees(health::HealthCheckResponse::NOT_SERVING));
  leaving->Cancel();
  CHECK(leaving->End().error_code() == grpc::StatusCode::CANCELLED);
  leaving.reset();
  for (int i = 0; i < 20; ++i) server.health().SetServing(i % 2 == 0);
  REQUIRE(staying.Sees(health::HealthCheckResponse::NOT_SERVING));
  server.health().SetServing(true);
  CHECK(staying.Sees(health::HealthCheckResponse::SERVING));
  // A server stopped with a watcher still connected (no Shutdown of health
  // first) ends its stream too, and frees the call (ASan would see a leak).
}

struct V1 {
  using Reflection = grpc::reflection::v1::ServerReflection;
  using Request = grpc::reflection::v1::ServerReflectionRequest;
  using Response = grpc::reflection::v1::ServerReflectionResponse;
};
struct V1Alpha {
  using Reflection = grpc::reflection::v1alpha::ServerReflection;
  using Request = grpc::reflection::v1alpha::ServerReflectionRequest;
  using Response = grpc::reflection::v1alpha::ServerReflectionResponse;
};

// One reflection stream of version `V` (V1 or V1Alpha): list_services, the
// service's file, and a file that does not exist. What went wrong, or ""
// (run on client threads, where Catch2 may not assert).
template <typename V>
std::string ReflectOnce(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = V::Reflection::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  auto stream = stub->ServerReflectionInfo(&context);
  typename V::Response r;
  auto ask = [&](const typename V::Request& q) { return stream->Write(q) && stream->Read(&r); };

  typename V::Request list;
  list.set_list_services("");
  if (!ask(list)) return "list_services: no answer";
  std::vector<std::string> names;
  for (const auto& s : r.list_services_response().service()) names.push_back(s.name());
  for (const char* want : {kService, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                           "grpc.reflection.v1alpha.ServerReflection"}) {
    if (std::count(names.begin(), names.end(), want) != 1) {
      return absl::StrCat("list_services: ", want, " not listed once");
    }
  }

  typename V::Request symbol;
  symbol.set_file_containing_symbol(kService);
  if (!ask(symbol)) return "file_containing_symbol: no answer";
  // The service's file first, then what it imports.
  if (r.file_descriptor_response().file_descriptor_proto_size() < 1) {
    return "file_containing_symbol: no file";
  }
  google::protobuf::FileDescriptorProto file;
  if (!file.ParseFromString(r.file_descriptor_response().file_descriptor_proto(0))) {
    return "file_containing_symbol: not a FileDescriptorProto";
  }
  if (file.package() != "imagesearch.v1" ||
      std::none_of(file.service().begin(), file.service().end(),
                   [](const auto& s) { return s.name() == "ImageSearch"; })) {
    return absl::StrCat("file_containing_symbol: ", file.name(), " has no ImageSearch");
  }

  typename V::Request missing;
  missing.set_file_by_filename("no/such/file.proto");
  if (!ask(missing)) return "file_by_filename: no answer";
  if (!r.has_error_response() ||
      r.error_response().error_code() != static_cast<int>(grpc::StatusCode::NOT_FOUND)) {
    return "file_by_filename: not NOT_FOUND for a missing file";
  }

  if (!stream->WritesDone()) return "WritesDone failed";
  if (stream->Read(&r)) return "an answer after WritesDone";
  const grpc::Status end = stream->Finish();
  return end.ok() ? "" : absl::StrCat("stream ended with ", end.error_message());
}

TEST_CASE("Reflection answers both versions, several streams at once") {
  TestServer server;
  std::vector<std::string> errors(4);
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&server, &errors, t] {
      for (int i = 0; i < 5 && errors[t].empty(); ++i) {
        errors[t] = (t + i) % 2 == 0 ? ReflectOnce<V1>(server.channel())
                                     : ReflectOnce<V1Alpha>(server.channel());
      }
    });
  }
  for (auto& c : clients) c.join();
  for (const std::string& e : errors) CHECK(e == "");
}

}  // namespace
}  // namespace imagesearch::rpc
