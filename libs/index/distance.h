// Distance kernels chosen at run time for the CPU, so one portable x86-64
// binary (no -march=native) still searches with AVX-512 or AVX2+FMA where the
// machine has them. Both the graph builder (hnswlib, through our own space)
// and the mmap searcher use these same kernels, so they compute bit-identical
// distances on one machine. Semantics are hnswlib's: squared L2, and 1 - dot
// for inner product and cosine.
//
// The default is AVX2+FMA where the CPU has it (also on AVX-512 machines:
// measured no slower here, see distance.cc), else SSE. IMAGESEARCH_SIMD=
// avx512|avx2|sse|scalar asks for a level (capped at what the CPU supports);
// IMAGESEARCH_SIMD=hnswlib makes graphs use hnswlib's own compile-time
// kernels instead (benchmarks compare them).
//
// Thread-safe: the choice is made once.
#ifndef IMAGESEARCH_LIBS_INDEX_DISTANCE_H_
#define IMAGESEARCH_LIBS_INDEX_DISTANCE_H_

#include <cstddef>
#include <string>

#include "libs/index/metric.h"

namespace imagesearch::index {

enum class SimdLevel { kScalar, kSse, kAvx2, kAvx512 };

// The level in use: the default or IMAGESEARCH_SIMD's; computed once.
SimdLevel BestSimdLevel();
// The highest level this CPU supports.
SimdLevel SupportedSimdLevel();
const char* SimdLevelName(SimdLevel level);

// The kernel for `metric` at `level` (hnswlib's signature: (a, b, &dim)).
// REQUIRES: the CPU supports `level` (SimdLevel <= BestSimdLevel()).
DistanceFn DistanceKernel(Metric metric, SimdLevel level);

}  // namespace imagesearch::index

#endif  // IMAGESEARCH_LIBS_INDEX_DISTANCE_H_
