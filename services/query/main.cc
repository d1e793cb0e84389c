// imagesearch-query: the stateless query service, gRPC and (optionally) HTTP.
//
//   imagesearch-query --snapshot_root=/snapshots --port=50051 [--http_port=8080]
//   imagesearch-query serve      # SageMaker: /opt/ml/model, HTTP on 8080
//
// Serves imagesearch.v1.ImageSearch, grpc.health.v1 (NOT_SERVING until a
// snapshot and its model are loaded and warmed) and server reflection; with
// --http_port, also /ping, /invocations and /metrics. It watches
// <root>/CURRENT and swaps in new versions after loading them. On SIGTERM it
// stops taking new work and drains the calls in flight.
//
// Ports: N listens on N, 0 on a port the kernel picks, -1 turns that front
// off (the default for HTTP). Each port is printed on stdout once it listens
// and, with --port_file, written to that file.
//
// Plaintext by default. --tls_cert/--tls_key: gRPC over TLS and HTTPS;
// --tls_client_ca: mTLS (client certificates required and verified) on both.
// --auth_token_file: a bearer token on every call but health checks and /ping.
// See README.md, "TLS and authentication".
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "libs/common/binary_main.h"
#include "libs/common/cpu_quota.h"
#include "libs/common/file_util.h"
#include "libs/common/log.h"
#include "libs/common/status_macros.h"
#include "libs/rpc/completion_threads.h"
#include "libs/rpc/health_reflection.h"
#include "libs/serving/metrics.h"
#include "libs/serving/model_plugin.h"
#include "libs/serving/query_core.h"
#include "libs/serving/snapshot_manager.h"
#include "libs/snapshot/shard.h"
#include "libs/snapshot/snapshot.h"
#include "libs/snapshot/snapshot_store.h"
#include "services/query/auth.h"
#include "services/query/connection_limits.h"
#include "services/query/http_frontend.h"
#include "services/query/image_search_service.h"

ABSL_FLAG(std::string, snapshot_root, "",
          "Snapshot root directory (holds CURRENT and v<N>/), or one version directory. "
          "`serve` defaults it to /opt/ml/model.");
ABSL_FLAG(std::string, host, "0.0.0.0", "Address to listen on (gRPC and HTTP).");
ABSL_FLAG(int, port, 50051,
          "gRPC port; 0 = a free port the kernel picks, -1 = no gRPC. `serve` turns gRPC off "
          "unless --port is given.");
ABSL_FLAG(int, http_port, -1,
          "HTTP port for /ping, /invocations and /metrics; 0 = a free port the kernel picks, "
          "-1 = no HTTP. `serve` defaults it to $SAGEMAKER_BIND_TO_PORT or 8080.");
ABSL_FLAG(std::string, port_file, "",
          "Write the ports that listen to this file as JSON, {\"grpc\": N, \"http\": M}, a "
          "front that is off (or not listening yet) left out. Replaced atomically (temp file "
          "+ rename) when HTTP listens (at start) and again when gRPC does (once the first "
          "snapshot is loaded).");
ABSL_FLAG(int, http_threads, 4,
          "HTTP workers that parse and start /invocations requests (the event loop "
          "serves every connection; /ping never waits for a worker).");
ABSL_FLAG(int, http_read_timeout_ms, 60000,
          "An HTTP connection idle, or with a request half sent, this long is closed.");
ABSL_FLAG(int, max_body_mb, 6, "Largest HTTP request body in MiB; larger ones get 413.");
ABSL_FLAG(int, http_timeout_ms, 60000,
          "Deadline of an HTTP request unless its timeout_ms parameter says otherwise.");
ABSL_FLAG(int, grpc_threads, 0,
          "Threads that take gRPC calls and run their searches (one completion queue); 0 = one "
          "per CPU this process may use. One polls while it keeps up; the others join only while "
          "it is busy and they add throughput (a thread more costs each call a hand-off between "
          "threads). Image and text queries wait for the model on its own threads.");
ABSL_FLAG(int, max_message_mb, 16, "Largest gRPC message in MiB (image queries).");
ABSL_FLAG(int, max_inflight_requests, 256,
          "Requests (Search, SearchBatch, Embed) worked on at once, over gRPC and HTTP "
          "together; beyond it requests get RESOURCE_EXHAUSTED (HTTP 429) at once.");
ABSL_FLAG(int, max_queued_embeds, 256,
          "Image/text items admitted but not yet encoded; beyond it image/text requests get "
          "RESOURCE_EXHAUSTED (HTTP 429) at once.");
ABSL_FLAG(int, poll_ms, 500,
          "How often to check CURRENT for a new version, in milliseconds: a fallback poll; "
          "inotify on CURRENT makes swaps immediate where the volume supports it (not on NFS "
          "for writes from other hosts).");
ABSL_FLAG(bool, inotify, true,
          "Watch CURRENT with inotify, so a new version is read at once where the volume reports "
          "changes. false: CURRENT is read only every --poll_ms, as on NFS for another host's "
          "publish.");
ABSL_FLAG(std::string, verify, "checksums",
          "Snapshot verification at load: 'checksums' (every byte, XXH3) or 'sizes' (O(1)).");
ABSL_FLAG(int64_t, verify_swaps_up_to_mb, 64,
          "With --verify=sizes: a swap whose new segments total at most this many MiB hashes "
          "them anyway, reading them into memory before queries touch them (a slow volume then "
          "delays the swap, not the queries). 0: never.");
ABSL_FLAG(
    int, max_batch, 2,
    "Dynamic batcher: largest batch of image/text queries per forward pass (per model "
    "instance; with one thread per instance, 2 ran as fast as any, tools/bench/results/LOG.md).");
ABSL_FLAG(int, max_delay_us, 2000,
          "Dynamic batcher: longest wait for more queries after the first of a batch.");
ABSL_FLAG(int, model_instances, 0,
          "Batches the model runs at once (each on its own thread), as Triton's instance count; "
          "0 = one per CPU this process may use (its cgroup CPU quota and affinity).");
ABSL_FLAG(int, encoder_threads, 0,
          "LibTorch intra-op threads per model instance; 0 = CPUs / model_instances (1 by "
          "default: a multi-thread team spin-waits, which collapses when the cores are shared).");
ABSL_FLAG(bool, load_model, true,
          "Load the snapshot's model, for image and text queries. false: vector and id queries "
          "only, and no model in memory; for the shard replicas behind imagesearch-router "
          "--model, which embeds queries itself.");
ABSL_FLAG(std::string, model_plugin, "",
          "The model runtime module (LibTorch), loaded when a snapshot carries a model. "
          "Default: libimagesearch_torch_plugin.so next to this binary.");
ABSL_FLAG(int, max_connection_age_ms, 300000,
          "Close each gRPC connection (GOAWAY) after this long so clients rebalance onto new "
          "replicas; 0 = never.");
ABSL_FLAG(int, shutdown_grace_ms, 20000,
          "On SIGTERM/SIGINT: how long calls in flight may take to finish.");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate (chain) of the server. With --tls_key: gRPC serves TLS only and the "
          "HTTP front end HTTPS only. Default: plaintext.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key (unencrypted) of --tls_cert.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA certificate(s). When set (needs --tls_cert): mutual TLS, every gRPC and HTTPS "
          "client must present a certificate that chains to this CA.");
ABSL_FLAG(std::string, auth_token_file, "",
          "File holding a bearer token (one line). When set, every gRPC call must carry "
          "metadata 'authorization: Bearer <token>' (else UNAUTHENTICATED) and every HTTP "
          "request the header 'Authorization: Bearer <token>' (else 401); grpc.health.v1, "
          "server reflection and GET /ping stay open. Works with or without TLS.");
ABSL_FLAG(std::string, log_format, "text",
          "Log lines on stderr: text, or json (one object per line).");

namespace imagesearch {
namespace {

constexpr char kServiceName[] = "imagesearch.v1.ImageSearch";

constexpr int kOff = -1;  // --port / --http_port: that front does not listen.

bool GrpcEnabled() { return absl::GetFlag(FLAGS_port) != kOff; }
bool HttpEnabled() { return absl::GetFlag(FLAGS_http_port) != kOff; }

// Whether the command line sets flag `name` (--name=V, --name V, -name=V).
bool NamesFlag(int argc, char** argv, absl::string_view name) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (!absl::ConsumePrefix(&arg, "--")) absl::ConsumePrefix(&arg, "-");
    if (arg == name || absl::StartsWith(arg, absl::StrCat(name, "="))) return true;
  }
  return false;
}

// `serve`: the SageMaker inference-container contract, HTTP on one port;
// gRPC only when --port asks for it.
void ApplySageMakerDefaults(int argc, char** argv) {
  if (absl::GetFlag(FLAGS_snapshot_root).empty()) {
    absl::SetFlag(&FLAGS_snapshot_root, "/opt/ml/model");
  }
  if (!NamesFlag(argc, argv, "port")) absl::SetFlag(&FLAGS_port, kOff);
  if (!NamesFlag(argc, argv, "http_port")) {
    int port = 8080;
    const char* env = std::getenv("SAGEMAKER_BIND_TO_PORT");
    if (env != nullptr && (!absl::SimpleAtoi(env, &port) || port < 0 || port > 65535)) {
      LogWarning("SAGEMAKER_BIND_TO_PORT='", env, "' is not a port; using 8080");
      port = 8080;
    }
    absl::SetFlag(&FLAGS_http_port, port);
  }
}

// The flags that are checked before anything is opened; a bad one is exit
// status 2.
absl::Status CheckFlags() {
  if (absl::GetFlag(FLAGS_snapshot_root).empty()) {
    return absl::InvalidArgumentError(
        "--snapshot_root is required (or run `imagesearch-query serve`)");
  }
  // A collection's directory of shard roots never gets a CURRENT of its own:
  // waiting for one would be waiting forever (a root not yet published is
  // waited for).
  if (const std::string root = absl::GetFlag(FLAGS_snapshot_root);
      !snapshot::ShardRootsUnder(root).empty()) {
    if (auto current = snapshot::ReadCurrentVersion(root); !current.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--snapshot_root: ", current.status().message()));
    }
  }
  const std::string verify = absl::GetFlag(FLAGS_verify);
  if (verify != "checksums" && verify != "sizes") {
    return absl::InvalidArgumentError(
        absl::StrCat("--verify must be 'checksums' or 'sizes', got '", verify, "'"));
  }
  if (const int64_t mb = absl::GetFlag(FLAGS_verify_swaps_up_to_mb); mb < 0 || mb > (1 << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--verify_swaps_up_to_mb=", mb,
                     ": give a size in MiB (0: never hash with --verify=sizes)"));
  }
  for (const auto& [name, port] : {std::pair<const char*, int>{"port", absl::GetFlag(FLAGS_port)},
                                   {"http_port", absl::GetFlag(FLAGS_http_port)}}) {
    if (port < kOff || port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--", name, "=", port, ": give a port, 0 (the kernel picks one) or -1 (off)"));
    }
  }
  if (!GrpcEnabled() && !HttpEnabled()) {
    return absl::InvalidArgumentError("nothing to serve: --port and --http_port are both -1 (off)");
  }
  if (const int n = absl::GetFlag(FLAGS_grpc_threads); n < 0 || n > 1024) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--grpc_threads=", n, ": give a number of threads (0: one per CPU this process may use)"));
  }
  return absl::OkStatus();
}

// TLS files and the bearer token, checked before anything starts: a bad file
// is a clear error (and exit status 2).
absl::StatusOr<ServerSecurity> LoadSecurity() {
  return LoadServerSecurityFlags(absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key),
                                 absl::GetFlag(FLAGS_tls_client_ca),
                                 absl::GetFlag(FLAGS_auth_token_file));
}

// The model runtime's options: thread counts follow the CPUs this process may
// use (its cgroup quota and affinity), not the host's cores.
serving::ModelPluginOptions ModelOptions(serving::Metrics* metrics) {
  return serving::ModelOptionsFromFlags(
      absl::GetFlag(FLAGS_model_plugin), absl::GetFlag(FLAGS_model_instances),
      absl::GetFlag(FLAGS_encoder_threads), absl::GetFlag(FLAGS_max_batch),
      absl::Microseconds(absl::GetFlag(FLAGS_max_delay_us)),
      static_cast<size_t>(absl::GetFlag(FLAGS_max_queued_embeds)), metrics);
}

// Where the process is in its life, shared by the snapshot manager's
// callback, the signal thread and Run.
class Lifecycle {
 public:
  // The first snapshot (and its model) is loaded and warmed.
  void SetLoaded() {
    std::lock_guard<std::mutex> lock(mu_);
    loaded_ = true;
    if (health_ != nullptr) health_->SetServing(true);
    cv_.notify_all();
  }
  void RequestStop(int sig) {
    std::lock_guard<std::mutex> lock(mu_);
    stop_signal_ = sig;
    cv_.notify_all();
  }
  // Waits until the first snapshot is loaded (true) or a stop is requested
  // (false).
  bool WaitLoadedOrStop() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return loaded_ || stop_signal_ != 0; });
    return stop_signal_ == 0;
  }
  bool StopRequested() {
    std::lock_guard<std::mutex> lock(mu_);
    return stop_signal_ != 0;
  }
  // Waits for a stop request; returns its signal.
  int WaitStop() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return stop_signal_ != 0; });
    return stop_signal_;
  }
  // The gRPC health service that follows the snapshot; null before the
  // server starts and after it stops.
  void SetHealth(rpc::HealthService* health) {
    std::lock_guard<std::mutex> lock(mu_);
    health_ = health;
    if (health_ != nullptr) health_->SetServing(loaded_);
  }
  void ShutdownHealth() {
    std::lock_guard<std::mutex> lock(mu_);
    if (health_ != nullptr) health_->Shutdown();  // NOT_SERVING; Watch streams end.
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool loaded_ = false;
  int stop_signal_ = 0;
  rpc::HealthService* health_ = nullptr;
};

// The ports this process listens on, reported as each front starts: a line
// on stdout ("http listening on port N"; "listening on port N" for gRPC)
// and, with --port_file, that file replaced atomically with every port
// listening so far, e.g. {"grpc": 50051, "http": 8080}. Used by Run's thread
// only.
class PortReport {
 public:
  explicit PortReport(std::string path) : path_(std::move(path)) {}

  // Writes "{}" (nothing listens yet): a file left by an earlier run is
  // replaced, and a path that cannot be written is an error before anything
  // starts.
  absl::Status Start() { return Write(); }
  absl::Status Http(int port) {
    http_ = port;
    RETURN_IF_ERROR(Write());
    std::cout << "http listening on port " << port << std::endl;
    return absl::OkStatus();
  }
  absl::Status Grpc(int port) {
    grpc_ = port;
    RETURN_IF_ERROR(Write());
    std::cout << "listening on port " << port << std::endl;
    return absl::OkStatus();
  }

 private:
  absl::Status Write() const {
    if (path_.empty()) return absl::OkStatus();
    std::vector<std::string> fields;
    if (grpc_ != 0) fields.push_back(absl::StrCat("\"grpc\": ", grpc_));
    if (http_ != 0) fields.push_back(absl::StrCat("\"http\": ", http_));
    absl::Status s = WritePortFile(path_, absl::StrCat("{", absl::StrJoin(fields, ", "), "}\n"));
    if (!s.ok()) return absl::Status(s.code(), absl::StrCat("--port_file: ", s.message()));
    return s;
  }

  const std::string path_;
  int grpc_ = 0;  // 0: not listening.
  int http_ = 0;
};

std::string TlsText(const ServerSecurity& security) {
  if (!security.tls) return ", plaintext";
  return security.tls->mtls() ? ", TLS with client certificates" : ", TLS";
}

// What this process will serve, logged once before anything loads.
void LogStartup(const ServerSecurity& security, const HttpFrontend* http) {
  LogInfo("imagesearch-query starting: snapshot ", absl::GetFlag(FLAGS_snapshot_root),
          http ? absl::StrCat(", HTTP on ", absl::GetFlag(FLAGS_host), ":", http->port(),
                              security.tls ? " (HTTPS)" : "", " (503 until serving)")
               : "",
          GrpcEnabled() ? ", gRPC listens once a snapshot is loaded" : ", no gRPC",
          TlsText(security), security.token ? ", bearer token required" : "");
}

// Blocks SIGINT and SIGTERM in this thread and so in every thread started
// after it; SignalThread takes them with sigwait. Call before any thread
// starts.
sigset_t BlockStopSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

// The thread that turns SIGINT/SIGTERM into Lifecycle::RequestStop. A signal
// that arrived since BlockStopSignals is pending, and sigwait takes it. The
// destructor raises SIGTERM itself if no stop was requested, then joins.
class SignalThread {
 public:
  SignalThread(sigset_t signals, Lifecycle* life)
      : life_(life), thread_([signals, life] {
          int sig = 0;
          sigwait(&signals, &sig);
          life->RequestStop(sig);
        }) {}
  ~SignalThread() {
    if (!life_->StopRequested()) kill(getpid(), SIGTERM);
    thread_.join();
  }
  SignalThread(const SignalThread&) = delete;
  SignalThread& operator=(const SignalThread&) = delete;

 private:
  Lifecycle* const life_;
  std::thread thread_;
};

// The snapshot manager: what it loads and how it checks it, and what a load
// or a swap updates (metrics, readiness).
serving::SnapshotManagerOptions ManagerOptions(serving::Metrics* metrics, Lifecycle* life) {
  serving::SnapshotManagerOptions mopts;
  mopts.root = absl::GetFlag(FLAGS_snapshot_root);
  mopts.verify = absl::GetFlag(FLAGS_verify) == "sizes" ? snapshot::VerifyMode::kSizes
                                                        : snapshot::VerifyMode::kChecksums;
  mopts.hash_new_max_bytes = static_cast<uint64_t>(absl::GetFlag(FLAGS_verify_swaps_up_to_mb))
                             << 20;
  mopts.poll_interval = absl::Milliseconds(absl::GetFlag(FLAGS_poll_ms));
  mopts.use_inotify = absl::GetFlag(FLAGS_inotify);
  if (absl::GetFlag(FLAGS_load_model)) {
    mopts.embedder_factory = serving::PluginEmbedderFactory(ModelOptions(metrics));
  } else {
    mopts.embedder_factory =
        [](const snapshot::Snapshot&) -> absl::StatusOr<std::shared_ptr<serving::Embedder>> {
      return absl::UnimplementedError(
          "this replica runs with --load_model=false (image and text queries are embedded by "
          "imagesearch-router --model); vector and id queries work");
    };
  }
  mopts.on_load_start = [metrics](uint64_t version) { metrics->RecordSnapshotLoadStart(version); };
  mopts.on_load_end = [metrics] { metrics->RecordSnapshotLoadEnd(); };
  mopts.on_load = [metrics](bool ok, absl::Duration took) {
    metrics->RecordSnapshotLoad(ok, took);
  };
  mopts.on_swap = [metrics, life](const serving::ServingState& state) {
    const auto& m = state.snapshot->manifest();
    metrics->SetLiveSnapshot(m.version, m.count, m.model.name);
    life->SetLoaded();
  };
  return mopts;
}

serving::QueryCoreOptions CoreOptions() {
  serving::QueryCoreOptions copts;
  copts.max_inflight_requests = absl::GetFlag(FLAGS_max_inflight_requests);
  copts.max_image_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_max_message_mb)) << 20;
  return copts;
}

// The gRPC front: the server, the threads that take its calls and run
// their searches (one completion queue, --grpc_threads), and the health and
// reflection services on those threads (libs/rpc; nothing else polls the
// server's sockets, so a call is never handed between threads).
struct GrpcFront {
  std::unique_ptr<rpc::CompletionThreads> threads;
  std::unique_ptr<rpc::HealthService> health;
  std::unique_ptr<rpc::ReflectionService> reflection;
  std::unique_ptr<grpc::Server> server;

  GrpcFront() = default;
  GrpcFront(const GrpcFront&) = delete;
  GrpcFront& operator=(const GrpcFront&) = delete;
  // gRPC's order: the server stops (at once, if Drain has not stopped it),
  // then its queues, whose threads deliver what is left.
  ~GrpcFront() {
    if (server != nullptr) server->Shutdown(std::chrono::system_clock::now());
    if (threads != nullptr) threads->Shutdown();
  }
};

std::unique_ptr<GrpcFront> StartGrpc(ImageSearchService* service, const ServerSecurity& security,
                                     int* bound_port) {
  std::shared_ptr<grpc::ServerCredentials> credentials =
      GrpcServerCredentials(security.tls ? &*security.tls : nullptr);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat(absl::GetFlag(FLAGS_host), ":", absl::GetFlag(FLAGS_port)),
                           credentials, bound_port);
  const int max_bytes = absl::GetFlag(FLAGS_max_message_mb) * 1024 * 1024;
  builder.SetMaxReceiveMessageSize(max_bytes);
  builder.SetMaxSendMessageSize(max_bytes);
  // Connections are closed (GOAWAY, calls in flight finish) after this age,
  // so clients re-resolve and spread over replicas that were added since
  // (Kubernetes HPA scale-up behind a headless Service).
  if (absl::GetFlag(FLAGS_max_connection_age_ms) > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                               absl::GetFlag(FLAGS_max_connection_age_ms));
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                               absl::GetFlag(FLAGS_shutdown_grace_ms));
  }
  ApplyConnectionLimits(&builder);
  auto front = std::make_unique<GrpcFront>();
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues;
  queues.push_back(builder.AddCompletionQueue());
  const int threads = absl::GetFlag(FLAGS_grpc_threads);
  front->threads = std::make_unique<rpc::CompletionThreads>(
      std::move(queues), threads > 0 ? threads : EffectiveCpuCount());
  front->health = std::make_unique<rpc::HealthService>(front->threads.get(),
                                                       std::vector<std::string>{kServiceName});
  front->reflection = std::make_unique<rpc::ReflectionService>(
      front->threads.get(), std::vector<std::string>{kServiceName, "grpc.health.v1.Health"});
  builder.RegisterService(service->service());
  builder.RegisterService(front->health->service());
  for (grpc::Service* s : front->reflection->services()) builder.RegisterService(s);
  front->server = builder.BuildAndStart();
  if (front->server == nullptr) return nullptr;
  service->Start(front->threads.get());
  front->health->Start();
  front->reflection->Start();
  return front;
}

// Starts gRPC on the service, turns its health on (it follows `life` from
// then on) and reports its port. Null, logged, if it cannot listen or the
// port cannot be reported.
std::unique_ptr<GrpcFront> ListenGrpc(ImageSearchService* service, const ServerSecurity& security,
                                      Lifecycle* life, PortReport* ports) {
  int bound_port = 0;
  std::unique_ptr<GrpcFront> front = StartGrpc(service, security, &bound_port);
  if (!front) {
    LogError("could not listen on ", absl::GetFlag(FLAGS_host), ":", absl::GetFlag(FLAGS_port));
    return nullptr;
  }
  life->SetHealth(front->health.get());
  if (absl::Status s = ports->Grpc(bound_port); !s.ok()) {
    LogError(s.message());
    life->SetHealth(nullptr);
    return nullptr;
  }
  LogInfo("imagesearch-query listening on ", absl::GetFlag(FLAGS_host), ":", bound_port, " (gRPC, ",
          front->threads->threads(), " threads)", TlsText(security));
  return front;
}

// Starts HTTP and reports its port; the errors are Start's and PortReport's.
absl::StatusOr<std::unique_ptr<HttpFrontend>> StartHttp(HttpBackend* backend,
                                                        serving::Metrics* metrics,
                                                        const ServerSecurity& security,
                                                        PortReport* ports) {
  HttpFrontendOptions hopts;
  hopts.host = absl::GetFlag(FLAGS_host);
  hopts.port = absl::GetFlag(FLAGS_http_port);
  hopts.threads = absl::GetFlag(FLAGS_http_threads);
  hopts.max_body_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_max_body_mb)) << 20;
  hopts.timeout = absl::Milliseconds(absl::GetFlag(FLAGS_http_timeout_ms));
  hopts.read_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_http_read_timeout_ms));
  hopts.tls = security.tls ? &*security.tls : nullptr;
  hopts.token = security.token ? &*security.token : nullptr;
  auto http = std::make_unique<HttpFrontend>(backend, metrics, hopts);
  RETURN_IF_ERROR(http->Start());
  RETURN_IF_ERROR(ports->Http(http->port()));
  return http;
}

// SIGTERM/SIGINT: stop taking new work, let the calls in flight finish
// within the grace period, then stop both fronts.
void Drain(int sig, serving::QueryCore* core, Lifecycle* life, GrpcFront* front,
           HttpFrontend* http) {
  grpc::Server* server = front != nullptr ? front->server.get() : nullptr;
  const absl::Duration grace = absl::Milliseconds(absl::GetFlag(FLAGS_shutdown_grace_ms));
  LogInfo("signal ", sig, ": not taking new work; draining calls in flight (grace ",
          absl::FormatDuration(grace), ")");
  core->StartDraining();  // New calls: UNAVAILABLE; /ping: 503.
  life->ShutdownHealth();
  // gRPC stops listening and sends GOAWAY at once, so clients and proxies
  // (nginx, round_robin channels) send new calls to other replicas instead
  // of getting UNAVAILABLE here; calls in flight get the grace period.
  const auto deadline = std::chrono::system_clock::now() + absl::ToChronoMilliseconds(grace);
  std::thread grpc_shutdown([server, deadline] {
    if (server != nullptr) server->Shutdown(deadline);
  });
  if (!core->WaitIdle(grace)) LogWarning("grace period over with calls still in flight");
  if (http != nullptr)
    http->Stop();  // HTTP answered 503 meanwhile (SageMaker, nginx retry on 503).
  grpc_shutdown.join();
  if (server != nullptr) server->Wait();
  if (front != nullptr) front->threads->Shutdown();  // After the server's: gRPC's order.
}

// Stops the snapshot watcher. A load in progress reads the snapshot volume,
// and on a stalled one (a hung NFS server, a throttled disk) that read may
// take minutes with nothing to interrupt it: a stop does not wait more than
// a second for it. The process then ends here, without destroying the
// manager, whose destructor would wait.
void StopWatcherOrExit(serving::SnapshotManager* manager, int code, absl::string_view stopped) {
  if (manager->StopWatching(absl::Seconds(1))) {
    LogInfo(stopped);
    return;
  }
  LogWarning(stopped, "; a snapshot load was still reading the volume (slow or stalled), ",
             "so the process exits without waiting for it");
  ExitWithoutCleanup(code);
}

// Start-up order: HTTP (health, metrics; 503 until serving) first, then the
// first snapshot and its model are loaded and warmed, and only then does the
// gRPC port listen. A replica that is starting refuses gRPC connections, which
// every balancer (nginx's grpc_next_upstream, a Kubernetes probe, a
// round_robin channel) already treats as "not this one"; no query ever
// reaches a replica that cannot answer it. See deploy/README.md.
int Run() {
  if (absl::Status s = CheckFlags(); !s.ok()) {
    std::cerr << s.message() << "\n";
    return 2;
  }
  absl::StatusOr<ServerSecurity> security = LoadSecurity();
  if (!security.ok()) {
    LogError(security.status().message());
    return 2;
  }
  PortReport ports(absl::GetFlag(FLAGS_port_file));
  if (absl::Status s = ports.Start(); !s.ok()) {
    LogError(s.message());
    return 2;
  }
  const sigset_t signals = BlockStopSignals();

  serving::Metrics metrics(kImagesearchVersion);
  Lifecycle life;
  // The gRPC front outlives the core (declared first, destroyed last): an
  // image query the model finishes after the front stopped still reaches
  // its completion threads, which drop it.
  std::unique_ptr<GrpcFront> front;
  serving::SnapshotManager manager(ManagerOptions(&metrics, &life));
  serving::QueryCore core(&manager, &metrics, CoreOptions());
  // With a token, every ImageSearch call is checked before its bytes are parsed.
  ImageSearchService service(&core, security->token ? &*security->token : nullptr, &metrics);
  CoreHttpBackend http_backend(&core);
  std::unique_ptr<HttpFrontend> http;
  if (HttpEnabled()) {
    absl::StatusOr<std::unique_ptr<HttpFrontend>> started =
        StartHttp(&http_backend, &metrics, *security, &ports);
    if (!started.ok()) {
      LogError(started.status().message());
      return 1;
    }
    http = *std::move(started);
  }
  LogStartup(*security, http.get());

  SignalThread signal_thread(signals, &life);
  manager.StartWatching();  // Loads CURRENT at once, then watches it (inotify) and polls.
  if (!life.WaitLoadedOrStop()) {
    if (http) http->Stop();
    StopWatcherOrExit(&manager, 0, "stopped before a snapshot was loaded");
    return 0;
  }
  // A shard's root stays that shard (every publish checks it): its answers
  // say which, for the router (snapshot::ShardStamp).
  if (std::string stamp = snapshot::ShardStamp(manager.Current()->snapshot->manifest().shard);
      !stamp.empty()) {
    service.StampAnswers(snapshot::kShardStampKey, std::move(stamp));
  }
  if (GrpcEnabled() && !(front = ListenGrpc(&service, *security, &life, &ports))) {
    if (http) http->Stop();
    StopWatcherOrExit(&manager, 1, "stopped: the gRPC port could not be opened");
    return 1;
  }
  Drain(life.WaitStop(), &core, &life, front.get(), http.get());
  life.SetHealth(nullptr);
  StopWatcherOrExit(&manager, 0, "stopped");
  return 0;
}

}  // namespace
}  // namespace imagesearch

int main(int argc, char** argv) {
  std::vector<char*> args = imagesearch::InitBinary(
      "imagesearch query service (gRPC, and HTTP with --http_port).\n"
      "  imagesearch-query --snapshot_root=/snapshots [--port=50051] [--http_port=8080]\n"
      "  imagesearch-query serve    SageMaker: snapshot from /opt/ml/model, HTTP on 8080\n"
      "  Ports: 0 = the kernel picks a free one, -1 = off; --port_file=FILE reports them\n"
      "  TLS/mTLS: --tls_cert=PEM --tls_key=PEM [--tls_client_ca=PEM]; "
      "bearer token: --auth_token_file=FILE",
      argc, argv, FLAGS_log_format);
  if (args.size() == 2 && std::strcmp(args[1], "serve") == 0) {
    imagesearch::ApplySageMakerDefaults(argc, argv);
  } else if (args.size() > 1) {
    std::cerr << "unknown argument '" << args[1] << "'; the only command is `serve`\n";
    return 2;
  }
  return imagesearch::Run();
}
