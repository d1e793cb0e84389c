// What a numeric filter costs to evaluate: serving::EvaluateFilter on an
// integer, timestamp and float column (ranges that select 0.1% to 50% of the
// rows, and an integer `in`), which uses the column's rows in value order,
// against a scan of the column (every row's value read and compared: the
// work filter.cc does for an attribute table without an order section). Both
// side by side in one run, on one snapshot.
//
// The snapshot is N rows of 2-dimensional vectors (the graph is not what is
// measured) with "year" integer 0..999, "at" timestamp and "price" float
// 0..1000, uniform at random; it lives in a temporary directory.
//
//   imagesearch_range_filter_bench [--n=200000 --reps=50]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "libs/index/hnsw_builder.h"
#include "libs/index/row_filter.h"
#include "libs/serving/filter.h"
#include "libs/snapshot/attribute_table.h"
#include "libs/snapshot/snapshot.h"
#include "libs/snapshot/snapshot_store.h"

ABSL_FLAG(int, n, 200000, "Rows.");
ABSL_FLAG(int, reps, 50, "Evaluations per filter and side; the median counts.");

namespace imagesearch {
namespace {

double MedianMicros(int reps, const std::function<size_t()>& run, size_t* rows) {
  std::vector<double> us;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    *rows = run();
    us.push_back(
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

int Main() {
  const size_t n = static_cast<size_t>(std::max(1, absl::GetFlag(FLAGS_n)));
  const int reps = std::max(1, absl::GetFlag(FLAGS_reps));
  const std::string root =
      (std::filesystem::temp_directory_path() / absl::StrCat("range_filter_bench_", ::getpid()))
          .string();
  std::mt19937_64 rng(7);
  std::vector<float> vectors(n * 2);
  for (float& v : vectors) v = std::uniform_real_distribution<float>(-1, 1)(rng);
  snapshot::SnapshotInput in;
  in.count = n;
  in.dim = 2;
  in.metric = index::Metric::kL2;
  in.hnsw.m = 4;
  in.hnsw.ef_construction = 8;
  in.schema = *snapshot::ParseSchema("year:integer,at:timestamp,price:float");
  for (size_t r = 0; r < n; ++r) {
    in.ids.push_back({absl::StrCat("r", r), "", ""});
    const int64_t year = std::uniform_int_distribution<int64_t>(0, 999)(rng);
    in.attributes.push_back({year, int64_t{1'700'000'000} + year * 3600,
                             std::uniform_real_distribution<double>(0, 1000)(rng)});
  }
  in.graph = index::HnswGraphWriter(vectors.data(), n, 2, in.metric, in.hnsw);
  if (auto v = snapshot::PublishSnapshot(root, in); !v.ok()) {
    std::fprintf(stderr, "%s\n", v.status().ToString().c_str());
    return 1;
  }
  auto opened = snapshot::Snapshot::Open(root, 1, snapshot::VerifyMode::kSizes);
  if (!opened.ok()) {
    std::fprintf(stderr, "%s\n", opened.status().ToString().c_str());
    return 1;
  }
  const snapshot::Snapshot& snap = **opened;
  const snapshot::AttributeTable& table = *snap.segments()[0].segment->attributes();

  std::printf(
      "%zu rows; EvaluateFilter (rows in value order) against a scan of the column; "
      "median of %d\n",
      n, reps);
  std::printf("%-34s %9s | %12s %12s %8s\n", "filter", "rows", "ordered us", "scan us", "scan/ord");
  struct Case {
    std::string name;
    serving::Condition condition;
    std::function<bool(uint32_t)> scan_test;  // The old path's test of one row.
  };
  std::vector<Case> cases;
  using Kind = serving::Condition::Kind;
  for (int64_t hi : {0, 9, 99, 499}) {  // 0.1%, 1%, 10%, 50%
    serving::Condition c;
    c.kind = Kind::kRange;
    c.field = "year";
    c.gte = int64_t{0};
    c.lte = hi;
    cases.push_back({absl::StrCat("integer range year <= ", hi), c, [&table, hi](uint32_t r) {
                       const int64_t x = table.IntegerAt(0, r);
                       return x != snapshot::kAbsentInteger && x >= 0 && x <= hi;
                     }});
  }
  {
    serving::Condition c;
    c.kind = Kind::kRange;
    c.field = "at";
    c.gte = std::string("2023-11-14T22:13:20Z");  // year 0
    c.lt = std::string("2023-11-15T08:13:20Z");   // year 10
    cases.push_back({"timestamp range (10 hours)", c, [&table](uint32_t r) {
                       const int64_t x = table.IntegerAt(1, r);
                       return x >= 1'700'000'000 && x < 1'700'036'000;
                     }});
  }
  for (double hi : {1.0, 100.0}) {
    serving::Condition c;
    c.kind = Kind::kRange;
    c.field = "price";
    c.lt = hi;
    cases.push_back({absl::StrCat("float range price < ", hi), c, [&table, hi](uint32_t r) {
                       const double x = table.FloatAt(2, r);
                       return !std::isnan(x) && x < hi;
                     }});
  }
  {
    serving::Condition c;
    c.kind = Kind::kIn;
    c.field = "year";
    c.values = {int64_t{3}, int64_t{500}, int64_t{998}};
    cases.push_back({"integer in (3 values)", c, [&table](uint32_t r) {
                       const int64_t x = table.IntegerAt(0, r);
                       return x == 3 || x == 500 || x == 998;
                     }});
  }
  int mismatches = 0;
  for (const Case& k : cases) {
    serving::Filter f;
    f.must = {k.condition};
    size_t ordered_rows = 0, scan_rows = 0;
    const double ordered = MedianMicros(
        reps,
        [&] {
          auto allowed = serving::EvaluateFilter(snap, f);
          return allowed.ok() ? allowed->Count() : size_t{0};
        },
        &ordered_rows);
    const double scan = MedianMicros(
        reps,
        [&] {
          index::RowFilter out(n);
          for (uint32_t r = 0; r < n; ++r) {
            if (k.scan_test(r)) out.Allow(r);
          }
          return out.Count();
        },
        &scan_rows);
    if (ordered_rows != scan_rows) ++mismatches;
    std::printf("%-34s %9zu | %12.1f %12.1f %7.1fx%s\n", k.name.c_str(), ordered_rows, ordered,
                scan, scan / ordered, ordered_rows == scan_rows ? "" : "  ROWS DIFFER");
  }
  std::filesystem::remove_all(root);
  return mismatches == 0 ? 0 : 1;
}

}  // namespace
}  // namespace imagesearch

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return imagesearch::Main();
}
