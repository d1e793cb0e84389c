// Image-query throughput, measured side by side in one run on one machine:
//   (a) the encoder in-process: ModelBundle::EncodeImages on images
//       preprocessed beforehand, for each batch size of --batches; the best
//       of them is the reference. Decode+preprocess alone is printed too.
//   (b) the real imagesearch-query binary with its default flags (plus
//       --server_args), driven over loopback by --clients closed-loop calls
//       in flight (gRPC callback API) sending Search{image, top_k: 10},
//       round-robin over the images.
// Contenders take turns, --rounds times, and the median is reported, so a
// shared machine's drift does not favour one of them.
// Prints QPS, latency p50/p99, errors by status code and the ratio (b)/(a);
// with --compare_max_batch1, also the service with --max_batch=1 at the
// largest client count.
//
//   image_query_bench --query_binary=build/services/query/imagesearch-query
//       --indexer_binary=build/services/indexer/imagesearch-indexer
//       --model=build/models/default/model.pt --images=queries/ [--seconds=5]
#include <grpcpp/grpcpp.h>
#include <stdlib.h>
#include <sys/wait.h>
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
#include <mutex>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "imagesearch/v1/imagesearch.grpc.pb.h"
#include "libs/model/model_bundle.h"
#include "tests/integration/server_process.h"
#include "tools/bench/bench_util.h"
#include "tools/bench/encoder_layouts.h"

ABSL_FLAG(std::string, query_binary, "", "Path of imagesearch-query.");
ABSL_FLAG(std::string, indexer_binary, "",
          "Path of imagesearch-indexer; used only when --snapshot_root is empty.");
ABSL_FLAG(std::string, model, "build/models/default/model.pt", "model.pt.");
ABSL_FLAG(std::string, images, "", "Directory of image files used as queries (not recursive).");
ABSL_FLAG(std::string, snapshot_root, "",
          "Snapshot root built with --model; empty: index --images into a temp dir.");
ABSL_FLAG(double, seconds, 5, "Measuring time per measurement.");
ABSL_FLAG(std::vector<std::string>, clients, (std::vector<std::string>{"1", "8", "32"}),
          "Concurrent client counts.");
ABSL_FLAG(std::vector<std::string>, batches,
          (std::vector<std::string>{"1", "2", "4", "8", "16", "32"}),
          "Batch sizes of the in-process encoder sweep.");
ABSL_FLAG(std::string, server_args, "", "Extra flags for the service, space-separated.");
ABSL_FLAG(int, rounds, 3,
          "Rounds; each measures every contender once, and the median round is reported.");
ABSL_FLAG(bool, compare_max_batch1, true,
          "Also run the service with --max_batch=1 at the largest client count.");

namespace imagesearch {
namespace {

using bench::Median;

using Clock = std::chrono::steady_clock;
constexpr uint64_t kMaxIterations = 10'000'000;  // Every loop is bounded by count, too.
constexpr int kTopK = 10;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::vector<int> ParseInts(const std::vector<std::string>& list) {
  std::vector<int> out;
  for (const std::string& s : list) {
    int v = 0;
    if (absl::SimpleAtoi(s, &v) && v > 0) out.push_back(v);
  }
  return out;
}

// Runs `argv` to completion with stdout and stderr into `log`; returns the exit status.
int RunToCompletion(std::vector<std::string> argv, const std::string& log) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    FILE* f = std::fopen(log.c_str(), "w");
    if (f != nullptr) {
      ::dup2(::fileno(f), STDOUT_FILENO);
      ::dup2(::fileno(f), STDERR_FILENO);
    }
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

struct ServiceResult {
  double qps = 0;
  double p50_ms = 0, p99_ms = 0;
  uint64_t ok = 0;
  std::map<int, uint64_t> errors;  // grpc::StatusCode -> count
};

// `clients` calls kept in flight (closed loop) over one shared channel with
// gRPC's callback API, as imagesearch-loadgen drives a service: each answer
// starts the next call from gRPC's own thread, so the client adds no threads
// of its own to the two cores the model runs on. (A first version used one
// blocking thread per client; with 8-32 such threads waking for every answer
// the same service measured up to ~10% lower.) 1 s of warm-up, then `seconds`
// of measurement (calls that complete inside the window count).
ServiceResult MeasureService(v1::ImageSearch::Stub* stub,
                             const std::vector<v1::SearchRequest>& reqs, int clients,
                             double seconds) {
  struct Loop {
    v1::ImageSearch::Stub* stub;
    const std::vector<v1::SearchRequest>* reqs;
    Clock::time_point begin, end;
    std::atomic<uint64_t> next{0};
    std::mutex mu;
    std::condition_variable cv;
    int running = 0;
    ServiceResult r;
    std::vector<double> latencies;

    // One call; its callback records it and starts the next until `end`.
    void Start() {
      struct Call {
        grpc::ClientContext ctx;
        v1::SearchResponse resp;
        Clock::time_point t0;
      };
      auto* call = new Call;
      call->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      call->t0 = Clock::now();
      const v1::SearchRequest& req = (*reqs)[next++ % reqs->size()];
      stub->async()->Search(&call->ctx, &req, &call->resp, [this, call](grpc::Status s) {
        const auto t1 = Clock::now();
        {
          std::lock_guard<std::mutex> lock(mu);
          if (t1 >= begin && t1 <= end) {
            if (s.ok()) {
              ++r.ok;
              latencies.push_back(std::chrono::duration<double, std::milli>(t1 - call->t0).count());
            } else {
              ++r.errors[s.error_code()];
            }
          }
        }
        delete call;
        if (t1 < end) {
          Start();
          return;
        }
        std::lock_guard<std::mutex> lock(mu);
        if (--running == 0) cv.notify_all();
      });
    }
  } loop;
  loop.stub = stub;
  loop.reqs = &reqs;
  loop.begin = Clock::now() + std::chrono::seconds(1);
  loop.end = loop.begin +
             std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  loop.running = clients;
  for (int c = 0; c < clients; ++c) loop.Start();
  {
    std::unique_lock<std::mutex> lock(loop.mu);
    loop.cv.wait(lock, [&] { return loop.running == 0; });
  }
  ServiceResult r = loop.r;
  std::vector<double>& latencies = loop.latencies;
  r.qps = r.ok / seconds;
  std::sort(latencies.begin(), latencies.end());
  auto pct = [&](double p) {
    return latencies.empty() ? 0.0
                             : latencies[std::min(latencies.size() - 1,
                                                  static_cast<size_t>(p * latencies.size()))];
  };
  r.p50_ms = pct(0.50);
  r.p99_ms = pct(0.99);
  return r;
}

// A running service with a loaded model, and a stub to it.
struct Service {
  std::unique_ptr<testing::ServerProcess> process;
  std::unique_ptr<v1::ImageSearch::Stub> stub;
};

// Starts the service and waits for its model; null stub if it did not come up.
Service StartService(const std::string& root, std::vector<std::string> extra,
                     const std::string& log) {
  const std::string binary = absl::GetFlag(FLAGS_query_binary);
  std::vector<std::string> args = {"--snapshot_root=" + root};
  args.insert(args.end(), extra.begin(), extra.end());
  std::printf("service: %s %s --port=0 --host=127.0.0.1  (stderr: %s)\n", binary.c_str(),
              absl::StrJoin(args, " ").c_str(), log.c_str());
  std::fflush(stdout);
  Service s;
  s.process = std::make_unique<testing::ServerProcess>(binary, args, log);
  if (s.process->port() == 0) {
    std::cerr << "query service did not start, see " << log << "\n";
    return s;
  }
  auto channel = grpc::CreateChannel(s.process->address(), grpc::InsecureChannelCredentials());
  auto stub = v1::ImageSearch::NewStub(channel);
  const auto t0 = Clock::now();
  bool ready = false;
  for (int i = 0; i < 1200 && !ready && s.process->Alive(); ++i) {  // At most ~2 min.
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
    v1::GetInfoResponse info;
    ready = stub->GetInfo(&ctx, v1::GetInfoRequest(), &info).ok() && info.model().loaded();
    if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (!ready) {
    std::cerr << "query service never reported a loaded model, see " << log << "\n";
    return s;
  }
  std::printf("  ready (model loaded) %.2fs after the port opened\n", Since(t0));
  s.stub = std::move(stub);
  return s;
}

// The round whose QPS is the median of `runs`.
ServiceResult MedianRun(std::vector<ServiceResult> runs) {
  std::sort(runs.begin(), runs.end(),
            [](const ServiceResult& a, const ServiceResult& b) { return a.qps < b.qps; });
  return runs[runs.size() / 2];
}

int Run() {
  const double secs = absl::GetFlag(FLAGS_seconds);
  const std::vector<int> clients = ParseInts(absl::GetFlag(FLAGS_clients));
  const std::vector<int> batches = ParseInts(absl::GetFlag(FLAGS_batches));
  if (clients.empty() || batches.empty() || absl::GetFlag(FLAGS_images).empty()) {
    std::cerr << "need --images, --clients and --batches\n";
    return 1;
  }

  // Query images: every regular file of --images, in name order.
  std::vector<std::string> paths, encoded;
  for (const auto& e : std::filesystem::directory_iterator(absl::GetFlag(FLAGS_images))) {
    if (e.is_regular_file()) paths.push_back(e.path().string());
  }
  std::sort(paths.begin(), paths.end());
  for (const std::string& p : paths) {
    std::ifstream in(p, std::ios::binary);
    encoded.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }

  // (a) In-process encoder, in each thread layout (encoder_layouts.h).
  auto layouts = bench::LoadEncoderLayouts(absl::GetFlag(FLAGS_model));
  if (!layouts.ok()) {
    std::cerr << layouts.status() << "\n";
    return 1;
  }
  const model::ModelBundle* bundle = layouts->front().bundle.get();
  std::vector<image::RgbImage> images;
  std::vector<std::string> queries;  // The encoded images that preprocess; the rest are dropped.
  for (size_t i = 0; i < encoded.size(); ++i) {
    auto img = bundle->PreprocessImage(encoded[i]);
    if (!img.ok()) {
      std::printf("skipping %s: %s\n", paths[i].c_str(), img.status().ToString().c_str());
      continue;
    }
    images.push_back(std::move(*img));
    queries.push_back(std::move(encoded[i]));
  }
  if (images.empty()) {
    std::cerr << "no usable images in " << absl::GetFlag(FLAGS_images) << "\n";
    return 1;
  }
  std::printf("%zu query images, model %s (%d-d, %dpx)\n", images.size(),
              bundle->info().name.c_str(), bundle->dim(), bundle->info().image_size);

  uint64_t decoded = 0;
  auto t0 = Clock::now();
  while (decoded < kMaxIterations && Since(t0) < secs) {
    (void)bundle->PreprocessImage(queries[decoded++ % queries.size()]);
  }
  const double preprocess_rate = decoded / Since(t0);

  // Snapshot.
  char tmpl[] = "/tmp/imagesearch_image_query_bench.XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return 1;
  const std::string workdir = tmpl;
  std::string root = absl::GetFlag(FLAGS_snapshot_root);
  if (root.empty()) {
    root = workdir + "/root";
    const std::vector<std::string> argv = {
        absl::GetFlag(FLAGS_indexer_binary), "--input=" + absl::GetFlag(FLAGS_images),
        "--root=" + root, "--model=" + absl::GetFlag(FLAGS_model), "--progress=none"};
    std::printf("indexing: %s\n", absl::StrJoin(argv, " ").c_str());
    std::fflush(stdout);
    const int rc = RunToCompletion(argv, workdir + "/indexer.log");
    if (rc != 0) {
      std::cerr << "indexer failed (exit " << rc << "), see " << workdir << "/indexer.log\n";
      return 1;
    }
  }

  // The services stay up (idle) for the whole run; every round measures
  // every contender once, so slow drifts of a shared machine hit all alike.
  std::vector<v1::SearchRequest> reqs(queries.size());
  for (size_t i = 0; i < queries.size(); ++i) {
    reqs[i].set_image(queries[i]);
    reqs[i].set_top_k(kTopK);
  }
  std::vector<std::string> extra =
      absl::StrSplit(absl::GetFlag(FLAGS_server_args), absl::ByAnyChar(" \t"), absl::SkipEmpty());
  Service service = StartService(root, extra, workdir + "/query.log");
  if (!service.stub) return 1;
  const int max_clients = clients.back();
  Service mb1;
  if (absl::GetFlag(FLAGS_compare_max_batch1)) {
    extra.push_back("--max_batch=1");
    mb1 = StartService(root, extra, workdir + "/query_max_batch1.log");
    if (!mb1.stub) return 1;
  }
  const int rounds = std::max(1, absl::GetFlag(FLAGS_rounds));
  // Per (layout, batch): images/s in each round.
  std::map<std::pair<size_t, int>, std::vector<double>> encoder_runs;
  std::map<int, std::vector<ServiceResult>> service_runs;
  std::vector<ServiceResult> mb1_runs;
  for (int round = 0; round < rounds; ++round) {
    for (size_t l = 0; l < layouts->size(); ++l) {
      for (int b : batches) {
        const double rate = bench::MeasureEncoder((*layouts)[l], images, b, secs);
        if (rate < 0) return 1;
        encoder_runs[{l, b}].push_back(rate);
      }
    }
    for (int c : clients) {
      service_runs[c].push_back(MeasureService(service.stub.get(), reqs, c, secs));
    }
    if (mb1.stub) mb1_runs.push_back(MeasureService(mb1.stub.get(), reqs, max_clients, secs));
    std::printf("  round %d/%d done\n", round + 1, rounds);
    std::fflush(stdout);
  }
  std::printf("  service exit status after SIGTERM: %d\n", service.process->Terminate());
  if (mb1.process) std::printf("  max_batch=1 service exit status: %d\n", mb1.process->Terminate());

  double best_rate = 0;
  std::string best_name;
  for (const auto& [key, runs] : encoder_runs) {
    const double rate = Median(runs);
    if (rate > best_rate) {
      best_rate = rate;
      best_name = absl::StrCat((*layouts)[key.first].name, " batch=", key.second);
    }
  }

  std::printf(
      "\n%zu query images, %.1fs per measurement, median of %d rounds, "
      "Search{image, top_k: %d}\n",
      queries.size(), secs, rounds, kTopK);
  std::printf("decode+preprocess alone, 1 thread         %8.2f img/s\n", preprocess_rate);
  for (const auto& [key, runs] : encoder_runs) {
    std::printf("in-process encoder  %s batch=%-3d         %8.2f img/s\n",
                (*layouts)[key.first].name.c_str(), key.second, Median(runs));
  }
  std::printf(
      "(layout RxT: R threads each running the model on its own batches, T intra-op "
      "threads each)\n");
  std::printf("in-process encoder  best: %-14s %8.2f img/s  (reference)\n", best_name.c_str(),
              best_rate);
  std::printf("%-26s %9s %7s %9s %9s  %s\n", "", "QPS", "ratio", "p50 ms", "p99 ms", "errors");
  uint64_t errors = 0;
  auto row = [&](const std::string& name, const ServiceResult& r) {
    std::vector<std::string> errs;  // "code<grpc::StatusCode>=<count>"
    for (auto& [code, n] : r.errors) {
      errs.push_back(absl::StrCat("code", code, "=", n));
      errors += n;
    }
    std::printf("%-26s %9.2f %7.3f %9.1f %9.1f  %s\n", name.c_str(), r.qps, r.qps / best_rate,
                r.p50_ms, r.p99_ms, errs.empty() ? "0" : absl::StrJoin(errs, ",").c_str());
  };
  for (int c : clients) {
    row("service clients=" + std::to_string(c), MedianRun(service_runs[c]));
  }
  if (!mb1_runs.empty()) {
    const ServiceResult m = MedianRun(mb1_runs);
    row("max_batch=1 clients=" + std::to_string(max_clients), m);
    std::printf("default / max_batch=1 at clients=%d: %.3f\n", max_clients,
                m.qps > 0 ? MedianRun(service_runs[max_clients]).qps / m.qps : 0.0);
  }
  std::printf("ratio = service QPS / best in-process img/s (medians over rounds)\n");
  // The same ratio taken within each round (the service against the encoder
  // measured a minute earlier in that round), then the median and range over
  // rounds: the host's speed drifts by +-15% from minute to minute.
  std::printf("per-round ratios (median, min-max over %d rounds):", rounds);
  for (int c : clients) {
    std::vector<double> ratios;
    for (int round = 0; round < rounds; ++round) {
      double best = 0;
      for (const auto& [key, runs] : encoder_runs) {
        best = std::max(best, runs[static_cast<size_t>(round)]);
      }
      ratios.push_back(best > 0 ? service_runs[c][static_cast<size_t>(round)].qps / best : 0.0);
    }
    std::sort(ratios.begin(), ratios.end());
    std::printf("  clients=%d %.3f (%.3f-%.3f)", c, Median(ratios), ratios.front(), ratios.back());
  }
  std::printf("\n");
  if (errors == 0) {
    std::filesystem::remove_all(workdir);
  } else {
    std::printf("logs kept in %s\n", workdir.c_str());
  }
  return errors == 0 ? 0 : 1;
}

}  // namespace
}  // namespace imagesearch

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return imagesearch::Run();
}
