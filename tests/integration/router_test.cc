// imagesearch-router's core (services/router) in process, against real
// imagesearch-query replicas on loopback: the merge of the shards' answers
// from many threads at once while every shard call is hedged, id queries
// through the owning shard, and a shard going away. Run under
// ThreadSanitizer too (ci/build_tsan.sh).
#include "services/router/router.h"

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "libs/common/test_temp_dir.h"
#include "libs/index/test_vectors.h"
#include "libs/serving/embedder.h"
#include "libs/serving/query_core.h"
#include "libs/serving/query_engine.h"
#include "libs/snapshot/shard.h"
#include "libs/snapshot/snapshot_store.h"
#include "libs/snapshot/test_snapshots.h"
#include "services/router/replica_load.h"
#include "services/router/shard_client.h"
#include "tests/integration/server_process.h"

namespace imagesearch {
namespace {

constexpr int kDim = 16;
constexpr size_t kRows = 1200;
constexpr uint32_t kShards = 2;

// The rows of one corpus as one root (`shard` unsharded) or one shard's root.
void PublishRows(const std::string& root, const snapshot::ShardInfo& shard) {
  snapshot::SyntheticCorpus all =
      snapshot::MakeSyntheticCorpus(kRows, kDim, index::Metric::kCosine, "row", 11);
  snapshot::SyntheticCorpus mine;
  mine.input = all.input;
  mine.input.ids.clear();
  for (size_t i = 0; i < kRows; ++i) {
    if (!snapshot::CheckIdInShard(all.input.ids[i].id, shard).ok()) continue;
    mine.input.ids.push_back(all.input.ids[i]);
    mine.vectors.insert(mine.vectors.end(), all.vectors.begin() + static_cast<long>(i * kDim),
                        all.vectors.begin() + static_cast<long>((i + 1) * kDim));
  }
  mine.input.count = mine.input.ids.size();
  mine.input.shard = shard;
  REQUIRE(snapshot::PublishSnapshot(root, mine.WithGraph()).ok());
}

template <typename T>
absl::StatusOr<T> Await(const std::function<void(router::Router::Done<T>)>& call) {
  auto p = std::make_shared<std::promise<absl::StatusOr<T>>>();
  auto f = p->get_future();
  call([p](absl::StatusOr<T> r) { p->set_value(std::move(r)); });
  return f.get();
}

v1::SearchRequest Query(uint32_t seed, bool exact) {
  auto q = index::ClusteredVectors(1, kDim, 16, 1000 + seed);
  v1::SearchRequest r;
  r.mutable_vector()->mutable_values()->Add(q.begin(), q.end());
  r.set_top_k(10);
  r.set_exact(exact);
  return r;
}

std::vector<std::string> Ids(const v1::SearchResponse& r) {
  std::vector<std::string> ids;
  for (const auto& h : r.hits()) ids.push_back(h.id());
  return ids;
}

struct Cluster {
  std::string dir = testing::NewTempDir("router_it");
  std::unique_ptr<testing::ServerProcess> single;
  std::vector<std::vector<std::unique_ptr<testing::ServerProcess>>> replicas{kShards};
  std::unique_ptr<v1::ImageSearch::Stub> single_stub;

  Cluster() {
    REQUIRE(!dir.empty());
    PublishRows(dir + "/single", snapshot::ShardInfo());
    single = Start(dir + "/single", "single");
    auto channel = grpc::CreateChannel(single->address(), grpc::InsecureChannelCredentials());
    single_stub = v1::ImageSearch::NewStub(channel);
    for (uint32_t s = 0; s < kShards; ++s) {
      const std::string root = absl::StrCat(dir, "/", snapshot::ShardRootName(s, kShards));
      PublishRows(root, snapshot::ShardInfo{"it", s, kShards, snapshot::kShardHash});
      for (int r = 0; r < 2; ++r) replicas[s].push_back(Start(root, absl::StrCat("s", s, r)));
    }
  }
  std::unique_ptr<testing::ServerProcess> Start(const std::string& root, const std::string& name) {
    auto p = std::make_unique<testing::ServerProcess>(
        IMAGESEARCH_QUERY_BINARY, std::vector<std::string>{"--snapshot_root=" + root},
        dir + "/" + name + ".log");
    REQUIRE(p->port() > 0);
    return p;
  }
  router::RouterOptions Options(absl::Duration hedge) const {
    router::RouterOptions o;
    for (uint32_t s = 0; s < kShards; ++s) {
      o.shard_targets.push_back(
          absl::StrCat(replicas[s][0]->address(), ",", replicas[s][1]->address()));
    }
    o.shard.hedge_delay = hedge;
    return o;
  }
  v1::SearchResponse Single(const v1::SearchRequest& r) {
    grpc::ClientContext c;
    c.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::SearchResponse out;
    REQUIRE(single_stub->Search(&c, r, &out).ok());
    return out;
  }
};

TEST_CASE("A replica's cost: a slow answer counts at once, decays with time, times its calls out",
          "[router]") {
  using Seen = router::ReplicaLoad::Seen;
  constexpr int64_t kUs = 1000, kSec = 1'000'000'000;
  router::ReplicaLoad fast, slow;
  // No answer yet: free while idle, the dearest while its first call is out.
  CHECK(fast.Cost(0) == 0);
  fast.Begin();
  CHECK(std::isinf(fast.Cost(0)));
  fast.End(Seen::kLatency, 300 * kUs, 0);
  CHECK(fast.Cost(0) == Approx(300 * kUs));
  // One slow answer makes the replica dear at once.
  slow.Begin();
  slow.End(Seen::kLatency, 20'000 * kUs, 0);
  CHECK(slow.Cost(0) == Approx(20'000 * kUs));
  // The fast one keeps answering; the slow one, passed over, decays: still
  // dearer after 2 s (20 ms / e^2 = 2.7 ms), cheaper after 5 s (0.13 ms), so
  // it is tried again.
  for (int64_t t = 1; t <= 5; ++t) {
    fast.Begin();
    fast.End(Seen::kLatency, 300 * kUs, t * kSec);
    if (t == 2) CHECK(slow.Cost(t * kSec) > fast.Cost(t * kSec));
  }
  CHECK(slow.Cost(5 * kSec) < fast.Cost(5 * kSec));
  // Calls in flight: one more makes it twice as dear.
  const double idle = fast.Cost(5 * kSec);
  fast.Begin();
  CHECK(fast.Cost(5 * kSec) == Approx(2 * idle));
  // A hedge's cancelled loser says only "at least": it can raise the cost,
  // never lower it.
  fast.End(Seen::kAtLeast, 10 * kUs, 5 * kSec);
  CHECK(fast.Cost(5 * kSec) == Approx(idle));
  fast.Begin();
  fast.End(Seen::kAtLeast, 5'000 * kUs, 5 * kSec);
  CHECK(fast.Cost(5 * kSec) == Approx(5'000 * kUs));
  // A call never sent changes nothing but the count in flight.
  fast.Begin();
  fast.End(Seen::kNothing, 0, 5 * kSec);
  CHECK(fast.Cost(5 * kSec) == Approx(5'000 * kUs));
  CHECK(fast.pending() == 0);
  // An answer faster than the cost pulls it a quarter of the way down, from
  // where it has decayed to.
  fast.Begin();
  fast.End(Seen::kLatency, 100 * kUs, 6 * kSec);
  const double decayed = 5'000 * kUs * std::exp(-1.0);
  CHECK(fast.Cost(6 * kSec) == Approx(decayed + 0.25 * (100 * kUs - decayed)));
  // A slow answer after that replaces it again.
  fast.Begin();
  fast.End(Seen::kLatency, 3'000 * kUs, 6 * kSec);
  CHECK(fast.Cost(6 * kSec) == Approx(3'000 * kUs));
}

TEST_CASE("How a shard call ended says what it costs its replica", "[router]") {
  using router::ShardClient;
  using Seen = router::ReplicaLoad::Seen;
  using Code = grpc::StatusCode;
  constexpr int64_t kTook = 2'000'000;  // 2 ms.
  // Only searches are timed: the model behind an Embed, a thumbnail or
  // GetInfo take their own time.
  STATIC_REQUIRE(ShardClient::kTimesReplica<v1::SearchRequest>);
  STATIC_REQUIRE_FALSE(ShardClient::kTimesReplica<v1::EmbedRequest>);
  STATIC_REQUIRE_FALSE(ShardClient::kTimesReplica<v1::GetInfoRequest>);
  STATIC_REQUIRE_FALSE(ShardClient::kTimesReplica<v1::GetThumbnailRequest>);
  const auto seen = [&](bool timed, bool refused, Code code, bool lost) {
    const ShardClient::Observation o = ShardClient::Observe(timed, refused, code, lost, kTook);
    return std::make_pair(o.seen, o.latency_ns);
  };
  // A search's answer, or its own error (every replica would say the same),
  // is its latency.
  for (Code c : {Code::OK, Code::INVALID_ARGUMENT, Code::NOT_FOUND, Code::OUT_OF_RANGE,
                 Code::FAILED_PRECONDITION}) {
    CHECK(seen(true, false, c, false) == std::make_pair(Seen::kLatency, kTook));
    // The same from an Embed says nothing.
    CHECK(seen(false, false, c, false) == std::make_pair(Seen::kNothing, int64_t{0}));
  }
  // Cut off (the caller's deadline, or the loser of a hedge): at least.
  CHECK(seen(true, false, Code::DEADLINE_EXCEEDED, false) == std::make_pair(Seen::kAtLeast, kTook));
  CHECK(seen(true, false, Code::CANCELLED, true) == std::make_pair(Seen::kAtLeast, kTook));
  CHECK(seen(true, false, Code::OK, true) == std::make_pair(Seen::kAtLeast, kTook));
  CHECK(seen(false, false, Code::CANCELLED, true) == std::make_pair(Seen::kNothing, int64_t{0}));
  // A replica that fails counts as slow for every kind of call, however fast
  // it failed, and as slow as it was if that was slower.
  for (bool timed : {true, false}) {
    for (Code c : {Code::UNAVAILABLE, Code::CANCELLED, Code::INTERNAL, Code::RESOURCE_EXHAUSTED,
                   Code::UNKNOWN, Code::UNIMPLEMENTED}) {
      CHECK(seen(timed, false, c, false) ==
            std::make_pair(Seen::kLatency, ShardClient::kFailedCostNs));
    }
  }
  CHECK(ShardClient::Observe(true, false, Code::UNAVAILABLE, false, 3 * ShardClient::kFailedCostNs)
            .latency_ns == 3 * ShardClient::kFailedCostNs);
  // A call the channel refused never reached the replica.
  for (Code c : {Code::OK, Code::UNAVAILABLE, Code::DEADLINE_EXCEEDED}) {
    CHECK(seen(true, true, c, false) == std::make_pair(Seen::kNothing, int64_t{0}));
  }
}

TEST_CASE("The hedge timer fires due timers in time order and never a cancelled one", "[router]") {
  router::HedgeTimer& timer = router::HedgeTimer::Get();
  // Shared with the timers, which may outlive this case if it fails.
  struct Fired {
    std::mutex mu;
    std::vector<int> order;
    std::promise<void> last;
  };
  auto fired = std::make_shared<Fired>();
  auto record = [fired](int n) {
    return [fired, n] {
      std::lock_guard<std::mutex> lock(fired->mu);
      fired->order.push_back(n);
      if (n == 3) fired->last.set_value();
    };
  };
  const absl::Time t0 = absl::Now();
  // Added out of order; 2 is cancelled while it is the earliest (200 ms
  // leaves a loaded machine time to cancel it before it is due).
  const auto h3 = timer.After(absl::Milliseconds(300), record(3));
  const auto h2 = timer.After(absl::Milliseconds(200), record(2));
  timer.Cancel(h2);
  const auto h1 = timer.After(absl::Milliseconds(250), record(1));
  const bool done =
      fired->last.get_future().wait_for(std::chrono::seconds(10)) == std::future_status::ready;
  timer.Cancel(h1);  // Fired already, when all went well: nothing to do.
  timer.Cancel(h3);
  REQUIRE(done);
  CHECK(absl::Now() - t0 >= absl::Milliseconds(300));
  std::lock_guard<std::mutex> lock(fired->mu);
  CHECK(fired->order == std::vector<int>{1, 3});
}

TEST_CASE("A timer left behind a cancelled one within the slack fires on time, not early",
          "[router]") {
  router::HedgeTimer& timer = router::HedgeTimer::Get();
  using Clock = router::HedgeTimer::Clock;
  struct Fired {
    std::mutex mu;
    std::vector<std::pair<int, Clock::time_point>> at;
    std::promise<void> last;
  };
  auto fired = std::make_shared<Fired>();
  auto record = [fired](int n) {
    return [fired, n] {
      std::lock_guard<std::mutex> lock(fired->mu);
      fired->at.emplace_back(n, Clock::now());
      if (n == 2) fired->last.set_value();
    };
  };
  // 1 and 2 are 200 us apart, inside the re-arm slack (250 us): cancelling 1
  // leaves the timerfd armed for 1's time, so the thread wakes with nothing
  // due (when it wakes within 200 us of it) and must set it again for 2, not
  // fire 2 early. 300 ms leave a loaded machine time to cancel 1 first.
  const Clock::time_point t0 = Clock::now();
  const auto h1 = timer.After(absl::Milliseconds(300), record(1));
  const auto h2 = timer.After(absl::Microseconds(300200), record(2));
  timer.Cancel(h1);
  const bool done =
      fired->last.get_future().wait_for(std::chrono::seconds(10)) == std::future_status::ready;
  timer.Cancel(h2);
  REQUIRE(done);
  std::lock_guard<std::mutex> lock(fired->mu);
  REQUIRE(fired->at.size() == 1);
  CHECK(fired->at[0].first == 2);
  CHECK(fired->at[0].second - t0 >= std::chrono::microseconds(300200));
}

TEST_CASE("The router's merged exact answer is the collection's, from many threads, hedged",
          "[router]") {
  Cluster c;
  // Every shard call is hedged at once: both attempts race, the loser is
  // cancelled, on every call.
  router::Router r(c.Options(absl::Microseconds(1)));
  const absl::Status discovered = r.Discover(absl::Now() + absl::Seconds(20));
  INFO(discovered.ToString());
  REQUIRE(discovered.ok());
  CHECK(r.collection() == "it");
  std::atomic<int> mismatches{0}, errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (uint32_t i = 0; i < 25; ++i) {
        const v1::SearchRequest q = Query(static_cast<uint32_t>(t) * 100 + i, true);
        auto got = Await<v1::SearchResponse>([&](router::Router::Done<v1::SearchResponse> d) {
          r.Search(q, absl::Now() + absl::Seconds(10), std::move(d));
        });
        if (!got.ok()) {
          ++errors;
          continue;
        }
        if (Ids(*got) != Ids(c.Single(q))) ++mismatches;
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(errors == 0);
  CHECK(mismatches == 0);

  auto info = Await<v1::GetInfoResponse>([&](router::Router::Done<v1::GetInfoResponse> d) {
    r.GetInfo(absl::Now() + absl::Seconds(10), std::move(d));
  });
  REQUIRE(info.ok());
  CHECK(info->vector_count() == kRows);
  REQUIRE(info->router_shards_size() == 2);
  CHECK(info->router_shards(0).hedges_sent() > 0);
  // Every attempt that began has ended (the cancelled losers of the hedges
  // end a moment after their winners): nothing is left counted in flight.
  int in_flight = 0;
  for (int tries = 0; tries < 250; ++tries) {
    in_flight = 0;
    for (uint32_t s = 0; s < r.shard_count(); ++s) {
      for (const auto& replica : *r.shard(s).replicas()) in_flight += replica->load.pending();
    }
    if (in_flight == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  CHECK(info->router_shards(0).replicas_size() == 2);
  CHECK(in_flight == 0);
}

TEST_CASE("Id queries go through the owning shard, and a shard with no replica is named",
          "[router]") {
  Cluster c;
  router::Router r(c.Options(-absl::InfiniteDuration()));
  const absl::Status discovered = r.Discover(absl::Now() + absl::Seconds(20));
  INFO(discovered.ToString());
  REQUIRE(discovered.ok());
  auto search = [&](const v1::SearchRequest& q) {
    return Await<v1::SearchResponse>([&](router::Router::Done<v1::SearchResponse> d) {
      r.Search(q, absl::Now() + absl::Seconds(10), std::move(d));
    });
  };
  for (const char* id : {"row3", "row700", "row1199"}) {
    v1::SearchRequest q;
    q.set_id(id);
    q.set_exact(true);
    auto got = search(q);
    REQUIRE(got.ok());
    const std::vector<std::string> ids = Ids(*got);
    CHECK(ids == Ids(c.Single(q)));
    CHECK(std::find(ids.begin(), ids.end(), id) == ids.end());
  }
  v1::SearchRequest unknown;
  unknown.set_id("no-such-row");
  CHECK(absl::IsNotFound(search(unknown).status()));
  // A caller that has gone by the time the id's vector is back: no shard
  // is asked to search.
  {
    const uint64_t calls_before = r.shard(0).Stats().calls + r.shard(1).Stats().calls;
    v1::SearchRequest q;
    q.set_id("row3");
    auto gone = Await<v1::SearchResponse>([&](router::Router::Done<v1::SearchResponse> d) {
      r.Search(q, absl::Now() + absl::Seconds(10), std::move(d), [] { return true; });
    });
    CHECK(absl::IsCancelled(gone.status()));
    // The id's lookup, and nothing after it.
    CHECK(r.shard(0).Stats().calls + r.shard(1).Stats().calls == calls_before + 1);
  }
  // A replica of shard 1 asked for an id of shard 0 says where it lives.
  {
    std::string theirs;
    for (int i = 0; theirs.empty(); ++i) {
      if (snapshot::ShardOf(absl::StrCat("row", i), kShards) == 0) theirs = absl::StrCat("row", i);
    }
    auto stub = v1::ImageSearch::NewStub(
        grpc::CreateChannel(c.replicas[1][0]->address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    v1::SearchRequest q;
    q.set_id(theirs);
    v1::SearchResponse out;
    const grpc::Status s = stub->Search(&context, q, &out);
    CHECK(s.error_code() == grpc::StatusCode::NOT_FOUND);
    CHECK(absl::StrContains(s.error_message(),
                            "it belongs to shard 0 of 2, and this replica "
                            "serves shard 1"));
  }
  // A text query to a collection of raw vectors: the replica's error about
  // the query, which is not a failure of the shard nor makes its replicas
  // look slow.
  v1::SearchRequest text;
  text.set_text("a red dress");
  const absl::Status no_model = search(text).status();
  INFO(no_model.ToString());
  CHECK(absl::IsFailedPrecondition(no_model));
  auto info = Await<v1::GetInfoResponse>([&](router::Router::Done<v1::GetInfoResponse> d) {
    r.GetInfo(absl::Now() + absl::Seconds(10), std::move(d));
  });
  REQUIRE(info.ok());
  for (const v1::RouterShard& s : info->router_shards()) {
    CHECK(s.failures() == 0);
    for (const auto& replica : s.replicas()) {
      CHECK(replica.cost_us() * 1000 < router::ShardClient::kFailedCostNs);
    }
  }

  for (auto& p : c.replicas[1]) p.reset();  // SIGKILL both replicas of shard 1.
  auto down = search(Query(1, false));
  REQUIRE(absl::IsUnavailable(down.status()));
  CHECK(std::string(down.status().message()).find("shard 1 of 2") != std::string::npos);
  v1::SearchRequest partial = Query(1, false);
  partial.set_allow_partial(true);
  auto part = search(partial);
  REQUIRE(part.ok());
  CHECK(part->missing_shards_size() == 1);
  CHECK(part->missing_shards(0) == 1);
  CHECK(part->hits_size() == 10);
}

// A replica in front of the real one at `real`: its searches are the real
// one's; its GetInfo is the real one's, or `other`'s while as_other; and
// with broken_embed it answers every Embed OK with no vectors at all. It
// serves on a loopback port of its own (port()).
class FakeReplica final : public v1::ImageSearch::Service {
 public:
  FakeReplica(const std::string& real, const std::string& other)
      : real_(Stub(real)), other_(Stub(other)) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
  }
  ~FakeReplica() override { server_->Shutdown(); }
  int port() const { return port_; }
  std::atomic<bool> as_other{false};
  std::atomic<bool> broken_embed{false};
  std::atomic<bool> search_as_other{false};  // GetInfo says one shard, Search answers another's.
  // The shard stamp of its searches' answers: relayed from the replica that
  // answered (a real replica's), or none (a build before stamps).
  enum class Stamp { kRelay, kNone };
  std::atomic<Stamp> stamp_mode{Stamp::kRelay};
  // Searches take this long (0: as the real replica), unless the caller
  // cancels first: each such cancellation is counted.
  std::atomic<int> slow_ms{0};
  std::atomic<int> cancelled_seen{0};
  std::atomic<int> searches{0};

  grpc::Status GetInfo(grpc::ServerContext*, const v1::GetInfoRequest* q,
                       v1::GetInfoResponse* out) override {
    grpc::ClientContext c;
    return (as_other ? other_ : real_)->GetInfo(&c, *q, out);
  }
  grpc::Status Search(grpc::ServerContext* context, const v1::SearchRequest* q,
                      v1::SearchResponse* out) override {
    ++searches;
    if (const int ms = slow_ms.load(); ms > 0) {
      const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
      while (std::chrono::steady_clock::now() < until) {
        if (context->IsCancelled()) {
          ++cancelled_seen;
          return grpc::Status::CANCELLED;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    }
    grpc::ClientContext c;
    grpc::Status s = (search_as_other ? other_ : real_)->Search(&c, *q, out);
    switch (stamp_mode.load()) {
      case Stamp::kRelay:
        for (const auto& [key, value] : c.GetServerInitialMetadata()) {
          if (key == snapshot::kShardStampKey) {
            context->AddInitialMetadata(snapshot::kShardStampKey,
                                        std::string(value.data(), value.size()));
          }
        }
        break;
      case Stamp::kNone:
        break;
    }
    return s;
  }
  grpc::Status Embed(grpc::ServerContext*, const v1::EmbedRequest* q,
                     v1::EmbedResponse* out) override {
    if (broken_embed) return grpc::Status::OK;
    grpc::ClientContext c;
    return real_->Embed(&c, *q, out);
  }

 private:
  static std::unique_ptr<v1::ImageSearch::Stub> Stub(const std::string& address) {
    return v1::ImageSearch::NewStub(
        grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  }
  std::unique_ptr<v1::ImageSearch::Stub> real_, other_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

// Shard 0 of `c` through `impostor` and its real second replica, checked
// when the router starts and not again within the hour; then `turn` makes
// the impostor answer as something shard 0 cannot be. Every exact answer
// must still be the collection's, each call going on to the real replica,
// and the impostor must be out, saying it `serves` (what its GetInfo says
// now): only a call to it has it checked again.
void ExpectImpostorNeverMerged(Cluster& c, FakeReplica& impostor, const std::function<void()>& turn,
                               const std::string& serves) {
  REQUIRE(impostor.port() > 0);
  router::RouterOptions o = c.Options(-absl::InfiniteDuration());
  const std::string fake = absl::StrCat("127.0.0.1:", impostor.port());
  o.shard_targets[0] = absl::StrCat(fake, ",", c.replicas[0][1]->address());
  o.shard.recheck_every = absl::Hours(1);
  router::Router r(o);
  REQUIRE(r.Discover(absl::Now() + absl::Seconds(20)).ok());
  turn();
  for (uint32_t i = 0; i < 30; ++i) {
    const v1::SearchRequest q = Query(i, true);
    auto got = Await<v1::SearchResponse>([&](router::Router::Done<v1::SearchResponse> d) {
      r.Search(q, absl::Now() + absl::Seconds(10), std::move(d));
    });
    INFO(got.status().ToString());
    REQUIRE(got.ok());
    CHECK(Ids(*got) == Ids(c.Single(q)));  // No duplicate, none missing.
  }
  // Its first wrong answer had it asked again at once (not in recheck_every):
  // it says what it is, and gets no calls.
  std::string not_good;
  for (int i = 0; i < 1000 && !absl::StrContains(not_good, serves); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    not_good = r.shard(0).NotGood();
  }
  INFO(not_good);
  CHECK(absl::StrContains(not_good, fake + ": " + serves));
  CHECK(r.shard(0).Stats().failures == 0);  // Each call went on to the real replica.
}

TEST_CASE("Another shard's rows in a replica's answer are never merged: it is asked again",
          "[router]") {
  Cluster c;
  // Listed in shard 0 and checked as shard 0's, but answering searches with
  // shard 1's rows: as a process restarted at its address as a shard-1
  // replica answers until the next check (10 s by default; never, here).
  FakeReplica impostor(c.replicas[0][0]->address(), c.replicas[1][0]->address());
  impostor.stamp_mode = FakeReplica::Stamp::kNone;  // A build before shard stamps: only rows tell.
  ExpectImpostorNeverMerged(
      c, impostor,
      [&] {
        impostor.search_as_other = true;
        impostor.as_other = true;  // Its GetInfo too, from now on: a shard-1 replica in all.
      },
      "serves shard 1 of 2, not shard 0 of 2");
}

TEST_CASE("A shard's replicas stamp every answer with their shard; an unsharded one does not",
          "[router]") {
  Cluster c;
  auto stamp_of = [](const std::string& address) {
    auto stub =
        v1::ImageSearch::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::SearchResponse out;
    REQUIRE(stub->Search(&context, Query(3, false), &out).ok());
    std::vector<std::string> stamps;
    for (const auto& [key, value] : context.GetServerInitialMetadata()) {
      if (key == snapshot::kShardStampKey) stamps.emplace_back(value.data(), value.size());
    }
    return stamps;
  };
  CHECK(stamp_of(c.replicas[0][1]->address()) == std::vector<std::string>{"0/2/it"});
  CHECK(stamp_of(c.replicas[1][0]->address()) == std::vector<std::string>{"1/2/it"});
  CHECK(stamp_of(c.single->address()).empty());
}

TEST_CASE("A replica restarted as another layout's shard is never merged, though its rows fit",
          "[router]") {
  Cluster c;
  // Shard 0 of 3 of the same collection (a reshard in progress): with the
  // jump hash every one of its rows is in shard 0 of 2 too, so no answer of
  // it holds a row the router would refuse, but it lacks the rows that moved
  // to shard 2 of 3. Its real stamp, relayed by the impostor, is what tells.
  const std::string root3 = c.dir + "/" + snapshot::ShardRootName(0, 3);
  PublishRows(root3, snapshot::ShardInfo{"it", 0, 3, snapshot::kShardHash});
  auto layout3 = c.Start(root3, "s0of3");
  FakeReplica impostor(c.replicas[0][0]->address(), layout3->address());
  ExpectImpostorNeverMerged(
      c, impostor,
      [&] {
        impostor.as_other = true;
        impostor.search_as_other = true;  // Answers, GetInfo and stamp: shard 0 of 3's.
      },
      "serves shard 0 of 3, not shard 0 of 2");
}

TEST_CASE("An error stamped as another layout's shard is not passed on as the answer", "[router]") {
  Cluster c;
  const std::string root3 = c.dir + "/" + snapshot::ShardRootName(0, 3);
  PublishRows(root3, snapshot::ShardInfo{"it", 0, 3, snapshot::kShardHash});
  auto layout3 = c.Start(root3, "s0of3");
  FakeReplica impostor(c.replicas[0][0]->address(), layout3->address());
  REQUIRE(impostor.port() > 0);
  router::RouterOptions o = c.Options(-absl::InfiniteDuration());
  o.shard_targets[0] = absl::StrCat("127.0.0.1:", impostor.port());  // Its only replica.
  o.shard.recheck_every = absl::Hours(1);
  router::Router r(o);
  REQUIRE(r.Discover(absl::Now() + absl::Seconds(20)).ok());
  impostor.search_as_other = true;  // Searches answered by shard 0 of 3.
  // An id of shard 0 of 2 that moved to shard 2 of 3: shard 0 of 3 says
  // NOT_FOUND, which must not reach the caller as the collection's answer.
  std::string id;
  for (uint32_t i = 0; i < kRows && id.empty(); ++i) {
    const std::string candidate = absl::StrCat("row", i);
    if (snapshot::ShardOf(candidate, 2) == 0 && snapshot::ShardOf(candidate, 3) == 2)
      id = candidate;
  }
  REQUIRE(!id.empty());
  v1::SearchRequest q;
  q.set_id(id);
  const auto got = Await<v1::SearchResponse>([&](router::Router::Done<v1::SearchResponse> d) {
    r.Search(q, absl::Now() + absl::Seconds(10), std::move(d));
  });
  INFO(got.status().ToString());
  CHECK(absl::IsUnavailable(got.status()));
  CHECK(absl::StrContains(got.status().message(), "answered as imagesearch-shard '0/3/it'"));
}

TEST_CASE("By default a call is hedged after the shard's p95, and the losing attempt is cancelled",
          "[router]") {
  Cluster c;
  // Both of shard 0's replicas behind the same kind of proxy, so that the
  // balancer, which picks the cheaper, sees them alike until one turns slow.
  FakeReplica slow(c.replicas[0][0]->address(), c.replicas[1][0]->address());
  FakeReplica fast(c.replicas[0][1]->address(), c.replicas[1][0]->address());
  REQUIRE(slow.port() > 0);
  REQUIRE(fast.port() > 0);
  // Zero: the default, hedging after the observed p95.
  router::RouterOptions o = c.Options(absl::ZeroDuration());
  o.shard_targets[0] = absl::StrCat("127.0.0.1:", slow.port(), ",127.0.0.1:", fast.port());
  router::Router r(o);
  REQUIRE(r.Discover(absl::Now() + absl::Seconds(20)).ok());
  auto search = [&](uint32_t seed) {
    return Await<v1::SearchResponse>([&](router::Router::Done<v1::SearchResponse> d) {
      r.Search(Query(seed, false), absl::Now() + absl::Seconds(30), std::move(d));
    });
  };
  // No hedge before the shard has answers to take a p95 from; then one.
  CHECK(r.shard(0).HedgeDelay() == -absl::InfiniteDuration());
  for (uint32_t i = 0; i < 60; ++i) REQUIRE(search(i).ok());
  const absl::Duration delay = r.shard(0).HedgeDelay();
  INFO(absl::FormatDuration(delay));
  REQUIRE(delay >= absl::Milliseconds(1));  // min_hedge_delay
  REQUIRE(delay < absl::Seconds(1));
  // One replica now takes 20 s a search: a call it gets is hedged to the
  // other, which answers, and the slow attempt is cancelled, not left to run.
  // Twelve calls at a time, so that the balancer sends some to the slow one:
  // a replica's cost grows with its calls in flight.
  slow.slow_ms = 20000;
  for (uint32_t round = 0; round < 50 && slow.cancelled_seen == 0; ++round) {
    const absl::Time start = absl::Now();
    std::vector<std::future<absl::StatusOr<v1::SearchResponse>>> calls;
    for (uint32_t k = 0; k < 12; ++k) {
      calls.push_back(std::async(std::launch::async, search, 100 + 12 * round + k));
    }
    for (auto& call : calls) REQUIRE(call.get().ok());
    CHECK(absl::Now() - start < absl::Seconds(5));
    for (int k = 0; k < 100 && slow.cancelled_seen == 0 && r.shard(0).Stats().hedges_won > 0; ++k) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  const router::ShardStats stats = r.shard(0).Stats();
  INFO("shard 0: " << stats.calls << " calls, " << stats.hedges_sent << " hedges sent, "
                   << stats.hedges_won << " won; the slow replica saw " << slow.searches.load()
                   << " searches, " << slow.cancelled_seen.load() << " cancelled; "
                   << r.shard(0).NotGood());
  // Hedged by default, and the attempt that lost (the slow replica's, as
  // the primary or as the hedge) was cancelled at the replica.
  CHECK(stats.hedges_sent >= 1);
  CHECK(slow.cancelled_seen >= 1);
}

// A replica's error for a request (`single`, through its stub) and the
// router's for the same request (`routed`) are the same code and message.
template <typename Response>
void ExpectSameError(const std::function<grpc::Status(grpc::ClientContext*, Response*)>& single,
                     const std::function<void(router::Router::Done<Response>)>& routed) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  Response ignored;
  const grpc::Status g = single(&context, &ignored);
  const absl::Status want(static_cast<absl::StatusCode>(g.error_code()), g.error_message());
  REQUIRE(!want.ok());
  CHECK(Await<Response>(routed).status() == want);
}

TEST_CASE("A bad request gets the replica's own code and message through the router", "[router]") {
  Cluster c;
  router::Router r(c.Options(-absl::InfiniteDuration()));
  REQUIRE(r.Discover(absl::Now() + absl::Seconds(20)).ok());
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  std::vector<std::pair<std::string, v1::SearchRequest>> searches;
  searches.emplace_back("no query", v1::SearchRequest());
  v1::SearchRequest q = Query(1, false);
  q.set_top_k(100000);
  searches.emplace_back("top_k too big", q);
  q = Query(1, false);
  q.mutable_vector()->add_values(0.5f);
  searches.emplace_back("a vector of another dimension", q);
  q = Query(1, false);
  q.mutable_vector()->set_values(3, std::nanf(""));
  searches.emplace_back("a NaN in the vector", q);
  q = Query(1, false);
  q.set_text("a red boot");
  searches.emplace_back("text on a collection with no model", q);
  q = Query(1, false);
  q.set_ef(1u << 30);
  searches.emplace_back("ef too big", q);
  q = Query(1, false);
  auto* must = q.mutable_filter()->add_must();
  must->set_field("no_such_field");
  must->mutable_match()->set_keyword("x");
  searches.emplace_back("a filter on a field the collection lacks", q);
  for (const auto& [what, request] : searches) {
    INFO(what);
    ExpectSameError<v1::SearchResponse>(
        [&](grpc::ClientContext* ctx, v1::SearchResponse* out) {
          return c.single_stub->Search(ctx, request, out);
        },
        [&](router::Router::Done<v1::SearchResponse> d) {
          r.Search(request, deadline, std::move(d));
        });
  }
  INFO("an empty SearchBatch, then an empty Embed");
  ExpectSameError<v1::SearchBatchResponse>(
      [&](grpc::ClientContext* ctx, v1::SearchBatchResponse* out) {
        return c.single_stub->SearchBatch(ctx, v1::SearchBatchRequest(), out);
      },
      [&](router::Router::Done<v1::SearchBatchResponse> d) {
        r.SearchBatch(v1::SearchBatchRequest(), deadline, std::move(d));
      });
  ExpectSameError<v1::EmbedResponse>(
      [&](grpc::ClientContext* ctx, v1::EmbedResponse* out) {
        return c.single_stub->Embed(ctx, v1::EmbedRequest(), out);
      },
      [&](router::Router::Done<v1::EmbedResponse> d) {
        r.Embed(v1::EmbedRequest(), deadline, std::move(d));
      });
}

TEST_CASE("A replica that turns out to serve another shard is rechecked out, and back in",
          "[router]") {
  Cluster c;
  FakeReplica impostor(c.replicas[0][0]->address(), c.replicas[1][0]->address());
  REQUIRE(impostor.port() > 0);
  router::RouterOptions o = c.Options(-absl::InfiniteDuration());
  o.shard_targets[0] = absl::StrCat("127.0.0.1:", impostor.port());
  o.shard.recheck_every = absl::Milliseconds(100);
  router::Router r(o);
  REQUIRE(r.Discover(absl::Now() + absl::Seconds(20)).ok());
  auto search = [&] {
    return Await<v1::SearchResponse>([&](router::Router::Done<v1::SearchResponse> d) {
      r.Search(Query(4, true), absl::Now() + absl::Seconds(10), std::move(d));
    });
  };
  REQUIRE(search().ok());
  // Its GetInfo now says shard 1: within a few rechecks it gets no calls.
  impostor.as_other = true;
  absl::Status s;
  for (int i = 0; i < 100 && s.ok(); ++i) {
    absl::SleepFor(absl::Milliseconds(50));
    s = search().status();
  }
  INFO(s.ToString());
  CHECK(absl::IsUnavailable(s));
  CHECK(absl::StrContains(s.message(), "serves shard 1 of 2, not shard 0 of 2"));
  // And back.
  impostor.as_other = false;
  bool back = false;
  for (int i = 0; i < 100 && !back; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
    back = search().ok();
  }
  CHECK(back);
}

TEST_CASE("Every replica of a shard is checked, and a broken answer is an error, not a crash",
          "[router]") {
  Cluster c;
  // A replica of shard 1 listed among shard 0's: refused at start, naming
  // it, whichever replica the calls would have gone to.
  for (int attempt = 0; attempt < 4; ++attempt) {
    router::RouterOptions mixed = c.Options(-absl::InfiniteDuration());
    const std::string stray = c.replicas[1][0]->address();
    mixed.shard_targets[0] = absl::StrCat(c.replicas[0][0]->address(), ",", stray);
    router::Router r(mixed);
    const absl::Status s = r.Discover(absl::Now() + absl::Seconds(20));
    INFO(s.ToString());
    CHECK(absl::IsFailedPrecondition(s));
    CHECK(absl::StrContains(s.message(), stray));
    CHECK(absl::StrContains(s.message(), "serves shard 1 of 2, not shard 0 of 2"));
  }

  // A shard whose only replica refuses connections: start-up fails at its
  // deadline saying so (not DEADLINE_EXCEEDED, which says a replica hung).
  {
    router::RouterOptions o = c.Options(-absl::InfiniteDuration());
    o.shard_targets[1] = "127.0.0.1:1";
    router::Router r(o);
    const absl::Time start = absl::Now();
    const absl::Status s = r.Discover(absl::Now() + absl::Seconds(1));
    INFO(s.ToString());
    CHECK(absl::IsUnavailable(s));
    CHECK(absl::StrContains(s.message(), "shard 1 of 2 (127.0.0.1:1) has no replica answering"));
    CHECK(absl::StrContains(s.message(), "Connection refused"));
    CHECK_FALSE(absl::StrContains(s.message(), "shard 0"));
    CHECK(absl::Now() - start < absl::Seconds(10));
  }

  // A replica down at start does not keep the router from serving; it is
  // asked again until it answers, and gets no calls before.
  {
    router::RouterOptions o = c.Options(absl::Microseconds(1));  // Every call hedged.
    o.shard_targets[0] = absl::StrCat(c.replicas[0][0]->address(), ",127.0.0.1:1");
    router::Router r(o);
    REQUIRE(r.Discover(absl::Now() + absl::Seconds(20)).ok());
    for (uint32_t i = 0; i < 20; ++i) {
      const v1::SearchRequest q = Query(i, true);
      auto got = Await<v1::SearchResponse>([&](router::Router::Done<v1::SearchResponse> d) {
        r.Search(q, absl::Now() + absl::Seconds(10), std::move(d));
      });
      REQUIRE(got.ok());
      CHECK(Ids(*got) == Ids(c.Single(q)));
    }
    // No hedge went anywhere: the one other replica of shard 0 was never
    // checked, and a hedge never goes to the replica already asked.
    CHECK(r.shard(0).Stats().hedges_sent == 0);
    CHECK(absl::StrContains(r.shard(0).NotGood(), "127.0.0.1:1: not answering"));
  }

  // An id query at the largest top_k, as an unsharded replica answers it
  // (the owning shard gets the id query itself, and leaves its row out).
  {
    router::Router r(c.Options(-absl::InfiniteDuration()));
    REQUIRE(r.Discover(absl::Now() + absl::Seconds(20)).ok());
    {
      v1::SearchRequest q;
      q.set_id("row5");
      q.set_exact(true);
      q.set_top_k(serving::kMaxTopK);
      auto got = Await<v1::SearchResponse>([&](router::Router::Done<v1::SearchResponse> d) {
        r.Search(q, absl::Now() + absl::Seconds(10), std::move(d));
      });
      INFO(got.status().ToString());
      REQUIRE(got.ok());
      CHECK(Ids(*got) == Ids(c.Single(q)));
    }
  }

  // A replica whose Embed answers carry no vectors: an id query through it
  // fails with an error naming its shard; the router goes on serving.
  FakeReplica broken(c.replicas[0][0]->address(), c.replicas[0][0]->address());
  broken.broken_embed = true;
  REQUIRE(broken.port() > 0);
  const int port = broken.port();
  router::RouterOptions o = c.Options(-absl::InfiniteDuration());
  o.shard_targets[0] = absl::StrCat("127.0.0.1:", port);
  router::Router r(o);
  REQUIRE(r.Discover(absl::Now() + absl::Seconds(20)).ok());
  std::string owned;  // An id of shard 0.
  for (int i = 0; owned.empty(); ++i) {
    if (snapshot::ShardOf(absl::StrCat("row", i), kShards) == 0) owned = absl::StrCat("row", i);
  }
  v1::SearchRequest by_id;
  by_id.set_id(owned);
  auto failed = Await<v1::SearchResponse>([&](router::Router::Done<v1::SearchResponse> d) {
    r.Search(by_id, absl::Now() + absl::Seconds(10), std::move(d));
  });
  INFO(failed.status().ToString());
  CHECK(absl::IsInternal(failed.status()));
  CHECK(absl::StrContains(failed.status().message(),
                          "shard 0 of 2 (127.0.0.1:" + std::to_string(port) +
                              "): answered an Embed with 0 vectors for 1 inputs"));
  auto fine = Await<v1::SearchResponse>([&](router::Router::Done<v1::SearchResponse> d) {
    r.Search(Query(3, true), absl::Now() + absl::Seconds(10), std::move(d));
  });
  CHECK(fine.ok());
}

// SIGSTOP, and waits until every thread of `pid` has stopped: kill()
// returns before a busy machine has run the threads into their stop.
void StopProcess(pid_t pid) {
  ::kill(pid, SIGSTOP);
  for (int i = 0; i < 500; ++i) {
    bool all = true;
    std::error_code ec;
    for (const auto& t :
         std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/task"), ec)) {
      std::ifstream stat(t.path() / "stat");
      std::string line;
      std::getline(stat, line);
      const size_t close = line.rfind(')');
      if (close == std::string::npos || close + 2 >= line.size() || line[close + 2] != 'T') {
        all = false;
      }
    }
    if (all && !ec) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  FAIL("process " << pid << " did not stop");
}

TEST_CASE("A hung shard: allow_partial answers before the deadline, a query error at once",
          "[router]") {
  Cluster c;
  router::Router r(c.Options(absl::Milliseconds(50)));
  REQUIRE(r.Discover(absl::Now() + absl::Seconds(20)).ok());
  auto search = [&](const v1::SearchRequest& q, absl::Duration timeout) {
    return Await<v1::SearchResponse>([&](router::Router::Done<v1::SearchResponse> d) {
      r.Search(q, absl::Now() + timeout, std::move(d));
    });
  };
  // One replica of shard 0 hangs: a query error from its sibling ends the
  // call at once, whichever replica was asked first (hedged after 50 ms).
  StopProcess(c.replicas[0][0]->pid());
  v1::SearchRequest wrong_dim;
  wrong_dim.mutable_vector()->add_values(1.0f);
  for (int i = 0; i < 6; ++i) {
    const absl::Time t0 = absl::Now();
    const absl::Status s = search(wrong_dim, absl::Seconds(5)).status();
    INFO(s.ToString());
    CHECK(absl::IsInvalidArgument(s));
    CHECK(absl::Now() - t0 < absl::Seconds(2));
  }
  // Id queries (the id's vector from its shard: an Embed of an id) and
  // GetInfo are hedged as searches are: the hung replica costs them the
  // hedge delay, not their deadline. A router new to the hang, and calls at
  // once, so that some go to the hung replica first.
  {
    ::kill(c.replicas[0][0]->pid(), SIGCONT);  // Checked good first, then hung.
    router::Router fresh(c.Options(absl::Milliseconds(50)));
    REQUIRE(fresh.Discover(absl::Now() + absl::Seconds(20)).ok());
    StopProcess(c.replicas[0][0]->pid());
    std::string owned;  // An id of shard 0.
    for (int i = 0; owned.empty(); ++i) {
      if (snapshot::ShardOf(absl::StrCat("row", i), kShards) == 0) owned = absl::StrCat("row", i);
    }
    std::vector<std::future<absl::Status>> calls;
    const absl::Time t0 = absl::Now();
    for (int i = 0; i < 8; ++i) {
      auto by_id = std::make_shared<std::promise<absl::Status>>();
      calls.push_back(by_id->get_future());
      v1::SearchRequest q;
      q.set_id(owned);
      fresh.Search(
          q, absl::Now() + absl::Seconds(5),
          [by_id](absl::StatusOr<v1::SearchResponse> got) { by_id->set_value(got.status()); });
      auto info = std::make_shared<std::promise<absl::Status>>();
      calls.push_back(info->get_future());
      fresh.GetInfo(
          absl::Now() + absl::Seconds(5),
          [info](absl::StatusOr<v1::GetInfoResponse> got) { info->set_value(got.status()); });
    }
    for (auto& f : calls) {
      const absl::Status got = f.get();
      INFO(got.ToString());
      CHECK(got.ok());
    }
    CHECK(absl::Now() - t0 < absl::Seconds(3));
  }
  // Both replicas of shard 1 hang too.
  for (auto& p : c.replicas[1]) StopProcess(p->pid());
  v1::SearchRequest partial = Query(2, true);
  partial.set_allow_partial(true);
  auto part = search(partial, absl::Seconds(2));
  INFO(part.status().ToString());
  REQUIRE(part.ok());  // Not DEADLINE_EXCEEDED: shard 1 was given up at 9/10 of the time.
  INFO(part->ShortDebugString());
  REQUIRE(part->missing_shards_size() == 1);
  CHECK(part->missing_shards(0) == 1);
  CHECK(part->hits_size() == 10);
  auto whole = search(Query(2, true), absl::Seconds(1));
  INFO(whole.status().ToString());
  CHECK(absl::IsDeadlineExceeded(whole.status()));
  CHECK(absl::StrContains(whole.status().message(), "before shard 1 of 2"));
  CHECK_FALSE(absl::StrContains(whole.status().message(), "shard 0 of 2"));
  // GetInfo describes the shard that answers and marks the hung one, in a
  // couple of seconds rather than at its 30 s deadline.
  {
    const absl::Time t0 = absl::Now();
    auto info = Await<v1::GetInfoResponse>([&](router::Router::Done<v1::GetInfoResponse> d) {
      r.GetInfo(absl::Now() + absl::Seconds(30), std::move(d));
    });
    INFO(info.status().ToString());
    REQUIRE(info.ok());
    CHECK(absl::Now() - t0 < absl::Seconds(10));
    REQUIRE(info->router_shards_size() == 2);
    CHECK(info->router_shards(0).available());
    CHECK_FALSE(info->router_shards(1).available());
  }
  // No time at all: the replica's own words, whatever the shards do.
  auto no_time = search(Query(2, true), absl::ZeroDuration());
  CHECK(no_time.status().message() == "deadline passed before the search started");
  // A caller that leaves while shard 1 hangs: its shard calls are cancelled
  // within the watch's period, not left to their deadline, and the shard is
  // not charged a failure for it.
  {
    const uint64_t failures = r.shard(1).Stats().failures;
    const absl::Time t0 = absl::Now();
    const absl::Time leaves = t0 + absl::Milliseconds(300);
    auto left = Await<v1::SearchResponse>([&](router::Router::Done<v1::SearchResponse> d) {
      r.Search(Query(3, true), absl::Now() + absl::Seconds(60), std::move(d),
               [leaves] { return absl::Now() >= leaves; });
    });
    INFO(left.status().ToString() << " after " << absl::FormatDuration(absl::Now() - t0));
    CHECK(absl::IsCancelled(left.status()));
    CHECK(absl::Now() - t0 < absl::Seconds(10));
    CHECK(r.shard(1).Stats().failures == failures);
  }
  ::kill(c.replicas[0][0]->pid(), SIGCONT);
  for (auto& p : c.replicas[1]) ::kill(p->pid(), SIGCONT);
}

TEST_CASE("SearchBatch through the router: a replica's limit, and each answer the single one's",
          "[router]") {
  Cluster c;
  router::Router r(c.Options(-absl::InfiniteDuration()));
  REQUIRE(r.Discover(absl::Now() + absl::Seconds(20)).ok());
  auto batch = [&](const v1::SearchBatchRequest& b) {
    return Await<v1::SearchBatchResponse>([&](router::Router::Done<v1::SearchBatchResponse> d) {
      r.SearchBatch(b, absl::Now() + absl::Seconds(60), std::move(d));
    });
  };
  // One over the limit: refused before any shard is asked, as a replica
  // refuses it (the same message).
  v1::SearchBatchRequest over;
  const int max = serving::QueryCoreOptions().max_batch_queries;  // A replica's default.
  for (int i = 0; i <= max; ++i) *over.add_requests() = Query(i, true);
  auto refused = batch(over);
  INFO(refused.status().ToString());
  CHECK(absl::IsInvalidArgument(refused.status()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::SearchBatchResponse single_out;
  const grpc::Status single = c.single_stub->SearchBatch(&ctx, over, &single_out);
  CHECK(single.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(single.error_message() == std::string(refused.status().message()));
  CHECK(r.shard(0).Stats().calls == 0);
  // At the limit: every answer is the unsharded one's.
  v1::SearchBatchRequest full;
  for (int i = 0; i < max; ++i) *full.add_requests() = Query(i, true);
  auto answered = batch(full);
  INFO(answered.status().ToString());
  REQUIRE(answered.ok());
  REQUIRE(answered->responses_size() == max);
  for (int i = 0; i < answered->responses_size(); i += 17) {
    CHECK(Ids(answered->responses(i)) == Ids(c.Single(full.requests(i))));
  }
}

TEST_CASE("A shard given by DNS name gets a channel per address it resolves to", "[router]") {
  Cluster c;
  router::RouterOptions o = c.Options(-absl::InfiniteDuration());
  // Shard 0 by name (resolved here: localhost's addresses, of which the
  // replica listens on 127.0.0.1 only), shard 1 by a list naming one replica
  // by name and the other by address.
  const std::string port0 =
      c.replicas[0][0]->address().substr(c.replicas[0][0]->address().rfind(':') + 1);
  o.shard_targets[0] = "dns:///localhost:" + port0;
  const std::string port1 =
      c.replicas[1][0]->address().substr(c.replicas[1][0]->address().rfind(':') + 1);
  o.shard_targets[1] = absl::StrCat("localhost:", port1, ",", c.replicas[1][1]->address());
  router::ShardClient shard0(0, o.shard_targets[0], o.shard);
  auto set = shard0.replicas();
  bool has_v4 = false;
  for (const auto& r : *set) has_v4 = has_v4 || r->address == "127.0.0.1:" + port0;
  CHECK(has_v4);
  router::Router r(o);
  const absl::Status discovered = r.Discover(absl::Now() + absl::Seconds(20));
  INFO(discovered.ToString());
  REQUIRE(discovered.ok());
  for (uint32_t q = 0; q < 20; ++q) {
    const v1::SearchRequest query = Query(q, true);
    auto got = Await<v1::SearchResponse>([&](router::Router::Done<v1::SearchResponse> d) {
      r.Search(query, absl::Now() + absl::Seconds(10), std::move(d));
    });
    REQUIRE(got.ok());
    CHECK(Ids(*got) == Ids(c.Single(query)));
  }
}

// A model that embeds every image as one fixed vector and has no text
// tower: enough to see which embedder the router uses.
class FixedEmbedder final : public serving::Embedder {
 public:
  explicit FixedEmbedder(std::vector<float> v) : v_(std::move(v)) {}
  void Embed(std::vector<serving::EmbedItem> items, const serving::CallContext&,
             Callback done) override {
    calls_.fetch_add(1);
    Vectors out;
    for (const auto& item : items) {
      if (item.kind == serving::EmbedItem::Kind::kText) {
        return done(absl::FailedPreconditionError("the model has no text tower"));
      }
      out.push_back(v_);
    }
    done(std::move(out));
  }
  int dim() const override { return kDim; }
  bool has_text() const override { return false; }
  int calls() const { return calls_.load(); }

 private:
  const std::vector<float> v_;
  std::atomic<int> calls_{0};
};

TEST_CASE("With its own embedder the router embeds image queries itself", "[router]") {
  Cluster c;
  const v1::SearchRequest by_vector = Query(5, true);
  auto embedder = std::make_shared<FixedEmbedder>(
      std::vector<float>(by_vector.vector().values().begin(), by_vector.vector().values().end()));
  router::RouterOptions options = c.Options(-absl::InfiniteDuration());
  options.embedder = embedder;
  options.model_sha256 = "";  // The shards are vector-only: no model, no sha256.
  router::Router r(options);
  const absl::Status discovered = r.Discover(absl::Now() + absl::Seconds(20));
  INFO(discovered.ToString());
  REQUIRE(discovered.ok());
  auto search = [&](const v1::SearchRequest& q) {
    return Await<v1::SearchResponse>([&](router::Router::Done<v1::SearchResponse> d) {
      r.Search(q, absl::Now() + absl::Seconds(10), std::move(d));
    });
  };
  v1::SearchRequest by_image;
  by_image.set_image("any bytes: the fixed model ignores them");
  by_image.set_exact(true);
  auto got = search(by_image);
  REQUIRE(got.ok());
  CHECK(Ids(*got) == Ids(c.Single(by_vector)));
  CHECK(embedder->calls() == 1);
  // GetInfo says the router can embed, though the vector-only shards cannot.
  auto info = Await<v1::GetInfoResponse>([&](router::Router::Done<v1::GetInfoResponse> d) {
    r.GetInfo(absl::Now() + absl::Seconds(10), std::move(d));
  });
  REQUIRE(info.ok());
  CHECK(info->model().loaded());
  CHECK_FALSE(info->model().has_text());

  v1::SearchRequest by_text;
  by_text.set_text("a red dress");
  CHECK(absl::IsFailedPrecondition(search(by_text).status()));
  v1::SearchRequest empty;
  empty.set_image("");
  auto refused = search(empty);
  CHECK(absl::IsInvalidArgument(refused.status()));
  CHECK(refused.status().message() == "query image is empty");

  auto embed = [&](const v1::EmbedRequest& req) {
    return Await<v1::EmbedResponse>([&](router::Router::Done<v1::EmbedResponse> d) {
      r.Embed(req, absl::Now() + absl::Seconds(10), std::move(d));
    });
  };
  v1::EmbedRequest mixed;
  mixed.add_inputs()->set_id("row7");
  mixed.add_inputs()->set_image("x");
  auto embedded = embed(mixed);
  REQUIRE(embedded.ok());
  REQUIRE(embedded->embeddings_size() == 2);
  CHECK(embedded->embeddings(0).values_size() == kDim);
  CHECK(std::equal(embedded->embeddings(1).values().begin(), embedded->embeddings(1).values().end(),
                   by_vector.vector().values().begin()));

  // Errors name the request's own input, whichever part of it failed.
  v1::EmbedRequest empty_image;
  empty_image.add_inputs()->set_id("row7");
  empty_image.add_inputs()->set_image("");
  auto bad = embed(empty_image);
  CHECK(absl::IsInvalidArgument(bad.status()));
  CHECK(bad.status().message() == "inputs[1] is empty");
  v1::EmbedRequest unknown_id;
  unknown_id.add_inputs()->set_image("x");
  unknown_id.add_inputs()->set_image("y");
  unknown_id.add_inputs()->set_id("no-such-row");
  auto missing = embed(unknown_id);
  CHECK(absl::IsNotFound(missing.status()));
  CHECK(absl::StartsWith(missing.status().message(), "inputs[2]: "));
  CHECK(absl::IsInvalidArgument(embed(v1::EmbedRequest()).status()));

  // A model that is not the collection's is refused before anything serves.
  router::RouterOptions wrong = c.Options(-absl::InfiniteDuration());
  wrong.embedder = embedder;
  wrong.model_sha256 = "0123456789abcdef";
  router::Router refuses(wrong);
  const absl::Status s = refuses.Discover(absl::Now() + absl::Seconds(20));
  CHECK(absl::IsFailedPrecondition(s));
  CHECK(std::string(s.message()).find("a vector-only collection") != std::string::npos);
}

}  // namespace
}  // namespace imagesearch
