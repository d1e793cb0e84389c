#include "libs/index/distance.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "libs/index/metric.h"

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

TEST_CASE("SumOfSquares matches a sequential double sum; NormalizeInPlace gives unit norm",
          "[distance]") {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0, 3);
  for (size_t dim : {1, 2, 7, 8, 9, 15, 16, 17, 100, 512, 1791, 1792}) {
    std::vector<float> v(dim);
    for (float& x : v) x = normal(rng);
    double want = 0;
    for (float x : v) want += static_cast<double>(x) * x;
    INFO("dim " << dim);
    CHECK(std::abs(SumOfSquares(v.data(), dim) - want) <= 1e-12 * want);
    std::vector<float> before = v;
    REQUIRE(NormalizeInPlace(v.data(), dim));
    double norm = 0;
    for (float x : v) norm += static_cast<double>(x) * x;
    CHECK(std::abs(norm - 1) < 1e-5);
    // Every value scaled by the same factor, the tail's too.
    const float inv = static_cast<float>(1.0 / std::sqrt(SumOfSquares(before.data(), dim)));
    for (size_t i = 0; i < dim; ++i) CHECK(v[i] == before[i] * inv);
    // A NaN or an infinity anywhere, tail included, makes the sum not finite.
    for (size_t at : {size_t{0}, dim / 2, dim - 1}) {
      std::vector<float> bad = before;
      bad[at] = std::numeric_limits<float>::quiet_NaN();
      CHECK_FALSE(std::isfinite(SumOfSquares(bad.data(), dim)));
      bad[at] = -std::numeric_limits<float>::infinity();
      CHECK_FALSE(std::isfinite(SumOfSquares(bad.data(), dim)));
      CHECK_FALSE(NormalizeInPlace(bad.data(), dim));
    }
  }
  // The largest floats: finite in double, so a huge vector still normalises.
  std::vector<float> huge(16, std::numeric_limits<float>::max());
  CHECK(std::isfinite(SumOfSquares(huge.data(), huge.size())));
  CHECK(NormalizeInPlace(huge.data(), huge.size()));
  std::vector<float> zero(16, 0.0f);
  CHECK_FALSE(NormalizeInPlace(zero.data(), zero.size()));
  // Subnormal values: a norm of ~4e-40 has no float inverse; refused, not
  // scaled into infinities and NaNs, and left as it was.
  std::vector<float> tiny(16, 1e-40f);
  tiny[3] = 0.0f;
  CHECK(SumOfSquares(tiny.data(), tiny.size()) > 0);
  CHECK_FALSE(NormalizeInPlace(tiny.data(), tiny.size()));
  CHECK(tiny[0] == 1e-40f);
  CHECK(tiny[3] == 0.0f);
}

}  // namespace
}  // namespace imagesearch::index
