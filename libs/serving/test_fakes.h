// Test-only helpers shared by the serving tests (Catch2): a gate a test
// opens, a count it waits on and a future it awaits, so that a test waits for
// the event it needs rather than for a guessed time; and a model runtime
// without a model.
//
// Thread-safe.
#ifndef IMAGESEARCH_LIBS_SERVING_TEST_FAKES_H_
#define IMAGESEARCH_LIBS_SERVING_TEST_FAKES_H_

#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <future>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "libs/serving/call_context.h"
#include "libs/serving/model_runtime.h"

namespace imagesearch::serving::testing {

// How long a wait for something that must happen lasts before the test gives
// up and fails: a guard against a hang, far above any expected wait.
inline constexpr std::chrono::seconds kHangGuard{60};

// Threads wait at a closed gate until the test opens it.
class Gate {
 public:
  explicit Gate(bool open = true) : open_(open) {}
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = false;
  }
  // Returns once the gate is open: true, or false after kHangGuard.
  bool Wait() const {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kHangGuard, [this] { return open_; });
  }

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  bool open_;
};

// A count threads add to and a test waits on.
class Count {
 public:
  void Add(int n = 1) {
    std::lock_guard<std::mutex> lock(mu_);
    value_ += n;
    cv_.notify_all();
  }
  int value() const {
    std::lock_guard<std::mutex> lock(mu_);
    return value_;
  }
  // Returns once the count is at least `n`: true, or false after kHangGuard.
  bool WaitFor(int n) const {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kHangGuard, [&] { return value_ >= n; });
  }

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  int value_ = 0;
};

// Waits for `f` (failing the test after kHangGuard) and returns its value.
template <typename T>
T Await(std::future<T> f) {
  REQUIRE(f.wait_for(kHangGuard) == std::future_status::ready);
  return f.get();
}

// Returns once absl::Now(), the clock CallContext::Check reads, has passed `t`.
inline void SleepPast(absl::Time t) {
  while (absl::Now() <= t) absl::SleepFor(t - absl::Now() + absl::Microseconds(100));
}

// A context from the gRPC front end, with `deadline`.
inline CallContext GrpcContext(absl::Time deadline = absl::InfiniteFuture()) {
  CallContext c;
  c.front = "grpc";
  c.deadline = deadline;
  return c;
}

// A model runtime without a model. An input embeds to `vectors[input]` where
// that is set, otherwise to dim() floats {first byte, length, 0, ...}; the
// input "bad" does not decode. Each Embed call adds to `calls` on entry,
// waits at `gate`, records its batch size and adds the inputs it embedded to
// `embedded`. Set `vectors` before the runtime is shared.
class FakeRuntime final : public ModelRuntime {
 public:
  explicit FakeRuntime(int dim = 2, bool has_text = false) : dim_(dim), has_text_(has_text) {}
  const std::string& name() const override { return name_; }
  int dim() const override { return dim_; }
  bool has_text() const override { return has_text_; }
  Embeddings Embed(EmbedItem::Kind, const std::vector<absl::string_view>& inputs) const override {
    calls.Add();
    gate.Wait();
    {
      std::lock_guard<std::mutex> lock(mu_);
      batch_sizes_.push_back(inputs.size());
    }
    Embeddings out;
    for (absl::string_view in : inputs) {
      if (in == "bad") {
        out.push_back(absl::InvalidArgumentError("image: not an image"));
        continue;
      }
      embedded.Add();
      if (auto known = vectors.find(std::string(in)); known != vectors.end()) {
        out.push_back(known->second);
        continue;
      }
      std::vector<float> v(dim_, 0.0f);
      v[0] = static_cast<float>(in[0]);
      if (dim_ > 1) v[1] = static_cast<float>(in.size());
      out.push_back(std::move(v));
    }
    return out;
  }
  // The size of each batch Embed got, in the order the calls passed the gate.
  std::vector<size_t> batch_sizes() const {
    std::lock_guard<std::mutex> lock(mu_);
    return batch_sizes_;
  }

  std::map<std::string, std::vector<float>> vectors;
  mutable Count calls;
  mutable Count embedded;
  mutable Gate gate;

 private:
  const std::string name_ = "fake";
  const int dim_;
  const bool has_text_;
  mutable std::mutex mu_;
  mutable std::vector<size_t> batch_sizes_;
};

}  // namespace imagesearch::serving::testing

#endif  // IMAGESEARCH_LIBS_SERVING_TEST_FAKES_H_
