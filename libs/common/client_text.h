// Quoting what a client sent inside an error message. Error text travels in
// gRPC trailers, HTTP bodies and logs, so it repeats a bounded, valid UTF-8
// prefix of the client's bytes, never the whole of them: a 1 MiB field name
// gets an answer of a few hundred bytes. Every message that repeats client
// input goes through QuoteClientText.
//
// Thread-safe (pure functions).
#ifndef IMAGESEARCH_LIBS_COMMON_CLIENT_TEXT_H_
#define IMAGESEARCH_LIBS_COMMON_CLIENT_TEXT_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace imagesearch {

// The most bytes of client text an error message repeats.
inline constexpr size_t kMaxQuotedBytes = 64;

// 'text' when it fits in kMaxQuotedBytes bytes; otherwise as much of it as
// fits (cut back to a whole UTF-8 character), then "...' (N bytes)". Bytes
// that are not valid UTF-8 are written as \xHH (counted as 4), so the result
// is always valid UTF-8.
std::string QuoteClientText(absl::string_view text);

// `text`, if it fits in `max_bytes` bytes; otherwise as much of it as fits
// (cut back to a whole UTF-8 character) and "... (N bytes)"; invalid UTF-8
// as in QuoteClientText. For messages of other libraries that embed client
// text (a JSON parser's).
std::string TruncateClientText(absl::string_view text, size_t max_bytes);

// True if `text` is well-formed UTF-8 (no overlong forms, no surrogates).
bool IsValidUtf8(absl::string_view text);

// `text` with every byte that is not part of valid UTF-8 replaced by U+FFFD.
std::string ToValidUtf8(absl::string_view text);

}  // namespace imagesearch

#endif  // IMAGESEARCH_LIBS_COMMON_CLIENT_TEXT_H_
