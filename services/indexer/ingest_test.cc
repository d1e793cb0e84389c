// IngestCore on a vector-only root: the two merge lanes.
#include "services/indexer/ingest.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "libs/common/test_temp_dir.h"

namespace imagesearch::indexer {
namespace {

constexpr int kDim = 8;

std::vector<IngestItem> Items(const std::string& prefix, int n) {
  std::vector<IngestItem> items;
  for (int i = 0; i < n; ++i) {
    IngestItem item;
    item.id = prefix + std::to_string(i);
    item.vector.resize(kDim);
    for (int d = 0; d < kDim; ++d) {
      item.vector[d] =
          static_cast<float>((i * 7 + d * 3 + static_cast<int>(prefix.size())) % 11) + 1;
    }
    items.push_back(std::move(item));
  }
  return items;
}

// Polls `done` for up to 30 s.
template <typename F>
bool WaitFor(F done) {
  for (int i = 0; i < 3000; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return done();
}

TEST_CASE("While a fold holds the big segment, the other lane joins new segments into a tail") {
  IngestOptions o;
  o.root = testing::NewTempDir("ingest_lanes");
  o.dim = kDim;
  o.publish_interval = absl::Hours(1);  // Published by Flush only.
  o.thumbnails = false;
  o.background_nice = 0;
  // The fold lane waits, once it has chosen, until the test lets it go.
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  std::vector<std::string> fold;
  o.before_merge = [&](const std::vector<std::string>& names) {
    if (names.size() != 2 || !fold.empty()) return;  // Only the first fold: big + s2.
    std::unique_lock<std::mutex> lock(mu);
    fold = names;
    cv.notify_all();
    cv.wait_for(lock, std::chrono::seconds(60), [&] { return release; });
  };
  auto core = IngestCore::Start(o);
  REQUIRE(core.ok());
  IngestCore& c = **core;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  auto upsert = [&](const std::string& prefix, int n) {
    auto r = c.Upsert(Items(prefix, n), /*wait=*/false, deadline);
    REQUIRE(r.ok());
    REQUIRE(c.Flush(deadline).ok());
  };
  upsert("big", 100);  // v1: one segment.
  upsert("a", 10);     // v2: 10 rows beside 100 pass fold_pct (10%): a fold.
  {
    std::unique_lock<std::mutex> lock(mu);
    REQUIRE(cv.wait_for(lock, std::chrono::seconds(30), [&] { return !fold.empty(); }));
  }
  upsert("b", 3);  // v3: one free segment beside the held ones: nothing to join.
  upsert("c", 3);  // v4: two: the other lane joins them while the fold waits.
  CHECK(WaitFor([&] { return c.Status().merges_done == 1; }));
  IngestStatus st = c.Status();
  CHECK(st.merges_running == 1);  // The fold, still held.
  CHECK(st.segments == 3);        // big, a, and the tail of b and c.
  CHECK(st.live_rows == 116);
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  // The fold publishes on top of the tail's version: big extended with a,
  // the tail beside it (6 rows: under 10% of 110, so no second fold).
  CHECK(WaitFor([&] {
    const IngestStatus s = c.Status();
    return s.merges_done == 2 && s.merges_running == 0;
  }));
  st = c.Status();
  CHECK(st.segments == 2);
  CHECK(st.live_rows == 116);
  CHECK(st.last_error.empty());
}

}  // namespace
}  // namespace imagesearch::indexer
