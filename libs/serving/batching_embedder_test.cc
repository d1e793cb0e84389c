#include "libs/serving/batching_embedder.h"

#include <catch2/catch.hpp>
#include <future>
#include <thread>

namespace imagesearch::serving {
namespace {

// A model runtime without a model: an "image" is its bytes, the embedding is
// {first byte, length}; "bad" does not decode. Embed blocks while `hold` is
// set, and counts the inputs it embedded.
class FakeRuntime final : public ModelRuntime {
 public:
  const std::string& name() const override { return name_; }
  int dim() const override { return 2; }
  bool has_text() const override { return false; }
  Embeddings Embed(EmbedItem::Kind, const std::vector<absl::string_view>& inputs) const override {
    calls++;
    while (hold) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    Embeddings out;
    for (absl::string_view in : inputs) {
      if (in == "bad") {
        out.push_back(absl::InvalidArgumentError("image: not an image"));
      } else {
        embedded++;
        out.push_back(std::vector<float>{static_cast<float>(in[0]), static_cast<float>(in.size())});
      }
    }
    return out;
  }
  mutable std::atomic<int> calls{0};
  mutable std::atomic<int> embedded{0};
  std::atomic<bool> hold{false};

 private:
  const std::string name_ = "fake";
};

EmbedItem Image(std::string bytes) { return EmbedItem{EmbedItem::Kind::kImage, std::move(bytes)}; }

absl::StatusOr<Embedder::Vectors> EmbedSync(Embedder& e, std::vector<EmbedItem> items,
                                            const CallContext& context = {}) {
  std::promise<absl::StatusOr<Embedder::Vectors>> p;
  e.Embed(std::move(items), context, [&](absl::StatusOr<Embedder::Vectors> v) { p.set_value(v); });
  return p.get_future().get();
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
  CallContext expired;
  expired.deadline = absl::Now() - absl::Seconds(1);
  auto v = EmbedSync(*f.embedder, {Image("a")}, expired);
  CHECK(absl::IsDeadlineExceeded(v.status()));
  CHECK(v.status().message() == "deadline passed before decoding");
  CHECK(f.runtime->calls == 0);
}

TEST_CASE("A call that expires while queued never reaches the model") {
  Fixture f;
  f.runtime->hold = true;
  std::promise<absl::Status> first, second;
  f.embedder->Embed({Image("a")}, {},
                    [&](absl::StatusOr<Embedder::Vectors> v) { first.set_value(v.status()); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // The model holds "a".
  CallContext soon;
  soon.deadline = absl::Now() + absl::Milliseconds(30);
  f.embedder->Embed({Image("b")}, soon,
                    [&](absl::StatusOr<Embedder::Vectors> v) { second.set_value(v.status()); });
  std::this_thread::sleep_for(std::chrono::milliseconds(80));
  f.runtime->hold = false;
  CHECK(first.get_future().get().ok());
  absl::Status s = second.get_future().get();
  CHECK(absl::IsDeadlineExceeded(s));
  CHECK(s.message() == "deadline passed before the model ran");
  CHECK(f.runtime->embedded == 1);  // "a" only.
}

TEST_CASE("Admission is all-or-nothing and refuses at once past max_queued_items") {
  Fixture f(/*max_queued=*/3);
  f.runtime->hold = true;  // Keep the first call's items in the model.
  std::promise<absl::Status> first;
  f.embedder->Embed({Image("a"), Image("b")}, {},
                    [&](absl::StatusOr<Embedder::Vectors> v) { first.set_value(v.status()); });
  auto refused = EmbedSync(*f.embedder, {Image("c"), Image("d")});  // 2 + 2 > 3.
  CHECK(absl::IsResourceExhausted(refused.status()));
  CHECK(refused.status().message() ==
        "server overloaded: 2 image/text items are already waiting to be embedded (the limit "
        "is 3)");
  f.runtime->hold = false;
  CHECK(first.get_future().get().ok());
  CHECK(EmbedSync(*f.embedder, {Image("c"), Image("d"), Image("e")}).ok());  // Room again.
}

}  // namespace
}  // namespace imagesearch::serving
