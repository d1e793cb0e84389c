#include "libs/serving/snapshot_manager.h"

#include <catch2/catch.hpp>
#include <filesystem>
#include <functional>
#include <memory>

#include "libs/common/file_util.h"
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
  const std::string path = snapshot::VersionDir(root, version) + "/" + file;
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
  CHECK(held->snapshot->ids().Get(0)->id == "a0");
  CHECK(held->snapshot->searcher().Search(held->snapshot->searcher().Vector(7), 1, 20)[0].row == 7);
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
  const std::string graph = snapshot::VersionDir(root, 2) + "/graph.hnsw";
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
  CHECK(m.Current()->snapshot->ids().Get(0)->id == "c0");
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
  CHECK(m.Current()->snapshot->ids().Get(0)->id == "c0");
}

TEST_CASE("The watcher thread picks up new versions by itself") {
  std::string root = snapshot::TempSnapshotRoot("manager_watch");
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "a").ok());
  SnapshotManager m(Options(root));
  m.StartWatching();
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "b").ok());
  for (int i = 0; i < 500 && (!m.Current() || m.Current()->snapshot->version() != 2); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  REQUIRE(m.Current() != nullptr);
  CHECK(m.Current()->snapshot->version() == 2);
}

TEST_CASE("A version directory without CURRENT is served as is (SageMaker's model dir)") {
  std::string root = snapshot::TempSnapshotRoot("manager_single");
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "a").ok());
  REQUIRE(snapshot::PublishSynthetic(root, 100, 8, index::Metric::kL2, "b").ok());
  // Copy v2 somewhere that is not a snapshot root, under another name.
  const std::string dir = root + "-model";
  std::filesystem::copy(snapshot::VersionDir(root, 2), dir);
  SnapshotManager m(Options(dir));
  CHECK(m.single_version());
  REQUIRE(*m.PollOnce() == 2);
  CHECK(m.Current()->snapshot->ids().Get(0)->id == "b0");
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
    CHECK(m->Current()->snapshot->ids().Get(0)->id == "b0");
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
    CHECK(m->Current()->snapshot->ids().Get(0)->id == "a0");
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

}  // namespace
}  // namespace imagesearch::serving
