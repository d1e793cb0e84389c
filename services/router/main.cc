// imagesearch-router: one ImageSearch endpoint over a sharded collection.
//
//   imagesearch-router --shards='127.0.0.1:50061,127.0.0.1:50062;127.0.0.1:50071,127.0.0.1:50072'
//   imagesearch-router --shards='dns:///photos-shard-0:50051;dns:///photos-shard-1:50051'
//
// --shards lists the shards in order, separated by ';': each that shard's
// replicas (a comma-separated list of host:port, or a DNS name resolved to
// its addresses; see shard_client.h). The router opens its
// port once every shard has answered GetInfo as shard i of S of one
// collection; its health is SERVING from then on (a shard's outage is
// reported per query, see router.h). SIGTERM/SIGINT: stop taking calls,
// finish those in flight (5 s at most), exit 0.
//
// With --http_port it also serves the query service's HTTP front end (the
// web page, /invocations, /info, /thumbs/{id}, /ping, /metrics) over the
// same fan-out; /metrics adds per-shard series (libs/serving/metrics.h).
// --model embeds image and text queries here (the shard replicas can then
// run with --load_model=false). Tokens and TLS as a replica's
// (--auth_token_file, --tls_cert/--tls_key/--tls_client_ca), and toward the
// shards --shard_token_file and --shard_tls_ca (+ cert and key for mTLS).
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "libs/common/binary_main.h"
#include "libs/common/log.h"
#include "libs/rpc/completion_threads.h"
#include "libs/rpc/health_reflection.h"
#include "libs/rpc/served_call.h"
#include "libs/serving/metrics.h"
#include "libs/serving/model_plugin.h"
#include "services/query/auth.h"
#include "services/query/call_gate.h"
#include "services/query/connection_limits.h"
#include "services/query/http_frontend.h"
#include "services/router/router.h"

ABSL_FLAG(std::string, shards, "",
          "The shards in order, ';'-separated; each a gRPC target of its replicas "
          "(host:port,host:port or e.g. dns:///svc:50051).");
ABSL_FLAG(std::string, host, "0.0.0.0", "Address to listen on.");
ABSL_FLAG(int, port, 50051, "gRPC port (0 = a free one, printed and in --port_file).");
ABSL_FLAG(int, http_port, -1,
          "HTTP port of the web page, /invocations, /info, /thumbs, /ping and /metrics; 0 = a "
          "free one, -1 = no HTTP.");
ABSL_FLAG(int, http_threads, 4, "HTTP workers that start /invocations and /thumbs requests.");
ABSL_FLAG(int, http_read_timeout_ms, 60000,
          "An HTTP connection idle, or with a request half sent, this long is closed.");
ABSL_FLAG(int, max_body_mb, 6, "Largest HTTP request body in MiB; larger ones get 413.");
ABSL_FLAG(int, max_message_mb, 16,
          "Largest gRPC message in MiB it takes (image queries), as a replica's flag.");
ABSL_FLAG(int, http_timeout_ms, 60000,
          "Deadline of an HTTP request unless its timeout_ms parameter says otherwise.");
ABSL_FLAG(std::string, port_file, "",
          "Write {\"grpc\": PORT, \"http\": PORT} here once listening (http only with "
          "--http_port).");
ABSL_FLAG(int, hedge_after_ms, 0,
          "Send a request that has had no answer for this long to another replica of its "
          "shard too (first answer wins); 0: the observed p95 of the shard's fastest replica; -1: "
          "never.");
ABSL_FLAG(
    int, retries, 2,
    "Retries of a shard call that fails with UNAVAILABLE (each on a replica it has not tried).");
ABSL_FLAG(int, threads, 1,
          "Threads that serve gRPC calls and take the shards' answers, on one completion "
          "queue. One thread sends and takes every call of a query itself; with more, gRPC "
          "1.51 hands events between them (~3x the context switches and twice the CPU per "
          "query measured): add router replicas before threads.");
ABSL_FLAG(int, default_timeout_ms, 10000, "Deadline of calls that set none.");
ABSL_FLAG(int, max_connection_age_ms, 300000,
          "Close each gRPC connection (GOAWAY) after this long so clients re-resolve and spread "
          "onto router replicas added since (HPA); 0 = never.");
ABSL_FLAG(int, shutdown_grace_ms, 5000,
          "On SIGTERM/SIGINT: how long calls in flight may take to finish; then the shard "
          "calls still waiting (on a hung replica, say) are cancelled and the router exits.");
ABSL_FLAG(int, startup_timeout_s, 120,
          "Give up (exit 1) when the shards have not all answered by then.");
ABSL_FLAG(std::string, log_format, "text", "Log lines on stderr: text, or json.");
ABSL_FLAG(std::string, auth_token_file, "",
          "File holding a bearer token (one line): every gRPC call must carry metadata "
          "'authorization: Bearer <token>' (else UNAUTHENTICATED) and every HTTP request the "
          "header (else 401); health, reflection and GET /ping stay open.");
ABSL_FLAG(std::string, shard_token_file, "",
          "File holding the bearer token the shard replicas require (their --auth_token_file); "
          "sent on every call to them.");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate (chain) of the router. With --tls_key: gRPC serves TLS only and HTTP "
          "HTTPS only. Default: plaintext.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key (unencrypted) of --tls_cert.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA certificate(s): mutual TLS, every client must present a certificate that "
          "chains to it (needs --tls_cert).");
ABSL_FLAG(std::string, shard_tls_ca, "",
          "PEM CA certificate(s) the shard replicas' certificates chain to: the router reaches "
          "them over TLS (replicas run with --tls_cert). Default: plaintext.");
ABSL_FLAG(std::string, shard_tls_cert, "",
          "PEM client certificate for replicas that require one (--tls_client_ca); with "
          "--shard_tls_key and --shard_tls_ca.");
ABSL_FLAG(std::string, shard_tls_key, "", "PEM private key of --shard_tls_cert.");
ABSL_FLAG(std::string, model, "",
          "The collection's model.pt (the same bytes as its snapshots'): image and text queries "
          "are embedded here, once, and the shard replicas need no model. Empty: a shard "
          "replica embeds them (rotating over the shards).");
ABSL_FLAG(std::string, model_plugin, "",
          "The model runtime module (LibTorch) for --model. Default: "
          "libimagesearch_torch_plugin.so next to this binary.");
ABSL_FLAG(int, model_instances, 0,
          "Batches the model runs at once (one thread each); 0 = one per CPU this process may "
          "use.");
ABSL_FLAG(int, max_batch, 2, "Largest batch of image/text queries per forward pass.");
ABSL_FLAG(int, max_delay_us, 2000, "Longest wait for more queries after the first of a batch.");

namespace imagesearch::router {
namespace {

using rpc::HealthService;
using rpc::Method;
using rpc::ReflectionService;
using rpc::ServedCall;

absl::Time Deadline(const grpc::ServerContextBase& context) {
  const auto d = context.deadline();
  if (d == std::chrono::system_clock::time_point::max()) {
    return absl::Now() + absl::Milliseconds(absl::GetFlag(FLAGS_default_timeout_ms));
  }
  return absl::FromChrono(d);
}

// The calls in flight over both fronts, and the refusal of new ones once
// the router stops (as a replica's QueryCore::StartDraining and WaitIdle):
// a SIGTERM lets the calls in flight, HTTP's as gRPC's, finish within the
// grace period before the shard calls still waiting are cancelled.
class CallCounter {
 public:
  bool Enter() {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_) return false;
    ++inflight_;
    return true;
  }
  void Leave() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--inflight_ == 0) idle_.notify_all();
  }
  void StartDraining() {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
  }
  // Whether every call ended within `grace`.
  bool WaitIdle(absl::Duration grace) {
    std::unique_lock<std::mutex> lock(mu_);
    return idle_.wait_for(lock, absl::ToChronoNanoseconds(grace),
                          [this] { return inflight_ == 0; });
  }

 private:
  std::mutex mu_;
  std::condition_variable idle_;
  bool draining_ = false;  // Guarded by mu_.
  int64_t inflight_ = 0;   // Guarded by mu_.
};

// Counts every answer under (front, method, code), as a replica does, and
// keeps the in-flight gauge.
template <typename Response>
Router::Done<Response> Tracked(serving::Metrics* metrics, const char* front, const char* method,
                               Router::Done<Response> done) {
  metrics->AddInflight(1);
  return [metrics, front, method, started = absl::Now(),
          done = std::move(done)](absl::StatusOr<Response> r) {
    metrics->RecordRequest(front, method, r.status().code(), absl::Now() - started);
    metrics->AddInflight(-1);
    done(std::move(r));
  };
}

// Starts a served call through `start`, counted and tracked; once the router
// is stopping, refuses it (UNAVAILABLE: clients and balancers go elsewhere).
template <typename Response>
void Serve(CallCounter* calls, serving::Metrics* metrics, const char* front, const char* method,
           Router::Done<Response> done, const std::function<void(Router::Done<Response>)>& start) {
  if (!calls->Enter()) {
    metrics->RecordRequest(front, method, absl::StatusCode::kUnavailable, absl::ZeroDuration());
    return done(absl::UnavailableError("the router is shutting down: retry on another replica"));
  }
  start(Tracked<Response>(metrics, front, method,
                          [calls, done = std::move(done)](absl::StatusOr<Response> r) {
                            done(std::move(r));
                            calls->Leave();
                          }));
}

// The public ImageSearch API over the router, every method on gRPC's
// asynchronous API and the router's completion threads.
class RouterService {
 public:
  RouterService(Router* router, serving::Metrics* metrics, const BearerToken* token,
                CallCounter* calls)
      : router_(router), metrics_(metrics), gate_(token, metrics), calls_(calls) {}

  grpc::Service* service() { return &service_; }

  // Once the server is built: asks each queue for each method's calls,
  // kAwaiting of each at a time. A call that arrives while none is awaited
  // waits unmatched until the thread re-arms, and is cancelled if the server
  // stops meanwhile; 32 covers the calls a router has in flight under load.
  void Start(CompletionThreads* threads) {
    static constexpr int kAwaiting = 32;
    ServedCall<v1::SearchRequest, v1::SearchResponse>::AwaitOnEveryQueue(&search_, threads,
                                                                         kAwaiting);
    ServedCall<v1::SearchBatchRequest, v1::SearchBatchResponse>::AwaitOnEveryQueue(
        &search_batch_, threads, kAwaiting);
    ServedCall<v1::EmbedRequest, v1::EmbedResponse>::AwaitOnEveryQueue(&embed_, threads, kAwaiting);
    ServedCall<v1::GetInfoRequest, v1::GetInfoResponse>::AwaitOnEveryQueue(&get_info_, threads,
                                                                           kAwaiting);
    ServedCall<v1::GetThumbnailRequest, v1::GetThumbnailResponse>::AwaitOnEveryQueue(
        &thumbnail_, threads, kAwaiting);
  }

 private:
  using Async = v1::ImageSearch::AsyncService;

  // A method: refused without the token (when one is required), else
  // answered by `answer`, counted under ("grpc", name, code) either way.
  template <typename Request, typename Response>
  Method<Request, Response> Make(
      const char* name,
      void (Async::*request)(grpc::ServerContext*, Request*,
                             grpc::ServerAsyncResponseWriter<Response>*, grpc::CompletionQueue*,
                             grpc::ServerCompletionQueue*, void*),
      std::function<void(const Request&, absl::Time, Router::Cancelled, Router::Done<Response>)>
          answer,
      bool watch_cancellation = false) {
    Method<Request, Response> m;
    m.watch_cancellation = watch_cancellation;
    m.request = [this, request](grpc::ServerContext* c, Request* q,
                                grpc::ServerAsyncResponseWriter<Response>* w,
                                grpc::ServerCompletionQueue* queue,
                                void* tag) { (service_.*request)(c, q, w, queue, queue, tag); };
    m.answer = [this, name, answer = std::move(answer)](const rpc::CallInfo& c, const Request& q,
                                                        Router::Done<Response> done) {
      if (absl::Status s = gate_.AuthenticateGrpc(c.context(), name); !s.ok()) return done(s);
      Serve<Response>(calls_, metrics_, "grpc", name, std::move(done),
                      [&](Router::Done<Response> d) {
                        answer(q, Deadline(c.context()), c.Cancelled(), std::move(d));
                      });
    };
    return m;
  }

  Router* const router_;
  serving::Metrics* const metrics_;
  const CallGate gate_;
  CallCounter* const calls_;
  Async service_;
  const Method<v1::SearchRequest, v1::SearchResponse> search_ =
      Make<v1::SearchRequest, v1::SearchResponse>(
          "Search", &Async::RequestSearch,
          [this](const v1::SearchRequest& q, absl::Time deadline, Router::Cancelled cancelled,
                 Router::Done<v1::SearchResponse> done) {
            router_->Search(q, deadline, std::move(done), std::move(cancelled));
          },
          // A client that left: its image is not embedded, nor its shards
          // asked, hedged or retried (Router::Cancelled).
          /*watch_cancellation=*/true);
  const Method<v1::SearchBatchRequest, v1::SearchBatchResponse> search_batch_ =
      Make<v1::SearchBatchRequest, v1::SearchBatchResponse>(
          "SearchBatch", &Async::RequestSearchBatch,
          [this](const v1::SearchBatchRequest& q, absl::Time deadline, Router::Cancelled,
                 Router::Done<v1::SearchBatchResponse> done) {
            router_->SearchBatch(q, deadline, std::move(done));
          });
  const Method<v1::EmbedRequest, v1::EmbedResponse> embed_ =
      Make<v1::EmbedRequest, v1::EmbedResponse>(
          "Embed", &Async::RequestEmbed,
          [this](const v1::EmbedRequest& q, absl::Time deadline, Router::Cancelled cancelled,
                 Router::Done<v1::EmbedResponse> done) {
            router_->Embed(q, deadline, std::move(done), std::move(cancelled));
          },
          /*watch_cancellation=*/true);
  const Method<v1::GetInfoRequest, v1::GetInfoResponse> get_info_ =
      Make<v1::GetInfoRequest, v1::GetInfoResponse>(
          "GetInfo", &Async::RequestGetInfo,
          [this](const v1::GetInfoRequest&, absl::Time deadline, Router::Cancelled,
                 Router::Done<v1::GetInfoResponse> done) {
            router_->GetInfo(deadline, std::move(done));
          });
  const Method<v1::GetThumbnailRequest, v1::GetThumbnailResponse> thumbnail_ =
      Make<v1::GetThumbnailRequest, v1::GetThumbnailResponse>(
          "Thumbnail", &Async::RequestGetThumbnail,
          [this](const v1::GetThumbnailRequest& q, absl::Time deadline, Router::Cancelled,
                 Router::Done<v1::GetThumbnailResponse> done) {
            router_->GetThumbnail(q.id(), deadline, std::move(done));
          });
};

// The HTTP front end's backend: the same router calls as gRPC's.
class RouterHttpBackend final : public HttpBackend {
 public:
  RouterHttpBackend(Router* router, serving::Metrics* metrics, CallCounter* calls)
      : router_(router), metrics_(metrics), calls_(calls) {}

  void SetServing(bool serving) { serving_ = serving; }
  bool Serving() const override { return serving_; }
  void Search(v1::SearchRequest request, const serving::CallContext& context,
              Done<v1::SearchResponse> done) override {
    Serve<v1::SearchResponse>(
        calls_, metrics_, "http", "Search", std::move(done), [&](Done<v1::SearchResponse> d) {
          router_->Search(request, context.deadline, std::move(d), context.cancelled);
        });
  }
  void GetInfo(const serving::CallContext& context, Done<v1::GetInfoResponse> done) override {
    Serve<v1::GetInfoResponse>(
        calls_, metrics_, "http", "GetInfo", std::move(done),
        [&](Done<v1::GetInfoResponse> d) { router_->GetInfo(context.deadline, std::move(d)); });
  }
  void GetThumbnail(std::string id, const serving::CallContext& context,
                    Done<v1::GetThumbnailResponse> done) override {
    Serve<v1::GetThumbnailResponse>(calls_, metrics_, "http", "Thumbnail", std::move(done),
                                    [&](Done<v1::GetThumbnailResponse> d) {
                                      router_->GetThumbnail(id, context.deadline, std::move(d));
                                    });
  }

 private:
  Router* const router_;
  serving::Metrics* const metrics_;
  CallCounter* const calls_;
  std::atomic<bool> serving_{false};
};

// Per-shard metrics from the shard clients.
class ShardMetrics final : public ShardObserver {
 public:
  explicit ShardMetrics(serving::Metrics* metrics) : metrics_(metrics) {}
  void OnCall(uint32_t shard, absl::StatusCode code, absl::Duration took) override {
    metrics_->RecordShardCall(shard, code, took);
  }
  void OnHedgeSent(uint32_t shard) override { metrics_->RecordShardHedge(shard, false); }
  void OnHedgeWon(uint32_t shard) override { metrics_->RecordShardHedge(shard, true); }
  void OnRetry(uint32_t shard) override { metrics_->RecordShardRetry(shard); }

 private:
  serving::Metrics* const metrics_;
};

int Run() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  for (const auto& [flag, value] :
       {std::pair<const char*, int>{"max_body_mb", absl::GetFlag(FLAGS_max_body_mb)},
        {"max_message_mb", absl::GetFlag(FLAGS_max_message_mb)},
        {"http_read_timeout_ms", absl::GetFlag(FLAGS_http_read_timeout_ms)}}) {
    if (value <= 0 || (absl::EndsWith(flag, "_mb") && value > 1024)) {
      std::cerr << "--" << flag << "=" << value << " is out of range\n";
      return 2;
    }
  }
  RouterOptions options;
  if (absl::StripAsciiWhitespace(absl::GetFlag(FLAGS_shards)).empty()) {
    std::cerr << "--shards is required: the shards' targets in order, ';'-separated\n";
    return 2;
  }
  // Strict: an empty entry would shift every later shard's index, and an
  // address listed twice is a typo (or two shards in one process).
  std::set<std::string, std::less<>> seen;
  for (absl::string_view t : absl::StrSplit(absl::GetFlag(FLAGS_shards), ';')) {
    const size_t i = options.shard_targets.size();
    t = absl::StripAsciiWhitespace(t);
    if (t.empty()) {
      std::cerr << "--shards: shard " << i
                << " is empty (the shards are ';'-separated, in order)\n";
      return 2;
    }
    for (absl::string_view a : absl::StrSplit(t, ',')) {
      a = absl::StripAsciiWhitespace(a);
      if (a.empty()) {
        std::cerr << "--shards: shard " << i << " (" << t << ") has an empty address\n";
        return 2;
      }
      if (!seen.emplace(a).second) {
        std::cerr << "--shards: " << a << " is listed twice\n";
        return 2;
      }
    }
    options.shard_targets.emplace_back(t);
  }
  const int hedge = absl::GetFlag(FLAGS_hedge_after_ms);
  options.shard.hedge_delay = hedge < 0 ? -absl::InfiniteDuration() : absl::Milliseconds(hedge);
  options.shard.retries = std::max(0, absl::GetFlag(FLAGS_retries));
  absl::StatusOr<ServerSecurity> security = LoadServerSecurityFlags(
      absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key),
      absl::GetFlag(FLAGS_tls_client_ca), absl::GetFlag(FLAGS_auth_token_file));
  if (!security.ok()) {
    LogError(security.status().message());
    return 2;
  }
  const std::optional<TlsFiles>& tls = security->tls;
  const std::optional<BearerToken>& token = security->token;
  if (auto c = LoadClientTlsFlags("shard_tls", absl::GetFlag(FLAGS_shard_tls_ca),
                                  absl::GetFlag(FLAGS_shard_tls_cert),
                                  absl::GetFlag(FLAGS_shard_tls_key));
      !c.ok()) {
    LogError(c.status().message());
    return 2;
  } else {
    options.shard.credentials = *std::move(c);
  }
  if (const std::string file = absl::GetFlag(FLAGS_shard_token_file); !file.empty()) {
    absl::StatusOr<std::string> shard_token = ReadBearerTokenFile("shard_token_file", file);
    if (!shard_token.ok()) {
      LogError(shard_token.status().message());
      return 1;
    }
    options.shard.authorization = absl::StrCat("Bearer ", *shard_token);
  }
  serving::Metrics metrics(kImagesearchVersion);
  ShardMetrics shard_metrics(&metrics);
  options.shard.observer = &shard_metrics;
  if (const std::string model = absl::GetFlag(FLAGS_model); !model.empty()) {
    absl::StatusOr<std::string> sha = Sha256HexOfFile(model);
    if (!sha.ok()) {
      LogError("--model: ", sha.status().ToString());
      return 1;
    }
    const serving::ModelPluginOptions popts = serving::ModelOptionsFromFlags(
        absl::GetFlag(FLAGS_model_plugin), absl::GetFlag(FLAGS_model_instances), 0,
        absl::GetFlag(FLAGS_max_batch), absl::Microseconds(absl::GetFlag(FLAGS_max_delay_us)),
        serving::BatchingEmbedderOptions().max_queued_items, &metrics);
    absl::StatusOr<std::shared_ptr<serving::Embedder>> embedder =
        serving::LoadPluginEmbedder(popts, model, "");
    if (!embedder.ok()) {
      LogError("--model: ", embedder.status().ToString());
      return 1;
    }
    options.embedder = *std::move(embedder);
    options.model_sha256 = *std::move(sha);
    LogInfo("imagesearch-router: embedding image and text queries with ", model, " (",
            popts.embedder.model_instances, " instances)");
  }
  // The server's completion queue and the threads that poll it (--threads):
  // the calls the router serves and the calls it makes to the shards
  // complete on it. Made first, since Discover calls the shards.
  grpc::ServerBuilder builder;
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues;
  queues.push_back(builder.AddCompletionQueue());
  CompletionThreads threads(std::move(queues), std::max(1, absl::GetFlag(FLAGS_threads)));
  options.shard.queues = &threads;
  Router router(options);
  const absl::Time give_up = absl::Now() + absl::Seconds(absl::GetFlag(FLAGS_startup_timeout_s));
  absl::Status found;
  std::string last;
  while (true) {
    // Rounds of 5 s, each logged when its reason changes; no short last
    // round (one cut short by the deadline reports only its deadline).
    absl::Time until = absl::Now() + absl::Seconds(5);
    if (until + absl::Seconds(1) >= give_up) until = give_up;
    found = router.Discover(until);
    if (found.ok()) break;
    if (found.code() == absl::StatusCode::kFailedPrecondition || until == give_up) {
      LogError("imagesearch-router: ", found.ToString());
      return 1;
    }
    if (std::string(found.message()) != last) {
      LogWarning("imagesearch-router: waiting for the shards: ", found.ToString());
      last = std::string(found.message());
    }
  }
  metrics.InitShards(router.shard_count());
  CallCounter calls;
  RouterService service(&router, &metrics, token ? &*token : nullptr, &calls);
  RouterHttpBackend http_backend(&router, &metrics, &calls);
  std::unique_ptr<HttpFrontend> http;
  if (absl::GetFlag(FLAGS_http_port) >= 0) {
    HttpFrontendOptions hopts;
    hopts.host = absl::GetFlag(FLAGS_host);
    hopts.port = absl::GetFlag(FLAGS_http_port);
    hopts.threads = std::max(1, absl::GetFlag(FLAGS_http_threads));
    hopts.timeout = absl::Milliseconds(absl::GetFlag(FLAGS_http_timeout_ms));
    hopts.read_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_http_read_timeout_ms));
    hopts.max_body_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_max_body_mb)) << 20;
    hopts.token = token ? &*token : nullptr;
    hopts.tls = tls ? &*tls : nullptr;
    http = std::make_unique<HttpFrontend>(&http_backend, &metrics, hopts);
    if (absl::Status s = http->Start(); !s.ok()) {
      LogError("imagesearch-router: HTTP: ", s.ToString());
      return 1;
    }
  }
  // Health and reflection of our own, on the same threads (health_reflection.h).
  HealthService health(&threads, {"imagesearch.v1.ImageSearch"});
  ReflectionService reflection(&threads, {"imagesearch.v1.ImageSearch", "grpc.health.v1.Health"});
  builder.RegisterService(health.service());
  for (grpc::Service* s : reflection.services()) builder.RegisterService(s);
  int port = 0;
  builder.AddListeningPort(absl::StrCat(absl::GetFlag(FLAGS_host), ":", absl::GetFlag(FLAGS_port)),
                           GrpcServerCredentials(tls ? &*tls : nullptr), &port);
  builder.RegisterService(service.service());
  builder.SetMaxReceiveMessageSize(absl::GetFlag(FLAGS_max_message_mb) << 20);
  ApplyConnectionLimits(&builder);
  if (absl::GetFlag(FLAGS_max_connection_age_ms) > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                               absl::GetFlag(FLAGS_max_connection_age_ms));
    // Calls in flight on an aged connection get the drain's time, 1 s at least.
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                               std::max(1000, absl::GetFlag(FLAGS_shutdown_grace_ms)));
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    LogError("imagesearch-router: cannot listen on ", absl::GetFlag(FLAGS_host), ":",
             absl::GetFlag(FLAGS_port));
    return 1;
  }
  service.Start(&threads);
  health.Start();
  reflection.Start();
  // As a replica: probes may name the service (Kubernetes' grpc probes do).
  health.SetServing(true);
  http_backend.SetServing(true);
  if (!absl::GetFlag(FLAGS_port_file).empty()) {
    const std::string http_part =
        http != nullptr ? absl::StrCat(", \"http\": ", http->port()) : std::string();
    absl::Status s = WritePortFile(absl::GetFlag(FLAGS_port_file),
                                   absl::StrCat("{\"grpc\": ", port, http_part, "}\n"));
    if (!s.ok()) {
      LogError("--port_file: ", s.ToString());
      return 1;
    }
  }
  std::cout << "listening on port " << port << std::endl;
  LogInfo("imagesearch-router: collection '", router.collection(), "', ", router.shard_count(),
          " shards, gRPC on ", absl::GetFlag(FLAGS_host), ":", port,
          http != nullptr ? absl::StrCat(", HTTP on port ", http->port()) : std::string());
  int sig = 0;
  sigwait(&signals, &sig);
  LogInfo("imagesearch-router: signal ", sig, ": stopping");
  health.Shutdown();               // NOT_SERVING, and Watch streams end.
  http_backend.SetServing(false);  // /ping: 503, so load balancers move on.
  calls.StartDraining();           // New calls, gRPC's and HTTP's: UNAVAILABLE.
  // gRPC stops listening and sends GOAWAY at once; the calls in flight on
  // both fronts get the grace period, then the shard calls still waiting
  // (on a hung replica) are cancelled, which ends them.
  const absl::Duration grace =
      absl::Milliseconds(std::max(0, absl::GetFlag(FLAGS_shutdown_grace_ms)));
  std::thread grpc_shutdown(
      [&server, until = absl::ToChronoTime(absl::Now() + grace)] { server->Shutdown(until); });
  if (!calls.WaitIdle(grace)) LogWarning("imagesearch-router: grace period over, calls in flight");
  router.CancelAll();  // A hung replica must not hold the router up to its calls' deadlines.
  if (http != nullptr) http->Stop();
  grpc_shutdown.join();
  threads.Shutdown();  // After the server's: gRPC's order.
  // The embedder goes first: queued images are answered (as refused shard
  // calls) into the router and the metrics, which are destroyed after.
  router.DropEmbedder();
  options.embedder.reset();
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
