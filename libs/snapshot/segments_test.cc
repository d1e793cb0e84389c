// Segmented versions: PublishUpdate writes one new segment and deletes,
// shares the base's segments, and gc removes only segments no version names.
#include <sys/stat.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "libs/common/file_util.h"
#include "libs/index/metric.h"
#include "libs/snapshot/deletes.h"
#include "libs/snapshot/merge_policy.h"
#include "libs/snapshot/shard.h"
#include "libs/snapshot/snapshot.h"
#include "libs/snapshot/snapshot_store.h"
#include "libs/snapshot/test_snapshots.h"

namespace imagesearch::snapshot {
namespace {

namespace fs = std::filesystem;

constexpr int kDim = 16;

std::string TempRoot() {
  std::string root = TempSnapshotRoot("segments_test");
  REQUIRE(!root.empty());
  return root;
}

// `n` rows with ids "<prefix><first>".."<prefix><first+n-1>".
SyntheticCorpus Rows(size_t n, const std::string& prefix, size_t first, uint32_t seed) {
  SyntheticCorpus c = MakeSyntheticCorpus(n, kDim, index::Metric::kCosine, prefix, seed);
  for (size_t i = 0; i < n; ++i) c.input.ids[i].id = prefix + std::to_string(first + i);
  return c;
}

std::set<std::string> FilesIn(const std::string& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

uint64_t BytesIn(const std::string& dir) {
  uint64_t n = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) n += e.file_size();
  }
  return n;
}

ino_t Inode(const std::string& path) {
  struct stat st;
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_ino;
}

std::shared_ptr<const Snapshot> OpenVersion(const std::string& root, uint64_t v,
                                            const Snapshot* reuse = nullptr) {
  auto s = Snapshot::Open(root, v, VerifyMode::kChecksums, reuse);
  INFO(s.status().ToString());
  REQUIRE(s.ok());
  return *s;
}

TEST_CASE("An update writes one new segment and deletes, and the base's segment is shared") {
  const std::string root = TempRoot();
  SyntheticCorpus base = Rows(300, "a", 0, 5);
  REQUIRE(PublishSnapshot(root, base.WithGraph()).ok());
  auto v1 = OpenVersion(root, 1);

  // 40 new rows, 10 rows re-adding a290..a299, and 2 deletes (plus one unknown id).
  SyntheticCorpus added = Rows(50, "a", 290, 9);
  for (size_t i = 10; i < 50; ++i) added.input.ids[i].id = "n" + std::to_string(i);
  added.input.hnsw.m = v1->manifest().hnsw_m + 4;  // Built with another M than the base.
  SnapshotUpdate update;
  update.base_version = 1;
  update.added = added.WithGraph();
  update.delete_ids = {"a5", "a6", "nope"};
  auto r = PublishUpdate(root, update);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  CHECK(r->version == 2);
  CHECK(r->replaced == 10);
  CHECK(r->deleted == 2);
  CHECK(r->unknown_ids == 1);
  CHECK(*ReadCurrentVersion(root) == 2);

  auto v2 = OpenVersion(root, 2, v1.get());
  REQUIRE(v2->segments().size() == 2);
  const SegmentRef& old_seg = v2->segments()[0];
  const SegmentRef& new_seg = v2->segments()[1];
  CHECK(old_seg.name == v1->segments()[0].name);
  CHECK(old_seg.segment == v1->segments()[0].segment);  // The same opened segment, shared.
  CHECK_FALSE(old_seg.opened_here);
  CHECK(new_seg.opened_here);
  // The version records its newest graph's parameters; each segment its own.
  CHECK(v2->manifest().hnsw_m == v1->manifest().hnsw_m + 4);
  CHECK(new_seg.segment->searcher().header().m == static_cast<uint64_t>(v2->manifest().hnsw_m));
  CHECK(old_seg.segment->manifest().hnsw_m == v1->manifest().hnsw_m);
  CHECK(new_seg.name == r->segment);
  CHECK(old_seg.deleted_count == 12);
  CHECK(new_seg.base == 300);
  CHECK(v2->rows() == 350);
  CHECK(v2->live_count() == 338);
  CHECK(v2->manifest().count == 338);
  CHECK(v2->manifest().base_version == 1);
  // Ids: deleted ones are gone, re-added ones live in the new segment.
  CHECK_FALSE(v2->Find("a5").has_value());
  CHECK_FALSE(v2->Find("nope").has_value());
  CHECK(v2->Find("a7").value() == 7);
  const uint32_t a295 = v2->Find("a295").value();
  CHECK(a295 >= 300);
  CHECK(v2->Id(a295)->id == "a295");
  CHECK(v2->Find("n49").has_value());
  CHECK_FALSE(v2->IsLive(295));  // The old a295 row.
  CHECK(v2->IsLive(a295));
  // The replaced row keeps its number and vector; the new one has its own.
  CHECK(std::equal(v1->Vector(295), v1->Vector(295) + kDim, v2->Vector(295)));
  std::vector<float> want(&added.vectors[5 * kDim], &added.vectors[6 * kDim]);
  REQUIRE(index::NormalizeInPlace(want.data(), kDim));  // Stored prepared (cosine).
  for (int i = 0; i < kDim; ++i) CHECK(v2->Vector(a295)[i] == Approx(want[i]).margin(1e-6));

  // What was written: the new segment, one deletes file and the manifest;
  // far less than the base's segment, which was not touched.
  const std::string v2_dir = VersionDir(root, 2);
  CHECK(FilesIn(v2_dir) == std::set<std::string>{kManifestFile, DeletesFileName(old_seg.name)});
  CHECK(r->bytes_written < BytesIn(old_seg.segment->dir()) / 3);
  CHECK(r->bytes_written > BytesIn(new_seg.segment->dir()));
}

TEST_CASE("A delete-only update writes only the deletes, and unchanged deletes are links") {
  const std::string root = TempRoot();
  SyntheticCorpus base = Rows(200, "a", 0, 5);
  REQUIRE(PublishSnapshot(root, base.WithGraph()).ok());
  SyntheticCorpus added = Rows(30, "b", 0, 7);
  SnapshotUpdate add;
  add.base_version = 1;
  add.added = added.WithGraph();
  add.delete_ids = {"a1"};
  REQUIRE(PublishUpdate(root, add).ok());  // v2: deletes in segment 0
  SnapshotUpdate del;
  del.base_version = 2;
  del.delete_ids = {"b3"};
  auto r = PublishUpdate(root, del);  // v3: deletes in segment 1 only
  REQUIRE(r.ok());
  CHECK(r->segment.empty());
  auto v2 = OpenVersion(root, 2);
  auto v3 = OpenVersion(root, 3, v2.get());
  REQUIRE(v3->segments().size() == 2);
  CHECK(v3->live_count() == 228);
  CHECK_FALSE(v3->Find("b3").has_value());
  CHECK_FALSE(v3->Find("a1").has_value());
  const std::string seg0 = DeletesFileName(v3->segments()[0].name);
  const std::string seg1 = DeletesFileName(v3->segments()[1].name);
  CHECK(FilesIn(VersionDir(root, 3)) == std::set<std::string>{kManifestFile, seg0, seg1});
  // Segment 0's deletes did not change: the same file (a hard link), not a copy.
  CHECK(Inode(VersionDir(root, 3) + "/" + seg0) == Inode(VersionDir(root, 2) + "/" + seg0));
  CHECK(Inode(VersionDir(root, 3) + "/" + seg1) != Inode(VersionDir(root, 2) + "/" + seg0));
  CHECK(r->bytes_written < 4096);
  for (const SegmentRef& ref : v3->segments()) CHECK_FALSE(ref.opened_here);
}

TEST_CASE("An update that changes no row is skipped when asked, and published when not") {
  const std::string root = TempRoot();
  SyntheticCorpus base = Rows(50, "a", 0, 5);
  REQUIRE(PublishSnapshot(root, base.WithGraph()).ok());
  SnapshotUpdate gone;
  gone.delete_ids = {"nope", "zz"};
  gone.skip_if_unchanged = true;
  auto skipped = PublishUpdate(root, gone);
  REQUIRE(skipped.ok());
  CHECK_FALSE(skipped->published);
  CHECK(skipped->version == 1);
  CHECK(skipped->unknown_ids == 2);
  CHECK(*ReadCurrentVersion(root) == 1);
  CHECK_FALSE(Snapshot::Open(root, 2, VerifyMode::kSizes).ok());
  // One live id among them: a version.
  gone.delete_ids = {"nope", "a7"};
  auto changed = PublishUpdate(root, gone);
  REQUIRE(changed.ok());
  CHECK(changed->published);
  CHECK(changed->version == 2);
  CHECK(changed->deleted == 1);
  // An update of a root that is not there names the root, not its lock file.
  SnapshotUpdate elsewhere;
  elsewhere.delete_ids = {"a1"};
  auto nowhere = PublishUpdate(root + "/missing", elsewhere);
  REQUIRE(absl::IsNotFound(nowhere.status()));
  CHECK(absl::StrContains(nowhere.status().message(), "/missing does not exist"));
  // Without the flag, an update that changes nothing is still a version, as
  // the indexer and the snapshot tool ask.
  SnapshotUpdate plain;
  plain.delete_ids = {"a7"};  // Already deleted in v2.
  auto published = PublishUpdate(root, plain);
  REQUIRE(published.ok());
  CHECK(published->published);
  CHECK(published->version == 3);
}

TEST_CASE("A segment with no live row is dropped, and deleting every row is refused") {
  const std::string root = TempRoot();
  SyntheticCorpus base = Rows(50, "a", 0, 5);
  REQUIRE(PublishSnapshot(root, base.WithGraph()).ok());
  SyntheticCorpus again = Rows(50, "a", 0, 6);  // Every id re-added.
  SnapshotUpdate update;
  update.base_version = 1;
  update.added = again.WithGraph();
  auto r = PublishUpdate(root, update);
  REQUIRE(r.ok());
  CHECK(r->replaced == 50);
  auto v2 = OpenVersion(root, 2);
  REQUIRE(v2->segments().size() == 1);
  CHECK(v2->segments()[0].name == r->segment);

  SnapshotUpdate all;
  all.base_version = 2;
  for (int i = 0; i < 50; ++i) all.delete_ids.push_back("a" + std::to_string(i));
  auto none = PublishUpdate(root, all);
  REQUIRE_FALSE(none.ok());
  CHECK(absl::IsFailedPrecondition(none.status()));
  CHECK(none.status().message() ==
        "the update deletes every row of base v2; refusing to publish an empty snapshot");
  CHECK(*ListVersions(root) == std::vector<uint64_t>{1, 2});
  CHECK(*ReadCurrentVersion(root) == 2);

  SyntheticCorpus wrong = MakeSyntheticCorpus(5, kDim + 1, index::Metric::kCosine, "w");
  SnapshotUpdate bad;
  bad.base_version = 2;
  bad.added = wrong.WithGraph();
  auto refused = PublishUpdate(root, bad);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().message() == "the added rows are 17-d cosine but base v2 is 16-d cosine");
  CHECK(FilesIn(root + "/segments").size() == 2);  // Nothing left behind.
}

TEST_CASE("gc removes the segments no kept version names, and only those") {
  const std::string root = TempRoot();
  SyntheticCorpus a = Rows(100, "a", 0, 5);
  REQUIRE(PublishSnapshot(root, a.WithGraph()).ok());  // v1: segment A
  SyntheticCorpus b = Rows(20, "b", 0, 6);
  SnapshotUpdate add;
  add.base_version = 1;
  add.added = b.WithGraph();
  REQUIRE(PublishUpdate(root, add).ok());  // v2: A + B
  SyntheticCorpus c = Rows(30, "c", 0, 7);
  REQUIRE(PublishSnapshot(root, c.WithGraph()).ok());    // v3: C alone
  fs::create_directories(root + "/segments/s9-orphan");  // A crashed writer's leftover.
  const auto named_by = [&](uint64_t v) {
    std::set<std::string> names;
    auto snap = OpenVersion(root, v);
    for (const auto& s : snap->segments()) names.insert(s.name);
    return names;
  };
  const std::set<std::string> v2_names = named_by(2), v3_names = named_by(3);

  GcOptions gc;
  gc.keep = 2;
  gc.grace = absl::ZeroDuration();
  auto report = GarbageCollect(root, gc);
  REQUIRE(report.ok());
  CHECK(report->removed == std::vector<uint64_t>{1});
  // v1's segment A is still named by v2: kept. Only the orphan goes.
  CHECK(report->removed_segments == std::vector<std::string>{"s9-orphan"});
  std::set<std::string> left = FilesIn(root + "/segments");
  std::set<std::string> want = v2_names;
  want.insert(v3_names.begin(), v3_names.end());
  CHECK(left == want);
  CHECK(OpenVersion(root, 2)->live_count() == 120);

  gc.keep = 1;
  report = GarbageCollect(root, gc);
  REQUIRE(report.ok());
  CHECK(report->removed == std::vector<uint64_t>{2});
  CHECK(report->removed_segments.size() == 2);
  CHECK(FilesIn(root + "/segments") == v3_names);
  CHECK(OpenVersion(root, 3)->live_count() == 30);
}

TEST_CASE("A version of the single-graph layout opens as one segment and takes updates") {
  // Made as releases before segments wrote it: the graph files and a format-1
  // manifest in v1/ itself (a segment directory is exactly that layout).
  const std::string scratch = TempRoot();
  SyntheticCorpus a = Rows(120, "a", 0, 5);
  REQUIRE(PublishSnapshot(scratch, a.WithGraph()).ok());
  const std::string root = TempRoot();
  fs::create_directories(root);
  fs::copy(FirstSegmentDir(scratch, 1), VersionDir(root, 1));
  REQUIRE(ReplaceFileAtomically(root + "/CURRENT", "v1\n").ok());
  auto v1 = OpenVersion(root, 1);
  CHECK(v1->manifest().format == kSingleGraphFormat);
  REQUIRE(v1->segments().size() == 1);
  CHECK(v1->segments()[0].name.empty());
  CHECK(v1->Find("a17").value() == 17);

  SyntheticCorpus b = Rows(10, "b", 0, 6);
  SnapshotUpdate add;
  add.base_version = 1;
  add.added = b.WithGraph();
  add.delete_ids = {"a3"};
  auto r = PublishUpdate(root, add);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  auto v2 = OpenVersion(root, 2);
  REQUIRE(v2->segments().size() == 2);
  const std::string adopted = v2->segments()[0].segment->dir();
  CHECK(v2->segments()[0].name.rfind("v1-adopted-", 0) == 0);
  // Adopted by hard links: the same graph file, not a copy.
  CHECK(Inode(adopted + "/" + kGraphFile) == Inode(VersionDir(root, 1) + "/" + kGraphFile));
  CHECK(v2->live_count() == 129);
  CHECK_FALSE(v2->Find("a3").has_value());
  CHECK(v2->Find("b9").has_value());
  CHECK(OpenVersion(root, 1)->live_count() == 120);  // The base is left as it was.
}

TEST_CASE("A damaged deletes file is refused, naming it") {
  const std::string root = TempRoot();
  SyntheticCorpus a = Rows(100, "a", 0, 5);
  REQUIRE(PublishSnapshot(root, a.WithGraph()).ok());
  SnapshotUpdate del;
  del.base_version = 1;
  del.delete_ids = {"a1", "a2"};
  REQUIRE(PublishUpdate(root, del).ok());
  auto v2 = OpenVersion(root, 2);
  const std::string path = VersionDir(root, 2) + "/" + DeletesFileName(v2->segments()[0].name);
  std::string bytes = *ReadFileToString(path);
  bytes[24] ^= 0x01;  // The bitmap's first byte: marks row 0 too, at the same size.
  REQUIRE(WriteFileDurably(path, bytes).ok());
  auto sums = Snapshot::Open(root, 2, VerifyMode::kChecksums);
  REQUIRE_FALSE(sums.ok());
  CHECK(sums.status().message().find(DeletesFileName(v2->segments()[0].name) + " checksum") !=
        std::string::npos);
  auto sizes = Snapshot::Open(root, 2, VerifyMode::kSizes);
  REQUIRE_FALSE(sizes.ok());
  CHECK(absl::IsDataLoss(sizes.status()));
  INFO(sizes.status().message());
  CHECK(sizes.status().message().find("deletes file says 2 rows but marks 3") != std::string::npos);

  // DecodeDeletes: wrong row count, a bit past the end, a short file.
  index::RowFilter d(70);
  d.Allow(3);
  const std::string good = EncodeDeletes(d);
  CHECK(DecodeDeletes(good, 70)->Count() == 1);
  CHECK(DecodeDeletes(good, 71).status().message() ==
        "deletes file is for 70 rows but the segment has 71");
  std::string past = good;
  past[past.size() - 1] = '\x80';  // Row 127 of a 70-row segment.
  CHECK(DecodeDeletes(past, 70).status().message() ==
        "deletes file marks row 127 of a 70-row segment");
  CHECK(absl::IsDataLoss(DecodeDeletes(good.substr(0, 20), 70).status()));
}

TEST_CASE("An exported version is self-contained and answers as the original") {
  const std::string root = TempRoot();
  SyntheticCorpus a = Rows(100, "a", 0, 5);
  REQUIRE(PublishSnapshot(root, a.WithGraph()).ok());
  SyntheticCorpus b = Rows(10, "b", 0, 6);
  SnapshotUpdate add;
  add.base_version = 1;
  add.added = b.WithGraph();
  add.delete_ids = {"a4"};
  REQUIRE(PublishUpdate(root, add).ok());
  const std::string out = TempRoot() + "-export";
  REQUIRE(ExportVersion(root, 2, out).ok());
  CHECK(absl::IsAlreadyExists(ExportVersion(root, 2, out)));
  auto copy = Snapshot::OpenDir(out, VerifyMode::kChecksums);
  INFO(copy.status().ToString());
  REQUIRE(copy.ok());
  auto original = OpenVersion(root, 2);
  CHECK((*copy)->live_count() == original->live_count());
  CHECK((*copy)->segments()[0].segment->dir() == out + "/segments/" + original->segments()[0].name);
  CHECK_FALSE((*copy)->Find("a4").has_value());
  CHECK((*copy)->Find("b7") == original->Find("b7"));
}

TEST_CASE("The merge policy folds small segments into the biggest once they weigh enough") {
  MergePolicy p;
  p.fold_pct = 10;
  p.max_tail_segments = 0;  // The folds alone (the tails are tested below).
  std::vector<SegmentStats> light = {{"big", 100'000, 0}, {"s1", 4'000, 0}, {"s2", 5'999, 0}};
  CHECK(ChooseMerge(light, p).empty());  // 9,999 rows: under 10% of the big one.
  std::vector<SegmentStats> heavy = {{"big", 100'000, 20'000}, {"s1", 4'000, 0}, {"s2", 4'000, 0}};
  // 8,000 live rows against the big one's 80,000 live: all three.
  CHECK(ChooseMerge(heavy, p) == std::vector<std::string>{"big", "s1", "s2"});
  // Not past max_merged_rows.
  p.max_merged_rows = 87'999;
  CHECK(ChooseMerge(heavy, p).empty());
  p.max_merged_rows = 88'000;
  CHECK(ChooseMerge(heavy, p).size() == 3);
  // Not when the others outweigh the biggest (that would be a build over all
  // of them, not an extension), nor when the biggest is due a rewrite for its
  // deletes.
  std::vector<SegmentStats> even(10, {"s", 400'000, 0});
  for (int i = 0; i < 10; ++i) even[i].name = "s" + std::to_string(i);
  p.max_merged_rows = 5'000'000;
  CHECK(ChooseMerge(even, p).empty());
  std::vector<SegmentStats> rotten = {{"big", 100'000, 30'000}, {"s1", 10'000, 0}};
  CHECK(ChooseMerge(rotten, p) == std::vector<std::string>{"big"});  // rewritten alone
  // From an empty collection: each new segment folds into the first until the
  // first outgrows them tenfold.
  CHECK(ChooseMerge({{"a", 200, 0}, {"b", 200, 0}}, p).size() == 2);
  p.fold_pct = 0;
  CHECK(ChooseMerge({{"a", 200, 0}, {"b", 200, 0}}, p).empty());
}

TEST_CASE("Between folds, the merge policy keeps a ladder of tails beside the big segment") {
  MergePolicy p;  // tail_ratio 8, max_tail_segments 5
  p.fold_pct = 10;
  std::vector<SegmentStats> v = {{"big", 100'000, 0}, {"tail", 4'000, 0}};
  CHECK(ChooseMerge(v, p).empty());  // One segment beside the big one: nothing to do.
  v.push_back({"new", 200, 0});
  // The tail is more than 8 x 200 rows: a rung of its own, not copied for them.
  CHECK(ChooseMerge(v, p).empty());
  v.push_back({"newer", 200, 0});
  // Two of a size: joined (the one extended; MergeSegments decides that).
  CHECK(ChooseMerge(v, p) == std::vector<std::string>{"new", "newer"});
  // Once the smaller ones hold an eighth of the tail, the next join takes
  // them all: the tail is copied once per eighth of its size added.
  v = {{"big", 100'000, 0}, {"tail", 4'000, 0}, {"small", 300, 0}, {"new", 200, 0}};
  CHECK(ChooseMerge(v, p) == std::vector<std::string>{"tail", "small", "new"});
  // More rungs: the biggest rung the ones below reach an eighth of, and those.
  v = {{"big", 1'000'000, 0}, {"t1", 85'000, 0}, {"t2", 9'000, 0}, {"t3", 900, 0}};
  CHECK(ChooseMerge(v, p).empty());  // A ladder at rest.
  v.push_back({"p", 200, 0});
  CHECK(ChooseMerge(v, p) == std::vector<std::string>{"t3", "p"});
  v[3].rows = 1'200;  // t3 + p = 1,400 rows: 8 x that reaches t2, not t1.
  CHECK(ChooseMerge(v, p) == std::vector<std::string>{"t2", "t3", "p"});
  p.tail_ratio = 1000;  // A ratio as big as the fold's: everything joins one tail.
  CHECK(ChooseMerge(v, p).size() == 4);
  // More than max_tail_segments: the smallest two joined, whatever their sizes.
  p = MergePolicy();
  p.fold_pct = 10;
  p.max_tail_segments = 2;
  v = {{"big", 1'000'000, 0}, {"t1", 85'000, 0}, {"t2", 9'000, 0}, {"t3", 900, 0}};
  CHECK(ChooseMerge(v, p) == std::vector<std::string>{"t2", "t3"});
  // One tail: every publish joined into it (the tail copied each time).
  p.max_tail_segments = 1;
  v = {{"big", 100'000, 0}, {"tail", 4'000, 0}, {"new", 200, 0}};
  CHECK(ChooseMerge(v, p) == std::vector<std::string>{"tail", "new"});
  p.max_tail_segments = 0;  // Never: small segments then pile up until the fold.
  CHECK(ChooseMerge(v, p).empty());
  p = MergePolicy();
  p.fold_pct = 10;
  // A fold running holds the big segment and the tail: the publishes since
  // form a new tail meanwhile.
  v = {{"big", 100'000, 0}, {"tail", 9'000, 0}, {"a", 300, 0}, {"b", 200, 0}, {"c", 100, 0}};
  const std::set<std::string> folding = {"big", "tail"};
  CHECK(ChooseMerge(v, p, folding) == std::vector<std::string>{"a", "b", "c"});
  // A tail join running holds the small ones: no fold without them, even
  // though the others weigh enough.
  v = {{"big", 100'000, 0}, {"tail", 9'900, 0}, {"a", 300, 0}};
  CHECK(ChooseMerge(v, p) == std::vector<std::string>{"big", "tail", "a"});
  CHECK(ChooseMerge(v, p, {"tail", "a"}).empty());
  // ...but with the tail free, the fold takes the big segment and the free
  // others only.
  v.push_back({"b", 100, 0});
  CHECK(ChooseMerge(v, p, {"b"}) == std::vector<std::string>{"big", "tail", "a"});
  // Not a dominant segment: the tiers decide (ten segments: nothing).
  std::vector<SegmentStats> even(10, {"s", 400'000, 0});
  for (int i = 0; i < 10; ++i) even[i].name = "s" + std::to_string(i);
  CHECK(ChooseMerge(even, p).empty());
}

// Publishes of `publish` rows beside a big segment of `big` rows, each
// followed by the policy's merges (as the ingest service runs them), until
// the fold: the rows the tail joins wrote per row added, and the most
// segments a version held after its merges.
std::pair<double, size_t> TailWrites(const MergePolicy& p, uint64_t big, uint64_t publish) {
  std::vector<SegmentStats> v = {{"big", big, 0}};
  uint64_t added = 0, written = 0;
  size_t most = 0, merges = 0;
  for (int n = 0; n < 100'000; ++n) {
    v.push_back({"p" + std::to_string(n), publish, 0});
    added += publish;
    for (std::vector<std::string> chosen = ChooseMerge(v, p); !chosen.empty();
         chosen = ChooseMerge(v, p)) {
      if (std::count(chosen.begin(), chosen.end(), "big") > 0) return {1.0 * written / added, most};
      SegmentStats merged = {"m" + std::to_string(merges++), 0, 0};
      for (const std::string& name : chosen) {
        auto it = std::find_if(v.begin(), v.end(), [&](auto& s) { return s.name == name; });
        merged.rows += it->rows;
        v.erase(it);
      }
      written += merged.rows;
      v.push_back(merged);
    }
    most = std::max(most, v.size());
  }
  return {-1, most};  // No fold.
}

TEST_CASE("The ladder of tails writes a row a few times before the fold, not once a publish") {
  MergePolicy p;
  p.fold_pct = 10;
  // 200-row publishes into 1M rows, up to the fold (a 100k-row tail).
  const auto [ladder, ladder_most] = TailWrites(p, 1'000'000, 200);
  UNSCOPED_INFO("rows written by tail joins per row added at 1M: " << ladder << " (at most "
                                                                   << ladder_most << " segments)");
  CHECK(ladder > 1);
  CHECK(ladder < 20);
  CHECK(ladder_most <= 1 + p.max_tail_segments);
  // One tail, joined at every publish: copied whole each time.
  p.max_tail_segments = 1;
  const auto [one, one_most] = TailWrites(p, 1'000'000, 200);
  UNSCOPED_INFO("with one tail: " << one);
  CHECK(one > 200);
  CHECK(one_most == 2);
  // The writes follow the rows added, not the index: from 100k rows to 10M
  // (100 times the rows to the fold), a row is written at most three times as
  // often, and the ladder gains two rungs at most.
  p = MergePolicy();
  p.max_merged_rows = 20'000'000;  // So that a fold may take 10M rows.
  const auto [small, small_most] = TailWrites(p, 100'000, 200);
  const auto [large, large_most] = TailWrites(p, 10'000'000, 200);
  UNSCOPED_INFO("at 100k: " << small << " (" << small_most << " segments), at 10M: " << large
                            << " (" << large_most << " segments)");
  CHECK(small > 1);
  CHECK(large > 1);
  CHECK(large < 3 * small);
  CHECK(large_most <= small_most + 2);
  CHECK(large_most <= 1 + p.max_tail_segments);
}

TEST_CASE("The merge policy joins the smallest segments and rewrites over-deleted ones") {
  MergePolicy p;
  p.fold_pct = 0;  // The tiers alone.
  std::vector<SegmentStats> few;
  for (int i = 0; i < 10; ++i) few.push_back({"s" + std::to_string(i), 100, 0});
  CHECK(ChooseMerge(few, p).empty());  // Not more than segments_per_tier.

  std::vector<SegmentStats> many = {{"big", 1'000'000, 0}};
  for (int i = 0; i < 11; ++i)
    many.push_back({"s" + std::to_string(i), static_cast<uint64_t>(100 + i), 0});
  auto chosen = ChooseMerge(many, p);
  CHECK(chosen.size() == 10);  // max_merge_at_once of the small ones...
  CHECK(std::find(chosen.begin(), chosen.end(), "big") == chosen.end());  // ...never the big one.

  std::vector<SegmentStats> deleted = {{"a", 1000, 300}, {"b", 1000, 100}, {"c", 50, 0}};
  CHECK(ChooseMerge(deleted, p) == std::vector<std::string>{"a"});  // 30% > 25%: rewritten.

  p.max_merged_rows = 250;
  std::vector<SegmentStats> limited = {{"x", 200, 0}, {"y", 200, 0}, {"z", 200, 0}};
  p.segments_per_tier = 2;
  CHECK(ChooseMerge(limited, p).empty());  // Any two would pass max_merged_rows.
  p.max_merged_rows = 450;
  CHECK(ChooseMerge(limited, p).size() == 2);
}

// v1: 300 rows "a"; v2: + 40 "b", a1 deleted; v3: + 30 "c", b2 deleted.
// Rows carry a "tag" keyword attribute and a thumbnail.
std::string ThreeSegments() {
  const std::string root = TempRoot();
  auto with_attrs = [](SyntheticCorpus c) {
    c.input.schema = *ParseSchema("tag:keyword");
    for (size_t i = 0; i < c.input.count; ++i) {
      const std::string tag = "t" + std::to_string(i % 3);
      c.input.ids[i].attributes_json = "{\"tag\":\"" + tag + "\"}";
      c.input.attributes.push_back({AttrValue(tag)});
      c.input.thumbnails.push_back("jpeg-" + c.input.ids[i].id);
    }
    return c;
  };
  SyntheticCorpus a = with_attrs(Rows(300, "a", 0, 5));
  REQUIRE(PublishSnapshot(root, a.WithGraph()).ok());
  uint64_t base = 1;
  for (auto [prefix, n, gone] :
       {std::tuple<const char*, size_t, const char*>{"b", 40, "a1"}, {"c", 30, "b2"}}) {
    SyntheticCorpus c = with_attrs(Rows(n, prefix, 0, static_cast<uint32_t>(base + 6)));
    SnapshotUpdate u;
    u.base_version = base++;
    u.added = c.WithGraph();
    u.delete_ids = {gone};
    REQUIRE(PublishUpdate(root, u).ok());
  }
  return root;
}

TEST_CASE("A writer's VersionCache shares the segments its versions hold across its calls") {
  const std::string root = ThreeSegments();  // v3: segments a (300 rows), b and c.
  VersionCache versions;
  PublishOptions options;
  options.versions = &versions;
  auto v3 = versions.Open(root, 3);
  REQUIRE(v3.ok());
  const std::shared_ptr<const Segment> big = (*v3)->segments()[0].segment;
  REQUIRE(big->rows() == 300);

  // An update through the cache: v4 holds a, b and c as v3's objects (their
  // files mapped once), and the new segment opened here.
  SnapshotUpdate u;
  u.base_version = 3;
  SyntheticCorpus added = Rows(5, "u", 0, 41);
  added.input.schema = *ParseSchema("tag:keyword");
  for (size_t i = 0; i < added.input.count; ++i) {
    added.input.attributes.push_back({AttrValue("t1")});
    added.input.thumbnails.push_back("jpeg-u");
  }
  u.added = added.WithGraph();
  REQUIRE(PublishUpdate(root, u, options).ok());
  auto v4 = versions.Open(root, 4);
  REQUIRE(v4.ok());
  REQUIRE((*v4)->segments().size() == 4);
  for (size_t i = 0; i < 3; ++i) {
    CHECK((*v4)->segments()[i].segment == (*v3)->segments()[i].segment);
    CHECK_FALSE((*v4)->segments()[i].opened_here);
  }
  CHECK((*v4)->segments()[3].opened_here);

  // A merge of the small ones through it reads them from the cached version
  // and publishes v5, which still shares a.
  MergeRequest req;
  for (size_t i = 1; i < 4; ++i) req.segments.push_back((*v4)->segments()[i].name);
  req.extend = false;
  auto r = MergeSegments(root, req, options);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  REQUIRE(r->version == 5);
  auto v5 = versions.Open(root, 5);
  REQUIRE(v5.ok());
  REQUIRE((*v5)->segments().size() == 2);
  CHECK((*v5)->segments()[0].segment == big);
  CHECK((*v5)->live_count() == (*v4)->live_count());
  const std::shared_ptr<const Segment> merged = (*v5)->segments()[1].segment;
  // Without a cache, the same version maps its segments afresh.
  CHECK(OpenVersion(root, 5)->segments()[0].segment != big);
  // Neither an older version nor one that is not there displaces the newest:
  // v5's merged segment (which v2 does not hold) is still shared after both.
  REQUIRE(versions.Open(root, 2).ok());
  CHECK(absl::IsNotFound(versions.Open(root, 9).status()));
  auto again = versions.Open(root, 5);
  REQUIRE(again.ok());
  CHECK((*again)->segments()[0].segment == big);
  CHECK((*again)->segments()[1].segment == merged);
}

TEST_CASE("Two merges at once choose disjoint segments of CURRENT") {
  const std::string root = ThreeSegments();  // a: 299 live, b: 39, c: 30.
  auto v3 = OpenVersion(root, 3);
  const std::string a = v3->segments()[0].name, b = v3->segments()[1].name,
                    c = v3->segments()[2].name;
  const MergePolicy p;  // fold_pct 10: 69 rows beside a's 299 fold.
  CHECK(*ChooseMergeInCurrent(root, p) == std::vector<std::string>{a, b, c});

  // A fold holds a: the free small segments form the tail meanwhile.
  CHECK(*ChooseMergeInCurrent(root, p, {a}) == std::vector<std::string>{b, c});
  // A join holds b: c's 30 rows alone still pass 10% of a's 299, so a and c fold.
  CHECK(*ChooseMergeInCurrent(root, p, {b}) == std::vector<std::string>{a, c});
  // Everything held: nothing.
  CHECK(ChooseMergeInCurrent(root, p, {a, b, c})->empty());
  // The lanes' merges, one after the other: the tail first, then the fold
  // of the big segment and that tail.
  MergeRequest tail;
  tail.segments = *ChooseMergeInCurrent(root, p, {a});
  auto r = MergeSegments(root, tail);
  REQUIRE(r.ok());
  CHECK(r->extended == b);  // The bigger of the two is extended.
  CHECK(*ChooseMergeInCurrent(root, p) == std::vector<std::string>{a, r->segment});
  CHECK(absl::IsNotFound(ChooseMergeInCurrent(TempRoot(), p).status()));
}

// The segment of `snap` named `name`.
const SegmentRef& Named(const Snapshot& snap, const std::string& name) {
  for (const SegmentRef& ref : snap.segments()) {
    if (ref.name == name) return ref;
  }
  FAIL("no segment " << name);
  return snap.segments().front();
}

// Publishes 20 rows "e" and 20 rows "f" on `base`, one segment each, and
// joins the two into one (a new tail).
MergeResult PublishTwoAndJoin(const std::string& root, uint64_t base) {
  std::vector<std::string> fresh;
  uint64_t at = base;
  for (auto [prefix, seed] : {std::pair<const char*, uint32_t>{"e", 41}, {"f", 43}}) {
    SyntheticCorpus c = Rows(20, prefix, 0, seed);
    SnapshotUpdate up;
    up.base_version = at;
    up.added = c.WithGraph();
    auto u = PublishUpdate(root, up);
    REQUIRE(u.ok());
    at = u->version;
    fresh.push_back(u->segment);
  }
  MergeRequest join;
  join.segments = fresh;
  auto r = MergeSegments(root, join);
  REQUIRE(r.ok());
  return *r;
}

TEST_CASE("Joining two linked tails copies every row's links, searching none") {
  const std::string root = ThreeSegments();  // a: 300 rows, b: 40 (39 live), c: 30.
  auto v3 = OpenVersion(root, 3);
  const std::string a = v3->segments()[0].name;
  MergeRequest first;
  first.segments = {v3->segments()[1].name, v3->segments()[2].name};
  auto t1 = MergeSegments(root, first);
  REQUIRE(t1.ok());
  CHECK(t1->linked == 70);  // b extended (b2 kept, deleted) and c.
  // On all cores (threads 0), the merging thread's CPU is not the searches'.
  CHECK(t1->link_cpu == absl::ZeroDuration());
  // A second tail, of two publishes, with a delete in it.
  const MergeResult t2 = PublishTwoAndJoin(root, t1->version);
  CHECK(t2.linked == 40);
  SnapshotUpdate del;
  del.base_version = t2.version;
  del.delete_ids = {"e3"};
  auto d = PublishUpdate(root, del);
  REQUIRE(d.ok());
  auto before = OpenVersion(root, d->version);
  const SegmentRef& tail1 = Named(*before, t1->segment);
  const SegmentRef& tail2 = Named(*before, t2.segment);
  REQUIRE(tail1.segment->link_rows() != nullptr);
  REQUIRE(tail2.segment->link_rows() != nullptr);

  // The two tails joined (the bigger extended): both were linked to a, so
  // every row keeps its links, and e3 is dropped with its links.
  MergeRequest both;
  both.segments = {t1->segment, t2.segment};
  auto t3 = MergeSegments(root, both);
  REQUIRE(t3.ok());
  CHECK(t3->extended == t1->segment);
  CHECK(t3->dropped == 1);
  CHECK(t3->linked == 0);
  auto after = OpenVersion(root, t3->version);
  const SegmentRef& tail3 = Named(*after, t3->segment);
  CHECK(tail3.segment->manifest().links.segment == a);
  REQUIRE(tail3.segment->rows() == tail1.segment->rows() + 39);
  REQUIRE(tail3.segment->link_rows() != nullptr);
  const size_t n1 = tail1.segment->rows();
  CHECK(std::equal(tail1.segment->link_rows(), tail1.segment->link_rows() + n1 * 16,
                   tail3.segment->link_rows()));
  size_t next = n1;
  for (uint32_t row = 0; row < tail2.segment->rows(); ++row) {
    if (!before->IsLive(tail2.base + row)) continue;
    CHECK(std::equal(tail2.segment->link_rows() + row * 16,
                     tail2.segment->link_rows() + (row + 1) * 16,
                     tail3.segment->link_rows() + next * 16));
    ++next;
  }
  CHECK(next == tail3.segment->rows());
  // And the version walks the big segment and the joined tail as one.
  REQUIRE(after->joint() != nullptr);
  REQUIRE(after->joint()->tails.size() == 1);
  size_t found = 0, live = 0;
  for (uint32_t row = 0; row < tail3.segment->rows(); ++row) {
    const uint32_t id = tail3.base + row;
    if (!after->IsLive(id)) continue;
    ++live;
    auto got =
        after->joint()->graph->Search(after->Vector(id), 1, 32, after->live(),
                                      after->segments()[after->joint()->big].base, {tail3.base});
    found += !got.empty() && got[0].row == id;
  }
  CHECK(live == 69 + 39);
  CHECK(found == live);
}

// Publishes `rows` on `base` and joins the new segment into `tail`, which
// the join extends.
MergeResult JoinInto(const std::string& root, uint64_t base, const std::string& tail,
                     SyntheticCorpus& rows) {
  SnapshotUpdate add;
  add.base_version = base;
  add.added = rows.WithGraph();
  auto published = PublishUpdate(root, add);
  REQUIRE(published.ok());
  MergeRequest join;
  join.segments = {tail, published->segment};
  auto r = MergeSegments(root, join);
  REQUIRE(r.ok());
  CHECK(r->extended == tail);
  return *r;
}

TEST_CASE("A tail is linked to the big segment beside it, and the version walks both as one") {
  const std::string root = ThreeSegments();  // a: 300 rows (299 live), b: 40, c: 30.
  auto v3 = OpenVersion(root, 3);
  CHECK(v3->joint() == nullptr);  // Published segments are not linked.
  const std::string a = v3->segments()[0].name;
  MergeRequest join;
  join.segments = {v3->segments()[1].name, v3->segments()[2].name};
  join.threads = 1;  // As the ingest service merges: the searches' CPU is timed.
  auto r = MergeSegments(root, join);
  REQUIRE(r.ok());
  // Neither was linked: each row searched in a's graph (b's 40, its deleted
  // b2 kept in the graph b's extension keeps, and c's 30).
  CHECK(r->linked == 70);
  CHECK(r->link_time > absl::ZeroDuration());
  CHECK(r->link_cpu > absl::ZeroDuration());
  auto v4 = OpenVersion(root, r->version);
  const SegmentRef& tail = Named(*v4, r->segment);
  const Manifest& tm = tail.segment->manifest();
  // Linked to a, exactly that segment, 16 of a's rows per row.
  CHECK(tm.links.segment == a);
  CHECK(tm.links.manifest_xxh3 == Named(*v4, a).segment->manifest().manifest_xxh3);
  CHECK(tm.links.per_row == 16);
  REQUIRE(tm.files.count(kLinksFile) == 1);
  CHECK(tm.files.at(kLinksFile).size == tail.segment->rows() * 16 * 4);
  REQUIRE(tail.segment->link_rows() != nullptr);
  for (size_t i = 0; i < tail.segment->rows() * 16; ++i) CHECK(tail.segment->link_rows()[i] < 300);

  // The version joins them: a walk entered in a's graph reaches the tail's
  // rows (each live tail row, searched by its own vector, comes first).
  const JointSegments* joint = v4->joint();
  REQUIRE(joint != nullptr);
  CHECK(v4->segments()[joint->big].name == a);
  REQUIRE(joint->tails.size() == 1);
  CHECK(v4->segments()[joint->tails[0]].name == r->segment);
  size_t found = 0, live = 0;
  for (uint32_t row = 0; row < tail.segment->rows(); ++row) {
    const uint32_t at = tail.base + row;
    if (!v4->IsLive(at)) continue;
    ++live;
    auto got = joint->graph->Search(v4->Vector(at), 1, 32, v4->live(),
                                    v4->segments()[joint->big].base, {tail.base});
    found += !got.empty() && got[0].row == at;
  }
  CHECK(live == 69);  // b's 39 live rows (b2 kept, deleted) and c's 30.
  CHECK(found == live);

  // A version with the same two segments shares the joined graph.
  SnapshotUpdate del;
  del.base_version = r->version;
  del.delete_ids = {"a7"};
  auto u = PublishUpdate(root, del);
  REQUIRE(u.ok());
  auto v5 = OpenVersion(root, u->version, v4.get());
  REQUIRE(v5->joint() != nullptr);
  CHECK(v5->joint()->graph == joint->graph);
  // Opened on its own, the same version builds its graph when first asked,
  // once, whichever of several threads asks first.
  auto alone = OpenVersion(root, u->version);
  std::vector<const JointSegments*> seen(4, nullptr);
  {
    std::vector<std::thread> askers;
    for (size_t i = 0; i < seen.size(); ++i)
      askers.emplace_back([&, i] { seen[i] = alone->joint(); });
    for (std::thread& t : askers) t.join();
  }
  REQUIRE(seen[0] != nullptr);
  for (const JointSegments* s : seen) CHECK(s->graph == seen[0]->graph);
  CHECK(seen[0]->graph != joint->graph);
  // A version opened beside one that never built it builds its own.
  auto after_alone = OpenVersion(root, u->version, OpenVersion(root, u->version).get());
  REQUIRE(after_alone->joint() != nullptr);
  CHECK(after_alone->joint()->graph != seen[0]->graph);

  // Joining one more segment into the tail keeps the tail's links and
  // links only the new rows.
  SyntheticCorpus d = Rows(25, "d", 0, 31);
  const MergeResult r2 = JoinInto(root, u->version, r->segment, d);
  CHECK(r2.linked == 25);
  auto v7 = OpenVersion(root, r2.version);
  const SegmentRef& tail2 = Named(*v7, r2.segment);
  REQUIRE(tail2.segment->link_rows() != nullptr);
  REQUIRE(tail2.segment->rows() == tail.segment->rows() + 25);
  CHECK(std::equal(tail.segment->link_rows(), tail.segment->link_rows() + tail.segment->rows() * 16,
                   tail2.segment->link_rows()));
  REQUIRE(v7->joint() != nullptr);
  REQUIRE(v7->joint()->tails.size() == 1);
  CHECK(v7->segments()[v7->joint()->tails[0]].name == r2.segment);
  // Opened after a version that walked the tail it extends (v5 built its
  // graph), its graph starts from that one's and walks as v7's own does.
  auto v7_after = OpenVersion(root, r2.version, v5.get());
  REQUIRE(v7_after->joint() != nullptr);
  CHECK(v7_after->joint()->graph != v7->joint()->graph);
  for (uint32_t row = 0; row < v7->rows(); row += 3) {
    const std::vector<size_t> bases = {tail2.base};
    auto want = v7->joint()->graph->Search(v7->Vector(row), 10, 32, nullptr, 0, bases);
    auto got = v7_after->joint()->graph->Search(v7->Vector(row), 10, 32, nullptr, 0, bases);
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < got.size(); ++i) CHECK(got[i].row == want[i].row);
  }

  // A second tail beside the first, as the merge lanes make one while a
  // fold holds the big segment: linked to a too, and walked with it.
  const MergeResult r4 = PublishTwoAndJoin(root, r2.version);
  auto v10 = OpenVersion(root, r4.version);
  REQUIRE(v10->joint() != nullptr);
  CHECK(v10->segments()[v10->joint()->big].name == a);
  REQUIRE(v10->joint()->tails.size() == 2);
  CHECK(v10->segments()[v10->joint()->tails[0]].name == r2.segment);
  CHECK(v10->segments()[v10->joint()->tails[1]].name == r4.segment);

  // Folding the first tail into a extends a's graph: the folded segment
  // keeps a's 300 rows first and says so, and the second tail, linked to a,
  // is walked with it at once (its links are rows of it too).
  MergeRequest fold;
  fold.segments = {a, r2.segment};
  auto r3 = MergeSegments(root, fold);
  REQUIRE(r3.ok());
  CHECK(r3->extended == a);
  auto v8 = OpenVersion(root, r3->version);
  const SegmentRef& folded = Named(*v8, r3->segment);
  CHECK(folded.segment->link_rows() == nullptr);
  const Manifest& fm = folded.segment->manifest();
  REQUIRE(fm.extends.size() == 1);
  CHECK(fm.extends[0].segment == a);
  CHECK(fm.extends[0].manifest_xxh3 == Named(*v10, a).segment->manifest().manifest_xxh3);
  CHECK(fm.extends[0].rows == 300);
  REQUIRE(v8->joint() != nullptr);
  CHECK(v8->segments()[v8->joint()->big].name == r3->segment);
  REQUIRE(v8->joint()->tails.size() == 1);
  const SegmentRef& second_tail = Named(*v8, r4.segment);
  CHECK(v8->segments()[v8->joint()->tails[0]].name == r4.segment);
  size_t second_found = 0;
  for (uint32_t row = 0; row < second_tail.segment->rows(); ++row) {
    const uint32_t at = second_tail.base + row;
    auto got = v8->joint()->graph->Search(v8->Vector(at), 1, 32, v8->live(), folded.base,
                                          {second_tail.base});
    second_found += !got.empty() && got[0].row == at;
  }
  CHECK(second_found == second_tail.segment->rows());
  // Its next join links it to the folded segment, keeping its rows' links
  // (rows of a are rows of the folded segment) and searching only the new.
  SyntheticCorpus g = Rows(12, "g", 0, 51);
  const MergeResult r5 = JoinInto(root, r3->version, r4.segment, g);
  auto v12 = OpenVersion(root, r5.version);
  const SegmentRef& tail3 = Named(*v12, r5.segment);
  CHECK(tail3.segment->manifest().links.segment == r3->segment);
  REQUIRE(tail3.segment->link_rows() != nullptr);
  REQUIRE(tail3.segment->rows() == second_tail.segment->rows() + 12);
  CHECK(std::equal(second_tail.segment->link_rows(),
                   second_tail.segment->link_rows() + second_tail.segment->rows() * 16,
                   tail3.segment->link_rows()));
  REQUIRE(v12->joint() != nullptr);
  CHECK(v12->segments()[v12->joint()->big].name == r3->segment);

  // A segment whose links name a segment no longer held (and not extended
  // by one held) is searched on its own: a rebuilt big segment is new.
  MergeRequest rebuild;
  rebuild.segments = {r3->segment};
  rebuild.extend = false;
  SnapshotUpdate drop;
  drop.base_version = r5.version;
  drop.delete_ids = {"a3"};
  REQUIRE(PublishUpdate(root, drop).ok());
  auto r6 = MergeSegments(root, rebuild);
  REQUIRE(r6.ok());
  auto v14 = OpenVersion(root, r6->version);
  CHECK(Named(*v14, r6->segment).segment->manifest().extends.empty());
  CHECK(v14->joint() == nullptr);

  // A truncated links.bin is refused, naming it.
  const std::string links = absl::StrCat(root, "/segments/", r2.segment, "/", kLinksFile);
  fs::resize_file(links, fs::file_size(links) - 4);
  auto broken = Snapshot::Open(root, r2.version, VerifyMode::kSizes);
  REQUIRE_FALSE(broken.ok());
  CHECK(broken.status().code() == absl::StatusCode::kDataLoss);
  CHECK(absl::StrContains(broken.status().message(), kLinksFile));
}

TEST_CASE("A segment manifest lists the segments it extends; links to them reach it") {
  Manifest m;  // A segment's.
  m.format = kSingleGraphFormat;
  m.dim = 4;
  m.count = 500;
  m.extends = {{"m5-00000001", "0123456789abcdef", 300}, {"s1-00000000", "fedcba9876543210", 200}};
  auto parsed = ParseManifest(ManifestToJson(m));
  REQUIRE(parsed.ok());
  REQUIRE(parsed->extends.size() == 2);
  CHECK(parsed->extends[1].segment == "s1-00000000");
  CHECK(parsed->extends[1].rows == 200);
  CHECK(ManifestToJson(Manifest()).find("\"extends\"") == std::string::npos);

  // Links reach the segment they name, or one that extends it; not one
  // with another checksum, nor an extended one's other rows.
  parsed->manifest_xxh3 = "1111111111111111";
  CHECK(LinksReach({"m9-00000002", "1111111111111111", 16}, "m9-00000002", *parsed));
  CHECK(LinksReach({"s1-00000000", "fedcba9876543210", 16}, "m9-00000002", *parsed));
  CHECK_FALSE(LinksReach({"s1-00000000", "0123456789abcdef", 16}, "m9-00000002", *parsed));
  CHECK_FALSE(LinksReach({"m9-00000002", "2222222222222222", 16}, "m9-00000002", *parsed));
  CHECK_FALSE(LinksReach({"m9-00000002", "1111111111111111", 0}, "m9-00000002", *parsed));

  m.extends[0].rows = 501;  // More rows than the segment holds.
  auto bad = ParseManifest(ManifestToJson(m));
  REQUIRE_FALSE(bad.ok());
  CHECK(absl::StrContains(bad.status().message(), "'extends' entry has 501 rows of 500"));
  m.extends.assign(kMaxExtendedSegments + 1, {"s1-00000000", "fedcba9876543210", 1});
  bad = ParseManifest(ManifestToJson(m));
  REQUIRE_FALSE(bad.ok());
  CHECK(absl::StrContains(bad.status().message(), "lists 9 segments"));
}

TEST_CASE("A reshard reads every live row the filter keeps: id, vector, attributes, thumbnail") {
  const std::string root = ThreeSegments();  // v3: 368 live rows over segments a, b and c.
  auto v3 = OpenVersion(root, 3);
  REQUIRE(v3 != nullptr);
  // Two halves by the id hash, as a reshard to 2 shards reads them.
  std::vector<LiveRows> halves(2);
  for (uint32_t s = 0; s < 2; ++s) {
    halves[s].input.schema = *ParseSchema("tag:keyword");
    halves[s].with_thumbs = HasThumbnails(*v3);
    REQUIRE(AppendLiveRows(
                *v3, [s](absl::string_view id) { return ShardOf(id, 2) == s; }, &halves[s])
                .ok());
  }
  CHECK(halves[0].input.count + halves[1].input.count == 368);
  CHECK(halves[0].input.count > 100);
  CHECK(halves[1].input.count > 100);
  std::set<std::string> seen;
  for (uint32_t s = 0; s < 2; ++s) {
    const LiveRows& h = halves[s];
    REQUIRE(h.with_thumbs);
    REQUIRE(h.vectors.size() == h.input.count * kDim);
    REQUIRE(h.input.attributes.size() == h.input.count);
    const ThumbnailOf thumb = h.thumbs.Reader();
    for (size_t i = 0; i < h.input.count; ++i) {
      const IdRecord& r = h.input.ids[i];
      INFO(r.id);
      CHECK(ShardOf(r.id, 2) == s);
      CHECK(seen.insert(r.id).second);
      const uint32_t row = v3->Find(r.id).value();
      CHECK(std::equal(h.vectors.begin() + static_cast<long>(i * kDim),
                       h.vectors.begin() + static_cast<long>((i + 1) * kDim), v3->Vector(row)));
      CHECK(r.attributes_json == v3->Id(row)->attributes_json);
      CHECK(h.input.attributes[i][0] == AttrValue(r.attributes_json.substr(8, 2)));
      CHECK(*thumb(i) == "jpeg-" + r.id);
    }
  }
  CHECK(seen.count("a1") == 0);  // Deleted in v2.
  CHECK(seen.count("b2") == 0);  // Deleted in v3.
  CHECK(seen.count("c29") == 1);
}

TEST_CASE("Merging segments keeps every live row, its vector, attributes and thumbnail") {
  const std::string root = ThreeSegments();
  auto before = OpenVersion(root, 3);
  REQUIRE(before->segments().size() == 3);
  MergeRequest req;
  for (const auto& ref : before->segments()) req.segments.push_back(ref.name);
  req.extend = false;  // A new graph: every deleted row dropped.
  req.m = 12;          // Built with other parameters than the base's.
  req.ef_construction = 40;
  REQUIRE(before->manifest().hnsw_m != 12);
  auto r = MergeSegments(root, req);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  CHECK(r->version == 4);
  CHECK(r->extended.empty());
  CHECK(r->rows == 368);
  CHECK(r->dropped == 2);
  CHECK(r->carried_deletes == 0);
  auto after = OpenVersion(root, 4);
  REQUIRE(after->segments().size() == 1);
  CHECK(after->segments()[0].name == r->segment);
  CHECK(after->segments()[0].deleted_count == 0);
  CHECK(after->live_count() == 368);
  CHECK(after->manifest().base_version == 3);
  // The version records the merged graph's parameters.
  CHECK(after->manifest().hnsw_m == 12);
  CHECK(after->manifest().hnsw_ef_construction == 40);
  CHECK(after->segments()[0].segment->manifest().hnsw_m == 12);
  CHECK(after->segments()[0].segment->searcher().header().m == 12);
  for (const char* id : {"a0", "a299", "b0", "b39", "c0", "c29"}) {
    INFO(id);
    const uint32_t old_row = before->Find(id).value();
    const uint32_t new_row = after->Find(id).value();
    CHECK(std::equal(before->Vector(old_row), before->Vector(old_row) + kDim,
                     after->Vector(new_row)));
    CHECK(*after->Thumbnail(new_row) == std::string("jpeg-") + id);
    CHECK(after->Id(new_row)->attributes_json == before->Id(old_row)->attributes_json);
  }
  CHECK_FALSE(after->Find("a1").has_value());
  CHECK_FALSE(after->Find("b2").has_value());
  // The keyword column: t0 rows are those with i % 3 == 0, less the deleted.
  const AttributeTable* attrs = after->segments()[0].segment->attributes();
  REQUIRE(attrs != nullptr);
  auto code = attrs->KeywordCode(0, "t1");
  REQUIRE(code.has_value());
  CHECK(attrs->Postings(0, *code).size() == 100 + 13 + 10 - 1);  // a1 was t1.
  // The graph finds rows: each of these rows' own vector finds it first.
  for (const char* id : {"a7", "b9", "c11"}) {
    const uint32_t row = after->Find(id).value();
    auto hits = after->segments()[0].segment->searcher().Search(after->Vector(row), 1, 64);
    REQUIRE(hits.size() == 1);
    CHECK(hits[0].row == row);
  }
  // Nothing merges a version of one segment without deletes.
  MergeRequest again;
  again.segments = {r->segment};
  CHECK(MergeSegments(root, again)->version == 0);
}

TEST_CASE("A merge into the biggest segment extends its graph and keeps its rows in place") {
  const std::string root = ThreeSegments();
  // v4: a2 upserted (its old row in a deleted, a new row in a fourth segment).
  SyntheticCorpus moved = Rows(1, "x", 0, 31);
  moved.input.ids[0].id = "a2";
  moved.input.ids[0].attributes_json = "{\"tag\":\"t9\"}";
  moved.input.schema = *ParseSchema("tag:keyword");
  moved.input.attributes.push_back({AttrValue("t9")});
  moved.input.thumbnails.push_back("jpeg-a2-new");
  moved.input.hnsw.m = 12;  // The update's graph has another M than the big segment's.
  SnapshotUpdate u;
  u.base_version = 3;
  u.added = moved.WithGraph();
  u.delete_ids = {"a2"};
  REQUIRE(PublishUpdate(root, u).ok());
  auto before = OpenVersion(root, 4);
  REQUIRE(before->segments().size() == 4);
  MergeRequest req;
  for (const auto& ref : before->segments()) req.segments.push_back(ref.name);
  auto r = MergeSegments(root, req);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  // The merge takes the big segment's M (not the last update's), so it extends.
  REQUIRE(before->manifest().hnsw_m == 12);
  CHECK(r->extended == before->segments()[0].name);  // a: 300 rows against 70 live
  CHECK(r->kept_deleted == 2);                       // a1 and a2, in place
  CHECK(r->dropped == 1);                            // b2, from a segment rebuilt into it
  CHECK(r->rows == 300 + 39 + 30 + 1);
  auto after = OpenVersion(root, 5);
  REQUIRE(after->segments().size() == 1);
  CHECK(after->manifest().hnsw_m == before->segments()[0].segment->manifest().hnsw_m);
  CHECK(after->segments()[0].deleted_count == 2);
  CHECK(after->live_count() == 298 + 39 + 30 + 1);
  // a's rows keep their numbers; every live row keeps its vector, thumbnail
  // and attributes.
  for (const char* id : {"a0", "a3", "a299", "b0", "b39", "c0", "c29", "a2"}) {
    INFO(id);
    const uint32_t old_row = before->Find(id).value();
    const uint32_t new_row = after->Find(id).value();
    if (id[0] == 'a' && std::string(id) != "a2") CHECK(new_row == old_row);
    // Within rounding: an inserted row's stored unit vector is normalised again.
    for (size_t i = 0; i < kDim; ++i) {
      CHECK(std::abs(before->Vector(old_row)[i] - after->Vector(new_row)[i]) <= 1e-6f);
    }
    CHECK(*after->Thumbnail(new_row) == *before->Thumbnail(old_row));
    CHECK(after->Id(new_row)->attributes_json == before->Id(old_row)->attributes_json);
  }
  // a2 is its new row (not a's old one, kept deleted under another id).
  CHECK(*after->Thumbnail(*after->Find("a2")) == "jpeg-a2-new");
  CHECK(*after->Find("a2") >= 300);
  CHECK_FALSE(after->Find("a1").has_value());
  CHECK_FALSE(after->Find("b2").has_value());
  CHECK(after->Id(1)->id == "(deleted row 1)");
  CHECK_FALSE(after->Find("(deleted row 1)").has_value());
  // The extended graph finds old and new rows alike.
  for (const char* id : {"a7", "a250", "b9", "c11", "a2"}) {
    INFO(id);
    const uint32_t row = after->Find(id).value();
    auto hits = after->segments()[0].segment->searcher().Search(after->Vector(row), 1, 64);
    REQUIRE(hits.size() == 1);
    CHECK(hits[0].row == row);
  }
}

TEST_CASE("A merge carries deletes published while it ran, and aborts if its segments left") {
  for (const bool extend : {true, false}) {
    INFO("extend " << extend);
    const std::string root = ThreeSegments();
    auto v3 = OpenVersion(root, 3);
    MergeRequest req;
    req.segments = {v3->segments()[1].name, v3->segments()[2].name};  // b and c
    req.extend = extend;
    req.before_publish = [&] {
      // Meanwhile the ingest service deletes b7 and c5 and adds d0.
      SyntheticCorpus d = Rows(1, "d", 0, 21);
      SnapshotUpdate u;
      u.base_version = 3;
      u.added = d.WithGraph();
      u.delete_ids = {"b7", "c5"};
      REQUIRE(PublishUpdate(root, u).ok());
    };
    auto r = MergeSegments(root, req);
    INFO(r.status().ToString());
    REQUIRE(r.ok());
    CHECK(r->version == 5);
    CHECK(r->carried_deletes == 2);
    auto v5 = OpenVersion(root, 5);
    REQUIRE(v5->segments().size() == 3);  // a, merged(b+c), d
    CHECK(v5->segments()[0].name == v3->segments()[0].name);
    CHECK(v5->segments()[1].name == r->segment);
    if (extend) {
      // b (40 rows) outweighs c (30): its graph was extended, b2 kept
      // deleted in place; b7 and c5 were deleted while the merge ran.
      CHECK(r->extended == v3->segments()[1].name);
      CHECK(r->kept_deleted == 1);
      CHECK(r->dropped == 0);
      CHECK(v5->segments()[1].deleted_count == 3);
    } else {
      CHECK(r->extended.empty());
      CHECK(r->kept_deleted == 0);
      CHECK(r->dropped == 1);  // b2
      CHECK(v5->segments()[1].deleted_count == 2);
    }
    for (const char* gone : {"b2", "b7", "c5", "a1"}) {
      INFO(gone);
      CHECK_FALSE(v5->Find(gone).has_value());
    }
    CHECK(v5->Find("d0").has_value());
    CHECK(v5->Find("c6").has_value());
    CHECK(v5->Find("b8").has_value());
    CHECK(v5->live_count() == 299 + 38 + 29 + 1);
  }
  // A version a, merged(b+c), d, for the abort below.
  const std::string root = ThreeSegments();
  {
    MergeRequest req;
    auto v3 = OpenVersion(root, 3);
    req.segments = {v3->segments()[1].name, v3->segments()[2].name};
    REQUIRE(MergeSegments(root, req).ok());
    SyntheticCorpus d = Rows(1, "d", 0, 21);
    SnapshotUpdate u;
    u.base_version = 4;
    u.added = d.WithGraph();
    REQUIRE(PublishUpdate(root, u).ok());
  }
  auto v5 = OpenVersion(root, 5);
  REQUIRE(v5->segments().size() == 3);

  // A rebuild from scratch replaces everything while a merge runs: aborted.
  MergeRequest late;
  late.segments = {v5->segments()[1].name, v5->segments()[2].name};
  late.before_publish = [&] {
    SyntheticCorpus fresh = Rows(10, "z", 0, 30);
    REQUIRE(PublishSnapshot(root, fresh.WithGraph()).ok());
  };
  auto aborted = MergeSegments(root, late);
  REQUIRE_FALSE(aborted.ok());
  CHECK(absl::IsAborted(aborted.status()));
  CHECK(*ReadCurrentVersion(root) == 6);
  for (const auto& name : FilesIn(root + "/segments")) CHECK(name.rfind(".merging-", 0) != 0);
}

TEST_CASE("The policy keeps many small segments down to a few, then folds them into the big one") {
  const std::string root = TempRoot();
  SyntheticCorpus a = Rows(200, "a", 0, 5);
  REQUIRE(PublishSnapshot(root, a.WithGraph()).ok());
  for (int i = 1; i <= 14; ++i) {  // 14 small publishes, as the ingest service makes.
    SyntheticCorpus c = Rows(5, "p" + std::to_string(i) + "_", 0, static_cast<uint32_t>(i + 40));
    SnapshotUpdate u;
    u.base_version = static_cast<uint64_t>(i);
    u.added = c.WithGraph();
    REQUIRE(PublishUpdate(root, u).ok());
  }
  REQUIRE(OpenVersion(root, 15)->segments().size() == 15);
  MergeRequest req;  // The tiers alone: 10 per tier.
  req.policy.fold_pct = 0;
  auto r = MergeSegments(root, req);
  REQUIRE(r.ok());
  CHECK(r->merged.size() == 10);
  // Every segment is under floor_rows, so a is among the ten, and outweighs
  // the other nine (45 rows): its graph is extended.
  CHECK(r->extended == OpenVersion(root, 15)->segments()[0].name);
  auto merged = OpenVersion(root, r->version);
  CHECK(merged->segments().size() == 6);
  CHECK(merged->live_count() == 200 + 14 * 5);
  CHECK(MergeSegments(root, req)->version == 0);  // Steady state: nothing more to do.
  // The default policy: 25 rows beside the 245 of the first pass fold_pct
  // (10%): all of them go into its graph.
  const std::string a_name = merged->segments()[0].name;
  req.policy = MergePolicy();
  r = MergeSegments(root, req);
  REQUIRE(r.ok());
  CHECK(r->merged.size() == 6);
  CHECK(r->extended == a_name);
  auto folded = OpenVersion(root, r->version);
  CHECK(folded->segments().size() == 1);
  CHECK(folded->live_count() == 200 + 14 * 5);
  CHECK(folded->Find("a17") == merged->Find("a17"));  // a's rows keep their numbers.
  CHECK(MergeSegments(root, req)->version == 0);
}

}  // namespace
}  // namespace imagesearch::snapshot
