// A dynamic batcher, as in Triton: concurrent callers Submit single items; a
// worker thread groups them into batches of at most max_batch, waiting at
// most max_delay after the first item of a batch arrives, and runs one batch
// function call for the whole group. Callers get their own result through a
// callback, called on the worker thread.
//
// Each item carries its call's CallContext: an item whose deadline has passed
// or whose client cancelled while it waited is answered with that status when
// its batch forms, and never reaches the batch function. So is an item whose
// deadline would pass during the batch function: the remaining time is
// shorter than the recent batch run time (a moving average), and a forward
// pass cannot be stopped once it starts, so running it would only spend the
// model on an answer nobody waits for. The mean, not a pessimistic bound: a
// bound that grows with the run times' spread refuses every item on a busy
// host, and once nothing runs the estimate never comes down again (measured:
// RFC 6298's mean + 4 deviations answered 99.8% of a soak's image queries
// DEADLINE_EXCEEDED). A pass longer than the mean can still end past an
// item's deadline.
//
// Thread-safe. The destructor finishes queued work before it returns.
#ifndef IMAGESEARCH_LIBS_SERVING_DYNAMIC_BATCHER_H_
#define IMAGESEARCH_LIBS_SERVING_DYNAMIC_BATCHER_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "libs/serving/call_context.h"

namespace imagesearch::serving {

struct BatcherOptions {
  int max_batch = 4;
  absl::Duration max_delay = absl::Milliseconds(2);
  size_t max_queue = 256;  // Beyond this Submit fails with RESOURCE_EXHAUSTED.
  // Worker threads, each forming and running its own batches from the one
  // queue (Triton's instance count): with 2, one batch runs while the next
  // forms and runs. The batch function must then be thread-safe.
  int workers = 1;
  // Names what an item expired before, in DEADLINE_EXCEEDED / CANCELLED.
  std::string stage = "encoding";
};

// What one batch cost; given to the observer after the batch function ran.
struct BatchStats {
  size_t size = 0;                          // Items that reached the batch function.
  std::vector<absl::Duration> queue_times;  // Per item: Submit to batch start.
  absl::Duration run_time;                  // The batch function call.
};

template <typename In, typename Out>
class DynamicBatcher {
 public:
  using Callback = std::function<void(absl::StatusOr<Out>)>;
  // Gets a batch of inputs; returns either one result per input, or an error
  // for the whole batch.
  using BatchFn = std::function<absl::StatusOr<std::vector<Out>>(std::vector<In>&)>;
  using Observer = std::function<void(const BatchStats&)>;

  DynamicBatcher(BatcherOptions options, BatchFn fn, Observer observer = nullptr)
      : options_(options), fn_(std::move(fn)), observer_(std::move(observer)) {
    for (int i = 0; i < std::max(1, options_.workers); ++i)
      workers_.emplace_back([this] { Loop(); });
  }

  ~DynamicBatcher() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    // The last owner of a batcher can be a callback its own worker runs: a
    // query holding the old snapshot's state (which owns the embedder and so
    // this batcher) ends on the worker after a swap. A thread cannot join
    // itself (std::system_error, "Resource deadlock avoided"): that worker is
    // detached and returns from Loop without touching this object again.
    bool own_worker = false;
    for (auto& w : workers_) {
      if (w.get_id() == std::this_thread::get_id()) {
        w.detach();
        DestroyedByOwnWorker() = true;
        own_worker = true;
      } else {
        w.join();
      }
    }
    // The other workers (if any) drained the queue before they returned;
    // with none, what is still queued is answered here, never dropped.
    if (own_worker) {
      std::deque<Item> left;
      {
        std::lock_guard<std::mutex> lock(mu_);
        left.swap(queue_);
      }
      for (auto& item : left) {
        item.done(absl::UnavailableError(
            absl::StrCat("the model was unloaded before ", options_.stage, " (snapshot swap)")));
      }
    }
  }

  DynamicBatcher(const DynamicBatcher&) = delete;
  DynamicBatcher& operator=(const DynamicBatcher&) = delete;

  void Submit(In input, CallContext context, Callback done) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!stop_ && queue_.size() < options_.max_queue) {
        queue_.push_back(Item{std::move(input), std::move(context), std::move(done), Clock::now()});
        cv_.notify_all();
        return;
      }
    }
    done(absl::ResourceExhaustedError(
        absl::StrCat("embedding queue is full (", options_.max_queue, " waiting)")));
  }

 private:
  using Clock = std::chrono::steady_clock;
  struct Item {
    In input;
    CallContext context;
    Callback done;
    Clock::time_point arrived;
  };

  void Loop() {
    const auto delay = absl::ToChronoMicroseconds(options_.max_delay);
    const size_t max_batch = options_.max_batch < 1 ? 1 : static_cast<size_t>(options_.max_batch);
    for (;;) {
      {
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
        RunBatch(batch);
      }  // The batch's callbacks may have held the last reference to this batcher.
      if (DestroyedByOwnWorker()) return;
    }
  }

  // Set on a worker thread whose callback destroyed the batcher (see ~DynamicBatcher).
  static bool& DestroyedByOwnWorker() {
    static thread_local bool destroyed = false;
    return destroyed;
  }

  // Every callback runs at the end and touches only locals: one of them may
  // drop the last reference to this batcher (see ~DynamicBatcher).
  void RunBatch(std::vector<Item>& batch) {
    const auto start = Clock::now();
    std::vector<Item> live;
    std::vector<std::pair<Item, absl::Status>> expired;  // Expired while queued: no model time.
    live.reserve(batch.size());
    const absl::Duration expected_run = absl::Nanoseconds(expected_run_ns_.load());
    bool predicted_miss = false;
    const absl::Time now = absl::Now();
    for (auto& item : batch) {
      if (absl::Status s = item.context.Check(options_.stage); !s.ok()) {
        expired.emplace_back(std::move(item), std::move(s));
      } else if (item.context.deadline - now < expected_run) {
        predicted_miss = true;
        expired.emplace_back(
            std::move(item),
            absl::DeadlineExceededError(absl::StrCat(
                "deadline would pass during ", options_.stage, ": ",
                absl::FormatDuration(
                    absl::Trunc(item.context.deadline - now, absl::Milliseconds(1))),
                " left, a batch takes ",
                absl::FormatDuration(absl::Trunc(expected_run, absl::Milliseconds(1))))));
      } else {
        live.push_back(std::move(item));
      }
    }
    if (live.empty() && predicted_miss) {
      // Nothing ran, so the estimate got no new sample: halve it, or one
      // slow pass could leave it above every client's budget for good.
      expected_run_ns_.store(expected_run_ns_.load() / 2);
    }
    absl::StatusOr<std::vector<Out>> results = std::vector<Out>();
    if (!live.empty()) {
      std::vector<In> inputs;
      inputs.reserve(live.size());
      for (auto& item : live) inputs.push_back(std::move(item.input));
      const auto run_start = Clock::now();
      results = fn_(inputs);
      // Moving average of the run time, 1/4 weight to the newest batch.
      const int64_t took =
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - run_start).count();
      const int64_t old = expected_run_ns_.load();
      expected_run_ns_.store(old == 0 ? took : old + (took - old) / 4);
      if (observer_) {
        BatchStats stats;
        stats.size = live.size();
        stats.run_time = absl::FromChrono(Clock::now() - run_start);
        for (const auto& item : live)
          stats.queue_times.push_back(absl::FromChrono(start - item.arrived));
        observer_(stats);
      }
    }
    for (auto& [item, status] : expired) item.done(std::move(status));
    for (size_t i = 0; i < live.size(); ++i) {
      if (!results.ok()) {
        live[i].done(results.status());
      } else if (results->size() != live.size()) {
        live[i].done(absl::InternalError("batch function returned the wrong number of results"));
      } else {
        live[i].done(std::move((*results)[i]));
      }
    }
  }

  // Written by the workers, read when a batch forms; 0 before the first batch.
  std::atomic<int64_t> expected_run_ns_{0};
  const BatcherOptions options_;
  const BatchFn fn_;
  const Observer observer_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  bool stop_ = false;
  std::vector<std::thread> workers_;  // Last: start after everything above exists.
};

}  // namespace imagesearch::serving

#endif  // IMAGESEARCH_LIBS_SERVING_DYNAMIC_BATCHER_H_
