// Search throughput, measured side by side in one run on one machine:
//   (a) hnswlib in-process: HierarchicalNSW::searchKnn (loadIndex'd heap copy)
//   (b) our mmap searcher in-process
//   (c) the imagesearch-query service over gRPC on loopback (real binary,
//       real client), all at the same ef, chosen as the smallest ef on the
//       sweep where hnswlib reaches recall@10 >= 0.95.
// Prints QPS, recall and the ratios (c)/(a) and (b)/(a).
//
//   search_bench --query_binary=build/services/query/imagesearch-query
//       [--n=100000 --dim=512 --queries=2000 --threads=2 --clients=4 --seconds=5]
#include <grpcpp/grpcpp.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "imagesearch/v1/imagesearch.grpc.pb.h"
#include "libs/index/distance.h"
#include "libs/index/hnsw_builder.h"
#include "libs/index/metric.h"
#include "libs/index/test_vectors.h"
#include "libs/snapshot/snapshot.h"
#include "libs/snapshot/snapshot_store.h"
#include "libs/snapshot/test_snapshots.h"
#include "tools/bench/bench_util.h"
#include "tools/bench/service_client.h"

ABSL_FLAG(std::string, query_binary, "", "Path of imagesearch-query.");
ABSL_FLAG(int, n, 100000, "Indexed vectors.");
ABSL_FLAG(int, dim, 512, "Dimension (CLIP ViT-B is 512).");
ABSL_FLAG(int, queries, 2000, "Distinct query vectors.");
ABSL_FLAG(int, threads, 2, "In-process search threads (the service searches on its gRPC threads).");
ABSL_FLAG(int, clients, 4, "Concurrent gRPC client threads.");
ABSL_FLAG(double, seconds, 5, "Measuring time per contender.");
ABSL_FLAG(int, batch, 16, "Queries per SearchBatch call for the batched measurement.");
ABSL_FLAG(double, spread, 1.0, "Within-cluster spread of the synthetic data (higher = harder).");
ABSL_FLAG(double, target_recall, 0.95, "Recall@10 the ef must reach.");
ABSL_FLAG(std::string, workdir, "/tmp/imagesearch_search_bench", "Where the snapshot goes.");
ABSL_FLAG(bool, pinned, false,
          "Fair service vs library: the service runs on core 0 (taskset), in-process searches run "
          "with one thread on core 0, and this process's gRPC clients run on core 1, so the "
          "client's own cost is not billed to the service.");
ABSL_FLAG(bool, reuse, false,
          "Search the snapshot an earlier run left in --workdir (same --n/--dim/--spread) instead "
          "of building one: compares builds (e.g. portable vs -march=native) on one graph.");

namespace imagesearch {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kK = 10;

using bench::PinTo;

int Run() {
  const size_t n = absl::GetFlag(FLAGS_n), dim = absl::GetFlag(FLAGS_dim);
  const size_t nq = absl::GetFlag(FLAGS_queries);
  const bool pinned = absl::GetFlag(FLAGS_pinned);
  const int threads = pinned ? 1 : absl::GetFlag(FLAGS_threads);
  const int library_cpu = pinned ? 0 : -1, client_cpu = pinned ? 1 : -1;
  const double secs = absl::GetFlag(FLAGS_seconds);
  const std::string root = absl::GetFlag(FLAGS_workdir) + "/root";
  const bool reuse = absl::GetFlag(FLAGS_reuse) && snapshot::ReadCurrentVersion(root).ok();
  if (!reuse) std::filesystem::remove_all(absl::GetFlag(FLAGS_workdir));

  std::printf("data: %zu x %zu clustered vectors (cosine), %zu held-out queries\n", n, dim, nq);
  // One draw, so data and queries share cluster centres; the tail is held out.
  snapshot::SyntheticCorpus corpus = snapshot::MakeSyntheticCorpus(
      n + nq, static_cast<int>(dim), index::Metric::kCosine, /*id_prefix=*/"", 1, 1000,
      static_cast<float>(absl::GetFlag(FLAGS_spread)));
  std::vector<float> queries(corpus.vectors.begin() + n * dim, corpus.vectors.end());
  for (size_t i = 0; i < nq; ++i) index::NormalizeInPlace(&queries[i * dim], dim);
  snapshot::SnapshotInput& in = corpus.input;
  in.count = n;
  in.ids.resize(n);
  in.hnsw.m = 16;
  in.hnsw.ef_construction = 100;
  const float* data = corpus.vectors.data();
  const auto b0 = Clock::now();
  auto v = reuse ? snapshot::ReadCurrentVersion(root)
                 : snapshot::PublishSnapshot(root, corpus.WithGraph());
  if (!v.ok()) {
    std::cerr << v.status() << "\n";
    return 1;
  }
  std::printf("%s snapshot in %.1fs\n", reuse ? "reused the" : "built",
              std::chrono::duration<double>(Clock::now() - b0).count());
  std::printf("distance kernel: %s\n",
              std::getenv("IMAGESEARCH_SIMD") != nullptr &&
                      std::string(std::getenv("IMAGESEARCH_SIMD")) == "hnswlib"
                  ? "hnswlib's own (compile-time SIMD)"
                  : index::SimdLevelName(index::BestSimdLevel()));
  auto snap = snapshot::Snapshot::Open(root, *v, snapshot::VerifyMode::kSizes);
  const std::string graph = snapshot::FirstSegmentDir(root, *v) + "/graph.hnsw";
  auto ref = index::HnswlibIndex::Load(graph, dim, index::Metric::kCosine);
  if (!snap.ok() || !ref.ok()) return 1;

  // Exact ground truth (brute force with the same kernel).
  auto dist = index::GetDistanceFn(index::Metric::kCosine, dim);
  std::vector<float> normed(data, data + n * dim);
  for (size_t i = 0; i < n; ++i) index::NormalizeInPlace(&normed[i * dim], dim);
  const std::vector<std::vector<uint32_t>> truth =
      bench::ExactTopK(queries.data(), nq, normed.data(), n, dim, kK, threads, dist);
  auto recall_of = [&](auto search) {
    size_t hits = 0;
    for (size_t q = 0; q < nq; ++q) {
      std::vector<uint32_t> got = search(q);
      for (uint32_t g : got) hits += std::count(truth[q].begin(), truth[q].end(), g);
    }
    return static_cast<double>(hits) / (nq * kK);
  };

  size_t ef = 0;
  double ref_recall = 0;
  for (size_t e : {10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512}) {
    (*ref)->SetEf(e);
    ref_recall = recall_of([&](size_t q) {
      std::vector<uint32_t> out;
      for (auto& p : (*ref)->Search(&queries[q * dim], kK))
        out.push_back(static_cast<uint32_t>(p.second));
      return out;
    });
    std::printf("  hnswlib ef=%zu recall@10=%.4f\n", e, ref_recall);
    if (ref_recall >= absl::GetFlag(FLAGS_target_recall)) {
      ef = e;
      break;
    }
  }
  if (ef == 0) {
    std::printf("target recall not reached\n");
    return 1;
  }
  const double ours_recall = recall_of([&](size_t q) {
    std::vector<uint32_t> out;
    for (auto& nb :
         (*snap)->segments().front().segment->searcher().Search(&queries[q * dim], kK, ef))
      out.push_back(nb.row);
    return out;
  });

  const double qps_hnswlib = bench::ClosedLoopQps(
      threads, secs, nq,
      [&](int, size_t q) {
        auto r = (*ref)->Search(&queries[q * dim], kK);
        (void)r;
      },
      library_cpu);
  const double qps_mmap = bench::ClosedLoopQps(
      threads, secs, nq,
      [&](int, size_t q) {
        auto r = (*snap)->segments().front().segment->searcher().Search(&queries[q * dim], kK, ef);
        (void)r;
      },
      library_cpu);

  // Threads made from here on (gRPC's client threads included) start on core 1.
  PinTo(client_cpu);
  const int clients = absl::GetFlag(FLAGS_clients);
  bench::ServiceUnderTest service(absl::GetFlag(FLAGS_query_binary), root,
                                  absl::GetFlag(FLAGS_workdir) + "/query.log", pinned ? 0 : -1,
                                  clients);
  const std::vector<v1::SearchRequest> reqs =
      bench::VectorRequests(queries.data(), nq, dim, kK, ef);
  if (!service.started() || !service.WaitServing(reqs[0])) {
    std::cerr << "query service did not start\n";
    return 1;
  }
  // The service's recall, from the row numbers its ids are.
  std::atomic<uint64_t> failures{0};
  const double service_recall = recall_of([&](size_t q) {
    v1::SearchResponse r;
    std::vector<uint32_t> out;
    if (!service.Search(0, reqs[q], &r).ok()) failures++;
    for (auto& h : r.hits()) out.push_back(static_cast<uint32_t>(std::stoul(h.id())));
    return out;
  });
  const double qps_service = service.UnaryQps(reqs, secs, client_cpu, &failures);
  // Batched: SearchBatch calls of --batch queries; QPS counts queries.
  const int batch = absl::GetFlag(FLAGS_batch);
  const double qps_batched = service.BatchQps(bench::Batches(reqs, static_cast<size_t>(batch)),
                                              secs, client_cpu, &failures);

  std::printf(
      "\nef=%zu (smallest on the sweep with hnswlib recall@10 >= %.2f), k=10, %d threads%s\n", ef,
      absl::GetFlag(FLAGS_target_recall), threads,
      pinned ? "; pinned: service and in-process on core 0, clients on core 1" : "");
  std::printf("  %-34s %9.0f QPS  recall@10 %.4f\n", "hnswlib searchKnn, in-process", qps_hnswlib,
              ref_recall);
  std::printf("  %-34s %9.0f QPS  recall@10 %.4f\n", "mmap searcher, in-process", qps_mmap,
              ours_recall);
  std::printf("  %-34s %9.0f QPS  recall@10 %.4f  (%d clients, %llu failed)\n",
              "imagesearch-query over gRPC", qps_service, service_recall, clients,
              static_cast<unsigned long long>(failures.load()));
  std::printf("  %-34s %9.0f QPS  (SearchBatch of %d)\n", "imagesearch-query, batched", qps_batched,
              batch);
  std::printf("ratio service (unary Search) / in-process hnswlib: %.3f\n",
              qps_service / qps_hnswlib);
  std::printf("ratio service (SearchBatch %d) / in-process hnswlib: %.3f\n", batch,
              qps_batched / qps_hnswlib);
  std::printf("ratio mmap searcher / hnswlib:      %.3f\n", qps_mmap / qps_hnswlib);
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace imagesearch

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return imagesearch::Run();
}
