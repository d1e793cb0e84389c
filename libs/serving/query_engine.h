// Request validation and vector search against one snapshot, independent of
// gRPC. Pure functions over immutable snapshots; thread-safe.
#ifndef IMAGESEARCH_LIBS_SERVING_QUERY_ENGINE_H_
#define IMAGESEARCH_LIBS_SERVING_QUERY_ENGINE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "libs/index/row_filter.h"
#include "libs/snapshot/snapshot.h"

namespace imagesearch::serving {

inline constexpr uint32_t kDefaultTopK = 10;
inline constexpr uint32_t kMaxTopK = 1000;
inline constexpr uint32_t kMaxEf = 10000;

struct SearchParams {
  uint32_t top_k = 0;  // 0: kDefaultTopK.
  uint32_t ef = 0;     // 0: the snapshot's default_ef.
  // Row to leave out of the results ("more like this" on an indexed item).
  std::optional<uint32_t> exclude_row;
  // Rows the search may return (a filter's result); null = all.
  std::shared_ptr<const index::RowFilter> allowed;
  // Near-duplicate collapsing: drop a hit whose cosine similarity to a
  // better hit is >= dedup (0 = off; at most 1).
  float dedup = 0;
  // Brute force over the allowed rows of every segment instead of the
  // graphs: the exact top-k; ef is not used.
  bool exact = false;
};

// Filtered search walks the graph with kFilteredEfFactor times the query's
// ef: when the allowed rows sit in other regions than the query (a filter
// correlated with the data), the plain ef lost recall at 1M rows (0.86-0.92
// at 5-50% shares); 3x kept it at 0.956 or more.
inline constexpr size_t kFilteredEfFactor = 3;
size_t FilteredWalkEf(size_t ef);

// Scan the allowed rows exactly, or walk the graph? A walk that must collect
// `walk_ef` allowed rows costs about walk_ef * kGraphCostPerEf distance
// computations divided by the allowed share (allowed / rows); a scan costs
// `allowed` of them. The scan wins when
//   allowed^2 <= kGraphCostPerEf * walk_ef * rows.
// Measured (tools/bench/results/LOG.md, "Filtered search"): the crossover was near
// 10% of 100k x 256 rows and near 2% of 1M x 512 rows; kGraphCostPerEf = 4
// with the 3x walk ef puts it at about 9% and 3% there.
inline constexpr double kGraphCostPerEf = 4.0;
bool ExactScanIsCheaper(size_t allowed, size_t rows, size_t walk_ef);

// Unfiltered, in a version of several segments, a segment of at most
// kSmallSegmentScanFactor * ef rows is scanned exactly instead of walked:
// ExactScanIsCheaper with every row allowed (rows^2 <= kGraphCostPerEf * ef *
// rows). Exact, so never worse in recall. A version of one segment always
// walks its graph, as before segments.
inline constexpr size_t kSmallSegmentScanFactor = 4;

struct Hit {
  std::string id;
  std::string uri;
  std::string attributes_json;
  float distance = 0;
  float score = 0;
};

// Checks a client vector against the snapshot (dimension, finiteness, and a
// non-zero norm for cosine) and returns it prepared for search (normalised
// for cosine). INVALID_ARGUMENT says exactly what is wrong.
absl::StatusOr<std::vector<float>> PrepareQueryVector(const snapshot::Snapshot& snap,
                                                      const float* values, size_t size);

// The row of `id`. INVALID_ARGUMENT for an empty id; NOT_FOUND names the id
// (its first 64 bytes) and the version.
absl::StatusOr<uint32_t> RowOfId(const snapshot::Snapshot& snap, absl::string_view id);

// The stored vector of `id` and its row. Errors as RowOfId.
absl::StatusOr<std::pair<std::vector<float>, uint32_t>> VectorOfId(const snapshot::Snapshot& snap,
                                                                   absl::string_view id);

// INVALID_ARGUMENT if top_k or ef is out of range.
absl::Status ValidateSearchParams(const SearchParams& params);

// Validates params (top_k, ef, dedup ranges) and searches. `query` is
// prepared. With params.dedup, `collapsed` (if set) gets the number of hits
// dropped as near-duplicates.
absl::StatusOr<std::vector<Hit>> SearchSnapshot(const snapshot::Snapshot& snap,
                                                const std::vector<float>& query,
                                                const SearchParams& params,
                                                uint32_t* collapsed = nullptr);

}  // namespace imagesearch::serving

#endif  // IMAGESEARCH_LIBS_SERVING_QUERY_ENGINE_H_
