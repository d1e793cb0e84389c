// The serving core's view of a model: turns image bytes or texts into query
// vectors, asynchronously (implementations batch concurrent requests).
// Implementations are thread-safe. The LibTorch-backed one lives in
// libs/serving/torch_embedder.h so that this header pulls in no LibTorch.
#ifndef IMAGESEARCH_LIBS_SERVING_EMBEDDER_H_
#define IMAGESEARCH_LIBS_SERVING_EMBEDDER_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace imagesearch::serving {


struct EmbedItem {
  enum class Kind { kImage, kText };
  Kind kind = Kind::kImage;
  std::string data;  // Encoded image bytes, or UTF-8 text.
};

class Embedder {
 public:
  using Callback = std::function<void(absl::StatusOr<std::vector<float>>)>;
  virtual ~Embedder() = default;
  // Embeds one item and calls `done` exactly once, possibly on another thread,
  // with a dim()-float vector (unit norm for cosine models) or an error:
  // INVALID_ARGUMENT for an undecodable image, FAILED_PRECONDITION for text on
  // an image-only model, RESOURCE_EXHAUSTED when the queue is full.
  virtual void Embed(EmbedItem item, Callback done) = 0;
  virtual int dim() const = 0;
  virtual bool has_text() const = 0;
};

}  // namespace imagesearch::serving

#endif  // IMAGESEARCH_LIBS_SERVING_EMBEDDER_H_
