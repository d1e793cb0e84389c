#include "libs/snapshot/snapshot.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "libs/common/file_util.h"
#include "libs/index/half_vectors.h"
#include "libs/index/mmap_searcher.h"
#include "libs/snapshot/snapshot_store.h"
#include "libs/snapshot/test_snapshots.h"

namespace imagesearch::snapshot {
namespace {

namespace fs = std::filesystem;

std::string TempRoot() {
  std::string root = TempSnapshotRoot("snapshot_test");
  REQUIRE(!root.empty());
  return root;
}

SyntheticCorpus MakeCorpus(size_t n, int dim, const std::string& prefix) {
  SyntheticCorpus c = MakeSyntheticCorpus(n, dim, index::Metric::kCosine, prefix);
  c.input.extra_files["rejects.jsonl"] = "";
  return c;
}

TEST_CASE("Publish makes versions 1, 2 and moves CURRENT: the snapshot opens and searches") {
  std::string root = TempRoot();
  SyntheticCorpus a = MakeCorpus(500, 24, "a");
  auto v1 = PublishSnapshot(root, a.WithGraph());
  REQUIRE(v1.ok());
  CHECK(*v1 == 1);
  CHECK(*ReadCurrentVersion(root) == 1);
  SyntheticCorpus b = MakeCorpus(300, 24, "b");
  auto v2 = PublishSnapshot(root, b.WithGraph());
  REQUIRE(v2.ok());
  CHECK(*v2 == 2);
  CHECK(*ReadCurrentVersion(root) == 2);
  CHECK(*ListVersions(root) == std::vector<uint64_t>{1, 2});

  auto snap = Snapshot::Open(root, 2, VerifyMode::kChecksums);
  REQUIRE(snap.ok());
  CHECK((*snap)->manifest().count == 300);
  CHECK((*snap)->manifest().dim == 24);
  CHECK((*snap)->manifest().files.count("rejects.jsonl") == 1);
  // Query with row 17's stored vector: row 17 comes back first, as id "b17".
  REQUIRE((*snap)->segments().size() == 1);
  const float* q = (*snap)->Vector(17);
  auto hits = FirstSegment(**snap).searcher().Search(q, 5, 50);
  REQUIRE(!hits.empty());
  CHECK(hits[0].row == 17);
  CHECK((*snap)->Id(hits[0].row)->id == "b17");
  CHECK((*snap)->Find("b299").value() == 299);
}

TEST_CASE("Rollback with SetCurrentVersion, and gc never removes the live version") {
  std::string root = TempRoot();
  SyntheticCorpus c = MakeCorpus(200, 16, "x");
  for (int i = 0; i < 4; ++i) REQUIRE(PublishSnapshot(root, c.WithGraph()).ok());
  REQUIRE(SetCurrentVersion(root, 1).ok());
  CHECK(*ReadCurrentVersion(root) == 1);
  CHECK_FALSE(SetCurrentVersion(root, 9).ok());
  GcOptions gc;
  gc.keep = 1;
  gc.grace = absl::ZeroDuration();
  auto report = GarbageCollect(root, gc);
  REQUIRE(report.ok());
  CHECK(report->removed == std::vector<uint64_t>{2, 3});
  CHECK(report->held.empty());
  CHECK(*ListVersions(root) == std::vector<uint64_t>{1, 4});
  CHECK(*ReadCurrentVersion(root) == 1);
  CHECK(Snapshot::Open(root, 1, VerifyMode::kChecksums).ok());
}

TEST_CASE(
    "A CURRENT that is not a version name, or is too big to be one, is called corrupt, and gc "
    "refuses to run") {
  std::string root = TempRoot();
  REQUIRE(PublishSnapshot(root, MakeCorpus(50, 8, "c").WithGraph()).ok());
  REQUIRE(ReplaceFileAtomically(root + "/CURRENT", "v1-garbage\n").ok());
  auto garbage = ReadCurrentVersion(root);
  REQUIRE_FALSE(garbage.ok());
  CHECK(absl::StrContains(garbage.status().message(), "CURRENT is corrupt"));
  REQUIRE(ReplaceFileAtomically(root + "/CURRENT", std::string(1 << 20, 'v')).ok());
  auto big = ReadCurrentVersion(root);
  REQUIRE_FALSE(big.ok());
  CHECK(absl::IsInvalidArgument(big.status()));
  CHECK(absl::StrContains(big.status().message(), "CURRENT is corrupt"));
  CHECK(absl::StrContains(big.status().message(), "over the limit"));
  // GC will not guess which version is live.
  GcOptions gc;
  gc.keep = 0;
  gc.grace = absl::ZeroDuration();
  auto refused = GarbageCollect(root, gc);
  REQUIRE_FALSE(refused.ok());
  CHECK(absl::IsFailedPrecondition(refused.status()));
  CHECK(absl::StrContains(refused.status().message(), "set-current"));
  CHECK(*ListVersions(root) == std::vector<uint64_t>{1});
  REQUIRE(ReplaceFileAtomically(root + "/CURRENT", "v1\n").ok());
  CHECK(*ReadCurrentVersion(root) == 1);
}

// A child process publishes and dies at `step`; the parent checks that the
// previous version is still CURRENT and intact, and that the next publish
// cleans up and succeeds.
void CrashAt(const std::string& step) {
  std::string root = TempRoot();
  SyntheticCorpus c = MakeCorpus(300, 16, "c");
  REQUIRE(PublishSnapshot(root, c.WithGraph()).ok());
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    PublishOptions opts;
    opts.fault_hook = [&](absl::string_view s) {
      if (s == step) ::_exit(42);
    };
    (void)PublishSnapshot(root, c.WithGraph(), opts);
    ::_exit(0);
  }
  int wstatus = 0;
  REQUIRE(::waitpid(pid, &wstatus, 0) == pid);
  REQUIRE(WIFEXITED(wstatus));
  REQUIRE(WEXITSTATUS(wstatus) == 42);
  CHECK(*ReadCurrentVersion(root) == 1);
  CHECK(Snapshot::Open(root, 1, VerifyMode::kChecksums).ok());
  auto next = PublishSnapshot(root, c.WithGraph());
  REQUIRE(next.ok());
  CHECK(*ReadCurrentVersion(root) == *next);
  for (const auto& e : fs::directory_iterator(root)) {
    CHECK(e.path().filename().string().rfind(".tmp-", 0) != 0);
  }
}

TEST_CASE("A crash at any publish step leaves the previous version live") {
  SECTION("after building files") { CrashAt("built"); }
  SECTION("after fsync, before rename") { CrashAt("synced"); }
  SECTION("after rename, before CURRENT") { CrashAt("renamed"); }
}

TEST_CASE("Damaged snapshot files are refused with a clear reason") {
  std::string root = TempRoot();
  SyntheticCorpus c = MakeCorpus(400, 16, "d");
  REQUIRE(PublishSnapshot(root, c.WithGraph()).ok());
  const std::string dir = FirstSegmentDir(root, 1);  // The graph files.
  const std::string vdir = VersionDir(root, 1);      // The version's manifest.
  REQUIRE(!dir.empty());
  auto expect_refused = [&](VerifyMode mode, const std::string& needle) {
    auto s = Snapshot::Open(root, 1, mode);
    REQUIRE_FALSE(s.ok());
    INFO(s.status().message());
    CHECK(s.status().message().find(needle) != std::string::npos);
  };
  auto truncate = [&](const std::string& name, size_t keep) {
    auto bytes = ReadFileToString(dir + "/" + name);
    REQUIRE(bytes.ok());
    REQUIRE(WriteFileDurably(dir + "/" + name, bytes->substr(0, keep)).ok());
  };
  SECTION("truncated graph") {
    truncate(kGraphFile, 1000);
    expect_refused(VerifyMode::kSizes, "graph.hnsw is 1000 bytes but the manifest says");
  }
  SECTION("truncated ids table") {
    truncate(kIdsFile, 10);
    expect_refused(VerifyMode::kSizes, "ids.bin is 10 bytes");
  }
  SECTION("truncated manifest") {
    REQUIRE(WriteFileDurably(vdir + "/" + kManifestFile,
                             ReadFileToString(vdir + "/" + kManifestFile)->substr(0, 40))
                .ok());
    expect_refused(VerifyMode::kSizes, "MANIFEST.json is not a JSON object");
  }
  SECTION("truncated segment manifest") {
    truncate(kManifestFile, 40);
    expect_refused(VerifyMode::kSizes, "MANIFEST.json is not a JSON object");
  }
  SECTION("missing segment") {
    fs::remove_all(dir);
    expect_refused(VerifyMode::kSizes, "MANIFEST.json");
  }
  SECTION("flipped byte in the graph, same size") {
    auto bytes = ReadFileToString(dir + "/" + kGraphFile);
    std::string b = *bytes;
    b[b.size() / 2] ^= 0x5a;
    REQUIRE(WriteFileDurably(dir + "/" + kGraphFile, b).ok());
    expect_refused(VerifyMode::kChecksums, "graph.hnsw checksum");
  }
  SECTION("missing offsets file") {
    fs::remove(dir + "/" + kOffsetsFile);
    expect_refused(VerifyMode::kSizes, "graph.offsets is listed in the manifest but missing");
  }
  auto edit_manifest = [&](bool drop_self_checksum) {
    auto text = ReadFileToString(vdir + "/" + kManifestFile);
    std::string t = *text;
    auto pos = t.find("\"dim\": 16");
    REQUIRE(pos != std::string::npos);
    t.replace(pos, 9, "\"dim\": 32");
    if (drop_self_checksum) {  // As manifests written before it existed.
      const size_t start = t.find("  \"manifest_xxh3\"");
      REQUIRE(start != std::string::npos);
      t.erase(start, t.find('\n', start) + 1 - start);
    }
    REQUIRE(WriteFileDurably(vdir + "/" + kManifestFile, t).ok());
  };
  SECTION("manifest edited into other valid JSON") {
    edit_manifest(false);
    expect_refused(VerifyMode::kSizes, "MANIFEST.json: its content hashes to ");
  }
  SECTION("manifest without a self-checksum, with a wrong dim") {
    edit_manifest(true);
    expect_refused(VerifyMode::kSizes, "of dim 16 (cosine); the version says 400 rows of dim 32");
  }
}

TEST_CASE("Extra files may not take the name of a file the store writes") {
  const std::string root = TempRoot();
  for (const char* name : {"graph.hnsw", "graph.offsets", "graph.f16", "ids.bin", "model.pt",
                           "MANIFEST.json", "thumbs.bin", "attrs.bin", ".hidden", "a/b"}) {
    auto c = MakeSyntheticCorpus(20, 8, index::Metric::kL2, "x");
    c.input.extra_files[name] = "not what it says";
    auto v = PublishSnapshot(root, c.WithGraph());
    REQUIRE_FALSE(v.ok());
    CHECK(v.status().message() == absl::StrCat("bad extra file name '", name, "'"));
  }
  auto c = MakeSyntheticCorpus(20, 8, index::Metric::kL2, "x");
  c.input.extra_files["rejects.jsonl"] = "{}\n";
  auto v = PublishSnapshot(root, c.WithGraph());
  REQUIRE(v.ok());
  auto text = ReadFileToString(VersionDir(root, *v) + "/rejects.jsonl");
  REQUIRE(text.ok());
  CHECK(*text == "{}\n");
}

TEST_CASE("graph.f16 is written from dimension 1024 (or when asked), checked, and searched") {
  // Default by dimension: none at 16, one at 1024.
  for (int dim : {16, 1024}) {
    const std::string root = TempRoot();
    auto c = MakeSyntheticCorpus(60, dim, index::Metric::kCosine, "d");
    auto v = PublishSnapshot(root, c.WithGraph());
    REQUIRE(v.ok());
    auto s = Snapshot::Open(root, *v, VerifyMode::kChecksums);
    REQUIRE(s.ok());
    CHECK(FirstSegment(**s).manifest().files.count(kHalfVectorsFile) ==
          (dim >= kHalfVectorsMinDim ? 1u : 0u));
    CHECK(fs::exists(FirstSegmentDir(root, *v) + "/" + kHalfVectorsFile) ==
          (dim >= kHalfVectorsMinDim));
  }
  // Asked for at dimension 16: listed with its checksum, read by the
  // searcher (where the CPU has F16C), same answers as floats only.
  const std::string root = TempRoot();
  auto c = MakeSyntheticCorpus(400, 16, index::Metric::kL2, "h");
  c.input.half_vectors = true;
  auto v = PublishSnapshot(root, c.WithGraph());
  REQUIRE(v.ok());
  const std::string dir = FirstSegmentDir(root, *v);
  auto s = Snapshot::Open(root, *v, VerifyMode::kChecksums);
  REQUIRE(s.ok());
  REQUIRE(FirstSegment(**s).manifest().files.count(kHalfVectorsFile) == 1);
  CHECK(FirstSegment(**s).searcher().uses_half_vectors() ==
        (index::GetHalfDistanceFn(index::Metric::kL2) != nullptr));
  auto floats = index::MmapHnswSearcher::Open(dir + "/" + kGraphFile, dir + "/" + kOffsetsFile, 16,
                                              index::Metric::kL2, 400);
  REQUIRE(floats.ok());
  for (size_t q = 0; q < 50; ++q) {
    const float* query = &c.vectors[(q * 7 % 400) * 16];
    auto a = FirstSegment(**s).searcher().Search(query, 10, 12);
    auto b = (*floats)->Search(query, 10, 12);
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      CHECK(a[i].row == b[i].row);
      CHECK(a[i].distance == b[i].distance);
    }
  }
  auto bytes = ReadFileToString(dir + "/" + kHalfVectorsFile);
  REQUIRE(bytes.ok());
  SECTION("truncated") {
    REQUIRE(WriteFileDurably(dir + "/" + kHalfVectorsFile, bytes->substr(0, 100)).ok());
    auto t = Snapshot::Open(root, *v, VerifyMode::kSizes);
    REQUIRE_FALSE(t.ok());
    CHECK(t.status().message().find("graph.f16 is 100 bytes but the manifest says") !=
          std::string::npos);
  }
  SECTION("a flipped byte, same size") {
    std::string b = *bytes;
    b[b.size() - 3] ^= 0x40;
    REQUIRE(WriteFileDurably(dir + "/" + kHalfVectorsFile, b).ok());
    auto t = Snapshot::Open(root, *v, VerifyMode::kChecksums);
    REQUIRE_FALSE(t.ok());
    CHECK(t.status().message().find("graph.f16 checksum") != std::string::npos);
  }
  SECTION("a header that disagrees with the graph, sizes and checksums rewritten") {
    std::string b = *bytes;
    b[16] = 17;  // dim
    REQUIRE(WriteFileDurably(dir + "/" + kHalfVectorsFile, b).ok());
    auto t = Snapshot::Open(root, *v, VerifyMode::kSizes);
    REQUIRE_FALSE(t.ok());
    CHECK(t.status().message().find("half vectors file: dimension 17") != std::string::npos);
  }
}

TEST_CASE("Thumbnails are optional, listed in the manifest, and checked like every file") {
  std::string root = TempRoot();
  SyntheticCorpus plain = MakeCorpus(30, 8, "p");
  REQUIRE(PublishSnapshot(root, plain.WithGraph()).ok());
  auto v1 = Snapshot::Open(root, 1, VerifyMode::kChecksums);
  REQUIRE(v1.ok());
  CHECK(!(*v1)->has_thumbnails());
  CHECK(FirstSegment(**v1).manifest().files.count(kThumbsFile) == 0);

  SyntheticCorpus c = MakeCorpus(30, 8, "t");
  for (int i = 0; i < 30; ++i)
    c.input.thumbnails.push_back(i == 7 ? "" : "jpeg-" + std::to_string(i));
  REQUIRE(PublishSnapshot(root, c.WithGraph()).ok());
  auto v2 = Snapshot::Open(root, 2, VerifyMode::kChecksums);
  REQUIRE(v2.ok());
  REQUIRE((*v2)->has_thumbnails());
  CHECK(FirstSegment(**v2).manifest().files.count(kThumbsFile) == 1);
  CHECK(*(*v2)->Thumbnail(12) == "jpeg-12");
  CHECK((*v2)->Thumbnail(7)->empty());

  // A flipped byte is caught by the checksum; a truncated file by its size.
  const std::string path = FirstSegmentDir(root, 2) + "/" + kThumbsFile;
  std::string bytes = *ReadFileToString(path);
  std::string flipped = bytes;
  flipped[flipped.size() - 3] ^= 0x20;
  REQUIRE(WriteFileDurably(path, flipped).ok());
  auto s = Snapshot::Open(root, 2, VerifyMode::kChecksums);
  REQUIRE_FALSE(s.ok());
  CHECK(s.status().message().find("thumbs.bin checksum") != std::string::npos);
  REQUIRE(WriteFileDurably(path, bytes.substr(0, 40)).ok());
  s = Snapshot::Open(root, 2, VerifyMode::kSizes);
  REQUIRE_FALSE(s.ok());
  CHECK(s.status().message().find("thumbs.bin is 40 bytes") != std::string::npos);

  // One thumbnail per row, or none at all.
  SyntheticCorpus bad = MakeCorpus(30, 8, "b");
  bad.input.thumbnails = {"x"};
  auto r = PublishSnapshot(root, bad.WithGraph());
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message().find("30 vectors but 1 thumbnails") != std::string::npos);
  bad.input.thumbnails.clear();
  bad.input.extra_files[kThumbsFile] = "not a table";
  CHECK(absl::IsInvalidArgument(PublishSnapshot(root, bad.WithGraph()).status()));
}

TEST_CASE("A candidate published without CURRENT, promoted, then rolled back") {
  std::string root = TempRoot();
  SyntheticCorpus a = MakeCorpus(50, 8, "a");
  REQUIRE(PublishSnapshot(root, a.WithGraph()).ok());
  CHECK(absl::IsFailedPrecondition(RollBack(root).status()));  // nothing older than v1
  PublishOptions candidate;
  candidate.make_current = false;
  SyntheticCorpus b = MakeCorpus(60, 8, "b");
  auto v2 = PublishSnapshot(root, b.WithGraph(), candidate);
  REQUIRE(v2.ok());
  CHECK(*v2 == 2);
  CHECK(*ReadCurrentVersion(root) == 1);  // published, not live
  CHECK(Snapshot::Open(root, 2, VerifyMode::kChecksums).ok());
  REQUIRE(SetCurrentVersion(root, 2).ok());
  CHECK(*ReadCurrentVersion(root) == 2);
  auto back = RollBack(root);
  REQUIRE(back.ok());
  CHECK(*back == 1);
  CHECK(*ReadCurrentVersion(root) == 1);
  // HISTORY lists what was made live, most recent first, each once; a
  // candidate that was never promoted is not in it.
  SyntheticCorpus c = MakeCorpus(40, 8, "c");
  REQUIRE(PublishSnapshot(root, c.WithGraph(), candidate).ok());  // v3, a candidate
  CHECK(*PromotionHistory(root) == std::vector<uint64_t>{1, 2});
  // A torn last line (a crash mid-append) and garbage are skipped.
  REQUIRE(AppendFileDurably(root + "/HISTORY", "junk\nv").ok());
  CHECK(*PromotionHistory(root) == std::vector<uint64_t>{1, 2});
  std::filesystem::remove(root + "/HISTORY");
  CHECK(PromotionHistory(root)->empty());
}

TEST_CASE("gc keeps a version a replica may still map until the grace has passed") {
  std::string root = TempRoot();
  SyntheticCorpus a = MakeCorpus(200, 16, "a");
  REQUIRE(PublishSnapshot(root, a.WithGraph()).ok());
  // A replica holds v1 (mapped) and has not swapped yet when v2 goes live.
  auto replica = Snapshot::Open(root, 1, VerifyMode::kSizes);
  REQUIRE(replica.ok());
  SyntheticCorpus b = MakeCorpus(100, 16, "b");
  REQUIRE(PublishSnapshot(root, b.WithGraph()).ok());
  auto log = ReadPromotionLog(root);
  REQUIRE(log.ok());
  REQUIRE(log->size() == 2);
  CHECK((*log)[0].version == 1);
  CHECK((*log)[1].version == 2);
  REQUIRE((*log)[1].at.has_value());
  const absl::Time retired = *(*log)[1].at;  // v1 stopped being CURRENT then.
  CHECK(absl::AbsDuration(absl::Now() - retired) < absl::Minutes(1));

  GcOptions gc;
  gc.keep = 1;
  gc.grace = absl::Hours(1);
  for (absl::Duration after : {absl::ZeroDuration(), absl::Minutes(59)}) {
    gc.now = retired + after;
    auto report = GarbageCollect(root, gc);
    REQUIRE(report.ok());
    CHECK(report->removed.empty());
    CHECK(report->held == std::map<uint64_t, absl::Time>{{1, retired + absl::Hours(1)}});
  }
  CHECK(*ListVersions(root) == std::vector<uint64_t>{1, 2});
  // The replica's mapping is intact and it keeps answering from v1.
  CHECK(Snapshot::Open(root, 1, VerifyMode::kChecksums).ok());
  auto hits = FirstSegment(**replica).searcher().Search((*replica)->Vector(7), 3, 40);
  REQUIRE(!hits.empty());
  CHECK((*replica)->Id(hits[0].row)->id == "a7");

  gc.now = retired + absl::Hours(1);
  auto report = GarbageCollect(root, gc);
  REQUIRE(report.ok());
  CHECK(report->removed == std::vector<uint64_t>{1});
  CHECK(report->held.empty());
  CHECK(*ListVersions(root) == std::vector<uint64_t>{2});
}

TEST_CASE("gc without recorded times takes CURRENT's last replacement as the time") {
  std::string root = TempRoot();
  SyntheticCorpus c = MakeCorpus(50, 8, "c");
  for (int i = 0; i < 3; ++i) REQUIRE(PublishSnapshot(root, c.WithGraph()).ok());
  PublishOptions candidate;
  candidate.make_current = false;
  REQUIRE(PublishSnapshot(root, c.WithGraph(), candidate).ok());  // v4, never CURRENT
  REQUIRE(SetCurrentVersion(root, 3).ok());
  // HISTORY as a root written before times were recorded has it.
  REQUIRE(ReplaceFileAtomically(root + "/HISTORY", "v1\nv2\nv3\n").ok());
  auto log = ReadPromotionLog(root);
  REQUIRE(log.ok());
  REQUIRE(log->size() == 3);
  CHECK_FALSE((*log)[1].at.has_value());
  CHECK(*PromotionHistory(root) == std::vector<uint64_t>{3, 2, 1});
  struct stat st;
  REQUIRE(::stat((root + "/CURRENT").c_str(), &st) == 0);
  const absl::Time replaced = absl::TimeFromTimespec(st.st_mtim);
  GcOptions gc;
  gc.keep = 0;
  gc.grace = absl::Hours(1);
  gc.now = replaced + absl::Minutes(30);
  auto held = GarbageCollect(root, gc);
  REQUIRE(held.ok());
  CHECK(held->removed.empty());
  CHECK(held->held.size() == 3);  // v1, v2 and the candidate v4
  gc.now = replaced + absl::Hours(1) + absl::Seconds(1);
  auto removed = GarbageCollect(root, gc);
  REQUIRE(removed.ok());
  CHECK(removed->removed == std::vector<uint64_t>{1, 2, 4});
  CHECK(*ListVersions(root) == std::vector<uint64_t>{3});
}

TEST_CASE("set-current refuses a version that replicas would refuse, and records nothing") {
  std::string root = TempRoot();
  SyntheticCorpus c = MakeCorpus(60, 8, "s");
  REQUIRE(PublishSnapshot(root, c.WithGraph()).ok());
  REQUIRE(PublishSnapshot(root, c.WithGraph()).ok());
  const std::string history = *ReadFileToString(root + "/HISTORY");
  // v99 holding a copy of v1 (its manifest names version 1).
  fs::copy(VersionDir(root, 1), VersionDir(root, 99));
  absl::Status s = SetCurrentVersion(root, 99);
  CHECK(absl::IsInvalidArgument(s));
  CHECK(s.message() == absl::StrCat("refusing to make v99 CURRENT: snapshot ", root,
                                    "/v99: manifest says version 1, directory is 99"));
  // v1 truncated: its files no longer match its manifest.
  fs::resize_file(FirstSegmentDir(root, 1) + "/ids.bin", 10);
  s = SetCurrentVersion(root, 1);
  CHECK(absl::IsDataLoss(s));
  CHECK(s.message().find("refusing to make v1 CURRENT") != std::string::npos);
  CHECK(s.message().find("ids.bin is 10 bytes but the manifest says") != std::string::npos);
  CHECK(absl::IsNotFound(SetCurrentVersion(root, 7)));
  CHECK(*ReadCurrentVersion(root) == 2);
  CHECK(*ReadFileToString(root + "/HISTORY") == history);
  CHECK(SetCurrentVersion(root, 2).ok());
}

TEST_CASE("Bad publish inputs are refused and nothing is published") {
  std::string root = TempRoot();
  SyntheticCorpus c = MakeCorpus(10, 8, "e");
  c.input.ids[3].id = "e2";
  auto r = PublishSnapshot(root, c.WithGraph());
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message().find("duplicate id 'e2'") != std::string::npos);
  CHECK(absl::IsNotFound(ReadCurrentVersion(root).status()));
  c.input.ids[3].id = "e3";
  c.vectors.assign(8 * 10, 0.0f);
  auto z = PublishSnapshot(root, c.WithGraph());
  REQUIRE_FALSE(z.ok());
  CHECK(z.status().message().find("zero vector") != std::string::npos);
  CHECK(ListVersions(root)->empty());
}

}  // namespace
}  // namespace imagesearch::snapshot
