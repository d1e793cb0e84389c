#include "libs/snapshot/embedding_shard.h"

#include <stdlib.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <string>
#include <vector>

#include "libs/common/file_util.h"
#include "libs/common/test_temp_dir.h"

namespace imagesearch::snapshot {
namespace {

namespace fs = std::filesystem;

std::string TempDir() {
  const std::string dir = testing::NewTempDir("shard_test");
  REQUIRE(!dir.empty());
  return dir;
}

EmbeddingShard MakeShard(int index, int count, int rows, const std::string& sha = "abc123") {
  EmbeddingShard s;
  s.spec = {index, count};
  s.model.name = "m";
  s.model.version = "1";
  s.model.sha256 = sha;
  s.model.image_size = 224;
  s.model.preprocessing_json = R"({"resize":"shortest_edge"})";
  s.dim = 4;
  s.metric = index::Metric::kCosine;
  s.listed = rows + 1;
  for (int r = 0; r < rows; ++r) {
    s.ids.push_back({"s" + std::to_string(index) + "-" + std::to_string(r),
                     "/img/" + std::to_string(r), r % 2 ? R"({"k":1})" : ""});
    for (int d = 0; d < 4; ++d) s.vectors.push_back(static_cast<float>(index * 100 + r * 4 + d));
    s.thumbs.push_back("jpeg" + std::to_string(r));
  }
  s.rejects_jsonl = "{\"id\":\"bad\"}\n";
  return s;
}

TEST_CASE("shard specs parse i/n and refuse anything else", "[shard]") {
  auto s = ParseShardSpec("2/3");
  REQUIRE(s.ok());
  CHECK(s->index == 2);
  CHECK(s->count == 3);
  CHECK(ShardDirName(*s) == "shard-2-of-3");
  for (const char* bad : {"3/3", "-1/3", "1", "1/0", "a/b", "1/3/4", "", "0/100001"}) {
    INFO(bad);
    CHECK(absl::IsInvalidArgument(ParseShardSpec(bad).status()));
  }
}

TEST_CASE("shards written by n workers read back in order, every row intact", "[shard]") {
  const std::string dir = TempDir();
  for (int i : {2, 0, 1}) {  // Workers finish in any order.
    auto out = WriteEmbeddingShard(dir, MakeShard(i, 3, 5 + i));
    REQUIRE(out.ok());
    CHECK(*out == dir + "/shard-" + std::to_string(i) + "-of-3");
  }
  // A retried worker replaces its shard whole.
  REQUIRE(WriteEmbeddingShard(dir, MakeShard(1, 3, 6)).ok());
  auto shards = ReadEmbeddingShards(dir);
  REQUIRE(shards.ok());
  REQUIRE(shards->size() == 3);
  for (int i = 0; i < 3; ++i) {
    const EmbeddingShard want = MakeShard(i, 3, 5 + i);
    const EmbeddingShard& got = (*shards)[i];
    CHECK(got.spec.index == i);
    CHECK(got.vectors == want.vectors);
    REQUIRE(got.ids.size() == want.ids.size());
    for (size_t r = 0; r < got.ids.size(); ++r) {
      CHECK(got.ids[r].id == want.ids[r].id);
      CHECK(got.ids[r].uri == want.ids[r].uri);
      CHECK(got.ids[r].attributes_json == want.ids[r].attributes_json);
    }
    // Read back, the thumbnails stay in the shard's mapped thumbs.bin.
    CHECK(got.thumbs.empty());
    REQUIRE(got.thumbs_table != nullptr);
    REQUIRE(got.thumbs_table->size() == want.thumbs.size());
    for (size_t r = 0; r < want.thumbs.size(); ++r) {
      CHECK(*got.thumbs_table->Get(r) == want.thumbs[r]);
    }
    CHECK(got.model.sha256 == "abc123");
    CHECK(got.model.preprocessing_json == R"({"resize":"shortest_edge"})");
    CHECK(got.listed == want.listed);
    CHECK(got.rejects_jsonl == want.rejects_jsonl);
  }
  for (const auto& e : fs::directory_iterator(dir)) {
    CHECK(e.path().filename().string().rfind(".tmp", 0) != 0);  // no temp dirs left
  }
}

TEST_CASE("missing, foreign and damaged shards are refused with the reason", "[shard]") {
  const std::string dir = TempDir();
  REQUIRE(WriteEmbeddingShard(dir, MakeShard(0, 3, 4)).ok());
  REQUIRE(WriteEmbeddingShard(dir, MakeShard(2, 3, 4)).ok());
  auto r = ReadEmbeddingShards(dir);
  CHECK(absl::IsFailedPrecondition(r.status()));
  CHECK(std::string(r.status().message()).find("has 2 of 3 shards; missing: 1") !=
        std::string::npos);

  REQUIRE(WriteEmbeddingShard(dir, MakeShard(1, 3, 4, "other-model")).ok());
  r = ReadEmbeddingShards(dir);
  CHECK(absl::IsFailedPrecondition(r.status()));
  CHECK(std::string(r.status().message()).find("not in one embedding space") != std::string::npos);

  REQUIRE(WriteEmbeddingShard(dir, MakeShard(1, 3, 4)).ok());
  REQUIRE(ReadEmbeddingShards(dir).ok());
  // A damaged file.
  const std::string vec = dir + "/shard-1-of-3/vectors.npy";
  std::string bytes = *ReadFileToString(vec);
  bytes[bytes.size() - 1] ^= 1;
  REQUIRE(WriteFileDurably(vec, bytes).ok());
  r = ReadEmbeddingShards(dir);
  CHECK(absl::IsDataLoss(r.status()));
  CHECK(std::string(r.status().message()).find("shard-1-of-3: vectors.npy is") !=
        std::string::npos);
  // Shards of two different runs.
  REQUIRE(WriteEmbeddingShard(dir, MakeShard(1, 3, 4)).ok());
  REQUIRE(WriteEmbeddingShard(dir, MakeShard(0, 2, 4)).ok());
  r = ReadEmbeddingShards(dir);
  CHECK(absl::IsInvalidArgument(r.status()));
  CHECK(std::string(r.status().message()).find("mixes shards of") != std::string::npos);
  CHECK(absl::IsNotFound(ReadEmbeddingShards(TempDir()).status()));
}

}  // namespace
}  // namespace imagesearch::snapshot
