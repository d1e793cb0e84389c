// Runs the real indexer with the real default model on real images.
#include "services/indexer/indexer.h"

#include <stdlib.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <functional>
#include <sstream>
#include <vips/vips8>

#include "libs/common/file_util.h"
#include "libs/common/test_temp_dir.h"
#include "libs/image/image.h"
#include "libs/snapshot/snapshot.h"
#include "libs/snapshot/snapshot_store.h"
#include "libs/snapshot/test_snapshots.h"

namespace imagesearch::indexer {
namespace {

namespace fs = std::filesystem;
const std::string kImages = std::string(IMAGESEARCH_TESTDATA_DIR) + "/images";

std::string TempDir() {
  const std::string dir = testing::NewTempDir("indexer_test");
  REQUIRE(!dir.empty());
  return dir;
}

IndexerOptions Options(const std::string& input, const std::string& root) {
  IndexerOptions o;
  o.input = input;
  o.root = root;
  o.model_path = IMAGESEARCH_DEFAULT_MODEL_PATH;
  o.progress = "none";
  o.batch_size = 4;
  o.hnsw.ef_construction = 32;
  return o;
}

std::string CopyImages(const std::vector<std::string>& names) {
  std::string dir = TempDir() + "/in";
  fs::create_directories(dir + "/sub");
  for (const auto& n : names) fs::copy_file(kImages + "/" + n, dir + "/sub/" + n);
  return dir;
}

TEST_CASE("Indexes a real image directory, skipping bad images into rejects.jsonl") {
  if (!fs::exists(IMAGESEARCH_DEFAULT_MODEL_PATH)) FAIL("default model not built");
  std::string root = TempDir() + "/root";
  IndexerOptions o = Options(kImages, root);
  o.max_reject_ratio = 0.5;
  auto r = RunIndexer(o);
  REQUIRE(r.ok());
  CHECK(r->version == 1);
  CHECK(r->rejected >= 3);
  CHECK(r->indexed + r->rejected == r->listed);
  auto rejects = ReadFileToString(snapshot::VersionDir(root, 1) + "/rejects.jsonl");
  REQUIRE(rejects.ok());
  CHECK(rejects->find("\"id\":\"truncated.jpg\"") != std::string::npos);
  CHECK(rejects->find("bomb_50000x50000.png") != std::string::npos);
  CHECK(rejects->find("50000x50000") != std::string::npos);

  auto snap = snapshot::Snapshot::Open(root, 1, snapshot::VerifyMode::kChecksums);
  REQUIRE(snap.ok());
  const auto& m = (*snap)->manifest();
  CHECK(m.count == r->indexed);
  CHECK(m.dim == 1792);
  CHECK(m.model.name == "mobilenet_v2_140_feature_vector");
  CHECK(m.model.sha256.size() == 64);
  CHECK(m.files.count("model.pt") == 1);
  // Ids are paths relative to the input; the stereo pair are each other's neighbours.
  auto left = (*snap)->Find("motorcycle_left.png");
  REQUIRE(left.has_value());
  auto hits = (*snap)->segments().front().segment->searcher().Search((*snap)->Vector(*left), 2, 64);
  REQUIRE(hits.size() == 2);
  CHECK(hits[0].row == *left);
  CHECK((*snap)->Id(hits[1].row)->id == "motorcycle_right.png");
  // Every row has a JPEG thumbnail, listed in the (one) segment's manifest.
  REQUIRE((*snap)->segments().size() == 1);
  CHECK(snapshot::FirstSegment(**snap).manifest().files.count("thumbs.bin") == 1);
  REQUIRE((*snap)->has_thumbnails());
  for (uint64_t row = 0; row < m.count; ++row) {
    auto thumb = (*snap)->Thumbnail(row);
    REQUIRE(thumb.ok());
    REQUIRE(thumb->size() > 100);
    CHECK(thumb->substr(0, 3) == "\xFF\xD8\xFF");
  }
}

TEST_CASE("A file name that is not UTF-8 is rejected with its reason, the rest indexed") {
  if (!fs::exists(IMAGESEARCH_DEFAULT_MODEL_PATH)) FAIL("default model not built");
  std::string dir = CopyImages({"coffee.png", "rocket.jpg"});
  fs::copy_file(kImages + "/camera.png", dir + "/sub/caf\xE9.png");  // Latin-1.
  std::string root = TempDir() + "/root";
  IndexerOptions o = Options(dir, root);
  o.max_reject_ratio = 0.5;
  auto r = RunIndexer(o);
  REQUIRE(r.ok());
  CHECK(r->indexed == 2);
  CHECK(r->rejected == 1);
  auto rejects = ReadFileToString(snapshot::VersionDir(root, 1) + "/rejects.jsonl");
  REQUIRE(rejects.ok());
  // One JSON line, the name's invalid byte replaced, with the reason.
  CHECK(rejects->find("\"id\":\"sub/caf\xEF\xBF\xBD.png\"") != std::string::npos);
  CHECK(rejects->find("id or path is not valid UTF-8") != std::string::npos);
}

TEST_CASE("Too many rejects, or nothing indexed, fails and publishes nothing") {
  std::string root = TempDir() + "/root";
  IndexerOptions o = Options(kImages, root);
  o.max_reject_ratio = 0.01;
  auto r = RunIndexer(o);
  REQUIRE_FALSE(r.ok());
  CHECK(absl::IsFailedPrecondition(r.status()));
  CHECK(r.status().message().find("were rejected, more than --max_reject_ratio=0.01") !=
        std::string::npos);
  CHECK(absl::IsNotFound(snapshot::ReadCurrentVersion(root).status()));

  std::string bad = CopyImages({"truncated.jpg"});
  IndexerOptions o2 = Options(bad, root);
  o2.max_reject_ratio = 1.0;
  auto r2 = RunIndexer(o2);
  REQUIRE_FALSE(r2.ok());
  CHECK(r2.status().message().find("no image was indexed") != std::string::npos);
  CHECK_FALSE(fs::exists(root + "/CURRENT"));
}

TEST_CASE("Incremental build keeps base vectors without re-encoding, replaces and removes ids") {
  std::string root = TempDir() + "/root";
  auto v1 = RunIndexer(
      Options(CopyImages({"rocket.jpg", "coffee.png", "camera.png", "chelsea.png"}), root));
  REQUIRE(v1.ok());
  IndexerOptions o = Options(CopyImages({"astronaut.png", "coffee.png"}), root);
  o.base_version = 1;
  o.remove_ids = {"sub/camera.png"};
  auto v2 = RunIndexer(o);
  REQUIRE(v2.ok());
  CHECK(v2->version == 2);
  CHECK(v2->indexed == 2);
  CHECK(v2->kept_from_base == 2);
  CHECK(v2->removed == 1);
  CHECK(v2->total == 4);
  auto s1 = snapshot::Snapshot::Open(root, 1, snapshot::VerifyMode::kSizes);
  auto s2 = snapshot::Snapshot::Open(root, 2, snapshot::VerifyMode::kSizes);
  REQUIRE(s1.ok());
  REQUIRE(s2.ok());
  CHECK((*s2)->manifest().base_version == 1);
  // v2 is v1's segment, shared (not rewritten), plus one new segment of the
  // two new rows; camera.png (removed) and coffee.png (re-indexed) are
  // deleted from v1's segment.
  REQUIRE((*s2)->segments().size() == 2);
  CHECK((*s2)->segments()[0].name == (*s1)->segments()[0].name);
  CHECK((*s2)->segments()[0].segment->dir() == (*s1)->segments()[0].segment->dir());
  CHECK((*s2)->segments()[0].deleted_count == 2);
  CHECK((*s2)->segments()[1].segment->rows() == 2);
  CHECK((*s2)->segments()[1].name == v2->segment);
  CHECK(v2->replaced == 1);
  CHECK((*s2)->live_count() == 4);
  CHECK((*s2)->Find("sub/coffee.png").value() >= (*s2)->segments()[1].base);
  CHECK_FALSE((*s2)->Find("sub/camera.png").has_value());
  REQUIRE((*s2)->Find("sub/astronaut.png").has_value());
  // rocket.jpg's vector was carried over bit for bit.
  const float* a = (*s1)->Vector(*(*s1)->Find("sub/rocket.jpg"));
  const float* b = (*s2)->Vector(*(*s2)->Find("sub/rocket.jpg"));
  CHECK(std::equal(a, a + 1792, b));
  // Its thumbnail too, although rocket.jpg is not in v2's input; the new rows have theirs.
  REQUIRE((*s2)->has_thumbnails());
  auto thumb1 = (*s1)->Thumbnail(*(*s1)->Find("sub/rocket.jpg"));
  auto thumb2 = (*s2)->Thumbnail(*(*s2)->Find("sub/rocket.jpg"));
  REQUIRE(thumb1.ok());
  REQUIRE(thumb2.ok());
  CHECK(thumb1->size() > 100);
  CHECK(*thumb1 == *thumb2);
  CHECK((*s2)->Thumbnail(*(*s2)->Find("sub/astronaut.png"))->size() > 100);

  // --thumbnails=false: the new segment has no thumbs.bin; the base's keep theirs.
  IndexerOptions off = Options(CopyImages({"logo.png"}), root);
  off.base_version = 2;
  off.thumbnails = false;
  auto v3 = RunIndexer(off);
  REQUIRE(v3.ok());
  auto s3 = snapshot::Snapshot::Open(root, 3, snapshot::VerifyMode::kSizes);
  REQUIRE(s3.ok());
  REQUIRE((*s3)->segments().size() == 3);
  CHECK((*s3)->segments().back().segment->thumbs() == nullptr);
  CHECK((*s3)->Thumbnail(*(*s3)->Find("sub/logo.png"))->empty());
  CHECK((*s3)->Thumbnail(*(*s3)->Find("sub/rocket.jpg"))->size() > 100);

  IndexerOptions bad = Options(CopyImages({"rocket.jpg"}), root);
  bad.base_version = 3;
  bad.remove_ids = {"no/such.png"};
  auto r = RunIndexer(bad);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message() == "--remove_ids: id 'no/such.png' is not in base v3");
  CHECK(*snapshot::ReadCurrentVersion(root) == 3);
}

TEST_CASE("A re-supplied image rejected for its attributes leaves the base row in place") {
  std::string root = TempDir() + "/root";
  std::string dir = TempDir();
  auto line = [](const std::string& id, const std::string& file, const std::string& year) {
    return "{\"id\":\"" + id + "\",\"path\":\"" + kImages + "/" + file +
           "\",\"attributes\":{\"year\":" + year + "}}\n";
  };
  REQUIRE(WriteFileDurably(dir + "/v1.jsonl",
                           line("a", "rocket.jpg", "2020") + line("b", "coffee.png", "2021"))
              .ok());
  IndexerOptions o = Options(dir + "/v1.jsonl", root);
  o.schema = *snapshot::ParseSchema("year:integer");
  REQUIRE(RunIndexer(o).ok());
  // v2 re-supplies "a" with another image but a year that is not an integer.
  REQUIRE(WriteFileDurably(dir + "/v2.jsonl", line("a", "camera.png", "\"soon\"")).ok());
  IndexerOptions inc = Options(dir + "/v2.jsonl", root);
  inc.schema = o.schema;
  inc.base_version = 1;
  inc.max_reject_ratio = 1.0;
  auto r = RunIndexer(inc);
  REQUIRE(r.ok());
  CHECK(r->rejected == 1);
  CHECK(r->kept_from_base == 2);
  auto s1 = snapshot::Snapshot::Open(root, 1, snapshot::VerifyMode::kSizes);
  auto s2 = snapshot::Snapshot::Open(root, 2, snapshot::VerifyMode::kSizes);
  REQUIRE(s1.ok());
  REQUIRE(s2.ok());
  REQUIRE((*s2)->Find("a").has_value());
  const float* before = (*s1)->Vector(*(*s1)->Find("a"));
  const float* after = (*s2)->Vector(*(*s2)->Find("a"));
  CHECK(std::equal(before, before + 1792, after));  // still rocket.jpg's vector
}

TEST_CASE("Stdin and manifest inputs: a bad manifest line is a precise error") {
  std::string root = TempDir() + "/root";
  std::istringstream in(kImages + "/rocket.jpg\n\n" + kImages + "/coffee.png\n");
  IndexerOptions o = Options("-", root);
  o.stdin_stream = &in;
  auto r = RunIndexer(o);
  REQUIRE(r.ok());
  CHECK(r->indexed == 2);
  auto snap = snapshot::Snapshot::Open(root, r->version, snapshot::VerifyMode::kSizes);
  CHECK((*snap)->Find(kImages + "/coffee.png").has_value());

  std::string dir = TempDir();
  REQUIRE(WriteFileDurably(dir + "/m.jsonl", "{\"id\":\"a\",\"path\":\"" + kImages +
                                                 "/rocket.jpg\",\"attributes\":{\"k\":1}}\n"
                                                 "{\"id\":\"b\"}\n")
              .ok());
  auto bad = RunIndexer(Options(dir + "/m.jsonl", root));
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().message() == dir + "/m.jsonl:2: missing string field \"path\"");
}

TEST_CASE("Bad options are refused before the model loads or any input is read") {
  std::string root = TempDir() + "/root";
  struct Case {
    const char* what;
    std::function<void(IndexerOptions&)> set;
    const char* message;
  };
  const Case cases[] = {
      {"m=1", [](IndexerOptions& o) { o.hnsw.m = 1; }, "HNSW M must be in [2, 1000], got 1"},
      {"ef_construction=0", [](IndexerOptions& o) { o.hnsw.ef_construction = 0; },
       "HNSW ef_construction must be at least 1, got 0"},
      {"batch=0", [](IndexerOptions& o) { o.batch_size = 0; },
       "--batch must be in [1, 4096], got 0"},
      {"default_ef=0", [](IndexerOptions& o) { o.default_ef = 0; },
       "--default_ef must be at least 1, got 0"},
      {"decode_threads=-1", [](IndexerOptions& o) { o.decode_threads = -1; },
       "--decode_threads must be in [0, 256] (0 = from the CPUs), got -1"},
      {"max_reject_ratio=2", [](IndexerOptions& o) { o.max_reject_ratio = 2; },
       "--max_reject_ratio must be in [0, 1], got 2"},
      {"duplicates_threshold=-1", [](IndexerOptions& o) { o.duplicates_threshold = -1; },
       "--duplicates_threshold must be in [0, 1] (0 = no report), got -1"},
      {"progress=fancy", [](IndexerOptions& o) { o.progress = "fancy"; },
       "--progress must be auto, bar, lines or none, got 'fancy'"},
      {"thumbnail_size=4", [](IndexerOptions& o) { o.thumbnail.max_side = 4; },
       "thumbnail size must be in [8, 1024], got 4"},
      {"remove_ids without base", [](IndexerOptions& o) { o.remove_ids = {"x"}; },
       "--remove_ids needs --base"},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    std::istringstream in(kImages + "/rocket.jpg\n");
    IndexerOptions o = Options("-", root);
    o.stdin_stream = &in;
    // A model path that does not exist: the option error must come first.
    o.model_path = "/nonexistent/model.pt";
    c.set(o);
    auto r = RunIndexer(o);
    REQUIRE_FALSE(r.ok());
    CHECK(absl::IsInvalidArgument(r.status()));
    CHECK(r.status().message() == c.message);
    CHECK(in.tellg() == 0);  // The input was never read.
  }
  CHECK_FALSE(fs::exists(root));

  // --base and --remove_ids are looked up before any image is read.
  REQUIRE(RunIndexer(Options(CopyImages({"rocket.jpg"}), root)).ok());
  std::istringstream in(kImages + "/coffee.png\n");
  IndexerOptions o = Options("-", root);
  o.stdin_stream = &in;
  o.base_version = 1;
  o.remove_ids = {"sub/rocket.jpg", "no/such.png"};
  auto r = RunIndexer(o);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message() == "--remove_ids: id 'no/such.png' is not in base v1");
  CHECK(in.tellg() == 0);
  o.base_version = 7;
  o.remove_ids.clear();
  CHECK(absl::IsNotFound(RunIndexer(o).status()));
  CHECK(in.tellg() == 0);
}

TEST_CASE(
    "Two runs over the same input give the same rows whatever the encoder instances: identical "
    "ids.bin and vectors") {
  // The first image listed is a real photo enlarged to 4096 x 4096, so it
  // takes far longer to decode than the small ones after it: with 4 decoder
  // threads they finish first, and the reorder step must put rows back in
  // listing order. The second run encodes 3 batches at once, which finish
  // in any order; rows and vectors must not change.
  std::string input =
      CopyImages({"rocket.jpg", "coffee.png", "camera.png", "chelsea.png", "chelsea_small.png",
                  "logo.png", "logo_alpha_small.png", "motorcycle_left.png", "motorcycle_right.png",
                  "chelsea.webp", "coffee_chelsea.gif", "chelsea_exif6.jpg"});
  REQUIRE(image::InitImageLibrary().ok());
  vips::VImage::new_from_file((kImages + "/astronaut.png").c_str())
      .resize(8.0)
      .pngsave((input + "/sub/aaa_big.png").c_str(), vips::VImage::option()->set("compression", 1));
  std::vector<std::string> roots;
  for (int run = 0; run < 2; ++run) {
    roots.push_back(TempDir() + "/root");
    IndexerOptions o = Options(input, roots.back());
    o.decode_threads = 4;
    o.batch_size = 3;
    o.encoder_instances = run == 0 ? 1 : 3;
    o.encoder_threads = 1;
    auto r = RunIndexer(o);
    REQUIRE(r.ok());
    REQUIRE(r->indexed == 13);
  }
  auto ids1 = ReadFileToString(snapshot::FirstSegmentDir(roots[0], 1) + "/ids.bin");
  auto ids2 = ReadFileToString(snapshot::FirstSegmentDir(roots[1], 1) + "/ids.bin");
  REQUIRE(ids1.ok());
  REQUIRE(ids2.ok());
  CHECK(*ids1 == *ids2);
  auto s1 = snapshot::Snapshot::Open(roots[0], 1, snapshot::VerifyMode::kSizes);
  auto s2 = snapshot::Snapshot::Open(roots[1], 1, snapshot::VerifyMode::kSizes);
  REQUIRE(s1.ok());
  REQUIRE(s2.ok());
  const uint64_t count = (*s1)->manifest().count;
  REQUIRE(count == (*s2)->manifest().count);
  std::string previous;
  for (uint64_t row = 0; row < count; ++row) {
    INFO("row " << row);
    const float* a = (*s1)->Vector(static_cast<uint32_t>(row));
    const float* b = (*s2)->Vector(static_cast<uint32_t>(row));
    CHECK(std::equal(a, a + 1792, b));
    // Rows follow the sorted listing, the big image first.
    const std::string id((*s1)->Id(row)->id);
    if (row == 0) CHECK(id == "sub/aaa_big.png");
    CHECK(previous < id);
    previous = id;
  }
}

}  // namespace
}  // namespace imagesearch::indexer
