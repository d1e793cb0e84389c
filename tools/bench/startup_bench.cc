// Start-up time of the query service on a large snapshot, next to hnswlib's
// loadIndex of the same graph file, in one run:
//   (a) exec imagesearch-query -> first successful Search answer, with
//       --verify=sizes (O(1) in the index size) and --verify=checksums;
//   (b) hnswlib HierarchicalNSW(space, path) (copies the file to the heap).
// Page cache is warm for all (the snapshot was just written or read).
//
//   startup_bench --query_binary=build/services/query/imagesearch-query [--n=1000000 --dim=128]
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "imagesearch/v1/imagesearch.grpc.pb.h"
#include "libs/index/hnsw_builder.h"
#include "libs/index/test_vectors.h"
#include "libs/snapshot/snapshot_store.h"
#include "tests/integration/server_process.h"

ABSL_FLAG(std::string, query_binary, "", "Path of imagesearch-query.");
ABSL_FLAG(int, n, 1000000, "Vectors in the snapshot.");
ABSL_FLAG(int, dim, 128, "Dimension.");
ABSL_FLAG(std::string, workdir, "/tmp/imagesearch_startup_bench",
          "Snapshot root; an existing snapshot of the right size is reused.");
ABSL_FLAG(int, runs, 3, "Start-ups per mode (the median is reported).");

namespace imagesearch {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// Starts the service and returns seconds until its first OK Search.
double TimeToFirstAnswer(const std::string& root, const std::string& verify, int dim) {
  const auto start = Clock::now();
  testing::ServerProcess server(absl::GetFlag(FLAGS_query_binary),
                                {"--snapshot_root=" + root, "--verify=" + verify},
                                absl::GetFlag(FLAGS_workdir) + "/query.log");
  const double port_known = Seconds(start);
  auto stub = v1::ImageSearch::NewStub(
      grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
  v1::SearchRequest req;
  for (int i = 0; i < dim; ++i) req.mutable_vector()->add_values(i % 7 + 1.0f);
  for (;;) {
    grpc::ClientContext ctx;
    v1::SearchResponse resp;
    if (stub->Search(&ctx, req, &resp).ok() && resp.hits_size() == 10) break;
    if (Seconds(start) > 120) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  const double t = Seconds(start);
  if (getenv("STARTUP_BENCH_DEBUG")) std::printf("    port known at %.3fs, answer at %.3fs\n", port_known, t);
  server.Terminate();
  return t;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int Run() {
  const size_t n = absl::GetFlag(FLAGS_n), dim = absl::GetFlag(FLAGS_dim);
  const std::string root = absl::GetFlag(FLAGS_workdir) + "/root";
  auto current = snapshot::ReadCurrentVersion(root);
  bool reuse = false;
  if (current.ok()) {
    auto text = std::filesystem::exists(snapshot::VersionDir(root, *current) + "/MANIFEST.json");
    reuse = text;
  }
  if (reuse) {
    std::printf("reusing the snapshot in %s\n", root.c_str());
  } else {
    std::filesystem::remove_all(root);
    std::printf("building a %zu x %zu snapshot (M=16, ef_construction=40)...\n", n, dim);
    std::vector<float> data = index::ClusteredVectors(n, dim, 1000, 1, 0.6f);
    snapshot::SnapshotInput in;
    in.vectors = data.data();
    in.count = n;
    in.dim = static_cast<int>(dim);
    in.metric = index::Metric::kCosine;
    in.hnsw.m = 16;
    in.hnsw.ef_construction = 40;
    for (size_t i = 0; i < n; ++i) in.ids.push_back({"id-" + std::to_string(i), "", ""});
    const auto b0 = Clock::now();
    auto v = snapshot::PublishSnapshot(root, in);
    if (!v.ok()) {
      std::cerr << v.status() << "\n";
      return 1;
    }
    current = *v;
    std::printf("built in %.0fs\n", Seconds(b0));
  }
  // A 1000-vector snapshot of the same dimension, to show what start-up costs
  // without the index: the difference is what the index size adds.
  const std::string small_root = absl::GetFlag(FLAGS_workdir) + "/small_root";
  if (!snapshot::ReadCurrentVersion(small_root).ok()) {
    std::vector<float> data = index::ClusteredVectors(1000, dim, 10, 3);
    snapshot::SnapshotInput in;
    in.vectors = data.data();
    in.count = 1000;
    in.dim = static_cast<int>(dim);
    in.metric = index::Metric::kCosine;
    in.hnsw.m = 16;
    in.hnsw.ef_construction = 40;
    for (size_t i = 0; i < 1000; ++i) in.ids.push_back({"id-" + std::to_string(i), "", ""});
    if (!snapshot::PublishSnapshot(small_root, in).ok()) return 1;
  }
  const std::string graph = snapshot::VersionDir(root, *current) + "/graph.hnsw";
  std::printf("graph.hnsw: %.0f MB\n", std::filesystem::file_size(graph) / 1e6);

  std::vector<double> sizes, sums, loads, small;
  for (int r = 0; r < absl::GetFlag(FLAGS_runs); ++r) {
    small.push_back(TimeToFirstAnswer(small_root, "sizes", static_cast<int>(dim)));
    sizes.push_back(TimeToFirstAnswer(root, "sizes", static_cast<int>(dim)));
    sums.push_back(TimeToFirstAnswer(root, "checksums", static_cast<int>(dim)));
    const auto l0 = Clock::now();
    auto idx = index::HnswlibIndex::Load(graph, dim, index::Metric::kCosine);
    loads.push_back(Seconds(l0));
    if (!idx.ok()) return 1;
  }
  std::printf("\n%zu vectors, dim %zu (median of %d runs, warm page cache)\n", n, dim,
              absl::GetFlag(FLAGS_runs));
  std::printf("  imagesearch-query, exec -> first answer, --verify=sizes     %7.3f s\n", Median(sizes));
  std::printf("  imagesearch-query, exec -> first answer, --verify=checksums %7.3f s\n", Median(sums));
  std::printf("  imagesearch-query on a 1000-vector snapshot, --verify=sizes %7.3f s\n", Median(small));
  std::printf("  hnswlib loadIndex (in-process, no server)                    %7.3f s\n", Median(loads));
  std::printf("index size adds (1M minus 1k, --verify=sizes): %+.3f s\n", Median(sizes) - Median(small));
  std::printf("ratio hnswlib load / our start-up (sizes): %.1fx\n", Median(loads) / Median(sizes));
  return 0;
}

}  // namespace
}  // namespace imagesearch

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return imagesearch::Run();
}
