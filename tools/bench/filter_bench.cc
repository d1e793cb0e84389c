// Filtered search: where should the exact scan take over from the graph walk?
//
// Builds (or, with --reuse, reopens) a snapshot of N clustered vectors with a
// low intrinsic dimension (latent clusters in --latent_dim dimensions, mapped
// to --dim by a fixed random matrix, plus small noise: real embeddings look
// like this, isotropic noise does not), and keyword fields that pass a given
// share of the rows: at random ("rand") and by cluster ("clus", the hard case:
// the allowed rows sit in a few regions, usually not the query's). For each
// selectivity it times, side by side, the filtered graph walk at the default
// ef and the exact scan of the allowed rows, with recall@10 of the walk
// against the exact filtered answer, and unfiltered search for reference.
//
//   imagesearch_filter_bench [--n=200000 --dim=256 --latent_dim=32 --queries=300]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "libs/index/hnsw_builder.h"
#include "libs/index/metric.h"
#include "libs/serving/filter.h"
#include "libs/serving/query_engine.h"
#include "libs/snapshot/snapshot.h"
#include "libs/snapshot/snapshot_store.h"
#include "tools/bench/bench_util.h"

ABSL_FLAG(int, n, 200000, "Indexed vectors.");
ABSL_FLAG(int, dim, 256, "Dimension.");
ABSL_FLAG(int, latent_dim, 32, "Intrinsic dimension of the data.");
ABSL_FLAG(int, clusters, 1000, "Clusters in the latent space.");
ABSL_FLAG(int, queries, 300, "Queries (held-out points of the same distribution).");
ABSL_FLAG(int, ef, 192,
          "ef of the filtered graph walk: the service walks with 3x the query's ef "
          "(serving::FilteredWalkEf), so 192 for the default 64.");
ABSL_FLAG(std::string, workdir, "/tmp/imagesearch_filter_bench", "Where the snapshot goes.");
ABSL_FLAG(bool, reuse, false, "Reuse the snapshot in --workdir.");
ABSL_FLAG(std::string, snapshot_root, "",
          "Real data instead: an existing snapshot root (e.g. indexed with --schema=class:keyword) "
          "and --field, a keyword field: each of its values is a filter; queries are the stored "
          "vectors of every --stride-th row.");
ABSL_FLAG(std::string, field, "class", "With --snapshot_root: the keyword field to filter on.");
ABSL_FLAG(int, stride, 50, "With --snapshot_root: query with every stride-th row's vector.");

namespace imagesearch {
namespace {

using Clock = std::chrono::steady_clock;
constexpr double kShares[] = {0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.001};

std::string FieldName(const char* kind, double share) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%s_%g", kind, share * 100);
  std::string s = buf;
  std::replace(s.begin(), s.end(), '.', 'p');
  return s;
}

// Real data: every value of a keyword field of an existing snapshot as a
// filter, queried with stored vectors (the row itself included).
int RunOnSnapshot() {
  const std::string root = absl::GetFlag(FLAGS_snapshot_root);
  auto version = snapshot::ReadCurrentVersion(root);
  if (!version.ok()) {
    std::cerr << version.status() << "\n";
    return 1;
  }
  auto snap = snapshot::Snapshot::Open(root, *version, snapshot::VerifyMode::kSizes);
  if (!snap.ok() || (*snap)->segments().front().segment->attributes() == nullptr) {
    std::cerr << (snap.ok() ? "snapshot has no attribute fields" : snap.status().ToString())
              << "\n";
    return 1;
  }
  const auto* attrs = (*snap)->segments().front().segment->attributes();
  const auto field = attrs->Find(absl::GetFlag(FLAGS_field));
  if (!field.has_value()) {
    std::cerr << "no field " << absl::GetFlag(FLAGS_field) << "\n";
    return 1;
  }
  const auto& searcher = (*snap)->segments().front().segment->searcher();
  const size_t n = (*snap)->manifest().count, dim = (*snap)->manifest().dim;
  const size_t walk_ef = absl::GetFlag(FLAGS_ef);
  std::vector<uint32_t> queries;
  for (uint32_t r = 0; r < n; r += static_cast<uint32_t>(absl::GetFlag(FLAGS_stride)))
    queries.push_back(r);
  std::printf("%s: %zu x %zu, %zu queries, walk ef %zu\n", root.c_str(), n, dim, queries.size(),
              walk_ef);
  std::printf("%-16s %8s | %8s %8s | %s\n", "value", "rows", "walk r@10", "picks", "service r@10");
  for (uint32_t code = 0;; ++code) {
    const auto rows = attrs->Postings(*field, code);
    if (rows.empty()) break;
    index::RowFilter allowed(n);
    for (uint32_t r : rows) allowed.Allow(r);
    size_t walk_hits = 0, service_hits = 0, total = 0;
    const bool exact = serving::ExactScanIsCheaper(rows.size(), n, walk_ef);
    for (uint32_t q : queries) {
      const float* v = searcher.Vector(q);
      auto truth = searcher.SearchExact(v, 10, allowed);
      std::set<uint32_t> want;
      for (const auto& t : truth) want.insert(t.row);
      for (const auto& g : searcher.Search(v, 10, walk_ef, &allowed))
        walk_hits += want.count(g.row);
      service_hits += exact ? want.size() : 0;
      total += want.size();
    }
    if (!exact) service_hits = walk_hits;
    // The value's text, for the table: find it through any row's attributes.
    auto id = (*snap)->segments().front().segment->ids().Get(rows[0]);
    std::string value = id.ok() ? std::string(id->attributes_json) : "?";
    if (value.size() > 40) value = value.substr(0, 40);
    std::printf("%-16u %8zu | %8.4f %8s | %.4f   %s\n", code, rows.size(),
                total ? double(walk_hits) / total : 1.0, exact ? "exact" : "walk",
                total ? double(service_hits) / total : 1.0, value.c_str());
  }
  return 0;
}

int Run() {
  if (!absl::GetFlag(FLAGS_snapshot_root).empty()) return RunOnSnapshot();
  const size_t n = absl::GetFlag(FLAGS_n), dim = absl::GetFlag(FLAGS_dim);
  const size_t nq = absl::GetFlag(FLAGS_queries);
  const size_t clusters = absl::GetFlag(FLAGS_clusters);
  const std::string root = absl::GetFlag(FLAGS_workdir) + "/root";
  std::vector<uint32_t> cluster_of;
  std::vector<float> data =
      bench::LowRankData(n + nq, dim, absl::GetFlag(FLAGS_latent_dim), clusters, &cluster_of);
  std::vector<float> queries(data.begin() + n * dim, data.end());
  for (size_t q = 0; q < nq; ++q) index::NormalizeInPlace(&queries[q * dim], dim);

  const bool reuse = absl::GetFlag(FLAGS_reuse) && snapshot::ReadCurrentVersion(root).ok();
  if (!reuse) {
    std::filesystem::remove_all(absl::GetFlag(FLAGS_workdir));
    snapshot::SnapshotInput in;
    in.count = n;
    in.dim = static_cast<int>(dim);
    in.metric = index::Metric::kCosine;
    in.hnsw.m = 16;
    in.hnsw.ef_construction = 100;
    in.graph = index::HnswGraphWriter(data.data(), n, dim, in.metric, in.hnsw);
    in.default_ef =
        static_cast<int>(std::max<size_t>(1, absl::GetFlag(FLAGS_ef) / serving::kFilteredEfFactor));
    std::mt19937 rng(7);
    std::uniform_real_distribution<double> u(0, 1);
    for (const char* kind : {"rand", "clus"}) {
      for (double share : kShares)
        in.schema.push_back({FieldName(kind, share), snapshot::FieldType::kKeyword});
    }
    for (size_t r = 0; r < n; ++r) {
      in.ids.push_back({std::to_string(r), "", ""});
      std::vector<snapshot::AttrValue> row;
      const double x = u(rng);
      for (double share : kShares) row.push_back(std::string(x < share ? "yes" : "no"));
      // By cluster: the first share of the clusters pass.
      for (double share : kShares) {
        row.push_back(std::string(cluster_of[r] < std::max(1.0, share * clusters) ? "yes" : "no"));
      }
      in.attributes.push_back(std::move(row));
    }
    const auto t0 = Clock::now();
    auto v = snapshot::PublishSnapshot(root, in);
    if (!v.ok()) {
      std::cerr << v.status() << "\n";
      return 1;
    }
    std::printf("built %zu x %zu (latent %d) in %.1fs\n", n, dim, absl::GetFlag(FLAGS_latent_dim),
                std::chrono::duration<double>(Clock::now() - t0).count());
  }
  auto snap = snapshot::Snapshot::Open(root, *snapshot::ReadCurrentVersion(root),
                                       snapshot::VerifyMode::kSizes);
  if (!snap.ok()) {
    std::cerr << snap.status() << "\n";
    return 1;
  }
  const auto& searcher = (*snap)->segments().front().segment->searcher();
  const size_t ef = absl::GetFlag(FLAGS_ef);
  const size_t plain_ef = std::max<size_t>(1, ef / serving::kFilteredEfFactor);
  auto time_per_query = [&](auto search) {
    const auto t0 = Clock::now();
    for (size_t q = 0; q < nq; ++q) search(&queries[q * dim]);
    return std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / nq;
  };
  for (size_t q = 0; q < nq; ++q)
    (void)searcher.Search(&queries[q * dim], 10, plain_ef);  // page in
  const double unfiltered_us =
      time_per_query([&](const float* q) { (void)searcher.Search(q, 10, plain_ef); });
  std::printf("unfiltered graph search: %.0f us/query (ef %zu); filtered walks use ef %zu\n\n",
              unfiltered_us, plain_ef, ef);
  std::printf("%-6s %7s %9s | %12s %12s %8s | %-6s %s\n", "filter", "share", "rows", "graph us/q",
              "exact us/q", "recall", "faster", "service picks");
  for (const char* kind : {"rand", "clus"}) {
    for (double share : kShares) {
      serving::Filter f;
      serving::Condition c;
      c.field = FieldName(kind, share);
      c.values = {std::string("yes")};
      f.must.push_back(c);
      auto allowed = serving::EvaluateFilter(**snap, f);
      if (!allowed.ok()) {
        std::cerr << allowed.status() << "\n";
        return 1;
      }
      size_t hits = 0, total = 0;
      for (size_t q = 0; q < nq; ++q) {
        auto truth = searcher.SearchExact(&queries[q * dim], 10, *allowed);
        auto got = searcher.Search(&queries[q * dim], 10, ef, &*allowed);
        std::set<uint32_t> want;
        for (const auto& t : truth) want.insert(t.row);
        for (const auto& g : got) hits += want.count(g.row);
        total += want.size();
      }
      const double graph_us =
          time_per_query([&](const float* q) { (void)searcher.Search(q, 10, ef, &*allowed); });
      const double exact_us =
          time_per_query([&](const float* q) { (void)searcher.SearchExact(q, 10, *allowed); });
      std::printf("%-6s %6.1f%% %9zu | %12.0f %12.0f %8.4f | %-6s %s\n", kind, share * 100,
                  allowed->Count(), graph_us, exact_us, total ? double(hits) / total : 1.0,
                  exact_us < graph_us ? "exact" : "graph",
                  serving::ExactScanIsCheaper(allowed->Count(), n, ef) ? "exact" : "graph");
    }
  }
  return 0;
}

}  // namespace
}  // namespace imagesearch

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return imagesearch::Run();
}
