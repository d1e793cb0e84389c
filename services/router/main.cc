// imagesearch-router: one ImageSearch endpoint over a sharded collection.
//
//   imagesearch-router --shards='127.0.0.1:50061,127.0.0.1:50062;127.0.0.1:50071,127.0.0.1:50072'
//   imagesearch-router --shards='dns:///photos-shard-0:50051;dns:///photos-shard-1:50051'
//
// --shards lists the shards in order, separated by ';': each a gRPC target
// for that shard's replicas (a comma-separated list of host:port, or any
// gRPC target; round_robin over what it resolves to). The router opens its
// port once every shard has answered GetInfo as shard i of S of one
// collection; its health is SERVING from then on (a shard's outage is
// reported per query, see router.h). SIGTERM/SIGINT: stop taking calls,
// finish those in flight (5 s at most), exit 0.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "libs/common/binary_main.h"
#include "libs/common/file_util.h"
#include "libs/common/log.h"
#include "services/router/router.h"

ABSL_FLAG(std::string, shards, "",
          "The shards in order, ';'-separated; each a gRPC target of its replicas "
          "(host:port,host:port or e.g. dns:///svc:50051).");
ABSL_FLAG(std::string, host, "0.0.0.0", "Address to listen on.");
ABSL_FLAG(int, port, 50051, "gRPC port (0 = a free one, printed and in --port_file).");
ABSL_FLAG(std::string, port_file, "", "Write {\"grpc\": PORT} here once listening.");
ABSL_FLAG(int, hedge_after_ms, 0,
          "Send a request that has had no answer for this long to another replica of its "
          "shard too (first answer wins); 0: the shard's observed p95; -1: never.");
ABSL_FLAG(int, retries, 2,
          "Retries of a shard call that fails with UNAVAILABLE (each on the next replica).");
ABSL_FLAG(int, default_timeout_ms, 10000, "Deadline of calls that set none.");
ABSL_FLAG(int, startup_timeout_s, 120,
          "Give up (exit 1) when the shards have not all answered by then.");
ABSL_FLAG(std::string, log_format, "text", "Log lines on stderr: text, or json.");

namespace imagesearch::router {
namespace {

absl::Time Deadline(const grpc::CallbackServerContext* context) {
  const auto d = context->deadline();
  if (d == std::chrono::system_clock::time_point::max()) {
    return absl::Now() + absl::Milliseconds(absl::GetFlag(FLAGS_default_timeout_ms));
  }
  return absl::FromChrono(d);
}

class RouterService final : public v1::ImageSearch::CallbackService {
 public:
  explicit RouterService(Router* router) : router_(router) {}

  grpc::ServerUnaryReactor* Search(grpc::CallbackServerContext* context,
                                   const v1::SearchRequest* request,
                                   v1::SearchResponse* response) override {
    auto* reactor = context->DefaultReactor();
    router_->Search(*request, Deadline(context), Finisher(reactor, response));
    return reactor;
  }
  grpc::ServerUnaryReactor* SearchBatch(grpc::CallbackServerContext* context,
                                        const v1::SearchBatchRequest* request,
                                        v1::SearchBatchResponse* response) override {
    auto* reactor = context->DefaultReactor();
    router_->SearchBatch(*request, Deadline(context), Finisher(reactor, response));
    return reactor;
  }
  grpc::ServerUnaryReactor* Embed(grpc::CallbackServerContext* context,
                                  const v1::EmbedRequest* request,
                                  v1::EmbedResponse* response) override {
    auto* reactor = context->DefaultReactor();
    router_->Embed(*request, Deadline(context), Finisher(reactor, response));
    return reactor;
  }
  grpc::ServerUnaryReactor* GetInfo(grpc::CallbackServerContext* context, const v1::GetInfoRequest*,
                                    v1::GetInfoResponse* response) override {
    auto* reactor = context->DefaultReactor();
    router_->GetInfo(Deadline(context), Finisher(reactor, response));
    return reactor;
  }

 private:
  template <typename Response>
  static Router::Done<Response> Finisher(grpc::ServerUnaryReactor* reactor, Response* response) {
    return [reactor, response](absl::StatusOr<Response> r) {
      if (!r.ok()) return reactor->Finish(ToGrpc(r.status()));
      *response = std::move(*r);
      reactor->Finish(grpc::Status::OK);
    };
  }
  Router* router_;
};

int Run() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  RouterOptions options;
  for (absl::string_view t :
       absl::StrSplit(absl::GetFlag(FLAGS_shards), ';', absl::SkipWhitespace())) {
    options.shard_targets.emplace_back(absl::StripAsciiWhitespace(t));
  }
  if (options.shard_targets.empty()) {
    std::cerr << "--shards is required: the shards' targets in order, ';'-separated\n";
    return 2;
  }
  const int hedge = absl::GetFlag(FLAGS_hedge_after_ms);
  options.shard.hedge_delay = hedge < 0 ? -absl::InfiniteDuration() : absl::Milliseconds(hedge);
  options.shard.retries = std::max(0, absl::GetFlag(FLAGS_retries));
  Router router(options);
  const absl::Time give_up = absl::Now() + absl::Seconds(absl::GetFlag(FLAGS_startup_timeout_s));
  absl::Status found;
  std::string last;
  while (true) {
    found = router.Discover(std::min(give_up, absl::Now() + absl::Seconds(5)));
    if (found.ok()) break;
    if (std::string(found.message()) != last) {
      LogWarning("imagesearch-router: waiting for the shards: ", found.ToString());
      last = std::string(found.message());
    }
    if (found.code() == absl::StatusCode::kFailedPrecondition || absl::Now() >= give_up) {
      LogError("imagesearch-router: ", found.ToString());
      return 1;
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
  RouterService service(&router);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::StrCat(absl::GetFlag(FLAGS_host), ":", absl::GetFlag(FLAGS_port)),
                           grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(64 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    LogError("imagesearch-router: cannot listen on ", absl::GetFlag(FLAGS_host), ":",
             absl::GetFlag(FLAGS_port));
    return 1;
  }
  server->GetHealthCheckService()->SetServingStatus(true);
  if (!absl::GetFlag(FLAGS_port_file).empty()) {
    absl::Status s = ReplaceFileAtomically(absl::GetFlag(FLAGS_port_file),
                                           absl::StrCat("{\"grpc\": ", port, "}\n"));
    if (!s.ok()) {
      LogError("--port_file: ", s.ToString());
      return 1;
    }
  }
  std::cout << "listening on port " << port << std::endl;
  LogInfo("imagesearch-router: collection '", router.collection(), "', ", router.shard_count(),
          " shards, gRPC on ", absl::GetFlag(FLAGS_host), ":", port);
  int sig = 0;
  sigwait(&signals, &sig);
  LogInfo("imagesearch-router: signal ", sig, ": stopping");
  server->GetHealthCheckService()->SetServingStatus(false);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  return 0;
}

}  // namespace
}  // namespace imagesearch::router

int main(int argc, char** argv) {
  imagesearch::InitBinary(
      "imagesearch-router --shards='t0;t1;...' [--port=50051]: one ImageSearch endpoint over "
      "the shards of a collection",
      argc, argv, FLAGS_log_format);
  return imagesearch::router::Run();
}
