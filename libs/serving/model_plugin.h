// Loading the model runtime (LibTorch) as a plugin; see model_runtime.h for
// why it is one and what crosses the boundary.
//
// Thread-safe.
#ifndef IMAGESEARCH_LIBS_SERVING_MODEL_PLUGIN_H_
#define IMAGESEARCH_LIBS_SERVING_MODEL_PLUGIN_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
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

// The options a binary's model flags give (imagesearch-query and
// imagesearch-router share them): `plugin_path` empty = the default;
// `instances` 0 = one per CPU this process may use (cgroup quota and
// affinity); `threads` 0 = those CPUs / instances, at least 1.
ModelPluginOptions ModelOptionsFromFlags(std::string plugin_path, int instances, int threads,
                                         int max_batch, absl::Duration max_delay, size_t max_queued,
                                         Metrics* metrics);

// Loads `model_path` (a model.pt) through the plugin and serves it with a
// BatchingEmbedder: what the factory does for a snapshot's model, for a
// process that has no snapshot (imagesearch-router --model). `expect_name`,
// unless empty, must be the model's name. UNIMPLEMENTED if the plugin cannot
// be loaded.
absl::StatusOr<std::shared_ptr<Embedder>> LoadPluginEmbedder(const ModelPluginOptions& options,
                                                             const std::string& model_path,
                                                             absl::string_view expect_name);

// Where the plugin sits by default: next to the running executable.
std::string DefaultTorchPluginPath();

}  // namespace imagesearch::serving

#endif  // IMAGESEARCH_LIBS_SERVING_MODEL_PLUGIN_H_
