// Runs the real indexer with the real default model on real images.
#include "services/indexer/indexer.h"

#include <stdlib.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <sstream>

#include "libs/common/file_util.h"
#include "libs/snapshot/snapshot.h"
#include "libs/snapshot/snapshot_store.h"

namespace imagesearch::indexer {
namespace {

namespace fs = std::filesystem;
const std::string kImages = std::string(IMAGESEARCH_TESTDATA_DIR) + "/images";

std::string TempDir() {
  char tmpl[] = "/tmp/imagesearch_indexer_test.XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  return tmpl;
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
  auto left = (*snap)->ids().Find("motorcycle_left.png");
  REQUIRE(left.has_value());
  auto hits = (*snap)->searcher().Search((*snap)->searcher().Vector(*left), 2, 64);
  REQUIRE(hits.size() == 2);
  CHECK(hits[0].row == *left);
  CHECK((*snap)->ids().Get(hits[1].row)->id == "motorcycle_right.png");
  // Every row has a JPEG thumbnail, listed in the manifest.
  CHECK(m.files.count("thumbs.bin") == 1);
  REQUIRE((*snap)->thumbs() != nullptr);
  for (uint64_t row = 0; row < m.count; ++row) {
    auto thumb = (*snap)->thumbs()->Get(row);
    REQUIRE(thumb.ok());
    REQUIRE(thumb->size() > 100);
    CHECK(thumb->substr(0, 3) == "\xFF\xD8\xFF");
  }
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
  auto v1 = RunIndexer(Options(CopyImages({"rocket.jpg", "coffee.png", "camera.png", "chelsea.png"}), root));
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
  CHECK_FALSE((*s2)->ids().Find("sub/camera.png").has_value());
  REQUIRE((*s2)->ids().Find("sub/astronaut.png").has_value());
  // rocket.jpg's vector was carried over bit for bit.
  const float* a = (*s1)->searcher().Vector(*(*s1)->ids().Find("sub/rocket.jpg"));
  const float* b = (*s2)->searcher().Vector(*(*s2)->ids().Find("sub/rocket.jpg"));
  CHECK(std::equal(a, a + 1792, b));
  // Its thumbnail too, although rocket.jpg is not in v2's input; the new rows have theirs.
  REQUIRE((*s2)->thumbs() != nullptr);
  auto thumb1 = (*s1)->thumbs()->Get(*(*s1)->ids().Find("sub/rocket.jpg"));
  auto thumb2 = (*s2)->thumbs()->Get(*(*s2)->ids().Find("sub/rocket.jpg"));
  REQUIRE(thumb1.ok());
  REQUIRE(thumb2.ok());
  CHECK(thumb1->size() > 100);
  CHECK(*thumb1 == *thumb2);
  CHECK((*s2)->thumbs()->Get(*(*s2)->ids().Find("sub/astronaut.png"))->size() > 100);

  // --thumbnails=false: no thumbs.bin at all.
  IndexerOptions off = Options(CopyImages({"logo.png"}), root);
  off.base_version = 2;
  off.thumbnails = false;
  auto v3 = RunIndexer(off);
  REQUIRE(v3.ok());
  auto s3 = snapshot::Snapshot::Open(root, 3, snapshot::VerifyMode::kSizes);
  REQUIRE(s3.ok());
  CHECK((*s3)->thumbs() == nullptr);
  CHECK((*s3)->manifest().files.count("thumbs.bin") == 0);

  IndexerOptions bad = Options(CopyImages({"rocket.jpg"}), root);
  bad.base_version = 3;
  bad.remove_ids = {"no/such.png"};
  auto r = RunIndexer(bad);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message() == "--remove_ids: id 'no/such.png' is not in base v3");
  CHECK(*snapshot::ReadCurrentVersion(root) == 3);
}

TEST_CASE("Stdin and manifest inputs; a bad manifest line is a precise error") {
  std::string root = TempDir() + "/root";
  std::istringstream in(kImages + "/rocket.jpg\n\n" + kImages + "/coffee.png\n");
  IndexerOptions o = Options("-", root);
  o.stdin_stream = &in;
  auto r = RunIndexer(o);
  REQUIRE(r.ok());
  CHECK(r->indexed == 2);
  auto snap = snapshot::Snapshot::Open(root, r->version, snapshot::VerifyMode::kSizes);
  CHECK((*snap)->ids().Find(kImages + "/coffee.png").has_value());

  std::string dir = TempDir();
  REQUIRE(WriteFileDurably(dir + "/m.jsonl",
                           "{\"id\":\"a\",\"path\":\"" + kImages + "/rocket.jpg\",\"attributes\":{\"k\":1}}\n"
                           "{\"id\":\"b\"}\n").ok());
  auto bad = RunIndexer(Options(dir + "/m.jsonl", root));
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().message() == dir + "/m.jsonl:2: missing string field \"path\"");
}

}  // namespace
}  // namespace imagesearch::indexer
