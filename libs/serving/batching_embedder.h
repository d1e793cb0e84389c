// The Embedder the query service uses: one model runtime (model_runtime.h)
// behind one dynamic batcher per input kind.
//
//   Embed(items) -> admission (max_queued_items) -> batcher (max_batch,
//   max_delay) -> ModelRuntime::Embed: decode on the model's threads, then
//   one forward pass
//
// Images are decoded as the first step of their batch, on the threads that
// run the model (a bounded set, never the caller's gRPC or HTTP thread). A
// separate decode pool was measured to cost more than the decoding itself:
// on 2 cores, a 15% background load slows LibTorch's 2-thread forward pass
// by 12-28%, because every parallel region waits for its slowest thread
// (tools/bench/omp_interference.py, tools/bench/results/LOG.md). The call's context is checked on
// entry and when its batch forms, so an expired or cancelled call is neither decoded nor encoded.
//
// Thread-safe. Destruction waits for queued work.
#ifndef IMAGESEARCH_LIBS_SERVING_BATCHING_EMBEDDER_H_
#define IMAGESEARCH_LIBS_SERVING_BATCHING_EMBEDDER_H_

#include <atomic>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "libs/serving/dynamic_batcher.h"
#include "libs/serving/embedder.h"
#include "libs/serving/metrics.h"
#include "libs/serving/model_runtime.h"

namespace imagesearch::serving {

struct BatchingEmbedderOptions {
  int max_batch = 4;
  absl::Duration max_delay = absl::Milliseconds(2);
  int model_instances = 1;  // Batches run at once per input kind.
  // Image/text items admitted and not yet embedded, across all calls; beyond
  // it Embed answers RESOURCE_EXHAUSTED at once.
  size_t max_queued_items = 256;
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
  using Result = absl::StatusOr<std::vector<float>>;
  using Batcher = DynamicBatcher<std::string, Result>;
  void Finish(const std::shared_ptr<Call>& call, size_t i, Result v);

  const std::unique_ptr<const ModelRuntime> runtime_;
  const BatchingEmbedderOptions options_;
  std::atomic<size_t> queued_{0};
  // Declared last: destroyed first, so their threads finish before the
  // runtime goes away.
  std::unique_ptr<Batcher> images_;
  std::unique_ptr<Batcher> texts_;
};

}  // namespace imagesearch::serving

#endif  // IMAGESEARCH_LIBS_SERVING_BATCHING_EMBEDDER_H_
