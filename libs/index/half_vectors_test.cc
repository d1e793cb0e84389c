#include "libs/index/half_vectors.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "libs/common/file_util.h"
#include "libs/common/test_temp_dir.h"
#include "libs/index/distance.h"
#include "libs/index/graph_format.h"
#include "libs/index/hnsw_builder.h"
#include "libs/index/test_vectors.h"

namespace imagesearch::index {
namespace {

float FromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

#if defined(__x86_64__)
bool HasF16c() {
  unsigned eax, ebx, ecx, edx;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
}
__attribute__((target("f16c"))) uint16_t HardwareToHalf(float f) {
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
}
__attribute__((target("f16c"))) float HardwareToFloat(uint16_t h) { return _cvtsh_ss(h); }

TEST_CASE("FloatToHalf and HalfToFloat agree with the CPU's F16C conversions") {
  if (!HasF16c()) {
    WARN("no F16C on this CPU");
    return;
  }
  // Every half, both ways (NaN payloads compared as NaN).
  for (uint32_t h = 0; h < 65536; ++h) {
    const float want = HardwareToFloat(static_cast<uint16_t>(h));
    const float got = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      REQUIRE(std::isnan(got));
      continue;
    }
    INFO("half " << h);
    REQUIRE(std::memcmp(&want, &got, sizeof(float)) == 0);
    REQUIRE(FloatToHalf(got) == h);
  }
  // Floats: ties, the subnormal and overflow edges, and random bit patterns.
  std::vector<uint32_t> bits = {0x38800000u, 0x387fffffu, 0x33000000u, 0x33000001u, 0x477fe000u,
                                0x477fefffu, 0x477ff000u, 0x477ff001u, 0x3f801000u, 0x3f803000u,
                                0x00000001u, 0x7f7fffffu, 0x7f800000u};
  std::mt19937 rng(5);
  for (int i = 0; i < 2000000; ++i) bits.push_back(rng());
  for (uint32_t b : bits) {
    for (uint32_t sign : {0u, 0x80000000u}) {
      const float f = FromBits(b ^ sign);
      if (std::isnan(f)) continue;
      INFO("float bits " << (b ^ sign));
      REQUIRE(FloatToHalf(f) == HardwareToHalf(f));
    }
  }
}
#endif

TEST_CASE("The skip rule never rules out a row whose float distance beats the limit") {
  if (GetHalfDistanceFn(Metric::kL2) == nullptr) {
    WARN("no AVX2+F16C: the searcher reads floats");
    return;
  }
  std::mt19937 rng(3);
  for (Metric metric : {Metric::kCosine, Metric::kInnerProduct, Metric::kL2}) {
    for (size_t dim : {7, 64, 512, 1792}) {
      const size_t n = dim >= 512 ? 300 : 1500;
      const std::string dir = testing::NewTempDir("half_test");
      REQUIRE(!dir.empty());
      auto data = ClusteredVectors(n, dim, 16, 17);
      // Norms from 0.01 to 100 for ip and l2, so the bound is far from uniform.
      std::uniform_real_distribution<float> scale(-2, 2);
      for (size_t r = 0; r < n; ++r) {
        const float s = metric == Metric::kCosine ? 1.0f : std::pow(10.0f, scale(rng));
        for (size_t i = 0; i < dim; ++i) data[r * dim + i] *= s;
        if (metric == Metric::kCosine) NormalizeInPlace(&data[r * dim], dim);
      }
      HnswParams params;
      params.m = 8;
      params.ef_construction = 20;
      REQUIRE(BuildHnswGraph(data.data(), n, dim, metric, params, dir + "/g", dir + "/o").ok());
      REQUIRE(WriteHalfVectors(dir + "/g", dim, metric, dir + "/h").ok());
      auto half = HalfVectors::Open(dir + "/h", n, dim, metric);
      REQUIRE(half.ok());
      REQUIRE(std::isfinite((*half)->bound()));
      auto graph = MappedFile::Open(dir + "/g");
      REQUIRE(graph.ok());
      auto header = ParseHnswHeader((*graph)->data(), (*graph)->size(), dim);
      REQUIRE(header.ok());
      const DistanceFn exact = GetDistanceFn(metric, dim);
      const HalfDistanceFn approx = GetHalfDistanceFn(metric);
      auto queries = ClusteredVectors(20, dim, 16, 99);
      size_t checked = 0, skippable = 0;
      for (size_t qi = 0; qi < 20; ++qi) {
        float* q = &queries[qi * dim];
        if (metric == Metric::kCosine) NormalizeInPlace(q, dim);
        const HalfSkip skip(metric, q, dim, (*half)->bound());
        for (uint32_t id = 0; id < n; ++id) {
          const char* x = (*graph)->data() + kHnswHeaderSize +
                          static_cast<size_t>(id) * header->size_data_per_element +
                          header->offset_data;
          const float d = exact(q, x, &dim);
          const float dh = approx(q, (*half)->Row(id), dim);
          INFO(MetricName(metric) << " dim " << dim << " query " << qi << " row " << id << ": d "
                                  << d << " half " << dh);
          // d < limit: must not be skipped.
          REQUIRE_FALSE(skip.Skip(dh, std::nextafter(d, std::numeric_limits<float>::infinity())));
          // And the rule is useful: rows well beyond a limit are skipped.
          skippable += skip.Skip(dh, d - std::fabs(d) * 0.01f - 1e-3f);
          ++checked;
        }
      }
      CHECK(checked == 20 * n);
      // The bound is one number per file: tight for unit vectors; with
      // norms spread over four decades (ip, l2 here) it is set by the
      // largest, and small rows are rarely ruled out.
      if (metric == Metric::kCosine) CHECK(skippable > checked * 9 / 10);
    }
  }
}

TEST_CASE("A half vectors file that disagrees with its graph is refused") {
  const std::string dir = testing::NewTempDir("half_test");
  REQUIRE(!dir.empty());
  const size_t n = 200, dim = 24;
  auto data = ClusteredVectors(n, dim, 8, 1);
  HnswParams params;
  params.m = 8;
  REQUIRE(BuildHnswGraph(data.data(), n, dim, Metric::kL2, params, dir + "/g", dir + "/o").ok());
  REQUIRE(WriteHalfVectors(dir + "/g", dim, Metric::kL2, dir + "/h").ok());
  REQUIRE(HalfVectors::Open(dir + "/h", n, dim, Metric::kL2).ok());
  auto refused = [&](uint64_t count, size_t d, Metric metric, const std::string& why) {
    auto h = HalfVectors::Open(dir + "/h", count, d, metric);
    REQUIRE_FALSE(h.ok());
    INFO(h.status().ToString());
    CHECK(h.status().message().find(why) != std::string::npos);
  };
  refused(n + 1, dim, Metric::kL2, "holds 200 rows");
  refused(n, dim + 1, Metric::kL2, "dimension 24");
  refused(n, dim, Metric::kCosine, "metric");
  auto bytes = ReadFileToString(dir + "/h");
  REQUIRE(bytes.ok());
  REQUIRE(WriteFileDurably(dir + "/h", bytes->substr(0, bytes->size() - 10)).ok());
  refused(n, dim, Metric::kL2, "truncated");
  REQUIRE(WriteFileDurably(dir + "/h", bytes->substr(0, 30)).ok());
  refused(n, dim, Metric::kL2, "64-byte header");
  std::string bad_magic = *bytes;
  bad_magic[0] = 'X';
  REQUIRE(WriteFileDurably(dir + "/h", bad_magic).ok());
  refused(n, dim, Metric::kL2, "magic");
}

TEST_CASE("A vector beyond binary16's range gets an infinite bound") {
  const std::string dir = testing::NewTempDir("half_test");
  REQUIRE(!dir.empty());
  const size_t n = 50, dim = 16;
  auto data = ClusteredVectors(n, dim, 4, 2);
  data[3 * dim + 5] = 1e6f;
  HnswParams params;
  params.m = 8;
  REQUIRE(BuildHnswGraph(data.data(), n, dim, Metric::kL2, params, dir + "/g", dir + "/o").ok());
  REQUIRE(WriteHalfVectors(dir + "/g", dim, Metric::kL2, dir + "/h").ok());
  auto h = HalfVectors::Open(dir + "/h", n, dim, Metric::kL2);
  REQUIRE(h.ok());
  CHECK(std::isinf((*h)->bound()));
}

}  // namespace
}  // namespace imagesearch::index
