// imagesearch-query: the stateless gRPC query service.
//
//   imagesearch-query --snapshot_root=/snapshots --port=50051
//
// Serves imagesearch.v1.ImageSearch, grpc.health.v1 (NOT_SERVING until a
// snapshot and its model are loaded and warmed) and server reflection. It
// watches <root>/CURRENT and swaps in new versions after loading them.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>

#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.pb.h"
#include "libs/common/log.h"
#include "libs/serving/snapshot_manager.h"
#include "libs/serving/work_pool.h"
#include "services/query/image_search_service.h"
#include "libs/serving/model_plugin.h"

ABSL_FLAG(std::string, snapshot_root, "", "Snapshot root directory (holds CURRENT and v<N>/).");
ABSL_FLAG(std::string, host, "0.0.0.0", "Address to listen on.");
ABSL_FLAG(int, port, 50051, "gRPC port; 0 picks a free port (printed on stdout).");
ABSL_FLAG(int, threads, 0, "Threads searching for image/text queries; 0 = number of cores.");
ABSL_FLAG(int, max_queue, 1024,
          "Searches in flight (vector/id) or queued (after embedding) beyond which requests get "
          "RESOURCE_EXHAUSTED.");
ABSL_FLAG(int, max_message_mb, 16, "Maximum gRPC message size in MiB (image queries).");
ABSL_FLAG(int, poll_ms, 500, "How often to check CURRENT for a new version, in milliseconds.");
ABSL_FLAG(std::string, verify, "checksums",
          "Snapshot verification at load: 'checksums' (every byte, XXH3) or 'sizes' (O(1)).");
ABSL_FLAG(int, max_batch, 16, "Dynamic batcher: largest batch of image/text queries.");
ABSL_FLAG(int, max_delay_us, 2000, "Dynamic batcher: longest wait to fill a batch.");
ABSL_FLAG(int, encoder_threads, 0, "LibTorch intra-op threads for the encoder; 0 = default.");
ABSL_FLAG(std::string, model_plugin, "",
          "The model runtime module (LibTorch), loaded when a snapshot carries a model. "
          "Default: libimagesearch_torch_plugin.so next to this binary.");

namespace imagesearch {
namespace {

constexpr char kServiceName[] = "imagesearch.v1.ImageSearch";

int Run() {
  const std::string root = absl::GetFlag(FLAGS_snapshot_root);
  if (root.empty()) {
    std::cerr << "--snapshot_root is required\n";
    return 2;
  }
  const std::string verify = absl::GetFlag(FLAGS_verify);
  if (verify != "checksums" && verify != "sizes") {
    std::cerr << "--verify must be 'checksums' or 'sizes', got '" << verify << "'\n";
    return 2;
  }

  // Signals are handled by one thread with sigwait; block them everywhere
  // before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // Pull the health proto's descriptors into this binary so that reflection
  // can describe the built-in health service.
  (void)grpc::health::v1::HealthCheckRequest::descriptor();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  int threads = absl::GetFlag(FLAGS_threads);
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  serving::WorkPool pool(threads, static_cast<size_t>(absl::GetFlag(FLAGS_max_queue)));

  grpc::Server* server_ptr = nullptr;
  std::mutex server_mu;
  serving::SnapshotManagerOptions mopts;
  mopts.root = root;
  mopts.verify = verify == "sizes" ? snapshot::VerifyMode::kSizes : snapshot::VerifyMode::kChecksums;
  mopts.poll_interval = absl::Milliseconds(absl::GetFlag(FLAGS_poll_ms));
  serving::TorchEmbedderOptions eopts;
  eopts.max_batch = absl::GetFlag(FLAGS_max_batch);
  eopts.max_delay = absl::Microseconds(absl::GetFlag(FLAGS_max_delay_us));
  eopts.intra_op_threads = absl::GetFlag(FLAGS_encoder_threads);
  std::string plugin = absl::GetFlag(FLAGS_model_plugin);
  if (plugin.empty()) plugin = serving::DefaultTorchPluginPath();
  mopts.embedder_factory = serving::LazyPluginEmbedderFactory(plugin, eopts);
  mopts.on_swap = [&](const serving::ServingState&) {
    std::lock_guard<std::mutex> lock(server_mu);
    if (server_ptr != nullptr) {
      server_ptr->GetHealthCheckService()->SetServingStatus(true);
    }
  };
  serving::SnapshotManager manager(mopts);
  ImageSearchService service(&manager, &pool, absl::GetFlag(FLAGS_max_queue));

  grpc::ServerBuilder builder;
  int bound_port = 0;
  builder.AddListeningPort(absl::StrCat(absl::GetFlag(FLAGS_host), ":", absl::GetFlag(FLAGS_port)),
                           grpc::InsecureServerCredentials(), &bound_port);
  const int max_bytes = absl::GetFlag(FLAGS_max_message_mb) * 1024 * 1024;
  builder.SetMaxReceiveMessageSize(max_bytes);
  builder.SetMaxSendMessageSize(max_bytes);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) {
    LogError("could not listen on ", absl::GetFlag(FLAGS_host), ":", absl::GetFlag(FLAGS_port));
    return 1;
  }
  {
    std::lock_guard<std::mutex> lock(server_mu);
    server_ptr = server.get();
    auto* health = server->GetHealthCheckService();
    health->SetServingStatus(false);
    health->SetServingStatus(kServiceName, false);
  }
  std::cout << "listening on port " << bound_port << std::endl;
  LogInfo("imagesearch-query listening on ", absl::GetFlag(FLAGS_host), ":", bound_port,
          ", snapshot root ", root, ", ", threads, " search threads");

  auto first = manager.PollOnce();
  if (!first.ok()) LogWarning("not serving yet: ", first.status().ToString());
  {
    std::lock_guard<std::mutex> lock(server_mu);
    if (manager.Current()) {
      server->GetHealthCheckService()->SetServingStatus(true);
    }
  }
  manager.StartWatching();

  std::thread signal_thread([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    LogInfo("signal ", sig, ": draining and shutting down");
    {
      std::lock_guard<std::mutex> lock(server_mu);
      server->GetHealthCheckService()->Shutdown();
    }
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  });
  server->Wait();
  signal_thread.join();
  {
    std::lock_guard<std::mutex> lock(server_mu);
    server_ptr = nullptr;
  }
  LogInfo("stopped");
  return 0;
}

}  // namespace
}  // namespace imagesearch

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("imagesearch gRPC query service. Example:\n"
                               "  imagesearch-query --snapshot_root=/snapshots --port=50051");
  absl::ParseCommandLine(argc, argv);
  return imagesearch::Run();
}
