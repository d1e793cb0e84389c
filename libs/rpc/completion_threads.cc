#include "libs/rpc/completion_threads.h"

#include <grpc/support/time.h>
#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <utility>

namespace imagesearch::rpc {
namespace {

// The queue the current thread polls; null off the polling threads.
thread_local grpc::CompletionQueue* current_queue = nullptr;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t ThreadCpuNs(clockid_t clock) {
  timespec ts{};
  if (clock_gettime(clock, &ts) != 0) return 0;
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// How long an engaged standby waits in the queue before it looks again at
// whether it is still engaged (and closes a window nobody else closes).
constexpr int64_t kStandbyRecheckMs = 20;

// kStandbyRecheckMs from now, on the monotonic clock, which gRPC's queue
// keeps its deadlines on. A wall-clock deadline (std::chrono::system_clock)
// is converted by reading the wall clock again, so a step of the wall clock
// between the two reads would make the wait as long as the step, or none.
gpr_timespec StandbyDeadline() {
  return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                      gpr_time_from_millis(kStandbyRecheckMs, GPR_TIMESPAN));
}

}  // namespace

CompletionThreads::CompletionThreads(
    std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues, int threads_per_queue) {
  for (auto& q : queues) {
    server_queues_.push_back(q.get());
    queues_.push_back(std::move(q));
  }
  Launch(threads_per_queue);
}

CompletionThreads::CompletionThreads(int n) {
  for (int i = 0; i < n; ++i) queues_.push_back(std::make_unique<grpc::CompletionQueue>());
  Launch(1);
}

CompletionThreads::~CompletionThreads() { Shutdown(); }

CompletionThreads& CompletionThreads::Default() {
  static CompletionThreads* threads = new CompletionThreads(1);  // Never destroyed.
  return *threads;
}

void CompletionThreads::Launch(int threads_per_queue) {
  const int n = std::max(1, threads_per_queue);
  for (auto& q : queues_) {
    auto state = std::make_unique<QueueState>();
    state->queue = q.get();
    state->threads = n;
    state->cpu_clocks.assign(n, clockid_t{});
    state->cpu_last_ns.assign(n, -1);  // -1: not started yet.
    state->window_start_ns.store(NowNs(), std::memory_order_relaxed);
    states_.push_back(std::move(state));
  }
  for (auto& state : states_) {
    threads_.emplace_back(&CompletionThreads::Poll, this, state.get());
    for (int k = 1; k < n; ++k)
      threads_.emplace_back(&CompletionThreads::StandBy, this, state.get(), k);
  }
}

void CompletionThreads::RegisterCpuClock(QueueState* state, int k) {
  if (state->threads == 1) return;
  clockid_t clock{};
  if (pthread_getcpuclockid(pthread_self(), &clock) != 0) return;  // Proceed time only.
  std::lock_guard<std::mutex> lock(state->window_mu);
  state->cpu_clocks[k] = clock;
  state->cpu_last_ns[k] = ThreadCpuNs(clock);
}

void CompletionThreads::Deliver(QueueState* state, void* tag, bool ok, bool lead) {
#if defined(IMAGESEARCH_TSAN_BUILD)  // See CMakeLists.txt: not __SANITIZE_THREAD__.
  __tsan_acquire(tag);               // See CqTag::GrpcTag.
#endif
  if (state->threads == 1) {  // Nothing to balance.
    static_cast<CqTag*>(tag)->Proceed(ok);
    return;
  }
  const int64_t start = NowNs();
  if (lead) {
    // Sequentially consistent with the first standby's parking: either it
    // sees this Proceed begun and stays up, or this sees it parked and
    // wakes it.
    state->lead_since_ns.store(start);
    state->lead_last_ns.store(start, std::memory_order_relaxed);
    if (state->rescue_parked.load()) {
      {
        std::lock_guard<std::mutex> lock(state->wake_mu);
        state->rescue_parked.store(false);
      }
      state->wake.notify_all();
    }
  }
  static_cast<CqTag*>(tag)->Proceed(ok);
  const int64_t end = NowNs();
  if (lead) state->lead_since_ns.store(0, std::memory_order_relaxed);
  state->busy_ns.fetch_add(end - start, std::memory_order_relaxed);
  state->events.fetch_add(1, std::memory_order_relaxed);
  Balance(state, end);
}

void CompletionThreads::Balance(QueueState* state, int64_t now_ns) {
  if (state->threads == 1) return;
  const auto open = [&](int64_t elapsed, int64_t longest) {
    return elapsed < kWindowNs ||
           (elapsed < longest && state->events.load(std::memory_order_relaxed) < kWindowEvents);
  };
  if (open(now_ns - state->window_start_ns.load(std::memory_order_relaxed), kMaxWindowNs)) return;
  std::unique_lock<std::mutex> window(state->window_mu, std::try_to_lock);
  if (!window.owns_lock()) return;  // Another thread is closing it.
  using Trial = QueueState::Trial;
  const int64_t elapsed = now_ns - state->window_start_ns.load(std::memory_order_relaxed);
  if (open(elapsed, state->trial == Trial::kNone ? kMaxWindowNs : kMaxTrialWindowNs)) return;
  int64_t cpu_ns = 0;
  for (int i = 0; i < state->threads; ++i) {
    if (state->cpu_last_ns[i] < 0) continue;
    const int64_t now_cpu = ThreadCpuNs(state->cpu_clocks[i]);
    cpu_ns += std::max<int64_t>(0, now_cpu - state->cpu_last_ns[i]);
    state->cpu_last_ns[i] = now_cpu;
  }
  const int64_t proceed_ns = state->busy_ns.exchange(0, std::memory_order_relaxed);
  const int64_t events = state->events.exchange(0, std::memory_order_relaxed);
  // Threads' worth of work, and events a second.
  const double load =
      static_cast<double>(std::max(proceed_ns, cpu_ns)) / static_cast<double>(elapsed);
  const double rate = 1e9 * static_cast<double>(events) / static_cast<double>(elapsed);
  state->window_start_ns.store(now_ns, std::memory_order_relaxed);
  const int engaged = state->engaged.load(std::memory_order_relaxed);
  const auto engage = [&](int n) {
    {
      std::lock_guard<std::mutex> lock(state->wake_mu);
      state->engaged.store(n, std::memory_order_relaxed);
    }
    state->wake.notify_all();
  };
  const Trial trial = state->trial;
  state->trial = Trial::kNone;
  if (trial == Trial::kJoined) {
    // engaged + 1 threads poll now; engaged polled before.
    if (events < kTrialMinEvents) {  // The load stopped: fewer threads.
      state->engaged.store(engaged - 1, std::memory_order_relaxed);
      state->join_after_ns = now_ns + state->join_backoff_ns;
    } else if (rate < (1 + kTrialShare / engaged) * state->trial_before) {  // No gain: it leaves.
      state->engaged.store(engaged - 1, std::memory_order_relaxed);
      state->join_after_ns = now_ns + state->join_backoff_ns;
      state->join_backoff_ns = std::min(2 * state->join_backoff_ns, kBackoffMaxNs);
    } else {
      state->join_backoff_ns = kBackoffMinNs;
      state->leave_backoff_ns = kBackoffMinNs;
      state->leave_trial_at_ns = now_ns + state->leave_backoff_ns;
    }
  } else if (trial == Trial::kLeft) {
    // engaged + 1 threads poll now; engaged + 2 polled before.
    if (events < kTrialMinEvents) {  // The load stopped: it stays out.
      state->join_after_ns = now_ns + state->join_backoff_ns;
    } else if (rate * (1 + kTrialShare / (engaged + 1)) < state->trial_before) {
      engage(engaged + 1);  // It was helping: back.
      state->leave_backoff_ns = std::min(2 * state->leave_backoff_ns, kBackoffMaxNs);
      state->leave_trial_at_ns = now_ns + state->leave_backoff_ns;
    } else {
      state->join_after_ns = now_ns + state->join_backoff_ns;
      state->join_backoff_ns = std::min(2 * state->join_backoff_ns, kBackoffMaxNs);
    }
  } else if (engaged + 1 < state->threads && load > kEngageBusy * (engaged + 1) &&
             now_ns >= state->join_after_ns) {
    state->trial = Trial::kJoined;
    state->trial_before = rate;
    engage(engaged + 1);
  } else if (engaged > 0 && load < kReleaseBusy * engaged) {
    state->engaged.store(engaged - 1, std::memory_order_relaxed);
  } else if (engaged > 0 && now_ns >= state->leave_trial_at_ns) {
    state->trial = Trial::kLeft;
    state->trial_before = rate;
    state->engaged.store(engaged - 1, std::memory_order_relaxed);
  }
}

void CompletionThreads::Poll(QueueState* state) {
  current_queue = state->queue;
  RegisterCpuClock(state, 0);
  void* tag = nullptr;
  bool ok = false;
  while (state->queue->Next(&tag, &ok)) Deliver(state, tag, ok, /*lead=*/true);
  current_queue = nullptr;
}

void CompletionThreads::StandBy(QueueState* state, int k) {
  current_queue = state->queue;
  RegisterCpuClock(state, k);
  void* tag = nullptr;
  bool ok = false;
  const auto engaged = [&] { return state->engaged.load(std::memory_order_relaxed) >= k; };
  const auto lead_stuck = [&] {
    const int64_t since = state->lead_since_ns.load(std::memory_order_relaxed);
    return since != 0 && NowNs() - since >= kRescueNs;
  };
  // Polls until `go_on` says stop; false once the queue is shut down and drained.
  const auto poll = [&](const auto& go_on) {
    while (go_on()) {
      const auto status = state->queue->AsyncNext(&tag, &ok, StandbyDeadline());
      if (status == grpc::CompletionQueue::SHUTDOWN) return false;
      if (status == grpc::CompletionQueue::GOT_EVENT) {
        Deliver(state, tag, ok, /*lead=*/false);
      } else {
        Balance(state, NowNs());
      }
    }
    return true;
  };
  while (true) {
    {
      std::unique_lock<std::mutex> lock(state->wake_mu);
      const auto ready = [&] { return state->stopping || engaged(); };
      if (k == 1) {  // Also looks whether the first thread is held by one long Proceed.
        // Parked after kParkAfterNs without a Proceed begun by the first
        // thread. Parking is published before lead_since_ns is read, and
        // Deliver publishes a Proceed's start before it reads
        // rescue_parked (both sequentially consistent), so a Proceed that
        // begins meanwhile is either seen here or wakes this thread.
        const int64_t last = state->lead_last_ns.load(std::memory_order_relaxed);
        if (!ready() && NowNs() - last >= kParkAfterNs) {
          state->rescue_parked.store(true);
          if (state->lead_since_ns.load() != 0) state->rescue_parked.store(false);
          state->wake.wait(lock, [&] { return ready() || !state->rescue_parked.load(); });
          state->rescue_parked.store(false);
        }
        if (!ready()) {
          state->wake.wait_for(lock, std::chrono::nanoseconds(kRescueNs), ready);
          state->rescue_looks.fetch_add(1, std::memory_order_relaxed);
        }
      } else {
        state->wake.wait(lock, ready);
      }
      // Stopping: the threads polling deliver what is left.
      if (state->stopping && !engaged()) break;
    }
    const bool running =
        engaged() ? poll(engaged) : poll([&] { return !engaged() && lead_stuck(); });
    if (!running) break;
  }
  current_queue = nullptr;
}

bool CompletionThreads::Start(absl::FunctionRef<void(grpc::CompletionQueue*)> start) {
  std::shared_lock<std::shared_mutex> lock(mu_);
  if (stopping_) return false;
  grpc::CompletionQueue* queue = current_queue;
  bool ours = false;
  for (const auto& q : queues_) ours = ours || q.get() == queue;
  if (!ours)
    queue = queues_[rotate_.fetch_add(1, std::memory_order_relaxed) % queues_.size()].get();
  start(queue);
  return true;
}

bool CompletionThreads::IfRunning(absl::FunctionRef<void()> op) {
  std::shared_lock<std::shared_mutex> lock(mu_);
  if (stopping_) return false;
  op();
  return true;
}

void CompletionThreads::Shutdown() {
  {
    std::unique_lock<std::shared_mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  for (auto& state : states_) {
    {
      std::lock_guard<std::mutex> lock(state->wake_mu);
      state->stopping = true;
    }
    state->wake.notify_all();
  }
  for (auto& q : queues_) q->Shutdown();
  for (auto& t : threads_) t.join();
}

}  // namespace imagesearch::rpc
