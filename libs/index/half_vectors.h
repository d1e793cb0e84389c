// graph.f16: a half-precision (IEEE binary16) copy of a graph's vectors, in
// the graph's internal order, that the mmap searcher reads first to rule
// out candidates without reading their float vectors.
//
// Why: at a high dimension the search is bound by memory traffic (a 1792-d
// float vector is 7 KB, and 3 in 4 of the vectors a search reads are
// rejected). A half vector is half the bytes. The file also records an
// error bound, so the searcher skips a candidate only when its exact
// (float) distance is provably no better than the current ef-th result:
// the search takes exactly the same decisions as hnswlib's and returns the
// same top-k, bit for bit (tested), reading about half as many bytes.
//
// Layout (little-endian; see graph_format.md):
//   0   char[8]  magic "ISVF16\0\1"
//   8   uint64   count (the graph's element count)
//   16  uint64   dim
//   24  uint64   row stride in bytes (2 * dim rounded up to 64)
//   32  uint32   metric (0 cosine, 1 ip, 2 l2)
//   36  float    bound (see HalfVectors::bound)
//   40  ...      zero up to 64
//   64  count rows, row i = the half vector of internal id i, zero-padded
//
// Thread-safety: HalfVectors is immutable after Open.
#ifndef IMAGESEARCH_LIBS_INDEX_HALF_VECTORS_H_
#define IMAGESEARCH_LIBS_INDEX_HALF_VECTORS_H_

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "libs/common/file_util.h"
#include "libs/index/metric.h"

namespace imagesearch::index {

inline constexpr size_t kHalfHeaderSize = 64;

// Round-to-nearest-even float -> binary16 (overflow to inf, NaN kept), and
// the exact inverse. Portable; the searcher's kernels use F16C instead.
uint16_t FloatToHalf(float f);
float HalfToFloat(uint16_t h);

// Distance between a float query and a half vector, with the semantics of
// DistanceFn (squared L2; 1 - dot for ip and cosine).
using HalfDistanceFn = float (*)(const float* query, const uint16_t* row, size_t dim);
// The AVX2+F16C kernel for `metric`, or nullptr where the CPU lacks them or
// IMAGESEARCH_SIMD asks for less than avx2 (then the searcher reads floats
// only).
HalfDistanceFn GetHalfDistanceFn(Metric metric);

// Writes the half copy of the float vectors in the hnswlib graph file
// `graph_path` (vectors of `dim`, `metric`) to `out_path`, durably.
absl::Status WriteHalfVectors(const std::string& graph_path, size_t dim, Metric metric,
                              const std::string& out_path);

class HalfVectors {
 public:
  // Maps and checks `path` against the graph it belongs to.
  static absl::StatusOr<std::unique_ptr<HalfVectors>> Open(const std::string& path, uint64_t count,
                                                           size_t dim, Metric metric);

  const uint16_t* Row(uint32_t internal_id) const {
    return reinterpret_cast<const uint16_t*>(rows_ + static_cast<size_t>(internal_id) * stride_);
  }
  // cosine, ip: the most, over rows x with half copy h, of |x - h| plus the
  // rounding of float sums of `dim` products (2 gamma_{dim+3} (|x| + |h|)),
  // so the float distances of any query q to x and to h differ by at most
  // |q| * bound + 1e-6 * (1 + |d(q, h)|) (that term: the final 1 - dot).
  // l2: the most |x - h|; sqrt of a distance moves by at most that.
  // Infinite when a vector does not fit in binary16 (the searcher then reads
  // floats only).
  float bound() const { return bound_; }
  size_t stride() const { return stride_; }

 private:
  HalfVectors() = default;
  std::unique_ptr<MappedFile> file_;
  const char* rows_ = nullptr;
  size_t stride_ = 0;
  float bound_ = 0;
};

// Decides, from a candidate's half distance, that its float distance (as
// GetDistanceFn's kernel computes it) is no smaller than a limit, for one
// query and the bound of the file (HalfVectors::bound).
class HalfSkip {
 public:
  HalfSkip(Metric metric, const float* query, size_t dim, float bound)
      : l2_(metric == Metric::kL2),
        // Twice gamma_{dim+3}: the float rounding of both distances.
        gamma_(static_cast<double>(dim + 3) * std::ldexp(1.0, -23)),
        bound_(bound) {
    if (!l2_ &&
        bound_ > 0) {  // A zero bound needs no |q| (and a searcher without halves passes 0).
      double norm2 = 0;
      for (size_t i = 0; i < dim; ++i) norm2 += double{query[i]} * query[i];
      slack_ = std::sqrt(norm2) * (1 + 1e-6) * bound_;
    }
  }

  // True only if the float distance is certainly >= `limit`.
  bool Skip(float half_distance, float limit) const {
    const double dh = half_distance;
    if (!l2_) return dh - (slack_ + 1e-6 * (1 + std::fabs(dh))) >= limit;
    // |sqrt(d(q, x)) - sqrt(d(q, h))| <= |x - h| <= bound (triangle
    // inequality), with each float sum within gamma of its exact value.
    if (!(dh >= 0)) return false;  // NaN
    const double root = std::sqrt(dh / (1 + gamma_)) - bound_;
    return root > 0 && root * root * (1 - gamma_) >= limit;
  }

 private:
  bool l2_;
  double gamma_;
  double bound_;
  double slack_ = 0;
};

// 2 * dim rounded up to a cache line.
inline size_t HalfRowStride(size_t dim) { return (dim * 2 + 63) / 64 * 64; }

}  // namespace imagesearch::index

#endif  // IMAGESEARCH_LIBS_INDEX_HALF_VECTORS_H_
