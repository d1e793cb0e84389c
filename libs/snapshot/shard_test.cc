// Shards: the id hash is stable and spreads ids evenly, manifests carry the
// shard, and every write path refuses a row of another shard.
#include "libs/snapshot/shard.h"

#include <catch2/catch.hpp>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "libs/common/file_util.h"
#include "libs/snapshot/manifest.h"
#include "libs/snapshot/snapshot.h"
#include "libs/snapshot/snapshot_store.h"
#include "libs/snapshot/test_snapshots.h"

namespace imagesearch::snapshot {
namespace {

constexpr int kDim = 8;

TEST_CASE("ShardOf is the on-disk hash: these values must never change") {
  // Pinned values, computed outside this code: XXH3-64 by xxhsum -H3 (Debian's
  // xxhash), jump consistent hash by the paper's algorithm in Python. A change
  // here moves rows between the shards of every sharded collection on disk.
  CHECK(ShardOf("anything", 1) == 0);
  CHECK(ShardOf("anything", 0) == 0);
  const std::vector<std::pair<std::string, std::vector<uint32_t>>> pinned = {
      {"", {0, 0, 0, 0, 0}},                          // XXH3 2d06800538d394c2
      {"img-0", {0, 0, 2, 2, 2}},                     // e27f2e89a241aec0
      {"img-1", {0, 0, 0, 0, 4}},                     // ccfaf1de5eb1c585
      {"photos/2024/IMG_0042.jpg", {0, 0, 0, 3, 4}},  // c4ad1f2fcaa8b511
  };
  for (const auto& [id, want] : pinned) {
    for (uint32_t s = 1; s <= want.size(); ++s) {
      INFO("id '" << id << "' among " << s << " shards");
      CHECK(ShardOf(id, s) == want[s - 1]);
    }
  }
}

TEST_CASE("ShardOf spreads ids evenly and moves the fewest on a reshard") {
  constexpr int kIds = 40'000;
  for (uint32_t count : {2u, 3u, 4u, 7u}) {
    std::vector<int> per(count, 0);
    for (int i = 0; i < kIds; ++i) ++per[ShardOf(absl::StrCat("id-", i), count)];
    for (uint32_t s = 0; s < count; ++s) {
      INFO(count << " shards: shard " << s << " got " << per[s]);
      const double share = static_cast<double>(per[s]) / kIds;
      CHECK(share > 0.9 / count);
      CHECK(share < 1.1 / count);
    }
  }
  // Jump consistent hash: from S to S+1 shards an id either stays or moves
  // to the new shard S, and about 1/(S+1) of them move.
  for (uint32_t count : {1u, 3u, 4u}) {
    int moved = 0;
    for (int i = 0; i < kIds; ++i) {
      const std::string id = absl::StrCat("id-", i);
      const uint32_t before = ShardOf(id, count);
      const uint32_t after = ShardOf(id, count + 1);
      if (before != after) {
        ++moved;
        CHECK(after == count);
      }
    }
    const double share = static_cast<double>(moved) / kIds;
    INFO(count << " -> " << count + 1 << " shards moved " << moved);
    CHECK(share > 0.9 / (count + 1));
    CHECK(share < 1.1 / (count + 1));
  }
}

TEST_CASE("CheckIdInShard names the shard an id belongs to") {
  const ShardInfo shard{"photos", 1, 4, kShardHash};
  int own = 0;
  for (int i = 0; i < 100; ++i) {
    const std::string id = absl::StrCat("id-", i);
    const absl::Status s = CheckIdInShard(id, shard);
    if (ShardOf(id, 4) == 1) {
      ++own;
      CHECK(s.ok());
    } else {
      CHECK(s.code() == absl::StatusCode::kInvalidArgument);
      CHECK(std::string(s.message())
                .find(absl::StrCat("belongs to shard ", ShardOf(id, 4), " of 4")) !=
            std::string::npos);
    }
  }
  CHECK(own > 10);
  CHECK(CheckIdInShard("whatever", ShardInfo()).ok());  // Unsharded: every id belongs.
}

TEST_CASE("A manifest carries its shard, and a bad one is refused") {
  Manifest m;
  m.version = 3;
  m.dim = 4;
  m.count = 2;
  m.segments.push_back({"s1-00000000", 2, 0, "", "0123456789abcdef"});
  m.shard = ShardInfo{"photos", 2, 4, kShardHash};
  auto parsed = ParseManifest(ManifestToJson(m));
  REQUIRE(parsed.ok());
  CHECK(parsed->shard == m.shard);

  m.shard = ShardInfo();
  const std::string unsharded = ManifestToJson(m);
  CHECK(unsharded.find("\"shard\"") == std::string::npos);
  parsed = ParseManifest(unsharded);
  REQUIRE(parsed.ok());
  CHECK(!parsed->shard.sharded());

  m.shard = ShardInfo{"photos", 4, 4, kShardHash};  // Index not below count.
  auto bad = ParseManifest(ManifestToJson(m));
  REQUIRE(!bad.ok());
  CHECK(std::string(bad.status().message()).find("shard index 4") != std::string::npos);
  m.shard = ShardInfo{"photos", 0, 4, "md5-mod"};
  bad = ParseManifest(ManifestToJson(m));
  REQUIRE(!bad.ok());
  CHECK(std::string(bad.status().message()).find("md5-mod") != std::string::npos);
}

// The rows of `n` candidates "<prefix><i>" that belong to `shard`.
SyntheticCorpus RowsOfShard(size_t n, const std::string& prefix, const ShardInfo& shard,
                            uint32_t seed) {
  SyntheticCorpus all = MakeSyntheticCorpus(n, kDim, index::Metric::kCosine, prefix, seed);
  SyntheticCorpus c;
  c.input = all.input;
  c.input.ids.clear();
  for (size_t i = 0; i < n; ++i) {
    if (CheckIdInShard(all.input.ids[i].id, shard).ok()) {
      c.input.ids.push_back(all.input.ids[i]);
      c.vectors.insert(c.vectors.end(), all.vectors.begin() + static_cast<long>(i * kDim),
                       all.vectors.begin() + static_cast<long>((i + 1) * kDim));
    }
  }
  c.input.count = c.input.ids.size();
  c.input.shard = shard;
  return c;
}

TEST_CASE("A collection's directory of shard roots is named as such, not as an empty root") {
  const std::string dir = TempSnapshotRoot("shard_dirs");
  REQUIRE(!dir.empty());
  CHECK(ShardRootsUnder(dir).empty());
  for (const char* name : {"shard-1-of-2", "shard-0-of-2", "shard-01-of-2", "shard-x-of-2", "v3"}) {
    std::filesystem::create_directories(dir + "/" + name);
  }
  CHECK(ShardRootsUnder(dir) == std::vector<std::string>{"shard-0-of-2", "shard-1-of-2"});
  const auto current = ReadCurrentVersion(dir);
  REQUIRE(absl::IsNotFound(current.status()));
  CHECK(std::string(current.status().message())
            .find("name one of them, e.g. " + dir + "/shard-0-of-2") != std::string::npos);
  // A root that is not there at all (a typo, most likely) says so.
  const auto missing = ReadCurrentVersion(dir + "/no-such-root");
  REQUIRE(absl::IsNotFound(missing.status()));
  CHECK(std::string(missing.status().message()).find("/no-such-root does not exist") !=
        std::string::npos);
  const auto empty = ReadCurrentVersion(dir + "/v3");  // Exists, holds nothing.
  CHECK(std::string(empty.status().message()).find("v3/CURRENT does not exist") !=
        std::string::npos);
}

TEST_CASE("A shard root refuses rows of other shards on every write path") {
  const std::string root = TempSnapshotRoot("shard_test");
  REQUIRE(!root.empty());
  const ShardInfo shard{"photos", 1, 3, kShardHash};
  SyntheticCorpus mine = RowsOfShard(300, "a", shard, 1);
  REQUIRE(mine.input.count > 50);

  // A bulk load with one foreign id among its rows: refused, nothing published.
  {
    SyntheticCorpus mixed = RowsOfShard(300, "a", shard, 1);
    std::string foreign;
    for (int i = 0; foreign.empty(); ++i) {
      if (ShardOf(absl::StrCat("x", i), 3) != 1) foreign = absl::StrCat("x", i);
    }
    mixed.input.ids.back().id = foreign;
    auto v = PublishSnapshot(root, mixed.WithGraph());
    REQUIRE(!v.ok());
    CHECK(v.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(v.status().message()).find(foreign) != std::string::npos);
    CHECK(!ReadCurrentVersion(root).ok());
  }

  auto v1 = PublishSnapshot(root, mine.WithGraph());
  REQUIRE(v1.ok());
  auto s1 = Snapshot::Open(root, *v1, VerifyMode::kChecksums);
  REQUIRE(s1.ok());
  CHECK((*s1)->manifest().shard == shard);

  // An update: its own rows are added and the version keeps the shard; one
  // foreign row refuses the whole update (the ingest service checks items
  // one by one before they get here).
  SyntheticCorpus more = RowsOfShard(120, "b", shard, 2);
  REQUIRE(more.input.count > 10);
  SnapshotUpdate update;
  update.base_version = *v1;
  update.added = more.WithGraph();
  update.added.shard = ShardInfo();  // Ignored: the base's shard applies.
  auto v2 = PublishUpdate(root, update);
  REQUIRE(v2.ok());
  auto s2 = Snapshot::Open(root, v2->version, VerifyMode::kChecksums);
  REQUIRE(s2.ok());
  CHECK((*s2)->manifest().shard == shard);
  CHECK((*s2)->manifest().count == mine.input.count + more.input.count);

  SyntheticCorpus foreign = MakeSyntheticCorpus(40, kDim, index::Metric::kCosine, "c", 3);
  SnapshotUpdate bad;
  bad.added = foreign.WithGraph();
  auto refused = PublishUpdate(root, bad);
  REQUIRE(!refused.ok());
  CHECK(refused.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(refused.status().message()).find("collection 'photos' shard 1 of 3") !=
        std::string::npos);
  CHECK(*ReadCurrentVersion(root) == v2->version);

  // A merge keeps the shard.
  MergeRequest merge;
  merge.segments = {(*s2)->segments()[0].name, (*s2)->segments()[1].name};
  merge.threads = 1;
  auto merged = MergeSegments(root, merge);
  REQUIRE(merged.ok());
  auto s3 = Snapshot::Open(root, merged->version, VerifyMode::kChecksums);
  REQUIRE(s3.ok());
  CHECK((*s3)->manifest().shard == shard);
  CHECK((*s3)->segments().size() == 1);

  // A bulk load of another shard (or an unsharded one) into this root is
  // refused: a reshard writes new roots.
  SyntheticCorpus other = RowsOfShard(300, "d", ShardInfo{"photos", 2, 3, kShardHash}, 4);
  auto wrong = PublishSnapshot(root, other.WithGraph());
  REQUIRE(!wrong.ok());
  CHECK(wrong.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(std::string(wrong.status().message()).find("shard 2 of 3") != std::string::npos);
  SyntheticCorpus plain = MakeSyntheticCorpus(50, kDim, index::Metric::kCosine, "e", 5);
  CHECK(PublishSnapshot(root, plain.WithGraph()).status().code() ==
        absl::StatusCode::kFailedPrecondition);
  // The same shard's bulk reload is fine.
  SyntheticCorpus again = RowsOfShard(200, "f", shard, 6);
  CHECK(PublishSnapshot(root, again.WithGraph()).ok());
}

}  // namespace
}  // namespace imagesearch::snapshot
