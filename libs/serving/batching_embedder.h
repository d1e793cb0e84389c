// The Embedder the query service uses: one model runtime (model_runtime.h)
// behind a bounded decode pool and one dynamic batcher per input kind.
//
//   Embed(items) -> admission (max_queued_items) -> decode pool: Prepare
//               -> batcher (max_batch, max_delay) -> ModelRuntime::Encode
//
// Decoding never runs on the caller's (gRPC or HTTP) thread. The call's
// context is checked before decoding and again when its batch forms, so an
// expired or cancelled call costs no model time.
//
// Thread-safe. Destruction waits for queued work.
#ifndef IMAGESEARCH_LIBS_SERVING_BATCHING_EMBEDDER_H_
#define IMAGESEARCH_LIBS_SERVING_BATCHING_EMBEDDER_H_

#include <atomic>
#include <cstddef>
#include <memory>
#include <vector>

#include "absl/time/time.h"
#include "libs/serving/dynamic_batcher.h"
#include "libs/serving/embedder.h"
#include "libs/serving/metrics.h"
#include "libs/serving/model_runtime.h"
#include "libs/serving/work_pool.h"

namespace imagesearch::serving {

struct BatchingEmbedderOptions {
  int max_batch = 4;
  absl::Duration max_delay = absl::Milliseconds(2);
  // Image/text items admitted and not yet encoded, across all calls; beyond
  // it Embed answers RESOURCE_EXHAUSTED at once.
  size_t max_queued_items = 256;
  int decode_threads = 0;  // 0: one per core.
  Metrics* metrics = nullptr;  // Optional; outlives the embedder.
};

class BatchingEmbedder final : public Embedder {
 public:
  BatchingEmbedder(std::unique_ptr<const ModelRuntime> runtime,
                   const BatchingEmbedderOptions& options);
  ~BatchingEmbedder() override;

  void Embed(std::vector<EmbedItem> items, const CallContext& context, Callback done) override;
  int dim() const override { return runtime_->dim(); }
  bool has_text() const override { return runtime_->has_text(); }

 private:
  struct Call;
  using Batcher = DynamicBatcher<PreparedInput, std::vector<float>>;
  void Finish(const std::shared_ptr<Call>& call, size_t i, absl::StatusOr<std::vector<float>> v);

  const std::unique_ptr<const ModelRuntime> runtime_;
  const BatchingEmbedderOptions options_;
  std::atomic<size_t> queued_{0};
  // Declared last: destroyed first, so their threads finish before the
  // runtime goes away.
  std::unique_ptr<Batcher> images_;
  std::unique_ptr<Batcher> texts_;
  std::unique_ptr<WorkPool> decode_pool_;
};

}  // namespace imagesearch::serving

#endif  // IMAGESEARCH_LIBS_SERVING_BATCHING_EMBEDDER_H_
