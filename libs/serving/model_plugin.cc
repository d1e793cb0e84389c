#include "libs/serving/model_plugin.h"

#include <dlfcn.h>
#include <unistd.h>

#include <memory>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
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

EmbedderFactory PluginEmbedderFactory(ModelPluginOptions options) {
  struct State {
    std::once_flag once;
    LoadModelRuntimeFn load = nullptr;
    std::string error;
  };
  auto state = std::make_shared<State>();
  return [state, options = std::move(options)](
             const snapshot::Snapshot& snap) -> absl::StatusOr<std::shared_ptr<Embedder>> {
    std::call_once(state->once, [&] {
      // The handle is never closed: runtimes live in it.
      void* handle = ::dlopen(options.plugin_path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (handle == nullptr) {
        const char* why = ::dlerror();
        state->error = absl::StrCat("cannot load the model runtime ", options.plugin_path, ": ",
                                    why != nullptr ? why : "unknown error");
        LogError(state->error);
        return;
      }
      state->load = reinterpret_cast<LoadModelRuntimeFn>(::dlsym(handle, kModelRuntimeSymbol));
      if (state->load == nullptr) {
        state->error = absl::StrCat(options.plugin_path, " has no symbol ", kModelRuntimeSymbol);
        LogError(state->error);
        return;
      }
      LogInfo("loaded the model runtime ", options.plugin_path);
    });
    if (state->load == nullptr) return absl::UnimplementedError(state->error);
    absl::StatusOr<std::unique_ptr<ModelRuntime>> runtime;
    state->load(snap.model_path(), options.runtime, &runtime);
    if (!runtime.ok()) return runtime.status();
    if ((*runtime)->name() != snap.manifest().model.name) {
      return absl::FailedPreconditionError(absl::StrCat("model.pt is '", (*runtime)->name(),
                                                        "' but the manifest says '",
                                                        snap.manifest().model.name, "'"));
    }
    return std::shared_ptr<Embedder>(
        std::make_shared<BatchingEmbedder>(*std::move(runtime), options.embedder));
  };
}

}  // namespace imagesearch::serving
