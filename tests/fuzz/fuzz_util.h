// Helpers shared by the libFuzzer targets in tests/fuzz (not production code).
#ifndef IMAGESEARCH_TESTS_FUZZ_FUZZ_UTIL_H_
#define IMAGESEARCH_TESTS_FUZZ_FUZZ_UTIL_H_

#include <stdlib.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "libs/serving/metrics.h"
#include "libs/serving/query_core.h"
#include "libs/serving/snapshot_manager.h"
#include "libs/snapshot/snapshot.h"
#include "libs/snapshot/test_snapshots.h"

namespace imagesearch::fuzz {

// Crash (so libFuzzer reports it) when an invariant the fuzzer checks fails.
#define FUZZ_CHECK(cond)                                                                  \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "FUZZ_CHECK failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)

// The snapshot's file contents in the fuzz input: one file after another in
// this order, separated by kFileSeparator. Missing parts are not written.
inline constexpr std::string_view kFileSeparator = "\n#ISFUZZ-FILE#\n";
inline const std::vector<std::string>& SnapshotFileOrder() {
  static const auto* order =
      new std::vector<std::string>{"MANIFEST.json", "ids.bin",   "graph.offsets", "graph.hnsw",
                                   "thumbs.bin",    "attrs.bin", "graph.f16"};
  return *order;
}

inline std::vector<std::string_view> SplitFiles(std::string_view data) {
  std::vector<std::string_view> parts;
  while (parts.size() + 1 < SnapshotFileOrder().size()) {
    const size_t at = data.find(kFileSeparator);
    if (at == std::string_view::npos) break;
    parts.push_back(data.substr(0, at));
    data.remove_prefix(at + kFileSeparator.size());
  }
  parts.push_back(data);
  return parts;
}

// A small real snapshot for the query targets: 64 rows of dimension 8
// (cosine), ids "item0".."item63", attribute columns for filters, and
// thumbnails. Vector-only: image and text queries must be refused with
// FAILED_PRECONDITION.
inline constexpr int kQueryDim = 8;
inline constexpr size_t kQueryRows = 64;

inline snapshot::SyntheticCorpus QueryCorpus() {
  snapshot::SyntheticCorpus c =
      snapshot::MakeSyntheticCorpus(kQueryRows, kQueryDim, index::Metric::kCosine, "item", 7, 4);
  c.input.schema =
      *snapshot::ParseSchema("tag:keyword,year:integer,price:float,safe:boolean,when:timestamp");
  const char* tags[] = {"red", "green", "blue", "ünï"};
  for (size_t r = 0; r < kQueryRows; ++r) {
    std::vector<snapshot::AttrValue> row(5);
    row[0] = std::string(tags[r % 4]);
    row[1] = int64_t{2000 + static_cast<int64_t>(r % 9)};
    if (r % 5 != 0) row[2] = static_cast<double>(r) / 4;
    row[3] = r % 2 == 0;
    row[4] = int64_t{1700000000 + static_cast<int64_t>(r) * 86400};
    c.input.attributes.push_back(std::move(row));
    c.input.thumbnails.push_back(r % 3 == 0 ? "" : "jpeg" + std::to_string(r));
  }
  return c;
}

// The query core over QueryCorpus(), built once per process.
struct QueryWorld {
  QueryWorld() : metrics("fuzz") {
    const std::string root = snapshot::TempSnapshotRoot("fuzzq");
    FUZZ_CHECK(!root.empty());
    snapshot::SyntheticCorpus c = QueryCorpus();
    FUZZ_CHECK(snapshot::PublishSnapshot(root, c.WithGraph()).ok());
    serving::SnapshotManagerOptions mo;
    mo.root = root;
    manager = std::make_unique<serving::SnapshotManager>(mo);
    FUZZ_CHECK(manager->PollOnce().ok());
    core =
        std::make_unique<serving::QueryCore>(manager.get(), &metrics, serving::QueryCoreOptions{});
  }
  serving::Metrics metrics;
  std::unique_ptr<serving::SnapshotManager> manager;
  std::unique_ptr<serving::QueryCore> core;
};

inline QueryWorld& World() {
  static QueryWorld* world = new QueryWorld();
  return *world;
}

// Core answers that a vector-only snapshot allows for a query of `kind`.
inline void CheckAnswer(serving::Query::Kind kind, const absl::Status& s) {
  using K = serving::Query::Kind;
  if (kind == K::kImage || kind == K::kText) {
    // No model: never OK, and refused precisely (bad request or no model).
    FUZZ_CHECK(absl::IsInvalidArgument(s) || absl::IsFailedPrecondition(s));
  }
  if (kind == K::kNone) FUZZ_CHECK(absl::IsInvalidArgument(s));
  FUZZ_CHECK(s.ok() || absl::IsInvalidArgument(s) || absl::IsNotFound(s) ||
             absl::IsFailedPrecondition(s));
  FUZZ_CHECK(s.ok() || !s.message().empty());
}

}  // namespace imagesearch::fuzz

#endif  // IMAGESEARCH_TESTS_FUZZ_FUZZ_UTIL_H_
