// The LibTorch-backed Embedder: decodes images / tokenizes texts on the
// calling thread, then feeds them through one dynamic batcher per modality
// so that concurrent queries share a forward pass.
//
// Thread-safe.
#ifndef IMAGESEARCH_LIBS_SERVING_TORCH_EMBEDDER_H_
#define IMAGESEARCH_LIBS_SERVING_TORCH_EMBEDDER_H_

#include <memory>

#include "libs/model/model_bundle.h"
#include "libs/serving/dynamic_batcher.h"
#include "libs/serving/embedder.h"
#include "libs/serving/model_plugin.h"
#include "libs/serving/snapshot_manager.h"

namespace imagesearch::serving {

class TorchEmbedder final : public Embedder {
 public:
  TorchEmbedder(std::shared_ptr<const model::ModelBundle> bundle,
                const TorchEmbedderOptions& options);
  void Embed(EmbedItem item, Callback done) override;
  int dim() const override { return bundle_->dim(); }
  bool has_text() const override { return bundle_->has_text(); }

  uint64_t image_batches() const { return images_.batches(); }
  uint64_t image_items() const { return images_.items(); }
  int max_image_batch() const { return images_.max_batch_seen(); }

 private:
  using Vec = std::vector<float>;
  std::shared_ptr<const model::ModelBundle> bundle_;
  DynamicBatcher<image::RgbImage, Vec> images_;
  DynamicBatcher<std::vector<int64_t>, Vec> texts_;
};

// Factory for SnapshotManager: loads (and warms) the snapshot's model.pt.
EmbedderFactory MakeTorchEmbedderFactory(const TorchEmbedderOptions& options);

}  // namespace imagesearch::serving

#endif  // IMAGESEARCH_LIBS_SERVING_TORCH_EMBEDDER_H_
