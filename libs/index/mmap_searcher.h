// A read-only HNSW searcher over a memory-mapped hnswlib graph file.
//
// Why: hnswlib's loadIndex copies the whole graph into the heap (seconds per
// GB, one private copy per replica). This searcher maps graph.hnsw and its
// graph.offsets sidecar read-only, so opening is O(1) in the index size,
// replicas on one host share the page cache, and a version swap is an mmap.
//
// It runs hnswlib's own searchKnn algorithm with hnswlib's distance kernels,
// so on the same file and ef it returns the same top-k as hnswlib (tested).
// Unlike hnswlib, ef is a per-query argument.
//
// With a graph.f16 file (half_vectors.h), once ef results are held it reads
// a candidate's half vector first and reads its float vector only when the
// half distance, widened by the file's error bound, could beat the ef-th
// result. The skipped candidates are exactly ones hnswlib rejects, so the
// answers are unchanged; about half as many bytes are read.
//
// Thread-safety: immutable after Open; any number of threads may call Search
// concurrently without locks (scratch space is thread-local).
#ifndef IMAGESEARCH_LIBS_INDEX_MMAP_SEARCHER_H_
#define IMAGESEARCH_LIBS_INDEX_MMAP_SEARCHER_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "libs/common/file_util.h"
#include "libs/index/graph_format.h"
#include "libs/index/half_vectors.h"
#include "libs/index/metric.h"
#include "libs/index/row_filter.h"

namespace imagesearch::index {

struct Neighbor {
  float distance;
  uint32_t row;  // The hnswlib label, which is our dense row number.
};

// The k nearest of the rows offered, ties broken by row: a max-heap of at
// most k, so memory is O(k) however many rows are offered.
class NearestK {
 public:
  explicit NearestK(size_t k) : k_(k) { best_.reserve(k); }
  void Offer(const Neighbor& n) {
    if (best_.size() < k_) {
      best_.push_back(n);
      std::push_heap(best_.begin(), best_.end(), Closer);
    } else if (k_ > 0 && Closer(n, best_.front())) {
      std::pop_heap(best_.begin(), best_.end(), Closer);
      best_.back() = n;
      std::push_heap(best_.begin(), best_.end(), Closer);
    }
  }
  bool full() const { return best_.size() == k_; }
  // The farthest held. REQUIRES: at least one row held.
  const Neighbor& farthest() const { return best_.front(); }
  // The rows held, nearest first; the collector is left empty.
  std::vector<Neighbor> TakeSorted() {
    std::sort_heap(best_.begin(), best_.end(), Closer);
    return std::move(best_);
  }

 private:
  static bool Closer(const Neighbor& a, const Neighbor& b) {
    return a.distance < b.distance || (a.distance == b.distance && a.row < b.row);
  }
  size_t k_;
  std::vector<Neighbor> best_;
};

class MmapHnswSearcher {
 public:
  // Maps and validates `graph_path` (hnswlib format, float vectors of `dim`)
  // and `offsets_path`. `expected_count` must match the graph's element count.
  // `half_path`, if not empty, is the graph's graph.f16 (checked against it).
  static absl::StatusOr<std::unique_ptr<MmapHnswSearcher>> Open(const std::string& graph_path,
                                                                const std::string& offsets_path,
                                                                size_t dim, Metric metric,
                                                                uint64_t expected_count,
                                                                const std::string& half_path = "");

  // Returns up to k nearest rows, nearest first. `query` has dim() floats and
  // is already prepared (unit norm for cosine). ef < k is raised to k.
  //
  // With `allowed`, only allowed rows are returned, but every row still
  // guides the walk (hnswlib's filtered searchKnn): the search goes on until
  // it holds ef allowed rows or runs out of candidates, so a selective filter
  // visits more of the graph. Very selective filters are better served by
  // SearchExact.
  //
  // `row_offset`: this graph is one segment of a larger row space, and row r
  // here is row row_offset + r of `allowed`. Results carry this graph's rows.
  //
  // `bound`: the caller already holds k rows at least this near (the other
  // segments' best, say), so a row at `bound` or farther is of no use to it.
  // The walk first finds this graph's own best ef/4 rows (at least one) as
  // usual; from then on it takes no candidate farther than both `bound` and
  // the worst of those rows, and stops once the nearest candidate left is
  // that far (as Lucene's multi-segment collector bounds each segment's walk
  // by the hits of the segments searched before it). A graph with nothing
  // inside `bound` costs about a walk for its few best rows; results may be
  // fewer than k. The default (infinity) is the plain search above.
  std::vector<Neighbor> Search(const float* query, size_t k, size_t ef,
                               const RowFilter* allowed = nullptr, size_t row_offset = 0,
                               float bound = std::numeric_limits<float>::infinity()) const;

  // Exact top-k over the allowed rows only (brute force, one distance per
  // allowed row of this graph). `row_offset` as for Search.
  std::vector<Neighbor> SearchExact(const float* query, size_t k, const RowFilter& allowed,
                                    size_t row_offset = 0) const;

  // The stored (prepared) vector of `row`. REQUIRES: row < size().
  const float* Vector(uint32_t row) const;
  // The graph's distance between two prepared vectors of dim() floats.
  float Distance(const float* a, const float* b) const { return dist_(a, b, &dim_param_); }

  size_t size() const { return header_.count; }
  size_t dim() const { return dim_; }
  Metric metric() const { return metric_; }
  const HnswHeader& header() const { return header_; }
  // Whether searches read graph.f16 first (a file was given and the CPU has
  // AVX2 and F16C).
  bool uses_half_vectors() const { return half_dist_ != nullptr; }

 private:
  friend class JointGraph;
  MmapHnswSearcher() = default;
  const char* Element(uint32_t internal_id) const {
    return level0_ + static_cast<size_t>(internal_id) * header_.size_data_per_element;
  }
  // Upper-level link list of `id` at `level` >= 1, or nullptr if the element
  // has no such level or the sidecar is inconsistent.
  const uint32_t* UpperLinks(uint32_t id, int level) const;
  // hnswlib's greedy descent from the entry point to level 1: the level-0
  // entry for `query` and its distance.
  void Descend(const float* query, uint32_t* entry, float* entry_dist) const;

  std::unique_ptr<MappedFile> graph_;
  std::unique_ptr<MappedFile> offsets_;
  HnswHeader header_{};
  const char* level0_ = nullptr;
  const char* internal_of_row_ = nullptr;
  size_t dim_ = 0;
  size_t dim_param_ = 0;  // hnswlib kernels read the dimension through a pointer.
  Metric metric_ = Metric::kCosine;
  DistanceFn dist_ = nullptr;
  std::unique_ptr<HalfVectors> half_;
  HalfDistanceFn half_dist_ = nullptr;
};

// Memory for arrays of a few MiB and more that are built again and again
// (a joint graph's, at every change of a version's tails): from 2 MiB up on
// transparent huge pages (madvise), so that filling them takes a page fault
// per 2 MiB rather than per 4 KiB (a third of a join's time on a
// paravirtualised VM). Throws std::bad_alloc.
void* AllocateArray(size_t bytes);
void FreeArray(void* p);
template <typename T>
struct ArrayAllocator {
  using value_type = T;
  ArrayAllocator() = default;
  template <typename U>
  ArrayAllocator(const ArrayAllocator<U>&) {}  // NOLINT(google-explicit-constructor)
  T* allocate(size_t n) { return static_cast<T*>(AllocateArray(n * sizeof(T))); }
  void deallocate(T* p, size_t) { FreeArray(p); }
  template <typename U>
  bool operator==(const ArrayAllocator<U>&) const {
    return true;
  }
  template <typename U>
  bool operator!=(const ArrayAllocator<U>&) const {
    return false;
  }
};
using LargeIdArray = std::vector<uint32_t, ArrayAllocator<uint32_t>>;

// Graphs walked as one: a segmented snapshot's big segment and the tails
// beside it (the merge policy's ladder of tails, and those joined while a
// fold runs), whose rows were never inserted into the big graph. Each tail
// row is linked to rows of the big graph near it (NearestRows, when the row
// was first linked), and
// each big row to the tail rows that chose it, so that one best-first walk,
// entered by the big graph's descent, crosses into a tail where its rows
// are near and back, as in a graph built over all of them. Searching the
// graphs one after the other costs a descent and walk each (0.7-0.8x of one
// graph's QPS at equal recall at 1M x 512 for two); the joint walk costs
// about one.
//
// Immutable after Join; the searchers must outlive it.
class JointGraph {
 public:
  static constexpr uint32_t kNoRow = 0xFFFFFFFFu;
  struct Tail {
    const MmapHnswSearcher* graph = nullptr;
    const uint32_t* links =
        nullptr;  // Per tail row, `per_row` rows of the big graph (kNoRow: none).
    size_t per_row = 0;
    // Optional, for Join's `previous`: what names this tail's graph and
    // links (0: nothing), and a tail whose graph this one's extends: its
    // first `extends_rows` rows are that tail's, the same elements with the
    // same links.
    uint64_t key = 0;
    uint64_t extends_key = 0;
    size_t extends_rows = 0;
  };
  // Links out of range are dropped. Costs O(big.size() + the tails' links).
  // `big_key` names the big graph (0: nothing). With `previous`, a join of
  // the same big graph (by key), a tail it holds by key, or the rows a tail
  // extends, take its element links as they are instead of mapping each
  // link's row to an element again (a random read of the big graph's
  // offsets a link: 10-20% of a join at 1M rows, the rest being the arrays'
  // fill and the inverse links, which every join builds anew).
  static std::unique_ptr<JointGraph> Join(const MmapHnswSearcher& big,
                                          const std::vector<Tail>& tails, uint64_t big_key = 0,
                                          const JointGraph* previous = nullptr);

  // As MmapHnswSearcher::Search over all the graphs: up to k nearest rows,
  // nearest first. Rows are one space, the big graph's rows from
  // `big_offset` and tail i's from `tail_offsets[i]` (a version's row
  // numbers); `allowed`, if not null, is over that space (deleted or
  // filtered rows guide the walk but are never returned).
  std::vector<Neighbor> Search(const float* query, size_t k, size_t ef, const RowFilter* allowed,
                               size_t big_offset, const std::vector<size_t>& tail_offsets) const;

  const MmapHnswSearcher& big() const { return *big_; }
  size_t tails() const { return tails_.size(); }

 private:
  // One tail: its joint ids are first .. first + graph->size() - 1, and
  // its element j's links into the big graph are to_big[j * per ..], in
  // internal ids (hnswlib's order, not rows; kNoRow: none).
  struct Part {
    const MmapHnswSearcher* graph = nullptr;
    size_t index = 0;  // Its place in Join's `tails` (and Search's `tail_offsets`).
    uint32_t first = 0;
    uint32_t per = 0;
    uint64_t key = 0;  // Tail::key
    LargeIdArray to_big;
  };
  JointGraph() = default;
  // The tail holding joint id `id` (>= the big graph's size).
  const Part& PartOf(uint32_t id) const {
    size_t i = tails_.size() - 1;
    while (i > 0 && id < tails_[i].first) --i;
    return tails_[i];
  }
  const MmapHnswSearcher* big_ = nullptr;
  uint64_t big_key_ = 0;
  std::vector<Part> tails_;
  uint32_t count_ = 0;  // Joint ids: the big graph's, then each tail's.
  // Big element i's links into the tails, as joint ids, at
  // big_to_tail_[big_begin_[i] .. big_begin_[i + 1]).
  LargeIdArray big_begin_;
  LargeIdArray big_to_tail_;
};

// For each of `count` prepared vectors (`dim` floats each, one after the
// other), `per_row` rows of `graph` near it, chosen as HNSW chooses a node's
// neighbours: from its nearest (searched with `ef`, at least per_row; as
// many as ef, up to 2 x per_row), nearest first, each kept unless it is
// nearer to a row already kept than to the vector; then the free slots
// filled with the nearest of those skipped, in order (hnswlib's
// keepPrunedConnections; JointGraph::kNoRow where the graph has fewer rows).
// On `threads` threads: the links of a tail to its big segment, row by row.
std::vector<uint32_t> NearestRows(const MmapHnswSearcher& graph, const float* vectors, size_t count,
                                  size_t dim, size_t per_row, size_t ef, int threads);

}  // namespace imagesearch::index

#endif  // IMAGESEARCH_LIBS_INDEX_MMAP_SEARCHER_H_
