#include "libs/serving/model_plugin.h"

#include <dlfcn.h>
#include <unistd.h>

#include <memory>
#include <mutex>

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

EmbedderFactory LazyPluginEmbedderFactory(std::string plugin_path, TorchEmbedderOptions options) {
  struct State {
    std::once_flag once;
    std::unique_ptr<EmbedderFactory> factory;
    std::string error;
  };
  auto state = std::make_shared<State>();
  return [state, plugin_path = std::move(plugin_path),
          options](const snapshot::Snapshot& snap) -> absl::StatusOr<std::shared_ptr<Embedder>> {
    std::call_once(state->once, [&] {
      // The handle is never closed: the factory and embedders live in it.
      void* handle = ::dlopen(plugin_path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (handle == nullptr) {
        const char* why = ::dlerror();
        state->error = absl::StrCat("cannot load the model runtime ", plugin_path, ": ",
                                    why != nullptr ? why : "unknown error");
        LogError(state->error);
        return;
      }
      auto make = reinterpret_cast<NewTorchEmbedderFactoryFn>(::dlsym(handle, kTorchPluginSymbol));
      if (make == nullptr) {
        state->error = absl::StrCat(plugin_path, " has no symbol ", kTorchPluginSymbol);
        LogError(state->error);
        return;
      }
      state->factory.reset(make(options));
      LogInfo("loaded the model runtime ", plugin_path);
    });
    if (!state->factory) return absl::UnimplementedError(state->error);
    return (*state->factory)(snap);
  };
}

}  // namespace imagesearch::serving
