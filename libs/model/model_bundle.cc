#include "libs/model/model_bundle.h"

#include "absl/strings/str_cat.h"
#include "libs/common/status_macros.h"

namespace imagesearch::model {

absl::StatusOr<std::shared_ptr<const ModelBundle>> ModelBundle::Load(
    const std::string& model_path, const ModelBundleOptions& options) {
  RETURN_IF_ERROR(image::InitImageLibrary());
  std::shared_ptr<ModelBundle> b(new ModelBundle());
  ASSIGN_OR_RETURN(b->encoder_, encoder::Encoder::Load(model_path, options.encoder));
  const encoder::ModelInfo& info = b->encoder_->info();
  b->preprocess_.image_size = info.image_size;
  ASSIGN_OR_RETURN(b->preprocess_.resize, image::ParseResizeMode(info.resize));
  ASSIGN_OR_RETURN(b->preprocess_.crop, image::ParseCropMode(info.crop));
  ASSIGN_OR_RETURN(b->preprocess_.interpolation, image::ParseInterpolation(info.interpolation));
  b->preprocess_.max_pixels = options.max_pixels;
  b->preprocess_.max_bytes = options.max_image_bytes;
  if (absl::Status s = image::ValidatePreprocessOptions(b->preprocess_); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("model ", info.name, ": ", s.message()));
  }
  if (info.text.has_value()) {
    if (info.text->tokenizer != "clip_bpe") {
      return absl::InvalidArgumentError(absl::StrCat("model ", info.name, ": tokenizer '",
                                                     info.text->tokenizer,
                                                     "' is not supported (clip_bpe is)"));
    }
    text::ClipTokenizerOptions t;
    t.context_length = info.text->context_length;
    t.sot_token = info.text->sot_token;
    t.eot_token = info.text->eot_token;
    t.lower_case = info.text->lower_case;
    auto tok = text::ClipTokenizer::Create(info.text->vocab, t);
    if (!tok.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("model ", info.name, " tokenizer vocabulary: ", tok.status().message()));
    }
    b->tokenizer_.emplace(std::move(*tok));
  }
  return std::shared_ptr<const ModelBundle>(std::move(b));
}

absl::StatusOr<image::RgbImage> ModelBundle::PreprocessImage(absl::string_view encoded) const {
  return image::DecodeAndPreprocess(std::string_view(encoded.data(), encoded.size()), preprocess_);
}

absl::StatusOr<image::RgbImage> ModelBundle::PreprocessFile(const std::string& path) const {
  return image::DecodeAndPreprocessFile(path, preprocess_);
}

absl::StatusOr<image::DecodedImage> ModelBundle::PreprocessImageWithThumbnail(
    absl::string_view encoded, const image::ThumbnailOptions* thumbnail) const {
  return image::DecodeWithThumbnail(std::string_view(encoded.data(), encoded.size()), preprocess_,
                                    thumbnail);
}

absl::StatusOr<image::DecodedImage> ModelBundle::PreprocessFileWithThumbnail(
    const std::string& path, const image::ThumbnailOptions* thumbnail) const {
  return image::DecodeFileWithThumbnail(path, preprocess_, thumbnail);
}

absl::StatusOr<std::vector<int64_t>> ModelBundle::Tokenize(absl::string_view text) const {
  if (!tokenizer_.has_value()) {
    return absl::FailedPreconditionError(
        absl::StrCat("model ", info().name, " is image-only and has no text encoder"));
  }
  return tokenizer_->Encode(std::string_view(text.data(), text.size()));
}

absl::StatusOr<std::vector<float>> ModelBundle::EncodeImages(
    const std::vector<const image::RgbImage*>& images) const {
  std::vector<const uint8_t*> pixels;
  pixels.reserve(images.size());
  for (const image::RgbImage* img : images) {
    if (img->width != preprocess_.image_size || img->height != preprocess_.image_size) {
      return absl::InvalidArgumentError(absl::StrCat("image is ", img->width, "x", img->height,
                                                     ", the model needs ", preprocess_.image_size,
                                                     " square"));
    }
    pixels.push_back(img->pixels.data());
  }
  return encoder_->EncodeImages(pixels);
}

absl::StatusOr<std::vector<float>> ModelBundle::EncodeTokens(
    const std::vector<const std::vector<int64_t>*>& tokens) const {
  std::vector<int64_t> flat;
  for (const auto* t : tokens) flat.insert(flat.end(), t->begin(), t->end());
  return encoder_->EncodeTokens(flat, static_cast<int>(tokens.size()));
}

namespace {

// Runs `encode` on the inputs that prepared and spreads its rows (or its
// error) back over `out`, where the inputs that failed already hold theirs.
template <typename Prepared, typename EncodeFn>
void EncodePrepared(const std::vector<absl::StatusOr<Prepared>>& prepared, int dim, EncodeFn encode,
                    ModelBundle::Embeddings* out) {
  std::vector<const Prepared*> ok;
  std::vector<size_t> index;
  for (size_t i = 0; i < prepared.size(); ++i) {
    if (prepared[i].ok()) {
      ok.push_back(&*prepared[i]);
      index.push_back(i);
    }
  }
  if (ok.empty()) return;
  absl::StatusOr<std::vector<float>> flat = encode(ok);
  for (size_t j = 0; j < index.size(); ++j) {
    if (!flat.ok()) {
      (*out)[index[j]] = flat.status();
    } else {
      auto row = flat->begin() + static_cast<std::ptrdiff_t>(j * static_cast<size_t>(dim));
      (*out)[index[j]] = std::vector<float>(row, row + dim);
    }
  }
}

}  // namespace

ModelBundle::Embeddings ModelBundle::EmbedImages(
    const std::vector<absl::string_view>& encoded) const {
  std::vector<absl::StatusOr<image::RgbImage>> images(encoded.size(),
                                                      absl::UnknownError("not decoded"));
  encoder_->ParallelFor(static_cast<int64_t>(encoded.size()), [&](int64_t i) {
    auto img = PreprocessImage(encoded[static_cast<size_t>(i)]);
    images[static_cast<size_t>(i)] =
        img.ok() ? std::move(img)
                 : absl::InvalidArgumentError(absl::StrCat("image: ", img.status().message()));
  });
  Embeddings out(encoded.size(), absl::UnknownError("not encoded"));
  for (size_t i = 0; i < images.size(); ++i) {
    if (!images[i].ok()) out[i] = images[i].status();
  }
  EncodePrepared(
      images, dim(),
      [this](const std::vector<const image::RgbImage*>& b) { return EncodeImages(b); }, &out);
  return out;
}

ModelBundle::Embeddings ModelBundle::EmbedTexts(const std::vector<absl::string_view>& texts) const {
  std::vector<absl::StatusOr<std::vector<int64_t>>> tokens;
  tokens.reserve(texts.size());
  for (absl::string_view t : texts) tokens.push_back(Tokenize(t));  // Microseconds each.
  Embeddings out(texts.size(), absl::UnknownError("not encoded"));
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (!tokens[i].ok()) out[i] = tokens[i].status();
  }
  EncodePrepared(
      tokens, dim(),
      [this](const std::vector<const std::vector<int64_t>*>& b) { return EncodeTokens(b); }, &out);
  return out;
}

}  // namespace imagesearch::model
