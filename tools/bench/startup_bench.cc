// Start-up time of the query service on a large snapshot, next to hnswlib's
// loadIndex of the same graph file, in one run:
//   (a) exec imagesearch-query -> first successful Search answer, with
//       --verify=sizes (O(1) in the index size) and --verify=checksums;
//   (b) hnswlib HierarchicalNSW(space, path) (copies the file to the heap);
//   (c) the proportional set size (PSS) of one replica, and of two replicas
//       on the same snapshot together, each after the same id queries: the
//       graph is page cache shared by both, so two should cost about one.
// Page cache is warm for all (the snapshot was just written or read).
//
//   startup_bench --query_binary=build/services/query/imagesearch-query [--n=1000000 --dim=128]
//   startup_bench --query_binary=... --snapshot_root=DIR   (an existing snapshot, e.g.
//   faiss_bench's)
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
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
ABSL_FLAG(std::string, snapshot_root, "",
          "Measure the snapshot CURRENT names in this root instead of building a synthetic one.");
ABSL_FLAG(int, pss_queries, 2000,
          "Id queries sent to each replica before its PSS is read (0: no PSS).");

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
  std::printf("  %s, --verify=%s: port open after %.3fs, first answer after %.3fs\n", root.c_str(),
              verify.c_str(), port_known, t);
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

// The "Pss:" line of /proc/PID/smaps_rollup, in bytes (-1 if unreadable).
double PssBytes(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/smaps_rollup");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("Pss:", 0) == 0) {
      std::istringstream in(line.substr(4));
      double kb = -1;
      in >> kb;
      return kb * 1024;
    }
  }
  return -1;
}

// Starts a replica on `root` and sends it `ids` as id queries; returns the
// process (serving) or nullptr.
std::unique_ptr<testing::ServerProcess> WarmReplica(const std::string& root,
                                                    const std::vector<std::string>& ids,
                                                    const std::string& log) {
  auto server = std::make_unique<testing::ServerProcess>(
      absl::GetFlag(FLAGS_query_binary), std::vector<std::string>{"--snapshot_root=" + root}, log);
  if (server->port() == 0) return nullptr;
  auto stub = v1::ImageSearch::NewStub(
      grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials()));
  size_t ok = 0;
  for (int attempt = 0; attempt < 2000 && ok == 0; ++attempt) {
    for (const std::string& id : ids) {
      grpc::ClientContext ctx;
      v1::SearchRequest req;
      v1::SearchResponse resp;
      req.set_id(id);
      if (stub->Search(&ctx, req, &resp).ok()) ++ok;
      if (ok == 0) break;  // Not serving yet: wait and retry from the start.
    }
    if (ok == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (ok != ids.size()) {
    std::fprintf(stderr, "replica answered %zu of %zu id queries\n", ok, ids.size());
    return nullptr;
  }
  return server;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int Run() {
  size_t n = absl::GetFlag(FLAGS_n), dim = absl::GetFlag(FLAGS_dim);
  std::string root = absl::GetFlag(FLAGS_workdir) + "/root";
  absl::StatusOr<uint64_t> current;
  if (!absl::GetFlag(FLAGS_snapshot_root).empty()) {
    root = absl::GetFlag(FLAGS_snapshot_root);
    current = snapshot::ReadCurrentVersion(root);
    if (current.ok()) {
      auto snap = snapshot::Snapshot::Open(root, *current, snapshot::VerifyMode::kSizes);
      if (!snap.ok()) {
        std::cerr << snap.status() << "\n";
        return 1;
      }
      n = (*snap)->manifest().count;
      dim = static_cast<size_t>((*snap)->manifest().dim);
      std::printf("measuring %zu x %zu snapshot v%llu in %s\n", n, dim,
                  static_cast<unsigned long long>(*current), root.c_str());
    }
  } else {
    current = EnsureSnapshot(root, n, dim);
  }
  if (!current.ok()) {
    std::cerr << current.status() << "\n";
    return 1;
  }
  // A 1000-vector snapshot of the same dimension, to show what start-up costs
  // without the index: the difference is what the index size adds.
  const std::string small_root = absl::GetFlag(FLAGS_workdir) + "/small_root";
  if (!EnsureSnapshot(small_root, 1000, dim).ok()) return 1;
  const std::string graph = snapshot::FirstSegmentDir(root, *current) + "/graph.hnsw";
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
  std::printf("  imagesearch-query, exec -> first answer, --verify=sizes     %7.3f s\n",
              Median(sizes));
  std::printf("  imagesearch-query, exec -> first answer, --verify=checksums %7.3f s\n",
              Median(sums));
  std::printf("  imagesearch-query on a 1000-vector snapshot, --verify=sizes %7.3f s\n",
              Median(small));
  std::printf("  hnswlib loadIndex (in-process, no server)                    %7.3f s\n",
              Median(loads));
  std::printf("index size adds (%zu minus 1000 vectors, --verify=sizes): %+.3f s\n", n,
              Median(sizes) - Median(small));
  std::printf("ratio hnswlib load / our start-up (sizes): %.1fx\n", Median(loads) / Median(sizes));

  const int pss_queries = absl::GetFlag(FLAGS_pss_queries);
  if (pss_queries <= 0) return 0;
  std::vector<std::string> ids;
  {
    auto snap = snapshot::Snapshot::Open(root, *current, snapshot::VerifyMode::kSizes);
    if (!snap.ok()) return 1;
    for (int i = 0; i < pss_queries; ++i) {
      auto id = (*snap)->Id(static_cast<uint64_t>(i) * n / static_cast<uint64_t>(pss_queries));
      if (!id.ok()) return 1;
      ids.emplace_back(id->id);
    }
  }
  const std::string log = absl::GetFlag(FLAGS_workdir) + "/pss.log";
  std::filesystem::create_directories(absl::GetFlag(FLAGS_workdir));
  auto a = WarmReplica(root, ids, log);
  if (a == nullptr) return 1;
  const double one = PssBytes(a->pid());
  auto b = WarmReplica(root, ids, log + ".2");
  if (b == nullptr) return 1;
  const double pss_a = PssBytes(a->pid()), pss_b = PssBytes(b->pid());
  std::printf("\nPSS after %d id queries each (graph.hnsw %.0f MB):\n", pss_queries,
              std::filesystem::file_size(graph) / 1e6);
  std::printf("  one replica                 %8.1f MiB\n", one / 1048576);
  std::printf("  two replicas, together      %8.1f MiB (%.1f + %.1f)\n", (pss_a + pss_b) / 1048576,
              pss_a / 1048576, pss_b / 1048576);
  std::printf(
      "ratio two replicas / one: %.2fx (hnswlib loadIndex copies the graph into each "
      "process: about 2x)\n",
      (pss_a + pss_b) / one);
  return 0;
}

}  // namespace
}  // namespace imagesearch

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return imagesearch::Run();
}
