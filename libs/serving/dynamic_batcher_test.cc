#include "libs/serving/dynamic_batcher.h"

#include <catch2/catch.hpp>
#include <atomic>
#include <future>
#include <memory>
#include <thread>

namespace imagesearch::serving {
namespace {

TEST_CASE("Concurrent submissions share batches and each caller gets its own result") {
  BatcherOptions o;
  o.max_batch = 8;
  o.max_delay = absl::Milliseconds(50);
  std::vector<BatchStats> stats;  // Written on the worker thread only.
  DynamicBatcher<int, int> b(
      o,
      [&](std::vector<int>& in) -> absl::StatusOr<std::vector<int>> {
        std::vector<int> out;
        for (int x : in) out.push_back(x * x);
        return out;
      },
      [&](const BatchStats& s) { stats.push_back(s); });
  std::vector<std::promise<int>> promises(32);
  std::vector<std::thread> threads;
  for (int i = 0; i < 32; ++i) {
    threads.emplace_back([&, i] {
      b.Submit(i, {}, [&, i](absl::StatusOr<int> r) { promises[i].set_value(r.ok() ? *r : -1); });
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 32; ++i) CHECK(promises[i].get_future().get() == i * i);
  size_t items = 0, largest = 0;
  for (const auto& s : stats) {
    items += s.size;
    largest = std::max(largest, s.size);
    CHECK(s.queue_times.size() == s.size);
  }
  CHECK(items == 32);
  CHECK(stats.size() < 32);  // Some items shared a forward pass.
  CHECK(largest <= 8);
  CHECK(largest > 1);
}

TEST_CASE("A lone item is not held longer than max_delay, and batch errors reach every caller") {
  BatcherOptions o;
  o.max_batch = 64;
  o.max_delay = absl::Milliseconds(5);
  DynamicBatcher<int, int> b(o, [](std::vector<int>& in) -> absl::StatusOr<std::vector<int>> {
    if (in[0] < 0) return absl::InternalError("model failed");
    return std::vector<int>(in.size(), 7);
  });
  std::promise<absl::Status> p;
  auto start = std::chrono::steady_clock::now();
  b.Submit(1, {}, [&](absl::StatusOr<int> r) { p.set_value(r.status()); });
  CHECK(p.get_future().get().ok());
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(2));
  std::promise<absl::Status> q;
  b.Submit(-1, {}, [&](absl::StatusOr<int> r) { q.set_value(r.status()); });
  CHECK(q.get_future().get().message() == "model failed");
}

TEST_CASE("A callback that drops the last reference destroys the batcher on its own worker") {
  // As after a snapshot swap: the query's state (which owns the embedder, and
  // so the batcher) is released by the callback the batcher's worker runs.
  BatcherOptions o;
  o.max_batch = 3;  // The batch forms only once all three are queued.
  o.max_delay = absl::Seconds(5);
  for (bool expired : {false, true}) {
    INFO((expired ? "expired items" : "answered items"));
    auto batcher = std::make_shared<DynamicBatcher<int, int>>(
        o, [](std::vector<int>& in) -> absl::StatusOr<std::vector<int>> {
          return std::vector<int>(in.size(), 1);
        });
    std::weak_ptr<DynamicBatcher<int, int>> weak = batcher;
    std::promise<void> answered;
    std::atomic<int> calls{0};
    CallContext context;
    if (expired) context.deadline = absl::Now() + absl::Milliseconds(5);
    auto owner = std::make_shared<std::shared_ptr<DynamicBatcher<int, int>>>(batcher);
    for (int i = 0; i < 3; ++i) {
      batcher->Submit(i, context, [owner, &calls, &answered](absl::StatusOr<int>) {
        owner->reset();  // The last reference goes here, on the worker.
        if (++calls == 3) answered.set_value();
      });
    }
    batcher.reset();
    owner.reset();  // Now only the queued callbacks hold it.
    REQUIRE(answered.get_future().wait_for(std::chrono::seconds(30)) == std::future_status::ready);
    for (int i = 0; i < 200 && !weak.expired(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    CHECK(weak.expired());
    CHECK(calls == 3);
  }
}

TEST_CASE("A full queue refuses with RESOURCE_EXHAUSTED") {
  BatcherOptions o;
  o.max_batch = 1;
  o.max_delay = absl::ZeroDuration();
  o.max_queue = 2;
  std::promise<void> release;
  auto gate = release.get_future().share();
  DynamicBatcher<int, int> b(o, [gate](std::vector<int>& in) -> absl::StatusOr<std::vector<int>> {
    gate.wait();
    return std::vector<int>(in.size(), 0);
  });
  std::atomic<int> exhausted{0}, ok{0};
  auto cb = [&](absl::StatusOr<int> r) {
    if (absl::IsResourceExhausted(r.status())) exhausted++;
    if (r.ok()) ok++;
  };
  b.Submit(0, {}, cb);  // Taken by the worker (blocked on the gate) ...
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  for (int i = 0; i < 5; ++i) b.Submit(i, {}, cb);  // ... 2 queue, 3 refused.
  CHECK(exhausted == 3);
  release.set_value();
}

TEST_CASE("Items whose deadline passed or whose client cancelled never reach the model") {
  BatcherOptions o;
  o.max_batch = 8;
  o.max_delay = absl::Milliseconds(1);
  std::promise<void> release;
  auto gate = release.get_future().share();
  std::atomic<int> encoded{0};
  DynamicBatcher<int, int> b(o, [&](std::vector<int>& in) -> absl::StatusOr<std::vector<int>> {
    gate.wait();
    encoded += static_cast<int>(in.size());
    return std::vector<int>(in.size(), 1);
  });
  std::promise<absl::Status> first, late, gone, fine;
  b.Submit(0, {}, [&](absl::StatusOr<int> r) { first.set_value(r.status()); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // The worker holds item 0.
  CallContext soon;
  soon.deadline = absl::Now() + absl::Milliseconds(30);
  b.Submit(1, soon, [&](absl::StatusOr<int> r) { late.set_value(r.status()); });
  std::atomic<bool> cancelled{false};
  CallContext cancellable;
  cancellable.cancelled = [&] { return cancelled.load(); };
  b.Submit(2, cancellable, [&](absl::StatusOr<int> r) { gone.set_value(r.status()); });
  b.Submit(3, {}, [&](absl::StatusOr<int> r) { fine.set_value(r.status()); });
  cancelled = true;
  std::this_thread::sleep_for(std::chrono::milliseconds(60));  // Past item 1's deadline.
  release.set_value();
  CHECK(first.get_future().get().ok());
  absl::Status l = late.get_future().get();
  CHECK(absl::IsDeadlineExceeded(l));
  CHECK(l.message() == "deadline passed before encoding");
  absl::Status g = gone.get_future().get();
  CHECK(absl::IsCancelled(g));
  CHECK(g.message() == "client cancelled the call before encoding");
  CHECK(fine.get_future().get().ok());
  CHECK(encoded == 2);  // Items 0 and 3 only.
}

TEST_CASE("An item whose deadline would pass during the batch is answered without running") {
  BatcherOptions o;
  o.max_batch = 1;
  o.max_delay = absl::ZeroDuration();
  std::atomic<int> encoded{0};
  DynamicBatcher<int, int> b(o, [&](std::vector<int>& in) -> absl::StatusOr<std::vector<int>> {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // A slow forward pass.
    encoded += static_cast<int>(in.size());
    return std::vector<int>(in.size(), 1);
  });
  auto submit = [&](absl::Duration budget) {
    std::promise<absl::Status> p;
    CallContext c;
    c.deadline = absl::Now() + budget;
    b.Submit(0, c, [&](absl::StatusOr<int> r) { p.set_value(r.status()); });
    return p.get_future().get();
  };
  // The first batch teaches the batcher how long a pass takes.
  CHECK(submit(absl::Seconds(10)).ok());
  CHECK(encoded == 1);
  // 50 ms left, a pass takes ~200 ms: answered at once, the model never sees it.
  const absl::Time start = absl::Now();
  const absl::Status s = submit(absl::Milliseconds(50));
  CHECK(absl::IsDeadlineExceeded(s));
  CHECK(s.message().find("deadline would pass during encoding") == 0);
  CHECK(absl::Now() - start < absl::Milliseconds(150));
  CHECK(encoded == 1);
  // Enough time left: it runs.
  CHECK(submit(absl::Seconds(2)).ok());
  CHECK(encoded == 2);
  // A refusal halves the estimate (it got no new sample), so a short budget
  // that keeps being refused is eventually tried again, never locked out.
  int refused = 0;
  while (refused < 20 && absl::IsDeadlineExceeded(submit(absl::Milliseconds(60)))) ++refused;
  CHECK(refused >= 1);
  CHECK(refused < 20);
  CHECK(encoded == 3);
}

TEST_CASE("With two workers, two batches run at once") {
  BatcherOptions o;
  o.max_batch = 1;
  o.max_delay = absl::ZeroDuration();
  o.workers = 2;
  std::atomic<int> running{0}, most{0};
  DynamicBatcher<int, int> b(o, [&](std::vector<int>& in) -> absl::StatusOr<std::vector<int>> {
    const int now = ++running;
    int seen = most.load();
    while (now > seen && !most.compare_exchange_weak(seen, now)) {
    }
    // Hold the batch until the other worker has one too (bounded wait).
    for (int i = 0; i < 200 && most < 2; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    --running;
    return std::vector<int>(in.size(), 1);
  });
  std::promise<void> a, c;
  b.Submit(1, {}, [&](absl::StatusOr<int>) { a.set_value(); });
  b.Submit(2, {}, [&](absl::StatusOr<int>) { c.set_value(); });
  a.get_future().wait();
  c.get_future().wait();
  CHECK(most == 2);
}

}  // namespace
}  // namespace imagesearch::serving
