// CLIP's byte-level BPE tokenizer, driven by the vocabulary that travels in
// the model archive (bpe_simple_vocab_16e6.txt, the merges list of OpenAI
// CLIP and open_clip). Encode reproduces clip.tokenize(text, truncate=True)
// of OpenAI's simple_tokenizer.py id for id; the one known gap is ftfy's
// heuristic mojibake repair, which is not done (libs/text/README.md).
//
// Thread-safety: a ClipTokenizer is immutable after Create. Encode and Decode
// are const and keep no shared mutable state, so any number of threads may
// call them at once. Copying or moving a tokenizer is cheap (shared tables).
#ifndef IMAGESEARCH_LIBS_TEXT_CLIP_TOKENIZER_H_
#define IMAGESEARCH_LIBS_TEXT_CLIP_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace imagesearch::text {

struct ClipTokenizerOptions {
  // Length of every encoded sequence. REQUIRES: >= 2.
  int context_length = 77;
  // Ids of <|startoftext|> and <|endoftext|>. They must agree with the
  // vocabulary (49406 and 49407 for CLIP's file); Create checks.
  int64_t sot_token = 49406;
  int64_t eot_token = 49407;
  // Too-long text: cut (true, CLIP's truncate=True) or INVALID_ARGUMENT.
  bool truncate = true;
  // Lower-case the cleaned text (CLIP's vocabulary is lower-case only);
  // model.json's text.lower_case.
  bool lower_case = true;
};

class ClipTokenizer {
 public:
  // Number of merges CLIP uses from the file: 49152 - 256 - 2.
  static constexpr int kNumMerges = 48894;

  // `merges` is the text of bpe_simple_vocab_16e6.txt (a header line, then
  // one merge "a b" per line); gzip-compressed bytes (1f 8b) are accepted
  // too. Returns INVALID_ARGUMENT, saying what is wrong, for an empty,
  // corrupt or short vocabulary or for options that do not fit it.
  static absl::StatusOr<ClipTokenizer> Create(std::string_view merges,
                                              const ClipTokenizerOptions& options = {});

  // Returns exactly context_length ids: SOT, the BPE ids of the cleaned text,
  // EOT, then zeros. Text longer than that is cut so that the last id is EOT
  // (truncate = true) or rejected with INVALID_ARGUMENT (truncate = false).
  // INVALID_ARGUMENT also for text that is not valid UTF-8.
  absl::StatusOr<std::vector<int64_t>> Encode(std::string_view text) const;

  // The text of `ids`, for debugging and tests: a leading SOT is dropped,
  // decoding stops at the first EOT, '</w>' becomes a space (so every word is
  // followed by one), and ids outside the vocabulary and broken UTF-8 (a
  // character cut by truncation) decode as U+FFFD, as Python's decode does.
  std::string Decode(const std::vector<int64_t>& ids) const;

  int context_length() const;
  // Number of ids in the vocabulary (49408 for CLIP).
  int vocab_size() const;

 private:
  struct Tables;
  ClipTokenizer(std::shared_ptr<const Tables> tables, const ClipTokenizerOptions& options);

  // Appends the ids of one pre-token (its UTF-8 bytes) to `out`.
  void Bpe(std::string_view word, std::vector<int64_t>* out) const;

  std::shared_ptr<const Tables> tables_;
  ClipTokenizerOptions options_;
};

}  // namespace imagesearch::text

#endif  // IMAGESEARCH_LIBS_TEXT_CLIP_TOKENIZER_H_
