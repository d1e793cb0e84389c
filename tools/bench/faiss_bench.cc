// faiss as a second peer: on the same data, side by side in one run,
//   (a) our mmap searcher in-process (index::MmapHnswSearcher on a snapshot
//       published exactly as search_bench publishes it),
//   (b) hnswlib in-process (loadIndex'd heap copy of the same graph file),
//   (c) faiss IndexHNSWFlat (METRIC_INNER_PRODUCT on unit vectors = cosine),
//       built with the same M and efConstruction,
// it reports build seconds and memory, then for each ef of a sweep the
// single-thread QPS and recall@10 against brute force, and the QPS of each at
// equal recall (interpolated on its curve).
//
// Searches run on one thread (pinned with --cpu), OpenMP limited to one
// thread: our searcher answers one query per call on the caller's thread.
// faiss is timed three ways: one query per search() call, as a server calls
// it; all queries in one call ("faiss-b": faiss allocates its visited table
// once per call, not per query); and one query per call on faiss's graph with
// our SIMD distance kernel ("faiss+k", see KernelStorage), since Debian's
// faiss has scalar kernels only.
//
// With --query_binary it also drives the real service over gRPC at each ef
// (pinned: the service on --cpu, the closed-loop clients on the other core),
// unary Search and SearchBatch, so the curves of all contenders come from one
// run. Pinned, unary Search is also driven by one client thread that spins on
// its completion queue ("svc poll", ServiceUnderTest::PolledUnaryQps): on
// loopback the server's send wakes a sleeping client, on the server's core.
// With --floor_binary it also measures, at each ef, the ceiling of any
// service over gRPC here: imagesearch_grpc_floor_server (async, a fixed
// answer) pinned as the service is, spinning for hnswlib's time a query at
// that ef while it reads random rows of a buffer the graph's size, driven by
// the same clients ("floor", "floor poll"). Its QPS over hnswlib's is what a
// server whose search cost exactly hnswlib's, and which did nothing but
// gRPC's own work besides, would reach.
// --csv writes every point for tools/bench/plot.py.
//
//   imagesearch_faiss_bench --data=lowrank --n=100000 --dim=512 --cpu=0
//       [--data=clustered --spread=1: search_bench's data]
//       [--data=npy --vectors=FILE: real embeddings; the last --queries rows are the queries]
//       [--query_binary=build/services/query/imagesearch-query] [--faiss=false] [--reuse]
//       [--floor_binary=build/tools/bench/imagesearch_grpc_floor_server]
#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/impl/DistanceComputer.h>
#include <faiss/impl/FaissAssert.h>
#include <faiss/index_io.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "libs/common/file_util.h"
#include "libs/index/distance.h"
#include "libs/index/hnsw_builder.h"
#include "libs/index/metric.h"
#include "libs/snapshot/snapshot.h"
#include "libs/snapshot/snapshot_store.h"
#include "libs/snapshot/test_snapshots.h"
#include "libs/snapshot/vector_io.h"
#include "tools/bench/bench_util.h"
#include "tools/bench/service_client.h"

ABSL_FLAG(std::string, data, "lowrank",
          "lowrank: tools/bench/bench_util.h LowRankData (filter_bench's realistic data); "
          "clustered: search_bench's data (MakeSyntheticCorpus, seed 1, 1000 clusters, --spread); "
          "npy: the rows of --vectors, the last --queries of them held out as queries.");
ABSL_FLAG(std::string, vectors, "", "--data=npy: an N x D float32 .npy (or .fvecs) file.");
ABSL_FLAG(bool, faiss, true, "Also build and search faiss (slow to build at 1M: scalar kernels).");
ABSL_FLAG(std::string, query_binary, "",
          "Also measure imagesearch-query over gRPC at every ef (unary Search and SearchBatch).");
ABSL_FLAG(std::string, floor_binary, "",
          "Also measure imagesearch_grpc_floor_server at every ef, spinning for hnswlib's time a "
          "query: the QPS of a gRPC server that adds nothing to hnswlib's search but gRPC.");
ABSL_FLAG(int, clients, 4, "--query_binary, --floor_binary: closed-loop gRPC client threads.");
ABSL_FLAG(int, batch, 16, "--query_binary: queries per SearchBatch call.");
ABSL_FLAG(std::string, csv, "", "Write every sweep point here: contender,ef,recall,qps.");
ABSL_FLAG(std::string, queries_out, "",
          "Write the held-out queries here (.npy, unit length) for imagesearch-loadgen --vectors.");
ABSL_FLAG(int, n, 100000, "Indexed vectors (--data=npy: at most the file's rows minus --queries).");
ABSL_FLAG(int, dim, 512, "Dimension (CLIP ViT-B is 512).");
ABSL_FLAG(int, queries, 1000, "Held-out query vectors of the same distribution.");
ABSL_FLAG(double, spread, 1.0, "--data=clustered: within-cluster spread (search_bench's flag).");
ABSL_FLAG(int, latent_dim, 32, "--data=lowrank: intrinsic dimension.");
ABSL_FLAG(int, clusters, 1000, "--data=lowrank: clusters in the latent space.");
ABSL_FLAG(int, m, 16, "HNSW M for both graphs (search_bench: 16).");
ABSL_FLAG(int, ef_construction, 100, "HNSW efConstruction for both graphs (search_bench: 100).");
ABSL_FLAG(int, build_threads, 0, "Threads for both builds; 0 = all cores.");
ABSL_FLAG(std::string, ef, "10,16,24,32,48,64,96,128,192,256,384", "ef sweep (comma-separated).");
ABSL_FLAG(double, seconds, 1.0, "Measuring time per contender per ef (split over --rounds).");
ABSL_FLAG(std::string, half_vectors, "auto",
          "Write graph.f16: auto (from 1024 dimensions, as the indexer), on or off. With --reuse, "
          "a cached version that disagrees is republished from the same graph files.");
ABSL_FLAG(
    int, rounds, 3,
    "Rounds per ef: every contender is timed once per round, in turn, and its median "
    "round counts, so a burst of host noise falls on one round of each, not on one contender.");
ABSL_FLAG(int, cpu, -1,
          "Core the in-process searches and the service run on (-1: not pinned); the service's "
          "clients run on another core.");
ABSL_FLAG(std::string, workdir, "/tmp/imagesearch_faiss_bench",
          "Where the snapshot and faiss index go.");
ABSL_FLAG(bool, reuse, false,
          "Reuse the snapshot and faiss index an earlier run left in --workdir (same data flags).");

namespace imagesearch {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kK = 10;
// faiss 1.7.3 (Debian 12) has Index::idx_t; later releases also keep it.
using FaissIdx = faiss::Index::idx_t;

// Debian's libfaiss 1.7.3 is built for baseline x86-64, where faiss's
// fvec_inner_product and fvec_L2sqr are the scalar reference loops. To tell
// faiss's graph search from its distance kernel, "faiss+k" searches faiss's
// own graph (a copy of its HNSW struct) over this storage, which answers with
// our runtime-dispatched SIMD kernel: the inner product of unit vectors.
class KernelStorage : public faiss::Index {
 public:
  KernelStorage(const float* vectors, size_t count, size_t dim)
      : faiss::Index(static_cast<FaissIdx>(dim), faiss::METRIC_INNER_PRODUCT),
        vectors_(vectors),
        dist_(index::GetDistanceFn(index::Metric::kCosine, dim)) {
    ntotal = static_cast<FaissIdx>(count);
  }
  void add(FaissIdx, const float*) override { FAISS_THROW_MSG("read-only"); }
  void reset() override { FAISS_THROW_MSG("read-only"); }
  void search(FaissIdx, const float*, FaissIdx, float*, FaissIdx*,
              const faiss::SearchParameters*) const override {
    FAISS_THROW_MSG("storage only");
  }
  faiss::DistanceComputer* get_distance_computer() const override { return new Computer(this); }

 private:
  // Our cosine kernel returns 1 - <a, b>; faiss wants the similarity.
  struct Computer : faiss::DistanceComputer {
    explicit Computer(const KernelStorage* s) : s(s), dim(static_cast<size_t>(s->d)) {}
    void set_query(const float* x) override { q = x; }
    float operator()(FaissIdx i) override { return 1.0f - s->dist_(q, s->Row(i), &dim); }
    float symmetric_dis(FaissIdx i, FaissIdx j) override {
      return 1.0f - s->dist_(s->Row(i), s->Row(j), &dim);
    }
    const KernelStorage* s;
    size_t dim;
    const float* q = nullptr;
  };
  const float* Row(FaissIdx i) const { return vectors_ + static_cast<size_t>(i) * d; }
  const float* vectors_;
  index::DistanceFn dist_;
};

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

size_t RssBytes() {
  std::ifstream f("/proc/self/statm");
  size_t pages = 0, resident = 0;
  f >> pages >> resident;
  return resident * static_cast<size_t>(::sysconf(_SC_PAGESIZE));
}

double MiB(size_t bytes) { return bytes / 1048576.0; }

using bench::PinTo;

using bench::Point;
using bench::Qps;
using bench::QpsAtRecall;

int Run() {
  size_t n = absl::GetFlag(FLAGS_n), dim = absl::GetFlag(FLAGS_dim);
  const size_t nq = absl::GetFlag(FLAGS_queries);
  const std::string workdir = absl::GetFlag(FLAGS_workdir);
  const std::string root = workdir + "/root", faiss_path = workdir + "/faiss.index";
  const int m = absl::GetFlag(FLAGS_m), efc = absl::GetFlag(FLAGS_ef_construction);
  const int build_threads =
      absl::GetFlag(FLAGS_build_threads) > 0
          ? absl::GetFlag(FLAGS_build_threads)
          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<size_t> efs;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_ef), ',', absl::SkipEmpty())) {
    size_t e = 0;
    if (!absl::SimpleAtoi(s, &e) || e == 0) {
      std::cerr << "bad --ef entry: " << s << "\n";
      return 1;
    }
    efs.push_back(e);
  }
  const bool with_faiss = absl::GetFlag(FLAGS_faiss);
  const bool reuse = absl::GetFlag(FLAGS_reuse) && snapshot::ReadCurrentVersion(root).ok() &&
                     (!with_faiss || std::filesystem::exists(faiss_path));
  if (!reuse) std::filesystem::remove_all(workdir);

  // The data: one draw of n + nq rows; the tail is held out as queries.
  std::vector<float> data;
  const std::string kind = absl::GetFlag(FLAGS_data);
  snapshot::SnapshotInput in;
  if (kind == "clustered") {
    // Exactly search_bench's corpus.
    snapshot::SyntheticCorpus corpus = snapshot::MakeSyntheticCorpus(
        n + nq, static_cast<int>(dim), index::Metric::kCosine, /*id_prefix=*/"", 1, 1000,
        static_cast<float>(absl::GetFlag(FLAGS_spread)));
    data = std::move(corpus.vectors);
    in = std::move(corpus.input);
    std::printf(
        "data: %zu x %zu clustered (search_bench's, spread %g), cosine, %zu held-out queries\n", n,
        dim, absl::GetFlag(FLAGS_spread), nq);
  } else if (kind == "lowrank") {
    std::vector<uint32_t> cluster_of;
    data = bench::LowRankData(n + nq, dim, absl::GetFlag(FLAGS_latent_dim),
                              absl::GetFlag(FLAGS_clusters), &cluster_of);
    in.dim = static_cast<int>(dim);
    in.metric = index::Metric::kCosine;
    in.ids.reserve(n);
    for (size_t r = 0; r < n; ++r) in.ids.push_back({std::to_string(r), "", ""});
    std::printf("data: %zu x %zu low-rank (latent %d, %d clusters), cosine, %zu held-out queries\n",
                n, dim, absl::GetFlag(FLAGS_latent_dim), absl::GetFlag(FLAGS_clusters), nq);
  } else if (kind == "npy") {
    absl::StatusOr<VectorSet> file = ReadVectorFile(absl::GetFlag(FLAGS_vectors));
    if (!file.ok() || file->count <= nq) {
      std::cerr << "--vectors: "
                << (file.ok() ? "fewer rows than --queries" : file.status().ToString()) << "\n";
      return 1;
    }
    n = std::min(n, file->count - nq);
    dim = file->dim;
    // The first n rows are indexed, the last nq are the queries.
    data.assign(file->data.begin(), file->data.begin() + n * dim);
    data.insert(data.end(), file->data.end() - nq * dim, file->data.end());
    in.dim = static_cast<int>(dim);
    in.metric = index::Metric::kCosine;
    for (size_t r = 0; r < n; ++r) in.ids.push_back({std::to_string(r), "", ""});
    std::printf("data: %zu x %zu rows of %s, cosine, its last %zu rows as queries\n", n, dim,
                absl::GetFlag(FLAGS_vectors).c_str(), nq);
  } else {
    std::cerr << "--data must be lowrank, clustered or npy\n";
    return 1;
  }
  in.count = n;
  in.ids.resize(n);
  in.hnsw.m = m;
  in.hnsw.ef_construction = efc;
  in.hnsw.threads = build_threads;
  const std::string half_flag = absl::GetFlag(FLAGS_half_vectors);
  if (half_flag != "auto" && half_flag != "on" && half_flag != "off") {
    std::cerr << "--half_vectors must be auto, on or off\n";
    return 1;
  }
  if (half_flag != "auto") in.half_vectors = half_flag == "on";
  const bool want_half = in.half_vectors.value_or(in.dim >= snapshot::kHalfVectorsMinDim);
  std::printf("HNSW M=%d efConstruction=%d, builds on %d threads; searches on one thread%s\n", m,
              efc, build_threads,
              absl::GetFlag(FLAGS_cpu) >= 0
                  ? (", core " + std::to_string(absl::GetFlag(FLAGS_cpu))).c_str()
                  : " (not pinned)");

  // (a)+(b): our snapshot, built as search_bench builds it (hnswlib inside).
  double ours_build_s = -1;
  absl::StatusOr<uint64_t> v = snapshot::ReadCurrentVersion(root);
  if (!reuse) {
    in.graph = index::HnswGraphWriter(data.data(), n, dim, in.metric, in.hnsw);
    const auto t0 = Clock::now();
    v = snapshot::PublishSnapshot(root, in);
    ours_build_s = Since(t0);
  } else if (v.ok() && want_half != std::filesystem::exists(snapshot::FirstSegmentDir(root, *v) +
                                                            "/" + snapshot::kHalfVectorsFile)) {
    // The cached version has graph.f16 where it should not, or lacks it (a
    // graph cached before snapshots carried it): republish the same graph
    // files as a new version, with or without it.
    const std::string old_dir = snapshot::FirstSegmentDir(root, *v);
    in.graph = [&old_dir](const std::string& graph, const std::string& offsets) -> absl::Status {
      absl::Status s = CopyFileDurably(old_dir + "/" + snapshot::kGraphFile, graph);
      return s.ok() ? CopyFileDurably(old_dir + "/" + snapshot::kOffsetsFile, offsets) : s;
    };
    v = snapshot::PublishSnapshot(root, in);
    std::printf("reused graph republished %s graph.f16 as %s\n", want_half ? "with" : "without",
                v.ok() ? snapshot::VersionDirName(*v).c_str() : v.status().ToString().c_str());
  }
  in = snapshot::SnapshotInput();
  if (!v.ok()) {
    std::cerr << v.status() << "\n";
    return 1;
  }
  // The graph files are in the version's one segment (the version dir itself
  // for a graph cached before segments).
  const std::string vdir = snapshot::FirstSegmentDir(root, *v);
  size_t graph_bytes = 0, snapshot_bytes = 0;
  for (const auto& e : std::filesystem::directory_iterator(vdir)) {
    if (!e.is_regular_file()) continue;
    snapshot_bytes += e.file_size();
    const auto name = e.path().filename().string();
    if (name == "graph.hnsw" || name == "graph.offsets" || name == "graph.f16") {
      graph_bytes += e.file_size();
    }
  }

  // Everything below works on unit vectors (cosine = inner product).
  for (size_t i = 0; i < n + nq; ++i) index::NormalizeInPlace(&data[i * dim], dim);
  const float* base = data.data();
  const float* queries = data.data() + n * dim;
  if (!absl::GetFlag(FLAGS_queries_out).empty()) {
    VectorSet set;
    set.count = nq;
    set.dim = dim;
    set.data.assign(queries, queries + nq * dim);
    std::ofstream(absl::GetFlag(FLAGS_queries_out), std::ios::binary) << EncodeNpy(set);
  }

  // (c): faiss, same M and efConstruction, same build threads.
  omp_set_num_threads(build_threads);
  double faiss_build_s = -1;
  size_t faiss_rss_delta = 0;
  std::unique_ptr<faiss::IndexHNSWFlat> faiss_index;
  if (with_faiss) {
    const size_t rss0 = RssBytes();
    const auto t0 = Clock::now();
    if (reuse && std::filesystem::exists(faiss_path)) {
      faiss_index.reset(dynamic_cast<faiss::IndexHNSWFlat*>(faiss::read_index(faiss_path.c_str())));
      if (faiss_index == nullptr || faiss_index->ntotal != static_cast<FaissIdx>(n)) {
        std::cerr << faiss_path << " is not an IndexHNSWFlat of " << n << " vectors\n";
        return 1;
      }
    } else {
      faiss_index = std::make_unique<faiss::IndexHNSWFlat>(static_cast<int>(dim), m,
                                                           faiss::METRIC_INNER_PRODUCT);
      faiss_index->hnsw.efConstruction = efc;
      faiss_index->add(static_cast<FaissIdx>(n), base);
      faiss_build_s = Since(t0);
      faiss::write_index(faiss_index.get(), faiss_path.c_str());
    }
    faiss_rss_delta = RssBytes() - rss0;
  }
  const size_t faiss_file_bytes = with_faiss ? std::filesystem::file_size(faiss_path) : 0;

  auto snap = snapshot::Snapshot::Open(root, *v, snapshot::VerifyMode::kSizes);
  const size_t rss_before_hnswlib = RssBytes();
  auto ref = index::HnswlibIndex::Load(vdir + "/graph.hnsw", dim, index::Metric::kCosine);
  const size_t hnswlib_rss_delta = RssBytes() - rss_before_hnswlib;
  if (!snap.ok() || !ref.ok()) {
    std::cerr << (snap.ok() ? ref.status() : snap.status()) << "\n";
    return 1;
  }
  const auto& ours = snapshot::FirstSegment(**snap).searcher();
  // The same graph searched from its float vectors only (as before graph.f16).
  auto ours_f32 = index::MmapHnswSearcher::Open(vdir + "/" + snapshot::kGraphFile,
                                                vdir + "/" + snapshot::kOffsetsFile, dim,
                                                (*snap)->manifest().metric, n);
  if (!ours_f32.ok()) {
    std::cerr << ours_f32.status() << "\n";
    return 1;
  }
  // faiss's graph over our kernel (see KernelStorage), sharing faiss's vectors.
  std::unique_ptr<KernelStorage> kernel_storage;
  std::unique_ptr<faiss::IndexHNSW> faiss_kernel;
  if (with_faiss) {
    const auto* flat = dynamic_cast<const faiss::IndexFlat*>(faiss_index->storage);
    if (flat == nullptr) {
      std::cerr << "faiss storage is not an IndexFlat\n";
      return 1;
    }
    kernel_storage = std::make_unique<KernelStorage>(flat->get_xb(), n, dim);
    faiss_kernel = std::make_unique<faiss::IndexHNSW>(kernel_storage.get(), m);
    faiss_kernel->hnsw = faiss_index->hnsw;
    faiss_kernel->ntotal = faiss_index->ntotal;
  }

  // Exact top-10 (brute force with our kernel), on all build threads.
  const std::vector<std::vector<uint32_t>> truth =
      bench::ExactTopK(queries, nq, base, n, dim, kK, build_threads,
                       index::GetDistanceFn(index::Metric::kCosine, dim));
  auto hits_of = [&](size_t q, const auto& got) {
    size_t h = 0;
    for (auto g : got) h += std::count(truth[q].begin(), truth[q].end(), static_cast<uint32_t>(g));
    return h;
  };

  std::printf(
      "\nbuild (%d threads): ours/hnswlib snapshot %s, faiss add %s\n", build_threads,
      ours_build_s < 0 ? "reused" : (std::to_string(ours_build_s).substr(0, 6) + " s").c_str(),
      !with_faiss         ? "not run"
      : faiss_build_s < 0 ? "reused"
                          : (std::to_string(faiss_build_s).substr(0, 6) + " s").c_str());
  std::printf(
      "memory: ours mmaps graph.hnsw+.offsets+.f16 %.1f MiB (whole snapshot dir %.1f MiB; "
      "page cache, shared)\n        hnswlib loadIndex heap (RSS delta) %.1f MiB\n"
      "        faiss index file %.1f MiB, RSS delta of %s %.1f MiB\n",
      MiB(graph_bytes), MiB(snapshot_bytes), MiB(hnswlib_rss_delta), MiB(faiss_file_bytes),
      reuse ? "read_index" : "build", MiB(faiss_rss_delta));
  std::printf("distance kernel (ours, hnswlib graph search): %s; ours reads graph.f16 first: %s\n",
              index::SimdLevelName(index::BestSimdLevel()),
              ours.uses_half_vectors() ? "yes" : "no");

  // The service (optional): on the searches' core, its clients on another.
  const int cpu = absl::GetFlag(FLAGS_cpu);
  const int client_cpu = cpu < 0 ? -1 : (cpu == 0 ? 1 : 0);
  std::unique_ptr<bench::ServiceUnderTest> service;
  if (!absl::GetFlag(FLAGS_query_binary).empty()) {
    PinTo(client_cpu);  // gRPC's client threads start where their creator runs.
    service = std::make_unique<bench::ServiceUnderTest>(absl::GetFlag(FLAGS_query_binary), root,
                                                        workdir + "/query.log", cpu,
                                                        absl::GetFlag(FLAGS_clients));
    if (!service->started() ||
        !service->WaitServing(bench::VectorRequests(queries, 1, dim, kK, 10)[0])) {
      std::cerr << "query service did not start (see " << workdir << "/query.log)\n";
      return 1;
    }
    std::printf("service: imagesearch-query%s, %d closed-loop gRPC clients%s\n",
                cpu < 0 ? "" : (" on core " + std::to_string(cpu)).c_str(), service->clients(),
                client_cpu < 0 ? "" : (" on core " + std::to_string(client_cpu)).c_str());
    if (client_cpu >= 0) {
      std::printf(
          "         svc poll: the same %d calls in flight from one client thread that "
          "spins on its completion queue\n",
          service->clients());
    }
  }
  std::atomic<uint64_t> service_failures{0};
  const std::string floor_binary = absl::GetFlag(FLAGS_floor_binary);
  // The floor's reads: a buffer the size of what the searches read.
  const long touch_mib = std::max(1L, static_cast<long>(MiB(graph_bytes)));

  // The sweep, on one thread.
  omp_set_num_threads(1);
  PinTo(cpu);
  const double secs = absl::GetFlag(FLAGS_seconds);
  const int rounds = std::max(1, absl::GetFlag(FLAGS_rounds));
  std::vector<Point> c_ours, c_ours_f32, c_hnswlib, c_faiss, c_faiss_batch, c_faiss_kernel,
      c_service, c_service_batch, c_service_poll, c_floor, c_floor_poll;
  std::vector<FaissIdx> labels(nq * kK);
  std::vector<float> distances(nq * kK);
  std::printf(
      "\n%5s | %-18s | %-9s | %-18s | %-18s | %-9s | %-18s | %-18s | %-9s | %-9s | %-9s | %-9s\n",
      "ef", "ours (mmap)", "ours f32", "hnswlib", "faiss 1/call", "faiss-b", "faiss+k 1/call",
      "service unary", "svc batch", "svc poll", "floor", "floor poll");
  std::printf(
      "%5s | %8s %9s | %9s | %8s %9s | %8s %9s | %9s | %8s %9s | %8s %9s | %9s | %9s | %9s | %9s\n",
      "", "recall", "QPS", "QPS", "recall", "QPS", "recall", "QPS", "QPS", "recall", "QPS",
      "recall", "QPS", "QPS", "QPS", "QPS", "QPS");
  // Recall@10 of one faiss index over all queries (one batched search).
  auto faiss_recall = [&](const faiss::Index& index) {
    index.search(static_cast<FaissIdx>(nq), queries, kK, distances.data(), labels.data());
    size_t hits = 0;
    for (size_t q = 0; q < nq; ++q) {
      hits +=
          hits_of(q, std::vector<FaissIdx>(labels.begin() + q * kK, labels.begin() + (q + 1) * kK));
    }
    return double(hits) / (nq * kK);
  };
  for (size_t ef : efs) {
    size_t h = 0;
    for (size_t q = 0; q < nq; ++q) {
      std::vector<uint32_t> got;
      for (const auto& nb : ours.Search(&queries[q * dim], kK, ef)) got.push_back(nb.row);
      h += hits_of(q, got);
    }
    const double r_ours = double(h) / (nq * kK);
    // Each contender's timing, run once per round below.
    std::vector<std::pair<double*, std::function<double(double)>>> timed;
    double q_ours = 0, q_ours_f32 = 0, q_hnswlib = 0;
    timed.push_back({&q_ours, [&](double t) {
                       return Qps(t, nq,
                                  [&](size_t q) { (void)ours.Search(&queries[q * dim], kK, ef); });
                     }});
    timed.push_back({&q_ours_f32, [&](double t) {
                       return Qps(t, nq, [&](size_t q) {
                         (void)(*ours_f32)->Search(&queries[q * dim], kK, ef);
                       });
                     }});

    (*ref)->SetEf(ef);
    h = 0;
    for (size_t q = 0; q < nq; ++q) {
      std::vector<uint64_t> got;
      for (const auto& p : (*ref)->Search(&queries[q * dim], kK)) got.push_back(p.second);
      h += hits_of(q, got);
    }
    const double r_hnswlib = double(h) / (nq * kK);
    timed.push_back({&q_hnswlib, [&](double t) {
                       return Qps(t, nq,
                                  [&](size_t q) { (void)(*ref)->Search(&queries[q * dim], kK); });
                     }});

    double r_faiss = std::nan(""), q_faiss = std::nan(""), q_faiss_batch = std::nan("");
    double r_faiss_kernel = std::nan(""), q_faiss_kernel = std::nan("");
    if (with_faiss) {
      faiss_index->hnsw.efSearch = static_cast<int>(ef);
      r_faiss = faiss_recall(*faiss_index);
      faiss_kernel->hnsw.efSearch = static_cast<int>(ef);
      r_faiss_kernel = faiss_recall(*faiss_kernel);
      timed.push_back({&q_faiss, [&](double t) {
                         FaissIdx one_label[kK];
                         float one_dist[kK];
                         return Qps(t, nq, [&](size_t q) {
                           faiss_index->search(1, &queries[q * dim], kK, one_dist, one_label);
                         });
                       }});
      timed.push_back({&q_faiss_batch, [&](double t) {
                         size_t passes = 0;
                         const auto t0 = Clock::now();
                         do {
                           faiss_index->search(static_cast<FaissIdx>(nq), queries, kK,
                                               distances.data(), labels.data());
                           ++passes;
                         } while (Since(t0) < t);
                         return passes * nq / Since(t0);
                       }});
      timed.push_back({&q_faiss_kernel, [&](double t) {
                         FaissIdx one_label[kK];
                         float one_dist[kK];
                         return Qps(t, nq, [&](size_t q) {
                           faiss_kernel->search(1, &queries[q * dim], kK, one_dist, one_label);
                         });
                       }});
    }

    double r_service = std::nan(""), q_service = std::nan(""), q_service_batch = std::nan("");
    double q_service_poll = std::nan("");
    std::vector<v1::SearchRequest> reqs;
    std::vector<v1::SearchBatchRequest> batches;
    if (service != nullptr || !floor_binary.empty()) {
      reqs = bench::VectorRequests(queries, nq, dim, kK, ef);
    }
    if (service != nullptr) {
      PinTo(client_cpu);
      batches = bench::Batches(reqs, static_cast<size_t>(absl::GetFlag(FLAGS_batch)));
      h = 0;
      for (size_t q = 0; q < nq; ++q) {  // The service's ids are the row numbers.
        v1::SearchResponse r;
        if (!service->Search(0, reqs[q], &r).ok()) ++service_failures;
        std::vector<uint32_t> got;
        for (const auto& hit : r.hits()) got.push_back(static_cast<uint32_t>(std::stoul(hit.id())));
        h += hits_of(q, got);
      }
      r_service = double(h) / (nq * kK);
      PinTo(cpu);
      timed.push_back({&q_service, [&](double t) {
                         return service->UnaryQps(reqs, t, client_cpu, &service_failures);
                       }});
      timed.push_back({&q_service_batch, [&](double t) {
                         return service->BatchQps(batches, t, client_cpu, &service_failures);
                       }});
      // Only pinned: unpinned, the spinning client would take the server's core.
      if (client_cpu >= 0) {
        timed.push_back({&q_service_poll, [&](double t) {
                           return service->PolledUnaryQps(reqs, t, client_cpu, &service_failures);
                         }});
      }
    }

    // The rounds: every contender in turn, each round; the median round counts.
    std::vector<std::vector<double>> per_round(timed.size());
    for (int round = 0; round < rounds; ++round) {
      for (size_t i = 0; i < timed.size(); ++i)
        per_round[i].push_back(timed[i].second(secs / rounds));
    }
    for (size_t i = 0; i < timed.size(); ++i) *timed[i].first = bench::Median(per_round[i]);

    // The floor: hnswlib's time a query now known, a server that spends
    // exactly that and gRPC's own work, in as many rounds.
    double q_floor = std::nan(""), q_floor_poll = std::nan("");
    if (!floor_binary.empty()) {
      const long spin_us = std::max(1L, std::lround(1e6 / q_hnswlib));
      PinTo(client_cpu);
      bench::ServiceUnderTest floor(
          floor_binary,
          std::vector<std::string>{"--api=async", "--spin_us=" + std::to_string(spin_us),
                                   "--touch_mib=" + std::to_string(touch_mib)},
          workdir + "/floor.log", cpu, absl::GetFlag(FLAGS_clients));
      if (!floor.started() || !floor.WaitServing(reqs[0])) {
        std::cerr << "floor server did not start (see " << workdir << "/floor.log)\n";
        return 1;
      }
      std::vector<double> unary, polled;
      for (int round = 0; round < rounds; ++round) {
        unary.push_back(floor.UnaryQps(reqs, secs / rounds, client_cpu, &service_failures));
        if (client_cpu >= 0) {
          polled.push_back(
              floor.PolledUnaryQps(reqs, secs / rounds, client_cpu, &service_failures));
        }
      }
      PinTo(cpu);
      q_floor = bench::Median(unary);
      c_floor.push_back({ef, r_hnswlib, q_floor});
      if (client_cpu >= 0) {
        q_floor_poll = bench::Median(polled);
        c_floor_poll.push_back({ef, r_hnswlib, q_floor_poll});
      }
    }
    if (with_faiss) {
      c_faiss_kernel.push_back({ef, r_faiss_kernel, q_faiss_kernel});
      c_faiss.push_back({ef, r_faiss, q_faiss});
      c_faiss_batch.push_back({ef, r_faiss, q_faiss_batch});
    }
    if (service != nullptr) {
      c_service.push_back({ef, r_service, q_service});
      c_service_batch.push_back({ef, r_service, q_service_batch});
      if (client_cpu >= 0) c_service_poll.push_back({ef, r_service, q_service_poll});
    }

    c_ours.push_back({ef, r_ours, q_ours});
    c_ours_f32.push_back({ef, r_ours, q_ours_f32});
    c_hnswlib.push_back({ef, r_hnswlib, q_hnswlib});
    std::printf(
        "%5zu | %8.4f %9.0f | %9.0f | %8.4f %9.0f | %8.4f %9.0f | %9.0f | %8.4f %9.0f | %8.4f "
        "%9.0f | %9.0f | %9.0f | %9.0f | %9.0f\n",
        ef, r_ours, q_ours, q_ours_f32, r_hnswlib, q_hnswlib, r_faiss, q_faiss, q_faiss_batch,
        r_faiss_kernel, q_faiss_kernel, r_service, q_service, q_service_batch, q_service_poll,
        q_floor, q_floor_poll);
    std::fflush(stdout);
  }
  if (service_failures > 0) {
    std::printf("service: %llu calls failed\n",
                static_cast<unsigned long long>(service_failures.load()));
  }
  if (!absl::GetFlag(FLAGS_csv).empty()) {
    std::ofstream csv(absl::GetFlag(FLAGS_csv));
    csv << "contender,ef,recall,qps\n";
    auto put = [&](const char* name, const std::vector<Point>& curve) {
      for (const Point& p : curve)
        csv << name << "," << p.ef << "," << p.recall << "," << p.qps << "\n";
    };
    put("ours", c_ours);
    put("ours-f32", c_ours_f32);
    put("hnswlib", c_hnswlib);
    put("faiss", c_faiss);
    put("faiss-b", c_faiss_batch);
    put("faiss+k", c_faiss_kernel);
    put("service", c_service);
    put("service-batch", c_service_batch);
    put("service-poll", c_service_poll);
    put("floor", c_floor);
    put("floor-poll", c_floor_poll);
  }

  std::printf(
      "\nQPS at equal recall@10 (log-QPS interpolated between sweep points; - = not reached)\n");
  std::printf(
      "%7s | %9s %9s %9s %9s %9s %9s %9s %9s %9s | %10s %10s %10s %9s %9s %9s %9s %9s %9s %9s\n",
      "recall", "ours", "ours-f32", "hnswlib", "faiss", "faiss-b", "faiss+k", "service",
      "svc-batch", "svc-poll", "ours/faiss", "ours/f-b", "ours/f+k", "ours/hnsw", "o32/hnsw",
      "svc/hnsw", "svcb/hnsw", "svcp/hnsw", "flr/hnsw", "flrp/hnsw");
  for (double target : {0.80, 0.90, 0.95, 0.97, 0.98, 0.99, 0.995}) {
    const double a = QpsAtRecall(c_ours, target), b = QpsAtRecall(c_hnswlib, target);
    const double a32 = QpsAtRecall(c_ours_f32, target);
    const double c = QpsAtRecall(c_faiss, target), d = QpsAtRecall(c_faiss_batch, target);
    const double e = QpsAtRecall(c_faiss_kernel, target);
    const double f = QpsAtRecall(c_service, target), g = QpsAtRecall(c_service_batch, target);
    const double p = QpsAtRecall(c_service_poll, target);
    const double fl = QpsAtRecall(c_floor, target), flp = QpsAtRecall(c_floor_poll, target);
    auto cell = [](double x) {
      char buf[16];
      if (std::isnan(x)) return std::string("-");
      std::snprintf(buf, sizeof(buf), "%.0f", x);
      return std::string(buf);
    };
    auto ratio = [](double x, double y) {
      char buf[16];
      if (std::isnan(x) || std::isnan(y)) return std::string("-");
      std::snprintf(buf, sizeof(buf), "%.2f", x / y);
      return std::string(buf);
    };
    std::printf(
        "%7.3f | %9s %9s %9s %9s %9s %9s %9s %9s %9s | %10s %10s %10s %9s %9s %9s %9s %9s %9s "
        "%9s\n",
        target, cell(a).c_str(), cell(a32).c_str(), cell(b).c_str(), cell(c).c_str(),
        cell(d).c_str(), cell(e).c_str(), cell(f).c_str(), cell(g).c_str(), cell(p).c_str(),
        ratio(a, c).c_str(), ratio(a, d).c_str(), ratio(a, e).c_str(), ratio(a, b).c_str(),
        ratio(a32, b).c_str(), ratio(f, b).c_str(), ratio(g, b).c_str(), ratio(p, b).c_str(),
        ratio(fl, b).c_str(), ratio(flp, b).c_str());
  }
  return service_failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace imagesearch

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return imagesearch::Run();
}
