// Helpers shared by the benchmarks: synthetic data, exact ground truth, CPU
// pinning (header-only, not for production).
#ifndef IMAGESEARCH_TOOLS_BENCH_BENCH_UTIL_H_
#define IMAGESEARCH_TOOLS_BENCH_BENCH_UTIL_H_

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "libs/index/test_vectors.h"

namespace imagesearch::bench {

// Low-intrinsic-dimension clustered data (index::LowRankVectors, seed 42):
// real embeddings look like this; isotropic noise does not.
inline std::vector<float> LowRankData(size_t count, size_t dim, size_t latent, size_t clusters,
                                      std::vector<uint32_t>* cluster_of) {
  return index::LowRankVectors(count, dim, latent, clusters, 42, cluster_of);
}

// Exact top-k rows of each query (brute force with `dist`), on `threads`
// threads. queries: nq x dim, base: n x dim, both row-major. Queries go in
// blocks of 32 per pass over the base, so a 1M-row base is read from memory
// nq / 32 times rather than nq times.
template <typename Dist>
std::vector<std::vector<uint32_t>> ExactTopK(const float* queries, size_t nq, const float* base,
                                             size_t n, size_t dim, size_t k, int threads,
                                             Dist dist) {
  constexpr size_t kBlock = 32;
  using Entry = std::pair<float, uint32_t>;  // A max-heap of the k best so far.
  std::vector<std::vector<uint32_t>> truth(nq);
  std::vector<std::thread> ts;
  const size_t blocks = (nq + kBlock - 1) / kBlock;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      std::vector<std::vector<Entry>> heaps(kBlock);
      for (size_t b = static_cast<size_t>(t); b < blocks; b += static_cast<size_t>(threads)) {
        const size_t q0 = b * kBlock, q1 = std::min(nq, q0 + kBlock);
        for (auto& h : heaps) h.clear();
        for (uint32_t r = 0; r < n; ++r) {
          for (size_t q = q0; q < q1; ++q) {
            const Entry e{dist(&queries[q * dim], &base[r * dim], &dim), r};
            std::vector<Entry>& h = heaps[q - q0];
            if (h.size() < k) {
              h.push_back(e);
              std::push_heap(h.begin(), h.end());
            } else if (e < h.front()) {
              std::pop_heap(h.begin(), h.end());
              h.back() = e;
              std::push_heap(h.begin(), h.end());
            }
          }
        }
        for (size_t q = q0; q < q1; ++q) {
          std::vector<Entry>& h = heaps[q - q0];
          std::sort_heap(h.begin(), h.end());
          for (const Entry& e : h) truth[q].push_back(e.second);
        }
      }
    });
  }
  for (auto& th : ts) th.join();
  return truth;
}

// The calling thread's CPU time, in seconds.
inline double ThreadCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// The median of per-round figures (the mean of the middle two for an even
// count; 0 for none): what the benchmarks that alternate contenders over
// rounds report.
inline double Median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t h = v.size() / 2;
  return v.size() % 2 ? v[h] : (v[h - 1] + v[h]) / 2;
}

// Calls one(q) for q = 0, 1, ... (wrapping) until `seconds` have passed and
// every query ran at least once; returns queries per second.
template <typename Fn>
double Qps(double seconds, size_t nq, Fn one) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  auto since = [&t0] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  size_t done = 0;
  while (done < nq || since() < seconds) {
    for (size_t i = 0; i < 16; ++i, ++done) one(done % nq);
  }
  return done / since();
}

// One point of a recall against QPS curve (an ef sweep).
struct Point {
  size_t ef;
  double recall, qps;
};

// QPS on `curve` at `recall` (log-QPS linear in recall between the bracketing
// points); NaN if the curve does not reach it.
inline double QpsAtRecall(const std::vector<Point>& curve, double recall) {
  std::vector<Point> c = curve;
  std::sort(c.begin(), c.end(), [](const Point& a, const Point& b) { return a.recall < b.recall; });
  double best = std::nan("");
  for (size_t i = 0; i < c.size(); ++i) {
    if (c[i].recall < recall) continue;
    // The highest QPS among interpolations that reach `recall`.
    double q = c[i].qps;
    if (i > 0 && c[i - 1].recall < recall && c[i].recall > c[i - 1].recall) {
      const double t = (recall - c[i - 1].recall) / (c[i].recall - c[i - 1].recall);
      q = std::exp(std::log(c[i - 1].qps) + t * (std::log(c[i].qps) - std::log(c[i - 1].qps)));
    }
    if (std::isnan(best) || q > best) best = q;
  }
  return best;
}

// Pins the calling thread to one core (-1: leaves it alone).
// A copy of snapshot root `from` at `to` that costs no data: segment and
// version files (immutable) are hard links; the files a publish changes in
// place (HISTORY, appended to; CURRENT; the lock) are copies, so a merge
// published in the copy leaves `from` as it was.
inline void LinkCopyRoot(const std::string& from, const std::string& to) {
  namespace fs = std::filesystem;
  fs::copy(from, to, fs::copy_options::recursive | fs::copy_options::create_hard_links);
  for (const char* name : {"HISTORY", "CURRENT", ".lock"}) {
    if (!fs::exists(from + "/" + name)) continue;
    fs::remove(to + "/" + name);
    fs::copy_file(from + "/" + name, to + "/" + name);
  }
}

inline void PinTo(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

}  // namespace imagesearch::bench

#endif  // IMAGESEARCH_TOOLS_BENCH_BENCH_UTIL_H_
