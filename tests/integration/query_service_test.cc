// End-to-end tests of the real imagesearch-query binary on loopback, through
// the generated C++ stubs.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <limits>
#include <thread>

#include "grpc/health/v1/health.grpc.pb.h"
#include "imagesearch/v1/imagesearch.grpc.pb.h"
#include "libs/common/file_util.h"
#include "libs/common/test_temp_dir.h"
#include "libs/index/test_vectors.h"
#include "libs/snapshot/manifest.h"
#include "libs/snapshot/snapshot.h"
#include "libs/snapshot/snapshot_store.h"
#include "libs/snapshot/test_snapshots.h"
#include "tests/integration/server_process.h"

namespace imagesearch {
namespace {

namespace fs = std::filesystem;
constexpr int kDim = 32;

std::string TempDir() {
  const std::string dir = testing::NewTempDir("it");
  REQUIRE(!dir.empty());
  return dir;
}

// Publishes n clustered vectors with ids "<prefix><row>" and URIs "mem://<row>".
uint64_t Publish(const std::string& root, size_t n, const std::string& prefix, uint32_t seed) {
  snapshot::SyntheticCorpus c =
      snapshot::MakeSyntheticCorpus(n, kDim, index::Metric::kCosine, prefix, seed);
  c.input.hnsw.m = 12;
  c.input.hnsw.ef_construction = 60;
  auto r = snapshot::PublishSnapshot(root, c.WithGraph());
  REQUIRE(r.ok());
  return *r;
}

v1::SearchRequest VectorQuery(uint32_t seed, uint32_t top_k = 5) {
  auto q = index::ClusteredVectors(1, kDim, 16, seed);
  v1::SearchRequest req;
  req.mutable_vector()->mutable_values()->Add(q.begin(), q.end());
  req.set_top_k(top_k);
  return req;
}

struct Fixture {
  std::string dir = TempDir();
  std::string root = dir + "/root";
  std::string log = dir + "/server.log";
  std::unique_ptr<testing::ServerProcess> server;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::ImageSearch::Stub> stub;

  void Start() {
    server = std::make_unique<testing::ServerProcess>(
        IMAGESEARCH_QUERY_BINARY,
        std::vector<std::string>{"--snapshot_root=" + root, "--poll_ms=50"}, log);
    REQUIRE(server->port() > 0);
    channel = grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials());
    REQUIRE(channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10)));
    stub = v1::ImageSearch::NewStub(channel);
  }

  grpc::health::v1::HealthCheckResponse::ServingStatus Health() {
    auto health = grpc::health::v1::Health::NewStub(channel);
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest req;
    req.set_service("imagesearch.v1.ImageSearch");
    grpc::health::v1::HealthCheckResponse resp;
    grpc::Status s = health->Check(&ctx, req, &resp);
    REQUIRE(s.ok());
    return resp.status();
  }

  grpc::Status Search(const v1::SearchRequest& req, v1::SearchResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return stub->Search(&ctx, req, resp);
  }

  // Polls until `pred` holds (bounded: 10 s).
  template <typename Pred>
  bool WaitFor(Pred pred) {
    for (int i = 0; i < 200; ++i) {
      if (pred()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
};

TEST_CASE("The gRPC port opens only once a snapshot is loaded: then health is SERVING") {
  Fixture f;
  fs::create_directories(f.root);
  // The service starts on an empty root: it logs that it is starting, and
  // names no gRPC port (Start() below waits for that line) until a version
  // is published, loaded and swapped in.
  std::atomic<bool> published{false};
  std::atomic<bool> listening_before_publish{false};
  std::thread publisher([&] {
    while (true) {
      auto log = ReadFileToString(f.log);
      if (log.ok() && log->find("imagesearch-query starting") != std::string::npos) {
        listening_before_publish = log->find("listening on") != std::string::npos;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));  // Polls the log.
    }
    Publish(f.root, 1000, "a", 1);
    published = true;
  });
  f.Start();
  const bool published_before_port = published;
  publisher.join();
  CHECK_FALSE(listening_before_publish);
  CHECK(published_before_port);
  // No NOT_SERVING window for a client: the first health check is SERVING.
  CHECK(f.Health() == grpc::health::v1::HealthCheckResponse::SERVING);
  grpc::ClientContext ctx;
  v1::GetInfoResponse info;
  REQUIRE(f.stub->GetInfo(&ctx, v1::GetInfoRequest(), &info).ok());
  CHECK(info.snapshot_version() == 1);
  CHECK(info.dim() == kDim);
  CHECK(info.vector_count() == 1000);
  CHECK(info.metric() == v1::METRIC_COSINE);
  CHECK(info.hnsw().m() == 12);
  CHECK(info.max_top_k() == 1000);
  v1::SearchResponse resp;
  CHECK(f.Search(VectorQuery(1), &resp).ok());
  CHECK(f.server->Terminate() == 0);
}

TEST_CASE("Bad requests get precise errors and never crash the server") {
  Fixture f;
  Publish(f.root, 500, "a", 1);
  f.Start();
  REQUIRE(f.WaitFor([&] { return f.Health() == grpc::health::v1::HealthCheckResponse::SERVING; }));
  struct Case {
    v1::SearchRequest req;
    grpc::StatusCode code;
    std::string message;
  };
  std::vector<Case> cases;
  cases.push_back({v1::SearchRequest(), grpc::StatusCode::INVALID_ARGUMENT,
                   "query is empty: set one of vector, id, image or text"});
  {
    v1::SearchRequest r;
    r.mutable_vector()->add_values(1.0f);
    cases.push_back({r, grpc::StatusCode::INVALID_ARGUMENT,
                     "query vector has 1 values but snapshot v1 has dimension 32"});
  }
  {
    v1::SearchRequest r = VectorQuery(3);
    r.mutable_vector()->set_values(4, std::numeric_limits<float>::quiet_NaN());
    cases.push_back({r, grpc::StatusCode::INVALID_ARGUMENT, "query vector[4] is NaN"});
    r.mutable_vector()->set_values(4, -std::numeric_limits<float>::infinity());
    cases.push_back({r, grpc::StatusCode::INVALID_ARGUMENT, "query vector[4] is infinite"});
  }
  {
    v1::SearchRequest r = VectorQuery(3, 5000);
    cases.push_back(
        {r, grpc::StatusCode::INVALID_ARGUMENT, "top_k 5000 is out of range: the maximum is 1000"});
    r.set_top_k(10);
    r.set_ef(1u << 30);
    cases.push_back({r, grpc::StatusCode::INVALID_ARGUMENT,
                     "ef 1073741824 is out of range: the maximum is 10000"});
  }
  {
    v1::SearchRequest r;
    r.set_id("no-such-id");
    cases.push_back({r, grpc::StatusCode::NOT_FOUND, "id 'no-such-id' is not in snapshot v1"});
    r.set_id("");
    cases.push_back({r, grpc::StatusCode::INVALID_ARGUMENT, "query id is empty"});
  }
  {
    v1::SearchRequest r;
    r.set_image("\x89PNG not really");
    cases.push_back({r, grpc::StatusCode::FAILED_PRECONDITION, ""});
    r.set_text("a photo of a cat");
    cases.push_back({r, grpc::StatusCode::FAILED_PRECONDITION, ""});
  }
  for (const auto& c : cases) {
    v1::SearchResponse resp;
    grpc::Status s = f.Search(c.req, &resp);
    INFO(s.error_message());
    CHECK(s.error_code() == c.code);
    if (!c.message.empty()) CHECK(s.error_message() == c.message);
  }
  CHECK(f.server->Alive());
  // The server still answers correctly after all that.
  v1::SearchRequest by_id;
  by_id.set_id("a42");
  by_id.set_top_k(3);
  v1::SearchResponse resp;
  REQUIRE(f.Search(by_id, &resp).ok());
  REQUIRE(resp.hits_size() == 3);
  for (const auto& h : resp.hits()) CHECK(h.id() != "a42");
  by_id.set_include_self(true);
  REQUIRE(f.Search(by_id, &resp).ok());
  CHECK(resp.hits(0).id() == "a42");
  CHECK(resp.hits(0).uri() == "mem://42");
  CHECK(std::abs(resp.hits(0).score() - 1.0f) < 1e-5);
  // An expired deadline is not worked on.
  grpc::ClientContext expired;
  expired.set_deadline(std::chrono::system_clock::now() - std::chrono::seconds(1));
  CHECK(f.stub->Search(&expired, VectorQuery(1), &resp).error_code() ==
        grpc::StatusCode::DEADLINE_EXCEEDED);
}

TEST_CASE("SearchBatch answers many queries in order, and names the bad one") {
  Fixture f;
  Publish(f.root, 600, "a", 1);
  f.Start();
  REQUIRE(f.WaitFor([&] { return f.Health() == grpc::health::v1::HealthCheckResponse::SERVING; }));
  v1::SearchBatchRequest batch;
  for (uint32_t i = 0; i < 20; ++i) *batch.add_requests() = VectorQuery(50 + i, 3);
  batch.add_requests()->set_id("a7");
  v1::SearchBatchResponse resp;
  {
    grpc::ClientContext ctx;
    REQUIRE(f.stub->SearchBatch(&ctx, batch, &resp).ok());
  }
  REQUIRE(resp.responses_size() == 21);
  CHECK(resp.snapshot_version() == 1);
  for (int i = 0; i < 20; ++i) {
    v1::SearchResponse single;
    REQUIRE(f.Search(batch.requests(i), &single).ok());
    REQUIRE(resp.responses(i).hits_size() == 3);
    for (int j = 0; j < 3; ++j) CHECK(resp.responses(i).hits(j).id() == single.hits(j).id());
  }
  CHECK(resp.responses(20).hits(0).id() != "a7");  // More like this leaves the item out.
  {
    // `exact`: the brute-force top-k, computed here from the snapshot's own
    // vectors, whatever ef says.
    auto snap = snapshot::Snapshot::Open(f.root, 1, snapshot::VerifyMode::kSizes);
    REQUIRE(snap.ok());
    v1::SearchRequest r = VectorQuery(77, 10);
    r.set_ef(1);
    r.set_exact(true);
    v1::SearchResponse exact;
    REQUIRE(f.Search(r, &exact).ok());
    REQUIRE(exact.hits_size() == 10);
    std::vector<float> q(r.vector().values().begin(), r.vector().values().end());
    double norm = 0;
    for (float x : q) norm += double{x} * x;
    std::vector<std::pair<double, std::string>> all;
    for (uint32_t row = 0; row < (*snap)->rows(); ++row) {
      double dot = 0;
      for (size_t i = 0; i < q.size(); ++i) dot += double{q[i]} * (*snap)->Vector(row)[i];
      all.emplace_back(1 - dot / std::sqrt(norm), std::string((*snap)->Id(row)->id));
    }
    std::sort(all.begin(), all.end());
    for (int i = 0; i < 10; ++i) CHECK(exact.hits(i).id() == all[static_cast<size_t>(i)].second);
  }
  batch.mutable_requests(5)->mutable_vector()->add_values(1.0f);
  {
    grpc::ClientContext ctx;
    grpc::Status s = f.stub->SearchBatch(&ctx, batch, &resp);
    CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(s.error_message() ==
          "requests[5]: query vector has 33 values but snapshot v1 has dimension 32");
  }
  batch.mutable_requests(5)->set_text("a cat");
  {
    grpc::ClientContext ctx;
    grpc::Status s = f.stub->SearchBatch(&ctx, batch, &resp);
    CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(s.error_message().find("requests[5]: SearchBatch takes vector and id queries") == 0);
  }
}

TEST_CASE(
    "Publishing under concurrent load: zero failed calls, responses move to the new version") {
  Fixture f;
  Publish(f.root, 3000, "old", 1);
  f.Start();
  REQUIRE(f.WaitFor([&] { return f.Health() == grpc::health::v1::HealthCheckResponse::SERVING; }));

  std::atomic<bool> stop{false};
  std::atomic<int> failures{0}, inconsistent{0}, calls{0};
  std::atomic<uint64_t> max_version_seen{0};
  std::atomic<int> new_version_calls{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&, t] {
      // Bounded: at most 20000 calls or until told to stop.
      for (int i = 0; i < 20000 && !stop; ++i) {
        v1::SearchResponse resp;
        grpc::Status s = f.Search(VectorQuery(100 + t * 7 + i % 50), &resp);
        calls++;
        if (!s.ok()) {
          failures++;
          continue;
        }
        // Every hit must come from the version the response names.
        const std::string prefix = resp.snapshot_version() == 1 ? "old" : "new";
        for (const auto& h : resp.hits()) {
          if (h.id().rfind(prefix, 0) != 0) inconsistent++;
        }
        uint64_t v = resp.snapshot_version();
        uint64_t prev = max_version_seen.load();
        while (v > prev && !max_version_seen.compare_exchange_weak(prev, v)) {
        }
        if (v == 2) new_version_calls++;
      }
    });
  }
  REQUIRE(f.WaitFor([&] { return calls > 200; }));
  Publish(f.root, 3000, "new", 2);  // Written while the clients run.
  bool moved = f.WaitFor([&] { return new_version_calls > 200; });
  stop = true;
  for (auto& c : clients) c.join();
  CHECK(moved);
  CHECK(failures == 0);
  CHECK(inconsistent == 0);
  CHECK(max_version_seen == 2);
  // After the swap, every response comes from v2.
  v1::SearchResponse resp;
  REQUIRE(f.Search(VectorQuery(5), &resp).ok());
  CHECK(resp.snapshot_version() == 2);
  CHECK(resp.hits(0).id().rfind("new", 0) == 0);
}

TEST_CASE("A truncated new version is refused: the old one keeps serving") {
  Fixture f;
  Publish(f.root, 800, "good", 1);
  f.Start();
  REQUIRE(f.WaitFor([&] { return f.Health() == grpc::health::v1::HealthCheckResponse::SERVING; }));
  // Publish v2 as a candidate (CURRENT unchanged), then truncate its graph.
  snapshot::SyntheticCorpus c =
      snapshot::MakeSyntheticCorpus(800, kDim, index::Metric::kCosine, "bad", 2);
  snapshot::PublishOptions candidate;
  candidate.make_current = false;
  REQUIRE(snapshot::PublishSnapshot(f.root, c.WithGraph(), candidate).ok());
  const std::string v2_dir = snapshot::FirstSegmentDir(f.root, 2);  // v2's graph files
  REQUIRE(!v2_dir.empty());
  auto graph = ReadFileToString(v2_dir + "/graph.hnsw");
  REQUIRE(WriteFileDurably(v2_dir + "/graph.hnsw", graph->substr(0, graph->size() / 3)).ok());
  // set-current refuses such a version; CURRENT is written by hand here, as
  // a copy of a root from elsewhere or a damaged volume would leave it.
  CHECK_FALSE(snapshot::SetCurrentVersion(f.root, 2).ok());
  REQUIRE(ReplaceFileAtomically(f.root + "/" + snapshot::kCurrentFile, "v2\n").ok());

  REQUIRE(f.WaitFor([&] {
    auto log = ReadFileToString(f.log);
    return log.ok() && log->find("refusing snapshot v2") != std::string::npos;
  }));
  auto log = ReadFileToString(f.log);
  CHECK(log->find("graph.hnsw is") != std::string::npos);
  CHECK(log->find("(truncated)") != std::string::npos);
  CHECK(log->find("still serving v1") != std::string::npos);
  v1::SearchResponse resp;
  REQUIRE(f.Search(VectorQuery(9), &resp).ok());
  CHECK(resp.snapshot_version() == 1);
  CHECK(f.Health() == grpc::health::v1::HealthCheckResponse::SERVING);
  CHECK(f.server->Alive());
  // Rolling forward to a good version works again.
  Publish(f.root, 800, "fixed", 3);
  REQUIRE(f.WaitFor([&] {
    v1::SearchResponse r;
    return f.Search(VectorQuery(9), &r).ok() && r.snapshot_version() == 3;
  }));
}

}  // namespace
}  // namespace imagesearch
