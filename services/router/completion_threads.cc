#include "services/router/completion_threads.h"

#include <algorithm>
#include <chrono>
#include <mutex>
#include <queue>
#include <utility>

#include "absl/time/clock.h"

namespace imagesearch::router {
namespace {

// A polling thread's own timers, earliest first.
struct Timer {
  absl::Time when;
  std::weak_ptr<const void> owner;
  std::function<void()> fn;
  bool operator>(const Timer& o) const { return when > o.when; }
};
using Timers = std::priority_queue<Timer, std::vector<Timer>, std::greater<Timer>>;

// The queue the current thread polls and its timers; null off the polling
// threads.
thread_local grpc::CompletionQueue* current_queue = nullptr;
thread_local Timers* current_timers = nullptr;

// Runs the timers that are due and drops those whose owner is gone; returns
// when the earliest one left is due (infinite future: none).
absl::Time RunDue(Timers& timers) {
  while (!timers.empty()) {
    if (timers.top().owner.expired()) {
      timers.pop();
      continue;
    }
    if (timers.top().when > absl::Now()) return timers.top().when;
    std::function<void()> fn = std::move(const_cast<Timer&>(timers.top()).fn);
    timers.pop();
    fn();
  }
  return absl::InfiniteFuture();
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
  for (auto& q : queues_) {
    for (int i = 0; i < std::max(1, threads_per_queue); ++i) {
      threads_.emplace_back(&CompletionThreads::Poll, this, q.get());
    }
  }
}

void CompletionThreads::Poll(grpc::CompletionQueue* queue) {
  Timers timers;
  current_queue = queue;
  current_timers = &timers;
  void* tag = nullptr;
  bool ok = false;
  while (true) {
    const absl::Time next = RunDue(timers);
    const auto status = queue->AsyncNext(&tag, &ok,
                                         next == absl::InfiniteFuture()
                                             ? std::chrono::system_clock::time_point::max()
                                             : absl::ToChronoTime(next));
    if (status == grpc::CompletionQueue::SHUTDOWN) break;
    if (status == grpc::CompletionQueue::GOT_EVENT) static_cast<CqTag*>(tag)->Proceed(ok);
  }
  current_timers = nullptr;
  current_queue = nullptr;
}

bool CompletionThreads::AtOnThisThread(absl::Time when, std::weak_ptr<const void> owner,
                                       std::function<void()> fn) {
  if (current_timers == nullptr) return false;
  bool ours = false;
  for (const auto& q : queues_) ours = ours || q.get() == current_queue;
  if (!ours) return false;
  current_timers->push(Timer{when, std::move(owner), std::move(fn)});
  return true;
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
  for (auto& q : queues_) q->Shutdown();
  for (auto& t : threads_) t.join();
}

}  // namespace imagesearch::router
