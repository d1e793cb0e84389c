#include "libs/serving/query_core.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <future>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "libs/common/file_util.h"
#include "libs/serving/batching_embedder.h"
#include "libs/serving/test_fakes.h"
#include "libs/snapshot/test_snapshots.h"

namespace imagesearch::serving {
namespace {

using testing::Await;
using testing::GrpcContext;

// The model a fixture's snapshot carries, and what embeds with it.
enum class Model {
  kNone,          // A vector-only snapshot.
  kImageAndText,  // A FakeRuntime with a text encoder, behind a BatchingEmbedder.
  kImageOnly,     // The same without a text encoder.
  kNoRuntime,     // A model, but no model runtime in this process.
};

// Inputs the fixtures' FakeRuntime embeds to a row's own vector.
constexpr char kImageOfItem7[] = "photo of item7";
constexpr char kTextOfItem42[] = "text about item42";

// 300 rows "item<row>" of dim 8 (L2) as v1; with a model, "fake".
struct Fixture {
  explicit Fixture(QueryCoreOptions o = {}, Model model = Model::kNone) : metrics("test") {
    root = snapshot::TempSnapshotRoot("core");
    snapshot::SyntheticCorpus c = snapshot::MakeSyntheticCorpus(300, 8, index::Metric::kL2, "item");
    if (model != Model::kNone) {
      REQUIRE(WriteFileDurably(root + "-model.pt", "not a real model").ok());
      c.input.model_path = root + "-model.pt";
      c.input.model.name = "fake";
    }
    REQUIRE(snapshot::PublishSnapshot(root, c.WithGraph()).ok());
    SnapshotManagerOptions mo;
    mo.root = root;
    if (model == Model::kImageAndText || model == Model::kImageOnly) {
      const bool text = model == Model::kImageAndText;
      mo.embedder_factory =
          [this, text, rows = c.vectors](
              const snapshot::Snapshot&) -> absl::StatusOr<std::shared_ptr<Embedder>> {
        auto r = std::make_unique<testing::FakeRuntime>(8, text);
        r->vectors[kImageOfItem7] = Row(rows, 7);
        r->vectors[kTextOfItem42] = Row(rows, 42);
        runtime = r.get();
        return std::make_shared<BatchingEmbedder>(std::move(r), BatchingEmbedderOptions{});
      };
    }
    manager = std::make_unique<SnapshotManager>(mo);
    REQUIRE(manager->PollOnce().ok());
    core = std::make_unique<QueryCore>(manager.get(), &metrics, o);
  }
  static std::vector<float> Row(const std::vector<float>& rows, size_t row) {
    return std::vector<float>(rows.begin() + row * 8, rows.begin() + (row + 1) * 8);
  }
  absl::StatusOr<SearchResult> Search(const Query& q, const CallContext& c = GrpcContext()) {
    absl::StatusOr<SearchResult> out = absl::UnknownError("not called");
    core->Search(q, c, [&](absl::StatusOr<SearchResult> r) { out = std::move(r); });
    return out;  // Vector, id and refused queries answer on this thread.
  }
  // Starts a query whose answer may come on a model thread (image, text).
  std::future<absl::StatusOr<SearchResult>> Start(const Query& q,
                                                  const CallContext& c = GrpcContext()) {
    return Answer<SearchResult>([&](auto done) { core->Search(q, c, std::move(done)); });
  }
  std::future<absl::StatusOr<EmbedResult>> Embed(std::vector<Query> items,
                                                 const CallContext& c = GrpcContext()) {
    return Answer<EmbedResult>([&](auto done) { core->Embed(items, c, std::move(done)); });
  }
  template <typename T, typename Call>
  static std::future<absl::StatusOr<T>> Answer(Call call) {
    auto p = std::make_shared<std::promise<absl::StatusOr<T>>>();
    auto answer = p->get_future();
    call(QueryCore::Done<T>([p](absl::StatusOr<T> r) { p->set_value(std::move(r)); }));
    return answer;
  }
  std::string root;
  Metrics metrics;
  testing::FakeRuntime* runtime = nullptr;  // Owned by the live snapshot's embedder.
  std::unique_ptr<SnapshotManager> manager;
  std::unique_ptr<QueryCore> core;
};

Query PayloadQuery(Query::Kind kind, absl::string_view data, uint32_t top_k = 5) {
  Query q;
  q.kind = kind;
  q.data = data;
  q.params.top_k = top_k;
  return q;
}
Query Image(absl::string_view data) { return PayloadQuery(Query::Kind::kImage, data); }
Query Text(absl::string_view data) { return PayloadQuery(Query::Kind::kText, data); }

bool Has(const std::string& metrics, const std::string& line) {
  return metrics.find(line) != std::string::npos;
}

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
  const float* v7 = snap.Vector(7);
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
  auto none = f.core->Thumbnail("item3", GrpcContext());
  CHECK(absl::IsNotFound(none.status()));
  CHECK(none.status().message() ==
        "snapshot v1 has no thumbnails (indexed with --thumbnails=false, or built from raw "
        "vectors)");
  snapshot::SyntheticCorpus c = snapshot::MakeSyntheticCorpus(40, 8, index::Metric::kL2, "item");
  for (int i = 0; i < 40; ++i)
    c.input.thumbnails.push_back(i == 5 ? "" : "jpeg" + std::to_string(i));
  REQUIRE(snapshot::PublishSnapshot(f.root, c.WithGraph()).ok());
  REQUIRE(f.manager->PollOnce().ok());
  auto t = f.core->Thumbnail("item3", GrpcContext());
  REQUIRE(t.ok());
  CHECK(t->bytes == "jpeg3");
  CHECK(t->media_type == "image/jpeg");
  CHECK(t->snapshot_version == 2);
  CHECK(t->state != nullptr);
  CHECK(f.core->Thumbnail("item5", GrpcContext()).status().message() ==
        "id 'item5' has no thumbnail in snapshot v2");
  CHECK(f.core->Thumbnail("../../etc/passwd", GrpcContext()).status().message() ==
        "id '../../etc/passwd' is not in snapshot v2");
  // Error text quotes a bounded prefix of the id.
  const std::string long_id(4000, 'z');
  const absl::Status s = f.core->Thumbnail(long_id, GrpcContext()).status();
  CHECK(s.message() == "id '" + std::string(64, 'z') + "...' (4000 bytes) is not in snapshot v2");
  CHECK(f.core->Thumbnail(std::string(10000, 'z'), GrpcContext()).status().message() ==
        "query id '" + std::string(64, 'z') + "...' (10000 bytes) is over the limit of 4096 bytes");
  CHECK(absl::IsInvalidArgument(f.core->Thumbnail("", GrpcContext()).status()));
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
}

TEST_CASE("Exactly max_inflight_requests calls are admitted at once, one more is refused") {
  QueryCoreOptions o;
  o.max_inflight_requests = 2;
  Fixture f(o, Model::kImageAndText);
  f.runtime->gate.Close();  // Image queries stay in flight until it opens.
  auto first = f.Start(Image(kImageOfItem7));
  auto second = f.Start(Image(kImageOfItem7));
  std::vector<float> v(8, 1.0f);
  auto third = f.Search(VectorQuery(v), GrpcContext());
  CHECK(absl::IsResourceExhausted(third.status()));
  CHECK(third.status().message() == "server overloaded: 2 requests already in flight");
  auto embed = Await(f.Embed({Image(kImageOfItem7)}));
  CHECK(embed.status().message() == "server overloaded: 2 requests already in flight");
  f.runtime->gate.Open();
  CHECK(Await(std::move(first)).ok());
  CHECK(Await(std::move(second)).ok());
  CHECK(f.Search(VectorQuery(v), GrpcContext()).ok());  // Nothing in flight again.
}

TEST_CASE("WaitIdle returns only once the call in flight is answered, which draining lets finish") {
  Fixture f({}, Model::kImageAndText);
  f.runtime->gate.Close();
  auto held = f.Start(Image(kImageOfItem7));
  REQUIRE(f.runtime->calls.WaitFor(1));  // The model holds it.
  f.core->StartDraining();
  std::vector<float> v(8, 1.0f);
  CHECK(f.Search(VectorQuery(v), GrpcContext()).status().message() == "server is shutting down");
  CHECK_FALSE(f.core->WaitIdle(absl::ZeroDuration()));
  CHECK_FALSE(f.core->WaitIdle(absl::Milliseconds(20)));
  std::atomic<bool> released{false};
  bool idle = false, released_when_idle = false;
  std::thread waiter([&] {
    idle = f.core->WaitIdle(absl::Seconds(60));
    released_when_idle = released;
  });
  released = true;
  f.runtime->gate.Open();
  waiter.join();
  CHECK(idle);
  CHECK(released_when_idle);
  auto answer = Await(std::move(held));
  REQUIRE(answer.ok());  // Started before draining: it finishes.
  CHECK(answer->hits[0].id == "item7");
}

TEST_CASE("Image and text queries are embedded by the snapshot's model, then searched") {
  Fixture f({}, Model::kImageAndText);
  auto image = Await(f.Start(Image(kImageOfItem7)));
  REQUIRE(image.ok());
  CHECK(image->snapshot_version == 1);
  REQUIRE(image->hits.size() == 5);
  CHECK(image->hits[0].id == "item7");
  CHECK(image->hits[0].distance == 0.0f);
  auto text = Await(f.Start(Text(kTextOfItem42)));
  REQUIRE(text.ok());
  REQUIRE(!text->hits.empty());
  CHECK(text->hits[0].id == "item42");
  // The filter applies to the embedded query as to a vector query.
  Condition has_id;
  has_id.kind = Condition::Kind::kHasId;
  has_id.ids = {"item3", "item5"};
  Filter only;
  only.must.push_back(has_id);
  Query filtered = Image(kImageOfItem7);
  filtered.filter = &only;
  auto some = Await(f.Start(filtered));
  REQUIRE(some.ok());
  REQUIRE(some->hits.size() == 2);
  CHECK(std::set<std::string>{some->hits[0].id, some->hits[1].id} ==
        std::set<std::string>{"item3", "item5"});
  CHECK(f.runtime->embedded.value() == 3);
  CHECK(Has(f.metrics.Serialize(),
            "imagesearch_requests_total{code=\"OK\",front=\"grpc\",method=\"Search\"} 3"));
}

TEST_CASE("Image and text queries fail with the model's, the snapshot's or the call's error") {
  Fixture f({}, Model::kImageAndText);
  auto bad = Await(f.Start(Image("bad")));
  CHECK(absl::IsInvalidArgument(bad.status()));
  CHECK(bad.status().message() == "image: not an image");
  // Expired before decoding: the model never sees it.
  const int calls = f.runtime->calls.value();
  auto late = Await(f.Start(Image(kImageOfItem7), GrpcContext(absl::Now() - absl::Seconds(1))));
  CHECK(late.status().message() == "deadline passed before decoding");
  CHECK(f.runtime->calls.value() == calls);
  // Expired while the model ran: embedded, but not searched. 200 ms is this
  // thread's margin to get it past the checks before the model.
  f.runtime->gate.Close();
  const CallContext soon = GrpcContext(absl::Now() + absl::Milliseconds(200));
  auto slow = f.Start(Image(kImageOfItem7), soon);
  REQUIRE(f.runtime->calls.WaitFor(calls + 1));
  testing::SleepPast(soon.deadline);
  f.runtime->gate.Open();
  auto s = Await(std::move(slow));
  CHECK(absl::IsDeadlineExceeded(s.status()));
  CHECK(s.status().message() == "deadline passed before the search started");

  Fixture image_only({}, Model::kImageOnly);
  auto text = image_only.Search(Text(kTextOfItem42), GrpcContext());  // Refused on this thread.
  CHECK(absl::IsFailedPrecondition(text.status()));
  CHECK(text.status().message() ==
        "model fake of snapshot v1 is image-only and has no text encoder; text queries need a "
        "CLIP model");
  CHECK(image_only.runtime->calls.value() == 0);

  Fixture no_runtime({}, Model::kNoRuntime);
  auto none = no_runtime.Search(Image(kImageOfItem7), GrpcContext());
  CHECK(absl::IsUnimplemented(none.status()));
  CHECK(none.status().message() ==
        "cannot embed with model fake: this server was built without a model runtime");
}

TEST_CASE("Embed gives one vector per input, in order, with the snapshot's version and model") {
  Fixture f({}, Model::kImageAndText);
  auto r = Await(f.Embed({Image(kImageOfItem7), Text(kTextOfItem42), Image("xy")}));
  REQUIRE(r.ok());
  CHECK(r->snapshot_version == 1);
  CHECK(r->model_name == "fake");
  REQUIRE(r->vectors.size() == 3);
  CHECK(r->vectors[0] == f.runtime->vectors.at(kImageOfItem7));
  CHECK(r->vectors[1] == f.runtime->vectors.at(kTextOfItem42));
  CHECK(r->vectors[2] == std::vector<float>{'x', 2, 0, 0, 0, 0, 0, 0});
  CHECK(Has(f.metrics.Serialize(),
            "imagesearch_requests_total{code=\"OK\",front=\"grpc\",method=\"Embed\"} 1"));
}

TEST_CASE("Embed of an id gives its stored vector, with or without a model, in input order") {
  Query id7;
  id7.kind = Query::Kind::kId;
  id7.id = "item7";
  Fixture vector_only;  // No model: ids need none.
  auto r = Await(vector_only.Embed({id7}));
  REQUIRE(r.ok());
  const float* stored = vector_only.manager->Current()->snapshot->Vector(7);
  CHECK(r->vectors.at(0) == std::vector<float>(stored, stored + 8));

  Fixture f({}, Model::kImageAndText);
  auto mixed = Await(f.Embed({Text(kTextOfItem42), id7, Image(kImageOfItem7)}));
  REQUIRE(mixed.ok());
  REQUIRE(mixed->vectors.size() == 3);
  CHECK(mixed->vectors[0] == f.runtime->vectors.at(kTextOfItem42));
  const float* v7 = f.manager->Current()->snapshot->Vector(7);
  CHECK(mixed->vectors[1] == std::vector<float>(v7, v7 + 8));
  CHECK(mixed->vectors[2] == f.runtime->vectors.at(kImageOfItem7));

  Query unknown = id7;
  unknown.id = "nope";
  auto missing = Await(f.Embed({Image(kImageOfItem7), unknown}));
  CHECK(absl::IsNotFound(missing.status()));
  CHECK(std::string(missing.status().message()).rfind("inputs[1]: ", 0) == 0);
}

TEST_CASE("Embed checks every input before any model work, and names the failing one") {
  QueryCoreOptions o;
  o.max_image_bytes = 200;
  Fixture f(o, Model::kImageAndText);
  const std::string big(201, 'x');
  auto message = [&](std::vector<Query> items, const CallContext& c = GrpcContext()) {
    return std::string(Await(f.Embed(std::move(items), c)).status().message());
  };
  CHECK(message({}) == "inputs is empty");
  CHECK(message({Image("a"), Query{}}) == "inputs[1] is empty");
  CHECK(message({Image("a"), Image("")}) == "inputs[1] is empty");
  CHECK(message({Image("a"), Image(big)}) == "inputs[1] is 201 bytes; the limit is 200");
  CHECK(message({Image("a")}, GrpcContext(absl::Now() - absl::Seconds(1))) ==
        "deadline passed before decoding");
  CHECK(f.runtime->calls.value() == 0);
  // The model's own error, prefixed with the input's index.
  CHECK(message({Image("a"), Image("bad")}) == "inputs[1]: image: not an image");

  Fixture vector_only;
  auto r = Await(vector_only.Embed({Image("a")}));
  CHECK(absl::IsFailedPrecondition(r.status()));
  CHECK(r.status().message() ==
        "snapshot v1 holds raw vectors and has no model; image and text queries need a "
        "snapshot built by the indexer (vector and id queries work)");
  Fixture image_only({}, Model::kImageOnly);
  CHECK(absl::IsFailedPrecondition(Await(image_only.Embed({Image("a"), Text("a cat")})).status()));
  CHECK(image_only.runtime->calls.value() == 0);
}

TEST_CASE("Info and Thumbnail are admitted like queries: refused while draining or overloaded") {
  CallContext c;
  c.front = "http";
  Fixture f;
  REQUIRE(f.core->Info(c).ok());
  f.core->StartDraining();
  const auto info = f.core->Info(c);
  CHECK(absl::IsUnavailable(info.status()));
  CHECK(info.status().message() == "server is shutting down");
  CHECK(absl::IsUnavailable(f.core->Thumbnail("item3", c).status()));
  QueryCoreOptions o;
  o.max_inflight_requests = 0;
  Fixture busy(o);
  CHECK(absl::IsResourceExhausted(busy.core->Info(c).status()));
  const std::string m = f.metrics.Serialize();
  CHECK(
      m.find(
          "imagesearch_requests_total{code=\"UNAVAILABLE\",front=\"http\",method=\"GetInfo\"} 1") !=
      std::string::npos);
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
      CHECK(r.status().message() == absl::StrCat("query id '", std::string(64, 'z'), "...' (", size,
                                                 " bytes) is over the limit of 4096 bytes"));
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
    CHECK(f.Search(q).status().message() == absl::StrCat(text ? "query text" : "query image",
                                                         " is ", limit + 1, " bytes; the limit is ",
                                                         limit));
  }
  // Queries per SearchBatch.
  std::vector<Query> batch(3, VectorQuery(v));
  absl::StatusOr<std::vector<SearchResult>> answer = absl::UnknownError("not called");
  auto run = [&] {
    f.core->SearchBatch(batch, GrpcContext(), [&](absl::StatusOr<std::vector<SearchResult>> r) {
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
  // Inputs per Embed.
  o.max_embed_inputs = 3;
  Fixture m(o, Model::kImageAndText);
  std::vector<Query> inputs(3, Image("x"));
  auto at = Await(m.Embed(inputs));
  REQUIRE(at.ok());
  CHECK(at->vectors.size() == 3);
  inputs.push_back(Image("x"));
  auto past = Await(m.Embed(inputs));
  CHECK(absl::IsInvalidArgument(past.status()));
  CHECK(past.status().message() == "inputs has 4 items; the maximum is 3 per request");
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
  f.core->SearchBatch(qs, GrpcContext(), [&](absl::StatusOr<std::vector<SearchResult>> r) {
    REQUIRE(r.ok());
    answers = r->size();
  });
  CHECK(answers == 1);
}

}  // namespace
}  // namespace imagesearch::serving
