// One shard of a sharded collection as imagesearch-router reaches it: one
// gRPC channel per replica (a static list of addresses, or the addresses a
// headless Service's DNS name resolves to, looked up again every few
// seconds), each call sent to the replica that looks least loaded (the
// cheaper of two by recent latency and calls in flight, replica_load.h; a
// replica whose channel is failing is passed over while another is not), and
// unary calls that are
//
//   - retried (twice) on UNAVAILABLE or CANCELLED (a replica that just died
//     or is shutting down), each retry on a replica this call has not tried
//     yet, while the deadline allows;
//   - hedged: when no answer came within the hedge delay, the same request
//     goes to another replica too (one not tried yet: a channel that
//     balances by itself could send it to the slow one again); the first
//     answer wins and the other call is cancelled. The delay is fixed, or
//     by default the p95 of the recent answers of the shard's fastest
//     replica.
//
// Thread-safe.
#ifndef IMAGESEARCH_SERVICES_ROUTER_SHARD_CLIENT_H_
#define IMAGESEARCH_SERVICES_ROUTER_SHARD_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/arena.h"
#include "imagesearch/v1/imagesearch.grpc.pb.h"
#include "libs/rpc/completion_threads.h"
#include "libs/rpc/served_call.h"
#include "services/router/replica_load.h"

namespace imagesearch::router {

using rpc::CompletionThreads;
using rpc::CqTag;
using rpc::FromGrpc;
using rpc::ToGrpc;

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
  // Hedge after this long without an answer; zero: the observed p95 of the
  // shard's fastest replica (once one has kMinSamplesForP95 answers; at
  // least min_hedge_delay);
  // negative: never.
  absl::Duration hedge_delay = absl::ZeroDuration();
  absl::Duration min_hedge_delay = absl::Milliseconds(1);
  int retries = 2;                    // On UNAVAILABLE, while the deadline allows.
  ShardObserver* observer = nullptr;  // Optional; outlives the client.
  // Sent as "authorization" metadata on every call ("Bearer <token>", for
  // replicas run with --auth_token_file); empty: none.
  std::string authorization;
  // How channels to the replicas are secured; null: plaintext.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // How often every replica of the shard is asked again whether it serves
  // it (ShardClient::Verify).
  absl::Duration recheck_every = absl::Seconds(10);
  // Where the calls complete (imagesearch-router: its server's queues);
  // null: CompletionThreads::Default(). Outlives the client.
  CompletionThreads* queues = nullptr;
};

struct ShardStats {
  uint64_t calls = 0, failures = 0, hedges_sent = 0, hedges_won = 0, retries = 0;
  absl::Duration p50, p95;  // Of recent answers; zero before any.
};

// Runs functions at given times on one thread of its own, which wakes only
// for a timer that fires. Every shard call sets one (its hedge) and nearly
// every call answers before it is due, so the thread sleeps in read() on a
// timerfd armed for the earliest timer, or a little earlier. After re-arms it
// (a system call, no wakeup) for a timer earlier than the one armed; Cancel
// disarms it when no timer is left, and otherwise re-arms it only when the
// earliest left is over kRearmSlack later than the time armed. A query's
// shard calls set their timers within microseconds of each other, so a
// query that is not late costs two system calls (arm, disarm), not one per
// answer; when a call is still out at the earlier time, the thread wakes, finds
// nothing due and re-arms (tools/bench/results/LOG.md, "The router's own
// cost"). Not a grpc::Alarm
// per call (~120 us of router CPU each), not a condition variable (a wakeup
// for every timer, due or not), not the completion threads' poll timeouts
// (whole milliseconds: hedges up to 2 ms late); measured in
// tools/bench/results/LOG.md, "The router on one completion thread".
// Times are the steady clock's (CLOCK_MONOTONIC), so that a step of the
// wall clock neither delays nor hurries a hedge.
class HedgeTimer {
 public:
  using Clock = std::chrono::steady_clock;
  struct Handle {
    Clock::time_point when;
    uint64_t id = 0;  // 0: none.
  };
  static HedgeTimer& Get();  // Process-wide; its thread starts on first use.
  Handle After(absl::Duration delay, std::function<void()> fn);
  // Drops the timer unless it fired already.
  void Cancel(const Handle& h);

 private:
  HedgeTimer();
  void Loop();
  // See the class comment; a quarter of ShardClientOptions'
  // min_hedge_delay.
  static constexpr Clock::duration kRearmSlack = std::chrono::microseconds(250);
  void ArmLocked(Clock::time_point when);  // The timerfd to `when`; max(): disarmed.
  std::mutex mu_;
  // Guarded by mu_:
  std::map<std::pair<Clock::time_point, uint64_t>, std::function<void()>> timers_;
  Clock::time_point armed_ = Clock::time_point::max();
  uint64_t next_id_ = 1;
  int fd_ = -1;
  std::thread thread_;
};

class ShardClient {
 public:
  static constexpr size_t kMinSamplesForP95 = 20;
  // The latency a failed call (UNAVAILABLE, cancelled by a replica shutting
  // down, INTERNAL...) counts as in its replica's cost: it then decays to a
  // healthy replica's level in about 6 s (ReplicaLoad::kDecayNs).
  static constexpr int64_t kFailedCostNs = 100'000'000;
  // The steady clock, in nanoseconds: what ReplicaLoad is given.
  static int64_t NowNs() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  // Only searches are recorded in the shard's p50 and p95 (the hedge delay):
  // an Embed that runs the model, a thumbnail or GetInfo takes its own time.
  // Quick calls time the replica's load (below); failures count for every
  // call.
  template <typename Request>
  static constexpr bool kTimesReplica = std::is_same_v<Request, v1::SearchRequest>;
  // Calls that take a replica about a search's time or less: a search, an
  // id's stored vector, a thumbnail, GetInfo. They are hedged (after the
  // searches' p95) and time their replica's load, so one hung replica of a
  // shard delays them by the hedge delay, not to their deadline. Not an
  // Embed of an image or text: the model runs for far longer, and a hedge
  // would run it twice.
  static bool Quick(const v1::SearchRequest&) { return true; }
  static bool Quick(const v1::GetInfoRequest&) { return true; }
  static bool Quick(const v1::GetThumbnailRequest&) { return true; }
  static bool Quick(const v1::EmbedRequest& r) {
    for (const v1::EmbedInput& in : r.inputs()) {
      if (in.input_case() != v1::EmbedInput::kId) return false;
    }
    return true;
  }
  // An error about the request, which every replica would return: a bad
  // query, an id not there, a text query to a collection whose model has no
  // text tower, or to one of raw vectors (FAILED_PRECONDITION). Not a sign
  // of a failing replica, and not counted among the shard's failures. Not
  // UNIMPLEMENTED: a replica whose model did not load says that, and its
  // sibling (or another shard, for an Embed) may answer.
  static bool QueryError(grpc::StatusCode code) {
    switch (code) {
      case grpc::StatusCode::INVALID_ARGUMENT:
      case grpc::StatusCode::NOT_FOUND:
      case grpc::StatusCode::OUT_OF_RANGE:
      case grpc::StatusCode::FAILED_PRECONDITION:
        return true;
      default:
        return false;
    }
  }
  // What the end of a call to a replica, after `took_ns`, says about the
  // replica's load (ReplicaLoad::End). `timed`: Quick(its request); `refused`: never sent (the
  // channel refused it); `lost`: cancelled here, the loser of a hedge.
  struct Observation {
    ReplicaLoad::Seen seen;
    int64_t latency_ns;
  };
  static Observation Observe(bool timed, bool refused, grpc::StatusCode code, bool lost,
                             int64_t took_ns) {
    using Seen = ReplicaLoad::Seen;
    const bool cut_off = lost || code == grpc::StatusCode::DEADLINE_EXCEEDED;
    const bool failed = code != grpc::StatusCode::OK && !QueryError(code) && !cut_off;
    if (refused || (!timed && !failed)) return {Seen::kNothing, 0};
    // Gone or going (UNAVAILABLE, CANCELLED), overloaded or broken: passed
    // over for a few seconds, so that a replica failing fast does not draw
    // the calls.
    if (failed) return {Seen::kLatency, std::max(took_ns, kFailedCostNs)};
    if (cut_off) return {Seen::kAtLeast, took_ns};  // The replica took at least this long.
    return {Seen::kLatency, took_ns};               // An answer, or the query's own error.
  }

  // One replica: its address and channel.
  struct Replica {
    std::string address;  // "10.0.0.3:50051", or the target when gRPC resolves it.
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<v1::ImageSearch::Stub> stub;
    ReplicaLoad load;  // Kept while DNS keeps the address.
    // Whether its GetInfo says it serves this shard (Verify): until a check
    // passed, and after one failed, it gets no calls (once checking began).
    enum class State { kUnchecked, kGood, kWrong };
    std::atomic<State> state{State::kUnchecked};
    // Why it is not kGood: what it serves instead, or why it did not answer.
    std::string Why() const {
      std::lock_guard<std::mutex> lock(why_mu);
      return why;
    }
    mutable std::mutex why_mu;
    std::string why;  // Guarded by why_mu.
    // To be asked again as soon as it answers (Suspect): it failed as a
    // restarted process does, and may be another shard's now.
    std::atomic<bool> recheck{false};
    std::atomic<uint64_t> suspicions{0};  // Suspect adds 1: an answer asked before is stale.
  };
  using Replicas = std::vector<std::shared_ptr<Replica>>;

  // `target`: the shard's replicas as a list of host:port separated by
  // commas (one channel each; a name among them is left to gRPC's
  // resolver), a DNS name ("dns:///svc:50051" or "svc:50051": resolved
  // here, a channel per address, looked up again every 5 s), or another
  // gRPC target (unix:, ipv4:..., used as one round_robin channel).
  ShardClient(uint32_t index, const std::string& target, const ShardClientOptions& options);
  ~ShardClient();

  uint32_t index() const { return index_; }
  const std::string& target() const { return target_; }
  ShardStats Stats() const;
  // The replicas now (DNS may change them).
  std::shared_ptr<const Replicas> replicas() const;
  // The hedge delay now; negative: none.
  absl::Duration HedgeDelay() const;

  // Whether a replica's GetInfo shows that it serves this shard: OK, or an
  // error that says what it serves instead.
  using Check = std::function<absl::Status(const v1::GetInfoResponse&)>;
  // Asks every replica not yet known to be good (a GetInfo each, all at
  // once, until `deadline` at most), and from then on sends calls only
  // to replicas whose answer passed `check`. Replicas found later (DNS),
  // those that did not answer, and every replica again every
  // options.recheck_every (one restarted at its address may serve something
  // else) are asked by the client's own thread. Before the first Verify
  // every replica gets calls. `stamp`: the snapshot::ShardStamp this
  // shard's replicas send with every answer (empty: not checked); an
  // answer with another is not used (StampProblem). Verify runs before any
  // call is made.
  void Verify(Check check, std::string stamp, absl::Time deadline);

  // Why an answer (its call's `context`, finished, OK or not) cannot be
  // this shard's, or "": it carries another shard's stamp. A process restarted at a replica's
  // address as another shard's, or as a shard of another layout of the
  // collection, is caught at its first answer, before any check could ask
  // it. An answer with no stamp (an unsharded root's replica, or a build
  // before stamps) is left to Vet and the checks.
  std::string StampProblem(const grpc::ClientContext& context) const;

  // How often a replica not yet good is asked again; how long one GetInfo
  // of a check may take.
  static constexpr absl::Duration kCheckPendingEvery = absl::Seconds(1);
  static constexpr absl::Duration kCheckTimeout = absl::Seconds(2);
  // Whether some replica passed the check; the replicas that did not, each
  // with why ("10.0.0.3:50051: serves shard 1 of 2").
  bool AnyGood() const;
  std::string NotGood() const;
  // Whether calls may go to `r`: checked good, or no checking yet.
  bool Usable(const Replica& r) const {
    return !checking_.load(std::memory_order_acquire) ||
           r.state.load(std::memory_order_acquire) == Replica::State::kGood;
  }
  // A replica's state and why, from its GetInfo (or the error) and `check`
  // (called only for an answer).
  // `suspicions`: r.suspicions when its GetInfo was sent; an answer sent
  // before a later Suspect is ignored (the replica is asked again).
  void Judge(Replica& r, const absl::StatusOr<v1::GetInfoResponse>& info, const Check& check,
             uint64_t suspicions = kAnySuspicions) const;
  static constexpr uint64_t kAnySuspicions = ~uint64_t{0};
  // Each replica's GetInfo, asked all at once and waited for until
  // `deadline`, in order.
  std::vector<absl::StatusOr<v1::GetInfoResponse>> AskAll(
      const std::vector<std::shared_ptr<Replica>>& replicas, absl::Time deadline);

  // Has `r` asked again at once, and every kCheckPendingEvery until it
  // answers: after a call to it failed as a stopped or restarted replica's
  // does (UNAVAILABLE), or (`why` not empty) it answered with what this shard
  // cannot hold; then it also gets no calls until the check passes.
  void Suspect(Replica& r, absl::string_view why);

  // Cancels every attempt in flight, and refuses new ones (they fail with
  // UNAVAILABLE): for a router that stops, so that a hung replica cannot
  // hold it up until its calls' deadlines.
  void CancelAll();

  // Prepares one of the stub's calls on a completion queue (a lambda calling
  // stub->PrepareAsync<Method>(context, request, queue)).
  template <typename Request, typename Response>
  using Start = std::function<std::unique_ptr<grpc::ClientAsyncResponseReader<Response>>(
      v1::ImageSearch::Stub*, grpc::ClientContext*, const Request&, grpc::CompletionQueue*)>;

  // The answer of a call: it lives on the call's arena, which it keeps.
  template <typename Response>
  using Answer = std::shared_ptr<const Response>;

  // Sends `request` with `start` and calls `done` once with the answer or
  // the last error, on a thread of the client's queues. The request is
  // shared, not copied: a query fanned out to every shard is one message.
  // `cancelled` (may be empty): whether the caller has gone; then no hedge
  // or retry is sent. `vet` (may be empty): what is wrong with an answer
  // ("" if nothing); a replica whose answer is wrong is suspected
  // (Suspect) and the call goes on to another replica, as for UNAVAILABLE.
  template <typename Response>
  using Vet = std::function<std::string(const Response&)>;
  template <typename Request, typename Response>
  void Call(Start<Request, Response> start, std::shared_ptr<const Request> request,
            absl::Time deadline, std::function<void(absl::StatusOr<Answer<Response>>)> done,
            std::function<bool()> cancelled = {}, Vet<Response> vet = {});

 private:
  template <typename Request, typename Response>
  friend class HedgedCall;
  // An attempt that answered, from replica `peer` (its address).
  void Record(const std::string& peer, absl::Duration latency, bool ok);
  // HedgedCalls alive (the destructor waits for none), and attempts in
  // flight (CancelAll cancels them). AttemptStarting is false after
  // CancelAll.
  void CallBegins();
  void CallEnds();
  bool AttemptStarting(grpc::ClientContext* context);
  void AttemptEnded(grpc::ClientContext* context);

  // The replica for a new attempt of a call that has tried `tried` (indexes
  // into `set`): of those it has not tried and whose channel is not failing,
  // the cheaper of two drawn at random (ReplicaLoad::Cost), else one it has
  // not tried, else any.
  // With `repeat` false (a hedge), kNone where every usable replica was
  // tried; kNone where none is usable (all failed their check).
  size_t Pick(const Replicas& set, const std::vector<size_t>& tried, bool repeat = true);
  static constexpr size_t kNone = static_cast<size_t>(-1);
  // AskAll, then Judge each.
  void CheckAll(const std::vector<std::shared_ptr<Replica>>& replicas, const Check& check,
                absl::Time deadline);
  bool AllGood() const;
  // The client's thread: DNS lookups, and the checks Verify left to it.
  void Watch();
  static constexpr size_t kMaxCandidates = 64;  // Replicas of a shard Pick looks at.
  std::shared_ptr<Replica> NewReplica(const std::string& address, bool balance) const;
  // DNS targets: looks the name up and swaps the replica set, after
  // checking new addresses against `check` (once Verify has given one).
  void Resolve(const Check& check);

  const uint32_t index_;
  const std::string target_;
  const ShardClientOptions options_;
  CompletionThreads* const queues_;
  std::string dns_host_, dns_port_;  // Set for a DNS target.
  mutable std::mutex replicas_mu_;
  std::shared_ptr<const Replicas> replicas_;  // Guarded by replicas_mu_.
  std::mutex resolver_mu_;
  std::condition_variable resolver_cv_;
  bool stopping_ = false;          // Guarded by resolver_mu_.
  Check check_;                    // Guarded by resolver_mu_; set by Verify.
  std::string stamp_;              // Set by Verify, before any call.
  uint64_t check_generation_ = 0;  // Guarded by resolver_mu_; Verify adds 1.
  uint64_t suspected_ = 0;         // Guarded by resolver_mu_; Suspect adds 1.
  std::atomic<bool> checking_{false};
  std::thread resolver_;  // Runs Watch.
  // The latest `Capacity` latencies, the oldest overwritten first.
  template <size_t Capacity>
  class LatencyRing {
   public:
    LatencyRing() { us_.reserve(Capacity); }
    void Add(absl::Duration latency) {
      const int64_t us = absl::ToInt64Microseconds(latency);
      if (us_.size() < Capacity) {
        us_.push_back(us);
      } else {
        us_[next_] = us;
        next_ = (next_ + 1) % Capacity;
      }
    }
    size_t size() const { return us_.size(); }
    // The q-quantile (0 to 1) of the latencies held. REQUIRES: size() > 0.
    absl::Duration Quantile(double q) const {
      std::vector<int64_t> sorted = us_;
      const size_t at =
          std::min(sorted.size() - 1, static_cast<size_t>(static_cast<double>(sorted.size()) * q));
      std::nth_element(sorted.begin(), sorted.begin() + static_cast<long>(at), sorted.end());
      return absl::Microseconds(sorted[at]);
    }

   private:
    std::vector<int64_t> us_;
    size_t next_ = 0;
  };

  std::mutex live_mu_;
  std::condition_variable live_cv_;
  int live_calls_ = 0;                            // Guarded by live_mu_.
  std::set<grpc::ClientContext*> live_attempts_;  // Guarded by live_mu_.
  bool cancelling_ = false;                       // Guarded by live_mu_.

  mutable std::mutex mu_;
  LatencyRing<512> latencies_;  // The shard's recent answers, for Stats.
  // Per replica, for the hedge delay.
  struct PeerLatency {
    LatencyRing<256> ring;
    size_t since = 0;  // Answers since p95 was taken.
    absl::Duration p95 = absl::InfiniteDuration();
    absl::Time last;  // Of its latest answer.
  };
  static constexpr size_t kP95Every = 32;
  static constexpr absl::Duration kPeerForgetAfter = absl::Seconds(30);
  std::map<std::string, PeerLatency> peers_;
  // The lowest p95 of the replicas answering lately; infinite until one has
  // kMinSamplesForP95 answers.
  absl::Duration hedge_p95_ = absl::InfiniteDuration();
  ShardStats stats_;
};

// One logical call to a shard: its attempts (the first, a retry, a hedge).
// Their answers are parsed onto the call's arena, whose first block is part
// of the call: a shard's top-k answer then takes no allocation of its own (a
// message, and each hit and its strings, would take one each on the heap),
// and the one that wins is handed on in place, holding the call.
template <typename Request, typename Response>
class HedgedCall : public std::enable_shared_from_this<HedgedCall<Request, Response>> {
 public:
  using Start = ShardClient::Start<Request, Response>;
  using Done = std::function<void(absl::StatusOr<ShardClient::Answer<Response>>)>;

  // Holds a top_k 10 answer whose hits carry short ids and attributes;
  // more takes further blocks from the heap.
  static constexpr size_t kArenaBlock = 4096;

  // User-provided, so that make_shared leaves the block uninitialised.
  HedgedCall(ShardClient* shard, Start start, std::shared_ptr<const Request> request,
             absl::Time deadline, Done done, std::function<bool()> cancelled,
             ShardClient::Vet<Response> vet)
      : arena_(arena_block_, sizeof(arena_block_)),
        shard_(shard),
        start_(std::move(start)),
        request_(std::move(request)),
        deadline_(deadline),
        done_(std::move(done)),
        cancelled_(std::move(cancelled)),
        vet_(std::move(vet)),
        replicas_(shard->replicas()),
        retries_left_(shard->options_.retries) {
    shard_->CallBegins();
  }
  ~HedgedCall() { shard_->CallEnds(); }

  void Run() {
    Attempt* first = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      first = NewAttemptLocked(/*hedge=*/false, /*repeat=*/true);
      if (first == nullptr) finished_ = true;
    }
    if (first == nullptr) {
      return done_(
          absl::UnavailableError(absl::StrCat("no replica serves the shard: ", shard_->NotGood())));
    }
    // Quick calls only are hedged, after the p95 of searches (Quick).
    const absl::Duration delay = quick_ ? shard_->HedgeDelay() : -absl::InfiniteDuration();
    if (delay >= absl::ZeroDuration() && absl::Now() + delay < deadline_) {
      ArmTimer(delay, /*hedge=*/true);
    } else if (cancelled_) {
      ArmTimer(kGoneEvery, /*hedge=*/false);
    }
    Launch(first);
  }

  // How often a call that outlives its hedge delay (or has none) looks
  // whether its caller has gone, and then cancels its attempts: an exact
  // scan, a batch or a model queued on a replica is then not run for
  // nobody (a replica checks its call before it starts the work). A search
  // that answers within the hedge delay (most of them) never looks.
  static constexpr absl::Duration kGoneEvery = absl::Milliseconds(50);

 private:
  struct Attempt {
    grpc::ClientContext context;
    Response* response = nullptr;  // On the call's arena.
    bool hedge = false;
    bool refused = false;    // Not started: the router is stopping.
    int64_t started_ns = 0;  // ShardClient::NowNs().
    ShardClient::Replica* replica = nullptr;
  };

  // Null where no replica is left to try: none passed its check, or (a
  // hedge) every one that did was tried.
  Attempt* NewAttemptLocked(bool hedge, bool repeat) {
    const size_t pick = shard_->Pick(*replicas_, tried_, repeat);
    if (pick == ShardClient::kNone) return nullptr;
    attempts_.push_back(std::make_unique<Attempt>());
    Attempt* a = attempts_.back().get();
    a->response = google::protobuf::Arena::CreateMessage<Response>(&arena_);
    tried_.push_back(pick);
    a->replica = (*replicas_)[pick].get();
    a->context.set_deadline(absl::ToChronoTime(deadline_));
    if (!shard_->options_.authorization.empty()) {
      a->context.AddMetadata("authorization", shard_->options_.authorization);
    }
    a->hedge = hedge;
    a->started_ns = ShardClient::NowNs();
    a->replica->load.Begin();
    ++outstanding_;
    return a;
  }

  // One attempt's call on a completion queue; holds the call while it runs.
  struct AttemptTag final : CqTag {
    std::shared_ptr<HedgedCall> call;
    Attempt* attempt = nullptr;
    std::unique_ptr<grpc::ClientAsyncResponseReader<Response>> reader;
    grpc::Status status;
    void Proceed(bool) override {
      call->shard_->AttemptEnded(&attempt->context);
      call->OnDone(attempt, std::move(status));
      delete this;
    }
  };

  void Launch(Attempt* a) {
    auto* tag = new AttemptTag;
    tag->call = this->shared_from_this();
    tag->attempt = a;
    const bool started = shard_->AttemptStarting(&a->context) &&
                         shard_->queues_->Start([&](grpc::CompletionQueue* queue) {
                           tag->reader =
                               start_(a->replica->stub.get(), &a->context, *request_, queue);
                           tag->reader->StartCall();
                           tag->reader->Finish(a->response, &tag->status, tag->GrpcTag());
                         });
    if (!started) {
      a->refused = true;
      tag->status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "the router is shutting down");
      tag->Proceed(true);
    }
  }

  // The one timer a call holds at a time (hedge_timer_): the hedge, then
  // the watch for a caller that has gone.
  void ArmTimer(absl::Duration delay, bool hedge) {
    const HedgeTimer::Handle h =
        HedgeTimer::Get().After(delay, [weak = this->weak_from_this(), hedge] {
          if (auto self = weak.lock()) hedge ? self->Hedge() : self->LookGone();
        });
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!finished_) {
        hedge_timer_ = h;
        return;
      }
    }
    HedgeTimer::Get().Cancel(h);  // Finished meanwhile: OnDone cancelled the one before.
  }

  // Whether the caller has gone; if so, the attempts in flight are
  // cancelled (each then ends as CANCELLED, and is not retried), else it
  // looks again in kGoneEvery.
  bool CancelIfGoneLocked() {
    if (!Gone()) return false;
    abandoned_ = true;
    for (auto& a : attempts_) a->context.TryCancel();
    return true;
  }

  void LookGone() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_ || CancelIfGoneLocked()) return;
    }
    ArmTimer(kGoneEvery, /*hedge=*/false);
  }

  void Hedge() {
    Attempt* a = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_ || outstanding_ == 0 || CancelIfGoneLocked()) return;
      a = NewAttemptLocked(/*hedge=*/true, /*repeat=*/false);
    }
    if (cancelled_) ArmTimer(kGoneEvery, /*hedge=*/false);
    if (a == nullptr) return;  // No other replica to ask.
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
  // RESOURCE_EXHAUSTED: the replica sheds load; another may have room.
  static bool Retryable(const grpc::Status& s) {
    return s.error_code() == grpc::StatusCode::UNAVAILABLE ||
           s.error_code() == grpc::StatusCode::CANCELLED ||
           s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED;
  }

  void Observe(const Attempt* a, const grpc::Status& s, bool lost, int64_t took_ns,
               int64_t now_ns) const {
    const ShardClient::Observation o =
        ShardClient::Observe(quick_, a->refused, s.error_code(), lost, took_ns);
    a->replica->load.End(o.seen, o.latency_ns, now_ns);
  }

  void OnDone(Attempt* a, grpc::Status s) {
    // An answer this shard cannot give (another shard's rows: a replica
    // restarted at its address as another shard's, not yet rechecked) is
    // the replica's failure, never merged: the call goes on elsewhere.
    // The stamp is checked on errors too: another layout's NOT_FOUND for an
    // id this shard holds is no answer either.
    bool wrong = false;
    if (!a->refused) {
      std::string why = shard_->StampProblem(a->context);
      if (why.empty() && s.ok() && vet_) why = vet_(*a->response);
      if (!why.empty()) {
        shard_->Suspect(*a->replica, why);
        s = grpc::Status(grpc::StatusCode::INTERNAL,
                         absl::StrCat("replica ", a->replica->address, " ", why));
        wrong = true;
      } else if (s.error_code() == grpc::StatusCode::UNAVAILABLE) {
        shard_->Suspect(*a->replica, "");
      }
    }
    std::unique_lock<std::mutex> lock(mu_);
    --outstanding_;
    const int64_t now_ns = ShardClient::NowNs();
    const int64_t took_ns = now_ns - a->started_ns;
    // Cut off by this router (a hedge's loser, or its caller gone): it says
    // nothing of the replica but that it took this long at least.
    Observe(a, s, finished_ || abandoned_, took_ns, now_ns);
    if (finished_) return;  // The loser of a hedge, cancelled.
    if (ShardClient::kTimesReplica<Request> && !abandoned_) {
      shard_->Record(a->replica->address, absl::Nanoseconds(took_ns), s.ok());
    }
    // The hedge timer is cancelled after the answer is handed on: for a
    // query's last shard call, that cancel disarms the timer (a system
    // call), which then comes after the merge and the reply, not before. A
    // timer that fires meanwhile finds the call finished.
    const HedgeTimer::Handle timer = hedge_timer_;
    if (s.ok() || ShardClient::QueryError(s.error_code())) {
      // An answer, or an error about the query that every replica would
      // give: the other attempts can only say the same, or be cut off.
      finished_ = true;
      for (auto& other : attempts_) {
        if (other.get() != a) other->context.TryCancel();
      }
      if (!s.ok()) {
        lock.unlock();
        done_(FromGrpc(s));
        HedgeTimer::Get().Cancel(timer);
        return;
      }
      lock.unlock();
      if (a->hedge) {
        {
          std::lock_guard<std::mutex> stats(shard_->mu_);
          ++shard_->stats_.hedges_won;
        }
        if (ShardObserver* o = shard_->options_.observer) o->OnHedgeWon(shard_->index_);
      }
      // The answer, holding this call (and so its arena) while it is held.
      done_(ShardClient::Answer<Response>(this->shared_from_this(), a->response));
      HedgeTimer::Get().Cancel(timer);
      return;
    }
    if ((Retryable(s) || wrong) && !a->refused && retries_left_ > 0 &&
        absl::Now() + absl::Milliseconds(1) < deadline_ && !Gone()) {
      Attempt* retry = NewAttemptLocked(a->hedge, /*repeat=*/true);
      if (retry == nullptr) return Fail(std::move(lock), s, timer);
      --retries_left_;
      lock.unlock();
      {
        std::lock_guard<std::mutex> stats(shard_->mu_);
        ++shard_->stats_.retries;
      }
      if (ShardObserver* o = shard_->options_.observer) o->OnRetry(shard_->index_);
      Launch(retry);
      return;
    }
    Fail(std::move(lock), s, timer);
  }

  // An attempt failed for good: the call fails with its error once no other
  // attempt may still answer.
  void Fail(std::unique_lock<std::mutex> lock, const grpc::Status& s,
            const HedgeTimer::Handle& timer) {
    last_error_ = s;
    if (outstanding_ > 0) return;  // Another attempt may still answer.
    finished_ = true;
    lock.unlock();
    done_(FromGrpc(last_error_));
    HedgeTimer::Get().Cancel(timer);
  }

  // Declared first: the arena outlives the attempts, whose answers it holds.
  alignas(std::max_align_t) char arena_block_[kArenaBlock];
  google::protobuf::Arena arena_;
  ShardClient* const shard_;
  const Start start_;
  const std::shared_ptr<const Request> request_;
  const absl::Time deadline_;
  const Done done_;
  const std::function<bool()> cancelled_;  // May be empty.
  const ShardClient::Vet<Response> vet_;   // May be empty.
  const bool quick_ = ShardClient::Quick(*request_);
  bool Gone() const { return cancelled_ && cancelled_(); }
  const std::shared_ptr<const ShardClient::Replicas> replicas_;  // Kept for the call.
  std::mutex mu_;
  std::vector<std::unique_ptr<Attempt>> attempts_;
  std::vector<size_t> tried_;  // Replicas (into replicas_) attempted.
  int outstanding_ = 0;
  int retries_left_;
  HedgeTimer::Handle hedge_timer_;  // Guarded by mu_.
  bool finished_ = false;
  bool abandoned_ = false;  // Guarded by mu_: its caller gone, its attempts cancelled.
  grpc::Status last_error_;
};

template <typename Request, typename Response>
void ShardClient::Call(Start<Request, Response> start, std::shared_ptr<const Request> request,
                       absl::Time deadline,
                       std::function<void(absl::StatusOr<Answer<Response>>)> done,
                       std::function<bool()> cancelled, Vet<Response> vet) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.calls;
  }
  auto call = std::make_shared<HedgedCall<Request, Response>>(
      this, std::move(start), std::move(request), deadline,
      [this, started = absl::Now(), done = std::move(done),
       gone = cancelled](absl::StatusOr<Answer<Response>> r) {
        // A call whose caller has gone is no failure of the shard's.
        if (!r.ok() && !QueryError(static_cast<grpc::StatusCode>(r.status().code())) &&
            !(gone && gone())) {
          std::lock_guard<std::mutex> lock(mu_);
          ++stats_.failures;
        }
        if (options_.observer != nullptr) {
          options_.observer->OnCall(index_, r.status().code(), absl::Now() - started);
        }
        done(std::move(r));
      },
      std::move(cancelled), std::move(vet));
  call->Run();
}

}  // namespace imagesearch::router

#endif  // IMAGESEARCH_SERVICES_ROUTER_SHARD_CLIENT_H_
