// Deterministic, clustered test vectors (a Gaussian mixture), closer to real
// embeddings than uniform noise: queries have well-separated neighbourhoods.
// Header-only, for tests and benchmarks.
#ifndef IMAGESEARCH_LIBS_INDEX_TEST_VECTORS_H_
#define IMAGESEARCH_LIBS_INDEX_TEST_VECTORS_H_

#include <cstdint>
#include <random>
#include <vector>

namespace imagesearch::index {

inline std::vector<float> ClusteredVectors(size_t count, size_t dim, size_t clusters, uint32_t seed,
                                           float spread = 0.35f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> centers(clusters * dim);
  for (auto& c : centers) c = normal(rng);
  std::uniform_int_distribution<size_t> pick(0, clusters - 1);
  std::vector<float> out(count * dim);
  for (size_t i = 0; i < count; ++i) {
    const float* c = &centers[pick(rng) * dim];
    for (size_t d = 0; d < dim; ++d) out[i * dim + d] = c[d] + spread * normal(rng);
  }
  return out;
}

}  // namespace imagesearch::index

#endif  // IMAGESEARCH_LIBS_INDEX_TEST_VECTORS_H_
