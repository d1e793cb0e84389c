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
#include "libs/snapshot/snapshot.h"
#include "libs/snapshot/snapshot_store.h"
#include "libs/snapshot/test_snapshots.h"
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
  std::printf("  %s, --verify=%s: port open after %.3fs, first answer after %.3fs\n",
              root.c_str(), verify.c_str(), port_known, t);
  server.Terminate();
  return t;
}

// Reuses the snapshot CURRENT names under `root` if it has n vectors of
// `dim`; otherwise builds one (M 16, ef_construction 40) and returns its version.
absl::StatusOr<uint64_t> EnsureSnapshot(const std::string& root, size_t n, size_t dim) {
  auto current = snapshot::ReadCurrentVersion(root);
  if (current.ok()) {
    auto snap = snapshot::Snapshot::Open(root, *current, snapshot::VerifyMode::kSizes);
    if (snap.ok() && (*snap)->manifest().count == n &&
        static_cast<size_t>((*snap)->manifest().dim) == dim) {
      std::printf("reusing %zu x %zu snapshot in %s\n", n, dim, root.c_str());
      return current;
    }
  }
  std::filesystem::remove_all(root);
  std::printf("building a %zu x %zu snapshot in %s...\n", n, dim, root.c_str());
  snapshot::SyntheticCorpus c = snapshot::MakeSyntheticCorpus(
      n, static_cast<int>(dim), index::Metric::kCosine, "id-", 1, 1000, 0.6f);
  c.input.hnsw.m = 16;
  const auto b0 = Clock::now();
  auto v = snapshot::PublishSnapshot(root, c.WithGraph());
  if (v.ok()) std::printf("built in %.0fs\n", Seconds(b0));
  return v;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int Run() {
  const size_t n = absl::GetFlag(FLAGS_n), dim = absl::GetFlag(FLAGS_dim);
  const std::string root = absl::GetFlag(FLAGS_workdir) + "/root";
  auto current = EnsureSnapshot(root, n, dim);
  if (!current.ok()) {
    std::cerr << current.status() << "\n";
    return 1;
  }
  // A 1000-vector snapshot of the same dimension, to show what start-up costs
  // without the index: the difference is what the index size adds.
  const std::string small_root = absl::GetFlag(FLAGS_workdir) + "/small_root";
  if (!EnsureSnapshot(small_root, 1000, dim).ok()) return 1;
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
