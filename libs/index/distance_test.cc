#include "libs/index/distance.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

namespace imagesearch::index {
namespace {

TEST_CASE("every kernel this CPU runs matches a double-precision reference", "[distance]") {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  const SimdLevel best = SupportedSimdLevel();
  INFO("supported level: " << SimdLevelName(best)
                           << ", in use: " << SimdLevelName(BestSimdLevel()));
  CHECK(BestSimdLevel() <= best);
  int checked = 0;
  for (size_t dim : {1, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 47, 64, 100, 512, 1792}) {
    std::vector<float> a(dim), b(dim);
    for (auto& v : a) v = normal(rng);
    for (auto& v : b) v = normal(rng);
    double l2 = 0, dot = 0;
    for (size_t i = 0; i < dim; ++i) {
      l2 += (double{a[i]} - b[i]) * (double{a[i]} - b[i]);
      dot += double{a[i]} * b[i];
    }
    for (SimdLevel level :
         {SimdLevel::kScalar, SimdLevel::kSse, SimdLevel::kAvx2, SimdLevel::kAvx512}) {
      if (level > best) continue;
      INFO("dim " << dim << " level " << SimdLevelName(level));
      const float got_l2 = DistanceKernel(Metric::kL2, level)(a.data(), b.data(), &dim);
      const float got_ip = DistanceKernel(Metric::kInnerProduct, level)(a.data(), b.data(), &dim);
      CHECK(std::abs(got_l2 - l2) <= 1e-5 * (1 + std::abs(l2)));
      CHECK(std::abs(got_ip - (1 - dot)) <= 1e-5 * (1 + std::abs(dot)));
      CHECK(DistanceKernel(Metric::kCosine, level) == DistanceKernel(Metric::kInnerProduct, level));
      ++checked;
    }
  }
  CHECK(checked >= 16 * 2);  // at least scalar and SSE everywhere on x86-64
  // GetDistanceFn hands out the best level's kernel (unless IMAGESEARCH_SIMD=hnswlib).
  if (std::getenv("IMAGESEARCH_SIMD") == nullptr) {
    CHECK(GetDistanceFn(Metric::kL2, 64) == DistanceKernel(Metric::kL2, BestSimdLevel()));
  }
}

}  // namespace
}  // namespace imagesearch::index
