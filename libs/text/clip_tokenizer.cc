#include "libs/text/clip_tokenizer.h"

#include <unicode/uchar.h>
#include <zlib.h>

#include <array>
#include <climits>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "libs/common/status_macros.h"
#include "libs/common/string_view.h"
#include "libs/text/text_clean.h"

namespace imagesearch::text {
namespace {

constexpr std::string_view kSot = "<|startoftext|>";
constexpr std::string_view kEot = "<|endoftext|>";
constexpr std::u32string_view kSot32 = U"<|startoftext|>";
constexpr std::u32string_view kEot32 = U"<|endoftext|>";
constexpr std::string_view kEndOfWord = "</w>";
// Refuse to inflate a "vocabulary" past this (the real one is about 3 MiB).
constexpr size_t kMaxVocabBytes = 64u << 20;

// GPT-2/CLIP's bytes_to_unicode: every byte gets a printable character; the
// vocabulary lists the bytes in this order (printable ones first).
struct ByteAlphabet {
  std::array<char32_t, 256> char_of_byte;
  std::array<uint8_t, 256> byte_order;  // vocabulary position -> byte
  ByteAlphabet() {
    int pos = 0;
    std::array<bool, 256> printable{};
    for (int b = 0; b < 256; ++b) {
      printable[b] = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      if (printable[b]) {
        char_of_byte[b] = static_cast<char32_t>(b);
        byte_order[pos++] = static_cast<uint8_t>(b);
      }
    }
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      if (!printable[b]) {
        char_of_byte[b] = static_cast<char32_t>(256 + extra++);
        byte_order[pos++] = static_cast<uint8_t>(b);
      }
    }
  }
};

// Debian's Abseil has its own string_view type; StrCat needs it.

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

absl::StatusOr<std::string> Gunzip(std::string_view data) {
  z_stream zs{};
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) {
    return absl::InternalError("zlib: inflateInit2 failed");
  }
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = static_cast<uInt>(data.size());
  std::string out;
  char buf[1 << 16];
  while (true) {
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof(buf);
    int rc = inflate(&zs, Z_NO_FLUSH);
    out.append(buf, sizeof(buf) - zs.avail_out);
    if (out.size() > kMaxVocabBytes) {
      inflateEnd(&zs);
      return absl::InvalidArgumentError("vocabulary: gzip data inflates past 64 MiB");
    }
    if (rc == Z_STREAM_END) {
      // gzip allows several members back to back, as Python's gzip reads them.
      if (zs.avail_in >= 2 && zs.next_in[0] == 0x1F && zs.next_in[1] == 0x8B) {
        inflateReset(&zs);
        continue;
      }
      break;
    }
    if (rc != Z_OK) {
      std::string msg = zs.msg != nullptr ? zs.msg : "truncated input";
      inflateEnd(&zs);
      return absl::InvalidArgumentError(absl::StrCat("vocabulary: corrupt gzip data (", msg, ")"));
    }
    if (zs.avail_in == 0 && zs.avail_out != 0) {
      inflateEnd(&zs);
      return absl::InvalidArgumentError("vocabulary: gzip data ends early");
    }
  }
  inflateEnd(&zs);
  return out;
}

// Splits on runs of ASCII whitespace, as str.split() does for these lines.
std::vector<std::string_view> SplitFields(std::string_view line) {
  std::vector<std::string_view> fields;
  auto is_space = [](char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
  };
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && is_space(line[i])) ++i;
    size_t start = i;
    while (i < line.size() && !is_space(line[i])) ++i;
    if (i > start) fields.push_back(line.substr(start, i - start));
  }
  return fields;
}

enum class CharClass { kSkip, kLetter, kNumber, kOther };

// The classes of CLIP's regex under re.IGNORECASE: \p{L}, \p{N}, \s, and the
// rest. U+0345 (a combining mark whose case partner is a letter) matches none
// of the regex's classes with IGNORECASE, so it is skipped like a space.
CharClass Classify(char32_t c) {
  if (c < 0x80) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return CharClass::kLetter;
    if (c >= '0' && c <= '9') return CharClass::kNumber;
    if (c == ' ' || (c >= '\t' && c <= '\r')) return CharClass::kSkip;
    return CharClass::kOther;
  }
  uint32_t mask = U_GET_GC_MASK(static_cast<UChar32>(c));
  if (mask & U_GC_L_MASK) return CharClass::kLetter;
  if (mask & U_GC_N_MASK) return CharClass::kNumber;
  if (c == 0x345 || IsRegexSpace(c)) return CharClass::kSkip;
  return CharClass::kOther;
}

// Case-insensitive equality with an ASCII letter or sign, as the regex's
// IGNORECASE sees it (e.g. U+017F LONG S matches 's').
bool FoldEquals(char32_t c, char32_t ascii) {
  return c == ascii ||
         static_cast<char32_t>(u_foldCase(static_cast<UChar32>(c), U_FOLD_CASE_DEFAULT)) == ascii;
}

size_t MatchLiteral(std::u32string_view s, size_t i, std::u32string_view literal) {
  if (s.size() - i < literal.size()) return 0;
  for (size_t k = 0; k < literal.size(); ++k) {
    if (!FoldEquals(s[i + k], literal[k])) return 0;
  }
  return literal.size();
}

// Length of the regex match at `i` for the alternatives that start with a
// literal: the two special tokens and the contractions. 0 if none matches.
size_t MatchLiteralAlternatives(std::u32string_view s, size_t i) {
  if (s[i] == '<') {
    if (size_t n = MatchLiteral(s, i, kSot32)) return n;
    return MatchLiteral(s, i, kEot32);
  }
  if (s[i] != '\'' || i + 1 >= s.size()) return 0;
  for (std::u32string_view c : {U"'s", U"'t", U"'re", U"'ve", U"'m", U"'ll", U"'d"}) {
    if (size_t n = MatchLiteral(s, i, c)) return n;
  }
  return 0;
}

}  // namespace

struct ClipTokenizer::Tables {
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };
  std::array<int32_t, 256> byte_id{};           // id of a byte inside a word
  std::array<int32_t, 256> byte_end_id{};       // id of a byte + "</w>"
  absl::flat_hash_map<uint64_t, Merge> merges;  // (left id, right id) -> merge
  std::vector<std::string> token_bytes;         // id -> bytes it stands for
  int32_t sot_id = 0;
  int32_t eot_id = 0;
};

ClipTokenizer::ClipTokenizer(std::shared_ptr<const Tables> tables,
                             const ClipTokenizerOptions& options)
    : tables_(std::move(tables)), options_(options) {}

absl::StatusOr<ClipTokenizer> ClipTokenizer::Create(std::string_view merges,
                                                    const ClipTokenizerOptions& options) {
  if (options.context_length < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("context_length must be at least 2, got ", options.context_length));
  }
  if (merges.empty()) return absl::InvalidArgumentError("vocabulary is empty");
  std::string inflated;
  if (merges.size() >= 2 && static_cast<uint8_t>(merges[0]) == 0x1F &&
      static_cast<uint8_t>(merges[1]) == 0x8B) {
    ASSIGN_OR_RETURN(inflated, Gunzip(merges));
    merges = inflated;
  }
  if (!DecodeUtf8(merges).ok()) return absl::InvalidArgumentError("vocabulary is not valid UTF-8");

  // Line 0 is a header; lines 1..kNumMerges are the merges CLIP uses.
  std::vector<std::pair<std::string_view, std::string_view>> pairs;
  pairs.reserve(kNumMerges);
  size_t pos = merges.find('\n');
  for (int line = 1; line <= kNumMerges; ++line) {
    size_t end = pos == std::string_view::npos ? pos : merges.find('\n', pos + 1);
    std::string_view text =
        pos == std::string_view::npos
            ? std::string_view()
            : merges.substr(pos + 1, end == std::string_view::npos ? end : end - pos - 1);
    std::vector<std::string_view> fields = SplitFields(text);
    if (end == std::string_view::npos && fields.empty()) {  // end of file
      return absl::InvalidArgumentError(absl::StrCat("vocabulary has ", line - 1,
                                                     " merge lines; CLIP needs ", kNumMerges,
                                                     " (is this bpe_simple_vocab_16e6.txt?)"));
    }
    if (fields.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          "vocabulary line ", line + 1, ": expected two space-separated symbols, got '",
          ToAbsl(text.substr(0, 80)), "'"));
    }
    pairs.emplace_back(fields[0], fields[1]);
    pos = end;
  }

  // vocab = bytes + bytes+"</w>" + merges + specials; a string's id is its
  // last position, as Python's dict(zip(vocab, range(...))) makes it.
  static const ByteAlphabet alphabet;
  std::vector<std::string> vocab;
  vocab.reserve(512 + kNumMerges + 2);
  for (int end_of_word = 0; end_of_word < 2; ++end_of_word) {
    for (uint8_t b : alphabet.byte_order) {
      std::string s;
      AppendUtf8(alphabet.char_of_byte[b], &s);
      if (end_of_word) s.append(kEndOfWord);
      vocab.push_back(std::move(s));
    }
  }
  for (const auto& [left, right] : pairs)
    vocab.push_back(absl::StrCat(ToAbsl(left), ToAbsl(right)));
  vocab.emplace_back(kSot);
  vocab.emplace_back(kEot);
  absl::flat_hash_map<std::string_view, int32_t> encoder;
  encoder.reserve(vocab.size());
  for (size_t id = 0; id < vocab.size(); ++id) encoder[vocab[id]] = static_cast<int32_t>(id);

  auto tables = std::make_shared<Tables>();
  tables->sot_id = encoder.at(kSot);
  tables->eot_id = encoder.at(kEot);
  for (int pos_in_vocab = 0; pos_in_vocab < 256; ++pos_in_vocab) {
    uint8_t b = alphabet.byte_order[pos_in_vocab];
    tables->byte_id[b] = encoder.at(vocab[pos_in_vocab]);
    tables->byte_end_id[b] = encoder.at(vocab[256 + pos_in_vocab]);
  }
  tables->merges.reserve(pairs.size());
  for (size_t rank = 0; rank < pairs.size(); ++rank) {
    const auto& [left, right] = pairs[rank];
    auto l = encoder.find(left);
    auto r = encoder.find(right);
    if (l == encoder.end() || r == encoder.end()) {
      return absl::InvalidArgumentError(absl::StrCat("vocabulary line ", rank + 2, ": symbol '",
                                                     ToAbsl(l == encoder.end() ? left : right),
                                                     "' is neither a byte nor made by a merge"));
    }
    tables->merges[PairKey(l->second, r->second)] =
        Tables::Merge{static_cast<int32_t>(rank), encoder.at(vocab[512 + rank])};
  }

  // Bytes of every id, for Decode: map each character back to its byte.
  absl::flat_hash_map<char32_t, char> byte_of_char;
  for (int b = 0; b < 256; ++b) byte_of_char[alphabet.char_of_byte[b]] = static_cast<char>(b);
  tables->token_bytes.reserve(vocab.size());
  for (const std::string& token : vocab) {
    absl::StatusOr<std::u32string> chars = DecodeUtf8(token);
    if (!chars.ok()) return chars.status();
    std::string bytes;
    for (char32_t c : *chars) {
      auto it = byte_of_char.find(c);
      bytes.push_back(it != byte_of_char.end() ? it->second : '?');
    }
    tables->token_bytes.push_back(std::move(bytes));
  }

  if (options.sot_token != tables->sot_id || options.eot_token != tables->eot_id) {
    return absl::InvalidArgumentError(
        absl::StrCat("options name sot/eot ids ", options.sot_token, "/", options.eot_token,
                     " but the vocabulary has ", tables->sot_id, "/", tables->eot_id));
  }
  return ClipTokenizer(std::move(tables), options);
}

void ClipTokenizer::Bpe(std::string_view word, std::vector<int64_t>* out) const {
  const Tables& t = *tables_;
  const size_t n = word.size();
  absl::InlinedVector<int32_t, 32> symbols(n);
  for (size_t i = 0; i + 1 < n; ++i) symbols[i] = t.byte_id[static_cast<uint8_t>(word[i])];
  symbols[n - 1] = t.byte_end_id[static_cast<uint8_t>(word[n - 1])];

  // Repeatedly merge every occurrence (left to right) of the lowest-ranked
  // adjacent pair, until no adjacent pair is a merge.
  while (symbols.size() > 1) {
    int32_t best_rank = INT32_MAX;
    int32_t left = 0, right = 0, merged = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      auto it = t.merges.find(PairKey(symbols[i], symbols[i + 1]));
      if (it != t.merges.end() && it->second.rank < best_rank) {
        best_rank = it->second.rank;
        left = symbols[i];
        right = symbols[i + 1];
        merged = it->second.merged_id;
      }
    }
    if (best_rank == INT32_MAX) break;
    size_t o = 0;
    for (size_t i = 0; i < symbols.size();) {
      if (i + 1 < symbols.size() && symbols[i] == left && symbols[i + 1] == right) {
        symbols[o++] = merged;
        i += 2;
      } else {
        symbols[o++] = symbols[i++];
      }
    }
    symbols.resize(o);
  }
  out->insert(out->end(), symbols.begin(), symbols.end());
}

absl::StatusOr<std::vector<int64_t>> ClipTokenizer::Encode(std::string_view text) const {
  ASSIGN_OR_RETURN(std::u32string decoded, DecodeUtf8(text));
  ASSIGN_OR_RETURN(std::u32string cleaned, CleanClipText(decoded, options_.lower_case));

  const size_t context = static_cast<size_t>(options_.context_length);
  std::vector<int64_t> ids;
  ids.reserve(context + 32);
  ids.push_back(tables_->sot_id);
  bool too_long = false;
  std::string bytes;
  const std::u32string_view s = cleaned;
  size_t i = 0;
  while (i < s.size()) {
    // One findall step of CLIP's regex: the first alternative that matches.
    size_t len = MatchLiteralAlternatives(s, i);
    if (len == 0) {
      CharClass cls = Classify(s[i]);
      if (cls == CharClass::kSkip) {
        ++i;
        continue;
      }
      len = 1;
      if (cls != CharClass::kNumber) {
        while (i + len < s.size() && Classify(s[i + len]) == cls) ++len;
      }
    }
    std::u32string_view token = s.substr(i, len);
    i += len;
    if (token == kSot32) {
      ids.push_back(tables_->sot_id);
    } else if (token == kEot32) {
      ids.push_back(tables_->eot_id);
    } else {
      bytes.clear();
      for (char32_t c : token) AppendUtf8(c, &bytes);
      Bpe(bytes, &ids);
    }
    // SOT + BPE ids + EOT no longer fits: the rest cannot matter.
    if (ids.size() + 1 > context) {
      too_long = true;
      break;
    }
  }

  if (too_long) {
    if (!options_.truncate) {
      return absl::InvalidArgumentError(absl::StrCat("text is too long: more than ", context - 2,
                                                     " tokens (context length ", context,
                                                     ") and truncation is off"));
    }
    ids.resize(context - 1);
    ids.push_back(tables_->eot_id);
  } else {
    ids.push_back(tables_->eot_id);
    ids.resize(context, 0);
  }
  return ids;
}

std::string ClipTokenizer::Decode(const std::vector<int64_t>& ids) const {
  const Tables& t = *tables_;
  std::string bytes;
  size_t i = (!ids.empty() && ids[0] == t.sot_id) ? 1 : 0;
  for (; i < ids.size() && ids[i] != t.eot_id; ++i) {
    if (ids[i] >= 0 && ids[i] < static_cast<int64_t>(t.token_bytes.size())) {
      bytes += t.token_bytes[ids[i]];
    } else {
      bytes += "\xEF\xBF\xBD";  // U+FFFD
    }
  }
  return absl::StrReplaceAll(DecodeUtf8Lossy(bytes), {{"</w>", " "}});
}

int ClipTokenizer::context_length() const { return options_.context_length; }

int ClipTokenizer::vocab_size() const { return static_cast<int>(tables_->token_bytes.size()); }

}  // namespace imagesearch::text
