// The loadable module that carries LibTorch into the query service; see
// libs/serving/model_plugin.h.
#include "libs/serving/model_plugin.h"
#include "libs/serving/torch_embedder.h"

extern "C" __attribute__((visibility("default"))) imagesearch::serving::EmbedderFactory*
imagesearch_new_torch_embedder_factory(const imagesearch::serving::TorchEmbedderOptions& options) {
  return new imagesearch::serving::EmbedderFactory(
      imagesearch::serving::MakeTorchEmbedderFactory(options));
}
