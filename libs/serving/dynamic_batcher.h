// A dynamic batcher, as in Triton: concurrent callers Submit single items; a
// worker thread groups them into batches of at most max_batch, waiting at
// most max_delay after the first item of a batch arrives, and runs one batch
// function call for the whole group. Callers get their own result through a
// callback, called on the worker thread.
//
// Thread-safe. The destructor finishes queued work before it returns.
#ifndef IMAGESEARCH_LIBS_SERVING_DYNAMIC_BATCHER_H_
#define IMAGESEARCH_LIBS_SERVING_DYNAMIC_BATCHER_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace imagesearch::serving {

struct BatcherOptions {
  int max_batch = 16;
  absl::Duration max_delay = absl::Milliseconds(2);
  size_t max_queue = 256;  // Beyond this Submit fails with RESOURCE_EXHAUSTED.
};

template <typename In, typename Out>
class DynamicBatcher {
 public:
  using Callback = std::function<void(absl::StatusOr<Out>)>;
  // Gets a batch of inputs; returns either one result per input, or an error
  // for the whole batch.
  using BatchFn = std::function<absl::StatusOr<std::vector<Out>>(std::vector<In>&)>;

  DynamicBatcher(BatcherOptions options, BatchFn fn)
      : options_(options), fn_(std::move(fn)), worker_([this] { Loop(); }) {}

  ~DynamicBatcher() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  DynamicBatcher(const DynamicBatcher&) = delete;
  DynamicBatcher& operator=(const DynamicBatcher&) = delete;

  void Submit(In input, Callback done) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!stop_ && queue_.size() < options_.max_queue) {
        queue_.push_back(Item{std::move(input), std::move(done), Clock::now()});
        cv_.notify_all();
        return;
      }
    }
    done(absl::ResourceExhaustedError(
        absl::StrCat("embedding queue is full (", options_.max_queue, " waiting)")));
  }

  uint64_t batches() const { return batches_.load(); }
  uint64_t items() const { return items_.load(); }
  int max_batch_seen() const { return max_batch_seen_.load(); }

 private:
  using Clock = std::chrono::steady_clock;
  struct Item {
    In input;
    Callback done;
    Clock::time_point arrived;
  };

  void Loop() {
    const auto delay = absl::ToChronoMicroseconds(options_.max_delay);
    const size_t max_batch = options_.max_batch < 1 ? 1 : static_cast<size_t>(options_.max_batch);
    for (;;) {
      std::vector<Item> batch;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;  // Stopping, and drained.
        // Wait for a full batch or for the oldest item's delay to run out.
        const auto deadline = queue_.front().arrived + delay;
        cv_.wait_until(lock, deadline, [&] { return stop_ || queue_.size() >= max_batch; });
        const size_t n = std::min(max_batch, queue_.size());
        for (size_t i = 0; i < n; ++i) {
          batch.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
      }
      std::vector<In> inputs;
      inputs.reserve(batch.size());
      for (auto& item : batch) inputs.push_back(std::move(item.input));
      auto results = fn_(inputs);
      batches_++;
      items_ += batch.size();
      int seen = max_batch_seen_.load();
      while (static_cast<int>(batch.size()) > seen &&
             !max_batch_seen_.compare_exchange_weak(seen, static_cast<int>(batch.size()))) {
      }
      for (size_t i = 0; i < batch.size(); ++i) {
        if (!results.ok()) {
          batch[i].done(results.status());
        } else if (results->size() != batch.size()) {
          batch[i].done(absl::InternalError("batch function returned the wrong number of results"));
        } else {
          batch[i].done(std::move((*results)[i]));
        }
      }
    }
  }

  const BatcherOptions options_;
  const BatchFn fn_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  bool stop_ = false;
  std::atomic<uint64_t> batches_{0};
  std::atomic<uint64_t> items_{0};
  std::atomic<int> max_batch_seen_{0};
  std::thread worker_;  // Last: starts after everything above exists.
};

}  // namespace imagesearch::serving

#endif  // IMAGESEARCH_LIBS_SERVING_DYNAMIC_BATCHER_H_
