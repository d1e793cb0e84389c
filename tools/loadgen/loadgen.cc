// imagesearch-loadgen: the one load tool for the query service (benchmarks,
// the failover test, soaks). Bounded in time and count; loopback targets.
//
//   imagesearch-loadgen --target=127.0.0.1:50051 --kind=id --ids=ids.txt
//       --concurrency=8 --duration_s=20
//   imagesearch-loadgen --target=... --kind=vector --vectors=q.npy --rate=500
//   imagesearch-loadgen --target=... --kind=batch --vectors=q.npy --batch=16
//   imagesearch-loadgen --target=... --kind=image --images=DIR
//   imagesearch-loadgen --http=127.0.0.1:8080 --kind=id --ids=ids.txt
//   imagesearch-loadgen --http=127.0.0.1:8080 --kind=image --images=DIR
//       --concurrency=256 --ping_every_ms=50 --idle_connections=500
//       --half_sent_connections=500     (health under load)
//   ... --base_vectors=base.npy --metric=cosine   (recall@k vs exact search)
//
// Closed loop (default): `concurrency` calls always in flight, each sent when
// the previous one answers. Open loop (--rate=R, gRPC only): calls start on a
// fixed schedule of R per second whatever the answers, up to
// --max_inflight, and latency counts from the scheduled start (no
// coordinated omission); a call that finds max_inflight reached is counted
// as "CLIENT_OVERLOADED".
//
// gRPC uses the callback API on one channel per --channels. HTTP (POST
// /invocations, JSON) uses one keep-alive connection per concurrent caller.
// --poll (gRPC, closed loop): the calls go through one completion queue that
// the main thread polls without ever sleeping. On loopback the server's
// send then has no sleeping client thread to wake, a cost that lands on the
// server's core (tools/bench/results/LOG.md, "The client's wakeup"); it also takes
// a whole core, so pin it away from the server.
//
// Prints QPS, p50/p90/p99/p99.9 latency, errors by code, the snapshot
// versions that answered (first and last second each was seen), and with
// --base_vectors the recall@top_k of vector queries against brute force.
// --json_out writes the same as one JSON object. SIGINT or SIGTERM ends the
// run early (calls in flight finish) and it reports what ran.
//
// Health under load (HTTP): --ping_every_ms probes GET /ping from a separate
// thread, each on a new connection, while the load runs, and reports its
// p50/p99/max and status mix; --idle_connections and --half_sent_connections
// hold that many extra connections open for the run, sending nothing or a
// request line and some headers that never end. Failed HTTP calls are counted
// by status ("HTTP 429", "HTTP 503") or by how the transport failed
// ("HTTP_Read": reset or closed while reading the answer, "HTTP_Connection":
// refused, "HTTP_Write").
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/util/json_util.h"
#include "imagesearch/v1/imagesearch.grpc.pb.h"
#include "libs/common/binary_main.h"
#include "libs/common/file_util.h"
#include "libs/common/status_macros.h"
#include "libs/index/metric.h"
#include "libs/snapshot/vector_io.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, target, "", "gRPC host:port to load.");
ABSL_FLAG(std::string, http, "", "HTTP host:port to load instead (POST /invocations).");
ABSL_FLAG(std::string, kind, "vector", "vector, id, image or batch (SearchBatch of vectors).");
ABSL_FLAG(std::string, vectors, "", "vector/batch: query vectors (.npy or .fvecs).");
ABSL_FLAG(std::string, ids, "", "id: file with one id per line.");
ABSL_FLAG(std::string, images, "", "image: directory of image files.");
ABSL_FLAG(int, concurrency, 8, "Closed loop: calls in flight.");
ABSL_FLAG(double, rate, 0, "Open loop: calls per second (gRPC only); 0 = closed loop.");
ABSL_FLAG(int, max_inflight, 1024, "Open loop: most calls in flight.");
ABSL_FLAG(double, duration_s, 10, "Run time in seconds (bounded; at most 3600).");
ABSL_FLAG(int64_t, max_requests, 0, "Stop after this many calls; 0 = only the duration.");
ABSL_FLAG(double, warmup_s, 0, "Calls in the first seconds are not counted.");
ABSL_FLAG(int, top_k, 10, "top_k of each query.");
ABSL_FLAG(int, ef, 0, "ef of each query; 0 = the snapshot's default.");
ABSL_FLAG(int, batch, 16, "batch: queries per SearchBatch call.");
ABSL_FLAG(int, channels, 1, "gRPC channels (connections) to spread calls over.");
ABSL_FLAG(bool, poll, false,
          "gRPC closed loop: one thread spins on a completion queue instead of sleeping "
          "between answers (takes a core; pin it away from the server).");
ABSL_FLAG(int, timeout_ms, 10000, "Deadline of each call.");
ABSL_FLAG(std::string, service_config, "",
          "gRPC service config JSON file for the channels (e.g. a retryPolicy: "
          "deploy/local/grpc_service_config.json).");
ABSL_FLAG(std::string, base_vectors, "",
          "Recall: the indexed vectors (row i has id \"i\", as imagesearch-snapshot build names "
          "them); vector queries are checked against brute-force top_k.");
ABSL_FLAG(std::string, metric, "cosine", "Recall: cosine, ip or l2.");
ABSL_FLAG(int, recall_queries, 200, "Recall: how many distinct queries to check.");
ABSL_FLAG(std::string, json_out, "", "Also write the results here as JSON.");
ABSL_FLAG(double, report_every_s, 0, "Print a progress line this often; 0 = never.");
ABSL_FLAG(int, ping_every_ms, 0,
          "HTTP: probe GET /ping this often (a new connection each) during the run and "
          "report its latency; 0 = no probes.");
ABSL_FLAG(int, idle_connections, 0, "HTTP: extra connections held open, sending nothing.");
ABSL_FLAG(int, half_sent_connections, 0,
          "HTTP: extra connections held open after a request line and some headers.");
ABSL_FLAG(std::string, log_format, "text", "Log lines on stderr: text, or json.");

namespace imagesearch {
namespace {

// SIGINT/SIGTERM end the run early: no new calls, the ones in flight finish,
// and the report covers what ran. Lock-free, so the handler may set it.
std::atomic<bool> g_stop_requested{false};
static_assert(std::atomic<bool>::is_always_lock_free);

void InstallStopHandler() {
  struct sigaction action {};
  action.sa_handler = [](int) { g_stop_requested.store(true, std::memory_order_relaxed); };
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

namespace v1 = ::imagesearch::v1;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// One call's outcome.
// The version an answer came from: "3" from a replica; through
// imagesearch-router each shard's, "0:3,1:2" (shard:version).
std::string VersionOf(const v1::SearchResponse& r) {
  if (r.shard_versions().empty()) return std::to_string(r.snapshot_version());
  const std::map<uint32_t, uint64_t> by_shard(r.shard_versions().begin(), r.shard_versions().end());
  std::string out;
  for (const auto& [shard, version] : by_shard) {
    absl::StrAppend(&out, out.empty() ? "" : ",", shard, ":", version);
  }
  return out;
}

struct Outcome {
  double latency_s = 0;
  double finished_at_s = 0;  // since the run started
  std::string code;          // "OK", a gRPC code name, "HTTP 503", ...
  std::string message;       // The error's message, if any.
  std::string version;       // VersionOf the answer.
  size_t query = 0;
  std::vector<std::string> ids;  // Only kept for queries checked for recall.
};

// Everything the callers record, under one lock (cheap next to an RPC).
class Recorder {
 public:
  Recorder(Clock::time_point start, double warmup_s) : start_(start), warmup_s_(warmup_s) {}
  void Add(Outcome o) {
    std::lock_guard<std::mutex> lock(mu_);
    ++calls_total_;
    if (o.finished_at_s < warmup_s_) return;
    ++codes_[o.code];
    if (o.code != "OK") {
      if (!first_errors_.count(o.code)) {
        first_errors_[o.code] = absl::StrFormat("%.2fs: %s", o.finished_at_s, o.message);
      }
      if (errors_.size() < kMaxErrorsKept) {
        errors_.push_back({{"at_s", o.finished_at_s}, {"code", o.code}, {"message", o.message}});
      }
    }
    if (o.code == "OK") {
      latencies_.push_back(o.latency_s);
      auto& v = versions_[o.version];
      if (v.count++ == 0) v.first_s = o.finished_at_s;
      v.last_s = std::max(v.last_s, o.finished_at_s);
      if (!o.ids.empty() && !answers_.count(o.query)) answers_[o.query] = std::move(o.ids);
    }
    last_s_ = std::max(last_s_, o.finished_at_s);
  }
  std::string Progress(double now_s) {
    std::lock_guard<std::mutex> lock(mu_);
    int64_t ok = codes_.count("OK") ? codes_["OK"] : 0;
    return absl::StrFormat("loadgen: %.2fs %d calls, %d ok", now_s, calls_total_, ok);
  }

  struct VersionSeen {
    int64_t count = 0;
    double first_s = 0, last_s = 0;
  };
  std::mutex mu_;
  const Clock::time_point start_;
  const double warmup_s_;
  int64_t calls_total_ = 0;
  std::map<std::string, int64_t> codes_;
  std::map<std::string, std::string> first_errors_;  // Per code: when, and its message.
  static constexpr size_t kMaxErrorsKept = 1000;
  std::vector<nlohmann::json> errors_;  // The first failed calls: when, code, message.
  std::vector<double> latencies_;
  // Numbers in numeric order (shorter first), then imagesearch-router's.
  struct ByLength {
    bool operator()(const std::string& a, const std::string& b) const {
      return a.size() != b.size() ? a.size() < b.size() : a < b;
    }
  };
  std::map<std::string, VersionSeen, ByLength> versions_;
  std::map<size_t, std::vector<std::string>> answers_;
  double last_s_ = 0;
};

// The queries to send, cycled through.
struct Workload {
  std::string kind;
  std::vector<std::vector<float>> vectors;
  std::vector<std::string> ids;
  std::vector<std::string> images;  // encoded bytes
  size_t size() const {
    return kind == "id" ? ids.size() : kind == "image" ? images.size() : vectors.size();
  }
};

absl::StatusOr<Workload> LoadWorkload() {
  Workload w;
  w.kind = absl::GetFlag(FLAGS_kind);
  if (w.kind == "vector" || w.kind == "batch") {
    ASSIGN_OR_RETURN(VectorSet set, ReadVectorFile(absl::GetFlag(FLAGS_vectors)));
    for (size_t i = 0; i < set.count; ++i) {
      w.vectors.emplace_back(set.data.begin() + i * set.dim, set.data.begin() + (i + 1) * set.dim);
    }
  } else if (w.kind == "id") {
    ASSIGN_OR_RETURN(std::string text, ReadFileToString(absl::GetFlag(FLAGS_ids)));
    for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipWhitespace())) {
      w.ids.emplace_back(absl::StripAsciiWhitespace(line));
    }
  } else if (w.kind == "image") {
    std::vector<std::string> paths;
    for (const auto& e : std::filesystem::directory_iterator(absl::GetFlag(FLAGS_images))) {
      if (e.is_regular_file()) paths.push_back(e.path().string());
    }
    std::sort(paths.begin(), paths.end());
    for (const auto& p : paths) {
      ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(p));
      w.images.push_back(std::move(bytes));
    }
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--kind must be vector, id, image or batch, not '", w.kind, "'"));
  }
  if (w.size() == 0) return absl::InvalidArgumentError("no queries: the input file is empty");
  return w;
}

// Brute-force top_k ids ("row numbers") of each of the first n queries.
std::map<size_t, std::vector<std::string>> ExactTopK(const Workload& w, const VectorSet& base,
                                                     index::Metric metric, size_t n, int k) {
  std::map<size_t, std::vector<std::string>> truth;
  auto normalized = [&](const float* v, size_t d) {
    std::vector<float> out(v, v + d);
    if (metric == index::Metric::kCosine) index::NormalizeInPlace(out.data(), d);
    return out;
  };
  std::vector<float> rows(base.data);
  if (metric == index::Metric::kCosine) {
    for (size_t r = 0; r < base.count; ++r) index::NormalizeInPlace(&rows[r * base.dim], base.dim);
  }
  for (size_t q = 0; q < std::min(n, w.vectors.size()); ++q) {
    const std::vector<float> x = normalized(w.vectors[q].data(), w.vectors[q].size());
    std::vector<std::pair<float, size_t>> d(base.count);
    for (size_t r = 0; r < base.count; ++r) {
      const float* y = &rows[r * base.dim];
      float s = 0;
      if (metric == index::Metric::kL2) {
        for (size_t j = 0; j < base.dim; ++j) s += (x[j] - y[j]) * (x[j] - y[j]);
      } else {
        for (size_t j = 0; j < base.dim; ++j) s -= x[j] * y[j];
      }
      d[r] = {s, r};
    }
    const size_t kk = std::min<size_t>(k, d.size());
    std::partial_sort(d.begin(), d.begin() + kk, d.end());
    for (size_t i = 0; i < kk; ++i) truth[q].push_back(std::to_string(d[i].second));
  }
  return truth;
}

// Callback-API gRPC caller: each Start sends one call; `done` runs on a
// gRPC thread.
class GrpcCaller {
 public:
  GrpcCaller(const std::string& target, int channels, const std::string& service_config,
             const Workload* w)
      : w_(w) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    // gRPC resends a call the server never saw (a proxy's GOAWAY on a reload,
    // a refused stream) only while the whole request is still buffered; past
    // the default 256 KiB a large image call is committed and fails instead.
    // Buffer the largest request this run sends (deploy/README.md, clients).
    size_t largest = 0;
    for (const std::string& image : w->images) largest = std::max(largest, image.size());
    if (largest > (256 << 10)) {
      args.SetInt("grpc.per_rpc_retry_buffer_size", static_cast<int>(largest + (64 << 10)));
    }
    if (!service_config.empty()) args.SetServiceConfigJSON(service_config);
    for (int i = 0; i < std::max(1, channels); ++i) {
      args.SetInt("grpc.channel_id", i);  // distinct channels, not one shared subchannel
      stubs_.push_back(v1::ImageSearch::NewStub(
          grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args)));
    }
  }

  // With a queue, calls complete only inside Poll, on its caller's thread.
  void UseQueue(grpc::CompletionQueue* cq) { cq_ = cq; }

  // Spins on the queue (never sleeping), finishing calls, until `idle()`
  // after a completion.
  void Poll(const std::function<bool()>& idle) {
    const gpr_timespec now = gpr_time_0(GPR_CLOCK_MONOTONIC);
    while (!idle()) {
      void* tag = nullptr;
      bool ok = false;
      const auto r = cq_->AsyncNext(&tag, &ok, now);
      if (r == grpc::CompletionQueue::SHUTDOWN) return;
      if (r != grpc::CompletionQueue::GOT_EVENT) continue;
      auto* call = static_cast<Call*>(tag);
      Finish(call, call->status, call->batch);
    }
  }

  void Start(size_t query, bool keep_ids, std::function<void(Outcome)> done) {
    auto* call = new Call;
    call->query = query;
    call->keep_ids = keep_ids;
    call->done = std::move(done);
    call->ctx.set_deadline(std::chrono::system_clock::now() +
                           std::chrono::milliseconds(absl::GetFlag(FLAGS_timeout_ms)));
    auto& stub = *stubs_[next_++ % stubs_.size()];
    const size_t i = query % w_->size();
    if (w_->kind == "batch") {
      const int b = std::max(1, absl::GetFlag(FLAGS_batch));
      for (int j = 0; j < b; ++j) Fill(call->batch_req.add_requests(), (i * b + j) % w_->size());
      call->batch = true;
      if (cq_ != nullptr) {
        call->batch_reader = stub.PrepareAsyncSearchBatch(&call->ctx, call->batch_req, cq_);
        call->batch_reader->StartCall();
        call->batch_reader->Finish(&call->batch_resp, &call->status, call);
        return;
      }
      stub.async()->SearchBatch(&call->ctx, &call->batch_req, &call->batch_resp,
                                [call](grpc::Status s) { Finish(call, s, true); });
    } else {
      Fill(&call->req, i);
      if (cq_ != nullptr) {
        call->reader = stub.PrepareAsyncSearch(&call->ctx, call->req, cq_);
        call->reader->StartCall();
        call->reader->Finish(&call->resp, &call->status, call);
        return;
      }
      stub.async()->Search(&call->ctx, &call->req, &call->resp,
                           [call](grpc::Status s) { Finish(call, s, false); });
    }
  }

 private:
  struct Call {
    grpc::ClientContext ctx;
    v1::SearchRequest req;
    v1::SearchResponse resp;
    v1::SearchBatchRequest batch_req;
    v1::SearchBatchResponse batch_resp;
    size_t query = 0;
    bool keep_ids = false;
    bool batch = false;
    Clock::time_point sent = Clock::now();
    std::function<void(Outcome)> done;
    // Completion-queue mode only.
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::SearchResponse>> reader;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::SearchBatchResponse>> batch_reader;
  };

  void Fill(v1::SearchRequest* r, size_t i) const {
    r->set_top_k(static_cast<uint32_t>(absl::GetFlag(FLAGS_top_k)));
    r->set_ef(static_cast<uint32_t>(absl::GetFlag(FLAGS_ef)));
    if (w_->kind == "id") {
      r->set_id(w_->ids[i]);
    } else if (w_->kind == "image") {
      r->set_image(w_->images[i]);
    } else {
      *r->mutable_vector()->mutable_values() = {w_->vectors[i].begin(), w_->vectors[i].end()};
    }
  }

  static void Finish(Call* call, const grpc::Status& s, bool batch) {
    Outcome o;
    o.latency_s = Seconds(Clock::now() - call->sent);
    o.query = call->query;
    o.code =
        s.ok() ? "OK" : absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code()));
    o.message = s.error_message();
    if (s.ok()) {
      o.version =
          batch ? (call->batch_resp.responses_size() > 0 && call->batch_resp.snapshot_version() == 0
                       ? VersionOf(call->batch_resp.responses(0))
                       : std::to_string(call->batch_resp.snapshot_version()))
                : VersionOf(call->resp);
      if (call->keep_ids && !batch) {
        for (const auto& h : call->resp.hits()) o.ids.push_back(h.id());
      }
    }
    auto done = std::move(call->done);
    delete call;
    done(std::move(o));
  }

  const Workload* w_;
  std::vector<std::unique_ptr<v1::ImageSearch::Stub>> stubs_;
  std::atomic<size_t> next_{0};
  grpc::CompletionQueue* cq_ = nullptr;
};

// One blocking HTTP caller (keep-alive connection) per concurrent worker.
Outcome HttpCall(httplib::Client& client, const Workload& w, size_t query, bool keep_ids) {
  const size_t i = query % w.size();
  Outcome o;
  o.query = query;
  const auto sent = Clock::now();
  const std::string params =
      absl::StrCat("?top_k=", absl::GetFlag(FLAGS_top_k), "&ef=", absl::GetFlag(FLAGS_ef));
  // The body and the answer are the API's messages in proto3 JSON, as any
  // client with the generated classes would write and read them.
  v1::SearchRequest request;
  request.set_top_k(static_cast<uint32_t>(absl::GetFlag(FLAGS_top_k)));
  request.set_ef(static_cast<uint32_t>(absl::GetFlag(FLAGS_ef)));
  if (w.kind == "id") {
    request.set_id(w.ids[i]);
  } else if (w.kind != "image") {
    request.mutable_vector()->mutable_values()->Add(w.vectors[i].begin(), w.vectors[i].end());
  }
  std::string body;
  if (w.kind != "image") (void)google::protobuf::util::MessageToJsonString(request, &body);
  httplib::Result r = w.kind == "image"
                          ? client.Post("/invocations" + params, w.images[i], "application/x-image")
                          : client.Post("/invocations", body, "application/json");
  o.latency_s = Seconds(Clock::now() - sent);
  if (!r) {
    o.code = absl::StrCat("HTTP_", httplib::to_string(r.error()));
    return o;
  }
  if (r->status != 200) {
    o.code = absl::StrCat("HTTP ", r->status);
    return o;
  }
  v1::SearchResponse response;
  if (!google::protobuf::util::JsonStringToMessage(r->body, &response).ok()) {
    o.code = "BAD_RESPONSE";
    return o;
  }
  o.code = "OK";
  o.version = VersionOf(response);
  if (keep_ids) {
    for (const auto& h : response.hits()) o.ids.push_back(h.id());
  }
  return o;
}

double Percentile(std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const size_t i = std::min(sorted.size() - 1, static_cast<size_t>(p * sorted.size()));
  return sorted[i];
}

// Connections held open for the run (closed on destruction): idle ones send
// nothing; half-sent ones send the start of a request and stop.
class HeldConnections {
 public:
  HeldConnections(const std::string& host, int port, int idle, int half_sent) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host.c_str(), &addr.sin_addr);
    static constexpr char kPartial[] =
        "POST /invocations HTTP/1.1\r\nHost: loadgen\r\nContent-Type: image/jpeg\r\nContent-Le";
    for (int i = 0; i < idle + half_sent; ++i) {
      const int fd = socket(AF_INET, SOCK_STREAM, 0);
      if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        if (fd >= 0) close(fd);
        ++failed_;
        continue;
      }
      if (i >= idle && send(fd, kPartial, sizeof(kPartial) - 1, MSG_NOSIGNAL) < 0) ++failed_;
      fds_.push_back(fd);
    }
  }
  ~HeldConnections() {
    for (int fd : fds_) close(fd);
  }
  int opened() const { return static_cast<int>(fds_.size()); }
  int failed() const { return failed_; }

 private:
  std::vector<int> fds_;
  int failed_ = 0;
};

// GET /ping every `period` on a new connection, from its own thread.
class PingProbe {
 public:
  PingProbe(std::string host, int port, std::chrono::milliseconds period)
      : thread_([this, host = std::move(host), port, period] { Run(host, port, period); }) {}
  ~PingProbe() { Stop(); }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  // Latency percentiles (ms) and status mix; call after Stop.
  json Summary() {
    std::sort(latencies_.begin(), latencies_.end());
    return {{"probes", latencies_.size()},
            {"latency_ms",
             {{"p50", 1e3 * Percentile(latencies_, 0.50)},
              {"p99", 1e3 * Percentile(latencies_, 0.99)},
              {"max", latencies_.empty() ? 0.0 : 1e3 * latencies_.back()}}},
            {"codes", codes_}};
  }

 private:
  void Run(const std::string& host, int port, std::chrono::milliseconds period) {
    auto next = Clock::now();
    while (!stop_) {
      httplib::Client client(host, port);
      client.set_connection_timeout(std::chrono::seconds(10));
      client.set_read_timeout(std::chrono::seconds(10));
      const auto sent = Clock::now();
      httplib::Result r = client.Get("/ping");
      latencies_.push_back(Seconds(Clock::now() - sent));
      ++codes_[r ? absl::StrCat("HTTP ", r->status)
                 : absl::StrCat("HTTP_", httplib::to_string(r.error()))];
      next += period;
      std::this_thread::sleep_until(next);
    }
  }

  std::atomic<bool> stop_{false};
  std::vector<double> latencies_;
  std::map<std::string, int64_t> codes_;
  std::thread thread_;  // Last: starts once the rest is built.
};

int Run() {
  const std::string target = absl::GetFlag(FLAGS_target);
  const std::string http = absl::GetFlag(FLAGS_http);
  if (target.empty() == http.empty()) {
    std::cerr << "set exactly one of --target (gRPC host:port) or --http (host:port)\n";
    return 2;
  }
  const double duration_s = absl::GetFlag(FLAGS_duration_s);
  if (!(duration_s > 0 && duration_s <= 3600)) {
    std::cerr << "--duration_s must be in (0, 3600]\n";
    return 2;
  }
  auto workload = LoadWorkload();
  if (!workload.ok()) {
    std::cerr << "error: " << workload.status() << "\n";
    return 2;
  }
  const Workload& w = *workload;
  const double rate = absl::GetFlag(FLAGS_rate);
  if (rate > 0 && !http.empty()) {
    std::cerr << "--rate (open loop) is for gRPC only\n";
    return 2;
  }
  const bool poll = absl::GetFlag(FLAGS_poll);
  if (poll && (rate > 0 || !http.empty())) {
    std::cerr << "--poll is for the gRPC closed loop only (no --rate, no --http)\n";
    return 2;
  }

  std::map<size_t, std::vector<std::string>> truth;
  index::Metric metric = index::Metric::kCosine;
  const bool check_recall = !absl::GetFlag(FLAGS_base_vectors).empty();
  if (check_recall) {
    if (w.kind != "vector") {
      std::cerr << "--base_vectors (recall) needs --kind=vector\n";
      return 2;
    }
    auto m = index::ParseMetric(absl::GetFlag(FLAGS_metric));
    auto base = ReadVectorFile(absl::GetFlag(FLAGS_base_vectors));
    if (!m.ok() || !base.ok()) {
      std::cerr << "error: " << (m.ok() ? base.status() : m.status()) << "\n";
      return 2;
    }
    metric = *m;
    truth = ExactTopK(w, *base, metric, static_cast<size_t>(absl::GetFlag(FLAGS_recall_queries)),
                      absl::GetFlag(FLAGS_top_k));
  }
  auto keep = [&](size_t q) { return check_recall && truth.count(q % w.size()) > 0; };

  const auto start = Clock::now();
  const auto end = start + std::chrono::duration_cast<Clock::duration>(
                               std::chrono::duration<double>(duration_s));
  const int64_t max_requests = absl::GetFlag(FLAGS_max_requests);
  Recorder rec(start, absl::GetFlag(FLAGS_warmup_s));
  std::atomic<int64_t> issued{0};
  InstallStopHandler();
  auto may_issue = [&] {
    if (Clock::now() >= end || g_stop_requested.load(std::memory_order_relaxed)) return false;
    return max_requests <= 0 || issued.fetch_add(1) < max_requests;
  };
  auto stamp = [&](Outcome o) {
    o.finished_at_s = Seconds(Clock::now() - start);
    if (o.code == "OK" && !o.ids.empty()) o.query %= w.size();
    rec.Add(std::move(o));
  };

  std::thread reporter;
  std::atomic<bool> finished{false};
  if (absl::GetFlag(FLAGS_report_every_s) > 0) {
    reporter = std::thread([&] {
      const auto period = std::chrono::duration<double>(absl::GetFlag(FLAGS_report_every_s));
      auto next = start + std::chrono::duration_cast<Clock::duration>(period);
      while (!finished) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        if (Clock::now() >= next) {
          std::cerr << rec.Progress(Seconds(Clock::now() - start)) << "\n";
          next += std::chrono::duration_cast<Clock::duration>(period);
        }
      }
    });
  }

  const int concurrency = std::max(1, absl::GetFlag(FLAGS_concurrency));
  std::optional<PingProbe> ping;
  if (!http.empty()) {
    const auto colon = http.rfind(':');
    const std::string host = http.substr(0, colon);
    const int port = std::stoi(http.substr(colon + 1));
    const HeldConnections held(host, port, absl::GetFlag(FLAGS_idle_connections),
                               absl::GetFlag(FLAGS_half_sent_connections));
    if (held.opened() > 0 || held.failed() > 0) {
      std::cerr << "loadgen: holding " << held.opened() << " idle/half-sent connections ("
                << held.failed() << " failed to open)\n";
    }
    if (absl::GetFlag(FLAGS_ping_every_ms) > 0) {
      ping.emplace(host, port, std::chrono::milliseconds(absl::GetFlag(FLAGS_ping_every_ms)));
    }
    std::vector<std::thread> workers;
    std::atomic<size_t> next_query{0};
    for (int t = 0; t < concurrency; ++t) {
      workers.emplace_back([&] {
        httplib::Client client(host, port);
        client.set_keep_alive(true);
        client.set_tcp_nodelay(true);
        const auto timeout = std::chrono::milliseconds(absl::GetFlag(FLAGS_timeout_ms));
        client.set_read_timeout(timeout);
        client.set_write_timeout(timeout);
        while (may_issue()) {
          const size_t q = next_query++;
          stamp(HttpCall(client, w, q, keep(q)));
        }
      });
    }
    for (auto& t : workers) t.join();
    if (ping.has_value()) ping->Stop();
  } else {
    std::string service_config;
    if (!absl::GetFlag(FLAGS_service_config).empty()) {
      auto text = ReadFileToString(absl::GetFlag(FLAGS_service_config));
      if (!text.ok()) {
        std::cerr << "error: " << text.status() << "\n";
        return 2;
      }
      service_config = *std::move(text);
    }
    GrpcCaller caller(target, absl::GetFlag(FLAGS_channels), service_config, &w);
    std::unique_ptr<grpc::CompletionQueue> cq;
    if (poll) {
      cq = std::make_unique<grpc::CompletionQueue>();
      caller.UseQueue(cq.get());
    }
    std::mutex mu;
    std::condition_variable cv;
    int inflight = 0;
    std::atomic<size_t> next_query{0};
    std::function<void()> send;  // Outlives every call: callbacks use it.
    if (rate <= 0) {
      // Closed loop: each answer sends the next call.
      send = [&] {
        const size_t q = next_query++;
        caller.Start(q, keep(q), [&](Outcome o) {
          stamp(std::move(o));
          if (may_issue()) return send();
          std::lock_guard<std::mutex> lock(mu);
          if (--inflight == 0) cv.notify_all();
        });
      };
      for (int i = 0; i < concurrency; ++i) {
        if (!may_issue()) break;
        {
          std::lock_guard<std::mutex> lock(mu);
          ++inflight;
        }
        send();
      }
      if (poll) {
        caller.Poll([&] {
          std::lock_guard<std::mutex> lock(mu);
          return inflight == 0;
        });
      }
    } else {
      // Open loop: a fixed schedule; latency from the scheduled time.
      const int max_inflight = std::max(1, absl::GetFlag(FLAGS_max_inflight));
      for (int64_t n = 0;; ++n) {
        const auto due = start + std::chrono::duration_cast<Clock::duration>(
                                     std::chrono::duration<double>(n / rate));
        std::this_thread::sleep_until(due);
        if (!may_issue()) break;
        {
          std::lock_guard<std::mutex> lock(mu);
          if (inflight >= max_inflight) {
            Outcome o;
            o.code = "CLIENT_OVERLOADED";
            stamp(std::move(o));
            continue;
          }
          ++inflight;
        }
        const size_t q = next_query++;
        caller.Start(q, keep(q), [&, due](Outcome o) {
          o.latency_s = Seconds(Clock::now() - due);
          stamp(std::move(o));
          std::lock_guard<std::mutex> lock(mu);
          if (--inflight == 0) cv.notify_all();
        });
      }
    }
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return inflight == 0; });
    }
    if (cq != nullptr) {
      cq->Shutdown();
      void* tag;
      bool ok;
      while (cq->Next(&tag, &ok)) {
      }
    }
  }
  const double elapsed = Seconds(Clock::now() - start);
  finished = true;
  if (reporter.joinable()) reporter.join();

  std::lock_guard<std::mutex> lock(rec.mu_);
  std::sort(rec.latencies_.begin(), rec.latencies_.end());
  int64_t calls = 0;
  for (const auto& [code, n] : rec.codes_) calls += n;
  const int64_t ok = rec.codes_.count("OK") ? rec.codes_["OK"] : 0;
  const double counted_s = std::max(1e-9, elapsed - absl::GetFlag(FLAGS_warmup_s));
  const int per_call = w.kind == "batch" ? std::max(1, absl::GetFlag(FLAGS_batch)) : 1;
  json out = {{"target", http.empty() ? target : http},
              {"protocol", http.empty() ? "grpc" : "http"},
              {"kind", w.kind},
              {"mode", rate > 0 ? "open" : "closed"},
              {"poll", poll},
              {"concurrency", concurrency},
              {"rate", rate},
              {"seconds", counted_s},
              {"calls", calls},
              {"ok", ok},
              {"failed", calls - ok},
              {"qps", ok / counted_s},
              {"queries_per_s", ok * per_call / counted_s},
              {"latency_ms",
               {{"p50", 1e3 * Percentile(rec.latencies_, 0.50)},
                {"p90", 1e3 * Percentile(rec.latencies_, 0.90)},
                {"p99", 1e3 * Percentile(rec.latencies_, 0.99)},
                {"p999", 1e3 * Percentile(rec.latencies_, 0.999)},
                {"max", rec.latencies_.empty() ? 0.0 : 1e3 * rec.latencies_.back()}}},
              {"codes", rec.codes_},
              {"first_errors", rec.first_errors_},
              {"errors", rec.errors_}};
  json versions = json::object();
  for (const auto& [v, seen] : rec.versions_) {
    versions[v] = {{"count", seen.count}, {"first_s", seen.first_s}, {"last_s", seen.last_s}};
  }
  out["versions"] = versions;
  std::string ping_line;
  if (ping.has_value()) {
    out["ping"] = ping->Summary();
    std::string ping_codes;
    for (const auto& [code, n] : out["ping"]["codes"].items()) {
      absl::StrAppend(&ping_codes, " ", code, "=", n.get<int64_t>());
    }
    ping_line = absl::StrFormat("; /ping %d probes ms p50 %.2f p99 %.2f max %.2f codes:%s",
                                out["ping"]["probes"].get<int64_t>(),
                                out["ping"]["latency_ms"]["p50"].get<double>(),
                                out["ping"]["latency_ms"]["p99"].get<double>(),
                                out["ping"]["latency_ms"]["max"].get<double>(), ping_codes);
  }
  std::string recall_line;
  if (check_recall) {
    size_t hit = 0, total = 0;
    for (const auto& [q, want] : truth) {
      auto got = rec.answers_.find(q);
      if (got == rec.answers_.end()) continue;
      for (const auto& id : want) {
        total++;
        hit += std::find(got->second.begin(), got->second.end(), id) != got->second.end();
      }
    }
    const double recall = total ? static_cast<double>(hit) / total : 0;
    out["recall"] = {{"k", absl::GetFlag(FLAGS_top_k)},
                     {"queries", total / std::max(1, absl::GetFlag(FLAGS_top_k))},
                     {"value", recall}};
    recall_line = absl::StrFormat("  recall@%d %.4f over %d queries", absl::GetFlag(FLAGS_top_k),
                                  recall, total / std::max(1, absl::GetFlag(FLAGS_top_k)));
  }
  std::string codes;
  for (const auto& [code, n] : rec.codes_) absl::StrAppend(&codes, " ", code, "=", n);
  std::string vers;
  for (const auto& [v, seen] : rec.versions_) {
    const bool shards = v.find(':') != std::string::npos;  // "v{0:3,1:2}" through a router.
    absl::StrAppendFormat(&vers, " v%s%s%s:%d(%.2f-%.2fs)", shards ? "{" : "", v, shards ? "}" : "",
                          seen.count, seen.first_s, seen.last_s);
  }
  std::cout << absl::StrFormat(
                   "%s %s %s-loop%s c=%d: %d calls, %d failed in %.1fs: %.1f calls/s (%.1f "
                   "queries/s); latency ms p50 %.2f p90 %.2f p99 %.2f p99.9 %.2f; codes:%s; "
                   "versions:%s%s%s",
                   http.empty() ? "grpc" : "http", w.kind, rate > 0 ? "open" : "closed",
                   poll ? " polling" : "", concurrency, calls, calls - ok, counted_s,
                   ok / counted_s, ok * per_call / counted_s,
                   out["latency_ms"]["p50"].get<double>(), out["latency_ms"]["p90"].get<double>(),
                   out["latency_ms"]["p99"].get<double>(), out["latency_ms"]["p999"].get<double>(),
                   codes, vers, recall_line, ping_line)
            << std::endl;
  for (const auto& [code, first] : rec.first_errors_) {
    std::cout << "  first " << code << " at " << first << std::endl;
  }
  if (!absl::GetFlag(FLAGS_json_out).empty()) {
    absl::Status s = WriteFileDurably(absl::GetFlag(FLAGS_json_out), out.dump(2) + "\n");
    if (!s.ok()) {
      std::cerr << "error: " << s << "\n";
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace imagesearch

int main(int argc, char** argv) {
  imagesearch::InitBinary(
      "imagesearch-loadgen: closed- or open-loop load on the query service over gRPC or HTTP; "
      "QPS, latency percentiles, errors by code, versions seen, recall.",
      argc, argv, FLAGS_log_format);
  return imagesearch::Run();
}
