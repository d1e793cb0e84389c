#include "libs/serving/snapshot_manager.h"

#include <catch2/catch.hpp>
#include <filesystem>

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

TEST_CASE("Nothing is served until a snapshot exists; then new versions swap in") {
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

}  // namespace
}  // namespace imagesearch::serving
