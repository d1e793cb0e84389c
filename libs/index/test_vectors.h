// Deterministic, clustered test vectors (a Gaussian mixture), closer to real
// embeddings than uniform noise: queries have well-separated neighbourhoods.
// Header-only, for tests and benchmarks.
#ifndef IMAGESEARCH_LIBS_INDEX_TEST_VECTORS_H_
#define IMAGESEARCH_LIBS_INDEX_TEST_VECTORS_H_

#include <cmath>
#include <cstddef>
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

// Clustered data of low intrinsic dimension, as real embeddings are: cluster
// centres and points drawn in `latent` dimensions (points 0.35 from their
// centre), then x = A z + 0.02 noise with a fixed random A (dim x latent).
// ClusteredVectors' blobs fill all `dim` dimensions instead, so within a
// blob every row is about as far from a query as any other, which graph
// searches pay for. Deterministic: the first rows are the same for any
// `count`. `cluster_of`, if not null, gets each row's cluster.
inline std::vector<float> LowRankVectors(size_t count, size_t dim, size_t latent, size_t clusters,
                                         uint32_t seed,
                                         std::vector<uint32_t>* cluster_of = nullptr) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> a(dim * latent), centres(clusters * latent);
  for (auto& v : a) v = normal(rng) / std::sqrt(static_cast<float>(latent));
  for (auto& v : centres) v = normal(rng);
  std::uniform_int_distribution<size_t> pick(0, clusters - 1);
  std::vector<float> out(count * dim), z(latent);
  if (cluster_of != nullptr) cluster_of->resize(count);
  for (size_t i = 0; i < count; ++i) {
    const size_t c = pick(rng);
    if (cluster_of != nullptr) (*cluster_of)[i] = static_cast<uint32_t>(c);
    for (size_t l = 0; l < latent; ++l) z[l] = centres[c * latent + l] + 0.35f * normal(rng);
    for (size_t d = 0; d < dim; ++d) {
      float x = 0.02f * normal(rng);
      for (size_t l = 0; l < latent; ++l) x += a[d * latent + l] * z[l];
      out[i * dim + d] = x;
    }
  }
  return out;
}

}  // namespace imagesearch::index

#endif  // IMAGESEARCH_LIBS_INDEX_TEST_VECTORS_H_
