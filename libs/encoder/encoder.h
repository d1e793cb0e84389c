// Encoder: runs a TorchScript embedding model (libs/encoder/MODEL_CONTRACT.md)
// on CPU through LibTorch, turning preprocessed images and token ids into
// embedding vectors.
//
// This is the only unit that includes LibTorch (in encoder.cc, behind a
// pimpl); LibTorch's c10::Error and std::exception never leave it, every
// failure is an absl::Status.
//
// Thread-safety: ParseModelJson is a pure function. An Encoder is immutable
// after Load(); info(), EncodeImages() and EncodeTokens() may be called
// concurrently from any number of threads.
#ifndef IMAGESEARCH_LIBS_ENCODER_ENCODER_H_
#define IMAGESEARCH_LIBS_ENCODER_ENCODER_H_

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace imagesearch::encoder {

// The "text" block of model.json: how to tokenize text for encode_text.
struct TextConfig {
  std::string tokenizer;  // "clip_bpe"
  int context_length = 77;
  int64_t sot_token = 49406;
  int64_t eot_token = 49407;
  // Token ids must be < vocab_size; 0 when model.json does not say.
  int64_t vocab_size = 0;
  bool lower_case = true;
  // Name of the archive's extra file that holds the vocabulary.
  std::string vocab_file;
  // Contents of `vocab_file` (for clip_bpe: the BPE merges text). Filled by
  // Encoder::Load, empty after ParseModelJson alone.
  std::string vocab;
};

// model.json, validated. See MODEL_CONTRACT.md for the meaning of each field.
struct ModelInfo {
  std::string name, version;
  int embed_dim = 0;
  int image_size = 0;
  std::string resize;         // "shortest_edge" | "squash"
  std::string crop;           // "center" | "none"
  std::string interpolation;  // "bicubic" | "bilinear" | "nearest"
  std::array<float, 3> mean{}, std{};
  std::string metric;              // "cosine" | "ip" | "l2"
  std::optional<TextConfig> text;  // absent: image-only model
  std::string model_json;          // the raw text, for snapshot manifests
};

// Parses and validates model.json. Unknown fields are ignored (forward
// compatibility); every known field is checked for presence, type and range.
// Returns INVALID_ARGUMENT naming the offending field otherwise.
absl::StatusOr<ModelInfo> ParseModelJson(std::string_view json);

struct EncoderOptions {
  // LibTorch intra-op threads (at::set_num_threads), set explicitly on every
  // thread that runs this encoder. Default (0 or less): 1. A team of more
  // than one thread waits for its slowest member at every operator, and
  // OpenMP's workers spin while they wait; when other processes share the
  // cores that collapses throughput, so parallelism across batches (several
  // threads each running the model on its own batch) is the default.
  int intra_op_threads = 0;
  // Batch size of the warm-up run that Load() does (and whose output shape it
  // checks against embed_dim). Values < 1 are treated as 1. Default: 2.
  int warmup_batch = 2;
};

class Encoder {
 public:
  // Loads a model archive, validates model.json, checks the methods the
  // contract requires (encode_image; encode_text iff model.json has "text"),
  // and warms the model up, checking that each method returns
  // [warmup_batch, embed_dim]. Returns NOT_FOUND if `model_path` does not
  // exist, INVALID_ARGUMENT if it is not a model that meets the contract.
  static absl::StatusOr<std::unique_ptr<Encoder>> Load(const std::string& model_path,
                                                       const EncoderOptions& options);

  Encoder(const Encoder&) = delete;
  Encoder& operator=(const Encoder&) = delete;
  ~Encoder();

  const ModelInfo& info() const { return info_; }

  // Encodes a batch of images. Each pointer addresses
  // image_size * image_size * 3 bytes, RGB, HWC, uint8, already resized and
  // cropped (libs/image). Normalisation ((pixel / 255 - mean) / std) happens
  // here. Returns images.size() x embed_dim floats, row-major, L2-normalised
  // when the metric is cosine. An empty batch gives an empty vector.
  // INVALID_ARGUMENT for a null pointer; INTERNAL if the model fails or
  // produces a non-finite value.
  absl::StatusOr<std::vector<float>> EncodeImages(absl::Span<const uint8_t* const> images) const;

  // Encodes a batch of token sequences: `token_ids` holds
  // batch * text.context_length ids, row-major. Returns batch x embed_dim
  // floats as EncodeImages does. FAILED_PRECONDITION "model <name> has no text
  // encoder" for an image-only model; INVALID_ARGUMENT for a size mismatch or
  // an id outside [0, vocab_size).
  absl::StatusOr<std::vector<float>> EncodeTokens(absl::Span<const int64_t> token_ids,
                                                  int batch) const;

  // Runs fn(i) for every i in [0, n) on the threads that run the model
  // (LibTorch's intra-op pool), and returns when all are done. Work done
  // this way right before a forward pass (decoding its images, say) does
  // not compete with the pass for cores. `fn` must not throw.
  void ParallelFor(int64_t n, const std::function<void(int64_t)>& fn) const;

 private:
  struct Impl;  // holds the torch::jit::Module
  Encoder(ModelInfo info, std::unique_ptr<Impl> impl);

  const ModelInfo info_;
  const std::unique_ptr<Impl> impl_;
};

}  // namespace imagesearch::encoder

#endif  // IMAGESEARCH_LIBS_ENCODER_ENCODER_H_
