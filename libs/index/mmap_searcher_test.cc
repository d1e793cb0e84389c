#include "libs/index/mmap_searcher.h"

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "libs/common/file_util.h"
#include "libs/common/test_smaps.h"
#include "libs/common/test_temp_dir.h"
#include "libs/index/hnsw_builder.h"
#include "libs/index/test_vectors.h"

namespace imagesearch::index {
namespace {

std::string MakeTempDir() {
  const std::string dir = testing::NewTempDir("index_test");
  REQUIRE(!dir.empty());
  return dir;
}

struct Built {
  std::string graph, offsets, half;
  std::vector<float> data;
};

Built Build(size_t n, size_t dim, Metric metric, int ef_construction) {
  Built b;
  std::string dir = MakeTempDir();
  b.graph = dir + "/graph.hnsw";
  b.offsets = dir + "/graph.offsets";
  b.data = ClusteredVectors(n, dim, 64, 42);
  HnswParams params;
  params.m = 16;
  params.ef_construction = ef_construction;
  absl::Status s = BuildHnswGraph(b.data.data(), n, dim, metric, params, b.graph, b.offsets);
  INFO(s.ToString());
  REQUIRE(s.ok());
  b.half = dir + "/graph.f16";
  s = WriteHalfVectors(b.graph, dim, metric, b.half);
  INFO(s.ToString());
  REQUIRE(s.ok());
  return b;
}

std::vector<float> Prepared(const float* v, size_t dim, Metric metric) {
  std::vector<float> q(v, v + dim);
  if (metric == Metric::kCosine) REQUIRE(NormalizeInPlace(q.data(), dim));
  return q;
}

void ExpectSameAsHnswlib(const MmapHnswSearcher& ours, const Built& b, size_t dim, Metric metric,
                         const std::vector<float>& queries, size_t nq);

// Checks that our searcher and hnswlib's searchKnn agree exactly (labels and
// distances, in order) on `queries` at several ef values, reading floats
// only and (where the CPU can) half vectors first.
void ExpectSameAsHnswlib(const Built& b, size_t dim, Metric metric, size_t n,
                         const std::vector<float>& queries, size_t nq) {
  for (bool halves : {false, true}) {
    auto ours = MmapHnswSearcher::Open(b.graph, b.offsets, dim, metric, n, halves ? b.half : "");
    REQUIRE(ours.ok());
    CHECK((*ours)->uses_half_vectors() == (halves && GetHalfDistanceFn(metric) != nullptr));
    ExpectSameAsHnswlib(**ours, b, dim, metric, queries, nq);
  }
}

void ExpectSameAsHnswlib(const MmapHnswSearcher& ours, const Built& b, size_t dim, Metric metric,
                         const std::vector<float>& queries, size_t nq) {
  auto ref = HnswlibIndex::Load(b.graph, dim, metric);
  REQUIRE(ref.ok());
  size_t compared = 0;
  for (size_t ef : {10, 50, 200}) {
    (*ref)->SetEf(ef);
    for (size_t i = 0; i < nq; ++i) {
      auto q = Prepared(&queries[i * dim], dim, metric);
      auto want = (*ref)->Search(q.data(), 10);
      auto got = ours.Search(q.data(), 10, ef);
      REQUIRE(got.size() == want.size());
      for (size_t j = 0; j < got.size(); ++j) {
        INFO("ef " << ef << " query " << i << " rank " << j);
        REQUIRE(got[j].row == want[j].second);
        REQUIRE(got[j].distance == want[j].first);
      }
      ++compared;
    }
  }
  CHECK(compared == 3 * nq);
}

TEST_CASE("Same top-k as hnswlib searchKnn: 20k x 512 cosine, 300 queries") {
  const size_t n = 20000, dim = 512;
  Built b = Build(n, dim, Metric::kCosine, 64);
  auto queries = ClusteredVectors(300, dim, 64, 7);  // Different seed: unseen queries.
  ExpectSameAsHnswlib(b, dim, Metric::kCosine, n, queries, 300);
}

TEST_CASE("Same top-k as hnswlib for l2 and ip, dims not a multiple of 16") {
  for (Metric metric : {Metric::kL2, Metric::kInnerProduct}) {
    for (size_t dim : {37, 100}) {
      const size_t n = 3000;
      Built b = Build(n, dim, metric, 100);
      auto queries = ClusteredVectors(100, dim, 64, 9);
      ExpectSameAsHnswlib(b, dim, metric, n, queries, 100);
    }
  }
}

TEST_CASE("Same top-k as hnswlib with half vectors at 1792 dimensions") {
  const size_t n = 4000, dim = 1792;
  Built b = Build(n, dim, Metric::kCosine, 40);
  auto queries = ClusteredVectors(60, dim, 64, 8);
  ExpectSameAsHnswlib(b, dim, Metric::kCosine, n, queries, 60);
}

TEST_CASE("The searcher maps its graph, offsets and half vectors for huge pages") {
  if (!std::filesystem::exists("/sys/kernel/mm/transparent_hugepage/enabled")) {
    WARN("this kernel has no transparent huge pages; skipped");
    return;
  }
  const size_t n = 2000, dim = 32;
  Built b = Build(n, dim, Metric::kL2, 40);
  auto s = MmapHnswSearcher::Open(b.graph, b.offsets, dim, Metric::kL2, n, b.half);
  REQUIRE(s.ok());
  for (const std::string& path : {b.graph, b.offsets, b.half}) {
    INFO(path);
    const std::vector<std::string> flags = testing::VmFlagsOfFile(path);
    REQUIRE(flags.size() == 1);
    CHECK(flags[0].find(" hg ") != std::string::npos);  // VM_HUGEPAGE: MADV_HUGEPAGE.
  }
}

TEST_CASE("Searches read the half vectors: a file that lies changes the answers") {
  if (GetHalfDistanceFn(Metric::kL2) == nullptr) {
    WARN("no AVX2+F16C: the searcher reads floats");
    return;
  }
  const size_t n = 3000, dim = 32;
  Built b = Build(n, dim, Metric::kL2, 50);
  auto bytes = ReadFileToString(b.half);
  REQUIRE(bytes.ok());
  // Every half vector far away from any query: once ef results are held, no
  // other candidate gets through, so the answers must get worse.
  std::string lie = *bytes;
  for (size_t i = kHalfHeaderSize; i + 1 < lie.size(); i += 2) {
    const uint16_t big = FloatToHalf(1000.0f);
    std::memcpy(&lie[i], &big, sizeof(big));
  }
  REQUIRE(WriteFileDurably(b.half, lie).ok());
  auto honest = MmapHnswSearcher::Open(b.graph, b.offsets, dim, Metric::kL2, n);
  auto lied_to = MmapHnswSearcher::Open(b.graph, b.offsets, dim, Metric::kL2, n, b.half);
  REQUIRE(honest.ok());
  REQUIRE(lied_to.ok());
  REQUIRE((*lied_to)->uses_half_vectors());
  auto queries = ClusteredVectors(50, dim, 64, 21);
  size_t differ = 0;
  for (size_t i = 0; i < 50; ++i) {
    auto a = (*honest)->Search(&queries[i * dim], 10, 10);
    auto c = (*lied_to)->Search(&queries[i * dim], 10, 10);
    REQUIRE(a.size() == 10);
    differ += a.size() != c.size() || a.back().row != c.back().row ||
              a.back().distance != c.back().distance;
  }
  CHECK(differ > 25);
}

// 5,000 clustered rows of 64 dims under L2 (efConstruction 100), searched
// from files, and 200 queries drawn with `seed`.
struct L2Case {
  static constexpr size_t kRows = 5000, kDim = 64;
  explicit L2Case(uint32_t seed)
      : built(Build(kRows, kDim, Metric::kL2, 100)),
        queries(ClusteredVectors(200, kDim, 64, seed)),
        dist_fn(GetDistanceFn(Metric::kL2, kDim)) {
    auto opened = MmapHnswSearcher::Open(built.graph, built.offsets, kDim, Metric::kL2, kRows);
    REQUIRE(opened.ok());
    searcher = *std::move(opened);
  }
  const float* Query(size_t i) const { return &queries[i * kDim]; }
  // Every row's distance to `q` by brute force, the nearest 10 first (sorted).
  std::vector<std::pair<float, uint32_t>> NearestTen(const float* q) const {
    std::vector<std::pair<float, uint32_t>> all;
    size_t dim = kDim;
    for (uint32_t r = 0; r < kRows; ++r)
      all.push_back({dist_fn(q, &built.data[r * kDim], &dim), r});
    std::partial_sort(all.begin(), all.begin() + 10, all.end());
    return all;
  }
  Built built;
  std::vector<float> queries;
  DistanceFn dist_fn;
  std::unique_ptr<MmapHnswSearcher> searcher;
};

TEST_CASE("Recall against brute force is high, and rises with ef") {
  L2Case c(11);
  const auto& s = c.searcher;
  auto recall_at = [&](size_t ef) {
    size_t hits = 0;
    for (size_t i = 0; i < 200; ++i) {
      const float* q = c.Query(i);
      const auto all = c.NearestTen(q);
      auto got = s->Search(q, 10, ef);
      for (auto& g : got)
        for (size_t j = 0; j < 10; ++j) hits += (g.row == all[j].second);
    }
    return hits / 2000.0;
  };
  double low = recall_at(10), high = recall_at(200);
  CHECK(high >= 0.98);
  CHECK(high >= low);
}

TEST_CASE(
    "A bounded walk finds the rows inside its bound, and a bound nothing beats ends it early") {
  L2Case c(13);
  const auto& s = c.searcher;
  size_t inside = 0, found = 0, found_quarter = 0, found_full = 0, tight_results = 0;
  for (size_t i = 0; i < 200; ++i) {
    const float* q = c.Query(i);
    const auto all = c.NearestTen(q);
    // The bound another segment's 5th-best row would give: only the 4 rows
    // strictly inside it are of use.
    const float bound = all[4].first;
    auto got = s->Search(q, 10, 64, nullptr, 0, bound);
    auto quarter = s->Search(q, 10, 16);
    auto full = s->Search(q, 10, 64);
    for (size_t j = 0; j < 4; ++j) {
      if (!(all[j].first < bound)) continue;
      ++inside;
      for (const auto& g : got) found += (g.row == all[j].second);
      for (const auto& g : quarter) found_quarter += (g.row == all[j].second);
      for (const auto& g : full) found_full += (g.row == all[j].second);
    }
    for (size_t j = 1; j < got.size(); ++j) CHECK(got[j - 1].distance <= got[j].distance);
    // A bound below every row: after its own 16 best (64 / 4) the walk takes
    // nothing more, so it holds no more than those and what came with them.
    auto tight = s->Search(q, 10, 64, nullptr, 0, -1.0f);
    CHECK(!tight.empty());
    tight_results += tight.size();
    // Unbounded is the plain search, row for row.
    auto plain = s->Search(q, 10, 64);
    auto unbounded = s->Search(q, 10, 64, nullptr, 0, std::numeric_limits<float>::infinity());
    REQUIRE(plain.size() == unbounded.size());
    for (size_t j = 0; j < plain.size(); ++j) CHECK(plain[j].row == unbounded[j].row);
  }
  REQUIRE(inside > 0);
  INFO("found " << found << " of " << inside << " rows inside the bound; a plain walk with ef 16 "
                << found_quarter << ", with ef 64 " << found_full);
  // The walk reaches as a plain one with ef / 4 would before the bound takes
  // over (the trade the bound makes: segments beside a bigger one cost less).
  CHECK(static_cast<double>(found) >= 0.95 * static_cast<double>(found_quarter));
  CHECK(static_cast<double>(found) >= 0.7 * static_cast<double>(inside));
  CHECK(tight_results == 200 * 10);  // It still answers k rows: its own best.
}

// A big graph and a tail graph of the same clustered rows (the tail: every
// 10th row, as a segment written after the big one would hold), the tail
// linked to the big graph as a merge links it (NearestRows), joined.
struct JointCase {
  static constexpr size_t kRows = 10000, kDim = 64, kPerRow = 16;
  std::vector<float> big_rows, tail_rows, queries;
  std::unique_ptr<MmapHnswSearcher> big, tail, big_halves, tail_halves;
  std::vector<uint32_t> links;
  size_t big_count = 0, tail_count = 0;

  JointCase() {
    // The queries: 200 more draws of the same mixture, not indexed.
    const std::vector<float> all = ClusteredVectors(kRows + 200, kDim, 64, 21);
    for (size_t r = 0; r < kRows; ++r) {
      auto v = Prepared(&all[r * kDim], kDim, Metric::kCosine);
      auto& to = r % 10 == 9 ? tail_rows : big_rows;
      to.insert(to.end(), v.begin(), v.end());
    }
    big_count = big_rows.size() / kDim;
    tail_count = tail_rows.size() / kDim;
    for (auto [rows, count, plain, halves] :
         {std::make_tuple(&big_rows, big_count, &big, &big_halves),
          std::make_tuple(&tail_rows, tail_count, &tail, &tail_halves)}) {
      const std::string dir = MakeTempDir();
      HnswParams params;
      params.m = 16;
      params.ef_construction = 100;
      REQUIRE(BuildHnswGraph(rows->data(), count, kDim, Metric::kCosine, params,
                             dir + "/graph.hnsw", dir + "/graph.offsets")
                  .ok());
      REQUIRE(
          WriteHalfVectors(dir + "/graph.hnsw", kDim, Metric::kCosine, dir + "/graph.f16").ok());
      auto s = MmapHnswSearcher::Open(dir + "/graph.hnsw", dir + "/graph.offsets", kDim,
                                      Metric::kCosine, count);
      auto h = MmapHnswSearcher::Open(dir + "/graph.hnsw", dir + "/graph.offsets", kDim,
                                      Metric::kCosine, count, dir + "/graph.f16");
      REQUIRE(s.ok());
      REQUIRE(h.ok());
      *plain = std::move(*s);
      *halves = std::move(*h);
    }
    links = NearestRows(*big, tail_rows.data(), tail_count, kDim, kPerRow, 64, 2);
    for (size_t i = kRows; i < kRows + 200; ++i) {
      auto v = Prepared(&all[i * kDim], kDim, Metric::kCosine);
      queries.insert(queries.end(), v.begin(), v.end());
    }
  }
  const float* Query(size_t i) const { return &queries[i * kDim]; }
  // The exact 10 nearest rows allowed (one row space: big rows, then the
  // tail's from big_count), by cosine distance.
  std::vector<uint32_t> NearestTen(const float* q, const RowFilter* allowed) const {
    std::vector<std::pair<float, uint32_t>> d;
    for (size_t r = 0; r < big_count + tail_count; ++r) {
      if (allowed != nullptr && !allowed->Allows(static_cast<uint32_t>(r))) continue;
      const float* v = r < big_count ? &big_rows[r * kDim] : &tail_rows[(r - big_count) * kDim];
      float dot = 0;
      for (size_t i = 0; i < kDim; ++i) dot += q[i] * v[i];
      d.emplace_back(1 - dot, static_cast<uint32_t>(r));
    }
    std::partial_sort(d.begin(), d.begin() + 10, d.end());
    std::vector<uint32_t> rows;
    for (size_t i = 0; i < 10; ++i) rows.push_back(d[i].second);
    return rows;
  }
};

TEST_CASE(
    "A tail row's links: its nearest big rows as HNSW chooses them, then the nearest skipped") {
  const JointCase c;
  const size_t per = JointCase::kPerRow;
  REQUIRE(c.links.size() == c.tail_count * per);
  size_t diverse_total = 0;
  for (size_t r = 0; r < c.tail_count; ++r) {
    const float* row = &c.tail_rows[r * JointCase::kDim];
    const uint32_t* l = &c.links[r * per];
    const auto near = c.big->Search(row, 2 * per, 64);
    REQUIRE(near.size() == 2 * per);
    auto rank = [&](uint32_t big_row) {
      for (size_t i = 0; i < near.size(); ++i) {
        if (near[i].row == big_row) return i;
      }
      return near.size();
    };
    // Every link one of the 2 x per nearest, none twice; the nearest first.
    std::set<uint32_t> seen;
    for (size_t i = 0; i < per; ++i) {
      REQUIRE(l[i] < c.big_count);
      CHECK(rank(l[i]) < near.size());
      CHECK(seen.insert(l[i]).second);
    }
    CHECK(l[0] == near[0].row);
    auto to_row = [&](uint32_t big_row) { return c.big->Distance(row, c.big->Vector(big_row)); };
    // A diverse prefix: each no nearer to an earlier one than to the row.
    size_t diverse = 1;
    for (; diverse < per; ++diverse) {
      bool ok = true;
      for (size_t j = 0; j < diverse && ok; ++j) {
        ok = c.big->Distance(c.big->Vector(l[diverse]), c.big->Vector(l[j])) >= to_row(l[diverse]);
      }
      if (!ok) break;
    }
    diverse_total += diverse;
    // The rest were skipped: each nearer to a row of the prefix than to the
    // row (else the heuristic would have kept it).
    for (size_t i = diverse; i < per; ++i) {
      bool near_one = false;
      for (size_t j = 0; j < diverse && !near_one; ++j) {
        near_one = c.big->Distance(c.big->Vector(l[i]), c.big->Vector(l[j])) < to_row(l[i]);
      }
      CHECK(near_one);
    }
    // Within the prefix and after it, nearest first.
    for (size_t i = 1; i < per; ++i) {
      if (i != diverse) CHECK(rank(l[i]) > rank(l[i - 1]));
    }
  }
  // On clustered rows most of the nearest crowd together: the diverse
  // prefix is some of the links, not all (an average of neither 1 nor 16).
  const double mean = static_cast<double>(diverse_total) / static_cast<double>(c.tail_count);
  CAPTURE(mean);
  CHECK(mean > 1.5);
  CHECK(mean < per - 0.5);
}

TEST_CASE("Searched with ef below 2 x per_row, a tail row's links are chosen from the ef found") {
  // kTailLinkSearchEf (16) is the merges' case: the search finds ef rows,
  // all of them kept, the diverse ones first; an ef between per_row and
  // 2 x per_row chooses from those ef (none from further out); an ef below
  // per_row searches with per_row.
  const JointCase c;
  const size_t per = JointCase::kPerRow;
  CHECK(NearestRows(*c.big, c.tail_rows.data(), c.tail_count, JointCase::kDim, per, per / 2, 2) ==
        NearestRows(*c.big, c.tail_rows.data(), c.tail_count, JointCase::kDim, per, per, 2));
  for (const size_t ef : {per, per + 8}) {
    CAPTURE(ef);
    const auto links =
        NearestRows(*c.big, c.tail_rows.data(), c.tail_count, JointCase::kDim, per, ef, 2);
    REQUIRE(links.size() == c.tail_count * per);
    size_t reordered = 0;
    for (size_t r = 0; r < c.tail_count; ++r) {
      const float* row = &c.tail_rows[r * JointCase::kDim];
      const auto near = c.big->Search(row, ef, ef);
      REQUIRE(near.size() == ef);
      std::set<uint32_t> found, linked;
      for (const Neighbor& n : near) found.insert(n.row);
      for (size_t i = 0; i < per; ++i) CHECK(linked.insert(links[r * per + i]).second);
      CHECK(links[r * per] == near[0].row);
      for (uint32_t l : linked) CHECK(found.count(l) == 1);
      if (ef == per) CHECK(linked == found);  // All kept.
      for (size_t i = 0; i < per; ++i) reordered += links[r * per + i] != near[i].row;
    }
    // The diverse ones first: not the search's order for the clustered rows.
    CHECK(reordered > c.tail_count);
  }
}

TEST_CASE("A joint walk finds the nearest rows of a big graph and its linked tail as one") {
  JointCase c;
  // Every tail row is linked to kPerRow big rows, each a real row.
  REQUIRE(c.links.size() == c.tail_count * JointCase::kPerRow);
  for (uint32_t l : c.links) REQUIRE(l < c.big_count);
  auto joint = JointGraph::Join(*c.big, {{c.tail.get(), c.links.data(), JointCase::kPerRow}});
  size_t hits = 0, tail_hits = 0, tail_wanted = 0;
  for (size_t i = 0; i < 200; ++i) {
    const float* q = c.Query(i);
    const std::vector<uint32_t> want = c.NearestTen(q, nullptr);
    const auto got = joint->Search(q, 10, 32, nullptr, 0, {c.big_count});
    REQUIRE(got.size() == 10);
    for (size_t j = 1; j < got.size(); ++j) CHECK(got[j - 1].distance <= got[j].distance);
    for (uint32_t w : want) tail_wanted += w >= c.big_count;
    for (const auto& g : got) {
      const bool hit = std::count(want.begin(), want.end(), g.row) > 0;
      hits += hit;
      tail_hits += hit && g.row >= c.big_count;
    }
  }
  INFO("recall " << hits / 2000.0 << "; tail rows found " << tail_hits << " of " << tail_wanted);
  CHECK(hits >= 0.95 * 2000);
  REQUIRE(tail_wanted > 0);
  // The walk reaches the tail's rows through the links (without them it
  // could not: no big row leads there).
  CHECK(tail_hits >= 0.9 * static_cast<double>(tail_wanted));
}

TEST_CASE(
    "A joint walk returns only allowed rows, reads halves without changing answers, "
    "and drops links out of range") {
  JointCase c;
  auto joint = JointGraph::Join(*c.big, {{c.tail.get(), c.links.data(), JointCase::kPerRow}});
  auto with_halves =
      JointGraph::Join(*c.big_halves, {{c.tail_halves.get(), c.links.data(), JointCase::kPerRow}});
  // Rows numbered from 100 (the joint pair is not first in its version).
  RowFilter allowed(100 + c.big_count + c.tail_count, /*all=*/true);
  RowFilter allowed_here(c.big_count + c.tail_count, /*all=*/true);
  for (uint32_t r = 0; r < c.big_count + c.tail_count; r += 3) {
    allowed.Disallow(100 + r);
    allowed_here.Disallow(r);
  }
  size_t hits = 0;
  for (size_t i = 0; i < 200; ++i) {
    const float* q = c.Query(i);
    const auto got = joint->Search(q, 10, 32, &allowed, 100, {100 + c.big_count});
    const auto halves = with_halves->Search(q, 10, 32, &allowed, 100, {100 + c.big_count});
    REQUIRE(got.size() == 10);
    REQUIRE(halves.size() == got.size());
    const std::vector<uint32_t> want = c.NearestTen(q, &allowed_here);
    for (size_t j = 0; j < got.size(); ++j) {
      CHECK(allowed.Allows(got[j].row));
      CHECK(halves[j].row == got[j].row);
      CHECK(halves[j].distance == got[j].distance);
      hits += std::count(want.begin(), want.end(), got[j].row - 100);
    }
  }
  CHECK(hits >= 0.9 * 2000);

  // Links to rows the big graph does not have (a corrupt or foreign links
  // file) are dropped; the walk still answers.
  std::vector<uint32_t> bad = c.links;
  for (size_t i = 0; i < bad.size(); i += 2) bad[i] = i % 4 == 0 ? JointGraph::kNoRow : 1u << 30;
  auto partial = JointGraph::Join(*c.big, {{c.tail.get(), bad.data(), JointCase::kPerRow}});
  for (size_t i = 0; i < 20; ++i) {
    const auto got = partial->Search(c.Query(i), 10, 32, nullptr, 0, {c.big_count});
    CHECK(got.size() == 10);
    for (const auto& g : got) CHECK(g.row < c.big_count + c.tail_count);
  }
}

TEST_CASE("Two tails linked to one big graph are walked with it as one") {
  // Rows r % 10 == 8 in tail A, == 9 in tail B, the rest in the big graph;
  // row space: the big graph's rows, then A's, then B's.
  constexpr size_t kRows = 10000, kDim = 64, kPer = 16;
  const std::vector<float> all = ClusteredVectors(kRows + 200, kDim, 64, 23);
  std::vector<float> rows[3];
  for (size_t r = 0; r < kRows; ++r) {
    auto v = Prepared(&all[r * kDim], kDim, Metric::kCosine);
    auto& to = rows[r % 10 == 8 ? 1 : (r % 10 == 9 ? 2 : 0)];
    to.insert(to.end(), v.begin(), v.end());
  }
  std::unique_ptr<MmapHnswSearcher> g[3];
  size_t count[3], base[3];
  for (int i = 0; i < 3; ++i) {
    count[i] = rows[i].size() / kDim;
    base[i] = i == 0 ? 0 : base[i - 1] + count[i - 1];
    const std::string dir = MakeTempDir();
    HnswParams params;
    params.m = 16;
    params.ef_construction = 100;
    REQUIRE(BuildHnswGraph(rows[i].data(), count[i], kDim, Metric::kCosine, params,
                           dir + "/graph.hnsw", dir + "/graph.offsets")
                .ok());
    auto s = MmapHnswSearcher::Open(dir + "/graph.hnsw", dir + "/graph.offsets", kDim,
                                    Metric::kCosine, count[i]);
    REQUIRE(s.ok());
    g[i] = std::move(*s);
  }
  const auto links_a = NearestRows(*g[0], rows[1].data(), count[1], kDim, kPer, 64, 2);
  const auto links_b = NearestRows(*g[0], rows[2].data(), count[2], kDim, kPer, 64, 2);
  auto joint = JointGraph::Join(
      *g[0], {{g[1].get(), links_a.data(), kPer}, {g[2].get(), links_b.data(), kPer}});
  REQUIRE(joint->tails() == 2);
  size_t hits = 0, wanted_in[3] = {0, 0, 0}, found_in[3] = {0, 0, 0};
  for (size_t i = kRows; i < kRows + 200; ++i) {
    const auto q = Prepared(&all[i * kDim], kDim, Metric::kCosine);
    std::vector<std::pair<float, uint32_t>> d;
    for (int p = 0; p < 3; ++p) {
      for (size_t r = 0; r < count[p]; ++r) {
        float dot = 0;
        for (size_t k = 0; k < kDim; ++k) dot += q[k] * rows[p][r * kDim + k];
        d.emplace_back(1 - dot, static_cast<uint32_t>(base[p] + r));
      }
    }
    std::partial_sort(d.begin(), d.begin() + 10, d.end());
    auto part_of = [&](uint32_t row) { return row >= base[2] ? 2 : (row >= base[1] ? 1 : 0); };
    const auto got = joint->Search(q.data(), 10, 32, nullptr, 0, {base[1], base[2]});
    REQUIRE(got.size() == 10);
    for (size_t j = 0; j < 10; ++j) {
      ++wanted_in[part_of(d[j].second)];
      for (const auto& n : got) {
        if (n.row == d[j].second) {
          ++hits;
          ++found_in[part_of(n.row)];
        }
      }
    }
  }
  INFO("recall " << hits / 2000.0 << "; tail A " << found_in[1] << " of " << wanted_in[1]
                 << ", tail B " << found_in[2] << " of " << wanted_in[2]);
  CHECK(hits >= 0.95 * 2000);
  REQUIRE(wanted_in[1] > 0);
  REQUIRE(wanted_in[2] > 0);
  CHECK(found_in[1] >= 0.9 * static_cast<double>(wanted_in[1]));
  CHECK(found_in[2] >= 0.9 * static_cast<double>(wanted_in[2]));
}

TEST_CASE("A join from a previous one takes its tails' links and walks as a join from scratch") {
  // Tail rows r % 10 == 9; the tail's graph built over its first half, then
  // extended with the rest, as a tail join extends it.
  constexpr size_t kRows = 6000, kDim = 32, kPer = 16;
  const std::vector<float> all = ClusteredVectors(kRows + 200, kDim, 32, 29);
  std::vector<float> big_rows, tail_rows;
  for (size_t r = 0; r < kRows; ++r) {
    auto v = Prepared(&all[r * kDim], kDim, Metric::kCosine);
    auto& to = r % 10 == 9 ? tail_rows : big_rows;
    to.insert(to.end(), v.begin(), v.end());
  }
  const size_t big_count = big_rows.size() / kDim, tail_count = tail_rows.size() / kDim;
  const size_t half = tail_count / 2;
  HnswParams params;
  params.m = 16;
  params.ef_construction = 100;
  params.threads = 1;
  const std::string dir = MakeTempDir();
  REQUIRE(BuildHnswGraph(big_rows.data(), big_count, kDim, Metric::kCosine, params,
                         dir + "/big.hnsw", dir + "/big.offsets")
              .ok());
  REQUIRE(BuildHnswGraph(tail_rows.data(), half, kDim, Metric::kCosine, params, dir + "/t0.hnsw",
                         dir + "/t0.offsets")
              .ok());
  REQUIRE(HnswExtendGraphWriter(dir + "/t0.hnsw", half, tail_rows.data() + half * kDim,
                                tail_count - half, kDim, Metric::kCosine,
                                params)(dir + "/t1.hnsw", dir + "/t1.offsets")
              .ok());
  auto open = [&](const std::string& name, size_t count) {
    auto s = MmapHnswSearcher::Open(dir + "/" + name + ".hnsw", dir + "/" + name + ".offsets", kDim,
                                    Metric::kCosine, count);
    REQUIRE(s.ok());
    return std::move(*s);
  };
  auto big = open("big", big_count);
  auto t0 = open("t0", half);
  auto t1 = open("t1", tail_count);
  const std::vector<uint32_t> links =
      NearestRows(*big, tail_rows.data(), tail_count, kDim, kPer, 64, 2);
  // The extended tail's links with its first half's missing: a join that
  // takes those from the previous join walks as if they were there.
  std::vector<uint32_t> no_prefix = links;
  std::fill(no_prefix.begin(), no_prefix.begin() + half * kPer, JointGraph::kNoRow);

  const uint64_t kBig = 7, kT0 = 11, kT1 = 13;
  auto fresh = JointGraph::Join(*big, {{t1.get(), links.data(), kPer, kT1}}, kBig);
  auto prev = JointGraph::Join(*big, {{t0.get(), links.data(), kPer, kT0}}, kBig);
  JointGraph::Tail extends{t1.get(), no_prefix.data(), kPer, kT1, kT0, half};
  auto from_prev = JointGraph::Join(*big, {extends}, kBig, prev.get());
  auto other_big = JointGraph::Join(*big, {extends}, kBig + 1, prev.get());
  // The same tail by key: its links taken whole (here none given at all).
  std::vector<uint32_t> none(links.size(), JointGraph::kNoRow);
  auto same = JointGraph::Join(*big, {{t1.get(), none.data(), kPer, kT1}}, kBig, fresh.get());

  size_t differ_without = 0;
  for (size_t i = kRows; i < kRows + 200; ++i) {
    const auto q = Prepared(&all[i * kDim], kDim, Metric::kCosine);
    const auto want = fresh->Search(q.data(), 10, 32, nullptr, 0, {big_count});
    REQUIRE(want.size() == 10);
    for (const auto* j : {from_prev.get(), same.get()}) {
      const auto got = j->Search(q.data(), 10, 32, nullptr, 0, {big_count});
      REQUIRE(got.size() == want.size());
      for (size_t r = 0; r < want.size(); ++r) {
        CHECK(got[r].row == want[r].row);
        CHECK(got[r].distance == want[r].distance);
      }
    }
    const auto lost = other_big->Search(q.data(), 10, 32, nullptr, 0, {big_count});
    differ_without +=
        !std::equal(lost.begin(), lost.end(), want.begin(), want.end(),
                    [](const Neighbor& a, const Neighbor& b) { return a.row == b.row; });
  }
  // Joined with another big graph's key, nothing is taken from `prev`: the
  // missing links are missing, and some walks end elsewhere.
  CHECK(differ_without > 0);
}

TEST_CASE("Vector(row) returns the stored vector of that row after parallel inserts") {
  const size_t n = 2000, dim = 32;
  Built b = Build(n, dim, Metric::kL2, 50);
  auto s = MmapHnswSearcher::Open(b.graph, b.offsets, dim, Metric::kL2, n);
  REQUIRE(s.ok());
  for (uint32_t r : {0u, 1u, 999u, 1999u}) {
    const float* v = (*s)->Vector(r);
    for (size_t d = 0; d < dim; ++d) REQUIRE(v[d] == b.data[r * dim + d]);
    auto top = (*s)->Search(v, 1, 50);
    REQUIRE(top.size() == 1);
    CHECK(top[0].row == r);
    CHECK(top[0].distance == 0.0f);
  }
}

TEST_CASE("Concurrent searches give the same answers as serial ones") {
  const size_t n = 4000, dim = 48;
  Built b = Build(n, dim, Metric::kL2, 50);
  auto s = MmapHnswSearcher::Open(b.graph, b.offsets, dim, Metric::kL2, n);
  REQUIRE(s.ok());
  auto queries = ClusteredVectors(200, dim, 64, 3);
  std::vector<std::vector<Neighbor>> serial(200);
  for (size_t i = 0; i < 200; ++i) serial[i] = (*s)->Search(&queries[i * dim], 10, 40);
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 5; ++rep)
        for (size_t i = t; i < 200; i += 2) {
          auto got = (*s)->Search(&queries[i * dim], 10, 40);
          for (size_t j = 0; j < got.size(); ++j)
            if (got[j].row != serial[i][j].row) ++mismatches;
        }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(mismatches == 0);
}

TEST_CASE("An extended graph holds the base rows and the new ones as hnswlib reads it") {
  const size_t base = 1500, added = 500, n = base + added, dim = 32;
  const Metric metric = Metric::kL2;
  const std::vector<float> data = ClusteredVectors(n, dim, 32, 7);
  const std::string dir = MakeTempDir();
  HnswParams params;
  params.m = 8;
  params.ef_construction = 40;
  const std::string base_graph = dir + "/base.hnsw";
  REQUIRE(BuildHnswGraph(data.data(), base, dim, metric, params, base_graph, dir + "/base.offsets")
              .ok());
  auto extend = [&](const std::string& from, const std::string& to) {
    return HnswExtendGraphWriter(from, base, data.data() + base * dim, added, dim, metric, params)(
        to + ".hnsw", to + ".offsets");
  };

  SECTION("every row, old and new, is found by hnswlib's own loader and by ours") {
    absl::Status s = extend(base_graph, dir + "/ext");
    INFO(s.ToString());
    REQUIRE(s.ok());
    auto ref = HnswlibIndex::Load(dir + "/ext.hnsw", dim, metric);
    REQUIRE(ref.ok());
    (*ref)->SetEf(50);
    size_t found_base = 0, found_added = 0;
    for (size_t r = 0; r < n; ++r) {
      auto got = (*ref)->Search(&data[r * dim], 1);
      const bool self = got.size() == 1 && got[0].second == r && got[0].first == 0.0f;
      (r < base ? found_base : found_added) += self ? 1 : 0;
    }
    CHECK(found_base >= base * 99 / 100);
    CHECK(found_added >= added * 99 / 100);
    auto ours = MmapHnswSearcher::Open(dir + "/ext.hnsw", dir + "/ext.offsets", dim, metric, n);
    REQUIRE(ours.ok());
    Built ext{dir + "/ext.hnsw", dir + "/ext.offsets", "", data};
    ExpectSameAsHnswlib(**ours, ext, dim, metric, data, 50);
  }
  SECTION("a base graph with malformed link lists is refused, not loaded") {
    auto bytes = ReadFileToString(base_graph);
    REQUIRE(bytes.ok());
    REQUIRE(WriteFileDurably(dir + "/trailing.hnsw", *bytes + "oops").ok());
    absl::Status s = extend(dir + "/trailing.hnsw", dir + "/ext1");
    CHECK(s.code() == absl::StatusCode::kDataLoss);
    CHECK(s.message().find("trailing bytes") != std::string::npos);

    auto h = ParseHnswHeader(bytes->data(), bytes->size(), dim);
    REQUIRE(h.ok());
    std::string corrupt = *bytes;
    uint32_t size0;
    std::memcpy(&size0, &corrupt[h->upper_begin()], 4);
    const uint32_t bad = size0 + 3;  // not a whole number of levels
    std::memcpy(&corrupt[h->upper_begin()], &bad, 4);
    REQUIRE(WriteFileDurably(dir + "/malformed.hnsw", corrupt).ok());
    s = extend(dir + "/malformed.hnsw", dir + "/ext2");
    CHECK(s.code() == absl::StatusCode::kDataLoss);
    CHECK(s.message().find("element 0 has a malformed upper link list") != std::string::npos);
  }
}

TEST_CASE("Truncated or inconsistent graph files are refused with a reason") {
  const size_t n = 500, dim = 16;
  Built b = Build(n, dim, Metric::kL2, 20);
  auto bytes = ReadFileToString(b.graph);
  REQUIRE(bytes.ok());

  SECTION("truncated graph") {
    REQUIRE(WriteFileDurably(b.graph, bytes->substr(0, bytes->size() / 2)).ok());
    auto s = MmapHnswSearcher::Open(b.graph, b.offsets, dim, Metric::kL2, n);
    REQUIRE_FALSE(s.ok());
    CHECK(s.status().message().find("truncated") != std::string::npos);
  }
  SECTION("header only") {
    REQUIRE(WriteFileDurably(b.graph, bytes->substr(0, 50)).ok());
    auto s = MmapHnswSearcher::Open(b.graph, b.offsets, dim, Metric::kL2, n);
    REQUIRE_FALSE(s.ok());
    CHECK(s.status().message().find("96-byte") != std::string::npos);
  }
  SECTION("wrong dimension") {
    auto s = MmapHnswSearcher::Open(b.graph, b.offsets, dim + 1, Metric::kL2, n);
    REQUIRE_FALSE(s.ok());
    CHECK(s.status().message().find("wrong dim") != std::string::npos);
  }
  SECTION("count disagrees with manifest") {
    auto s = MmapHnswSearcher::Open(b.graph, b.offsets, dim, Metric::kL2, n + 1);
    REQUIRE_FALSE(s.ok());
    CHECK(s.status().message().find("manifest") != std::string::npos);
  }
  SECTION("truncated half vectors") {
    auto half = ReadFileToString(b.half);
    REQUIRE(half.ok());
    REQUIRE(WriteFileDurably(b.half, half->substr(0, half->size() - 1)).ok());
    auto s = MmapHnswSearcher::Open(b.graph, b.offsets, dim, Metric::kL2, n, b.half);
    REQUIRE_FALSE(s.ok());
    CHECK(s.status().message().find("half vectors file") != std::string::npos);
    CHECK(s.status().message().find("truncated") != std::string::npos);
  }
  SECTION("truncated offsets sidecar") {
    auto off = ReadFileToString(b.offsets);
    REQUIRE(WriteFileDurably(b.offsets, off->substr(0, 100)).ok());
    auto s = MmapHnswSearcher::Open(b.graph, b.offsets, dim, Metric::kL2, n);
    REQUIRE_FALSE(s.ok());
    CHECK(s.status().message().find("offsets") != std::string::npos);
  }
  SECTION("garbage link ids never read out of bounds") {
    std::string corrupt = *bytes;
    // Overwrite every level-0 link with a huge id; search must stay in bounds.
    auto h = ParseHnswHeader(corrupt.data(), corrupt.size(), dim);
    REQUIRE(h.ok());
    for (size_t i = 0; i < n; ++i) {
      char* links = &corrupt[kHnswHeaderSize + i * h->size_data_per_element];
      for (size_t j = 1; j <= h->max_m0; ++j) std::memset(links + 4 * j, 0x7f, 4);
    }
    REQUIRE(WriteFileDurably(b.graph, corrupt).ok());
    auto s = MmapHnswSearcher::Open(b.graph, b.offsets, dim, Metric::kL2, n);
    REQUIRE(s.ok());
    // Every link is now out of range, so the search cannot leave the entry
    // point; it returns that one valid row instead of reading past the map.
    auto got = (*s)->Search(&b.data[0], 10, 50);
    REQUIRE(got.size() == 1);
    CHECK(got[0].row < n);
  }
  SECTION("out-of-range labels never become result rows") {
    // Found by tests/fuzz (fuzz_snapshot, regressions/snapshot/
    // graph_label_out_of_range): a label >= count came back as a row, and
    // SearchSnapshot's dedup read Vector(row) past the offsets sidecar.
    std::string corrupt = *bytes;
    auto h = ParseHnswHeader(corrupt.data(), corrupt.size(), dim);
    REQUIRE(h.ok());
    for (size_t i = 0; i < n; i += 2) {
      const uint64_t label = i % 4 == 0 ? n + i : (uint64_t{1} << 32) + i;
      std::memcpy(&corrupt[kHnswHeaderSize + i * h->size_data_per_element + h->label_offset],
                  &label, sizeof(label));
    }
    REQUIRE(WriteFileDurably(b.graph, corrupt).ok());
    auto s = MmapHnswSearcher::Open(b.graph, b.offsets, dim, Metric::kL2, n);
    REQUIRE(s.ok());
    for (size_t q = 0; q < 20; ++q) {
      auto got = (*s)->Search(&b.data[q * dim], 10, 50);
      CHECK(got.size() == 10);
      for (const auto& g : got) CHECK(g.row < n);
      RowFilter all(n, true);
      for (const auto& g : (*s)->Search(&b.data[q * dim], 10, 50, &all)) CHECK(g.row < n);
    }
  }
}

}  // namespace
}  // namespace imagesearch::index
