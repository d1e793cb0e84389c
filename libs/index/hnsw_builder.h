// Builds HNSW graphs with hnswlib and writes them in hnswlib's own saveIndex
// format (see graph_format.md), plus the `graph.offsets` sidecar that lets the
// mmap searcher find upper-level link lists without scanning the file.
//
// This is the index adapter: hnsw_adapter.cc is the only file that includes
// hnswlib, and it turns hnswlib's exceptions into absl::Status.
#ifndef IMAGESEARCH_LIBS_INDEX_HNSW_BUILDER_H_
#define IMAGESEARCH_LIBS_INDEX_HNSW_BUILDER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "libs/index/metric.h"

namespace imagesearch::index {

struct HnswParams {
  int m = 16;                 // Max links per node on upper levels (2*m on level 0).
  int ef_construction = 200;  // Build-time search breadth.
  uint64_t seed = 100;        // Level generator seed.
  int threads = 0;            // Insert threads; 0 = all cores.
};

// INVALID_ARGUMENT unless 2 <= m <= 1000, ef_construction >= 1, threads >= 0.
absl::Status ValidateHnswParams(const HnswParams& params);

// Writes the HNSW graph of `count` row-major float vectors of `dim` to
// `graph_path` (hnswlib format) and its offsets sidecar to `offsets_path`.
// Row i gets label i. For kCosine the vectors are normalised first; a zero or
// non-finite vector is INVALID_ARGUMENT naming its row.
absl::Status BuildHnswGraph(const float* vectors, size_t count, size_t dim, Metric metric,
                            const HnswParams& params, const std::string& graph_path,
                            const std::string& offsets_path);

// Writes a snapshot's graph files: the hnswlib graph at `graph_path` and its
// offsets sidecar at `offsets_path` (see graph_format.md). The snapshot store
// publishes what a GraphWriter wrote; graphs are built only here, in libs/index.
using GraphWriter =
    std::function<absl::Status(const std::string& graph_path, const std::string& offsets_path)>;

// A GraphWriter that runs BuildHnswGraph on `vectors` (count x dim,
// row-major), which must stay alive until it is called.
GraphWriter HnswGraphWriter(const float* vectors, size_t count, size_t dim, Metric metric,
                            const HnswParams& params);

// Builds a graph incrementally, as vectors stream in (the indexer inserts
// each encoded batch while the next one is being encoded). Add() may be
// called from one thread at a time; it inserts a batch with params.threads
// threads. Labels must end up exactly 0..count-1, in any order.
// Rows whose vectors are near-duplicates of each other (see
// HnswStreamBuilder::FindNearDuplicates).
struct DuplicateGroup {
  std::vector<uint64_t> rows;   // ascending
  float min_similarity = 1.0f;  // lowest cosine similarity of a member to the group's leader
};

class HnswStreamBuilder {
 public:
  static absl::StatusOr<std::unique_ptr<HnswStreamBuilder>> Create(size_t dim, Metric metric,
                                                                   const HnswParams& params,
                                                                   size_t initial_capacity);
  // Starts from the graph in `graph_path` (hnswlib format, labels 0..n-1,
  // built with `metric`), loaded into memory with room for `extra` more rows:
  // Add() then inserts rows n, n+1, ... into it. The graph keeps its own M
  // and efConstruction; params.threads and params.seed apply.
  static absl::StatusOr<std::unique_ptr<HnswStreamBuilder>> Extend(const std::string& graph_path,
                                                                   size_t dim, Metric metric,
                                                                   const HnswParams& params,
                                                                   size_t extra);
  virtual ~HnswStreamBuilder() = default;
  // Inserts `count` row-major vectors with labels first_label, first_label+1,
  // ... Normalises for kCosine; a zero or non-finite vector is
  // INVALID_ARGUMENT naming its label. Grows the capacity as needed.
  virtual absl::Status Add(const float* vectors, size_t count, uint64_t first_label) = 0;
  virtual size_t size() const = 0;
  // Writes graph.hnsw and graph.offsets (see BuildHnswGraph).
  virtual absl::Status Save(const std::string& graph_path, const std::string& offsets_path) = 0;
  // Near-duplicate groups: in row order, each row not yet grouped leads a
  // group of its `neighbors` nearest rows (in the graph built so far) whose
  // cosine similarity to it is >= min_similarity and that are not grouped
  // yet. Every member is that close to its leader (no chaining). Groups of
  // one are left out.
  virtual absl::StatusOr<std::vector<DuplicateGroup>> FindNearDuplicates(double min_similarity,
                                                                         size_t neighbors) = 0;
};

// A GraphWriter that extends the graph in `base_graph_path` (its rows
// 0..n-1 stay as they are, links included, except where new rows link in) with
// `count` more rows labelled n, n+1, ...: a merge into a big segment costs
// inserting the small ones' rows, not rebuilding the big one. `vectors` must
// stay alive until it is called.
// DATA_LOSS unless that graph holds exactly `base_rows` elements.
GraphWriter HnswExtendGraphWriter(const std::string& base_graph_path, size_t base_rows,
                                  const float* vectors, size_t count, size_t dim, Metric metric,
                                  const HnswParams& params);

// Writes the offsets sidecar for an existing hnswlib graph file: for each
// internal id, the u64 byte offset of its upper-level link block size field;
// then for each row (label), its u32 internal id. Fails if the file is not a
// well-formed hnswlib graph of `dim` whose labels are the rows 0..count-1.
absl::Status WriteGraphOffsets(const std::string& graph_path, size_t dim,
                               const std::string& offsets_path);

// hnswlib itself, loaded with loadIndex (heap copy). Used as the reference in
// tests and benchmarks; the service never uses it.
class HnswlibIndex {
 public:
  static absl::StatusOr<std::unique_ptr<HnswlibIndex>> Load(const std::string& graph_path,
                                                            size_t dim, Metric metric);
  virtual ~HnswlibIndex() = default;
  // hnswlib's searchKnn with global ef: returns (distance, label) nearest first.
  virtual std::vector<std::pair<float, uint64_t>> Search(const float* query, size_t k) const = 0;
  virtual void SetEf(size_t ef) = 0;
};

}  // namespace imagesearch::index

#endif  // IMAGESEARCH_LIBS_INDEX_HNSW_BUILDER_H_
