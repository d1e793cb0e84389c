#include "libs/snapshot/thumbs_table.h"

#include <stdlib.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <string>
#include <vector>

#include "libs/common/file_util.h"
#include "libs/common/test_temp_dir.h"

namespace imagesearch::snapshot {
namespace {

std::string TempFile() {
  const std::string dir = testing::NewTempDir("thumbs_test");
  REQUIRE(!dir.empty());
  return dir + "/thumbs.bin";
}

std::string Write(const std::string& bytes) {
  const std::string path = TempFile();
  REQUIRE(WriteFileDurably(path, bytes).ok());
  return path;
}

std::vector<std::string> Rows(int n) {
  std::vector<std::string> rows;
  for (int i = 0; i < n; ++i) {
    // Every third row has none; the others differ in size and content.
    rows.push_back(i % 3 == 1 ? "" : std::string(static_cast<size_t>(1 + i % 17), 'a' + i % 26));
  }
  return rows;
}

TEST_CASE("thumbs table round-trips rows, empty ones included", "[thumbs]") {
  const std::vector<std::string> rows = Rows(500);
  auto t = ThumbsTable::Open(Write(EncodeThumbsTable(rows)), rows.size());
  REQUIRE(t.ok());
  CHECK((*t)->size() == 500);
  CHECK(std::string((*t)->media_type()) == "image/jpeg");
  for (size_t r = 0; r < rows.size(); ++r) {
    auto v = (*t)->Get(r);
    REQUIRE(v.ok());
    CHECK(*v == rows[r]);
  }
  CHECK(absl::IsOutOfRange((*t)->Get(500).status()));
  // An empty table is valid too.
  auto empty = ThumbsTable::Open(Write(EncodeThumbsTable({})), 0);
  REQUIRE(empty.ok());
  CHECK((*empty)->size() == 0);
}

TEST_CASE("thumbs table written row by row is the encoded table, and its errors are kept",
          "[thumbs]") {
  // Rows bigger than the writer's 1 MiB buffer too, and empty ones.
  std::vector<std::string> rows = Rows(50);
  rows[7] = std::string(3 << 20, 'x');
  rows[8].clear();
  const std::string path = TempFile();
  REQUIRE(WriteThumbsTable(path, rows.size(), [&](uint64_t i) -> absl::StatusOr<absl::string_view> {
            return rows[i];
          }).ok());
  auto bytes = ReadFileToString(path);
  REQUIRE(bytes.ok());
  CHECK(*bytes == EncodeThumbsTable(rows));
  auto t = ThumbsTable::Open(path, rows.size());
  REQUIRE(t.ok());
  CHECK(*(*t)->Get(7) == rows[7]);
  // A row that cannot be read fails the write with its own error.
  auto failing =
      WriteThumbsTable(path, rows.size(), [&](uint64_t i) -> absl::StatusOr<absl::string_view> {
        if (i == 30) return absl::DataLossError("row 30 is damaged");
        return rows[i];
      });
  CHECK(failing.code() == absl::StatusCode::kDataLoss);
  CHECK(failing.message() == "row 30 is damaged");
  // A source that changes between the two passes is caught, not written.
  int calls = 0;
  auto moving = WriteThumbsTable(path, 3, [&](uint64_t) -> absl::StatusOr<absl::string_view> {
    return ++calls > 3 ? absl::string_view("longer than before") : absl::string_view("ab");
  });
  CHECK(moving.code() == absl::StatusCode::kInternal);
}

TEST_CASE("thumbnail sources gather rows of other tables into a new one", "[thumbs]") {
  const std::vector<std::string> a_rows = {"a0", "a1", "a2"}, b_rows = {"b0", ""};
  auto a = ThumbsTable::Open(Write(EncodeThumbsTable(a_rows)), a_rows.size());
  auto b = ThumbsTable::Open(Write(EncodeThumbsTable(b_rows)), b_rows.size());
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  ThumbnailSources sources;
  sources.Add(a->get(), 2);
  sources.Add(nullptr, 0);  // A row without a thumbnail (a merge's tombstone).
  sources.Add(b->get(), 0);
  sources.Add(b->get(), 1);
  sources.Add(a->get(), 0);
  const std::string path = TempFile();
  REQUIRE(WriteThumbsTable(path, sources.size(), sources.Reader()).ok());
  auto got = ThumbsTable::Open(path, 5);
  REQUIRE(got.ok());
  const std::vector<std::string> want = {"a2", "", "b0", "", "a0"};
  for (size_t r = 0; r < want.size(); ++r) CHECK(*(*got)->Get(r) == want[r]);
  // More rows than sources: refused, not read past the list.
  CHECK(WriteThumbsTable(path, 6, sources.Reader()).code() == absl::StatusCode::kOutOfRange);
}

TEST_CASE("thumbs table refuses damaged files with a precise error", "[thumbs]") {
  const std::string good = EncodeThumbsTable(Rows(50));
  auto open = [](const std::string& bytes, uint64_t count) {
    return ThumbsTable::Open(Write(bytes), count).status();
  };
  CHECK(open(good, 50).ok());
  // Wrong row count for the manifest.
  absl::Status s = open(good, 51);
  CHECK(absl::IsInvalidArgument(s));
  CHECK(std::string(s.message()).find("holds 50 rows but the manifest says 51") !=
        std::string::npos);
  // Truncated anywhere.
  for (size_t cut :
       {size_t{0}, size_t{10}, size_t{31}, size_t{32}, good.size() / 2, good.size() - 1}) {
    absl::Status t = open(good.substr(0, cut), 50);
    INFO("cut at " << cut << ": " << t.ToString());
    CHECK(absl::IsDataLoss(t));
  }
  // Trailing bytes.
  CHECK(absl::IsDataLoss(open(good + "x", 50)));
  // Bad magic, format and media type.
  std::string bad = good;
  bad[0] = 'X';
  CHECK(std::string(open(bad, 50).message()).find("bad magic") != std::string::npos);
  bad = good;
  bad[8] = 2;
  CHECK(std::string(open(bad, 50).message()).find("format 2 is not supported") !=
        std::string::npos);
  bad = good;
  bad[12] = 7;
  CHECK(std::string(open(bad, 50).message()).find("media type 7") != std::string::npos);
  // A count so large that (count + 1) * 8 would wrap around.
  bad = good;
  const uint64_t huge = ~uint64_t{0} / 4;
  std::memcpy(&bad[16], &huge, 8);
  CHECK(!open(bad, huge).ok());
}

TEST_CASE("a damaged offset fails only its own rows", "[thumbs]") {
  const std::vector<std::string> rows = Rows(20);
  std::string bytes = EncodeThumbsTable(rows);
  const uint64_t past_end = uint64_t{1} << 40;
  std::memcpy(&bytes[32 + 5 * 8], &past_end, 8);  // offsets[5]: end of row 4, start of row 5
  auto t = ThumbsTable::Open(Write(bytes), rows.size());
  REQUIRE(t.ok());
  CHECK(absl::IsDataLoss((*t)->Get(4).status()));
  CHECK(absl::IsDataLoss((*t)->Get(5).status()));
  for (uint64_t r : {0, 3, 6, 19}) {
    auto v = (*t)->Get(r);
    REQUIRE(v.ok());
    CHECK(*v == rows[r]);
  }
}

}  // namespace
}  // namespace imagesearch::snapshot
