// Loading the model runtime (LibTorch) as a plugin; see model_runtime.h for
// why it is one and what crosses the boundary.
//
// Thread-safe.
#ifndef IMAGESEARCH_LIBS_SERVING_MODEL_PLUGIN_H_
#define IMAGESEARCH_LIBS_SERVING_MODEL_PLUGIN_H_

#include <string>

#include "libs/serving/batching_embedder.h"
#include "libs/serving/model_runtime.h"
#include "libs/serving/snapshot_manager.h"

namespace imagesearch::serving {

struct ModelPluginOptions {
  std::string plugin_path;  // The module; see DefaultTorchPluginPath().
  ModelRuntimeOptions runtime;
  BatchingEmbedderOptions embedder;
};

// An EmbedderFactory that loads the plugin on first use, then loads each
// snapshot's model.pt through it and serves it with a BatchingEmbedder. If
// the plugin cannot be loaded, every call returns UNIMPLEMENTED saying why:
// the snapshot then still serves vector and id queries, and image/text
// queries get that reason.
EmbedderFactory PluginEmbedderFactory(ModelPluginOptions options);

// Where the plugin sits by default: next to the running executable.
std::string DefaultTorchPluginPath();

}  // namespace imagesearch::serving

#endif  // IMAGESEARCH_LIBS_SERVING_MODEL_PLUGIN_H_
