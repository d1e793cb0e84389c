// Benchmark helper: a real imagesearch-query started as a child process
// (optionally pinned to one core with taskset) and closed-loop gRPC clients
// that drive it, for search_bench and faiss_bench. Header-only, not for
// production.
#ifndef IMAGESEARCH_TOOLS_BENCH_SERVICE_CLIENT_H_
#define IMAGESEARCH_TOOLS_BENCH_SERVICE_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "imagesearch/v1/imagesearch.grpc.pb.h"
#include "tests/integration/server_process.h"
#include "tools/bench/bench_util.h"

namespace imagesearch::bench {

// Runs `one(i)` for i = t, t + threads, ... (mod n) from `threads` threads,
// each pinned to `cpu` (-1: not pinned), for `seconds`; returns calls/s.
template <typename Fn>
double ClosedLoopQps(int threads, double seconds, size_t n, Fn one, int cpu = -1) {
  using Clock = std::chrono::steady_clock;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> done{0};
  std::vector<std::thread> ts;
  const auto start = Clock::now();
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      PinTo(cpu);
      uint64_t local = 0;
      for (size_t i = static_cast<size_t>(t); !stop; i += static_cast<size_t>(threads), ++local) {
        one(t, i % n);
      }
      done += local;
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& th : ts) th.join();
  return done / std::chrono::duration<double>(Clock::now() - start).count();
}

// imagesearch-query on `root` with default flags (plus --verify=sizes), or
// any server of the ImageSearch API that prints "listening on port N" (the
// floor server of grpc_floor_server.cc), and one gRPC connection per client
// thread.
class ServiceUnderTest {
 public:
  // server_cpu >= 0 runs the whole service under `taskset -c server_cpu`.
  // Threads this constructor makes (gRPC's client threads) inherit the
  // caller's affinity: pin the caller first to keep them off the server's core.
  ServiceUnderTest(const std::string& binary, const std::string& root, const std::string& log_path,
                   int server_cpu, int clients)
      : ServiceUnderTest(binary,
                         std::vector<std::string>{"--snapshot_root=" + root, "--verify=sizes"},
                         log_path, server_cpu, clients) {}

  // `binary` with `args` (and --port=0 --host=127.0.0.1).
  ServiceUnderTest(const std::string& binary, std::vector<std::string> args,
                   const std::string& log_path, int server_cpu, int clients) {
    std::string exe = binary;
    if (server_cpu >= 0) {
      args.insert(args.begin(), {"-c", std::to_string(server_cpu), binary});
      exe = "/usr/bin/taskset";
    }
    server_ = std::make_unique<testing::ServerProcess>(exe, args, log_path);
    if (server_->port() == 0) return;
    grpc::ChannelArguments channel_args;
    channel_args.SetInt("grpc.use_local_subchannel_pool", 1);
    for (int c = 0; c < clients; ++c) {
      channel_args.SetInt("imagesearch.client", c);  // One connection per client thread.
      stubs_.push_back(v1::ImageSearch::NewStub(grpc::CreateCustomChannel(
          server_->address(), grpc::InsecureChannelCredentials(), channel_args)));
    }
  }

  bool started() const { return server_->port() != 0 && !stubs_.empty(); }
  int clients() const { return static_cast<int>(stubs_.size()); }

  grpc::Status Search(int client, const v1::SearchRequest& req, v1::SearchResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return stubs_[static_cast<size_t>(client)]->Search(&ctx, req, resp);
  }

  grpc::Status SearchBatch(int client, const v1::SearchBatchRequest& req,
                           v1::SearchBatchResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return stubs_[static_cast<size_t>(client)]->SearchBatch(&ctx, req, resp);
  }

  // Polls with `probe` until a Search succeeds (at most `seconds`).
  bool WaitServing(const v1::SearchRequest& probe, double seconds = 30) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < until) {
      v1::SearchResponse r;
      if (Search(0, probe, &r).ok()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  // Unary Search of reqs[i % n] from every client thread (pinned to `cpu`)
  // for `seconds`: queries/s. Failed calls are added to *failures.
  double UnaryQps(const std::vector<v1::SearchRequest>& reqs, double seconds, int cpu,
                  std::atomic<uint64_t>* failures) {
    return ClosedLoopQps(
        clients(), seconds, reqs.size(),
        [&](int c, size_t i) {
          v1::SearchResponse r;
          if (!Search(c, reqs[i], &r).ok()) ++*failures;
        },
        cpu);
  }

  // Unary Search of reqs[i % n] with clients() calls in flight (one per
  // connection) from ONE thread on `cpu` that spins on its completion queue
  // instead of sleeping in epoll_wait: queries/s. On loopback the server's
  // sendmsg runs the client's TCP input and, when the client's thread
  // sleeps, wakes it: on this KVM guest (cpuidle haltpoll with
  // guest_halt_poll_ns=0) that is an interrupt to a halted vCPU, paid on the
  // server's core. Over a network the client's own machine pays it; a client
  // that never sleeps takes that cost off the server's core, as the
  // in-process contenders never pay it. Failed calls are added to *failures.
  double PolledUnaryQps(const std::vector<v1::SearchRequest>& reqs, double seconds, int cpu,
                        std::atomic<uint64_t>* failures) {
    if (reqs.empty()) return 0;
    double qps = 0;
    std::thread runner([&] {
      PinTo(cpu);
      struct Call {
        grpc::ClientContext ctx;
        v1::SearchResponse resp;
        grpc::Status status;
        std::unique_ptr<grpc::ClientAsyncResponseReader<v1::SearchResponse>> reader;
      };
      grpc::CompletionQueue cq;
      const size_t n = reqs.size();
      size_t next = 0;
      auto start_call = [&](int c, std::unique_ptr<Call>& slot) {
        slot = std::make_unique<Call>();
        slot->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
        slot->reader =
            stubs_[static_cast<size_t>(c)]->PrepareAsyncSearch(&slot->ctx, reqs[next++ % n], &cq);
        slot->reader->StartCall();
        slot->reader->Finish(&slot->resp, &slot->status, reinterpret_cast<void*>(intptr_t{c}));
      };
      std::vector<std::unique_ptr<Call>> calls(stubs_.size());
      for (int c = 0; c < clients(); ++c) start_call(c, calls[static_cast<size_t>(c)]);
      using Clock = std::chrono::steady_clock;
      const auto begin = Clock::now();
      const auto until = begin + std::chrono::duration<double>(seconds);
      uint64_t done = 0;
      int in_flight = clients();
      bool stopping = false;
      const gpr_timespec now_deadline = gpr_time_0(GPR_CLOCK_MONOTONIC);
      while (in_flight > 0) {
        void* tag = nullptr;
        bool ok = false;
        const auto r = cq.AsyncNext(&tag, &ok, now_deadline);
        if (r == grpc::CompletionQueue::SHUTDOWN) break;
        if (r != grpc::CompletionQueue::GOT_EVENT) continue;
        const int c = static_cast<int>(reinterpret_cast<intptr_t>(tag));
        auto& slot = calls[static_cast<size_t>(c)];
        if (!ok || !slot->status.ok()) ++*failures;
        ++done;
        if (!stopping && Clock::now() >= until) stopping = true;
        if (stopping) {
          --in_flight;
        } else {
          start_call(c, slot);
        }
      }
      qps = done / std::chrono::duration<double>(Clock::now() - begin).count();
      cq.Shutdown();
      void* tag;
      bool ok;
      while (cq.Next(&tag, &ok)) {
      }
    });
    runner.join();
    return qps;
  }

  // SearchBatch calls of batches[i % n] likewise: queries/s (calls/s times
  // the batch size).
  double BatchQps(const std::vector<v1::SearchBatchRequest>& batches, double seconds, int cpu,
                  std::atomic<uint64_t>* failures) {
    if (batches.empty()) return 0;
    const int size = batches.front().requests_size();
    return size * ClosedLoopQps(
                      clients(), seconds, batches.size(),
                      [&](int c, size_t i) {
                        v1::SearchBatchResponse r;
                        if (!SearchBatch(c, batches[i], &r).ok() || r.responses_size() != size)
                          ++*failures;
                      },
                      cpu);
  }

 private:
  std::unique_ptr<testing::ServerProcess> server_;
  std::vector<std::unique_ptr<v1::ImageSearch::Stub>> stubs_;
};

// Search requests for nq vectors of `dim` (row-major), with top_k and ef.
inline std::vector<v1::SearchRequest> VectorRequests(const float* queries, size_t nq, size_t dim,
                                                     size_t top_k, size_t ef) {
  std::vector<v1::SearchRequest> reqs(nq);
  for (size_t q = 0; q < nq; ++q) {
    reqs[q].mutable_vector()->mutable_values()->Add(&queries[q * dim], &queries[(q + 1) * dim]);
    reqs[q].set_top_k(static_cast<uint32_t>(top_k));
    reqs[q].set_ef(static_cast<uint32_t>(ef));
  }
  return reqs;
}

// Consecutive groups of `batch` requests (a tail shorter than `batch` is dropped).
inline std::vector<v1::SearchBatchRequest> Batches(const std::vector<v1::SearchRequest>& reqs,
                                                   size_t batch) {
  std::vector<v1::SearchBatchRequest> out;
  for (size_t q = 0; q + batch <= reqs.size(); q += batch) {
    v1::SearchBatchRequest b;
    for (size_t j = 0; j < batch; ++j) *b.add_requests() = reqs[q + j];
    out.push_back(std::move(b));
  }
  return out;
}

}  // namespace imagesearch::bench

#endif  // IMAGESEARCH_TOOLS_BENCH_SERVICE_CLIENT_H_
