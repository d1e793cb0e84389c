#include "libs/serving/batching_embedder.h"

#include <mutex>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"

namespace imagesearch::serving {

// One Embed call: its items' results, gathered; the last one answers.
struct BatchingEmbedder::Call {
  CallContext context;
  Callback done;
  std::mutex mu;
  Vectors vectors;
  absl::Status error;  // First error; guarded by mu.
  size_t remaining;    // Guarded by mu.
  std::atomic<bool> failed{false};
};

BatchingEmbedder::BatchingEmbedder(std::unique_ptr<const ModelRuntime> runtime,
                                   const BatchingEmbedderOptions& options)
    : runtime_(std::move(runtime)), options_(options) {
  BatcherOptions b;
  b.max_batch = options.max_batch;
  b.max_delay = options.max_delay;
  b.max_queue = options.max_queued_items;  // Admission already bounds it.
  auto batch_fn = [this](EmbedItem::Kind kind) {
    return [this, kind](std::vector<PreparedInput>& batch)
               -> absl::StatusOr<std::vector<std::vector<float>>> {
      std::vector<const PreparedInput*> ptrs;
      ptrs.reserve(batch.size());
      for (const auto& in : batch) ptrs.push_back(&in);
      auto flat = runtime_->Encode(kind, ptrs);
      if (!flat.ok()) return flat.status();
      const size_t dim = static_cast<size_t>(runtime_->dim());
      std::vector<std::vector<float>> rows(batch.size());
      for (size_t i = 0; i < rows.size(); ++i) {
        rows[i].assign(flat->begin() + i * dim, flat->begin() + (i + 1) * dim);
      }
      return rows;
    };
  };
  auto observer = [this](const char* kind) -> Batcher::Observer {
    if (options_.metrics == nullptr) return nullptr;
    return [metrics = options_.metrics, kind](const BatchStats& s) { metrics->RecordBatch(kind, s); };
  };
  images_ = std::make_unique<Batcher>(b, batch_fn(EmbedItem::Kind::kImage), observer("image"));
  if (runtime_->has_text()) {
    texts_ = std::make_unique<Batcher>(b, batch_fn(EmbedItem::Kind::kText), observer("text"));
  }
  int threads = options.decode_threads;
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  decode_pool_ = std::make_unique<WorkPool>(threads, options.max_queued_items);
}

BatchingEmbedder::~BatchingEmbedder() {
  decode_pool_.reset();  // Feeds the batchers: stop it first.
  texts_.reset();
  images_.reset();
}

void BatchingEmbedder::Finish(const std::shared_ptr<Call>& call, size_t i,
                              absl::StatusOr<std::vector<float>> v) {
  std::unique_lock<std::mutex> lock(call->mu);
  if (v.ok()) {
    call->vectors[i] = std::move(*v);
  } else if (call->error.ok()) {
    call->failed = true;
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
  if (n == 0) {
    done(Vectors{});
    return;
  }
  // Admit all items of the call or none.
  size_t before = queued_.fetch_add(n);
  if (before + n > options_.max_queued_items) {
    queued_ -= n;
    done(absl::ResourceExhaustedError(
        absl::StrCat("server overloaded: ", before, " image/text items are already waiting to be "
                     "embedded (the limit is ", options_.max_queued_items, ")")));
    return;
  }
  auto call = std::make_shared<Call>();
  call->context = context;
  call->done = std::move(done);
  call->vectors.resize(n);
  call->remaining = n;
  for (size_t i = 0; i < n; ++i) {
    EmbedItem item = std::move(items[i]);
    bool queued = decode_pool_->TrySubmit([this, call, i, item = std::move(item)] {
      if (call->failed) {
        Finish(call, i, absl::AbortedError("another input of this call failed"));
        return;
      }
      if (absl::Status s = call->context.Check("decoding"); !s.ok()) {
        Finish(call, i, s);
        return;
      }
      auto prepared = runtime_->Prepare(item.kind, item.data);
      if (!prepared.ok()) {
        Finish(call, i, prepared.status());
        return;
      }
      Batcher* batcher = item.kind == EmbedItem::Kind::kText ? texts_.get() : images_.get();
      if (batcher == nullptr) {
        Finish(call, i, absl::FailedPreconditionError(absl::StrCat(
                            "model ", runtime_->name(), " is image-only and has no text encoder")));
        return;
      }
      batcher->Submit(std::move(*prepared), call->context,
                      [this, call, i](absl::StatusOr<std::vector<float>> v) {
                        Finish(call, i, std::move(v));
                      });
    });
    if (!queued) Finish(call, i, absl::ResourceExhaustedError("decode queue is full"));
  }
}

}  // namespace imagesearch::serving
