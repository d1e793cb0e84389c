// Completion queues of gRPC's asynchronous API, each polled by threads of
// its own, on which a server's calls complete: imagesearch-query's and
// imagesearch-router's, the calls they serve and the calls the router makes
// to the shards alike.
//
// A router query is five gRPC calls (the one served and one per shard). The
// thread that takes a served call from its queue starts the shard calls on
// that same queue, so their answers come back to the thread that merges
// them, and nothing changes hands between threads (gRPC's callback API
// hands each call between its own threads: ~3.5 context switches a call;
// tools/bench/results/LOG.md, "The router on one completion thread").
//
// A queue polled by more than one thread starts with one: gRPC 1.51's
// poller (epoll1) hands every event to another thread waiting on the same
// queue, ~3.3 context switches and ~2.7 futex calls a call where one thread
// takes 3 system calls (tools/bench/results/LOG.md, "One polling thread
// until calls queue"). The others stand by on a condition variable, off
// gRPC, and join the polling only while the load needs them and they help.
// A window is at least kWindowNs and kWindowEvents events (kMaxWindowNs at
// most; kMaxTrialWindowNs for a trial's). Its load is the polling threads'
// busy time over its length: the larger of their time inside Proceed (which
// counts waits, page faults on a slow volume, say) and their CPU time
// (which counts gRPC's own work inside Next). Then:
// - when the load exceeds kEngageBusy of the threads polling, one more
//   joins, on trial: it stays if the next window delivered at least
//   1 + kTrialShare / (threads polling before) times the events a second
//   of the one before (a tenth of one thread's share); else it leaves, and
//   none joins for kBackoffMinNs, doubling up to kBackoffMaxNs while trials
//   fail or leaving trials succeed. That is the case where the cores are
//   taken (clients or other replicas on them): a thread more then only adds
//   hand-offs;
// - a thread that stayed is tried the other way after kBackoffMinNs,
//   doubling while it proves itself: it leaves for a window, and comes back
//   if the events a second fell by as much without it;
// - a trial whose window saw under kTrialMinEvents events (the load
//   stopped) settles on the fewer threads, its backoffs unchanged;
// - when the load would fit in one thread fewer with room (kReleaseBusy of
//   each), one leaves.
// And while the first thread has been inside one Proceed for kRescueNs (a
// long batch, an exact scan), the first standby polls too, so that nothing
// else (health checks included) waits behind it; it looks every kRescueNs
// while the queue has work, and once the first thread has started no
// Proceed for kParkAfterNs it sleeps until the first thread starts one, so
// a replica with no calls wakes none of these threads (looking every
// kRescueNs would be 50 wake-ups a second).
// So a replica takes a lone caller's calls on one thread, and a flood on as
// many threads as add throughput (measured on 2 CPUs only: beyond a few
// threads a trial's window may be noisier than the step it measures).
//
// Thread-safe.
#ifndef IMAGESEARCH_LIBS_RPC_COMPLETION_THREADS_H_
#define IMAGESEARCH_LIBS_RPC_COMPLETION_THREADS_H_

#include <grpcpp/grpcpp.h>
#if defined(IMAGESEARCH_TSAN_BUILD)  // See CMakeLists.txt: not __SANITIZE_THREAD__.
#include <sanitizer/tsan_interface.h>
#endif

#include <time.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"

namespace imagesearch::rpc {

// What a completion queue hands back: Proceed runs on the polling thread.
class CqTag {
 public:
  virtual void Proceed(bool ok) = 0;

  // The tag for a gRPC operation. A queue hands the tag from the thread
  // that starts the operation to the one that polls it, synchronised inside
  // libgrpc, which ThreadSanitizer does not see (Debian's libgrpc is not
  // instrumented): under TSan this releases what the starting thread wrote,
  // and Poll acquires it.
  void* GrpcTag() {
#if defined(IMAGESEARCH_TSAN_BUILD)
    __tsan_release(this);
#endif
    return this;
  }

 protected:
  ~CqTag() = default;
};

// For a call object that starts its operations from any thread: the
// thread that starts one holds this until gRPC's start returns, and
// Proceed waits for it before touching the call. gRPC's C++ headers
// (inlined into our code) write to the call's operation set until just
// before libgrpc takes the operation, after the tag was handed over
// (CqTag::GrpcTag), and libgrpc's own ordering of that with the completion
// is invisible to ThreadSanitizer; this makes it visible, for the cost of an
// uncontended lock an operation (a real wait only when a completion beats
// its starter's return). Used by the health Watch and reflection streams;
// ServedCall holds a reference count instead.
class StartLock {
 public:
  template <typename F>
  auto Starting(F&& start) {
    std::lock_guard<std::mutex> lock(mu_);
    return start();
  }
  void AwaitStarted() { std::lock_guard<std::mutex> lock(mu_); }

 private:
  std::mutex mu_;
};

class CompletionThreads {
 public:
  // Polls a server's queues (from ServerBuilder::AddCompletionQueue),
  // `threads_per_queue` threads each; server_queue(i) gives them back for
  // its services.
  CompletionThreads(std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues,
                    int threads_per_queue);
  // `n` queues of its own, one thread each, for client calls only.
  explicit CompletionThreads(int n);
  // Shutdown().
  ~CompletionThreads();
  CompletionThreads(const CompletionThreads&) = delete;
  CompletionThreads& operator=(const CompletionThreads&) = delete;

  // Client calls of code that has no queues of its own (tests, tools): one
  // thread, never stopped.
  static CompletionThreads& Default();

  // Of each queue's threads, how many must be busy for another to join, and
  // under how much each of one fewer would be busy for one to leave: a share
  // of the window's time; and the windows (see the top of this file).
  static constexpr double kEngageBusy = 0.85;
  static constexpr double kReleaseBusy = 0.6;
  static constexpr int64_t kWindowNs = 20'000'000;
  static constexpr int64_t kWindowEvents = 256;
  static constexpr int64_t kMaxWindowNs = 200'000'000;
  static constexpr int64_t kMaxTrialWindowNs = 1'000'000'000;
  static constexpr int64_t kTrialMinEvents = 32;
  static constexpr double kTrialShare = 0.1;
  static constexpr int64_t kRescueNs = 20'000'000;
  static constexpr int64_t kParkAfterNs = 1'000'000'000;
  static constexpr int64_t kBackoffMinNs = 200'000'000;
  static constexpr int64_t kBackoffMaxNs = 5'000'000'000;

  size_t size() const { return queues_.size(); }  // Queues.
  size_t threads() const { return threads_.size(); }
  // Threads polling queue i now (1 up to its threads; the rest stand by).
  int polling(size_t i) const { return 1 + states_[i]->engaged.load(std::memory_order_relaxed); }
  // Times queue i's first standby has woken to look for a held first thread.
  int64_t rescue_looks(size_t i) const {
    return states_[i]->rescue_looks.load(std::memory_order_relaxed);
  }
  // REQUIRES: constructed from server queues, i < size().
  grpc::ServerCompletionQueue* server_queue(size_t i) const { return server_queues_[i]; }

  // Runs `start` with the queue a new call should complete on: the calling
  // thread's own queue when it is one of these threads, else the next one
  // round-robin. Returns false, without running it, once Shutdown has begun
  // (a call started on a queue that is shut down would be a fatal error).
  bool Start(absl::FunctionRef<void(grpc::CompletionQueue*)> start);

  // Runs `op` (an operation on a call whose tag these queues deliver: a
  // served call's Finish, a server's next Request) unless Shutdown has
  // begun, and says whether it ran.
  bool IfRunning(absl::FunctionRef<void()> op);

  // Stops taking new calls, shuts the queues down and waits for the threads
  // to deliver every call already started (they end by their deadlines).
  // For a server's queues, call it after grpc::Server::Shutdown.
  // After it, an operation on a call (a served call's late answer, from
  // the model's threads, say) is not started (IfRunning says false); so the
  // object must outlive whatever may still answer.
  void Shutdown();

 private:
  // A queue's polling threads: the first always polls, standby k (from 1)
  // only while engaged >= k.
  struct QueueState {
    grpc::CompletionQueue* queue = nullptr;
    int threads = 1;
    std::atomic<int> engaged{0};      // Standbys polling.
    std::atomic<int64_t> busy_ns{0};  // In Proceed, all threads, since the window began.
    std::atomic<int64_t> events{0};   // Delivered since the window began.
    std::atomic<int64_t> window_start_ns{0};
    // When the first thread's current Proceed began; 0: it is in none.
    std::atomic<int64_t> lead_since_ns{0};
    // When the first thread's latest Proceed began; 0: none yet.
    std::atomic<int64_t> lead_last_ns{0};
    // The first standby sleeps until the first thread starts a Proceed
    // (which clears this and wakes it). Set and read in sequential
    // consistency with lead_since_ns: see StandBy.
    std::atomic<bool> rescue_parked{false};
    std::atomic<int64_t> rescue_looks{0};
    std::mutex window_mu;  // Held (try_lock) by the thread that closes a window.
    // Guarded by window_mu:
    std::vector<clockid_t> cpu_clocks;  // Per thread (0: the first); set as each starts.
    std::vector<int64_t> cpu_last_ns;   // Each one's CPU time when the window began.
    enum class Trial { kNone, kJoined, kLeft } trial = Trial::kNone;
    double trial_before = 0;  // Events a second in the window before the trial.
    int64_t join_backoff_ns = kBackoffMinNs;
    int64_t join_after_ns = 0;
    int64_t leave_backoff_ns = kBackoffMinNs;
    int64_t leave_trial_at_ns = 0;
    std::mutex wake_mu;
    std::condition_variable wake;  // Standbys wait here; engaged or stopping_ wakes them.
    bool stopping = false;         // Guarded by wake_mu.
  };

  void Launch(int threads_per_queue);
  void Poll(QueueState* state);
  void StandBy(QueueState* state, int k);
  // Proceeds with one event and counts its time; then closes the window when
  // it has passed, engaging or releasing a standby.
  static void Deliver(QueueState* state, void* tag, bool ok, bool lead);
  static void Balance(QueueState* state, int64_t now_ns);
  static void RegisterCpuClock(QueueState* state, int k);

  std::vector<std::unique_ptr<grpc::CompletionQueue>> queues_;
  std::vector<std::unique_ptr<QueueState>> states_;  // Parallel to queues_.
  std::vector<grpc::ServerCompletionQueue*> server_queues_;
  std::vector<std::thread> threads_;
  std::atomic<size_t> rotate_{0};
  std::shared_mutex mu_;   // Held shared while a call starts; exclusive to stop.
  bool stopping_ = false;  // Guarded by mu_.
};

}  // namespace imagesearch::rpc

#endif  // IMAGESEARCH_LIBS_RPC_COMPLETION_THREADS_H_
