// Text clean-up in front of CLIP's BPE: a C++ rendering of what OpenAI CLIP's
// simple_tokenizer.py does before it splits text into words, i.e.
//   basic_clean:      ftfy.fix_text -> html.unescape twice -> strip
//   whitespace_clean: runs of \s -> one space -> strip
//   str.lower()
// plus the UTF-8 helpers the tokenizer needs. Each function matches the Python
// function it names, code point for code point, with one known gap: ftfy's
// fix_text is reproduced except for fix_encoding, its heuristic mojibake
// repair (see libs/text/README.md).
//
// Unicode data (categories, White_Space, case mapping, NFC) comes from ICU.
// Thread-safety: all functions are pure; they may be called concurrently.
#ifndef IMAGESEARCH_LIBS_TEXT_TEXT_CLEAN_H_
#define IMAGESEARCH_LIBS_TEXT_TEXT_CLEAN_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace imagesearch::text {

// UTF-8 -> code points. INVALID_ARGUMENT on ill-formed UTF-8 (truncated or
// overlong sequences, surrogates, values above U+10FFFF).
absl::StatusOr<std::u32string> DecodeUtf8(std::string_view utf8);

// Code points -> UTF-8. REQUIRES: every element is a Unicode scalar value.
std::string EncodeUtf8(std::u32string_view text);
void AppendUtf8(char32_t c, std::string* out);

// Bytes -> UTF-8 text in which every maximal ill-formed subsequence became
// U+FFFD, as Python's bytes.decode("utf-8", errors="replace") does.
std::string DecodeUtf8Lossy(std::string_view bytes);

// Python's html.unescape: named references (HTML5 list, including the legacy
// names that need no ';' and longest-prefix matching) and numeric references
// with HTML5's replacement rules.
std::u32string HtmlUnescape(std::u32string_view text);

// ftfy 6 fix_text(text) with its default settings, except fix_encoding: HTML
// entities (only while no line so far had a '<'), C1 controls read as
// Windows-1252, Latin ligatures, fullwidth/halfwidth forms, curly quotes, line
// breaks, terminal escapes, control characters, NFC; repeated per line until
// nothing changes.
std::u32string FixTextSubset(std::u32string_view text);

// Python's str.isspace() and the `regex` module's \s (Unicode White_Space).
bool IsPythonSpace(char32_t c);
bool IsRegexSpace(char32_t c);

// whitespace_clean(basic_clean(text)).lower(): the text CLIP's regex splits.
// Without `lower_case` (a model whose vocabulary is cased), the final
// .lower() is skipped. INTERNAL only if ICU fails.
absl::StatusOr<std::u32string> CleanClipText(std::u32string_view text, bool lower_case = true);

}  // namespace imagesearch::text

#endif  // IMAGESEARCH_LIBS_TEXT_TEXT_CLEAN_H_
