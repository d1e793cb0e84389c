// One shard of a sharded collection as imagesearch-router reaches it: a gRPC
// channel to the shard's replicas (client-side round_robin over a static
// list or a headless Service's DNS), and unary calls to it that are
//
//   - retried (twice) on UNAVAILABLE or CANCELLED (a replica that just died
//     or is shutting down: round_robin sends the retry to another one),
//     while the deadline allows;
//   - hedged: when no answer came within the hedge delay, the same request
//     goes to the next replica too; the first answer wins and the other call
//     is cancelled. The delay is fixed, or by default the p95 of the shard's
//     recent answers.
//
// Thread-safe.
#ifndef IMAGESEARCH_SERVICES_ROUTER_SHARD_CLIENT_H_
#define IMAGESEARCH_SERVICES_ROUTER_SHARD_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <queue>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "imagesearch/v1/imagesearch.grpc.pb.h"

namespace imagesearch::router {

// Told about each shard's calls, for metrics; called on gRPC's threads.
class ShardObserver {
 public:
  virtual ~ShardObserver() = default;
  // A logical call (its first attempt, retries and hedges together) ended
  // with `code` after `took`.
  virtual void OnCall(uint32_t shard, absl::StatusCode code, absl::Duration took) = 0;
  virtual void OnHedgeSent(uint32_t shard) = 0;
  virtual void OnHedgeWon(uint32_t shard) = 0;
  virtual void OnRetry(uint32_t shard) = 0;
};

struct ShardClientOptions {
  // Hedge after this long without an answer; zero: the shard's observed p95
  // (once kMinSamplesForP95 answers were seen, at least min_hedge_delay);
  // negative: never.
  absl::Duration hedge_delay = absl::ZeroDuration();
  absl::Duration min_hedge_delay = absl::Milliseconds(1);
  int retries = 2;                    // On UNAVAILABLE, while the deadline allows.
  ShardObserver* observer = nullptr;  // Optional; outlives the client.
};

struct ShardStats {
  uint64_t calls = 0, failures = 0, hedges_sent = 0, hedges_won = 0, retries = 0;
  absl::Duration p50, p95;  // Of recent answers; zero before any.
};

// Runs functions at given times on one thread of its own. A hedge timer per
// shard call must cost next to nothing: a grpc::Alarm measured about 120 us
// of CPU per call here (tools/bench/router_bench.py), this a heap push. Calls
// that finish first are not removed: their entry fires later and finds
// nothing to do (it holds only a weak pointer).
class HedgeTimer {
 public:
  static HedgeTimer& Get();  // Process-wide; its thread starts on first use.
  void At(absl::Time when, std::function<void()> fn);

 private:
  HedgeTimer();
  void Loop();
  struct Entry {
    absl::Time when;
    std::function<void()> fn;
    bool operator>(const Entry& o) const { return when > o.when; }
  };
  std::mutex mu_;
  std::condition_variable wake_;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap_;
  std::thread thread_;
};

// grpc::Status <-> absl::Status (the codes are the same numbers).
absl::Status FromGrpc(const grpc::Status& s);
grpc::Status ToGrpc(const absl::Status& s);

class ShardClient {
 public:
  static constexpr size_t kMinSamplesForP95 = 20;

  // `target`: a gRPC target ("dns:///shard-0.ns.svc:50051"), or a list of
  // host:port separated by commas (taken as "ipv4:" or "ipv6:" addresses).
  ShardClient(uint32_t index, const std::string& target, const ShardClientOptions& options);

  uint32_t index() const { return index_; }
  const std::string& target() const { return target_; }
  v1::ImageSearch::Stub* stub() { return stub_.get(); }
  ShardStats Stats() const;
  // The hedge delay now; negative: none.
  absl::Duration HedgeDelay() const;

  // Sends `request` with `start` (a lambda calling one of stub()->async()'s
  // methods) and calls `done` once with the answer or the last error.
  template <typename Request, typename Response>
  void Call(std::function<void(grpc::ClientContext*, const Request*, Response*,
                               std::function<void(grpc::Status)>)>
                start,
            Request request, absl::Time deadline,
            std::function<void(absl::StatusOr<Response>)> done);

 private:
  template <typename Request, typename Response>
  friend class HedgedCall;
  void Record(absl::Duration latency, bool ok);

  const uint32_t index_;
  const std::string target_;
  const ShardClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ImageSearch::Stub> stub_;
  mutable std::mutex mu_;
  std::vector<int64_t> latencies_us_;  // A ring of recent answers' latencies.
  size_t next_ = 0;
  static constexpr size_t kP95Every = 64;
  size_t since_p95_ = 0;  // Answers recorded since p95_ was taken.
  absl::Duration p95_;    // Of latencies_us_, for HedgeDelay.
  ShardStats stats_;
};

// One logical call to a shard: its attempts (the first, a retry, a hedge).
template <typename Request, typename Response>
class HedgedCall : public std::enable_shared_from_this<HedgedCall<Request, Response>> {
 public:
  using Start = std::function<void(grpc::ClientContext*, const Request*, Response*,
                                   std::function<void(grpc::Status)>)>;
  using Done = std::function<void(absl::StatusOr<Response>)>;

  HedgedCall(ShardClient* shard, Start start, Request request, absl::Time deadline, Done done)
      : shard_(shard),
        start_(std::move(start)),
        request_(std::move(request)),
        deadline_(deadline),
        done_(std::move(done)),
        retries_left_(shard->options_.retries) {}

  void Run() {
    Attempt* first = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      first = NewAttemptLocked(false);
    }
    const absl::Duration delay = shard_->HedgeDelay();
    if (delay >= absl::ZeroDuration() && absl::Now() + delay < deadline_) {
      HedgeTimer::Get().At(absl::Now() + delay, [weak = this->weak_from_this()] {
        if (auto self = weak.lock()) self->Hedge();
      });
    }
    Launch(first);
  }

 private:
  struct Attempt {
    grpc::ClientContext context;
    Response response;
    bool hedge = false;
    absl::Time started;
  };

  Attempt* NewAttemptLocked(bool hedge) {
    attempts_.push_back(std::make_unique<Attempt>());
    Attempt* a = attempts_.back().get();
    a->context.set_deadline(absl::ToChronoTime(deadline_));
    a->hedge = hedge;
    a->started = absl::Now();
    ++outstanding_;
    return a;
  }

  void Launch(Attempt* a) {
    auto self = this->shared_from_this();
    start_(&a->context, &request_, &a->response,
           [self, a](grpc::Status s) { self->OnDone(a, std::move(s)); });
  }

  void Hedge() {
    Attempt* a = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_ || outstanding_ == 0) return;
      a = NewAttemptLocked(true);
    }
    {
      std::lock_guard<std::mutex> lock(shard_->mu_);
      ++shard_->stats_.hedges_sent;
    }
    if (ShardObserver* o = shard_->options_.observer) o->OnHedgeSent(shard_->index_);
    Launch(a);
  }

  // UNAVAILABLE: the replica is gone or going. CANCELLED: the replica
  // cancelled it (a server shutting down cancels what it has not answered);
  // this router cancels only the losers of a hedge, after the call finished.
  static bool Retryable(const grpc::Status& s) {
    return s.error_code() == grpc::StatusCode::UNAVAILABLE ||
           s.error_code() == grpc::StatusCode::CANCELLED;
  }

  void OnDone(Attempt* a, grpc::Status s) {
    std::unique_lock<std::mutex> lock(mu_);
    --outstanding_;
    if (finished_) return;  // The loser of a hedge, cancelled.
    shard_->Record(absl::Now() - a->started, s.ok());
    if (s.ok()) {
      finished_ = true;
      for (auto& other : attempts_) {
        if (other.get() != a) other->context.TryCancel();
      }
      lock.unlock();
      if (a->hedge) {
        {
          std::lock_guard<std::mutex> stats(shard_->mu_);
          ++shard_->stats_.hedges_won;
        }
        if (ShardObserver* o = shard_->options_.observer) o->OnHedgeWon(shard_->index_);
      }
      done_(std::move(a->response));
      return;
    }
    if (Retryable(s) && retries_left_ > 0 && absl::Now() + absl::Milliseconds(1) < deadline_) {
      --retries_left_;
      Attempt* retry = NewAttemptLocked(a->hedge);
      lock.unlock();
      {
        std::lock_guard<std::mutex> stats(shard_->mu_);
        ++shard_->stats_.retries;
      }
      if (ShardObserver* o = shard_->options_.observer) o->OnRetry(shard_->index_);
      Launch(retry);
      return;
    }
    last_error_ = s;
    if (outstanding_ > 0) return;  // Another attempt may still answer.
    finished_ = true;
    lock.unlock();
    done_(FromGrpc(last_error_));
  }

  ShardClient* const shard_;
  const Start start_;
  const Request request_;
  const absl::Time deadline_;
  const Done done_;
  std::mutex mu_;
  std::vector<std::unique_ptr<Attempt>> attempts_;
  int outstanding_ = 0;
  int retries_left_;
  bool finished_ = false;
  grpc::Status last_error_;
};

template <typename Request, typename Response>
void ShardClient::Call(std::function<void(grpc::ClientContext*, const Request*, Response*,
                                          std::function<void(grpc::Status)>)>
                           start,
                       Request request, absl::Time deadline,
                       std::function<void(absl::StatusOr<Response>)> done) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.calls;
  }
  auto call = std::make_shared<HedgedCall<Request, Response>>(
      this, std::move(start), std::move(request), deadline,
      [this, started = absl::Now(), done = std::move(done)](absl::StatusOr<Response> r) {
        if (!r.ok()) {
          std::lock_guard<std::mutex> lock(mu_);
          ++stats_.failures;
        }
        if (options_.observer != nullptr) {
          options_.observer->OnCall(index_, r.status().code(), absl::Now() - started);
        }
        done(std::move(r));
      });
  call->Run();
}

}  // namespace imagesearch::router

#endif  // IMAGESEARCH_SERVICES_ROUTER_SHARD_CLIENT_H_
