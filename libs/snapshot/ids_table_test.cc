#include "libs/snapshot/ids_table.h"

#include <stdlib.h>

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "libs/common/file_util.h"
#include "libs/common/test_temp_dir.h"

namespace imagesearch::snapshot {
namespace {

std::string TempFile() {
  const std::string dir = testing::NewTempDir("ids_test");
  REQUIRE(!dir.empty());
  return dir + "/ids.bin";
}

TEST_CASE("Ids table round-trips rows and finds ids by binary search") {
  std::vector<IdRecord> recs;
  for (int i = 0; i < 1000; ++i) {
    recs.push_back({"img-" + std::to_string((i * 7919) % 1000), "file:///data/" + std::to_string(i),
                    i % 2 ? "{\"class\":" + std::to_string(i % 10) + "}" : ""});
  }
  auto bytes = EncodeIdsTable(recs);
  REQUIRE(bytes.ok());
  std::string path = TempFile();
  REQUIRE(WriteFileDurably(path, *bytes).ok());
  auto t = IdsTable::Open(path, 1000);
  REQUIRE(t.ok());
  for (uint32_t r = 0; r < 1000; ++r) {
    auto v = (*t)->Get(r);
    REQUIRE(v.ok());
    CHECK(v->id == recs[r].id);
    CHECK(v->uri == recs[r].uri);
    CHECK(v->attributes_json == recs[r].attributes_json);
    auto found = (*t)->Find(recs[r].id);
    REQUIRE(found.has_value());
    CHECK(*found == r);
  }
  CHECK_FALSE((*t)->Find("img-1000").has_value());
  CHECK_FALSE((*t)->Find("").has_value());
  CHECK_FALSE((*t)->Get(1000).ok());
}

TEST_CASE("JSON Lines records: one set of rules for manifests and id lists") {
  auto full = ParseJsonlRecord(
      R"({"id":"a","path":"x/a.png","uri":"s3://b/a","attributes":{"k":1},"other":2})");
  REQUIRE(full.ok());
  CHECK(full->id == "a");
  CHECK(full->path == "x/a.png");
  CHECK(full->uri == "s3://b/a");
  CHECK(full->attributes_json == R"({"k":1})");
  auto bare = ParseJsonlRecord(R"({"attributes":null})");
  REQUIRE(bare.ok());
  CHECK_FALSE(bare->id.has_value());
  CHECK_FALSE(bare->path.has_value());
  CHECK(bare->attributes_json.empty());
  const std::pair<const char*, const char*> bad[] = {
      {"[1,2]", "not a JSON object"},
      {"{\"id\":", "not a JSON object"},
      {R"({"id":7})", "\"id\" must be a string"},
      {R"({"path":["a"]})", "\"path\" must be a string"},
      {R"({"uri":null})", "\"uri\" must be a string"},
      {R"({"id":"a","attributes":"k=1"})", "\"attributes\" must be an object"},
  };
  for (const auto& [line, message] : bad) {
    INFO(line);
    auto r = ParseJsonlRecord(line);
    REQUIRE_FALSE(r.ok());
    CHECK(absl::IsInvalidArgument(r.status()));
    CHECK(r.status().message() == message);
  }
}

TEST_CASE("Ids table rejects duplicate and empty ids, naming the rows") {
  auto dup = EncodeIdsTable({{"a", "", ""}, {"b", "", ""}, {"a", "", ""}});
  REQUIRE_FALSE(dup.ok());
  CHECK(dup.status().message() == "duplicate id 'a' at rows 0 and 2");
  auto empty = EncodeIdsTable({{"a", "", ""}, {"", "", ""}});
  REQUIRE_FALSE(empty.ok());
  CHECK(empty.status().message() == "row 1 has an empty id");
}

TEST_CASE("Ids table rejects ids and uris that are not UTF-8, naming the row") {
  auto id = EncodeIdsTable({{"a", "", ""}, {"caf\xE9", "", ""}});
  REQUIRE_FALSE(id.ok());
  CHECK(id.status().message() == "row 1 id 'caf\\xE9' is not valid UTF-8");
  auto uri = EncodeIdsTable({{"a", "/photos/caf\xE9.png", ""}});
  REQUIRE_FALSE(uri.ok());
  CHECK(uri.status().message() == "row 0 uri '/photos/caf\\xE9.png' is not valid UTF-8");
  CHECK(EncodeIdsTable({{"caf\xC3\xA9", "/photos/caf\xC3\xA9.png", ""}}).ok());
}

TEST_CASE("Truncated, wrong-count or bad-magic ids tables are refused") {
  auto bytes = EncodeIdsTable({{"a", "u", ""}, {"b", "v", ""}});
  REQUIRE(bytes.ok());
  std::string path = TempFile();
  REQUIRE(WriteFileDurably(path, bytes->substr(0, bytes->size() - 1)).ok());
  auto t = IdsTable::Open(path, 2);
  REQUIRE_FALSE(t.ok());
  CHECK(t.status().message().find("truncated") != std::string::npos);

  REQUIRE(WriteFileDurably(path, *bytes).ok());
  auto wrong = IdsTable::Open(path, 3);
  REQUIRE_FALSE(wrong.ok());
  CHECK(wrong.status().message().find("manifest says 3") != std::string::npos);

  std::string bad = *bytes;
  bad[0] = 'X';
  REQUIRE(WriteFileDurably(path, bad).ok());
  auto magic = IdsTable::Open(path, 2);
  REQUIRE_FALSE(magic.ok());
  CHECK(magic.status().message().find("magic") != std::string::npos);
}

}  // namespace
}  // namespace imagesearch::snapshot
