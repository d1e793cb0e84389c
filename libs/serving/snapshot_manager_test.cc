#include "libs/serving/snapshot_manager.h"

#include <fcntl.h>
#include <stdio.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "libs/common/file_util.h"
#include "libs/serving/test_fakes.h"
#include "libs/snapshot/test_snapshots.h"

namespace imagesearch::serving {
namespace {

SnapshotManagerOptions Options(const std::string& root) {
  SnapshotManagerOptions o;
  o.root = root;
  o.poll_interval = absl::Milliseconds(20);
  return o;
}

// Flips one byte of a published file (bit rot), so the version is refused.
void Damage(const std::string& root, uint64_t version, const std::string& file) {
  const std::string path = snapshot::FirstSegmentDir(root, version) + "/" + file;
  std::string bytes = *ReadFileToString(path);
  bytes[bytes.size() / 2] ^= 1;
  REQUIRE(WriteFileDurably(path, bytes).ok());
}

TEST_CASE("Nothing is served until a snapshot exists: then new versions swap in") {
  std::string root = snapshot::TempSnapshotRoot("manager");
  int swaps_seen = 0;
  auto opts = Options(root);
  opts.on_swap = [&](const ServingState&) { ++swaps_seen; };
  SnapshotManager m(opts);
  CHECK_FALSE(m.PollOnce().ok());
  CHECK(m.Current() == nullptr);
  REQUIRE(snapshot::PublishSynthetic(root, 200, 8, index::Metric::kL2, "a").ok());
  REQUIRE(*m.PollOnce() == 1);
  auto held = m.Current();  // An "in-flight request" holding v1.
  REQUIRE(held->snapshot->version() == 1);
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "b").ok());
  REQUIRE(*m.PollOnce() == 2);
  CHECK(m.Current()->snapshot->version() == 2);
  CHECK(swaps_seen == 2);
  // The old version is still fully usable by its holder.
  CHECK(held->snapshot->Id(0)->id == "a0");
  CHECK(held->snapshot->segments()
            .front()
            .segment->searcher()
            .Search(held->snapshot->Vector(7), 1, 20)[0]
            .row == 7);
}

TEST_CASE("A corrupt new version is refused and the old one keeps serving") {
  std::string root = snapshot::TempSnapshotRoot("manager_bad");
  int loaded = 0, refused = 0;
  auto opts = Options(root);
  opts.on_load = [&](bool ok, absl::Duration) { ++(ok ? loaded : refused); };
  SnapshotManager m(opts);
  REQUIRE(snapshot::PublishSynthetic(root, 200, 8, index::Metric::kL2, "a").ok());
  REQUIRE(*m.PollOnce() == 1);
  REQUIRE(snapshot::PublishSynthetic(root, 200, 8, index::Metric::kL2, "b").ok());
  // Damage v2 after publish (bit rot on the volume), before the server sees it.
  const std::string graph = snapshot::FirstSegmentDir(root, 2) + "/graph.hnsw";
  auto bytes = ReadFileToString(graph);
  std::string b = *bytes;
  b[200] ^= 1;
  REQUIRE(WriteFileDurably(graph, b).ok());
  CHECK(*m.PollOnce() == 1);
  CHECK(m.Current()->snapshot->version() == 1);
  CHECK(refused == 1);
  CHECK(*m.PollOnce() == 1);  // Not retried while CURRENT still names v2.
  CHECK(refused == 1);
  CHECK(loaded == 1);
  REQUIRE(snapshot::PublishSynthetic(root, 200, 8, index::Metric::kL2, "c").ok());
  CHECK(*m.PollOnce() == 3);
  CHECK(m.Current()->snapshot->Id(0)->id == "c0");
}

TEST_CASE("A refused version removed and published again under its number is tried again") {
  std::string root = snapshot::TempSnapshotRoot("manager_reuse");
  SnapshotManager m(Options(root));
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "a").ok());
  REQUIRE(*m.PollOnce() == 1);
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "b").ok());
  Damage(root, 2, "graph.offsets");
  CHECK(*m.PollOnce() == 1);  // v2 refused
  // The operator removes the bad v2 and publishes a good one: v2 again.
  REQUIRE(snapshot::SetCurrentVersion(root, 1).ok());
  std::filesystem::remove_all(snapshot::VersionDir(root, 2));
  REQUIRE(*snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "c") == 2);
  CHECK(*m.PollOnce() == 2);
  CHECK(m.Current()->snapshot->Id(0)->id == "c0");
}

TEST_CASE("The watcher thread picks up new versions by itself") {
  std::string root = snapshot::TempSnapshotRoot("manager_watch");
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "a").ok());
  SnapshotManagerOptions o = Options(root);
  testing::Count swapped_to_v2;
  o.on_swap = [&](const ServingState& s) {
    if (s.snapshot->version() == 2) swapped_to_v2.Add();
  };
  SnapshotManager m(o);
  m.StartWatching();
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "b").ok());
  REQUIRE(swapped_to_v2.WaitFor(1));
  REQUIRE(m.Current() != nullptr);
  CHECK(m.Current()->snapshot->version() == 2);
}

// Options whose poll would not come within any test's lifetime: a swap that
// happens is one inotify caused.
SnapshotManagerOptions NoPollOptions(const std::string& root) {
  SnapshotManagerOptions o = Options(root);
  o.poll_interval = absl::Hours(1);
  return o;
}

// Counts swaps to each of `versions`, for a test to wait on; swaps to other
// versions are not counted. The map is made up front, so the watcher thread
// only looks versions up while the test waits.
struct Swaps {
  explicit Swaps(std::initializer_list<uint64_t> versions) {
    for (uint64_t v : versions) to[v];
  }
  std::function<void(const ServingState&)> Callback() {
    return [this](const ServingState& s) {
      auto it = to.find(s.snapshot->version());
      if (it != to.end()) it->second.Add();
    };
  }
  std::map<uint64_t, testing::Count> to;
};

TEST_CASE("The watcher sees CURRENT change at once, without waiting for the poll interval") {
  std::string root = snapshot::TempSnapshotRoot("manager_inotify");
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "a").ok());  // v1
  SnapshotManagerOptions o = NoPollOptions(root);
  Swaps swaps({1, 2});
  o.on_swap = swaps.Callback();
  SnapshotManager m(o);
  m.StartWatching();
  // The first poll, at start: after it, only a change can make a swap.
  REQUIRE(swaps.to.at(1).WaitFor(1));
  // A publish renames a new CURRENT onto the old one.
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "b").ok());  // v2
  REQUIRE(swaps.to.at(2).WaitFor(1));
  CHECK(m.Current()->snapshot->version() == 2);
  // CURRENT rewritten in place (closed after writing).
  REQUIRE(WriteFileDurably(root + "/CURRENT", "v1\n").ok());
  REQUIRE(swaps.to.at(1).WaitFor(2));
  CHECK(m.Current()->snapshot->version() == 1);
}

TEST_CASE("The watcher follows a root replaced by another directory") {
  std::string root = snapshot::TempSnapshotRoot("manager_replaced");
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "a").ok());  // v1
  const std::string other = root + "-other";
  for (const char* prefix : {"x", "y", "z"}) {
    REQUIRE(snapshot::PublishSynthetic(other, 100, 8, index::Metric::kL2, prefix).ok());
  }
  SnapshotManagerOptions o = NoPollOptions(root);
  Swaps swaps({1, 3, 4});
  o.on_swap = swaps.Callback();
  SnapshotManager m(o);
  m.StartWatching();
  REQUIRE(swaps.to.at(1).WaitFor(1));
  // Swap the two directories in one step, so `root` always names one.
  if (::renameat2(AT_FDCWD, other.c_str(), AT_FDCWD, root.c_str(), RENAME_EXCHANGE) != 0) {
    WARN("renameat2(RENAME_EXCHANGE) is not supported here (" << std::strerror(errno)
                                                              << "); skipped");
    return;
  }
  REQUIRE(swaps.to.at(3).WaitFor(1));  // The new root's CURRENT, seen at the move.
  CHECK(m.Current()->snapshot->Id(0)->id == "z0");
  // And the new root is the one watched now.
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "w").ok());  // v4
  REQUIRE(swaps.to.at(4).WaitFor(1));
  CHECK(m.Current()->snapshot->Id(0)->id == "w0");
}

TEST_CASE("With use_inotify off, the watcher only polls") {
  std::string root = snapshot::TempSnapshotRoot("manager_no_inotify");
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "a").ok());  // v1
  SnapshotManagerOptions o = NoPollOptions(root);
  o.use_inotify = false;
  Swaps swaps({1});
  o.on_swap = swaps.Callback();
  SnapshotManager m(o);
  m.StartWatching();
  REQUIRE(swaps.to.at(1).WaitFor(1));
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "b").ok());  // v2
  // Not a proof that it never swaps: a watcher that reacted to the publish
  // would have swapped long before this (the case above takes milliseconds).
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK(m.Current()->snapshot->version() == 1);
  CHECK(*m.PollOnce() == 2);  // An explicit poll still follows CURRENT.
}

// The process's open file descriptors.
size_t OpenFds() {
  size_t n = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    (void)entry;
    ++n;
  }
  return n;
}

TEST_CASE("Destroying a watching manager stops its watcher promptly and closes its descriptors") {
  std::string root = snapshot::TempSnapshotRoot("manager_stop");
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "a").ok());
  std::string single = root + "-single";
  REQUIRE(snapshot::ExportVersion(root, 1, single).ok());
  for (const std::string& dir : {root, single}) {
    INFO(dir);
    const size_t fds_before = OpenFds();
    SnapshotManagerOptions o = NoPollOptions(dir);
    testing::Count swapped;
    o.on_swap = [&](const ServingState&) { swapped.Add(); };
    auto m = std::make_unique<SnapshotManager>(o);
    m->StartWatching();
    REQUIRE(swapped.WaitFor(1));  // The watcher is past its first poll, waiting.
    const auto start = std::chrono::steady_clock::now();
    m.reset();
    // A generous bound: only a watcher that sleeps out its hour can miss it.
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(20));
    CHECK(OpenFds() == fds_before);
  }
}

TEST_CASE("StopWatching does not wait for a load stuck on the volume, and reports it") {
  std::string root = snapshot::TempSnapshotRoot("manager_stuck_load");
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "a").ok());
  SnapshotManagerOptions o = NoPollOptions(root);
  // The load of v1 stands still inside its hook, as one reading a stalled
  // volume does, until the test lets it go.
  std::mutex mu;
  std::condition_variable cv;
  bool started = false, release = false;
  std::vector<uint64_t> loads_started;
  int loads_ended = 0;
  o.on_load_start = [&](uint64_t version) {
    std::unique_lock<std::mutex> lock(mu);
    loads_started.push_back(version);
    started = true;
    cv.notify_all();
    cv.wait(lock, [&] { return release; });
  };
  o.on_load_end = [&] {
    std::lock_guard<std::mutex> lock(mu);
    ++loads_ended;
  };
  SnapshotManager m(o);
  m.StartWatching();
  {
    std::unique_lock<std::mutex> lock(mu);
    REQUIRE(cv.wait_for(lock, std::chrono::seconds(20), [&] { return started; }));
  }
  const auto start = std::chrono::steady_clock::now();
  CHECK_FALSE(m.StopWatching(absl::Milliseconds(200)));
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(10));
  {
    std::lock_guard<std::mutex> lock(mu);
    CHECK(loads_started == std::vector<uint64_t>{1});
    CHECK(loads_ended == 0);
    release = true;
  }
  cv.notify_all();
  // Once the load ends, the watcher sees the stop and ends; the load's
  // version still swaps in (the hook said nothing about the files).
  CHECK(m.StopWatching(absl::Seconds(20)));
  std::lock_guard<std::mutex> lock(mu);
  CHECK(loads_ended == 1);
}

TEST_CASE("With --verify=sizes, a small swap's new segment is hashed; a large one is not") {
  for (const uint64_t max_bytes : {uint64_t{64} << 20, uint64_t{0}}) {
    INFO("hash_new_max_bytes " << max_bytes);
    const std::string root = snapshot::TempSnapshotRoot("manager_small_swap");
    REQUIRE(snapshot::PublishSynthetic(root, 200, 8, index::Metric::kL2, "a").ok());
    SnapshotManagerOptions o = Options(root);
    o.verify = snapshot::VerifyMode::kSizes;
    o.hash_new_max_bytes = max_bytes;
    testing::Count refused;
    o.on_load = [&](bool ok, absl::Duration) {
      if (!ok) refused.Add();
    };
    SnapshotManager m(o);
    REQUIRE(m.PollOnce().ok());
    // v2 adds a segment with one bit flipped in its graph: sizes alone
    // cannot see it, the hash can.
    auto b = snapshot::MakeSyntheticCorpus(50, 8, index::Metric::kL2, "b", 11);
    snapshot::SnapshotUpdate update;
    update.base_version = 1;
    update.added = b.WithGraph();
    auto r = snapshot::PublishUpdate(root, update);
    REQUIRE(r.ok());
    const std::string graph = root + "/segments/" + r->segment + "/graph.hnsw";
    std::string bytes = *ReadFileToString(graph);
    bytes[bytes.size() / 2] ^= 1;
    REQUIRE(WriteFileDurably(graph, bytes).ok());
    (void)m.PollOnce();
    if (max_bytes > 0) {
      CHECK(m.Current()->snapshot->version() == 1);  // Refused: the live version stays.
      CHECK(refused.value() == 1);
    } else {
      CHECK(m.Current()->snapshot->version() == 2);
      CHECK(refused.value() == 0);
    }
  }
}

TEST_CASE("StopWatching without a watcher, or twice, returns at once") {
  std::string root = snapshot::TempSnapshotRoot("manager_stop_twice");
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "a").ok());
  SnapshotManager idle(NoPollOptions(root));
  CHECK(idle.StopWatching(absl::ZeroDuration()));
  SnapshotManager m(NoPollOptions(root));
  m.StartWatching();
  CHECK(m.StopWatching(absl::Seconds(20)));
  CHECK(m.StopWatching(absl::ZeroDuration()));
}

TEST_CASE("A version directory without CURRENT is served as is (SageMaker's model dir)") {
  std::string root = snapshot::TempSnapshotRoot("manager_single");
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "a").ok());
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "b").ok());
  // Export v2 somewhere that is not a snapshot root, under another name.
  const std::string dir = root + "-model";
  REQUIRE(snapshot::ExportVersion(root, 2, dir).ok());
  SnapshotManager m(Options(dir));
  CHECK(m.single_version());
  REQUIRE(*m.PollOnce() == 2);
  CHECK(m.Current()->snapshot->Id(0)->id == "b0");
  CHECK(*m.PollOnce() == 2);
  SnapshotManager as_root(Options(root));
  CHECK_FALSE(as_root.single_version());
}

TEST_CASE("A restart falls back to the most recently promoted version that loads") {
  std::string root = snapshot::TempSnapshotRoot("manager_restart");
  for (const char* prefix : {"a", "b", "c"}) {
    REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, prefix).ok());
  }
  REQUIRE(snapshot::SetCurrentVersion(root, 2).ok());  // a rollback: HISTORY 1, 2, 3, 2
  REQUIRE(snapshot::SetCurrentVersion(root, 3).ok());  // and forward again: ..., 3
  // v4: a candidate nobody promoted. It must never be served by a fallback.
  snapshot::SyntheticCorpus d = snapshot::MakeSyntheticCorpus(100, 8, index::Metric::kL2, "d");
  snapshot::PublishOptions candidate;
  candidate.make_current = false;
  REQUIRE(snapshot::PublishSnapshot(root, d.WithGraph(), candidate).ok());
  Damage(root, 3, "ids.bin");  // CURRENT's version rots on disk.

  auto start = [&](int* refused) {
    auto opts = Options(root);
    opts.on_load = [refused](bool ok, absl::Duration) { *refused += ok ? 0 : 1; };
    return std::make_unique<SnapshotManager>(opts);
  };
  {
    int refused = 0;
    auto m = start(&refused);
    CHECK(*m->PollOnce() == 2);  // v3 refused; v2 was promoted before it
    CHECK(m->Current()->snapshot->Id(0)->id == "b0");
    CHECK(refused == 1);
    CHECK(*m->PollOnce() == 2);  // v3 is not retried while CURRENT names it
    CHECK(refused == 1);
  }
  struct Pointer {
    const char* what;
    std::function<void()> make;
  };
  const Pointer pointers[] = {
      {"CURRENT removed", [&] { std::filesystem::remove(root + "/CURRENT"); }},
      {"CURRENT garbage", [&] { REQUIRE(WriteFileDurably(root + "/CURRENT", "\x01zz").ok()); }},
      {"CURRENT names a missing version",
       [&] { REQUIRE(WriteFileDurably(root + "/CURRENT", "v9\n").ok()); }},
  };
  for (const Pointer& p : pointers) {
    INFO(p.what);
    p.make();
    int refused = 0;
    auto m = start(&refused);
    // HISTORY's newest is v3 (damaged, refused), then v2.
    CHECK(*m->PollOnce() == 2);
    CHECK(refused >= 1);
    const int after_start = refused;
    CHECK(*m->PollOnce() == 2);
    CHECK(refused == after_start);  // logged and counted once
  }
  // The candidate v4 is promoted, then rolled back from (to v2), and v2
  // rots: the fallback goes back (v1), never forward to v4.
  {
    REQUIRE(snapshot::SetCurrentVersion(root, 4).ok());
    REQUIRE(snapshot::SetCurrentVersion(root, 2).ok());  // HISTORY ..., 4, 2
    Damage(root, 2, "ids.bin");
    int refused = 0;
    auto m = start(&refused);
    CHECK(*m->PollOnce() == 1);
    CHECK(m->Current()->snapshot->Id(0)->id == "a0");
  }
  // Without HISTORY and without a usable CURRENT there is no telling which
  // version was live: nothing is served.
  {
    std::filesystem::rename(root + "/HISTORY", root + "/HISTORY.saved");
    std::filesystem::remove(root + "/CURRENT");
    int refused = 0;
    auto m = start(&refused);
    CHECK_FALSE(m->PollOnce().ok());
    CHECK(m->Current() == nullptr);
    std::filesystem::rename(root + "/HISTORY.saved", root + "/HISTORY");
  }
  // Without HISTORY: the newest version older than the refused CURRENT that
  // loads (v2 and v3 are damaged).
  std::filesystem::remove(root + "/HISTORY");
  REQUIRE(WriteFileDurably(root + "/CURRENT", "v3\n").ok());
  int refused = 0;
  auto m = start(&refused);
  CHECK(*m->PollOnce() == 1);
  // A good new version is promoted: it replaces the fallback.
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "e").ok());  // v5
  CHECK(*m->PollOnce() == 5);
}

TEST_CASE("While serving, a missing or garbage CURRENT keeps the live version, counted once") {
  std::string root = snapshot::TempSnapshotRoot("manager_pointer");
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "a").ok());
  int refused = 0;
  auto opts = Options(root);
  opts.on_load = [&](bool ok, absl::Duration) { refused += ok ? 0 : 1; };
  SnapshotManager m(opts);
  REQUIRE(*m.PollOnce() == 1);
  REQUIRE(WriteFileDurably(root + "/CURRENT", "garbage").ok());
  CHECK(*m.PollOnce() == 1);
  CHECK(*m.PollOnce() == 1);
  CHECK(refused == 1);
  std::filesystem::remove(root + "/CURRENT");
  CHECK(*m.PollOnce() == 1);
  CHECK(refused == 2);  // another error, counted once more
  REQUIRE(snapshot::SetCurrentVersion(root, 1).ok());
  CHECK(*m.PollOnce() == 1);
  CHECK(refused == 2);
}

// Publishes v<next> with a (fake) model file, so that loading it calls the
// embedder factory.
uint64_t PublishWithModel(const std::string& root, const std::string& prefix) {
  const std::string model = root + "-model.pt";
  REQUIRE(WriteFileDurably(model, "not a real model").ok());
  snapshot::SyntheticCorpus c = snapshot::MakeSyntheticCorpus(100, 8, index::Metric::kL2, prefix);
  c.input.model_path = model;
  c.input.model.name = "fake";
  auto v = snapshot::PublishSnapshot(root, c.WithGraph());
  REQUIRE(v.ok());
  return *v;
}

TEST_CASE("A version that stops being CURRENT while it loads is not counted as refused") {
  // The race e2e_faults once hit: the manager reads CURRENT = v2, an operator
  // rolls back to v1 (and removes v2) while v2 loads, and v2's load fails.
  // The failure is moot; the next poll follows CURRENT. Here the model load
  // is the step that fails, and it is also where the rollback happens.
  std::string root = snapshot::TempSnapshotRoot("manager_moved");
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "a").ok());  // v1
  int refused = 0;
  bool roll_back = true;
  int factory_calls = 0;
  auto opts = Options(root);
  opts.on_load = [&](bool ok, absl::Duration) { refused += ok ? 0 : 1; };
  opts.embedder_factory =
      [&](const snapshot::Snapshot& snap) -> absl::StatusOr<std::shared_ptr<Embedder>> {
    ++factory_calls;
    if (roll_back) REQUIRE(snapshot::SetCurrentVersion(root, 1).ok());
    return absl::InternalError(absl::StrCat("model of v", snap.version(), " does not load"));
  };
  SnapshotManager m(opts);
  REQUIRE(*m.PollOnce() == 1);
  REQUIRE(PublishWithModel(root, "b") == 2);  // CURRENT = v2

  SECTION("rolled back while it loaded: not counted, v1 keeps serving") {
    CHECK(*m.PollOnce() == 1);
    CHECK(factory_calls == 1);
    CHECK(refused == 0);
    CHECK(m.Current()->snapshot->version() == 1);
    CHECK(*m.PollOnce() == 1);  // CURRENT = v1 = live: nothing to load
    CHECK(factory_calls == 1);
    CHECK(refused == 0);
  }
  SECTION("still CURRENT when it failed: refused and counted once") {
    roll_back = false;
    CHECK(*m.PollOnce() == 1);
    CHECK(refused == 1);
    CHECK(*m.PollOnce() == 1);  // the same directory is not tried again
    CHECK(factory_calls == 1);
    CHECK(refused == 1);
  }
}

// One case of ChooseFallback, without a file system: what the manager read,
// which versions load, what is served (0: none, with `code`) and which
// versions were tried, in order.
struct FallbackCase {
  const char* what;
  FallbackInputs in;
  std::set<uint64_t> loadable;
  uint64_t served;
  absl::StatusCode code;
  std::vector<uint64_t> tried;
};

TEST_CASE("ChooseFallback serves the last good version before CURRENT, never a later one") {
  using absl::StatusCode;
  const FallbackCase cases[] = {
      {"CURRENT v3 refused: the promotion before it",
       {3, {3, 2, 1}, {}},
       {1, 2},
       2,
       StatusCode::kOk,
       {2}},
      {"v2 does not load either: v1", {3, {3, 2, 1}, {}}, {1}, 1, StatusCode::kOk, {2, 1}},
      {"nothing before CURRENT loads", {3, {3, 2, 1}, {}}, {}, 0, StatusCode::kNotFound, {2, 1}},
      {"CURRENT's own version is not chosen again, even where it would load",
       {3, {3, 2, 1}, {}},
       {3},
       0,
       StatusCode::kNotFound,
       {2, 1}},
      {"HISTORY names versions since removed (v5, v4): they are tried and skipped",
       {std::nullopt, {5, 4, 3}, {}},
       {3},
       3,
       StatusCode::kOk,
       {5, 4, 3}},
      {"rolled back from v4 to v2: back to v1, never forward to v4 or v3",
       {2, {2, 4, 3, 1}, {}},
       {1, 3, 4},
       1,
       StatusCode::kOk,
       {1}},
      {"an unpromoted v4 (published, not in HISTORY) is never served",
       {3, {3, 2, 1}, {1, 2, 3, 4}},
       {2, 4},
       2,
       StatusCode::kOk,
       {2}},
      {"CURRENT missing or garbage: HISTORY's most recent promotion first",
       {std::nullopt, {3, 2, 1}, {}},
       {2, 3},
       3,
       StatusCode::kOk,
       {3}},
      {"CURRENT names a version newer than HISTORY's (v9, missing)",
       {9, {3, 2, 1}, {}},
       {2},
       2,
       StatusCode::kOk,
       {3, 2}},
      {"CURRENT older than everything in HISTORY",
       {1, {3, 2, 1}, {}},
       {2, 3},
       0,
       StatusCode::kNotFound,
       {}},
      {"no HISTORY: the published versions older than CURRENT, newest first",
       {3, {}, {1, 2, 3, 4}},
       {1, 2, 4},
       2,
       StatusCode::kOk,
       {2}},
      {"no HISTORY, v2 does not load: v1", {3, {}, {1, 2, 3, 4}}, {1}, 1, StatusCode::kOk, {2, 1}},
      {"no HISTORY and nothing older published",
       {1, {}, {1, 2}},
       {1, 2},
       0,
       StatusCode::kNotFound,
       {}},
      {"no HISTORY and CURRENT names no version: nothing tells which version was live",
       {std::nullopt, {}, {1, 2, 3}},
       {1, 2, 3},
       0,
       StatusCode::kFailedPrecondition,
       {}},
  };
  for (const FallbackCase& c : cases) {
    INFO(c.what);
    std::vector<uint64_t> tried;
    auto chosen = ChooseFallback(c.in, [&](uint64_t v) {
      tried.push_back(v);
      return c.loadable.count(v) > 0;
    });
    CHECK(chosen.status().code() == c.code);
    CHECK((chosen.ok() ? *chosen : 0) == c.served);
    CHECK(tried == c.tried);
  }
  auto none = ChooseFallback({3, {3, 2, 1}, {}}, [](uint64_t) { return false; });
  CHECK(none.status().message() == "no version in HISTORY older than v3 loads");
  none = ChooseFallback({3, {}, {1, 2}}, [](uint64_t) { return false; });
  CHECK(none.status().message() == "no published version older than v3 loads");
}

}  // namespace
}  // namespace imagesearch::serving
