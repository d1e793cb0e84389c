// A loaded model with everything needed to use it: the LibTorch encoder, the
// image preprocessing that its model.json prescribes, and (for text models)
// the CLIP tokenizer built from the vocabulary inside the archive. Shared by
// the indexer and the query service so both embed exactly the same way.
//
// Immutable after Load; every method is thread-safe.
#ifndef IMAGESEARCH_LIBS_MODEL_MODEL_BUNDLE_H_
#define IMAGESEARCH_LIBS_MODEL_MODEL_BUNDLE_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "libs/encoder/encoder.h"
#include "libs/image/image.h"
#include "libs/text/clip_tokenizer.h"

namespace imagesearch::model {

struct ModelBundleOptions {
  encoder::EncoderOptions encoder;
  int64_t max_pixels = 64'000'000;  // Decompression-bomb guard.
  int64_t max_image_bytes = 64 << 20;
};

class ModelBundle {
 public:
  static absl::StatusOr<std::shared_ptr<const ModelBundle>> Load(const std::string& model_path,
                                                                 const ModelBundleOptions& options);

  const encoder::ModelInfo& info() const { return encoder_->info(); }
  bool has_text() const { return tokenizer_.has_value(); }
  int dim() const { return encoder_->info().embed_dim; }

  absl::StatusOr<image::RgbImage> PreprocessImage(absl::string_view encoded) const;
  absl::StatusOr<image::RgbImage> PreprocessFile(const std::string& path) const;
  // PreprocessFile plus a thumbnail from the same decode (`thumbnail` null:
  // none), for the indexer.
  absl::StatusOr<image::DecodedImage> PreprocessFileWithThumbnail(
      const std::string& path, const image::ThumbnailOptions* thumbnail) const;
  // PreprocessImage plus a thumbnail from the same decode (`thumbnail` null:
  // none), for the ingest service.
  absl::StatusOr<image::DecodedImage> PreprocessImageWithThumbnail(
      absl::string_view encoded, const image::ThumbnailOptions* thumbnail) const;
  // FAILED_PRECONDITION for an image-only model.
  absl::StatusOr<std::vector<int64_t>> Tokenize(absl::string_view text) const;

  // Batch x dim floats, row-major.
  absl::StatusOr<std::vector<float>> EncodeImages(
      const std::vector<const image::RgbImage*>& images) const;
  absl::StatusOr<std::vector<float>> EncodeTokens(
      const std::vector<const std::vector<int64_t>*>& tokens) const;

  // One embedding (or the reason there is none) per input, for a batch of
  // encoded images or of texts: decodes/tokenizes them on the model's own
  // threads (Encoder::ParallelFor), then runs one forward pass over those
  // that decoded. An undecodable image fails alone, with INVALID_ARGUMENT
  // "image: ..."; an error of the forward pass fails every input.
  using Embeddings = std::vector<absl::StatusOr<std::vector<float>>>;
  Embeddings EmbedImages(const std::vector<absl::string_view>& encoded) const;
  Embeddings EmbedTexts(const std::vector<absl::string_view>& texts) const;

 private:
  ModelBundle() = default;
  std::unique_ptr<encoder::Encoder> encoder_;
  image::PreprocessOptions preprocess_;
  std::optional<text::ClipTokenizer> tokenizer_;
};

}  // namespace imagesearch::model

#endif  // IMAGESEARCH_LIBS_MODEL_MODEL_BUNDLE_H_
