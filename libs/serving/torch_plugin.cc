// The loadable module that carries LibTorch into the query service: a
// ModelRuntime over model::ModelBundle. See libs/serving/model_runtime.h.
#include <memory>
#include <string>
#include <utility>

#include "libs/model/model_bundle.h"
#include "libs/serving/model_runtime.h"

namespace imagesearch::serving {
namespace {

class TorchModelRuntime final : public ModelRuntime {
 public:
  explicit TorchModelRuntime(std::shared_ptr<const model::ModelBundle> bundle)
      : bundle_(std::move(bundle)), name_(bundle_->info().name) {}

  const std::string& name() const override { return name_; }
  int dim() const override { return bundle_->dim(); }
  bool has_text() const override { return bundle_->has_text(); }

  Embeddings Embed(EmbedItem::Kind kind,
                   const std::vector<absl::string_view>& inputs) const override {
    return kind == EmbedItem::Kind::kText ? bundle_->EmbedTexts(inputs)
                                          : bundle_->EmbedImages(inputs);
  }

 private:
  const std::shared_ptr<const model::ModelBundle> bundle_;
  const std::string name_;
};

}  // namespace
}  // namespace imagesearch::serving

extern "C" __attribute__((visibility("default"))) void imagesearch_load_model_runtime_v1(
    const std::string& path, const imagesearch::serving::ModelRuntimeOptions& options,
    absl::StatusOr<std::unique_ptr<imagesearch::serving::ModelRuntime>>* out) {
  imagesearch::model::ModelBundleOptions mo;
  mo.encoder.intra_op_threads = options.intra_op_threads;
  mo.max_pixels = options.max_pixels;
  auto bundle = imagesearch::model::ModelBundle::Load(path, mo);
  if (!bundle.ok()) {
    *out = bundle.status();
    return;
  }
  *out = std::make_unique<imagesearch::serving::TorchModelRuntime>(*std::move(bundle));
}
