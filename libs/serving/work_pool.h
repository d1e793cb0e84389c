// A fixed pool of worker threads with a bounded queue. TrySubmit refuses work
// instead of queueing without bound, which is how the service turns overload
// into RESOURCE_EXHAUSTED rather than into unbounded latency and memory.
// Thread-safe.
#ifndef IMAGESEARCH_LIBS_SERVING_WORK_POOL_H_
#define IMAGESEARCH_LIBS_SERVING_WORK_POOL_H_

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace imagesearch::serving {

class WorkPool {
 public:
  WorkPool(int threads, size_t max_queue);
  ~WorkPool();  // Runs what is queued, then joins.
  WorkPool(const WorkPool&) = delete;
  WorkPool& operator=(const WorkPool&) = delete;

  // Queues `task`; false (and `task` is dropped) if max_queue tasks wait.
  bool TrySubmit(std::function<void()> task);

 private:
  const size_t max_queue_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace imagesearch::serving

#endif  // IMAGESEARCH_LIBS_SERVING_WORK_POOL_H_
