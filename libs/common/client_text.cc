#include "libs/common/client_text.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace imagesearch {
namespace {

// The length of the valid UTF-8 sequence starting at s[i], or 0 if none does.
size_t Utf8Length(absl::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<uint8_t>(s[i + k]); };
  const auto cont = [&](size_t k) { return i + k < s.size() && (b(k) & 0xC0) == 0x80; };
  const uint8_t c = b(0);
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    if (c == 0xE0 && b(1) < 0xA0) return 0;   // Overlong.
    if (c == 0xED && b(1) >= 0xA0) return 0;  // Surrogates.
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xF0 && b(1) < 0x90) return 0;   // Overlong.
    if (c == 0xF4 && b(1) >= 0x90) return 0;  // Past U+10FFFF.
    return 4;
  }
  return 0;
}

// Appends a prefix of `text` to `out`, at most `max_bytes` bytes once
// written, stopping before a character that does not fit whole; invalid
// bytes become \xHH (4 bytes each). Returns how many bytes of `text` it
// consumed.
size_t AppendValidPrefix(absl::string_view text, size_t max_bytes, std::string* out) {
  const size_t start = out->size();
  size_t i = 0;
  while (i < text.size()) {
    const size_t n = Utf8Length(text, i);
    if (out->size() - start + (n == 0 ? 4 : n) > max_bytes) break;
    if (n == 0) {
      absl::StrAppend(out, absl::StrFormat("\\x%02X", static_cast<uint8_t>(text[i])));
      i += 1;
    } else {
      out->append(text.data() + i, n);
      i += n;
    }
  }
  return i;
}

}  // namespace

std::string QuoteClientText(absl::string_view text) {
  std::string out = "'";
  const size_t used = AppendValidPrefix(text, kMaxQuotedBytes, &out);
  if (used == text.size()) {
    out += "'";
  } else {
    absl::StrAppend(&out, "...' (", text.size(), " bytes)");
  }
  return out;
}

std::string TruncateClientText(absl::string_view text, size_t max_bytes) {
  std::string out;
  const size_t used = AppendValidPrefix(text, max_bytes, &out);
  if (used < text.size()) absl::StrAppend(&out, "... (", text.size(), " bytes)");
  return out;
}

bool IsValidUtf8(absl::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const size_t n = Utf8Length(text, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string ToValidUtf8(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const size_t n = Utf8Length(text, i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      i += 1;
    } else {
      out.append(text.data() + i, n);
      i += n;
    }
  }
  return out;
}

}  // namespace imagesearch
