#include "libs/serving/dynamic_batcher.h"

#include <catch2/catch.hpp>
#include <future>
#include <thread>

namespace imagesearch::serving {
namespace {

TEST_CASE("Concurrent submissions share batches and each caller gets its own result") {
  BatcherOptions o;
  o.max_batch = 8;
  o.max_delay = absl::Milliseconds(50);
  std::vector<size_t> sizes;
  DynamicBatcher<int, int> b(o, [&](std::vector<int>& in) -> absl::StatusOr<std::vector<int>> {
    sizes.push_back(in.size());
    std::vector<int> out;
    for (int x : in) out.push_back(x * x);
    return out;
  });
  std::vector<std::promise<int>> promises(32);
  std::vector<std::thread> threads;
  for (int i = 0; i < 32; ++i) {
    threads.emplace_back([&, i] {
      b.Submit(i, [&, i](absl::StatusOr<int> r) { promises[i].set_value(r.ok() ? *r : -1); });
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 32; ++i) CHECK(promises[i].get_future().get() == i * i);
  CHECK(b.items() == 32);
  CHECK(b.batches() < 32);  // Some items shared a forward pass.
  CHECK(b.max_batch_seen() <= 8);
  CHECK(b.max_batch_seen() > 1);
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
  b.Submit(1, [&](absl::StatusOr<int> r) { p.set_value(r.status()); });
  CHECK(p.get_future().get().ok());
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(2));
  std::promise<absl::Status> q;
  b.Submit(-1, [&](absl::StatusOr<int> r) { q.set_value(r.status()); });
  CHECK(q.get_future().get().message() == "model failed");
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
  b.Submit(0, cb);  // Taken by the worker (blocked on the gate) ...
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  for (int i = 0; i < 5; ++i) b.Submit(i, cb);  // ... 2 queue, 3 refused.
  CHECK(exhausted == 3);
  release.set_value();
}

}  // namespace
}  // namespace imagesearch::serving
