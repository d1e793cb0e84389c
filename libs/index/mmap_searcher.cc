#include "libs/index/mmap_searcher.h"

#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <queue>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "libs/common/status_macros.h"

namespace imagesearch::index {
namespace {

// Same ordering as hnswlib's CompareByFirst: only the distance counts, so the
// heaps pop ties in the same order as hnswlib's.
struct CompareByFirst {
  bool operator()(const std::pair<float, uint32_t>& a, const std::pair<float, uint32_t>& b) const {
    return a.first < b.first;
  }
};
using Heap = std::priority_queue<std::pair<float, uint32_t>,
                                 std::vector<std::pair<float, uint32_t>>, CompareByFirst>;

// Per-thread visited marks, reused across queries and snapshots: a query bumps
// the tag instead of clearing the array.
struct VisitedList {
  std::vector<uint16_t> marks;
  uint16_t tag = 0;

  uint16_t Begin(size_t n) {
    if (marks.size() < n) marks.assign(n, 0), tag = 0;
    if (++tag == 0) {
      std::fill(marks.begin(), marks.end(), 0);
      tag = 1;
    }
    return tag;
  }
};

thread_local VisitedList tls_visited;

// The walks' heap storage, kept per thread between queries: once a thread has
// served a query as wide, a query's heaps take no allocation (growing by
// doubling, they took about twenty a query at ef 32, and as many frees).
// Storage past kMaxPooledHeap entries (a very wide ef) is freed, not kept.
constexpr size_t kMaxPooledHeap = 1 << 16;
struct HeapStorage {
  std::vector<std::pair<float, uint32_t>> top, candidates, own;
};
thread_local HeapStorage tls_heaps;

// A Heap on `*pool`'s storage, emptied; the storage goes back to `*pool` when
// the heap goes, if it grew (and stays under kMaxPooledHeap). Walks on one
// thread run one after the other (they share tls_visited too).
class PooledHeap : public Heap {
 public:
  explicit PooledHeap(std::vector<std::pair<float, uint32_t>>* pool) : pool_(pool) {
    c.swap(*pool_);
    c.clear();
  }
  ~PooledHeap() {
    if (c.capacity() > pool_->capacity() && c.capacity() <= kMaxPooledHeap) c.swap(*pool_);
  }
  PooledHeap(const PooledHeap&) = delete;
  PooledHeap& operator=(const PooledHeap&) = delete;

 private:
  std::vector<std::pair<float, uint32_t>>* pool_;
};

// Neighbours expanded per prefetch pass (a level-0 list holds 2M, 32 for M 16).
constexpr size_t kExpandChunk = 64;

inline uint16_t ListCount(const uint32_t* list) {
  uint16_t n;
  std::memcpy(&n, list, sizeof(n));
  return n;
}

// Enters a level-0 walk at `entry` (hnswlib's searchBaseLayerST start): a
// candidate, and a result if `admit` takes it. Returns the walk's first
// lower bound (the result's distance, or the float maximum).
template <typename Admit>
float EnterWalk(uint32_t entry, float distance, Admit admit, uint16_t tag, uint16_t* marks,
                Heap* top, Heap* candidates) {
  float lower_bound = std::numeric_limits<float>::max();
  if (admit(entry)) {
    top->emplace(distance, entry);
    lower_bound = distance;
  }
  candidates->emplace(-distance, entry);
  marks[entry] = tag;
  return lower_bound;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MmapHnswSearcher>> MmapHnswSearcher::Open(
    const std::string& graph_path, const std::string& offsets_path, size_t dim, Metric metric,
    uint64_t expected_count, const std::string& half_path) {
  std::unique_ptr<MmapHnswSearcher> s(new MmapHnswSearcher());
  ASSIGN_OR_RETURN(s->graph_, MappedFile::Open(graph_path, MappedFile::Access::kRandomWhole));
  ASSIGN_OR_RETURN(s->header_, ParseHnswHeader(s->graph_->data(), s->graph_->size(), dim));
  if (s->header_.count != expected_count) {
    return absl::InvalidArgumentError(absl::StrCat(
        "graph holds ", s->header_.count, " elements but the manifest says ", expected_count));
  }
  ASSIGN_OR_RETURN(s->offsets_, MappedFile::Open(offsets_path, MappedFile::Access::kRandomWhole));
  const uint64_t want = s->header_.count * (sizeof(uint64_t) + sizeof(uint32_t));
  if (s->offsets_->size() != want) {
    return absl::DataLossError(
        absl::StrCat("graph offsets file is ", s->offsets_->size(), " bytes, expected ", want));
  }
  s->internal_of_row_ = s->offsets_->data() + s->header_.count * sizeof(uint64_t);
  s->level0_ = s->graph_->data() + kHnswHeaderSize;
  s->dim_ = dim;
  s->dim_param_ = dim;
  s->metric_ = metric;
  s->dist_ = GetDistanceFn(metric, dim);
  if (!half_path.empty()) {
    ASSIGN_OR_RETURN(s->half_, HalfVectors::Open(half_path, s->header_.count, dim, metric));
    // An infinite bound (a vector beyond binary16's range) never skips.
    if (std::isfinite(s->half_->bound())) s->half_dist_ = GetHalfDistanceFn(metric);
  }
  return s;
}

const float* MmapHnswSearcher::Vector(uint32_t row) const {
  // Parallel inserts give internal ids in arrival order; the sidecar maps back.
  uint32_t id;
  std::memcpy(&id, internal_of_row_ + static_cast<size_t>(row) * sizeof(uint32_t), sizeof(id));
  if (id >= header_.count) id = 0;  // Corrupt sidecar; never read out of bounds.
  return reinterpret_cast<const float*>(Element(id) + header_.offset_data);
}

const uint32_t* MmapHnswSearcher::UpperLinks(uint32_t id, int level) const {
  uint64_t off;
  std::memcpy(&off, offsets_->data() + static_cast<size_t>(id) * sizeof(uint64_t), sizeof(off));
  const uint64_t per_level = header_.size_links_per_element();
  if (off < header_.upper_begin() || off + 4 > graph_->size()) return nullptr;
  uint32_t bytes;
  std::memcpy(&bytes, graph_->data() + off, 4);
  if (static_cast<uint64_t>(level) * per_level > bytes) return nullptr;
  if (off + 4 + bytes > graph_->size()) return nullptr;
  return reinterpret_cast<const uint32_t*>(graph_->data() + off + 4 + (level - 1) * per_level);
}

std::vector<Neighbor> MmapHnswSearcher::SearchExact(const float* query, size_t k,
                                                    const RowFilter& allowed,
                                                    size_t row_offset) const {
  NearestK best(k);  // O(k) memory: an `exact` query scans every row.
  const void* param = &dim_param_;
  const size_t end = row_offset + header_.count;
  allowed.ForEachIn(row_offset, end, [&](uint32_t global) {
    const uint32_t row = static_cast<uint32_t>(global - row_offset);
    best.Offer(Neighbor{dist_(query, Vector(row), param), row});
  });
  return best.TakeSorted();
}

// Greedy descent through the upper levels (hnswlib searchKnn).
void MmapHnswSearcher::Descend(const float* query, uint32_t* entry, float* entry_dist) const {
  const void* param = &dim_param_;
  const uint32_t count = static_cast<uint32_t>(header_.count);
  uint32_t cur = header_.enterpoint;
  float cur_dist = dist_(query, Element(cur) + header_.offset_data, param);
  for (int level = header_.max_level; level > 0; --level) {
    bool changed = true;
    while (changed) {
      changed = false;
      const uint32_t* list = UpperLinks(cur, level);
      if (list == nullptr) break;
      const uint16_t size = ListCount(list);
      if (size > header_.max_m) break;  // Corrupt list: stop descending here.
      const uint32_t* links = list + 1;
      for (uint16_t i = 0; i < size; ++i) {
        const uint32_t cand = links[i];
        if (cand >= count) continue;
        const float d = dist_(query, Element(cand) + header_.offset_data, param);
        if (d < cur_dist) {
          cur_dist = d;
          cur = cand;
          changed = true;
        }
      }
    }
  }
  *entry = cur;
  *entry_dist = cur_dist;
}

// A bounded walk first finds ef / kOwnBestDivisor (at least 1) rows of its own.
constexpr size_t kOwnBestDivisor = 4;

std::vector<Neighbor> MmapHnswSearcher::Search(const float* query, size_t k, size_t ef,
                                               const RowFilter* allowed, size_t row_offset,
                                               float bound) const {
  std::vector<Neighbor> result;
  const uint32_t count = static_cast<uint32_t>(header_.count);
  if (count == 0 || k == 0) return result;
  if (ef < k) ef = k;
  const void* param = &dim_param_;

  uint32_t cur = 0;
  float cur_dist = 0;
  Descend(query, &cur, &cur_dist);

  // Best-first search of level 0 (hnswlib searchBaseLayerST, no deletions).
  VisitedList& visited = tls_visited;
  const uint16_t tag = visited.Begin(count);
  uint16_t* marks = visited.marks.data();
  PooledHeap top(&tls_heaps.top);
  PooledHeap candidates(&tls_heaps.candidates);
  // Unfiltered, this is exactly hnswlib's searchBaseLayerST. Filtered (as
  // hnswlib's isIdAllowed): only allowed rows enter `top`, and the search
  // does not stop while `top` holds fewer than ef of them.
  auto label_of = [this](uint32_t id) {
    uint64_t label;
    std::memcpy(&label, Element(id) + header_.label_offset, sizeof(label));
    return label;
  };
  // A label is a row: one out of range (a corrupt graph) never becomes a
  // result, which callers use to index ids.bin and Vector().
  auto admit = [&](uint32_t id) {
    const uint64_t label = label_of(id);
    return label < count &&
           (allowed == nullptr || allowed->Allows(static_cast<uint32_t>(row_offset + label)));
  };
  float lower_bound = EnterWalk(cur, cur_dist, admit, tag, marks, &top, &candidates);
  const HalfDistanceFn half_dist = half_dist_;
  const HalfSkip half_skip(metric_, query, dim_, half_dist ? half_->bound() : 0.0f);
  // With a finite `bound`, the walk first finds this graph's own best
  // `own_want` rows as usual; from then on it reaches only as far as the
  // farther of `bound` and the worst of those (`reach`, which only falls).
  // A graph with nothing inside `bound` thus costs a walk for its few best
  // rows, and one with rows inside is walked until no candidate is nearer.
  const bool bounded = bound < std::numeric_limits<float>::infinity();
  const size_t own_want = std::max<size_t>(1, ef / kOwnBestDivisor);
  PooledHeap own(&tls_heaps.own);
  float reach = std::numeric_limits<float>::infinity();
  auto hold_own = [&](float d, uint32_t id) {
    if (own.size() < own_want || d < own.top().first) {
      own.emplace(d, id);
      if (own.size() > own_want) own.pop();
      if (own.size() == own_want) reach = std::max(bound, own.top().first);
    }
  };
  if (bounded && admit(cur)) hold_own(cur_dist, cur);
  while (!candidates.empty()) {
    const auto current = candidates.top();
    if (-current.first > lower_bound && (allowed == nullptr || top.size() >= ef)) break;
    if (-current.first >= reach) break;
    candidates.pop();
    const uint32_t* list = reinterpret_cast<const uint32_t*>(Element(current.second));
    uint16_t size = ListCount(list);
    if (size > header_.max_m0) size = 0;  // Corrupt list: treat as a dead end.
    const uint32_t* links = list + 1;
    // Two passes over the neighbours, in hnswlib's order: first the
    // unvisited ones are marked and their vectors prefetched, all at once, so
    // their cache misses overlap instead of following one another; then
    // their distances are computed and offered to the heaps in the same
    // order as hnswlib's single pass, which gives the same result.
    uint32_t fresh[kExpandChunk];
    for (uint16_t j = 0; j < size;) {
      // Once ef results are held, a candidate enters only if it beats the
      // ef-th (lower_bound, which can only fall): its half distance rules
      // most out, reading half the bytes. Those it rules out are exactly ones
      // hnswlib rejects, so the remaining ones see the same heaps.
      // `limit`: the distance a candidate must beat to be taken at all.
      const float limit = top.size() >= ef ? std::min(lower_bound, reach) : reach;
      const bool halves = half_dist != nullptr && limit < std::numeric_limits<float>::max();
      size_t n = 0;
      for (; j < size && n < kExpandChunk; ++j) {
        const uint32_t cand = links[j];
        if (cand >= count || marks[cand] == tag) continue;
        marks[cand] = tag;
        fresh[n++] = cand;
        // The first line only: the hardware prefetcher follows the rest as the
        // kernel streams through the vector (more lines measured no faster).
        __builtin_prefetch(halves ? static_cast<const void*>(half_->Row(cand))
                                  : Element(cand) + header_.offset_data);
      }
      if (halves) {
        size_t kept = 0;
        for (size_t i = 0; i < n; ++i) {
          const uint32_t cand = fresh[i];
          if (half_skip.Skip(half_dist(query, half_->Row(cand), dim_), limit)) continue;
          fresh[kept++] = cand;
          __builtin_prefetch(Element(cand) + header_.offset_data);
        }
        n = kept;
      }
      for (size_t i = 0; i < n; ++i) {
        const uint32_t cand = fresh[i];
        const float d = dist_(query, Element(cand) + header_.offset_data, param);
        if ((top.size() < ef || lower_bound > d) && d < reach) {
          candidates.emplace(-d, cand);
          if (admit(cand)) {
            top.emplace(d, cand);
            if (bounded) hold_own(d, cand);
          }
          if (top.size() > ef) top.pop();
          if (!top.empty()) lower_bound = top.top().first;
        }
      }
    }
  }
  while (top.size() > k) top.pop();
  result.resize(top.size());
  for (size_t i = top.size(); i-- > 0;) {
    uint64_t label;
    std::memcpy(&label, Element(top.top().second) + header_.label_offset, sizeof(label));
    result[i] = Neighbor{top.top().first, static_cast<uint32_t>(label)};
    top.pop();
  }
  return result;
}

std::vector<uint32_t> NearestRows(const MmapHnswSearcher& graph, const float* vectors, size_t count,
                                  size_t dim, size_t per_row, size_t ef, int threads) {
  std::vector<uint32_t> links(count * per_row, JointGraph::kNoRow);
  // The nearest rows the heuristic chooses from: as many as ef holds, from
  // per_row (all kept, the diverse ones first) to 2 x per_row.
  ef = std::max(ef, per_row);
  const size_t choose_from = std::min(ef, 2 * per_row);
  auto work = [&](size_t begin, size_t end) {
    for (size_t r = begin; r < end; ++r) {
      // HNSW's neighbour heuristic: a row nearer to one already kept than to
      // the tail row leads where that one leads, so it costs a walk a
      // distance and adds no direction.
      const std::vector<Neighbor> near = graph.Search(vectors + r * dim, choose_from, ef);
      uint32_t* out = &links[r * per_row];
      size_t kept = 0;
      for (size_t i = 0; i < near.size() && kept < per_row; ++i) {
        const float* v = graph.Vector(near[i].row);
        bool diverse = true;
        for (size_t j = 0; j < kept && diverse; ++j) {
          diverse = graph.Distance(v, graph.Vector(out[j])) >= near[i].distance;
        }
        if (diverse) out[kept++] = near[i].row;
      }
      // The free slots: the nearest rows skipped, in order, so that a row
      // keeps per_row links (the walk's recall at a given ef holds).
      for (size_t i = 0; i < near.size() && kept < per_row; ++i) {
        if (std::find(out, out + kept, near[i].row) == out + kept) out[kept++] = near[i].row;
      }
    }
  };
  const size_t n = std::min(count, static_cast<size_t>(std::max(1, threads)));
  if (n <= 1) {
    work(0, count);
    return links;
  }
  std::vector<std::thread> pool;
  for (size_t w = 0; w < n; ++w) pool.emplace_back(work, count * w / n, count * (w + 1) / n);
  for (std::thread& t : pool) t.join();
  return links;
}

void* AllocateArray(size_t bytes) {
  constexpr size_t kHugePage = size_t{2} << 20;
  void* p = nullptr;
  if (bytes >= kHugePage) {
    const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    p = std::aligned_alloc(kHugePage, rounded);
    if (p != nullptr) ::madvise(p, rounded, MADV_HUGEPAGE);  // Advice only.
  } else {
    p = std::malloc(std::max<size_t>(bytes, 1));
  }
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

void FreeArray(void* p) { std::free(p); }

std::unique_ptr<JointGraph> JointGraph::Join(const MmapHnswSearcher& big,
                                             const std::vector<Tail>& tails, uint64_t big_key,
                                             const JointGraph* previous) {
  std::unique_ptr<JointGraph> j(new JointGraph());
  j->big_ = &big;
  j->big_key_ = big_key;
  // The previous join's part named `key` with `per` links an element, if
  // it joined the same big graph.
  auto previous_part = [&](uint64_t key, uint32_t per) -> const Part* {
    if (previous == nullptr || key == 0 || big_key == 0 || previous->big_key_ != big_key) {
      return nullptr;
    }
    for (const Part& p : previous->tails_) {
      if (p.key == key && p.per == per) return &p;
    }
    return nullptr;
  };
  const size_t n = big.size();
  auto internal_of = [](const MmapHnswSearcher& g, uint64_t row) {
    uint32_t id;
    std::memcpy(&id, g.internal_of_row_ + row * sizeof(uint32_t), sizeof(id));
    return id;
  };
  j->big_begin_.assign(n + 1, 0);
  uint64_t first = n;
  for (size_t index = 0; index < tails.size(); ++index) {
    const Tail& tail = tails[index];
    if (tail.graph == nullptr || tail.per_row == 0) continue;
    const MmapHnswSearcher& g = *tail.graph;
    const size_t t = g.size();
    if (first + t > std::numeric_limits<uint32_t>::max()) break;  // Joint ids are 32-bit.
    Part part;
    part.graph = &g;
    part.index = index;
    part.first = static_cast<uint32_t>(first);
    part.per = static_cast<uint32_t>(tail.per_row);
    part.key = tail.key;
    // Rows whose element links are known already: every row of a tail the
    // previous join held, or the rows of the tail this one extends (the
    // same elements, numbered first: an extended graph appends).
    size_t known = 0;
    const size_t links = t * tail.per_row;
    if (const Part* same = previous_part(tail.key, part.per);
        same != nullptr && same->to_big.size() == links) {
      part.to_big = same->to_big;
      known = t;
    } else if (const Part* from = previous_part(tail.extends_key, part.per);
               from != nullptr && tail.extends_rows <= t &&
               from->to_big.size() == tail.extends_rows * tail.per_row) {
      part.to_big.reserve(links);
      part.to_big.assign(from->to_big.begin(), from->to_big.end());
      part.to_big.resize(links, kNoRow);
      known = tail.extends_rows;
    } else {
      part.to_big.assign(links, kNoRow);
    }
    // Row to element through the offsets file's map (4 bytes a row), not
    // the elements' labels: reading a label touches a page of the graph
    // per element, the whole tail's vectors (200 MB for 90k rows at 512-d).
    for (size_t row = known; row < t; ++row) {
      const uint32_t id = internal_of(g, row);
      // A corrupt map: the element keeps no links (nor does one of the
      // known rows' elements get others).
      if (id >= t || id < known) continue;
      for (size_t i = 0; i < tail.per_row; ++i) {
        const uint32_t to = tail.links[row * tail.per_row + i];
        if (to >= n) continue;
        const uint32_t big_id = internal_of(big, to);
        if (big_id >= n) continue;
        part.to_big[id * tail.per_row + i] = big_id;
      }
    }
    // Counted from what was kept (a corrupt map may name an element twice).
    for (const uint32_t big_id : part.to_big) {
      if (big_id < n) ++j->big_begin_[big_id + 1];
    }
    first += t;
    j->tails_.push_back(std::move(part));
  }
  j->count_ = static_cast<uint32_t>(first);
  for (size_t i = 0; i < n; ++i) j->big_begin_[i + 1] += j->big_begin_[i];
  j->big_to_tail_.resize(j->big_begin_.back());
  std::vector<uint32_t> fill(j->big_begin_.begin(), j->big_begin_.end() - 1);
  for (const Part& part : j->tails_) {
    for (size_t e = 0; e < part.to_big.size(); ++e) {
      const uint32_t big_id = part.to_big[e];
      if (big_id < n)
        j->big_to_tail_[fill[big_id]++] = part.first + static_cast<uint32_t>(e / part.per);
    }
  }
  return j;
}

std::vector<Neighbor> JointGraph::Search(const float* query, size_t k, size_t ef,
                                         const RowFilter* allowed, size_t big_offset,
                                         const std::vector<size_t>& tail_offsets) const {
  std::vector<Neighbor> result;
  const MmapHnswSearcher& big = *big_;
  const uint32_t n = static_cast<uint32_t>(big.header_.count);
  if (n == 0 || k == 0) return result;
  for (const Part& p : tails_) {
    if (p.index >= tail_offsets.size()) return result;  // The caller's offsets are short.
  }
  if (ef < k) ef = k;
  const void* param = &big.dim_param_;
  const DistanceFn dist = big.dist_;
  // Joint ids: the big graph's internal ids, then each tail's from its first.
  auto vector_of = [&](uint32_t id) -> const char* {
    if (id < n) return big.Element(id) + big.header_.offset_data;
    const Part& p = PartOf(id);
    return p.graph->Element(id - p.first) + p.graph->header_.offset_data;
  };
  // A joint id's row in the caller's space, or kNoRow for a corrupt label.
  auto row_of = [&](uint32_t id) -> uint64_t {
    uint64_t label;
    if (id < n) {
      std::memcpy(&label, big.Element(id) + big.header_.label_offset, sizeof(label));
      return label < n ? big_offset + label : kNoRow;
    }
    const Part& p = PartOf(id);
    std::memcpy(&label, p.graph->Element(id - p.first) + p.graph->header_.label_offset,
                sizeof(label));
    return label < p.graph->header_.count ? tail_offsets[p.index] + label : kNoRow;
  };
  auto admit = [&](uint32_t id) {
    const uint64_t row = row_of(id);
    return row != kNoRow && (allowed == nullptr || allowed->Allows(static_cast<uint32_t>(row)));
  };
  uint32_t cur = 0;
  float cur_dist = 0;
  big.Descend(query, &cur, &cur_dist);
  VisitedList& visited = tls_visited;
  const uint16_t tag = visited.Begin(count_);
  uint16_t* marks = visited.marks.data();
  PooledHeap top(&tls_heaps.top);
  PooledHeap candidates(&tls_heaps.candidates);
  float lower_bound = EnterWalk(cur, cur_dist, admit, tag, marks, &top, &candidates);
  // Half vectors only where every graph has them (the same dim; the widest
  // error bound covers each graph's own file).
  bool halves_ok = big.half_dist_ != nullptr;
  float half_bound = halves_ok ? big.half_->bound() : 0.0f;
  for (const Part& p : tails_) {
    halves_ok = halves_ok && p.graph->half_dist_ != nullptr;
    if (halves_ok) half_bound = std::max(half_bound, p.graph->half_->bound());
  }
  const HalfDistanceFn half_dist = halves_ok ? big.half_dist_ : nullptr;
  const HalfSkip half_skip(big.metric_, query, big.dim_, halves_ok ? half_bound : 0.0f);
  auto half_of = [&](uint32_t id) -> const uint16_t* {
    if (id < n) return big.half_->Row(id);
    const Part& p = PartOf(id);
    return p.graph->half_->Row(id - p.first);
  };
  uint32_t fresh[kExpandChunk];
  // Offers `size` links (ids below `limit` in their graph, plus `add`), as
  // MmapHnswSearcher::Search offers a level-0 list.
  auto expand = [&](const uint32_t* links, size_t size, uint32_t limit, uint32_t add) {
    for (size_t j = 0; j < size;) {
      const bool halves = half_dist != nullptr && top.size() >= ef;
      size_t m = 0;
      for (; j < size && m < kExpandChunk; ++j) {
        if (links[j] >= limit) continue;
        const uint32_t cand = links[j] + add;
        if (marks[cand] == tag) continue;
        marks[cand] = tag;
        fresh[m++] = cand;
        __builtin_prefetch(halves ? static_cast<const void*>(half_of(cand))
                                  : static_cast<const void*>(vector_of(cand)));
      }
      if (halves) {
        size_t kept = 0;
        for (size_t i = 0; i < m; ++i) {
          const uint32_t cand = fresh[i];
          if (half_skip.Skip(half_dist(query, half_of(cand), big.dim_), lower_bound)) continue;
          fresh[kept++] = cand;
          __builtin_prefetch(vector_of(cand));
        }
        m = kept;
      }
      for (size_t i = 0; i < m; ++i) {
        const uint32_t cand = fresh[i];
        const float d = dist(query, vector_of(cand), param);
        if (top.size() < ef || lower_bound > d) {
          candidates.emplace(-d, cand);
          if (admit(cand)) top.emplace(d, cand);
          if (top.size() > ef) top.pop();
          if (!top.empty()) lower_bound = top.top().first;
        }
      }
    }
  };
  while (!candidates.empty()) {
    const auto current = candidates.top();
    if (-current.first > lower_bound && (allowed == nullptr || top.size() >= ef)) break;
    candidates.pop();
    const uint32_t id = current.second;
    if (id < n) {
      const uint32_t* list = reinterpret_cast<const uint32_t*>(big.Element(id));
      uint16_t size = ListCount(list);
      if (size > big.header_.max_m0) size = 0;  // Corrupt list: a dead end.
      expand(list + 1, size, n, 0);
      // Joint ids already (below count_, never a big id).
      expand(big_to_tail_.data() + big_begin_[id], big_begin_[id + 1] - big_begin_[id], count_, 0);
    } else {
      const Part& p = PartOf(id);
      const uint32_t local = id - p.first;
      const uint32_t* list = reinterpret_cast<const uint32_t*>(p.graph->Element(local));
      uint16_t size = ListCount(list);
      if (size > p.graph->header_.max_m0) size = 0;
      expand(list + 1, size, static_cast<uint32_t>(p.graph->header_.count), p.first);
      expand(p.to_big.data() + static_cast<size_t>(local) * p.per, p.per, n, 0);
    }
  }
  while (top.size() > k) top.pop();
  result.resize(top.size());
  for (size_t i = top.size(); i-- > 0;) {
    result[i] = Neighbor{top.top().first, static_cast<uint32_t>(row_of(top.top().second))};
    top.pop();
  }
  return result;
}

}  // namespace imagesearch::index
