#include "libs/serving/torch_embedder.h"

#include "absl/strings/str_cat.h"

namespace imagesearch::serving {
namespace {

BatcherOptions ToBatcher(const TorchEmbedderOptions& o) {
  BatcherOptions b;
  b.max_batch = o.max_batch;
  b.max_delay = o.max_delay;
  b.max_queue = o.max_queue;
  return b;
}

// Splits batch x dim floats into one vector per row.
std::vector<std::vector<float>> Rows(const std::vector<float>& flat, size_t n, size_t dim) {
  std::vector<std::vector<float>> out(n);
  for (size_t i = 0; i < n; ++i) out[i].assign(flat.begin() + i * dim, flat.begin() + (i + 1) * dim);
  return out;
}

}  // namespace

TorchEmbedder::TorchEmbedder(std::shared_ptr<const model::ModelBundle> bundle,
                             const TorchEmbedderOptions& options)
    : bundle_(bundle),
      images_(ToBatcher(options),
              [bundle](std::vector<image::RgbImage>& batch) -> absl::StatusOr<std::vector<Vec>> {
                std::vector<const image::RgbImage*> ptrs;
                for (const auto& img : batch) ptrs.push_back(&img);
                auto flat = bundle->EncodeImages(ptrs);
                if (!flat.ok()) return flat.status();
                return Rows(*flat, batch.size(), static_cast<size_t>(bundle->dim()));
              }),
      texts_(ToBatcher(options),
             [bundle](std::vector<std::vector<int64_t>>& batch)
                 -> absl::StatusOr<std::vector<Vec>> {
               std::vector<const std::vector<int64_t>*> ptrs;
               for (const auto& t : batch) ptrs.push_back(&t);
               auto flat = bundle->EncodeTokens(ptrs);
               if (!flat.ok()) return flat.status();
               return Rows(*flat, batch.size(), static_cast<size_t>(bundle->dim()));
             }) {}

void TorchEmbedder::Embed(EmbedItem item, Callback done) {
  if (item.kind == EmbedItem::Kind::kText) {
    auto tokens = bundle_->Tokenize(item.data);
    if (!tokens.ok()) {
      done(tokens.status());
      return;
    }
    texts_.Submit(std::move(*tokens), std::move(done));
    return;
  }
  auto img = bundle_->PreprocessImage(item.data);
  if (!img.ok()) {
    done(absl::InvalidArgumentError(absl::StrCat("image: ", img.status().message())));
    return;
  }
  images_.Submit(std::move(*img), std::move(done));
}

EmbedderFactory MakeTorchEmbedderFactory(const TorchEmbedderOptions& options) {
  return [options](const snapshot::Snapshot& snap) -> absl::StatusOr<std::shared_ptr<Embedder>> {
    model::ModelBundleOptions mo;
    mo.encoder.intra_op_threads = options.intra_op_threads;
    mo.max_pixels = options.max_pixels;
    auto bundle = model::ModelBundle::Load(snap.model_path(), mo);
    if (!bundle.ok()) return bundle.status();
    if ((*bundle)->info().name != snap.manifest().model.name) {
      return absl::FailedPreconditionError(
          absl::StrCat("model.pt is '", (*bundle)->info().name, "' but the manifest says '",
                       snap.manifest().model.name, "'"));
    }
    return std::shared_ptr<Embedder>(std::make_shared<TorchEmbedder>(*bundle, options));
  };
}

}  // namespace imagesearch::serving
