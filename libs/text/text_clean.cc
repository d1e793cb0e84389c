#include "libs/text/text_clean.h"

#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/utypes.h>

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace imagesearch::text {
namespace {

struct NamedEntity {
  std::string_view name;
  std::string_view text;
};

struct CodepointText {
  char32_t code;
  std::string_view text;
};

#include "libs/text/html_tables.inc"

constexpr char32_t kReplacement = 0xFFFD;

// Decodes one well-formed UTF-8 string (the generated tables) into `out`.
void AppendTableText(std::string_view utf8, std::u32string* out) {
  auto decoded = DecodeUtf8(utf8);
  out->append(decoded.ok() ? *decoded : std::u32string(1, kReplacement));
}

template <typename T, size_t N>
const T* FindByName(const T (&table)[N], std::string_view name) {
  auto it = std::lower_bound(std::begin(table), std::end(table), name,
                             [](const T& e, std::string_view n) { return e.name < n; });
  return (it != std::end(table) && it->name == name) ? it : nullptr;
}

template <size_t N>
const CodepointText* FindByCode(const CodepointText (&table)[N], char32_t code) {
  auto it = std::lower_bound(std::begin(table), std::end(table), code,
                             [](const CodepointText& e, char32_t c) { return e.code < c; });
  return (it != std::end(table) && it->code == code) ? it : nullptr;
}

bool IsAsciiDigit(char32_t c) { return c >= '0' && c <= '9'; }
bool IsAsciiHexDigit(char32_t c) {
  return IsAsciiDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
bool IsAsciiAlpha(char32_t c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool IsAsciiAlnum(char32_t c) { return IsAsciiDigit(c) || IsAsciiAlpha(c); }

bool AllAscii(std::u32string_view text) {
  return std::all_of(text.begin(), text.end(), [](char32_t c) { return c < 0x80; });
}

// Parses [first, last) as digits in `base`, saturating above U+10FFFF.
uint32_t ParseSaturating(std::u32string_view digits, int base) {
  uint32_t value = 0;
  for (char32_t c : digits) {
    uint32_t d = IsAsciiDigit(c) ? c - '0' : (c | 0x20) - 'a' + 10;
    value = value * base + d;
    if (value > 0x10FFFF) return 0x110000;
  }
  return value;
}

// html.unescape's rules for a numeric reference with value `num`.
void AppendNumericReference(uint32_t num, std::u32string* out) {
  if (const CodepointText* fixed = FindByCode(kInvalidCharrefs, num)) {
    AppendTableText(fixed->text, out);
    return;
  }
  if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) {
    out->push_back(kReplacement);
    return;
  }
  if (std::binary_search(std::begin(kInvalidCodepoints), std::end(kInvalidCodepoints),
                         static_cast<char32_t>(num))) {
    return;
  }
  out->push_back(static_cast<char32_t>(num));
}

// Looks `name` (code points, possibly with a trailing ';') up in html5.
const NamedEntity* FindHtml5(std::u32string_view name) {
  if (!AllAscii(name)) return nullptr;  // every HTML5 name is ASCII
  std::string key(name.begin(), name.end());
  return FindByName(kHtml5Entities, key);
}

// ---- ftfy fixes -------------------------------------------------------------

// ftfy.fixes.unescape_html: `&#?[0-9A-Za-z]{1,24};`, looked up in ftfy's table
// (names) or decoded with html.unescape when that consumes all of it (numbers).
std::u32string FtfyUnescapeHtml(std::u32string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] != '&') {
      out.push_back(s[i++]);
      continue;
    }
    size_t j = i + 1;
    bool hash = j < s.size() && s[j] == '#';
    if (hash) ++j;
    size_t k = j;
    while (k < s.size() && k - j < 25 && IsAsciiAlnum(s[k])) ++k;
    size_t run = k - j;
    if (run < 1 || run > 24 || k >= s.size() || s[k] != ';') {
      out.push_back(s[i++]);
      continue;
    }
    std::u32string_view match = s.substr(i, k + 1 - i);
    std::u32string_view body = s.substr(j, run);
    std::u32string replacement(match);
    if (!hash) {
      std::string key(body.begin(), body.end());
      key.push_back(';');
      if (const NamedEntity* e = FindByName(kFtfyEntities, key)) {
        replacement.clear();
        AppendTableText(e->text, &replacement);
      }
    } else {
      // html.unescape decodes the whole match only for #digits; or #x hexdigits;
      bool hex = body[0] == 'x' || body[0] == 'X';
      std::u32string_view digits = hex ? body.substr(1) : body;
      bool valid = !digits.empty() &&
                   std::all_of(digits.begin(), digits.end(), hex ? IsAsciiHexDigit : IsAsciiDigit);
      if (valid) {
        std::u32string decoded;
        AppendNumericReference(ParseSaturating(digits, hex ? 16 : 10), &decoded);
        if (decoded.find(U';') == std::u32string::npos) replacement = std::move(decoded);
      }
    }
    out += replacement;
    i = k + 1;
  }
  return out;
}

// ftfy.fixes.fix_c1_controls: U+0080..U+009F read as (sloppy) Windows-1252,
// which is exactly html's table for those numeric references.
void FixC1Controls(std::u32string* s) {
  std::u32string out;
  bool changed = false;
  for (char32_t c : *s) {
    if (c >= 0x80 && c <= 0x9F) {
      const CodepointText* e = FindByCode(kInvalidCharrefs, c);
      std::u32string mapped;
      if (e != nullptr) AppendTableText(e->text, &mapped);
      if (mapped.size() == 1) {
        changed |= mapped[0] != c;
        out.push_back(mapped[0]);
        continue;
      }
    }
    out.push_back(c);
  }
  if (changed) *s = std::move(out);
}

// ftfy.chardata.LIGATURES.
struct Ligature {
  char32_t code;
  std::u32string_view text;
};
constexpr Ligature kLigatures[] = {
    {0x0132, U"IJ"},      {0x0133, U"ij"},      {0x0149, U"\u02BCn"}, {0x01C4, U"D\u017D"},
    {0x01C5, U"D\u017E"}, {0x01C6, U"d\u017E"}, {0x01C7, U"LJ"},      {0x01C8, U"Lj"},
    {0x01C9, U"lj"},      {0x01CA, U"NJ"},      {0x01CB, U"Nj"},      {0x01CC, U"nj"},
    {0x01F1, U"DZ"},      {0x01F2, U"Dz"},      {0x01F3, U"dz"},      {0xFB00, U"ff"},
    {0xFB01, U"fi"},      {0xFB02, U"fl"},      {0xFB03, U"ffi"},     {0xFB04, U"ffl"},
    {0xFB05, U"\u017Ft"}, {0xFB06, U"st"},
};

std::u32string_view FindLigature(char32_t c) {
  if (c < 0x0132 || (c > 0x01F3 && c < 0xFB00) || c > 0xFB06) return {};
  for (const Ligature& l : kLigatures) {
    if (l.code == c) return l.text;
  }
  return {};
}

// fix_latin_ligatures, fix_character_width and uncurl_quotes: all
// character-by-character substitutions, done in one pass.
void FixCharacters(std::u32string* s) {
  std::u32string out;
  out.reserve(s->size());
  for (char32_t c : *s) {
    if (std::u32string_view lig = FindLigature(c); !lig.empty()) {
      out += lig;
      continue;
    }
    if (c == 0x3000 || (c >= 0xFF01 && c <= 0xFFEF)) {
      if (const CodepointText* e = FindByCode(kWidthMap, c)) {
        AppendTableText(e->text, &out);
        continue;
      }
    }
    if (c >= 0x201C && c <= 0x201F) {
      out.push_back('"');
    } else if (c == 0x02BC || (c >= 0x2018 && c <= 0x201B)) {
      out.push_back('\'');
    } else {
      out.push_back(c);
    }
  }
  *s = std::move(out);
}

// fix_line_breaks: CRLF, CR, U+2028, U+2029, U+0085 -> LF.
void FixLineBreaks(std::u32string* s) {
  std::u32string out;
  out.reserve(s->size());
  for (size_t i = 0; i < s->size(); ++i) {
    char32_t c = (*s)[i];
    if (c == '\r') {
      if (i + 1 < s->size() && (*s)[i + 1] == '\n') ++i;
      out.push_back('\n');
    } else if (c == 0x2028 || c == 0x2029 || c == 0x85) {
      out.push_back('\n');
    } else {
      out.push_back(c);
    }
  }
  *s = std::move(out);
}

// remove_terminal_escapes: ESC '[' (\d|;)* [A-Za-z], \d being Unicode Nd.
void RemoveTerminalEscapes(std::u32string* s) {
  if (s->find(U'\x1b') == std::u32string::npos) return;
  std::u32string out;
  size_t i = 0;
  while (i < s->size()) {
    if ((*s)[i] == 0x1B && i + 1 < s->size() && (*s)[i + 1] == '[') {
      size_t k = i + 2;
      while (k < s->size() && ((*s)[k] == ';' || u_charType((*s)[k]) == U_DECIMAL_DIGIT_NUMBER))
        ++k;
      if (k < s->size() && IsAsciiAlpha((*s)[k])) {
        i = k + 1;
        continue;
      }
    }
    out.push_back((*s)[i++]);
  }
  *s = std::move(out);
}

// remove_control_chars: ftfy.chardata.CONTROL_CHARS.
bool IsFtfyControl(char32_t c) {
  return c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F ||
         (c >= 0x206A && c <= 0x206F) || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
}

void RemoveControlChars(std::u32string* s) {
  s->erase(std::remove_if(s->begin(), s->end(), IsFtfyControl), s->end());
}

icu::UnicodeString ToIcu(std::u32string_view s) {
  return icu::UnicodeString::fromUTF32(reinterpret_cast<const UChar32*>(s.data()),
                                       static_cast<int32_t>(s.size()));
}

std::u32string FromIcu(const icu::UnicodeString& u) {
  std::u32string out;
  out.reserve(u.length());
  for (int32_t i = 0; i < u.length(); i = u.moveIndex32(i, 1)) out.push_back(u.char32At(i));
  return out;
}

// unicodedata.normalize("NFC", s). Leaves `s` unchanged if ICU fails.
void NormalizeNfc(std::u32string* s) {
  if (AllAscii(*s)) return;
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
  if (U_FAILURE(status)) return;
  icu::UnicodeString u = ToIcu(*s);
  if (nfc->isNormalized(u, status) || U_FAILURE(status)) return;
  status = U_ZERO_ERROR;
  icu::UnicodeString normalized = nfc->normalize(u, status);
  if (U_SUCCESS(status)) *s = FromIcu(normalized);
}

// ftfy's fix_and_explain for one line: every fix, repeated to a fixed point.
std::u32string FixSegment(std::u32string text, bool unescape_html) {
  while (true) {
    std::u32string before = text;
    if (unescape_html) text = FtfyUnescapeHtml(text);
    FixC1Controls(&text);
    FixCharacters(&text);
    FixLineBreaks(&text);
    RemoveTerminalEscapes(&text);
    RemoveControlChars(&text);
    NormalizeNfc(&text);
    if (text == before) return text;
  }
}

std::u32string_view StripPythonSpace(std::u32string_view s) {
  while (!s.empty() && IsPythonSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsPythonSpace(s.back())) s.remove_suffix(1);
  return s;
}

}  // namespace

absl::StatusOr<std::u32string> DecodeUtf8(std::string_view utf8) {
  std::u32string out;
  out.reserve(utf8.size());
  size_t i = 0;
  const auto* p = reinterpret_cast<const unsigned char*>(utf8.data());
  const size_t n = utf8.size();
  while (i < n) {
    unsigned char b = p[i];
    if (b < 0x80) {
      out.push_back(b);
      ++i;
      continue;
    }
    int len;
    char32_t c;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (b >= 0xC2 && b <= 0xDF) {
      len = 2;
      c = b & 0x1F;
    } else if (b >= 0xE0 && b <= 0xEF) {
      len = 3;
      c = b & 0x0F;
      if (b == 0xE0) lo = 0xA0;
      if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
      len = 4;
      c = b & 0x07;
      if (b == 0xF0) lo = 0x90;
      if (b == 0xF4) hi = 0x8F;
    } else {
      return absl::InvalidArgumentError(
          absl::StrFormat("text is not valid UTF-8: byte 0x%02X at offset %d", b, i));
    }
    for (int k = 1; k < len; ++k) {
      unsigned char cb = i + k < n ? p[i + k] : 0;
      unsigned char min = k == 1 ? lo : 0x80, max = k == 1 ? hi : 0xBF;
      if (i + k >= n || cb < min || cb > max) {
        return absl::InvalidArgumentError(
            absl::StrFormat("text is not valid UTF-8: bad or truncated sequence at offset %d", i));
      }
      c = (c << 6) | (cb & 0x3F);
    }
    out.push_back(c);
    i += len;
  }
  return out;
}

void AppendUtf8(char32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string EncodeUtf8(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : text) AppendUtf8(c, &out);
  return out;
}

std::string DecodeUtf8Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    unsigned char b = p[i];
    if (b < 0x80) {
      out.push_back(static_cast<char>(b));
      ++i;
      continue;
    }
    int len = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
      len = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
      len = 3;
      if (b == 0xE0) lo = 0xA0;
      if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
      len = 4;
      if (b == 0xF0) lo = 0x90;
      if (b == 0xF4) hi = 0x8F;
    }
    // Consume the lead byte plus as many valid continuation bytes as follow:
    // that is the maximal subpart, which becomes one U+FFFD if incomplete.
    int k = 1;
    while (len != 0 && k < len && i + k < n) {
      unsigned char cb = p[i + k];
      if (cb < (k == 1 ? lo : 0x80) || cb > (k == 1 ? hi : 0xBF)) break;
      ++k;
    }
    if (len != 0 && k == len) {
      out.append(bytes.substr(i, len));
    } else {
      AppendUtf8(kReplacement, &out);
    }
    i += k;
  }
  return out;
}

std::u32string HtmlUnescape(std::u32string_view s) {
  if (s.find(U'&') == std::u32string_view::npos) return std::u32string(s);
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] != '&') {
      out.push_back(s[i++]);
      continue;
    }
    size_t j = i + 1;
    if (j < s.size() && s[j] == '#') {
      // &#[0-9]+;?  or  &#[xX][0-9a-fA-F]+;?
      size_t k = j + 1;
      bool hex = k < s.size() && (s[k] == 'x' || s[k] == 'X');
      if (hex) ++k;
      size_t start = k;
      while (k < s.size() && (hex ? IsAsciiHexDigit(s[k]) : IsAsciiDigit(s[k]))) ++k;
      if (k == start) {  // no digits: not a reference
        out.push_back(s[i++]);
        continue;
      }
      AppendNumericReference(ParseSaturating(s.substr(start, k - start), hex ? 16 : 10), &out);
      if (k < s.size() && s[k] == ';') ++k;
      i = k;
      continue;
    }
    // [^\t\n\f <&#;]{1,32};?
    size_t k = j;
    auto is_name_char = [](char32_t c) {
      return c != '\t' && c != '\n' && c != '\f' && c != ' ' && c != '<' && c != '&' && c != '#' &&
             c != ';';
    };
    while (k < s.size() && k - j < 32 && is_name_char(s[k])) ++k;
    if (k == j) {
      out.push_back(s[i++]);
      continue;
    }
    if (k < s.size() && s[k] == ';') ++k;
    std::u32string_view name = s.substr(j, k - j);
    i = k;
    if (const NamedEntity* e = FindHtml5(name)) {
      AppendTableText(e->text, &out);
      continue;
    }
    // The longest prefix (of at least two characters) that is a legacy name.
    bool found = false;
    for (size_t x = name.size() - 1; x > 1; --x) {
      if (const NamedEntity* e = FindHtml5(name.substr(0, x))) {
        AppendTableText(e->text, &out);
        out.append(name.substr(x));
        found = true;
        break;
      }
    }
    if (!found) {
      out.push_back('&');
      out.append(name);
    }
  }
  return out;
}

std::u32string FixTextSubset(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  bool unescape_html = true;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find(U'\n', pos);
    size_t end = nl == std::u32string_view::npos ? text.size() : nl + 1;
    std::u32string_view segment = text.substr(pos, end - pos);
    if (segment.find(U'<') != std::u32string_view::npos) unescape_html = false;
    out += FixSegment(std::u32string(segment), unescape_html);
    pos = end;
  }
  return out;
}

bool IsRegexSpace(char32_t c) { return u_isUWhiteSpace(static_cast<UChar32>(c)); }

bool IsPythonSpace(char32_t c) { return (c >= 0x1C && c <= 0x1F) || IsRegexSpace(c); }

absl::StatusOr<std::u32string> CleanClipText(std::u32string_view text, bool lower_case) {
  // basic_clean
  std::u32string fixed = FixTextSubset(text);
  std::u32string unescaped = HtmlUnescape(HtmlUnescape(fixed));
  std::u32string_view stripped = StripPythonSpace(unescaped);

  // whitespace_clean
  std::u32string collapsed;
  collapsed.reserve(stripped.size());
  for (size_t i = 0; i < stripped.size();) {
    if (IsRegexSpace(stripped[i])) {
      collapsed.push_back(' ');
      while (i < stripped.size() && IsRegexSpace(stripped[i])) ++i;
    } else {
      collapsed.push_back(stripped[i++]);
    }
  }
  std::u32string_view cleaned = StripPythonSpace(collapsed);
  if (!lower_case) return std::u32string(cleaned);

  // str.lower(): full case mapping with Final_Sigma, as ICU's root locale.
  if (AllAscii(cleaned)) {
    std::u32string lower(cleaned);
    for (char32_t& c : lower) {
      if (c >= 'A' && c <= 'Z') c += 'a' - 'A';
    }
    return lower;
  }
  icu::UnicodeString u = ToIcu(cleaned);
  if (u.isBogus()) return absl::InternalError("ICU could not convert the text");
  u.toLower(icu::Locale::getRoot());
  if (u.isBogus()) return absl::InternalError("ICU could not lower-case the text");
  return FromIcu(u);
}

}  // namespace imagesearch::text
