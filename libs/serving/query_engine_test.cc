#include "libs/serving/query_engine.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <set>
#include <tuple>

#include "absl/strings/match.h"
#include "libs/serving/filter.h"
#include "libs/snapshot/test_snapshots.h"

namespace imagesearch::serving {
namespace {

std::shared_ptr<const snapshot::Snapshot> Open(index::Metric metric) {
  std::string root = snapshot::TempSnapshotRoot("engine");
  auto v = snapshot::PublishSynthetic(root, 300, 8, metric, "item");
  REQUIRE(v.ok());
  auto s = snapshot::Snapshot::Open(root, *v, snapshot::VerifyMode::kChecksums);
  REQUIRE(s.ok());
  return *s;
}

TEST_CASE("Query vectors are validated with precise messages") {
  auto snap = Open(index::Metric::kCosine);
  std::vector<float> three = {1, 2, 3};
  auto wrong = PrepareQueryVector(*snap, three.data(), 3);
  REQUIRE_FALSE(wrong.ok());
  CHECK(wrong.status().message() == "query vector has 3 values but snapshot v1 has dimension 8");
  std::vector<float> v(8, 1.0f);
  v[5] = std::numeric_limits<float>::quiet_NaN();
  CHECK(PrepareQueryVector(*snap, v.data(), 8).status().message() == "query vector[5] is NaN");
  v[5] = std::numeric_limits<float>::infinity();
  CHECK(PrepareQueryVector(*snap, v.data(), 8).status().message() == "query vector[5] is infinite");
  std::vector<float> zero(8, 0.0f);
  CHECK(absl::IsInvalidArgument(PrepareQueryVector(*snap, zero.data(), 8).status()));
  // Subnormal values: finite, but too small a norm to scale to 1.
  std::vector<float> tiny(8, 1e-40f);
  const absl::Status t = PrepareQueryVector(*snap, tiny.data(), 8).status();
  CHECK(absl::IsInvalidArgument(t));
  CHECK(absl::StrContains(t.message(), "zero norm (or one below about 2.9e-39"));
  CHECK(PrepareQueryVector(*snap, nullptr, 0).status().message() == "query vector is empty");
  std::vector<float> ok(8, 2.0f);
  auto prepared = PrepareQueryVector(*snap, ok.data(), 8);
  REQUIRE(prepared.ok());
  CHECK(std::abs((*prepared)[0] - 1.0f / std::sqrt(8.0f)) < 1e-6);
}

TEST_CASE("top_k and ef limits are enforced") {
  auto snap = Open(index::Metric::kL2);
  auto q = VectorOfId(*snap, "item3");
  REQUIRE(q.ok());
  SearchParams p;
  p.top_k = kMaxTopK + 1;
  CHECK(SearchSnapshot(*snap, q->first, p).status().message() ==
        "top_k 1001 is out of range: the maximum is 1000");
  p.top_k = 5;
  p.ef = kMaxEf + 1;
  CHECK(SearchSnapshot(*snap, q->first, p).status().message() ==
        "ef 10001 is out of range: the maximum is 10000");
  p.ef = 0;
  auto hits = SearchSnapshot(*snap, q->first, p);
  REQUIRE(hits.ok());
  CHECK(hits->size() == 5);
  CHECK((*hits)[0].id == "item3");
  CHECK((*hits)[0].distance == 0.0f);
  CHECK((*hits)[0].score == 0.0f);
  p.top_k = 0;
  CHECK(SearchSnapshot(*snap, q->first, p)->size() == kDefaultTopK);
}

TEST_CASE("Id queries find the item, exclude it on request, and unknown ids are NOT_FOUND") {
  auto snap = Open(index::Metric::kCosine);
  auto q = VectorOfId(*snap, "item42");
  REQUIRE(q.ok());
  CHECK(q->second == 42);
  SearchParams p;
  p.top_k = 10;
  p.exclude_row = q->second;
  auto hits = SearchSnapshot(*snap, q->first, p);
  REQUIRE(hits.ok());
  CHECK(hits->size() == 10);
  for (const auto& h : *hits) CHECK(h.id != "item42");
  for (size_t i = 1; i < hits->size(); ++i) CHECK((*hits)[i - 1].distance <= (*hits)[i].distance);
  auto missing = VectorOfId(*snap, "nope");
  REQUIRE(absl::IsNotFound(missing.status()));
  CHECK(missing.status().message() == "id 'nope' is not in snapshot v1");
}

}  // namespace
}  // namespace imagesearch::serving

namespace imagesearch::serving {
namespace {

constexpr int kSegDim = 16;

// v1: 2000 rows "a*"; v2: v1 plus a segment of 1000 rows "b*", with every
// fifth of a0..a1499 deleted.
std::shared_ptr<const snapshot::Snapshot> TwoSegments(std::set<std::string>* deleted) {
  const std::string root = snapshot::TempSnapshotRoot("engine_segments");
  auto a = snapshot::MakeSyntheticCorpus(2000, kSegDim, index::Metric::kCosine, "a", 5);
  REQUIRE(snapshot::PublishSnapshot(root, a.WithGraph()).ok());
  auto b = snapshot::MakeSyntheticCorpus(1000, kSegDim, index::Metric::kCosine, "b", 11);
  snapshot::SnapshotUpdate update;
  update.base_version = 1;
  update.added = b.WithGraph();
  for (int i = 0; i < 1500; i += 5) {
    update.delete_ids.push_back("a" + std::to_string(i));
    deleted->insert("a" + std::to_string(i));
  }
  REQUIRE(snapshot::PublishUpdate(root, update).ok());
  auto s = snapshot::Snapshot::Open(root, 2, snapshot::VerifyMode::kChecksums);
  REQUIRE(s.ok());
  REQUIRE((*s)->segments().size() == 2);
  return *s;
}

// The exact top-k ids over the live rows.
std::vector<std::string> ExactTopK(const snapshot::Snapshot& snap, const std::vector<float>& q,
                                   size_t k) {
  std::vector<std::pair<float, uint32_t>> all;
  for (uint32_t r = 0; r < snap.rows(); ++r) {
    if (!snap.IsLive(r)) continue;
    float dot = 0;
    for (int i = 0; i < kSegDim; ++i) dot += q[i] * snap.Vector(r)[i];
    all.emplace_back(1 - dot, r);
  }
  std::partial_sort(all.begin(), all.begin() + k, all.end());
  std::vector<std::string> ids;
  for (size_t i = 0; i < k; ++i) ids.emplace_back(snap.Id(all[i].second)->id);
  return ids;
}

TEST_CASE("Search over segments merges their top-k and never returns a deleted row") {
  std::set<std::string> deleted;
  auto snap = TwoSegments(&deleted);
  const auto queries = index::ClusteredVectors(60, kSegDim, 16, 99);
  size_t found = 0, total = 0;
  bool both = false;
  for (size_t i = 0; i < 60; ++i) {
    auto q = PrepareQueryVector(*snap, &queries[i * kSegDim], kSegDim);
    REQUIRE(q.ok());
    SearchParams p;
    p.top_k = 10;
    p.ef = 100;
    auto hits = SearchSnapshot(*snap, *q, p);
    REQUIRE(hits.ok());
    REQUIRE(hits->size() == 10);
    bool a = false, b = false;
    for (size_t h = 0; h < hits->size(); ++h) {
      CHECK(deleted.count((*hits)[h].id) == 0);
      if (h > 0) CHECK((*hits)[h - 1].distance <= (*hits)[h].distance);
      (((*hits)[h].id[0] == 'a') ? a : b) = true;
    }
    both = both || (a && b);
    const auto truth = ExactTopK(*snap, *q, 10);
    for (const auto& hit : *hits) {
      found += std::count(truth.begin(), truth.end(), hit.id);
    }
    total += truth.size();
  }
  CHECK(both);  // Some answers merge rows of both segments.
  INFO("recall@10 " << static_cast<double>(found) / total);
  CHECK(static_cast<double>(found) / total >= 0.97);
}

TEST_CASE("A small segment beside a big one is scanned exactly: none of its true top-k is missed") {
  const std::string root = snapshot::TempSnapshotRoot("engine_small_segment");
  auto a = snapshot::MakeSyntheticCorpus(2000, kSegDim, index::Metric::kCosine, "a", 5);
  REQUIRE(snapshot::PublishSnapshot(root, a.WithGraph()).ok());
  auto b = snapshot::MakeSyntheticCorpus(60, kSegDim, index::Metric::kCosine, "b", 13);
  snapshot::SnapshotUpdate update;
  update.base_version = 1;
  update.added = b.WithGraph();
  REQUIRE(snapshot::PublishUpdate(root, update).ok());
  auto snap = snapshot::Snapshot::Open(root, 2, snapshot::VerifyMode::kChecksums);
  REQUIRE(snap.ok());
  REQUIRE((*snap)->segments()[1].segment->rows() <= kSmallSegmentScanFactor * 16);
  const auto queries = index::ClusteredVectors(40, kSegDim, 16, 77);
  size_t small_rows_in_truth = 0;
  for (size_t i = 0; i < 40; ++i) {
    auto q = PrepareQueryVector(**snap, &queries[i * kSegDim], kSegDim);
    REQUIRE(q.ok());
    SearchParams p;
    p.top_k = 10;
    p.ef = 16;  // The small segment (60 rows <= 4 x 16) is scanned.
    auto hits = SearchSnapshot(**snap, *q, p);
    REQUIRE(hits.ok());
    std::set<std::string> got;
    for (const auto& h : *hits) got.insert(h.id);
    for (const auto& id : ExactTopK(**snap, *q, 10)) {
      if (id[0] != 'b') continue;
      ++small_rows_in_truth;
      CHECK(got.count(id) == 1);
    }
  }
  CHECK(small_rows_in_truth > 0);
}

TEST_CASE("An exact search returns the brute-force top-k across segments, deletes and filters") {
  std::set<std::string> deleted;
  auto snap = TwoSegments(&deleted);
  const auto queries = index::ClusteredVectors(60, kSegDim, 16, 41);
  size_t graph_misses = 0;
  for (size_t i = 0; i < 60; ++i) {
    auto q = PrepareQueryVector(*snap, &queries[i * kSegDim], kSegDim);
    REQUIRE(q.ok());
    const auto truth = ExactTopK(*snap, *q, 10);
    SearchParams p;
    p.top_k = 10;
    p.ef = 10;  // A narrow walk misses some; the exact search ignores ef.
    auto walked = SearchSnapshot(*snap, *q, p);
    REQUIRE(walked.ok());
    std::set<std::string> walked_ids;
    for (const auto& h : *walked) walked_ids.insert(h.id);
    graph_misses += walked_ids != std::set<std::string>(truth.begin(), truth.end());
    p.exact = true;
    auto exact = SearchSnapshot(*snap, *q, p);
    REQUIRE(exact.ok());
    std::vector<std::string> ids;
    for (const auto& h : *exact) ids.push_back(h.id);
    CHECK(ids == truth);
  }
  INFO("queries whose ef-10 walk missed a true top-10 row: " << graph_misses);
  CHECK(graph_misses > 0);  // Else this test would not tell exact from walked.
  // With a filter: the nearest allowed rows, exactly (here rows whose id ends
  // in 7, in both segments).
  auto allowed = std::make_shared<index::RowFilter>(snap->rows());
  for (uint32_t r = 0; r < snap->rows(); ++r) {
    if (snap->IsLive(r) && snap->Id(r)->id.back() == '7') allowed->Allow(r);
  }
  auto q = PrepareQueryVector(*snap, &queries[0], kSegDim);
  REQUIRE(q.ok());
  SearchParams p;
  p.top_k = 20;
  p.exact = true;
  p.allowed = allowed;
  auto hits = SearchSnapshot(*snap, *q, p);
  REQUIRE(hits.ok());
  REQUIRE(hits->size() == 20);
  std::vector<std::pair<float, std::string>> all;
  for (uint32_t r = 0; r < snap->rows(); ++r) {
    if (!allowed->Allows(r)) continue;
    float dot = 0;
    for (int i = 0; i < kSegDim; ++i) dot += (*q)[i] * snap->Vector(r)[i];
    all.emplace_back(1 - dot, std::string(snap->Id(r)->id));
  }
  std::sort(all.begin(), all.end());
  for (size_t h = 0; h < hits->size(); ++h) {
    INFO(h);
    CHECK((*hits)[h].id == all[h].second);
  }
}

TEST_CASE("A big segment and its linked tail are walked as one: deletes, filters, exact") {
  const std::string root = snapshot::TempSnapshotRoot("engine_joint");
  auto a = snapshot::MakeSyntheticCorpus(3000, kSegDim, index::Metric::kCosine, "a", 5);
  REQUIRE(snapshot::PublishSnapshot(root, a.WithGraph()).ok());
  uint64_t v = 1, unjoined = 0, joined = 0;
  std::vector<std::string> small;
  // b and c (each deleting rows of the segment before), joined into a tail
  // linked to a; then d, a small segment of the last second's writes.
  for (auto [prefix, n, seed] :
       {std::tuple<const char*, size_t, uint32_t>{"b", 300, 11}, {"c", 300, 12}, {"d", 40, 13}}) {
    auto c = snapshot::MakeSyntheticCorpus(n, kSegDim, index::Metric::kCosine, prefix, seed);
    snapshot::SnapshotUpdate u;
    u.base_version = v;
    u.added = c.WithGraph();
    const std::string gone = prefix[0] == 'b' ? "a" : (prefix[0] == 'c' ? "b" : "c");
    for (int i = 0; i < 100; i += 4) u.delete_ids.push_back(gone + std::to_string(i));
    auto r = snapshot::PublishUpdate(root, u);
    REQUIRE(r.ok());
    v = r->version;
    small.push_back(r->segment);
    if (prefix[0] == 'c') {
      unjoined = v;
      snapshot::MergeRequest join;
      join.segments = {small[0], small[1]};
      auto m = snapshot::MergeSegments(root, join);
      REQUIRE(m.ok());
      v = joined = m->version;
    }
  }
  auto opened = snapshot::Snapshot::Open(root, v, snapshot::VerifyMode::kChecksums);
  REQUIRE(opened.ok());
  const snapshot::Snapshot& snap = **opened;
  REQUIRE(snap.segments().size() == 3);
  REQUIRE(snap.joint() != nullptr);

  const auto queries = index::ClusteredVectors(60, kSegDim, 16, 99);
  size_t found = 0, tail_hits = 0;
  auto allowed = std::make_shared<index::RowFilter>(snap.rows());
  for (uint32_t r = 0; r < snap.rows(); ++r) {
    if (snap.IsLive(r) && snap.Id(r)->id.back() == '7') allowed->Allow(r);
  }
  for (size_t i = 0; i < 60; ++i) {
    auto q = PrepareQueryVector(snap, &queries[i * kSegDim], kSegDim);
    REQUIRE(q.ok());
    const auto truth = ExactTopK(snap, *q, 10);
    SearchParams p;
    p.top_k = 10;
    p.ef = 100;
    auto hits = SearchSnapshot(snap, *q, p);
    REQUIRE(hits.ok());
    REQUIRE(hits->size() == 10);
    for (size_t h = 0; h < hits->size(); ++h) {
      auto row = snap.Find((*hits)[h].id);
      REQUIRE(row.has_value());  // Find knows live rows only: no deleted row is returned.
      if (h > 0) CHECK((*hits)[h - 1].distance <= (*hits)[h].distance);
      found += std::count(truth.begin(), truth.end(), (*hits)[h].id);
      tail_hits += (*hits)[h].id[0] == 'b' || (*hits)[h].id[0] == 'c';
    }
    // Filtered: only allowed rows.
    p.allowed = allowed;
    auto filtered = SearchSnapshot(snap, *q, p);
    REQUIRE(filtered.ok());
    CHECK(filtered->size() == 10);
    for (const auto& h : *filtered) CHECK(allowed->Allows(*snap.Find(h.id)));
    // Exact: the brute-force answer, whatever the graphs.
    p.allowed = nullptr;
    p.exact = true;
    auto exact = SearchSnapshot(snap, *q, p);
    REQUIRE(exact.ok());
    std::vector<std::string> ids;
    for (const auto& h : *exact) ids.push_back(h.id);
    CHECK(ids == truth);
  }
  INFO("recall@10 " << found / 600.0 << ", tail rows among the hits " << tail_hits);
  CHECK(found >= 0.95 * 600);
  CHECK(tail_hits > 0);  // The walk reaches the tail.

  // The same live rows before and after the join (b and c as two segments
  // searched in turn, then one tail walked with a). At the same ef the
  // joint walk does a third of the walks, so it finds somewhat fewer here;
  // what one walk buys at equal recall is measured by the segments bench
  // (tools/bench/results/LOG.md, "One walk over the big segment and its tail").
  size_t recall_of[2] = {0, 0};
  for (int i = 0; i < 2; ++i) {
    auto s =
        snapshot::Snapshot::Open(root, i == 0 ? unjoined : joined, snapshot::VerifyMode::kSizes);
    REQUIRE(s.ok());
    CHECK(((*s)->joint() != nullptr) == (i == 1));
    for (size_t k = 0; k < 60; ++k) {
      auto q = PrepareQueryVector(**s, &queries[k * kSegDim], kSegDim);
      REQUIRE(q.ok());
      const auto truth = ExactTopK(**s, *q, 10);
      SearchParams p;
      p.top_k = 10;
      p.ef = 32;
      auto hits = SearchSnapshot(**s, *q, p);
      REQUIRE(hits.ok());
      for (const auto& h : *hits) recall_of[i] += std::count(truth.begin(), truth.end(), h.id);
    }
  }
  INFO("ef 32: " << recall_of[0] << " of 600 true rows in turn, " << recall_of[1] << " jointly");
  CHECK(recall_of[0] >= 0.85 * 600);
  CHECK(recall_of[1] >= 0.85 * 600);
}

TEST_CASE("Filters, id queries and dedup work across segments") {
  std::set<std::string> deleted;
  auto snap = TwoSegments(&deleted);
  // An id query for a row of the new segment, excluding itself.
  auto v = VectorOfId(*snap, "b17");
  REQUIRE(v.ok());
  CHECK(v->second >= snap->segments()[1].base);
  CHECK(absl::IsNotFound(RowOfId(*snap, "a5").status()));  // Deleted.
  SearchParams p;
  p.top_k = 5;
  p.exclude_row = v->second;
  auto hits = SearchSnapshot(*snap, v->first, p);
  REQUIRE(hits.ok());
  for (const auto& h : *hits) CHECK(h.id != "b17");
  // has_id over both segments (a deleted id among them matches nothing).
  Filter f;
  Condition c;
  c.kind = Condition::Kind::kHasId;
  c.ids = {"a1", "a5", "a1999", "b0", "b999"};
  f.must.push_back(c);
  auto allowed = EvaluateFilter(*snap, f);
  REQUIRE(allowed.ok());
  CHECK(allowed->Count() == 4);
  p = SearchParams();
  p.top_k = 10;
  p.allowed = std::make_shared<const index::RowFilter>(*allowed);
  hits = SearchSnapshot(*snap, v->first, p);
  REQUIRE(hits.ok());
  std::set<std::string> ids;
  for (const auto& h : *hits) ids.insert(h.id);
  CHECK(ids == std::set<std::string>{"a1", "a1999", "b0", "b999"});
}

}  // namespace
}  // namespace imagesearch::serving
