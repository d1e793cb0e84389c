// IngestCore on a vector-only root: the two merge lanes.
#include "services/indexer/ingest.h"

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "libs/common/test_temp_dir.h"
#include "libs/serving/filter.h"
#include "libs/snapshot/snapshot.h"
#include "libs/snapshot/snapshot_store.h"

namespace imagesearch::indexer {
namespace {

constexpr int kDim = 8;

// `mark` goes into the first component, so a test can tell which write of
// an id a version holds (with the l2 metric, vectors are stored as given).
std::vector<IngestItem> Items(const std::string& prefix, int n, float mark = 1) {
  std::vector<IngestItem> items;
  for (int i = 0; i < n; ++i) {
    IngestItem item;
    item.id = prefix + std::to_string(i);
    item.vector.resize(kDim);
    for (int d = 0; d < kDim; ++d) {
      item.vector[d] =
          static_cast<float>((i * 7 + d * 3 + static_cast<int>(prefix.size())) % 11) + 1;
    }
    item.vector[0] = mark;
    items.push_back(std::move(item));
  }
  return items;
}

// A vector collection in a new temp dir, published by Flush only, merged
// by threads at normal priority (the tests hold merges with before_merge).
IngestOptions FlushOnlyOptions(const std::string& tag) {
  IngestOptions o;
  o.root = testing::NewTempDir(tag);
  o.dim = kDim;
  o.publish_interval = absl::Hours(1);
  o.thumbnails = false;
  o.background_nice = 0;
  return o;
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
  IngestOptions o = FlushOnlyOptions("ingest_lanes");
  // The fold lane waits, once it has chosen, until the test lets it go.
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  std::vector<std::string> fold;
  o.before_merge = [&](const std::vector<std::string>& names) {
    // Both lanes call this; `fold` is read and written under `mu`.
    std::unique_lock<std::mutex> lock(mu);
    if (names.size() != 2 || !fold.empty()) return;  // Only the first fold: big + s2.
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

TEST_CASE("StopWithin does not wait for a merge that is still running, and reports it") {
  IngestOptions o = FlushOnlyOptions("ingest_stop_within");
  // The first merge stands still once chosen, as a long fold does, until the
  // test lets it go.
  std::mutex mu;
  std::condition_variable cv;
  bool merging = false, release = false;
  o.before_merge = [&](const std::vector<std::string>&) {
    std::unique_lock<std::mutex> lock(mu);
    if (merging) return;
    merging = true;
    cv.notify_all();
    cv.wait(lock, [&] { return release; });
  };
  auto core = IngestCore::Start(o);
  REQUIRE(core.ok());
  IngestCore& c = **core;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  for (const char* prefix : {"big", "a"}) {  // 10 rows beside 100: a fold.
    REQUIRE(c.Upsert(Items(prefix, prefix[0] == 'b' ? 100 : 10), /*wait=*/false, deadline).ok());
    REQUIRE(c.Flush(deadline).ok());
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    REQUIRE(cv.wait_for(lock, std::chrono::seconds(30), [&] { return merging; }));
  }
  const auto start = std::chrono::steady_clock::now();
  CHECK_FALSE(c.StopWithin(absl::Milliseconds(200)));
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(10));
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  CHECK(c.StopWithin(absl::Seconds(60)));  // The merge ends, and so do the threads.
  CHECK(c.Status().live_rows == 110);
}

TEST_CASE("Deleting ids that are already gone publishes no new version") {
  IngestOptions o = FlushOnlyOptions("ingest_delete_gone");
  o.merge = false;
  o.publish_interval = absl::Milliseconds(1);
  auto core = IngestCore::Start(o);
  REQUIRE(core.ok());
  IngestCore& c = **core;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  auto v1 = c.Upsert(Items("a", 10), /*wait=*/true, deadline);
  REQUIRE(v1.ok());
  auto v2 = c.Delete({"a3"}, /*wait=*/true, deadline);
  REQUIRE(v2.ok());
  CHECK(*v2 > v1->version);
  // The same delete again (a client's retry), and an id never seen.
  for (const std::vector<std::string>& ids :
       {std::vector<std::string>{"a3"}, std::vector<std::string>{"nope", "a3"}}) {
    auto again = c.Delete(ids, /*wait=*/true, deadline);
    REQUIRE(again.ok());
    CHECK(*again == *v2);
    CHECK(*snapshot::ReadCurrentVersion(o.root) == *v2);
    CHECK(c.Status().last_error.empty());
  }
  CHECK(c.Status().live_rows == 9);
  // An item with neither an image nor a vector says so (not "0 values").
  IngestItem nothing;
  nothing.id = "z";
  auto none = c.Upsert({nothing}, /*wait=*/true, deadline);
  REQUIRE(none.ok());
  REQUIRE(none->items.size() == 1);
  CHECK(absl::StrContains(none->items[0].message(), "has neither an image nor a vector"));
  // One live id among unknown ones is a change.
  auto v3 = c.Delete({"nope", "a4"}, /*wait=*/true, deadline);
  REQUIRE(v3.ok());
  CHECK(*v3 > *v2);
  CHECK(c.Status().live_rows == 8);
  CHECK(c.StopWithin(absl::Seconds(60)));
}

TEST_CASE("A schema given on a root that has versions types the rows written from then on") {
  IngestOptions o = FlushOnlyOptions("ingest_schema_later");
  o.merge = false;
  o.publish_interval = absl::Milliseconds(1);
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  auto with_album = [](const std::string& prefix, int n, const std::string& album) {
    std::vector<IngestItem> items = Items(prefix, n);
    for (IngestItem& item : items) item.attributes_json = "{\"album\":\"" + album + "\"}";
    return items;
  };
  serving::Filter trip;
  trip.must.push_back({});
  trip.must.back().field = "album";
  trip.must.back().values.push_back(std::string("trip"));
  {
    auto core = IngestCore::Start(o);  // No schema: attributes kept as JSON only.
    REQUIRE(core.ok());
    REQUIRE((*core)->Upsert(with_album("old", 5, "trip"), /*wait=*/true, deadline).ok());
    CHECK(absl::IsFailedPrecondition((*core)->IdsMatching(trip).status()));
    CHECK((*core)->StopWithin(absl::Seconds(60)));
  }
  o.schema = {{"album", snapshot::FieldType::kKeyword}};
  auto core = IngestCore::Start(o);
  REQUIRE(core.ok());
  CHECK((*core)->schema().size() == 1);
  REQUIRE((*core)->Upsert(with_album("new", 3, "trip"), /*wait=*/true, deadline).ok());
  REQUIRE((*core)->Upsert(with_album("other", 2, "home"), /*wait=*/true, deadline).ok());
  auto ids = (*core)->IdsMatching(trip);
  INFO(ids.status().ToString());
  REQUIRE(ids.ok());
  std::sort(ids->begin(), ids->end());
  // The rows written before the schema have no typed album until a merge
  // re-types them; those written under it match.
  CHECK(*ids == std::vector<std::string>{"new0", "new1", "new2"});
  CHECK((*core)->StopWithin(absl::Seconds(60)));
}

// Run under ThreadSanitizer too (ci/build_tsan.sh): writers, a deleter, a
// flusher and a status reader on their own threads, while the publisher
// publishes every 20 ms and both merge lanes fold and join what it publishes.
TEST_CASE("Writers, deletes, flushes and status on many threads while both lanes merge") {
  IngestOptions o;
  o.root = testing::NewTempDir("ingest_concurrent");
  o.dim = kDim;
  o.metric = index::Metric::kL2;
  o.publish_interval = absl::Milliseconds(20);
  o.publish_rows = 40;
  o.thumbnails = false;
  o.background_nice = 0;
  o.merge_policy.floor_rows = 1;  // Tiers of these tiny segments merge too.
  auto core = IngestCore::Start(o);
  REQUIRE(core.ok());
  IngestCore& c = **core;
  const absl::Time deadline = absl::Now() + absl::Seconds(90);
  constexpr int kWriters = 3, kBatches = 6, kBatchRows = 25;
  std::vector<std::string> errors(kWriters + 2);  // Checked on the main thread.
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      for (int b = 0; b < kBatches; ++b) {
        const std::string prefix = "w" + std::to_string(w) + "b" + std::to_string(b) + "-";
        auto r = c.Upsert(Items(prefix, kBatchRows), /*wait=*/true, deadline);
        if (!r.ok() || r->version == 0) {
          errors[w] = r.ok() ? "a waited upsert reported no version" : r.status().ToString();
          return;
        }
        for (const absl::Status& s : r->items) {
          if (!s.ok()) errors[w] = s.ToString();
        }
      }
      // Writer 0 writes its first batch again, marked 2: each id's new row
      // replaces the old one, wherever a merge has put that by now.
      if (w == 0) {
        auto r = c.Upsert(Items("w0b0-", kBatchRows, /*mark=*/2), /*wait=*/true, deadline);
        if (!r.ok()) errors[w] = r.status().ToString();
      }
    });
  }
  // The deleter removes the first 10 rows of writer 1's first batch once it
  // is published (Find then sees it), while the writers go on.
  threads.emplace_back([&] {
    for (int i = 0; i < 3000; ++i) {
      auto current = snapshot::ReadCurrentVersion(o.root);
      if (current.ok()) {
        auto snap = snapshot::Snapshot::Open(o.root, *current, snapshot::VerifyMode::kSizes);
        if (snap.ok() && (*snap)->Find("w1b0-9").has_value()) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::vector<std::string> ids;
    for (int i = 0; i < 10; ++i) ids.push_back("w1b0-" + std::to_string(i));
    auto r = c.Delete(ids, /*wait=*/true, deadline);
    if (!r.ok()) errors[kWriters] = r.status().ToString();
  });
  // Flushes and status reads race the publisher and the merges.
  std::atomic<bool> writing{true};
  threads.emplace_back([&] {
    uint64_t last_flushed = 0;
    while (writing.load()) {
      auto v = c.Flush(deadline);
      if (!v.ok()) {
        errors[kWriters + 1] = v.status().ToString();
        return;
      }
      if (*v < last_flushed) errors[kWriters + 1] = "Flush went back a version";
      last_flushed = *v;
      if (const std::string e = c.Status().last_error; !e.empty()) errors[kWriters + 1] = e;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  for (size_t t = 0; t + 1 < threads.size(); ++t) threads[t].join();
  writing.store(false);
  threads.back().join();
  for (const std::string& e : errors) CHECK(e.empty());
  REQUIRE(c.Flush(deadline).ok());
  // Merges settle: the policy has nothing left to choose in CURRENT.
  auto settled = [&] {
    const IngestStatus s = c.Status();
    if (s.merges_running != 0 || s.pending_rows != 0) return false;
    auto more = snapshot::ChooseMergeInCurrent(o.root, o.merge_policy, {});
    return more.ok() && more->empty() && c.Status().merges_running == 0;
  };
  CHECK(WaitFor(settled));
  const IngestStatus st = c.Status();
  CHECK(st.last_error.empty());
  CHECK(st.merges_done > 0);
  constexpr uint64_t kLive = kWriters * kBatches * kBatchRows - 10;
  CHECK(st.live_rows == kLive);
  auto current = snapshot::ReadCurrentVersion(o.root);
  REQUIRE(current.ok());
  auto snap = snapshot::Snapshot::Open(o.root, *current, snapshot::VerifyMode::kChecksums);
  REQUIRE(snap.ok());
  CHECK((*snap)->live_count() == kLive);
  for (int w = 0; w < kWriters; ++w) {
    for (int b = 0; b < kBatches; ++b) {
      for (int i = 0; i < kBatchRows; ++i) {
        const std::string id =
            "w" + std::to_string(w) + "b" + std::to_string(b) + "-" + std::to_string(i);
        const std::optional<uint32_t> row = (*snap)->Find(id);
        if (w == 1 && b == 0 && i < 10) {
          CHECK_FALSE(row.has_value());
          continue;
        }
        REQUIRE(row.has_value());
        CHECK((*snap)->Vector(*row)[0] == (w == 0 && b == 0 ? 2.0f : 1.0f));
      }
    }
  }
}

}  // namespace
}  // namespace imagesearch::indexer
