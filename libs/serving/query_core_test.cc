#include "libs/serving/query_core.h"

#include <catch2/catch.hpp>

#include "absl/strings/str_cat.h"
#include "libs/snapshot/test_snapshots.h"

namespace imagesearch::serving {
namespace {

struct Fixture {
  explicit Fixture(QueryCoreOptions o = {}) : metrics("test") {
    root = snapshot::TempSnapshotRoot("core");
    REQUIRE(snapshot::PublishSynthetic(root, 300, 8, index::Metric::kL2, "item").ok());
    SnapshotManagerOptions mo;
    mo.root = root;
    manager = std::make_unique<SnapshotManager>(mo);
    REQUIRE(manager->PollOnce().ok());
    core = std::make_unique<QueryCore>(manager.get(), &metrics, o);
  }
  absl::StatusOr<SearchResult> Search(const Query& q, const CallContext& c = {}) {
    absl::StatusOr<SearchResult> out = absl::UnknownError("not called");
    core->Search(q, c, [&](absl::StatusOr<SearchResult> r) { out = std::move(r); });
    return out;  // Vector, id and refused queries answer on this thread.
  }
  std::string root;
  Metrics metrics;
  std::unique_ptr<SnapshotManager> manager;
  std::unique_ptr<QueryCore> core;
};

Query VectorQuery(const std::vector<float>& v, uint32_t top_k = 5) {
  Query q;
  q.kind = Query::Kind::kVector;
  q.vector = v;
  q.params.top_k = top_k;
  return q;
}

TEST_CASE("Vector and id queries give the snapshot's neighbours and the version") {
  Fixture f;
  const auto& snap = *f.manager->Current()->snapshot;
  const float* v7 = snap.searcher().Vector(7);
  std::vector<float> v(v7, v7 + 8);
  auto r = f.Search(VectorQuery(v));
  REQUIRE(r.ok());
  CHECK(r->snapshot_version == 1);
  REQUIRE(r->hits.size() == 5);
  CHECK(r->hits[0].id == "item7");
  Query by_id;
  by_id.kind = Query::Kind::kId;
  by_id.id = "item7";
  auto more = f.Search(by_id);
  REQUIRE(more.ok());
  CHECK(more->hits.size() == kDefaultTopK);
  for (const auto& h : more->hits) CHECK(h.id != "item7");  // include_self is off.
  const std::string m = f.metrics.Serialize();
  CHECK(m.find("imagesearch_requests_total{code=\"OK\",front=\"grpc\",method=\"Search\"} 2") !=
        std::string::npos);
}

TEST_CASE("Thumbnails come from the live snapshot by id, and only from there") {
  Fixture f;  // v1: no thumbnails.
  auto none = f.core->Thumbnail("item3", {});
  CHECK(absl::IsNotFound(none.status()));
  CHECK(none.status().message() ==
        "snapshot v1 has no thumbnails (indexed with --thumbnails=false, or built from raw "
        "vectors)");
  snapshot::SyntheticCorpus c =
      snapshot::MakeSyntheticCorpus(40, 8, index::Metric::kL2, "item");
  for (int i = 0; i < 40; ++i) c.input.thumbnails.push_back(i == 5 ? "" : "jpeg" + std::to_string(i));
  REQUIRE(snapshot::PublishSnapshot(f.root, c.WithGraph()).ok());
  REQUIRE(f.manager->PollOnce().ok());
  auto t = f.core->Thumbnail("item3", {});
  REQUIRE(t.ok());
  CHECK(t->bytes == "jpeg3");
  CHECK(t->media_type == "image/jpeg");
  CHECK(t->snapshot_version == 2);
  CHECK(t->state != nullptr);
  CHECK(f.core->Thumbnail("item5", {}).status().message() ==
        "id 'item5' has no thumbnail in snapshot v2");
  CHECK(f.core->Thumbnail("../../etc/passwd", {}).status().message() ==
        "id '../../etc/passwd' is not in snapshot v2");
  // Error text quotes a bounded prefix of the id.
  const std::string long_id(4000, 'z');
  const absl::Status s = f.core->Thumbnail(long_id, {}).status();
  CHECK(s.message() == "id '" + std::string(64, 'z') + "...' (4000 bytes) is not in snapshot v2");
  CHECK(f.core->Thumbnail(std::string(10000, 'z'), {}).status().message() ==
        "query id '" + std::string(64, 'z') + "...' (10000 bytes) is over the limit of 4096 bytes");
  CHECK(absl::IsInvalidArgument(f.core->Thumbnail("", {}).status()));
  const std::string m = f.metrics.Serialize();
  CHECK(m.find("imagesearch_requests_total{code=\"OK\",front=\"grpc\",method=\"Thumbnail\"} 1") !=
        std::string::npos);
}

TEST_CASE("Everything checkable is checked before any work, with precise errors") {
  Fixture f;
  std::vector<float> v(8, 1.0f);
  CHECK(f.Search(Query{}).status().message() ==
        "query is empty: set one of vector, id, image or text");
  CHECK(f.Search(VectorQuery(v, 1001)).status().message() ==
        "top_k 1001 is out of range: the maximum is 1000");
  std::vector<float> short_v(3, 1.0f);
  CHECK(f.Search(VectorQuery(short_v)).status().message() ==
        "query vector has 3 values but snapshot v1 has dimension 8");
  Query unknown;
  unknown.kind = Query::Kind::kId;
  unknown.id = "nope";
  CHECK(absl::IsNotFound(f.Search(unknown).status()));
  Query image;
  image.kind = Query::Kind::kImage;
  CHECK(f.Search(image).status().message() == "query image is empty");
  std::string big(17 << 20, 'x');
  image.data = big;
  CHECK(f.Search(image).status().message() ==
        "query image is 17825792 bytes; the limit is 16777216");
  image.data = "png bytes";
  CHECK(absl::IsFailedPrecondition(f.Search(image).status()));  // Vector-only snapshot.
  image.params.ef = 20000;
  CHECK(f.Search(image).status().message() == "ef 20000 is out of range: the maximum is 10000");
}

TEST_CASE("Expired and cancelled calls are not searched") {
  Fixture f;
  std::vector<float> v(8, 1.0f);
  CallContext late;
  late.deadline = absl::Now() - absl::Milliseconds(1);
  auto r = f.Search(VectorQuery(v), late);
  CHECK(absl::IsDeadlineExceeded(r.status()));
  CHECK(r.status().message() == "deadline passed before the search started");
  CallContext gone;
  gone.cancelled = [] { return true; };
  CHECK(absl::IsCancelled(f.Search(VectorQuery(v), gone).status()));
}

TEST_CASE("Overload and draining refuse at once") {
  QueryCoreOptions o;
  o.max_inflight_requests = 0;
  Fixture busy(o);
  std::vector<float> v(8, 1.0f);
  auto r = busy.Search(VectorQuery(v));
  CHECK(absl::IsResourceExhausted(r.status()));
  CHECK(r.status().message() == "server overloaded: 0 requests already in flight");

  Fixture f;
  CHECK(f.core->Serving());
  f.core->StartDraining();
  CHECK_FALSE(f.core->Serving());
  CHECK(f.Search(VectorQuery(v)).status().message() == "server is shutting down");
  CHECK(f.core->WaitIdle(absl::Seconds(1)));
}

TEST_CASE("Every limit: at the limit is accepted, one past it is refused") {
  QueryCoreOptions o;
  o.max_text_bytes = 100;
  o.max_image_bytes = 200;
  o.max_batch_queries = 3;
  Fixture f(o);
  std::vector<float> v(8, 1.0f);
  // top_k and ef.
  CHECK(f.Search(VectorQuery(v, kMaxTopK))->hits.size() == 300);  // all rows: fewer than top_k
  CHECK(f.Search(VectorQuery(v, kMaxTopK + 1)).status().message() ==
        "top_k 1001 is out of range: the maximum is 1000");
  Query ef = VectorQuery(v);
  ef.params.ef = kMaxEf;
  CHECK(f.Search(ef)->hits.size() == 5);
  ef.params.ef = kMaxEf + 1;
  CHECK(f.Search(ef).status().message() == "ef 10001 is out of range: the maximum is 10000");
  // Ids: up to the longest a snapshot can hold is looked up; longer is refused
  // without echoing it (a 20 KB id would not fit gRPC's 8 KB metadata).
  for (size_t size : {snapshot::kMaxIdBytes, snapshot::kMaxIdBytes + 1, size_t{20000}}) {
    INFO(size);
    const std::string id(size, 'z');
    Query q;
    q.kind = Query::Kind::kId;
    q.id = id;
    auto r = f.Search(q);
    CHECK(r.status().message().size() < 150);
    if (size <= snapshot::kMaxIdBytes) {
      CHECK(absl::IsNotFound(r.status()));
    } else {
      CHECK(absl::IsInvalidArgument(r.status()));
      CHECK(r.status().message() == absl::StrCat("query id '", std::string(64, 'z'), "...' (",
                                                 size, " bytes) is over the limit of 4096 bytes"));
    }
  }
  // Image and text bytes: the limit passes the size check (and then meets the
  // vector-only snapshot); one byte more is refused.
  for (auto kind : {Query::Kind::kImage, Query::Kind::kText}) {
    const bool text = kind == Query::Kind::kText;
    const size_t limit = text ? o.max_text_bytes : o.max_image_bytes;
    const std::string at(limit, 'x'), past(limit + 1, 'x');
    Query q;
    q.kind = kind;
    q.data = at;
    CHECK(absl::IsFailedPrecondition(f.Search(q).status()));
    q.data = past;
    CHECK(f.Search(q).status().message() ==
          absl::StrCat(text ? "query text" : "query image", " is ", limit + 1,
                       " bytes; the limit is ", limit));
  }
  // Queries per SearchBatch.
  std::vector<Query> batch(3, VectorQuery(v));
  absl::StatusOr<std::vector<SearchResult>> answer = absl::UnknownError("not called");
  auto run = [&] {
    f.core->SearchBatch(batch, {}, [&](absl::StatusOr<std::vector<SearchResult>> r) {
      answer = std::move(r);
    });
  };
  run();
  REQUIRE(answer.ok());
  CHECK(answer->size() == 3);
  batch.push_back(VectorQuery(v));
  run();
  CHECK(absl::IsInvalidArgument(answer.status()));
  CHECK(answer.status().message() == "requests has 4 queries; the maximum is 3 per call");
}

TEST_CASE("SearchBatch validates every query first and names the failing one") {
  Fixture f;
  std::vector<float> v(8, 1.0f), bad(2, 1.0f);
  std::vector<Query> qs = {VectorQuery(v), VectorQuery(bad)};
  absl::Status status;
  f.core->SearchBatch(qs, {},
                      [&](absl::StatusOr<std::vector<SearchResult>> r) { status = r.status(); });
  CHECK(status.message() ==
        "requests[1]: query vector has 2 values but snapshot v1 has dimension 8");
  qs.pop_back();
  size_t answers = 0;
  f.core->SearchBatch(qs, {}, [&](absl::StatusOr<std::vector<SearchResult>> r) {
    REQUIRE(r.ok());
    answers = r->size();
  });
  CHECK(answers == 1);
}

}  // namespace
}  // namespace imagesearch::serving
