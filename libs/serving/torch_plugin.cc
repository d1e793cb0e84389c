// The loadable module that carries LibTorch into the query service: a
// ModelRuntime over model::ModelBundle. See libs/serving/model_runtime.h.
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
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

  absl::StatusOr<PreparedInput> Prepare(EmbedItem::Kind kind,
                                        absl::string_view data) const override {
    PreparedInput in;
    if (kind == EmbedItem::Kind::kText) {
      auto tokens = bundle_->Tokenize(data);
      if (!tokens.ok()) return tokens.status();
      in.tokens = std::move(*tokens);
      return in;
    }
    auto img = bundle_->PreprocessImage(data);
    if (!img.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("image: ", img.status().message()));
    }
    in.image = std::move(*img);
    return in;
  }

  absl::StatusOr<std::vector<float>> Encode(
      EmbedItem::Kind kind, const std::vector<const PreparedInput*>& batch) const override {
    if (kind == EmbedItem::Kind::kText) {
      std::vector<const std::vector<int64_t>*> tokens;
      tokens.reserve(batch.size());
      for (const PreparedInput* in : batch) tokens.push_back(&in->tokens);
      return bundle_->EncodeTokens(tokens);
    }
    std::vector<const image::RgbImage*> images;
    images.reserve(batch.size());
    for (const PreparedInput* in : batch) images.push_back(&in->image);
    return bundle_->EncodeImages(images);
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
