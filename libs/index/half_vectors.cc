#include "libs/index/half_vectors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "absl/strings/str_cat.h"
#include "libs/common/status_macros.h"
#include "libs/index/distance.h"
#include "libs/index/graph_format.h"

namespace imagesearch::index {
namespace {

constexpr char kMagic[8] = {'I', 'S', 'V', 'F', '1', '6', '\0', '\1'};

uint32_t MetricCode(Metric metric) {
  switch (metric) {
    case Metric::kCosine:
      return 0;
    case Metric::kInnerProduct:
      return 1;
    case Metric::kL2:
      return 2;
  }
  return 0;
}

// Rounds a non-negative double up to a float that is >= it.
float RoundUp(double v) {
  if (!(v < std::numeric_limits<float>::max())) return std::numeric_limits<float>::infinity();
  float f = static_cast<float>(v);
  if (static_cast<double>(f) < v) f = std::nextafter(f, std::numeric_limits<float>::infinity());
  return f;
}

// Writes the half copy of the float vector at `x` (dim floats, any
// alignment) to `out`, and returns that row's part of the bound (see
// HalfVectors::bound), or infinity if a value does not fit.
double ConvertRow(const char* x, uint16_t* out, size_t dim, Metric metric);

#if defined(__x86_64__)
template <bool kL2>
__attribute__((target("avx2,fma,f16c"))) float HalfAvx2(const float* q, const uint16_t* x,
                                                        size_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 x0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
    __m256 x1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i + 8)));
    __m256 q0 = _mm256_loadu_ps(q + i), q1 = _mm256_loadu_ps(q + i + 8);
    if (kL2) {
      q0 = _mm256_sub_ps(q0, x0);
      q1 = _mm256_sub_ps(q1, x1);
      x0 = q0;
      x1 = q1;
    }
    s0 = _mm256_fmadd_ps(q0, x0, s0);
    s1 = _mm256_fmadd_ps(q1, x1, s1);
  }
  for (; i + 8 <= n; i += 8) {
    __m256 x0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
    __m256 q0 = _mm256_loadu_ps(q + i);
    if (kL2) {
      q0 = _mm256_sub_ps(q0, x0);
      x0 = q0;
    }
    s0 = _mm256_fmadd_ps(q0, x0, s0);
  }
  const __m256 s = _mm256_add_ps(s0, s1);
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  float lanes[4];
  _mm_storeu_ps(lanes, s4);
  float sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (; i < n; ++i) {
    const float t = HalfToFloat(x[i]);
    sum += kL2 ? (q[i] - t) * (q[i] - t) : q[i] * t;
  }
  return kL2 ? sum : 1.0f - sum;
}

bool CpuHasF16c() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  return (ecx & bit_F16C) != 0;
}
#endif

double ConvertRow(const char* x, uint16_t* out, size_t dim, Metric metric) {
  // A float sum of n products is within gamma_n = n*u/(1-n*u) (u = 2^-24)
  // times the sum of |products| of the exact one, in any order; twice that
  // here for margin. Cauchy-Schwarz bounds that sum by |q| |x|.
  const double gamma = static_cast<double>(dim + 3) * std::ldexp(1.0, -23);
  double err2 = 0, norm2 = 0, half_norm2 = 0;
  bool finite = true;
  for (size_t i = 0; i < dim; ++i) {
    float v;
    std::memcpy(&v, x + i * sizeof(float), sizeof(v));
    out[i] = FloatToHalf(v);
    const double back = HalfToFloat(out[i]);
    finite = finite && std::isfinite(back) && std::isfinite(v);
    err2 += (v - back) * (v - back);
    norm2 += double{v} * v;
    half_norm2 += back * back;
  }
  if (!finite) return std::numeric_limits<double>::infinity();
  double b = std::sqrt(err2);
  if (metric != Metric::kL2) b += gamma * (std::sqrt(norm2) + std::sqrt(half_norm2));
  return b;
}

}  // namespace

uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {  // inf, NaN (kept quiet)
    return static_cast<uint16_t>(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
  }
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: inf
  if (ax < 0x38800000u) {  // Below 2^-14: a subnormal half (or zero).
    float a;
    std::memcpy(&a, &ax, sizeof(a));
    // a * 2^24 is exact; nearbyint rounds to nearest even (default mode).
    // 1024 (rounded up from just below 2^-14) is the smallest normal's code.
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(a * 16777216.0f)));
  }
  const uint32_t exponent = (ax >> 23) - 127 + 15;
  const uint32_t mantissa = ax & 0x7fffffu;
  uint32_t h = (exponent << 10) | (mantissa >> 13);
  const uint32_t rest = mantissa & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // May carry into the exponent.
  return static_cast<uint16_t>(sign | h);
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {
    const float f = static_cast<float>(mantissa) * (1.0f / 16777216.0f);
    return sign ? -f : f;
  }
  uint32_t bits;
  if (exponent == 31) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent - 15 + 127) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

HalfDistanceFn GetHalfDistanceFn(Metric metric) {
#if defined(__x86_64__)
  static const bool f16c = CpuHasF16c();
  if (f16c && BestSimdLevel() >= SimdLevel::kAvx2) {
    return metric == Metric::kL2 ? &HalfAvx2<true> : &HalfAvx2<false>;
  }
#else
  (void)metric;
#endif
  return nullptr;
}

absl::Status WriteHalfVectors(const std::string& graph_path, size_t dim, Metric metric,
                              const std::string& out_path) {
  ASSIGN_OR_RETURN(auto graph, MappedFile::Open(graph_path));
  ASSIGN_OR_RETURN(HnswHeader h, ParseHnswHeader(graph->data(), graph->size(), dim));
  const char* level0 = graph->data() + kHnswHeaderSize;
  const size_t stride = HalfRowStride(dim);
  double worst = 0;

  const int fd = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("create ", out_path));
  auto fail = [&](int err, absl::string_view what) {
    ::close(fd);
    ::unlink(out_path.c_str());
    return ErrnoStatus(err, absl::StrCat(what, " ", out_path));
  };
  auto write_all = [fd](const char* p, size_t n, off_t at) {
    while (n > 0) {
      const ssize_t w = ::pwrite(fd, p, n, at);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      p += w;
      n -= static_cast<size_t>(w);
      at += w;
    }
    return true;
  };
  // Rows in chunks of about 4 MiB.
  const size_t rows_per_chunk = std::max<size_t>(1, (4u << 20) / stride);
  std::vector<char> buf(rows_per_chunk * stride);
  for (uint64_t first = 0; first < h.count; first += rows_per_chunk) {
    const size_t rows = static_cast<size_t>(std::min<uint64_t>(rows_per_chunk, h.count - first));
    std::fill(buf.begin(), buf.begin() + rows * stride, 0);
    for (size_t r = 0; r < rows; ++r) {
      const char* element = level0 + (first + r) * h.size_data_per_element + h.offset_data;
      worst = std::max(
          worst,
          ConvertRow(element, reinterpret_cast<uint16_t*>(buf.data() + r * stride), dim, metric));
    }
    if (!write_all(buf.data(), rows * stride,
                   static_cast<off_t>(kHalfHeaderSize + first * stride))) {
      return fail(errno, "write");
    }
  }
  char header[kHalfHeaderSize] = {};
  std::memcpy(header, kMagic, sizeof(kMagic));
  const uint64_t fields[3] = {h.count, dim, stride};
  std::memcpy(header + 8, fields, sizeof(fields));
  const uint32_t code = MetricCode(metric);
  std::memcpy(header + 32, &code, sizeof(code));
  // RoundUp gives infinity for an infinite worst row.
  const float bound = RoundUp(worst * (1 + 1e-5));
  std::memcpy(header + 36, &bound, sizeof(bound));
  if (!write_all(header, sizeof(header), 0)) return fail(errno, "write");
  if (::fsync(fd) != 0) return fail(errno, "fsync");
  if (::close(fd) != 0) return ErrnoStatus(errno, absl::StrCat("close ", out_path));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<HalfVectors>> HalfVectors::Open(const std::string& path,
                                                               uint64_t count, size_t dim,
                                                               Metric metric) {
  std::unique_ptr<HalfVectors> v(new HalfVectors());
  ASSIGN_OR_RETURN(v->file_, MappedFile::Open(path, MappedFile::Access::kRandomWhole));
  const char* p = v->file_->data();
  const size_t size = v->file_->size();
  auto bad = [](auto... parts) {
    return absl::DataLossError(absl::StrCat("half vectors file: ", parts...));
  };
  if (size < kHalfHeaderSize) return bad("is ", size, " bytes, shorter than its 64-byte header");
  if (std::memcmp(p, kMagic, sizeof(kMagic)) != 0) return bad("bad magic");
  uint64_t fields[3];
  std::memcpy(fields, p + 8, sizeof(fields));
  uint32_t code;
  std::memcpy(&code, p + 32, sizeof(code));
  float bound;
  std::memcpy(&bound, p + 36, sizeof(bound));
  const size_t stride = HalfRowStride(dim);
  if (fields[0] != count) return bad("holds ", fields[0], " rows, the graph ", count);
  if (fields[1] != dim) return bad("dimension ", fields[1], ", the graph's is ", dim);
  if (fields[2] != stride) return bad("row stride ", fields[2], ", expected ", stride);
  if (code != MetricCode(metric)) {
    return bad("metric code ", code, ", expected ", MetricCode(metric), " (", MetricName(metric),
               ")");
  }
  if (std::isnan(bound) || bound < 0) return bad("error bound ", bound, " is not valid");
  const uint64_t want = kHalfHeaderSize + count * stride;
  if (size != want) {
    return bad("is ", size, " bytes, expected ", want, size < want ? " (truncated)" : "");
  }
  v->rows_ = p + kHalfHeaderSize;
  v->stride_ = stride;
  v->bound_ = bound;
  return v;
}

}  // namespace imagesearch::index
