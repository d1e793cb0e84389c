// Distance kernels, per call: every SIMD level this CPU supports
// (libs/index/distance.h), plus the kernel graphs actually use
// (GetDistanceFn: hnswlib's own when IMAGESEARCH_SIMD=hnswlib). "hot" reuses
// 16 rows (cache-resident); "random" reads rows of a 100 MB array at random,
// as a graph walk does. Rounds alternate the kernels.
//
//   imagesearch_kernel_bench [--dim=512 --rounds=2]
//   IMAGESEARCH_SIMD=hnswlib imagesearch_kernel_bench   # hnswlib's kernel as "in use"
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "libs/index/distance.h"
#include "libs/index/metric.h"

ABSL_FLAG(int, dim, 512, "Vector dimension.");
ABSL_FLAG(int, rounds, 2, "Rounds over all kernels.");

namespace imagesearch::index {
namespace {

int Run() {
  const size_t dim = absl::GetFlag(FLAGS_dim);
  const size_t rows = (100u << 20) / (dim * sizeof(float));
  std::vector<float> data(rows * dim), query(dim);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  for (auto& v : data) v = normal(rng);
  for (auto& v : query) v = normal(rng);
  std::vector<uint32_t> order(2'000'000);
  for (auto& o : order) o = static_cast<uint32_t>(rng() % rows);

  std::vector<std::pair<std::string, DistanceFn>> kernels;
  for (SimdLevel level :
       {SimdLevel::kScalar, SimdLevel::kSse, SimdLevel::kAvx2, SimdLevel::kAvx512}) {
    if (level <= SupportedSimdLevel()) {
      kernels.emplace_back(SimdLevelName(level), DistanceKernel(Metric::kCosine, level));
    }
  }
  kernels.emplace_back("in use", GetDistanceFn(Metric::kCosine, dim));
  std::printf("dim %zu, cosine; in use: %s\n", dim,
              std::getenv("IMAGESEARCH_SIMD") != nullptr ? std::getenv("IMAGESEARCH_SIMD")
                                                         : SimdLevelName(BestSimdLevel()));
  for (int round = 1; round <= absl::GetFlag(FLAGS_rounds); ++round) {
    for (bool random : {false, true}) {
      for (const auto& [name, fn] : kernels) {
        volatile float sink = 0;
        const size_t calls = random ? order.size() : 20'000'000;
        const auto t0 = std::chrono::steady_clock::now();
        for (size_t i = 0; i < calls; ++i) {
          const float* row = &data[(random ? order[i] : (i & 15)) * dim];
          sink = sink + fn(query.data(), row, &dim);
        }
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("round %d  %-7s %-7s %7.1f ns/call\n", round, random ? "random" : "hot",
                    name.c_str(), s / calls * 1e9);
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace imagesearch::index

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return imagesearch::index::Run();
}
