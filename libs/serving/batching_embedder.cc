#include "libs/serving/batching_embedder.h"

#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"

namespace imagesearch::serving {

// One Embed call: its items' results, gathered; the last one answers.
struct BatchingEmbedder::Call {
  Callback done;
  std::mutex mu;
  Vectors vectors;
  absl::Status error;  // First error; guarded by mu.
  size_t remaining;    // Guarded by mu.
};

BatchingEmbedder::BatchingEmbedder(std::unique_ptr<const ModelRuntime> runtime,
                                   const BatchingEmbedderOptions& options)
    : runtime_(std::move(runtime)), options_(options) {
  BatcherOptions b;
  b.max_batch = options.max_batch;
  b.max_delay = options.max_delay;
  b.max_queue = options.max_queued_items;  // Admission already bounds it.
  b.workers = options.model_instances;
  b.stage = "the model ran";
  auto batch_fn = [this](EmbedItem::Kind kind) {
    return [this, kind](std::vector<std::string>& batch) -> absl::StatusOr<std::vector<Result>> {
      std::vector<absl::string_view> inputs(batch.begin(), batch.end());
      return runtime_->Embed(kind, inputs);
    };
  };
  auto observer = [this](const char* kind) -> Batcher::Observer {
    if (options_.metrics == nullptr) return nullptr;
    return
        [metrics = options_.metrics, kind](const BatchStats& s) { metrics->RecordBatch(kind, s); };
  };
  images_ = std::make_unique<Batcher>(b, batch_fn(EmbedItem::Kind::kImage), observer("image"));
  if (runtime_->has_text()) {
    texts_ = std::make_unique<Batcher>(b, batch_fn(EmbedItem::Kind::kText), observer("text"));
  }
}

BatchingEmbedder::~BatchingEmbedder() {
  texts_.reset();
  images_.reset();
}

void BatchingEmbedder::Finish(const std::shared_ptr<Call>& call, size_t i, Result v) {
  std::unique_lock<std::mutex> lock(call->mu);
  if (v.ok()) {
    call->vectors[i] = std::move(*v);
  } else if (call->error.ok()) {
    call->error = call->vectors.size() == 1
                      ? v.status()
                      : absl::Status(v.status().code(),
                                     absl::StrCat("inputs[", i, "]: ", v.status().message()));
  }
  if (--call->remaining > 0) return;
  lock.unlock();
  queued_ -= call->vectors.size();
  if (call->error.ok()) {
    call->done(std::move(call->vectors));
  } else {
    call->done(call->error);
  }
}

void BatchingEmbedder::Embed(std::vector<EmbedItem> items, const CallContext& context,
                             Callback done) {
  const size_t n = items.size();
  if (n == 0) return done(Vectors{});
  if (absl::Status s = context.Check("decoding"); !s.ok()) return done(s);
  for (const EmbedItem& item : items) {
    if (item.kind == EmbedItem::Kind::kText && !texts_) {
      return done(absl::FailedPreconditionError(
          absl::StrCat("model ", runtime_->name(), " is image-only and has no text encoder")));
    }
  }
  // Admit all items of the call or none.
  const size_t before = queued_.fetch_add(n);
  if (before + n > options_.max_queued_items) {
    queued_ -= n;
    return done(
        absl::ResourceExhaustedError(absl::StrCat("server overloaded: ", before,
                                                  " image/text items are already waiting to be "
                                                  "embedded (the limit is ",
                                                  options_.max_queued_items, ")")));
  }
  auto call = std::make_shared<Call>();
  call->done = std::move(done);
  call->vectors.resize(n);
  call->remaining = n;
  for (size_t i = 0; i < n; ++i) {
    Batcher* batcher = items[i].kind == EmbedItem::Kind::kText ? texts_.get() : images_.get();
    batcher->Submit(std::move(items[i].data), context, [this, call, i](absl::StatusOr<Result> v) {
      Finish(call, i, v.ok() ? *std::move(v) : Result(v.status()));
    });
  }
}

}  // namespace imagesearch::serving
