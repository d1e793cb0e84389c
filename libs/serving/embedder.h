// The serving core's view of a model: turns image bytes or texts into query
// vectors, asynchronously. The real one is BatchingEmbedder
// (batching_embedder.h); tests may provide their own.
//
// Implementations are thread-safe.
#ifndef IMAGESEARCH_LIBS_SERVING_EMBEDDER_H_
#define IMAGESEARCH_LIBS_SERVING_EMBEDDER_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "libs/serving/call_context.h"

namespace imagesearch::serving {

struct EmbedItem {
  enum class Kind { kImage, kText };
  Kind kind = Kind::kImage;
  std::string data;  // Encoded image bytes, or UTF-8 text.
};

class Embedder {
 public:
  using Vectors = std::vector<std::vector<float>>;
  using Callback = std::function<void(absl::StatusOr<Vectors>)>;
  virtual ~Embedder() = default;
  // Embeds `items` and calls `done` exactly once, possibly on another thread,
  // with one dim()-float vector per item (unit norm for cosine models), or
  // with the first error: INVALID_ARGUMENT for an undecodable image,
  // FAILED_PRECONDITION for text on an image-only model, RESOURCE_EXHAUSTED
  // when too many items are already waiting, DEADLINE_EXCEEDED / CANCELLED
  // when `context` expires first. With several items, an item's error message
  // starts with "inputs[i]: ".
  virtual void Embed(std::vector<EmbedItem> items, const CallContext& context, Callback done) = 0;
  virtual int dim() const = 0;
  virtual bool has_text() const = 0;
};

}  // namespace imagesearch::serving

#endif  // IMAGESEARCH_LIBS_SERVING_EMBEDDER_H_
