// Distance metrics shared by the index builder, the searcher and the snapshot
// manifest. The string names are stored on disk (MANIFEST.json): never change
// them.
#ifndef IMAGESEARCH_LIBS_INDEX_METRIC_H_
#define IMAGESEARCH_LIBS_INDEX_METRIC_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace imagesearch::index {

enum class Metric {
  kCosine,        // "cosine": vectors L2-normalised, distance = 1 - dot.
  kInnerProduct,  // "ip": distance = 1 - dot, vectors used as given.
  kL2,            // "l2": distance = squared euclidean.
};

absl::string_view MetricName(Metric metric);
absl::StatusOr<Metric> ParseMetric(absl::string_view name);

// Distance kernel with hnswlib's signature: (a, b, &dim) -> distance.
using DistanceFn = float (*)(const void*, const void*, const void*);

// The (SIMD) kernel for `metric` at `dim` that this process's hnswlib graphs
// use (libs/index/distance.h, chosen at run time for the CPU), so our
// searcher computes bit-identical distances to hnswlib's searchKnn.
DistanceFn GetDistanceFn(Metric metric, size_t dim);

// Cosine similarity of two vectors of `dim` (0 if either is zero), in double
// precision: near-duplicate checks compare it with thresholds like 0.95.
float CosineSimilarity(const float* a, const float* b, size_t dim);

// The sum of the squares of `v`'s values, in double precision: finite for
// any finite floats (a float's square is below 1.2e77), so a sum that is not
// finite means some value is NaN or infinite. Summed in eight independent
// lanes (SSE2), so that no add waits for the one before it: a 512-d query
// vector is checked and normalised in a few hundred cycles.
double SumOfSquares(const float* v, size_t dim);

// Scales `v` to unit L2 norm in place. Returns false if the norm is zero,
// too small for a float inverse (below ~2.9e-39), or not finite (the vector
// is left unchanged).
bool NormalizeInPlace(float* v, size_t dim);
// The same, given `v`'s SumOfSquares.
bool NormalizeInPlace(float* v, size_t dim, double sum_of_squares);

}  // namespace imagesearch::index

#endif  // IMAGESEARCH_LIBS_INDEX_METRIC_H_
