#include "libs/serving/dynamic_batcher.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <future>
#include <memory>
#include <thread>

#include "libs/serving/test_fakes.h"

namespace imagesearch::serving {
namespace {

using testing::Await;
using testing::Count;
using testing::Gate;
using testing::GrpcContext;

// A max_delay no test reaches: such a batch forms only once it is full (or
// the batcher stops).
constexpr absl::Duration kNeverDue = absl::Hours(1);

TEST_CASE("Concurrent submissions share batches and each caller gets its own result") {
  BatcherOptions o;
  o.max_batch = 8;
  o.max_delay = kNeverDue;        // Every batch is full: 32 items make 4 batches of 8.
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
      b.Submit(i, GrpcContext(),
               [&, i](absl::StatusOr<int> r) { promises[i].set_value(r.ok() ? *r : -1); });
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 32; ++i) CHECK(Await(promises[i].get_future()) == i * i);
  // The observer runs before a batch's callbacks, so all four are recorded.
  REQUIRE(stats.size() == 4);
  for (const auto& s : stats) {
    CHECK(s.size == 8);
    CHECK(s.queue_times.size() == 8);
  }
}

TEST_CASE("A partial batch waits for more items until max_delay") {
  BatcherOptions o;
  o.max_batch = 2;
  o.max_delay = kNeverDue;
  std::vector<size_t> sizes;  // Written on the worker thread only.
  DynamicBatcher<int, int> b(o, [&](std::vector<int>& in) -> absl::StatusOr<std::vector<int>> {
    sizes.push_back(in.size());
    return std::vector<int>(in.size(), 7);
  });
  std::promise<absl::Status> first, second;
  b.Submit(1, GrpcContext(), [&](absl::StatusOr<int> r) { first.set_value(r.status()); });
  b.Submit(2, GrpcContext(), [&](absl::StatusOr<int> r) { second.set_value(r.status()); });
  CHECK(Await(first.get_future()).ok());
  CHECK(Await(second.get_future()).ok());
  CHECK(sizes == std::vector<size_t>{2});  // The first item waited for the second.
}

TEST_CASE("A lone item is flushed by max_delay, and batch errors reach every caller") {
  BatcherOptions o;
  o.max_batch = 64;
  o.max_delay = absl::Milliseconds(5);
  std::vector<size_t> sizes;  // Written on the worker thread only.
  DynamicBatcher<int, int> b(o, [&](std::vector<int>& in) -> absl::StatusOr<std::vector<int>> {
    sizes.push_back(in.size());
    if (in[0] < 0) return absl::InternalError("model failed");
    return std::vector<int>(in.size(), 7);
  });
  std::promise<absl::StatusOr<int>> p;
  b.Submit(1, GrpcContext(), [&](absl::StatusOr<int> r) { p.set_value(r); });
  // Nothing else is submitted until this item is answered.
  const absl::StatusOr<int> r = Await(p.get_future());
  REQUIRE(r.ok());
  CHECK(*r == 7);
  CHECK(sizes == std::vector<size_t>{1});
  // Two callers whose batches fail; each gets the error.
  std::promise<absl::Status> q1, q2;
  b.Submit(-1, GrpcContext(), [&](absl::StatusOr<int> r) { q1.set_value(r.status()); });
  b.Submit(-2, GrpcContext(), [&](absl::StatusOr<int> r) { q2.set_value(r.status()); });
  CHECK(Await(q1.get_future()).message() == "model failed");
  CHECK(Await(q2.get_future()).message() == "model failed");
}

TEST_CASE("A callback that drops the last reference destroys the batcher on its own worker") {
  // As after a snapshot swap: the query's state (which owns the embedder, and
  // so the batcher) is released by the callback the batcher's worker runs.
  BatcherOptions o;
  o.max_batch = 3;  // The batch forms only once all three are queued.
  o.max_delay = kNeverDue;
  for (bool expired : {false, true}) {
    INFO((expired ? "expired items" : "answered items"));
    auto batcher = std::make_shared<DynamicBatcher<int, int>>(
        o, [](std::vector<int>& in) -> absl::StatusOr<std::vector<int>> {
          return std::vector<int>(in.size(), 1);
        });
    std::weak_ptr<DynamicBatcher<int, int>> weak = batcher;
    // The first callback waits here until the test has dropped its own
    // references, so the callbacks hold the last one.
    Gate test_let_go(/*open=*/false);
    Count calls;
    std::atomic<int> ok{0}, deadline_exceeded{0};
    std::atomic<bool> destroyed_on_worker{false};
    const std::thread::id test_thread = std::this_thread::get_id();
    // Submit does not check the deadline; the batch does, when it forms.
    const CallContext context =
        GrpcContext(expired ? absl::Now() - absl::Seconds(1) : absl::InfiniteFuture());
    auto owner = std::make_shared<std::shared_ptr<DynamicBatcher<int, int>>>(batcher);
    for (int i = 0; i < 3; ++i) {
      batcher->Submit(i, context, [&, owner, weak](absl::StatusOr<int> r) {
        test_let_go.Wait();
        owner->reset();  // The last reference goes here, on the worker.
        if (weak.expired() && std::this_thread::get_id() != test_thread) {
          destroyed_on_worker = true;
        }
        if (r.ok()) ++ok;
        if (absl::IsDeadlineExceeded(r.status())) ++deadline_exceeded;
        calls.Add();
      });
    }
    batcher.reset();
    owner.reset();  // Now only the queued callbacks hold it.
    test_let_go.Open();
    REQUIRE(calls.WaitFor(3));
    CHECK(destroyed_on_worker);
    CHECK(weak.expired());
    CHECK(ok == (expired ? 0 : 3));
    CHECK(deadline_exceeded == (expired ? 3 : 0));
  }
}

TEST_CASE("A full queue refuses with RESOURCE_EXHAUSTED") {
  BatcherOptions o;
  o.max_batch = 1;
  o.max_delay = absl::ZeroDuration();
  o.max_queue = 2;
  Count running;
  Gate release(/*open=*/false);
  std::atomic<int> exhausted{0}, ok{0};
  auto cb = [&](absl::StatusOr<int> r) {
    if (absl::IsResourceExhausted(r.status())) exhausted++;
    if (r.ok()) ok++;
  };
  {
    DynamicBatcher<int, int> b(o, [&](std::vector<int>& in) -> absl::StatusOr<std::vector<int>> {
      running.Add();
      release.Wait();
      return std::vector<int>(in.size(), 0);
    });
    b.Submit(0, GrpcContext(), cb);
    REQUIRE(running.WaitFor(1));  // The worker holds item 0, and the queue is empty.
    for (int i = 0; i < 5; ++i) b.Submit(i, GrpcContext(), cb);  // 2 queue, 3 refused.
    CHECK(exhausted == 3);                                       // Refused at once, on this thread.
    CHECK(ok == 0);
    release.Open();
  }  // The destructor finishes the queued items.
  CHECK(exhausted == 3);
  CHECK(ok == 3);
}

TEST_CASE("Items whose deadline passed or whose client cancelled never reach the model") {
  BatcherOptions o;
  o.max_batch = 8;
  o.max_delay = absl::Milliseconds(1);
  Count running;
  Gate release(/*open=*/false);
  std::atomic<int> encoded{0};
  DynamicBatcher<int, int> b(o, [&](std::vector<int>& in) -> absl::StatusOr<std::vector<int>> {
    running.Add();
    release.Wait();
    encoded += static_cast<int>(in.size());
    return std::vector<int>(in.size(), 1);
  });
  std::promise<absl::Status> first, late, gone, fine;
  b.Submit(0, GrpcContext(), [&](absl::StatusOr<int> r) { first.set_value(r.status()); });
  REQUIRE(running.WaitFor(1));  // The worker holds item 0; the rest queue behind it.
  const CallContext soon = GrpcContext(absl::Now() + absl::Milliseconds(1));
  b.Submit(1, soon, [&](absl::StatusOr<int> r) { late.set_value(r.status()); });
  std::atomic<bool> cancelled{false};
  CallContext cancellable = GrpcContext();
  cancellable.cancelled = [&] { return cancelled.load(); };
  b.Submit(2, cancellable, [&](absl::StatusOr<int> r) { gone.set_value(r.status()); });
  b.Submit(3, GrpcContext(), [&](absl::StatusOr<int> r) { fine.set_value(r.status()); });
  cancelled = true;
  testing::SleepPast(soon.deadline);  // Item 1's deadline passes while it is queued.
  release.Open();
  CHECK(Await(first.get_future()).ok());
  absl::Status l = Await(late.get_future());
  CHECK(absl::IsDeadlineExceeded(l));
  CHECK(l.message() == "deadline passed before encoding");
  absl::Status g = Await(gone.get_future());
  CHECK(absl::IsCancelled(g));
  CHECK(g.message() == "client cancelled the call before encoding");
  CHECK(Await(fine.get_future()).ok());
  CHECK(encoded == 2);  // Items 0 and 3 only.
  CHECK(running.value() == 2);
}

TEST_CASE("An item whose deadline would pass during the batch is answered without running") {
  BatcherOptions o;
  o.max_batch = 1;
  o.max_delay = absl::ZeroDuration();
  std::atomic<int> encoded{0};
  // An item is how long its forward pass takes, in ms: the batcher measures
  // the batch function's wall time, so a slow pass has to take real time.
  DynamicBatcher<int, int> b(o, [&](std::vector<int>& in) -> absl::StatusOr<std::vector<int>> {
    std::this_thread::sleep_for(std::chrono::milliseconds(in[0]));
    encoded += static_cast<int>(in.size());
    return std::vector<int>(in.size(), 1);
  });
  auto submit = [&](int pass_ms, absl::Duration budget) {
    std::promise<absl::Status> p;
    b.Submit(pass_ms, GrpcContext(absl::Now() + budget),
             [&](absl::StatusOr<int> r) { p.set_value(r.status()); });
    return Await(p.get_future());
  };
  // The first batch teaches the batcher that a pass takes at least 1 s.
  CHECK(submit(1000, absl::Seconds(60)).ok());
  CHECK(encoded == 1);
  // 500 ms left and a pass takes 1 s: answered without running (the budget
  // leaves this thread 500 ms to get the item to the worker). The refusal
  // gave no new sample, so it halves the estimate: at least 500 ms.
  const absl::Status s = submit(0, absl::Milliseconds(500));
  CHECK(absl::IsDeadlineExceeded(s));
  CHECK(s.message().find("deadline would pass during encoding: ") == 0);
  CHECK(encoded == 1);
  // Enough time left: it runs, and its fast pass lowers the estimate to 3/4:
  // at least 375 ms.
  CHECK(submit(0, absl::Seconds(60)).ok());
  CHECK(encoded == 2);
  // A budget of 250 ms is refused while the estimate is above it; each
  // refusal halves the estimate, so the budget is tried again, never locked
  // out.
  int refused = 0;
  while (refused < 20 && absl::IsDeadlineExceeded(submit(0, absl::Milliseconds(250)))) ++refused;
  CHECK(refused >= 1);
  CHECK(refused < 20);
  CHECK(encoded == 3);
}

TEST_CASE("With two workers, two batches run at once") {
  BatcherOptions o;
  o.max_batch = 1;
  o.max_delay = absl::ZeroDuration();
  o.workers = 2;
  Count running;
  std::atomic<int> saw_both{0};
  // Each batch holds its worker until the other batch is running too: with
  // one worker the first would wait in vain (kHangGuard) and the check fail.
  DynamicBatcher<int, int> b(o, [&](std::vector<int>& in) -> absl::StatusOr<std::vector<int>> {
    running.Add();
    if (running.WaitFor(2)) ++saw_both;
    return std::vector<int>(in.size(), 1);
  });
  std::promise<void> a, c;
  b.Submit(1, GrpcContext(), [&](absl::StatusOr<int>) { a.set_value(); });
  b.Submit(2, GrpcContext(), [&](absl::StatusOr<int>) { c.set_value(); });
  Await(a.get_future());
  Await(c.get_future());
  CHECK(saw_both == 2);
}

}  // namespace
}  // namespace imagesearch::serving
