// libFuzzer target: CLIP's BPE tokenizer (libs/text/clip_tokenizer.h), with
// the real vocabulary (tests/data/clip/bpe_simple_vocab_16e6.txt.gz).
//
// Input: one option byte, then text. The option byte picks the context
// length and truncate mode. Encode must give exactly context_length ids that
// start with SOT and end (before the zero padding) with EOT, or INVALID_ARGUMENT; Decode of those
// ids must not crash. Bit 0x80: Decode the raw input read as int64 ids too.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "libs/text/clip_tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

using imagesearch::text::ClipTokenizer;
using imagesearch::text::ClipTokenizerOptions;

namespace {

std::string Vocab() {
  std::ifstream in(IMAGESEARCH_TESTDATA_DIR "/clip/bpe_simple_vocab_16e6.txt.gz", std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

const ClipTokenizer& Tokenizer(int which) {
  static const ClipTokenizer* tokenizers[4] = {};
  if (tokenizers[which] == nullptr) {
    static const std::string* vocab = new std::string(Vocab());
    ClipTokenizerOptions o;
    static constexpr int kContext[] = {77, 2, 5, 77};
    o.context_length = kContext[which];
    o.truncate = which != 3;
    auto t = ClipTokenizer::Create(*vocab, o);
    FUZZ_CHECK(t.ok());
    tokenizers[which] = new ClipTokenizer(*std::move(t));
  }
  return *tokenizers[which];
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  for (int i = 0; i < 4; ++i) Tokenizer(i);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t opt = data[0];
  std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  const ClipTokenizer& tok = Tokenizer(opt & 3);
  auto ids = tok.Encode(text);
  if (ids.ok()) {
    const size_t n = static_cast<size_t>(tok.context_length());
    FUZZ_CHECK(ids->size() == n);
    FUZZ_CHECK((*ids)[0] == 49406);
    // The text may itself hold "<|endoftext|>" (a special token, as in
    // CLIP's Python tokenizer), so the sequence's EOT is the last non-zero id.
    size_t last = 0;
    for (size_t i = 0; i < n; ++i) {
      FUZZ_CHECK((*ids)[i] >= 0 && (*ids)[i] < tok.vocab_size());
      if ((*ids)[i] != 0) last = i;
    }
    FUZZ_CHECK((*ids)[last] == 49407);
    (void)tok.Decode(*ids);
  } else {
    FUZZ_CHECK(absl::IsInvalidArgument(ids.status()));
  }
  if (opt & 0x80) {
    std::vector<int64_t> raw(text.size() / sizeof(int64_t));
    if (!raw.empty()) std::memcpy(raw.data(), text.data(), raw.size() * sizeof(int64_t));
    (void)tok.Decode(raw);
  }
  return 0;
}
