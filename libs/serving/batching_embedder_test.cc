#include "libs/serving/batching_embedder.h"

#include <catch2/catch.hpp>
#include <future>

#include "libs/serving/test_fakes.h"

namespace imagesearch::serving {
namespace {

using testing::Await;
using testing::FakeRuntime;
using testing::GrpcContext;

EmbedItem Image(std::string bytes) { return EmbedItem{EmbedItem::Kind::kImage, std::move(bytes)}; }

absl::StatusOr<Embedder::Vectors> EmbedSync(Embedder& e, std::vector<EmbedItem> items,
                                            const CallContext& context = GrpcContext()) {
  std::promise<absl::StatusOr<Embedder::Vectors>> p;
  e.Embed(std::move(items), context, [&](absl::StatusOr<Embedder::Vectors> v) { p.set_value(v); });
  return Await(p.get_future());
}

struct Fixture {
  Fixture(size_t max_queued = 64) {
    auto r = std::make_unique<FakeRuntime>();
    runtime = r.get();
    BatchingEmbedderOptions o;
    o.max_batch = 4;
    o.max_delay = absl::Milliseconds(1);
    o.max_queued_items = max_queued;
    embedder = std::make_unique<BatchingEmbedder>(std::move(r), o);
  }
  FakeRuntime* runtime;
  std::unique_ptr<BatchingEmbedder> embedder;
};

TEST_CASE("Each item of a call gets its own vector, in order") {
  Fixture f;
  auto v = EmbedSync(*f.embedder, {Image("a"), Image("bb"), Image("ccc")});
  REQUIRE(v.ok());
  REQUIRE(v->size() == 3);
  CHECK((*v)[0] == std::vector<float>{'a', 1});
  CHECK((*v)[1] == std::vector<float>{'b', 2});
  CHECK((*v)[2] == std::vector<float>{'c', 3});
}

TEST_CASE("A bad item fails the call with its index: a lone item's error is unprefixed") {
  Fixture f;
  auto v = EmbedSync(*f.embedder, {Image("a"), Image("bad")});
  CHECK(absl::IsInvalidArgument(v.status()));
  CHECK(v.status().message() == "inputs[1]: image: not an image");
  CHECK(EmbedSync(*f.embedder, {Image("bad")}).status().message() == "image: not an image");
  CHECK(absl::IsFailedPrecondition(
      EmbedSync(*f.embedder, {EmbedItem{EmbedItem::Kind::kText, "hi"}}).status()));
}

TEST_CASE("An expired call is neither decoded nor encoded") {
  Fixture f;
  auto v = EmbedSync(*f.embedder, {Image("a")}, GrpcContext(absl::Now() - absl::Seconds(1)));
  CHECK(absl::IsDeadlineExceeded(v.status()));
  CHECK(v.status().message() == "deadline passed before decoding");
  CHECK(f.runtime->calls.value() == 0);
}

TEST_CASE("A call that expires while queued never reaches the model") {
  Fixture f;
  f.runtime->gate.Close();
  std::promise<absl::Status> first, second, third;
  f.embedder->Embed({Image("a")}, GrpcContext(),
                    [&](absl::StatusOr<Embedder::Vectors> v) { first.set_value(v.status()); });
  REQUIRE(f.runtime->calls.WaitFor(1));  // The model holds "a"; later items queue.
  // "b" must pass Embed's own check on entry: 200 ms is this thread's margin
  // to get it there. Its deadline then passes while it is queued.
  const CallContext soon = GrpcContext(absl::Now() + absl::Milliseconds(200));
  f.embedder->Embed({Image("b")}, soon,
                    [&](absl::StatusOr<Embedder::Vectors> v) { second.set_value(v.status()); });
  std::atomic<bool> cancelled{false};
  CallContext cancellable = GrpcContext();
  cancellable.cancelled = [&] { return cancelled.load(); };
  f.embedder->Embed({Image("c")}, cancellable,
                    [&](absl::StatusOr<Embedder::Vectors> v) { third.set_value(v.status()); });
  cancelled = true;
  testing::SleepPast(soon.deadline);
  f.runtime->gate.Open();
  CHECK(Await(first.get_future()).ok());
  absl::Status s = Await(second.get_future());
  CHECK(absl::IsDeadlineExceeded(s));
  CHECK(s.message() == "deadline passed before the model ran");
  absl::Status c = Await(third.get_future());
  CHECK(absl::IsCancelled(c));
  CHECK(c.message() == "client cancelled the call before the model ran");
  CHECK(f.runtime->embedded.value() == 1);  // "a" only.
  CHECK(f.runtime->calls.value() == 1);
}

TEST_CASE("Admission is all-or-nothing and refuses at once past max_queued_items") {
  Fixture f(/*max_queued=*/3);
  f.runtime->gate.Close();  // Keep the first call's items in the model.
  std::promise<absl::Status> first;
  f.embedder->Embed({Image("a"), Image("b")}, GrpcContext(),
                    [&](absl::StatusOr<Embedder::Vectors> v) { first.set_value(v.status()); });
  auto refused = EmbedSync(*f.embedder, {Image("c"), Image("d")});  // 2 + 2 > 3.
  CHECK(absl::IsResourceExhausted(refused.status()));
  CHECK(refused.status().message() ==
        "server overloaded: 2 image/text items are already waiting to be embedded (the limit "
        "is 3)");
  std::promise<absl::Status> at_limit;  // 2 + 1 = 3: admitted.
  f.embedder->Embed({Image("e")}, GrpcContext(),
                    [&](absl::StatusOr<Embedder::Vectors> v) { at_limit.set_value(v.status()); });
  f.runtime->gate.Open();
  CHECK(Await(first.get_future()).ok());
  CHECK(Await(at_limit.get_future()).ok());
  CHECK(EmbedSync(*f.embedder, {Image("c"), Image("d"), Image("e")}).ok());  // Room again.
}

}  // namespace
}  // namespace imagesearch::serving
