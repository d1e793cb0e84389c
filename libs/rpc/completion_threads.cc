#include "libs/rpc/completion_threads.h"

#include <algorithm>
#include <mutex>
#include <utility>

namespace imagesearch::rpc {
namespace {

// The queue the current thread polls; null off the polling threads.
thread_local grpc::CompletionQueue* current_queue = nullptr;

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
  current_queue = queue;
  void* tag = nullptr;
  bool ok = false;
  while (queue->Next(&tag, &ok)) {
#if defined(IMAGESEARCH_TSAN_BUILD)  // See CMakeLists.txt: not __SANITIZE_THREAD__.
    __tsan_acquire(tag);             // See CqTag::GrpcTag.
#endif
    static_cast<CqTag*>(tag)->Proceed(ok);
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
  for (auto& q : queues_) q->Shutdown();
  for (auto& t : threads_) t.join();
}

}  // namespace imagesearch::rpc
