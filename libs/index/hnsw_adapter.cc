// The only file that includes hnswlib. Every hnswlib exception stops here and
// becomes an absl::Status.

// Every header hnswlib includes, first, so that the malloc macro below reaches
// hnswlib's own code only.
#include <assert.h>
#include <cpuid.h>
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <x86intrin.h>

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <fstream>
#include <iostream>
#include <list>
#include <map>
#include <mutex>
#include <queue>
#include <random>
#include <stdexcept>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace imagesearch::index {
// hnswlib 0.6.2 reads one link id past the end of a full upper-level link
// list: HierarchicalNSW::searchBaseLayer (hnswalg.h:213-216, reached from
// addPoint for every level >= 1) prefetches `*(datal + j + 1)` for the last
// neighbour j = size - 1, and when the list at a node's top level is full
// (size == maxM_) that is 4 bytes at offset level * size_links_per_element_
// of the block addPoint allocated with malloc(size_links_per_element_ * level
// + 1) (hnswalg.h:1052): a 3-byte heap overread (inside glibc's usable size,
// so harmless, but out of bounds; fixed upstream in later hnswlib). Every
// block hnswlib allocates gets sizeof(tableint) zeroed bytes more, so that
// read is in bounds (and prefetches element 0's data). Only hnswlib's calls
// are redirected: the macro is defined around its include alone.
inline void* HnswlibMalloc(size_t size) {
  constexpr size_t kPad = sizeof(unsigned int);  // hnswlib::tableint, checked below
  auto* p = static_cast<char*>(std::malloc(size + kPad));
  if (p != nullptr) std::memset(p + size, 0, kPad);
  return p;
}
}  // namespace imagesearch::index

#define malloc(size) ::imagesearch::index::HnswlibMalloc(size)
#include <hnswlib/hnswlib.h>
#undef malloc
static_assert(sizeof(hnswlib::tableint) == sizeof(unsigned int),
              "HnswlibMalloc pads by one hnswlib::tableint");

#include "absl/strings/str_cat.h"
#include "libs/common/cpu_quota.h"
#include "libs/common/file_util.h"
#include "libs/common/status_macros.h"
#include "libs/index/distance.h"
#include "libs/index/graph_format.h"
#include "libs/index/hnsw_builder.h"
#include "libs/index/metric.h"

namespace imagesearch::index {
namespace {

// hnswlib's space interface over our run-time-dispatched kernels
// (libs/index/distance.h): same data layout and distance semantics as
// hnswlib's L2Space / InnerProductSpace, so the graph files are unchanged.
class KernelSpace final : public hnswlib::SpaceInterface<float> {
 public:
  KernelSpace(DistanceFn fn, size_t dim) : fn_(fn), dim_(dim) {}
  size_t get_data_size() override { return dim_ * sizeof(float); }
  hnswlib::DISTFUNC<float> get_dist_func() override { return fn_; }
  void* get_dist_func_param() override { return &dim_; }

 private:
  DistanceFn fn_;
  size_t dim_;
};

// IMAGESEARCH_SIMD=hnswlib: hnswlib's own kernels, as its compile flags chose
// them (benchmarks compare them with ours).
bool UseHnswlibKernels() {
  static const bool use = [] {
    const char* v = std::getenv("IMAGESEARCH_SIMD");
    return v != nullptr && std::strcmp(v, "hnswlib") == 0;
  }();
  return use;
}

// Every graph this process builds, loads into hnswlib or searches uses the
// same kernel, so hnswlib and the mmap searcher agree bit for bit.
std::unique_ptr<hnswlib::SpaceInterface<float>> MakeSpace(Metric metric, size_t dim) {
  if (UseHnswlibKernels()) {
    if (metric == Metric::kL2) return std::make_unique<hnswlib::L2Space>(dim);
    return std::make_unique<hnswlib::InnerProductSpace>(dim);
  }
  return std::make_unique<KernelSpace>(DistanceKernel(metric, BestSimdLevel()), dim);
}

int ResolveThreads(int threads) { return threads > 0 ? threads : EffectiveCpuCount(); }

class HnswlibIndexImpl final : public HnswlibIndex {
 public:
  HnswlibIndexImpl(std::unique_ptr<hnswlib::SpaceInterface<float>> space,
                   std::unique_ptr<hnswlib::HierarchicalNSW<float>> index)
      : space_(std::move(space)), index_(std::move(index)) {}

  std::vector<std::pair<float, uint64_t>> Search(const float* query, size_t k) const override {
    auto heap = index_->searchKnn(query, k);
    std::vector<std::pair<float, uint64_t>> out(heap.size());
    for (size_t i = heap.size(); i-- > 0;) {
      out[i] = {heap.top().first, static_cast<uint64_t>(heap.top().second)};
      heap.pop();
    }
    return out;
  }
  void SetEf(size_t ef) override { index_->setEf(ef); }

 private:
  std::unique_ptr<hnswlib::SpaceInterface<float>> space_;
  std::unique_ptr<hnswlib::HierarchicalNSW<float>> index_;
};

}  // namespace

absl::string_view MetricName(Metric metric) {
  switch (metric) {
    case Metric::kCosine:
      return "cosine";
    case Metric::kInnerProduct:
      return "ip";
    case Metric::kL2:
      return "l2";
  }
  return "unknown";
}

absl::StatusOr<Metric> ParseMetric(absl::string_view name) {
  if (name == "cosine") return Metric::kCosine;
  if (name == "ip") return Metric::kInnerProduct;
  if (name == "l2") return Metric::kL2;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown metric '", name, "'; expected cosine, ip or l2"));
}

DistanceFn GetDistanceFn(Metric metric, size_t dim) {
  // Exactly the kernel a HierarchicalNSW built over MakeSpace uses (hnswlib's
  // space constructors also set its global kernel pointers).
  auto space = MakeSpace(metric, dim);
  return space->get_dist_func();
}

// SSE2, which every x86-64 CPU has: eight lanes of double, each value
// converted exactly; the multiply of the scaling is IEEE's either way.
double SumOfSquares(const float* v, size_t dim) {
  __m128d a = _mm_setzero_pd(), b = _mm_setzero_pd(), c = _mm_setzero_pd(), d = _mm_setzero_pd();
  size_t i = 0;
  for (; i + 8 <= dim; i += 8) {
    const __m128 lo = _mm_loadu_ps(v + i);
    const __m128 hi = _mm_loadu_ps(v + i + 4);
    const __m128d x0 = _mm_cvtps_pd(lo), x1 = _mm_cvtps_pd(_mm_movehl_ps(lo, lo));
    const __m128d x2 = _mm_cvtps_pd(hi), x3 = _mm_cvtps_pd(_mm_movehl_ps(hi, hi));
    a = _mm_add_pd(a, _mm_mul_pd(x0, x0));
    b = _mm_add_pd(b, _mm_mul_pd(x1, x1));
    c = _mm_add_pd(c, _mm_mul_pd(x2, x2));
    d = _mm_add_pd(d, _mm_mul_pd(x3, x3));
  }
  const __m128d all = _mm_add_pd(_mm_add_pd(a, b), _mm_add_pd(c, d));
  double sum = _mm_cvtsd_f64(_mm_add_sd(all, _mm_unpackhi_pd(all, all)));
  for (; i < dim; ++i) sum += static_cast<double>(v[i]) * v[i];
  return sum;
}

bool NormalizeInPlace(float* v, size_t dim) {
  return NormalizeInPlace(v, dim, SumOfSquares(v, dim));
}

bool NormalizeInPlace(float* v, size_t dim, double sum) {
  if (!(sum > 0) || !std::isfinite(sum)) return false;
  const float inv = static_cast<float>(1.0 / std::sqrt(sum));
  // A norm below ~2.9e-39 (every value subnormal, say) has no float inverse:
  // scaled, the vector would be infinities and NaNs. It is as good as zero.
  if (!std::isfinite(inv)) return false;
  const __m128 scale = _mm_set1_ps(inv);
  size_t i = 0;
  for (; i + 4 <= dim; i += 4) _mm_storeu_ps(v + i, _mm_mul_ps(_mm_loadu_ps(v + i), scale));
  for (; i < dim; ++i) v[i] *= inv;
  return true;
}

namespace {

// Asks for transparent huge pages over the page-aligned part of [p, p+bytes)
// (a graph's level-0 block): it is written once and then read at random by
// every insert, so 2 MiB pages save a page fault per 4 KiB at first touch
// (half a fold's copy of level 0 went to faults on this VM) and TLB misses
// after. Advice only: where THP is off, nothing changes.
void AdviseHugePages(void* p, size_t bytes) {
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + page - 1) & ~(page - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(page - 1);
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

// What hnswlib's loadIndex does, for a graph about to be extended: level 0
// copied from the mapped file in one piece into a block with room for `extra`
// more rows, and each upper link list copied from the map. loadIndex reads
// through an ifstream with two seeks and a small read per element (three
// system calls a row, about a quarter of a fold's CPU at 200k x 128), and
// resizeIndex would then copy level 0 once more. The upper lists are checked
// before anything is allocated, as WriteGraphOffsets checks them; a malformed
// file throws std::runtime_error.
std::unique_ptr<hnswlib::HierarchicalNSW<float>> LoadGraphForExtend(
    const MappedFile& file, const HnswHeader& h, hnswlib::SpaceInterface<float>* space,
    size_t extra) {
  const uint64_t per_level = h.size_links_per_element();
  std::vector<uint64_t> upper(h.count);  // offset of each element's list size
  uint64_t pos = h.upper_begin();
  for (uint64_t i = 0; i < h.count; ++i) {
    if (pos + 4 > file.size()) throw std::runtime_error("graph file truncated in its link lists");
    uint32_t bytes;
    std::memcpy(&bytes, file.data() + pos, 4);
    if (bytes % per_level != 0 || bytes / per_level > static_cast<uint64_t>(h.max_level)) {
      throw std::runtime_error(absl::StrCat("element ", i, " has a malformed upper link list"));
    }
    upper[i] = pos;
    pos += 4 + bytes;
  }
  if (pos != file.size()) throw std::runtime_error("graph file has unexpected trailing bytes");
  if (h.count > 0 && h.enterpoint >= h.count) {
    throw std::runtime_error("graph entry point is not an element");
  }

  auto index = std::make_unique<hnswlib::HierarchicalNSW<float>>(space);
  auto& x = *index;
  // The constructor above sets nothing: what the destructor reads first.
  x.cur_element_count = 0;
  x.data_level0_memory_ = nullptr;
  x.linkLists_ = nullptr;
  x.visited_list_pool_ = nullptr;
  const size_t n = h.count;
  const size_t max_elements = n + extra;
  x.offsetLevel0_ = h.offset_level0;
  x.max_elements_ = max_elements;
  x.size_data_per_element_ = h.size_data_per_element;
  x.label_offset_ = h.label_offset;
  x.offsetData_ = h.offset_data;
  x.maxlevel_ = h.max_level;
  x.enterpoint_node_ = h.enterpoint;
  x.maxM_ = h.max_m;
  x.maxM0_ = h.max_m0;
  x.M_ = h.m;
  x.mult_ = h.mult;
  x.revSize_ = 1.0 / h.mult;
  x.ef_construction_ = h.ef_construction;
  x.ef_ = 10;
  x.num_deleted_ = 0;
  x.data_size_ = space->get_data_size();
  x.fstdistfunc_ = space->get_dist_func();
  x.dist_func_param_ = space->get_dist_func_param();
  x.size_links_per_element_ = per_level;
  x.size_links_level0_ = h.size_links_level0();
  std::vector<std::mutex>(max_elements).swap(x.link_list_locks_);
  std::vector<std::mutex>(hnswlib::HierarchicalNSW<float>::max_update_element_locks)
      .swap(x.link_list_update_locks_);
  x.element_levels_.assign(max_elements, 0);
  x.visited_list_pool_ = new hnswlib::VisitedListPool(1, static_cast<int>(max_elements));
  x.data_level0_memory_ = static_cast<char*>(
      HnswlibMalloc(std::max<size_t>(max_elements, 1) * h.size_data_per_element));
  x.linkLists_ =
      static_cast<char**>(HnswlibMalloc(sizeof(void*) * std::max<size_t>(max_elements, 1)));
  if (x.data_level0_memory_ == nullptr || x.linkLists_ == nullptr) throw std::bad_alloc();
  AdviseHugePages(x.data_level0_memory_, max_elements * h.size_data_per_element);
  std::memcpy(x.data_level0_memory_, file.data() + kHnswHeaderSize, n * h.size_data_per_element);
  x.label_lookup_.reserve(max_elements);
  for (size_t i = 0; i < n; ++i) {
    x.label_lookup_[x.getExternalLabel(static_cast<hnswlib::tableint>(i))] =
        static_cast<hnswlib::tableint>(i);
    uint32_t bytes;
    std::memcpy(&bytes, file.data() + upper[i], 4);
    x.linkLists_[i] = nullptr;
    if (bytes != 0) {
      x.linkLists_[i] = static_cast<char*>(HnswlibMalloc(bytes));
      if (x.linkLists_[i] == nullptr) throw std::bad_alloc();
      std::memcpy(x.linkLists_[i], file.data() + upper[i] + 4, bytes);
      x.element_levels_[i] = static_cast<int>(bytes / per_level);
    }
    x.cur_element_count = i + 1;  // The destructor frees lists 0..i.
  }
  for (size_t i = 0; i < n; ++i) {
    if (x.isMarkedDeleted(static_cast<hnswlib::tableint>(i))) ++x.num_deleted_;
  }
  return index;
}

class HnswStreamBuilderImpl final : public HnswStreamBuilder {
 public:
  HnswStreamBuilderImpl(size_t dim, Metric metric, const HnswParams& params,
                        size_t initial_capacity)
      : dim_(dim), metric_(metric), params_(params), space_(MakeSpace(metric, dim)) {
    index_ = std::make_unique<hnswlib::HierarchicalNSW<float>>(
        space_.get(), std::max<size_t>(initial_capacity, 1), params.m, params.ef_construction,
        params.seed);
    AdviseHugePages(index_->data_level0_memory_,
                    index_->max_elements_ * index_->size_data_per_element_);
  }
  // Loads the graph in `file` (its header `h` checked by ParseHnswHeader)
  // with room for `extra` more rows (LoadGraphForExtend).
  HnswStreamBuilderImpl(const MappedFile& file, const HnswHeader& h, size_t dim, Metric metric,
                        const HnswParams& params, size_t extra)
      : dim_(dim), metric_(metric), params_(params), space_(MakeSpace(metric, dim)) {
    index_ = LoadGraphForExtend(file, h, space_.get(), extra);
    size_ = index_->cur_element_count;
    // Levels of the new rows: from params.seed, not the generator's default.
    index_->level_generator_.seed(params.seed + size_);
  }

  absl::Status Add(const float* vectors, size_t count, uint64_t first_label) override {
    for (size_t r = 0; r < count; ++r) {
      const float* v = vectors + r * dim_;
      for (size_t i = 0; i < dim_; ++i) {
        if (!std::isfinite(v[i])) {
          return absl::InvalidArgumentError(
              absl::StrCat("row ", first_label + r, " has a non-finite value at component ", i));
        }
      }
    }
    try {
      if (size_ + count > index_->max_elements_) {
        index_->resizeIndex(std::max(size_ + count, 2 * index_->max_elements_));
        AdviseHugePages(index_->data_level0_memory_,
                        index_->max_elements_ * index_->size_data_per_element_);
      }
      std::atomic<bool> bad_row{false};
      std::atomic<uint64_t> bad_label{0};
      auto insert = [&](size_t r, std::vector<float>& scratch) {
        const float* v = vectors + r * dim_;
        if (metric_ == Metric::kCosine) {
          std::memcpy(scratch.data(), v, dim_ * sizeof(float));
          if (!NormalizeInPlace(scratch.data(), dim_)) {
            bad_label = first_label + r;
            bad_row = true;
            return;
          }
          v = scratch.data();
        }
        index_->addPoint(v, first_label + r);
      };
      size_t begin = 0;
      std::vector<float> scratch(dim_);
      if (size_ == 0 && count > 0) insert(begin++, scratch);  // hnswlib wants a first point alone.
      std::atomic<size_t> next{begin};
      std::exception_ptr error;
      std::mutex error_mu;
      const int threads = std::min<int>(ResolveThreads(params_.threads),
                                        static_cast<int>(std::max<size_t>(count - begin, 1)));
      auto work = [&] {
        std::vector<float> local(dim_);
        try {
          for (size_t r = next++; r < count && !bad_row; r = next++) insert(r, local);
        } catch (...) {
          std::lock_guard<std::mutex> lock(error_mu);
          error = std::current_exception();
          next = count;
        }
      };
      std::vector<std::thread> workers;
      for (int t = 1; t < threads; ++t) workers.emplace_back(work);
      work();
      for (auto& w : workers) w.join();
      if (error) std::rethrow_exception(error);
      if (bad_row) {
        return absl::InvalidArgumentError(
            absl::StrCat("row ", bad_label.load(),
                         " is a zero vector (or its norm is below about 2.9e-39) and cannot be "
                         "normalised for cosine"));
      }
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("hnswlib insert failed: ", e.what()));
    }
    size_ += count;
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<DuplicateGroup>> FindNearDuplicates(double min_similarity,
                                                                 size_t neighbors) override {
    // Leader grouping, not connected components: chains of near-duplicates
    // (A~B, B~C) must not pull in a C that is not close to A.
    std::vector<DuplicateGroup> groups;
    if (size_ < 2 || neighbors == 0) return groups;
    std::vector<bool> grouped(size_, false);
    auto cosine = [this](const std::vector<float>& a, const std::vector<float>& b) {
      return CosineSimilarity(a.data(), b.data(), dim_);
    };
    try {
      index_->setEf(std::max<size_t>(neighbors + 1, 32));
      for (uint64_t r = 0; r < size_; ++r) {
        if (grouped[r]) continue;
        const std::vector<float> v = index_->getDataByLabel<float>(r);
        auto found = index_->searchKnn(v.data(), neighbors + 1);
        DuplicateGroup g{{r}, 1.0f};
        while (!found.empty()) {
          const uint64_t other = found.top().second;
          found.pop();
          if (other == r || grouped[other]) continue;
          const float sim = cosine(v, index_->getDataByLabel<float>(other));
          if (sim < min_similarity) continue;
          g.rows.push_back(other);
          g.min_similarity = std::min(g.min_similarity, sim);
        }
        if (g.rows.size() < 2) continue;
        for (uint64_t row : g.rows) grouped[row] = true;
        std::sort(g.rows.begin(), g.rows.end());
        groups.push_back(std::move(g));
      }
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("hnswlib search failed: ", e.what()));
    }
    return groups;
  }

  size_t size() const override { return size_; }

  absl::Status Save(const std::string& graph_path, const std::string& offsets_path) override {
    try {
      index_->saveIndex(graph_path);
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("hnswlib saveIndex failed: ", e.what()));
    }
    RETURN_IF_ERROR(SyncPath(graph_path));
    return WriteGraphOffsets(graph_path, dim_, offsets_path);
  }

 private:
  const size_t dim_;
  const Metric metric_;
  const HnswParams params_;
  std::unique_ptr<hnswlib::SpaceInterface<float>> space_;
  std::unique_ptr<hnswlib::HierarchicalNSW<float>> index_;
  size_t size_ = 0;
};

}  // namespace

absl::Status ValidateHnswParams(const HnswParams& params) {
  if (params.m < 2 || params.m > 1000) {
    return absl::InvalidArgumentError(absl::StrCat("HNSW M must be in [2, 1000], got ", params.m));
  }
  if (params.ef_construction < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("HNSW ef_construction must be at least 1, got ", params.ef_construction));
  }
  if (params.threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("HNSW insert threads must be >= 0 (0 = all cores), got ", params.threads));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<HnswStreamBuilder>> HnswStreamBuilder::Create(
    size_t dim, Metric metric, const HnswParams& params, size_t initial_capacity) {
  if (dim == 0) return absl::InvalidArgumentError("dimension must be positive");
  RETURN_IF_ERROR(ValidateHnswParams(params));
  try {
    return std::unique_ptr<HnswStreamBuilder>(
        new HnswStreamBuilderImpl(dim, metric, params, initial_capacity));
  } catch (const std::exception& e) {
    return absl::ResourceExhaustedError(absl::StrCat("hnswlib: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<HnswStreamBuilder>> HnswStreamBuilder::Extend(
    const std::string& graph_path, size_t dim, Metric metric, const HnswParams& params,
    size_t extra) {
  if (dim == 0) return absl::InvalidArgumentError("dimension must be positive");
  RETURN_IF_ERROR(ValidateHnswParams(params));
  // hnswlib's loader trusts the file; ours checks its header against `dim`
  // first, as the searcher does (HnswExtendGraphWriter checks the count).
  ASSIGN_OR_RETURN(auto file, MappedFile::Open(graph_path));
  ASSIGN_OR_RETURN(HnswHeader h, ParseHnswHeader(file->data(), file->size(), dim));
  try {
    return std::unique_ptr<HnswStreamBuilder>(
        new HnswStreamBuilderImpl(*file, h, dim, metric, params, extra));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("no memory to load graph ", graph_path, " with room for ", extra, " rows"));
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat("graph ", graph_path, ": ", e.what()));
  }
}

absl::Status BuildHnswGraph(const float* vectors, size_t count, size_t dim, Metric metric,
                            const HnswParams& params, const std::string& graph_path,
                            const std::string& offsets_path) {
  ASSIGN_OR_RETURN(auto builder, HnswStreamBuilder::Create(dim, metric, params, count));
  RETURN_IF_ERROR(builder->Add(vectors, count, 0));
  return builder->Save(graph_path, offsets_path);
}

GraphWriter HnswGraphWriter(const float* vectors, size_t count, size_t dim, Metric metric,
                            const HnswParams& params) {
  return [=](const std::string& graph_path, const std::string& offsets_path) {
    return BuildHnswGraph(vectors, count, dim, metric, params, graph_path, offsets_path);
  };
}

GraphWriter HnswExtendGraphWriter(const std::string& base_graph_path, size_t base_rows,
                                  const float* vectors, size_t count, size_t dim, Metric metric,
                                  const HnswParams& params) {
  return [=](const std::string& graph_path, const std::string& offsets_path) -> absl::Status {
    ASSIGN_OR_RETURN(auto builder,
                     HnswStreamBuilder::Extend(base_graph_path, dim, metric, params, count));
    if (builder->size() != base_rows) {
      return absl::DataLossError(absl::StrCat(base_graph_path, " holds ", builder->size(),
                                              " elements but its segment has ", base_rows,
                                              " rows"));
    }
    RETURN_IF_ERROR(builder->Add(vectors, count, base_rows));
    return builder->Save(graph_path, offsets_path);
  };
}

absl::Status WriteGraphOffsets(const std::string& graph_path, size_t dim,
                               const std::string& offsets_path) {
  ASSIGN_OR_RETURN(auto file, MappedFile::Open(graph_path));
  ASSIGN_OR_RETURN(HnswHeader h, ParseHnswHeader(file->data(), file->size(), dim));
  // Layout: u64 upper-list offset per internal id, then u32 internal id per
  // row (label). Labels must be exactly the dense rows 0..count-1.
  std::string out;
  out.resize(h.count * (sizeof(uint64_t) + sizeof(uint32_t)));
  char* internal_of_row = &out[h.count * sizeof(uint64_t)];
  std::vector<bool> seen(h.count, false);
  const char* level0 = file->data() + kHnswHeaderSize;
  for (uint64_t i = 0; i < h.count; ++i) {
    uint64_t label;
    std::memcpy(&label, level0 + i * h.size_data_per_element + h.label_offset, sizeof(label));
    if (label >= h.count || seen[label]) {
      return absl::InvalidArgumentError(absl::StrCat("graph element ", i, " has label ", label,
                                                     "; labels must be the rows 0..", h.count - 1));
    }
    seen[label] = true;
    const uint32_t id = static_cast<uint32_t>(i);
    std::memcpy(internal_of_row + label * sizeof(uint32_t), &id, sizeof(id));
  }
  uint64_t pos = h.upper_begin();
  const uint64_t per_level = h.size_links_per_element();
  for (uint64_t i = 0; i < h.count; ++i) {
    if (pos + 4 > file->size()) {
      return absl::DataLossError(
          absl::StrCat("graph file truncated in the link list of element ", i));
    }
    uint32_t bytes;
    std::memcpy(&bytes, file->data() + pos, 4);
    if (bytes % per_level != 0 || bytes / per_level > static_cast<uint64_t>(h.max_level)) {
      return absl::InvalidArgumentError(
          absl::StrCat("graph element ", i, " has a malformed upper link list size ", bytes));
    }
    std::memcpy(&out[i * sizeof(uint64_t)], &pos, sizeof(uint64_t));
    pos += 4 + bytes;
  }
  if (pos != file->size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("graph file has ", file->size() - pos, " unexpected trailing bytes"));
  }
  return WriteFileDurably(offsets_path, out);
}

absl::StatusOr<std::unique_ptr<HnswlibIndex>> HnswlibIndex::Load(const std::string& graph_path,
                                                                 size_t dim, Metric metric) {
  try {
    auto space = MakeSpace(metric, dim);
    auto index = std::make_unique<hnswlib::HierarchicalNSW<float>>(space.get(), graph_path);
    return std::unique_ptr<HnswlibIndex>(new HnswlibIndexImpl(std::move(space), std::move(index)));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("hnswlib loadIndex ", graph_path, ": ", e.what()));
  }
}

}  // namespace imagesearch::index
