#include "libs/rpc/completion_threads.h"

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

// How long an engaged standby waits in the queue before it looks again at
// whether it is still engaged (and closes a window nobody else closes).
constexpr std::chrono::milliseconds kStandbyRecheck{100};

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
    state->window_start_ns.store(NowNs(), std::memory_order_relaxed);
    states_.push_back(std::move(state));
  }
  for (auto& state : states_) {
    threads_.emplace_back(&CompletionThreads::Poll, this, state.get());
    for (int k = 1; k < n; ++k)
      threads_.emplace_back(&CompletionThreads::StandBy, this, state.get(), k);
  }
}

void CompletionThreads::Deliver(QueueState* state, void* tag, bool ok) {
#if defined(IMAGESEARCH_TSAN_BUILD)  // See CMakeLists.txt: not __SANITIZE_THREAD__.
  __tsan_acquire(tag);               // See CqTag::GrpcTag.
#endif
  const int64_t start = NowNs();
  static_cast<CqTag*>(tag)->Proceed(ok);
  const int64_t end = NowNs();
  state->busy_ns.fetch_add(end - start, std::memory_order_relaxed);
  state->events.fetch_add(1, std::memory_order_relaxed);
  Balance(state, end);
}

void CompletionThreads::Balance(QueueState* state, int64_t now_ns) {
  const auto open = [&](int64_t elapsed) {
    return elapsed < kWindowNs || (elapsed < kMaxWindowNs &&
                                   state->events.load(std::memory_order_relaxed) < kWindowEvents);
  };
  if (state->threads == 1 ||
      open(now_ns - state->window_start_ns.load(std::memory_order_relaxed))) {
    return;
  }
  std::unique_lock<std::mutex> window(state->window_mu, std::try_to_lock);
  if (!window.owns_lock()) return;  // Another thread is closing it.
  const int64_t elapsed = now_ns - state->window_start_ns.load(std::memory_order_relaxed);
  if (open(elapsed)) return;
  const double load = static_cast<double>(state->busy_ns.exchange(0, std::memory_order_relaxed)) /
                      static_cast<double>(elapsed);  // Threads' worth of work.
  const double rate = 1e9 *
                      static_cast<double>(state->events.exchange(0, std::memory_order_relaxed)) /
                      static_cast<double>(elapsed);
  state->window_start_ns.store(now_ns, std::memory_order_relaxed);
  const int engaged = state->engaged.load(std::memory_order_relaxed);
  const auto engage = [&](int n) {
    {
      std::lock_guard<std::mutex> lock(state->wake_mu);
      state->engaged.store(n, std::memory_order_relaxed);
    }
    state->wake.notify_all();
  };
  using Trial = QueueState::Trial;
  const Trial trial = state->trial;
  state->trial = Trial::kNone;
  if (trial == Trial::kJoined) {
    if (rate < kTrialGain * state->trial_before) {  // No gain: it leaves.
      state->engaged.store(engaged - 1, std::memory_order_relaxed);
      state->join_after_ns = now_ns + state->join_backoff_ns;
      state->join_backoff_ns = std::min(2 * state->join_backoff_ns, kBackoffMaxNs);
    } else {
      state->join_backoff_ns = kBackoffMinNs;
      state->leave_backoff_ns = kBackoffMinNs;
      state->leave_trial_at_ns = now_ns + state->leave_backoff_ns;
    }
  } else if (trial == Trial::kLeft) {
    if (rate * kTrialGain < state->trial_before) {  // It was helping: back.
      engage(engaged + 1);
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
  void* tag = nullptr;
  bool ok = false;
  while (state->queue->Next(&tag, &ok)) Deliver(state, tag, ok);
  current_queue = nullptr;
}

void CompletionThreads::StandBy(QueueState* state, int k) {
  current_queue = state->queue;
  void* tag = nullptr;
  bool ok = false;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(state->wake_mu);
      state->wake.wait(lock, [&] {
        return state->stopping || state->engaged.load(std::memory_order_relaxed) >= k;
      });
      // Stopping: the threads polling deliver what is left.
      if (state->stopping && state->engaged.load(std::memory_order_relaxed) < k) break;
    }
    while (state->engaged.load(std::memory_order_relaxed) >= k) {
      const auto status =
          state->queue->AsyncNext(&tag, &ok, std::chrono::system_clock::now() + kStandbyRecheck);
      if (status == grpc::CompletionQueue::SHUTDOWN) {
        current_queue = nullptr;
        return;
      }
      if (status == grpc::CompletionQueue::GOT_EVENT) {
        Deliver(state, tag, ok);
      } else {
        Balance(state, NowNs());
      }
    }
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
