// Loading the model runtime (LibTorch) as a plugin.
//
// The query service does not link LibTorch: its static initialisation alone
// takes ~0.7 s, which would make every replica, even one serving a vector-only
// snapshot, slow to start. Instead the LibTorch-backed embedder is built as a
// loadable module (libimagesearch_torch_plugin.so, next to the binary) that is
// dlopen'ed the first time a snapshot carrying a model is loaded.
//
// Thread-safe.
#ifndef IMAGESEARCH_LIBS_SERVING_MODEL_PLUGIN_H_
#define IMAGESEARCH_LIBS_SERVING_MODEL_PLUGIN_H_

#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "libs/serving/snapshot_manager.h"

namespace imagesearch::serving {

struct TorchEmbedderOptions {
  int max_batch = 16;
  absl::Duration max_delay = absl::Milliseconds(2);
  size_t max_queue = 256;
  int intra_op_threads = 0;
  int64_t max_pixels = 64'000'000;
};

// The plugin's one exported symbol: returns a new heap-allocated factory.
inline constexpr char kTorchPluginSymbol[] = "imagesearch_new_torch_embedder_factory";
using NewTorchEmbedderFactoryFn = EmbedderFactory* (*)(const TorchEmbedderOptions&);

// An EmbedderFactory that loads the plugin at `plugin_path` on first use and
// then delegates to it. If the plugin cannot be loaded, every call returns
// UNIMPLEMENTED saying why: the snapshot then still serves vector and id
// queries, and image/text queries get that reason.
EmbedderFactory LazyPluginEmbedderFactory(std::string plugin_path, TorchEmbedderOptions options);

// Where the plugin sits by default: next to the running executable.
std::string DefaultTorchPluginPath();

}  // namespace imagesearch::serving

#endif  // IMAGESEARCH_LIBS_SERVING_MODEL_PLUGIN_H_
