#include "libs/serving/model_plugin.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "libs/common/cpu_quota.h"
#include "libs/common/log.h"

namespace imagesearch::serving {

std::string DefaultTorchPluginPath() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  std::string exe = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  const size_t slash = exe.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : exe.substr(0, slash);
  return dir + "/libimagesearch_torch_plugin.so";
}

ModelPluginOptions ModelOptionsFromFlags(std::string plugin_path, int instances, int threads,
                                         int max_batch, absl::Duration max_delay, size_t max_queued,
                                         Metrics* metrics) {
  ModelPluginOptions o;
  o.plugin_path = plugin_path.empty() ? DefaultTorchPluginPath() : std::move(plugin_path);
  const int cpus = EffectiveCpuCount();
  if (instances <= 0) instances = cpus;
  o.runtime.intra_op_threads = threads > 0 ? threads : std::max(1, cpus / instances);
  o.embedder.model_instances = instances;
  o.embedder.max_batch = std::max(1, max_batch);
  o.embedder.max_delay = max_delay;
  o.embedder.max_queued_items = max_queued;
  o.embedder.metrics = metrics;
  return o;
}

namespace {

// The plugin's entry point, loaded once per process and path; UNIMPLEMENTED
// saying why if it cannot be.
absl::StatusOr<LoadModelRuntimeFn> OpenPlugin(const std::string& plugin_path) {
  static std::mutex mu;
  static auto* opened = new std::map<std::string, absl::StatusOr<LoadModelRuntimeFn>>();
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = opened->find(plugin_path); it != opened->end()) return it->second;
  absl::StatusOr<LoadModelRuntimeFn> result = [&]() -> absl::StatusOr<LoadModelRuntimeFn> {
    // The handle is never closed: runtimes live in it.
    void* handle = ::dlopen(plugin_path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* why = ::dlerror();
      return absl::UnimplementedError(absl::StrCat("cannot load the model runtime ", plugin_path,
                                                   ": ", why != nullptr ? why : "unknown error"));
    }
    auto load = reinterpret_cast<LoadModelRuntimeFn>(::dlsym(handle, kModelRuntimeSymbol));
    if (load == nullptr) {
      return absl::UnimplementedError(
          absl::StrCat(plugin_path, " has no symbol ", kModelRuntimeSymbol));
    }
    return load;
  }();
  if (result.ok()) {
    LogInfo("loaded the model runtime ", plugin_path);
  } else {
    LogError(result.status().message());
  }
  opened->emplace(plugin_path, result);
  return result;
}

}  // namespace

absl::StatusOr<std::shared_ptr<Embedder>> LoadPluginEmbedder(const ModelPluginOptions& options,
                                                             const std::string& model_path,
                                                             absl::string_view expect_name) {
  absl::StatusOr<LoadModelRuntimeFn> load = OpenPlugin(options.plugin_path);
  if (!load.ok()) return load.status();
  absl::StatusOr<std::unique_ptr<ModelRuntime>> runtime;
  (*load)(model_path, options.runtime, &runtime);
  if (!runtime.ok()) return runtime.status();
  if (!expect_name.empty() && (*runtime)->name() != expect_name) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model.pt is '", (*runtime)->name(), "' but the manifest says '", expect_name, "'"));
  }
  return std::shared_ptr<Embedder>(
      std::make_shared<BatchingEmbedder>(*std::move(runtime), options.embedder));
}

EmbedderFactory PluginEmbedderFactory(ModelPluginOptions options) {
  return [options = std::move(options)](
             const snapshot::Snapshot& snap) -> absl::StatusOr<std::shared_ptr<Embedder>> {
    return LoadPluginEmbedder(options, snap.model_path(), snap.manifest().model.name);
  };
}

}  // namespace imagesearch::serving
