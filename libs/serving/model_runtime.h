// The narrow interface between the query service and its model runtime.
//
// The query service does not link LibTorch: LibTorch's static initialisation
// alone takes ~0.7 s, which would make every replica, even one serving a
// vector-only snapshot, slow to start. The LibTorch-backed runtime is a
// loadable module (libimagesearch_torch_plugin.so, next to the binary,
// libs/serving/torch_plugin.cc) that is dlopen'ed the first time a snapshot
// carrying a model is loaded.
//
// The module holds only the model: decoding, tokenizing and the forward pass.
// Batching, queues, admission and metrics stay in the service, and the
// libraries both sides use (libs/common) are shared objects, so the process
// holds one copy of every registry and counter.
//
// This header is all the two sides share; it pulls in no LibTorch.
#ifndef IMAGESEARCH_LIBS_SERVING_MODEL_RUNTIME_H_
#define IMAGESEARCH_LIBS_SERVING_MODEL_RUNTIME_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "libs/serving/embedder.h"

namespace imagesearch::serving {

struct ModelRuntimeOptions {
  // LibTorch intra-op threads, set on each thread that runs the model.
  // 0: one per core.
  int intra_op_threads = 0;
  int64_t max_pixels = 64'000'000;  // Decompression-bomb guard.
};

// One loaded and warmed model. Thread-safe.
class ModelRuntime {
 public:
  using Embeddings = std::vector<absl::StatusOr<std::vector<float>>>;
  virtual ~ModelRuntime() = default;
  virtual const std::string& name() const = 0;
  virtual int dim() const = 0;
  virtual bool has_text() const = 0;
  // Embeds a batch of inputs of one kind (encoded images, or texts): one
  // result per input. Images are decoded on the model's own threads, right
  // before the forward pass, so decoding never competes with a pass for
  // cores. An undecodable image fails alone (INVALID_ARGUMENT "image: ...");
  // text on an image-only model is FAILED_PRECONDITION.
  virtual Embeddings Embed(EmbedItem::Kind kind,
                           const std::vector<absl::string_view>& inputs) const = 0;
};

// The module's one exported symbol. Loads the model at `path`, warms it up
// and checks its output dim; the result goes to `*out`.
inline constexpr char kModelRuntimeSymbol[] = "imagesearch_load_model_runtime_v1";
using LoadModelRuntimeFn = void (*)(const std::string& path, const ModelRuntimeOptions& options,
                                    absl::StatusOr<std::unique_ptr<ModelRuntime>>* out);

}  // namespace imagesearch::serving

#endif  // IMAGESEARCH_LIBS_SERVING_MODEL_RUNTIME_H_
