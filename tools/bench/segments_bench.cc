// Query cost over segments: the same rows searched, side by
// side in one run, through the real query path (serving::SearchSnapshot on a
// snapshot::Snapshot::Open'd version) held as
//   merged        one segment of all N rows (PublishSnapshot);
//   segments      S segments (PublishSnapshot, then one PublishUpdate per
//                 further segment), --layout=tiered: half the rows in the
//                 first (oldest) segment, the rest split geometrically (each
//                 next segment half the one before), --layout=fold (the
//                 same with 1/(1+fold_pct/100) of the rows in the first:
//                 with --segments=2 the merge policy's big segment and its
//                 tail just before a fold, with 3 the state while a fold
//                 runs), --layout=tail (S = 2: the same two segments as
//                 fold, the second written as two publishes joined by
//                 MergeSegments, as the merge policy joins them: a tail
//                 linked to the big segment, walked with it as one graph;
//                 --segments=3 adds a third: the second tail of the merge
//                 policy's ladder, or the new tail while a fold runs; more
//                 add more linked tails, each half the one before: 5 is the
//                 ladder's state while a fold runs, two tails held by the
//                 fold and two joined meanwhile),
//                 or --layout=equal;
// and both again with --deleted (5%) of the rows deleted (one PublishUpdate
// of deletes on each; the same rows in both). --layout=fold adds what the
// fold makes of its segments with deletes: one MergeSegments of them all,
// which extends the first segment's graph with the others' live rows (the
// root's files hard-linked into a copy first). For every ef of a sweep it
// prints recall@10 (against brute force over the live rows) and single-core
// QPS of each, then the QPS at the smallest ef on the sweep reaching recall@10
// 0.95 and 0.99, and segmented over merged at equal recall (goal: >= 0.8).
// Last, where a segmented query's time goes at the segmented layout's 0.95
// ef: each segment's graph searched alone, all graphs in turn, and
// SearchSnapshot.
//
// Queries run one at a time on one thread pinned to --cpu; every layout is
// timed once per round, in turn, and its median round counts, so a burst of
// host noise falls on one round of each rather than on one layout.
//
// The built roots (and the ground truth) are cached in --workdir, keyed by
// the data and build flags (a --vectors file by its name and size), so a
// rerun at --count=1000000 --dim=512 only searches. On this VM a root
// written long before the run can search several times slower than a fresh
// copy of it (tools/bench/results/LOG.md, "The tail policy"): copy the
// cached roots afresh (cp -a, then rename) before a run that is to be kept.
//
//   imagesearch_segments_bench [--count=100000 --dim=128 --queries=1000 --segments=10
//       --layout=tiered|fold|equal --fold_pct=10 --deleted=0.05 --with_deletes --cpu=0
//       --workdir=/tmp/imagesearch_segments_bench]
//       [--vectors=FILE.npy|.fvecs: real embeddings; its last --queries rows are the queries]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "libs/index/distance.h"
#include "libs/index/hnsw_builder.h"
#include "libs/index/metric.h"
#include "libs/index/test_vectors.h"
#include "libs/serving/query_engine.h"
#include "libs/snapshot/merge_policy.h"
#include "libs/snapshot/snapshot.h"
#include "libs/snapshot/snapshot_store.h"
#include "libs/snapshot/vector_io.h"
#include "tools/bench/bench_util.h"

ABSL_FLAG(int, count, 100000,
          "Indexed rows N (--vectors: at most the file's rows less --queries).");
ABSL_FLAG(int, dim, 128, "Dimension of the synthetic data (--vectors: the file's).");
ABSL_FLAG(int, queries, 1000, "Held-out queries: drawn with the data, not indexed.");
ABSL_FLAG(std::string, data, "lowrank",
          "Synthetic data: lowrank (tools/bench/bench_util.h LowRankData, latent 32, 1000 "
          "clusters: faiss_bench's default) or clustered (search_bench's: ClusteredVectors, 1000 "
          "clusters, spread 1). Ignored with --vectors.");
ABSL_FLAG(std::string, vectors, "",
          "Real embeddings (.npy or .fvecs): the first rows are indexed, the last --queries rows "
          "are the queries.");
ABSL_FLAG(int, segments, 10, "Segments S of the segmented layout.");
ABSL_FLAG(std::string, layout, "tiered",
          "tiered: half the rows in one segment, the rest in S-1 segments each half the one "
          "before; fold: as tiered with 100/(100+fold_pct) of the rows in the first (the merge "
          "policy's most segmented state); tail: fold with S = 2, the second segment a tail "
          "joined by MergeSegments (linked to the first, walked with it as one graph), or S > 2 "
          "with more linked tails (each half the one before); equal: S segments of N/S rows.");
ABSL_FLAG(double, fold_pct, -1,
          "--layout=fold: the rows beside the first segment, in % of its rows; -1: the merge "
          "policy's default fold_pct.");
ABSL_FLAG(double, deleted, 0.05, "Share of the rows deleted in the layouts with deletes.");
ABSL_FLAG(int, m, 16, "HNSW M of every graph.");
ABSL_FLAG(int, ef_construction, 100, "HNSW efConstruction of every graph.");
ABSL_FLAG(int, build_threads, 0, "Threads for graph builds and ground truth; 0 = all cores.");
ABSL_FLAG(std::string, ef, "10,16,24,32,48,64,96,128,192,256", "ef sweep (comma-separated).");
ABSL_FLAG(double, seconds, 1.0, "Measuring time per layout per ef (split over --rounds).");
ABSL_FLAG(int, rounds, 3, "Rounds per ef; each layout's median round counts.");
ABSL_FLAG(int, cpu, 0, "Core the query loop is pinned to (-1: not pinned).");
ABSL_FLAG(std::string, workdir, "/tmp/imagesearch_segments_bench",
          "Where the roots and ground truth are cached (one folder per data and build flags).");
ABSL_FLAG(bool, with_deletes, true,
          "Also time the layouts with deletes (and --layout=fold's folded one); false maps only "
          "two roots, which keeps the working set of a 1M x 512 run at about 4 GB.");
ABSL_FLAG(bool, rebuild, false, "Rebuild the cached roots and ground truth.");

namespace imagesearch {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kK = 10;
// Exact neighbours kept per query: the live top 10 are among them unless 23
// of a query's 32 nearest rows are deleted (checked).
constexpr size_t kTruthDepth = 32;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The rows and queries, unit length (cosine), and a name for the cache.
struct Data {
  size_t n = 0, dim = 0, nq = 0;
  std::vector<float> rows;  // (n + nq) x dim: the indexed rows, then the queries.
  std::string key;          // Names the data in --workdir.
  const float* query(size_t q) const { return rows.data() + (n + q) * dim; }
};

absl::StatusOr<Data> LoadData() {
  Data d;
  d.nq = static_cast<size_t>(absl::GetFlag(FLAGS_queries));
  d.n = static_cast<size_t>(absl::GetFlag(FLAGS_count));
  d.dim = static_cast<size_t>(absl::GetFlag(FLAGS_dim));
  const std::string path = absl::GetFlag(FLAGS_vectors);
  if (d.nq == 0 || d.n == 0) return absl::InvalidArgumentError("--count and --queries must be > 0");
  if (!path.empty()) {
    absl::StatusOr<VectorSet> file = ReadVectorFile(path);
    if (!file.ok()) return file.status();
    if (file->count <= d.nq) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, " has ", file->count, " rows: not more than --queries"));
    }
    d.n = std::min(d.n, file->count - d.nq);
    d.dim = file->dim;
    d.rows.assign(file->data.begin(), file->data.begin() + d.n * d.dim);
    d.rows.insert(d.rows.end(), file->data.end() - d.nq * d.dim, file->data.end());
    d.key = absl::StrCat(std::filesystem::path(path).stem().string(), "-",
                         std::filesystem::file_size(path), "b");
    std::printf("data: %zu x %zu rows of %s (cosine), its last %zu rows as queries\n", d.n, d.dim,
                path.c_str(), d.nq);
  } else if (absl::GetFlag(FLAGS_data) == "lowrank") {
    std::vector<uint32_t> cluster_of;
    d.rows = bench::LowRankData(d.n + d.nq, d.dim, 32, 1000, &cluster_of);
    d.key = "lowrank";
    std::printf(
        "data: %zu x %zu low-rank (latent 32, 1000 clusters), cosine, %zu held-out queries\n", d.n,
        d.dim, d.nq);
  } else if (absl::GetFlag(FLAGS_data) == "clustered") {
    d.rows = index::ClusteredVectors(d.n + d.nq, d.dim, 1000, 1, 1.0f);
    d.key = "clustered";
    std::printf(
        "data: %zu x %zu clustered (1000 clusters, spread 1), cosine, %zu held-out queries\n", d.n,
        d.dim, d.nq);
  } else {
    return absl::InvalidArgumentError("--data must be lowrank or clustered");
  }
  absl::StrAppend(&d.key, "-n", d.n, "-d", d.dim, "-q", d.nq);
  for (size_t i = 0; i < d.n + d.nq; ++i) {
    if (!index::NormalizeInPlace(&d.rows[i * d.dim], d.dim)) {
      return absl::InvalidArgumentError(absl::StrCat("row ", i, " has zero norm"));
    }
  }
  return d;
}

// Segment sizes, oldest first. Tiered: the first holds `first_share` of the
// rows, the other s-1 share the rest with weights 2^(s-2), ..., 2, 1 (at
// least one row each); equal (first_share 0): n/s each.
std::vector<size_t> SegmentSizes(size_t n, size_t s, double first_share) {
  std::vector<size_t> sizes;
  if (first_share <= 0 || s == 1) {
    for (size_t i = 0; i < s; ++i) sizes.push_back(n / s + (i < n % s ? 1 : 0));
    return sizes;
  }
  const size_t rest = static_cast<size_t>(static_cast<double>(n) * (1 - first_share));
  sizes.push_back(n - rest);
  const double total_weight = std::ldexp(1.0, static_cast<int>(s - 1)) - 1;
  size_t given = 0;
  for (size_t i = 1; i < s; ++i) {
    const double share = std::ldexp(1.0, static_cast<int>(s - 1 - i)) / total_weight;
    sizes.push_back(std::max<size_t>(1, static_cast<size_t>(rest * share)));
    given += sizes.back();
  }
  // Rounding: the largest of the small segments takes up the difference.
  sizes[1] = sizes[1] + rest - given;
  return sizes;
}

snapshot::SnapshotInput RowsInput(const Data& d, size_t first, size_t count,
                                  const index::HnswParams& hnsw) {
  snapshot::SnapshotInput in;
  in.count = count;
  in.dim = static_cast<int>(d.dim);
  in.metric = index::Metric::kCosine;
  in.hnsw = hnsw;
  in.ids.reserve(count);
  for (size_t r = first; r < first + count; ++r) in.ids.push_back({std::to_string(r), "", ""});
  in.graph = index::HnswGraphWriter(d.rows.data() + first * d.dim, count, d.dim, in.metric, hnsw);
  return in;
}

using Versions = std::vector<uint64_t>;

// The versions of the root in `dir` (dir/root), built by `build` unless an
// earlier run with the same `key` left them (dir/BUILT: the key, then the
// versions).
absl::StatusOr<Versions> CachedRoot(
    const std::string& dir, const std::string& key,
    const std::function<absl::StatusOr<Versions>(const std::string&)>& build) {
  const std::string marker = dir + "/BUILT";
  if (!absl::GetFlag(FLAGS_rebuild)) {
    std::ifstream in(marker);
    std::string line;
    Versions versions;
    if (std::getline(in, line) && line == key) {
      for (uint64_t v; in >> v;) versions.push_back(v);
      if (!versions.empty()) {
        std::printf("reused %s\n", dir.c_str());
        return versions;
      }
    }
  }
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const auto t0 = Clock::now();
  absl::StatusOr<Versions> versions = build(dir + "/root");
  if (!versions.ok()) return versions.status();
  std::printf("built %s in %.1f s\n", dir.c_str(), Since(t0));
  std::ofstream(marker) << key << "\n" << absl::StrJoin(*versions, " ") << "\n";
  return versions;
}

// The exact kTruthDepth nearest rows of every query, cached in `path`.
std::vector<std::vector<uint32_t>> GroundTruth(const Data& d, const std::string& path,
                                               int threads) {
  const size_t bytes = d.nq * kTruthDepth * sizeof(uint32_t);
  std::vector<uint32_t> flat(d.nq * kTruthDepth);
  std::vector<std::vector<uint32_t>> truth(d.nq);
  if (!absl::GetFlag(FLAGS_rebuild) && std::filesystem::exists(path) &&
      std::filesystem::file_size(path) == bytes) {
    std::ifstream(path, std::ios::binary).read(reinterpret_cast<char*>(flat.data()), bytes);
    for (size_t q = 0; q < d.nq; ++q) {
      truth[q].assign(flat.begin() + q * kTruthDepth, flat.begin() + (q + 1) * kTruthDepth);
    }
    return truth;
  }
  const auto t0 = Clock::now();
  const size_t depth = std::min(kTruthDepth, d.n);
  truth = bench::ExactTopK(d.query(0), d.nq, d.rows.data(), d.n, d.dim, depth, threads,
                           index::GetDistanceFn(index::Metric::kCosine, d.dim));
  std::printf("ground truth (brute force, %d threads) in %.1f s\n", threads, Since(t0));
  if (depth == kTruthDepth) {
    for (size_t q = 0; q < d.nq; ++q) std::copy(truth[q].begin(), truth[q].end(), &flat[q * depth]);
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(flat.data()), bytes);
  }
  return truth;
}

struct Layout {
  std::string name;
  std::shared_ptr<const snapshot::Snapshot> snap;
  const std::vector<std::vector<uint32_t>>* truth;  // Top 10 of the live rows, per query.
  std::vector<bench::Point> curve;
};

// Recall@10 of the layout at `ef` over all queries; -1 if a search failed.
double RecallAt(const Layout& l, const std::vector<std::vector<float>>& queries, uint32_t ef) {
  serving::SearchParams params;
  params.top_k = kK;
  params.ef = ef;
  size_t hits = 0;
  for (size_t q = 0; q < queries.size(); ++q) {
    absl::StatusOr<std::vector<serving::Hit>> r =
        serving::SearchSnapshot(*l.snap, queries[q], params);
    if (!r.ok()) {
      std::cerr << l.name << ": " << r.status() << "\n";
      return -1;
    }
    const std::vector<uint32_t>& want = (*l.truth)[q];
    for (const serving::Hit& h : *r) {
      uint32_t row = 0;
      if (absl::SimpleAtoi(h.id, &row)) hits += std::count(want.begin(), want.end(), row);
    }
  }
  return static_cast<double>(hits) / static_cast<double>(queries.size() * kK);
}

double SearchQps(const Layout& l, const std::vector<std::vector<float>>& queries, uint32_t ef,
                 double seconds) {
  serving::SearchParams params;
  params.top_k = kK;
  params.ef = ef;
  return bench::Qps(seconds, queries.size(), [&](size_t q) {
    auto r = serving::SearchSnapshot(*l.snap, queries[q], params);
    (void)r;
  });
}

// The point of `curve` with the smallest ef whose recall reaches `target`.
const bench::Point* SmallestEfReaching(const std::vector<bench::Point>& curve, double target) {
  for (const bench::Point& p : curve) {
    if (p.recall >= target) return &p;
  }
  return nullptr;
}

int Run() {
  std::vector<uint32_t> efs;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_ef), ',', absl::SkipEmpty())) {
    uint32_t e = 0;
    if (!absl::SimpleAtoi(s, &e) || e == 0 || e > serving::kMaxEf) {
      std::cerr << "bad --ef entry: " << s << "\n";
      return 1;
    }
    efs.push_back(e);
  }
  std::sort(efs.begin(), efs.end());
  const std::string layout_flag = absl::GetFlag(FLAGS_layout);
  if (layout_flag != "tiered" && layout_flag != "equal" && layout_flag != "fold" &&
      layout_flag != "tail") {
    std::cerr << "--layout must be tiered, equal, fold or tail\n";
    return 1;
  }
  // tail: at least 2 segments (the big one and its first tail).
  const size_t s =
      static_cast<size_t>(std::max(layout_flag == "tail" ? 2 : 1, absl::GetFlag(FLAGS_segments)));
  const double deleted_share = absl::GetFlag(FLAGS_deleted);
  if (!(deleted_share >= 0 && deleted_share < 0.5)) {
    std::cerr << "--deleted must be in [0, 0.5)\n";
    return 1;
  }
  absl::StatusOr<Data> loaded = LoadData();
  if (!loaded.ok()) {
    std::cerr << loaded.status() << "\n";
    return 1;
  }
  const Data& d = *loaded;
  if (s > d.n) {
    std::cerr << "--segments must not exceed the rows\n";
    return 1;
  }
  // fold: the most the default merge policy lets a version hold beside its
  // big segment (just under fold_pct of its rows) before folding them in.
  const double fold_pct = absl::GetFlag(FLAGS_fold_pct) >= 0 ? absl::GetFlag(FLAGS_fold_pct)
                                                             : snapshot::MergePolicy().fold_pct;
  const double first_share = layout_flag == "tiered" ? 0.5
                             : layout_flag == "fold" || layout_flag == "tail"
                                 ? 100.0 / (100.0 + fold_pct)
                                 : 0.0;
  const std::vector<size_t> sizes = SegmentSizes(d.n, s, first_share);
  const int threads = absl::GetFlag(FLAGS_build_threads) > 0
                          ? absl::GetFlag(FLAGS_build_threads)
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  index::HnswParams hnsw;
  hnsw.m = absl::GetFlag(FLAGS_m);
  hnsw.ef_construction = absl::GetFlag(FLAGS_ef_construction);
  hnsw.threads = threads;
  std::printf("HNSW M=%d efConstruction=%d; %s layout, %zu segments of %s rows\n", hnsw.m,
              hnsw.ef_construction, layout_flag.c_str(), s, absl::StrJoin(sizes, " + ").c_str());

  // The deleted rows: the same in both layouts, from a fixed seed.
  std::vector<uint32_t> order(d.n);
  for (size_t r = 0; r < d.n; ++r) order[r] = static_cast<uint32_t>(r);
  std::shuffle(order.begin(), order.end(), std::mt19937(7));
  order.resize(static_cast<size_t>(std::llround(deleted_share * static_cast<double>(d.n))));
  std::vector<bool> is_deleted(d.n, false);
  std::vector<std::string> delete_ids;
  for (uint32_t r : order) {
    is_deleted[r] = true;
    delete_ids.push_back(std::to_string(r));
  }
  auto publish_deletes = [&](const std::string& root, uint64_t base) -> absl::StatusOr<uint64_t> {
    snapshot::SnapshotUpdate update;
    update.base_version = base;
    update.delete_ids = delete_ids;
    absl::StatusOr<snapshot::UpdateResult> r = snapshot::PublishUpdate(root, update);
    if (!r.ok()) return r.status();
    return r->version;
  };

  const std::string dir = absl::StrCat(absl::GetFlag(FLAGS_workdir), "/", d.key);
  const std::string build_key = absl::StrCat("m", hnsw.m, "-efc", hnsw.ef_construction);
  const std::string deletes_key = absl::StrCat("deleted ", deleted_share, " seed 7");
  absl::StatusOr<Versions> merged = CachedRoot(
      absl::StrCat(dir, "/merged-", build_key), deletes_key,
      [&](const std::string& root) -> absl::StatusOr<Versions> {
        absl::StatusOr<uint64_t> v = snapshot::PublishSnapshot(root, RowsInput(d, 0, d.n, hnsw));
        if (!v.ok()) return v.status();
        absl::StatusOr<uint64_t> del = publish_deletes(root, *v);
        if (!del.ok()) return del.status();
        return Versions{*v, *del};
      });
  const std::string segmented_dir = absl::StrCat(
      dir, "/", layout_flag, "-s", s,
      layout_flag == "fold" || layout_flag == "tail" ? absl::StrCat("-f", fold_pct) : std::string(),
      "-", build_key);
  absl::StatusOr<Versions> segmented = CachedRoot(
      segmented_dir, deletes_key, [&](const std::string& root) -> absl::StatusOr<Versions> {
        absl::StatusOr<uint64_t> v =
            snapshot::PublishSnapshot(root, RowsInput(d, 0, sizes[0], hnsw));
        size_t first = sizes[0];
        // The tail layout: its one small segment published in two halves,
        // then joined (and linked) as the merge policy would.
        std::vector<size_t> parts(sizes.begin() + 1, sizes.end());
        if (layout_flag == "tail") parts = {sizes[1] / 2, sizes[1] - sizes[1] / 2};
        const std::vector<size_t> later(sizes.begin() + 2, sizes.end());
        std::vector<std::string> published;
        for (size_t i = 0; i < parts.size() && v.ok(); ++i) {
          snapshot::SnapshotUpdate update;
          update.base_version = *v;
          update.added = RowsInput(d, first, parts[i], hnsw);
          first += parts[i];
          absl::StatusOr<snapshot::UpdateResult> r = snapshot::PublishUpdate(root, update);
          v = r.ok() ? absl::StatusOr<uint64_t>(r->version) : r.status();
          if (r.ok()) published.push_back(r->segment);
        }
        if (!v.ok()) return v.status();
        if (layout_flag == "tail") {
          snapshot::MergeRequest join;
          join.segments = published;
          join.threads = threads;
          const auto t0 = Clock::now();
          absl::StatusOr<snapshot::MergeResult> r = snapshot::MergeSegments(root, join);
          if (!r.ok()) return r.status();
          std::printf("joined %zu segments into a tail of %llu rows (linked) in %.1f s\n",
                      r->merged.size(), static_cast<unsigned long long>(r->rows), Since(t0));
          v = r->version;
          // With more: further tails (the ladder's, or those the merge lanes
          // join while a fold holds the big segment), linked to it too and
          // walked with it and the first tail.
          for (size_t rows : later) {
            std::vector<std::string> halves;
            for (size_t part : {rows / 2, rows - rows / 2}) {
              snapshot::SnapshotUpdate update;
              update.base_version = *v;
              update.added = RowsInput(d, first, part, hnsw);
              first += part;
              absl::StatusOr<snapshot::UpdateResult> u = snapshot::PublishUpdate(root, update);
              if (!u.ok()) return u.status();
              v = u->version;
              halves.push_back(u->segment);
            }
            snapshot::MergeRequest second;
            second.segments = halves;
            second.threads = threads;
            absl::StatusOr<snapshot::MergeResult> m = snapshot::MergeSegments(root, second);
            if (!m.ok()) return m.status();
            v = m->version;
          }
        }
        absl::StatusOr<uint64_t> del = publish_deletes(root, *v);
        if (!del.ok()) return del.status();
        return Versions{*v, *del};
      });
  if (!merged.ok() || !segmented.ok() || merged->size() != 2 || segmented->size() != 2) {
    std::cerr << (merged.ok() ? segmented.status() : merged.status()) << "\n";
    return 1;
  }
  // The fold of the segments with deletes, into the first one's graph.
  const bool fold = layout_flag == "fold";
  const std::string extended_dir = segmented_dir + "-extended";
  absl::StatusOr<Versions> extended = Versions{};
  if (fold) {
    extended = CachedRoot(
        extended_dir, deletes_key, [&](const std::string& root) -> absl::StatusOr<Versions> {
          bench::LinkCopyRoot(segmented_dir + "/root", root);
          auto latest =
              snapshot::Snapshot::Open(root, (*segmented)[1], snapshot::VerifyMode::kSizes);
          if (!latest.ok()) return latest.status();
          snapshot::MergeRequest req;
          for (const snapshot::SegmentRef& ref : (*latest)->segments()) {
            req.segments.push_back(ref.name);
          }
          req.threads = threads;
          const auto t0 = Clock::now();
          absl::StatusOr<snapshot::MergeResult> r = snapshot::MergeSegments(root, req);
          if (!r.ok()) return r.status();
          if (r->extended.empty()) {
            return absl::FailedPreconditionError("the fold built a new graph, not an extension");
          }
          std::printf("folded %zu segments into %s (extended, %llu deleted rows kept) in %.1f s\n",
                      r->merged.size(), r->extended.c_str(),
                      static_cast<unsigned long long>(r->kept_deleted), Since(t0));
          return Versions{r->version};
        });
    if (!extended.ok() || extended->size() != 1) {
      std::cerr << extended.status() << "\n";
      return 1;
    }
  }

  // Ground truth: the exact top 10 of all rows, and of the live rows.
  const std::vector<std::vector<uint32_t>> deep =
      GroundTruth(d, absl::StrCat(dir, "/truth", kTruthDepth, ".bin"), threads);
  std::vector<std::vector<uint32_t>> truth_all(d.nq), truth_live(d.nq);
  for (size_t q = 0; q < d.nq; ++q) {
    for (uint32_t r : deep[q]) {
      if (truth_all[q].size() < kK) truth_all[q].push_back(r);
      if (truth_live[q].size() < kK && !is_deleted[r]) truth_live[q].push_back(r);
    }
    if (truth_live[q].size() < std::min(kK, d.n - order.size())) {
      std::cerr << "query " << q << ": fewer than 10 live rows among its " << kTruthDepth
                << " nearest\n";
      return 1;
    }
  }

  const std::string seg_name = absl::StrCat(layout_flag, " x", s);
  const std::string del_suffix = absl::StrCat(", ", std::llround(deleted_share * 100), "% del");
  std::vector<Layout> layouts = {
      {"merged", nullptr, &truth_all, {}},
      {seg_name, nullptr, &truth_all, {}},
      {"merged" + del_suffix, nullptr, &truth_live, {}},
      {seg_name + del_suffix, nullptr, &truth_live, {}},
  };
  if (fold) layouts.push_back({"folded" + del_suffix, nullptr, &truth_live, {}});
  const bool with_deletes = absl::GetFlag(FLAGS_with_deletes);
  if (!with_deletes) layouts.resize(2);
  const std::string merged_root = absl::StrCat(dir, "/merged-", build_key, "/root");
  const std::string segmented_root = segmented_dir + "/root";
  std::vector<std::pair<std::string, uint64_t>> where = {{merged_root, (*merged)[0]},
                                                         {segmented_root, (*segmented)[0]},
                                                         {merged_root, (*merged)[1]},
                                                         {segmented_root, (*segmented)[1]}};
  if (fold) where.push_back({extended_dir + "/root", (*extended)[0]});
  where.resize(layouts.size());
  for (size_t i = 0; i < layouts.size(); ++i) {
    const auto opening = Clock::now();
    auto snap =
        snapshot::Snapshot::Open(where[i].first, where[i].second, snapshot::VerifyMode::kSizes);
    if (!snap.ok()) {
      std::cerr << snap.status() << "\n";
      return 1;
    }
    (void)(*snap)->joint();  // Built as the query service builds it, at load.
    const double open_ms = 1e3 * Since(opening);
    layouts[i].snap = *snap;
    std::printf(
        "  %-22s v%llu: %zu segments, %llu live rows%s; opened in %.1f ms\n",
        layouts[i].name.c_str(), static_cast<unsigned long long>(where[i].second),
        (*snap)->segments().size(), static_cast<unsigned long long>((*snap)->live_count()),
        (*snap)->joint() != nullptr
            ? absl::StrCat(" (", (*snap)->joint()->tails.size() + 1, " walked as one)").c_str()
            : "",
        open_ms);
  }
  // What a replica pays for the joint graph when it moves to the segmented
  // version from the one before it (a tail joined or extended since): the
  // join from that version's graph, as the query service's loader makes it,
  // against one from scratch; rounds interleaved.
  if (layouts[1].snap->joint() != nullptr && where[1].second > 1) {
    auto before =
        snapshot::Snapshot::Open(where[1].first, where[1].second - 1, snapshot::VerifyMode::kSizes);
    if (before.ok() && (*before)->joint() != nullptr) {
      std::vector<double> from_before_ms, scratch_ms;
      for (int r = 0; r < std::max(5, absl::GetFlag(FLAGS_rounds)); ++r) {
        for (const snapshot::Snapshot* reuse :
             {before->get(), static_cast<const snapshot::Snapshot*>(nullptr)}) {
          auto snap = snapshot::Snapshot::Open(where[1].first, where[1].second,
                                               snapshot::VerifyMode::kSizes, reuse);
          if (!snap.ok()) {
            std::cerr << snap.status() << "\n";
            return 1;
          }
          const auto joining = Clock::now();
          (void)(*snap)->joint();
          (reuse != nullptr ? from_before_ms : scratch_ms).push_back(1e3 * Since(joining));
        }
      }
      std::printf(
          "  joint graph of v%llu opened after v%llu: %.1f ms from v%llu's, %.1f ms from scratch "
          "(median of %zu rounds)\n",
          static_cast<unsigned long long>(where[1].second),
          static_cast<unsigned long long>(where[1].second - 1), bench::Median(from_before_ms),
          static_cast<unsigned long long>(where[1].second - 1), bench::Median(scratch_ms),
          scratch_ms.size());
    }
  }
  // The queries, prepared as the service prepares a client's vector.
  std::vector<std::vector<float>> queries;
  for (size_t q = 0; q < d.nq; ++q) {
    auto prepared = serving::PrepareQueryVector(*layouts[0].snap, d.query(q), d.dim);
    if (!prepared.ok()) {
      std::cerr << prepared.status() << "\n";
      return 1;
    }
    queries.push_back(std::move(*prepared));
  }

  const int cpu = absl::GetFlag(FLAGS_cpu);
  bench::PinTo(cpu);
  const double secs = absl::GetFlag(FLAGS_seconds);
  const int rounds = std::max(1, absl::GetFlag(FLAGS_rounds));
  std::printf("\nSearchSnapshot, top 10, one query at a time on one thread%s; distance kernel %s\n",
              cpu >= 0 ? (" pinned to core " + std::to_string(cpu)).c_str() : " (not pinned)",
              index::SimdLevelName(index::BestSimdLevel()));
  std::printf("%5s", "ef");
  for (const Layout& l : layouts) std::printf(" | %-24s", l.name.c_str());
  std::printf("\n%5s", "");
  for (size_t i = 0; i < layouts.size(); ++i) std::printf(" | %8s %15s", "recall", "QPS");
  std::printf("\n");
  for (uint32_t ef : efs) {
    std::vector<double> recall(layouts.size());
    std::vector<std::vector<double>> qps(layouts.size());
    for (size_t i = 0; i < layouts.size(); ++i) {
      recall[i] = RecallAt(layouts[i], queries, ef);
      if (recall[i] < 0) return 1;
    }
    for (int r = 0; r < rounds; ++r) {
      for (size_t i = 0; i < layouts.size(); ++i) {
        qps[i].push_back(SearchQps(layouts[i], queries, ef, secs / rounds));
      }
    }
    std::printf("%5u", ef);
    for (size_t i = 0; i < layouts.size(); ++i) {
      layouts[i].curve.push_back({ef, recall[i], bench::Median(qps[i])});
      std::printf(" | %8.4f %15.0f", recall[i], layouts[i].curve.back().qps);
    }
    std::printf("\n");
    std::fflush(stdout);
  }

  // Equal recall: each layout at its own smallest ef reaching the target.
  // Segmented layouts are compared with merged, with deletes also with merged
  // holding the same deletes.
  std::vector<std::pair<size_t, size_t>> ratios = {{1, 0}};
  if (with_deletes) ratios.insert(ratios.end(), {{3, 0}, {3, 2}});
  if (fold && with_deletes) ratios.push_back({4, 2});  // The extended graph against one built.
  for (double target : {0.95, 0.99}) {
    std::printf("\nrecall@10 >= %.2f: the smallest ef on the sweep reaching it\n", target);
    std::vector<const bench::Point*> at(layouts.size());
    for (size_t i = 0; i < layouts.size(); ++i) {
      at[i] = SmallestEfReaching(layouts[i].curve, target);
      if (at[i] == nullptr) {
        std::printf("  %-24s not reached (best %.4f)\n", layouts[i].name.c_str(),
                    layouts[i].curve.empty() ? 0.0 : layouts[i].curve.back().recall);
      } else {
        std::printf("  %-24s ef %4zu  recall %.4f  %9.0f QPS   (interpolated to %.2f: %9.0f)\n",
                    layouts[i].name.c_str(), at[i]->ef, at[i]->recall, at[i]->qps, target,
                    bench::QpsAtRecall(layouts[i].curve, target));
      }
    }
    for (auto [a, b] : ratios) {
      if (at[a] == nullptr || at[b] == nullptr) continue;
      const double ratio = at[a]->qps / at[b]->qps;
      std::printf("  ratio %s / %s: %.3f (interpolated %.3f)%s\n", layouts[a].name.c_str(),
                  layouts[b].name.c_str(), ratio,
                  bench::QpsAtRecall(layouts[a].curve, target) /
                      bench::QpsAtRecall(layouts[b].curve, target),
                  ratio >= 0.8 ? "" : "  below the 0.8 goal");
    }
  }

  // Where a segmented query's time goes, at the ef where the segmented
  // layout reaches 0.95 (or the last of the sweep): each graph searched alone
  // (its hot lines stay cached from one query to the next), all graphs in
  // turn as SearchSnapshot walks them but without its merge and hits (the
  // graphs evict each other's lines), and SearchSnapshot; merged's one graph
  // likewise. Timed in rounds like the sweep.
  const bench::Point* p = SmallestEfReaching(layouts[1].curve, 0.95);
  const size_t ef = p != nullptr ? p->ef : efs.back();
  serving::SearchParams params;
  params.top_k = kK;
  params.ef = static_cast<uint32_t>(ef);
  struct Timed {
    std::string label;
    std::function<void(size_t)> one;
    std::vector<double> us;
  };
  std::vector<Timed> timed;
  for (size_t l : {size_t{0}, size_t{1}}) {
    const snapshot::Snapshot& snap = *layouts[l].snap;
    for (size_t i = 0; i < snap.segments().size(); ++i) {
      const index::MmapHnswSearcher* searcher = &snap.segments()[i].segment->searcher();
      timed.push_back({absl::StrCat(layouts[l].name, ", segment ", i, " (",
                                    snap.segments()[i].segment->rows(), " rows) alone"),
                       [&, searcher](size_t q) {
                         auto n = searcher->Search(queries[q].data(), kK, std::max(ef, kK));
                         (void)n;
                       },
                       {}});
    }
    timed.push_back({absl::StrCat(layouts[l].name, ", all graphs in turn"),
                     [&](size_t q) {
                       for (const snapshot::SegmentRef& ref : snap.segments()) {
                         auto n = ref.segment->searcher().Search(queries[q].data(), kK,
                                                                 std::max(ef, kK));
                         (void)n;
                       }
                     },
                     {}});
    timed.push_back({absl::StrCat(layouts[l].name, ", SearchSnapshot"),
                     [&](size_t q) {
                       auto r = serving::SearchSnapshot(snap, queries[q], params);
                       (void)r;
                     },
                     {}});
  }
  for (int r = 0; r < rounds; ++r) {
    for (Timed& t : timed) t.us.push_back(1e6 / bench::Qps(secs / rounds, d.nq, t.one));
  }
  std::printf("\nat ef %zu, microseconds a query (median of %d rounds):\n", ef, rounds);
  size_t t = 0;
  for (size_t l : {size_t{0}, size_t{1}}) {
    double sum = 0;
    for (size_t i = 0; i < layouts[l].snap->segments().size(); ++i, ++t) {
      sum += bench::Median(timed[t].us);
      std::printf("  %-52s %8.1f us\n", timed[t].label.c_str(), bench::Median(timed[t].us));
    }
    std::printf("  %-52s %8.1f us\n", (layouts[l].name + ", graphs alone, summed").c_str(), sum);
    for (int i = 0; i < 2; ++i, ++t) {
      std::printf("  %-52s %8.1f us\n", timed[t].label.c_str(), bench::Median(timed[t].us));
    }
  }
  // What a tail join pays per row it adds for its links: the row searched
  // in the big segment's graph as MergeSegments does (the held-out queries
  // stand for new rows), on one thread, in CPU time.
  if (const snapshot::JointSegments* joint = layouts[1].snap->joint(); joint != nullptr) {
    const index::MmapHnswSearcher& big =
        layouts[1].snap->segments()[joint->big].segment->searcher();
    std::vector<float> rows;
    for (const auto& q : queries) rows.insert(rows.end(), q.begin(), q.end());
    std::vector<double> us;
    for (int r = 0; r < rounds; ++r) {
      const double cpu0 = bench::ThreadCpuSeconds();
      auto links = index::NearestRows(big, rows.data(), queries.size(), d.dim,
                                      snapshot::kTailLinksPerRow, snapshot::kTailLinkSearchEf, 1);
      us.push_back(1e6 * (bench::ThreadCpuSeconds() - cpu0) / static_cast<double>(queries.size()));
      (void)links;
    }
    std::printf(
        "\nlinking a new tail row to the big segment (%u of its nearest of %zu rows, ef %zu, one "
        "thread): "
        "%.1f us of CPU a row (median of %d rounds of %zu rows)\n",
        snapshot::kTailLinksPerRow, big.size(), snapshot::kTailLinkSearchEf, bench::Median(us),
        rounds, queries.size());
  }
  return 0;
}

}  // namespace
}  // namespace imagesearch

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return imagesearch::Run();
}
