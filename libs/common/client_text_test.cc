#include "libs/common/client_text.h"

#include <catch2/catch.hpp>
#include <string>

namespace imagesearch {
namespace {

TEST_CASE("QuoteClientText quotes short text whole") {
  CHECK(QuoteClientText("") == "''");
  CHECK(QuoteClientText("color") == "'color'");
  const std::string exactly(kMaxQuotedBytes, 'a');
  CHECK(QuoteClientText(exactly) == "'" + exactly + "'");
}

TEST_CASE("QuoteClientText bounds long text and names its size") {
  const std::string big(1 << 20, 'x');
  const std::string q = QuoteClientText(big);
  CHECK(q == "'" + std::string(kMaxQuotedBytes, 'x') + "...' (1048576 bytes)");
}

TEST_CASE("QuoteClientText never cuts a UTF-8 character in half") {
  // 63 ASCII bytes and then a 2-byte character: the character does not fit.
  const std::string text = std::string(63, 'a') + "\xC3\xA9" + "tail";
  CHECK(QuoteClientText(text) == "'" + std::string(63, 'a') + "...' (69 bytes)");
}

TEST_CASE("QuoteClientText writes invalid UTF-8 as escapes") {
  CHECK(QuoteClientText("a\xFF!") == "'a\\xFF!'");
  CHECK(QuoteClientText("\xE2\x82") == "'\\xE2\\x82'");           // A truncated 3-byte character.
  CHECK(QuoteClientText("\xED\xA0\x80") == "'\\xED\\xA0\\x80'");  // A surrogate.
  CHECK(QuoteClientText("\xE2\x82\xAC") == "'\xE2\x82\xAC'");     // The euro sign is fine.
}

TEST_CASE("QuoteClientText counts an escape as the 4 bytes it writes") {
  const std::string q = QuoteClientText(std::string(1 << 20, '\xFF'));
  CHECK(q.size() <= kMaxQuotedBytes + 2 + 24);
  CHECK(q.find("(1048576 bytes)") != std::string::npos);
}

TEST_CASE("TruncateClientText keeps short text and bounds long text") {
  CHECK(TruncateClientText("top_k: invalid", 64) == "top_k: invalid");
  CHECK(TruncateClientText(std::string(100, 'y'), 10) == std::string(10, 'y') + "... (100 bytes)");
}

TEST_CASE("IsValidUtf8 accepts well-formed UTF-8 only") {
  CHECK(IsValidUtf8(""));
  CHECK(IsValidUtf8("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x90\xB1"));
  CHECK_FALSE(IsValidUtf8("caf\xE9"));       // Latin-1.
  CHECK_FALSE(IsValidUtf8("\xC0\xAF"));      // Overlong.
  CHECK_FALSE(IsValidUtf8("\xED\xA0\x80"));  // A surrogate.
  CHECK_FALSE(IsValidUtf8("\xF0\x9F\x90"));  // Cut short.
}

TEST_CASE("ToValidUtf8 replaces each invalid byte and keeps valid text") {
  CHECK(ToValidUtf8("caf\xC3\xA9") == "caf\xC3\xA9");
  CHECK(ToValidUtf8("a\xFF!") == "a\xEF\xBF\xBD!");
  CHECK(ToValidUtf8("\xE2\x82") == "\xEF\xBF\xBD\xEF\xBF\xBD");
}

}  // namespace
}  // namespace imagesearch
